"""Training of visual prompts on a frozen classifier: VP, U-AVP and C-AVP.

The objective of Chen et al. 2023, normalised as its reference code
(``gen_prompt.py``, ``losses.py`` of Phoveran/vp-for-adversarial-robustness)
normalises it. With ``delta_y`` the prompt a sample trains (its class's prompt
for C-AVP, the single prompt otherwise):

* shared prompt (VP, U-AVP): one batch mean of ``CE(f(x + delta), y)``, plus one
  batch mean of ``CE(f(x' + delta), y)`` when adversarial;
* class-wise prompts (C-AVP): a **sum over the classes i of per-class means**,
  ``sum_i mean_{y=i} [CE(f(x + delta_i), i) + CE(f(x'_i + delta_i), i)]``, plus
  ``beta * (l1 + l2 + l3)`` where each term is again a sum over classes j of a
  per-class mean of a hinge on probabilities (margin ``tau``): l1 (the right
  diagonal entry wins) and l3 (the sample's own prompt is the most confident
  for its class) over the samples with ``y = j``; l2 (prompt j, on a sample of
  another class, does not vote for j) over the samples with ``y != j``.
  A class absent from a batch adds nothing (the reference would add NaN).
  One batch mean of the same terms is about 1/C of this scale: a C-times
  smaller step at the same learning rate.

``x'`` is Linf PGD (random start, step ``rel_step_size * eps``) against the
prompted model. Stated deviation: the reference perturbs the already prompted
image and feeds it to the bare network; here the adversary perturbs the raw
input and the prompt is applied (and clipped) after it, the order in which a
deployed prompt meets an attacked input. The two differ only in where the
[0,1] clip falls on the border.

Only the prompts receive gradients (``torch.autograd.grad`` on the prompts
alone), the base stays in eval mode, so its weights and buffers never change.
SGD with momentum and a per-step cosine decay of the learning rate to zero
(the reference's ``CosineAnnealingLR`` over all steps). Under ``eval --amp``
each step's loss (its PGD included) runs under autocast, with fp16 loss
scaling; the prompts, their updates and the PGD inputs stay float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from robustbench_peft import precision
from robustbench_peft.errors import UserError
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.threat_model import random_start

from .objectives import projected_ascent
from .prompts import apply_prompt, border_mask

INTER_PROMPT_TERMS = ("l1", "l2", "l3")


@dataclass(frozen=True)
class PromptRecipe:
    """Every hyper-parameter that determines trained prompts (part of the cache key)."""

    classwise: bool
    adversarial: bool
    border: int = 2
    epochs: int = 50
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    eps: float = 0.1
    steps: int = 10
    rel_step_size: float = 0.25
    beta: float = 3.0
    tau: float = 0.1
    terms: tuple[str, ...] = ()
    seed: int = 0

    def to_json(self) -> dict:
        return {**asdict(self), "terms": list(self.terms)}


def parse_terms(terms: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """``["l1", "l3"]`` / ``"l1+l3"`` / ``["none"]`` -> a sorted tuple of inter-prompt terms."""
    items = terms.split("+") if isinstance(terms, str) else list(terms)
    chosen = {t.strip().lower() for t in items if t.strip()} - {"none"}
    unknown = sorted(chosen - set(INTER_PROMPT_TERMS))
    if unknown:
        raise UserError(f"unknown inter-prompt term(s) {', '.join(unknown)}; use a '+'-list of {', '.join(INTER_PROMPT_TERMS)} or 'none'")
    return tuple(sorted(chosen))


def _off_diagonal_max(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """max over k != index[b] of values[b, k] (values: (B, K))."""
    return values.scatter(1, index[:, None], float("-inf")).amax(1)


def own_class(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, C) membership: sample b counts in class y_b's mean."""
    return F.one_hot(y, n_classes).bool()


def class_sum_of_means(values: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``sum_j mean_{b in group j} values[b, j]`` over the groups j that have members.

    ``values`` and ``members`` are (B, C); a group without members adds nothing.
    """
    members = members.to(values.dtype)
    counts = members.sum(0)
    totals = (values * members).sum(0)
    present = counts > 0
    return (totals[present] / counts[present]).sum()


def _at_own_class(per_sample: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-sample value placed in the column of the sample's class, for :func:`class_sum_of_means`."""
    members = own_class(y, n_classes)
    return per_sample[:, None] * members, members


def term_l1(probs: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """max(max_{k != y} p^(k)_k - p^(y)_y, -tau): the right diagonal entry wins (grouped by y)."""
    diagonal = probs.diagonal(dim1=1, dim2=2)
    own = diagonal.gather(1, y[:, None]).squeeze(1)
    return _at_own_class((_off_diagonal_max(diagonal, y) - own).clamp_min(-tau), y, probs.shape[1])


def term_l2(probs: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For every prompt j != y: max(p^(j)_j - max_{k != j} p^(j)_k, -tau), grouped by j over samples with y != j.

    A wrong prompt does not vote for its own class.
    """
    n_prompts = probs.shape[1]
    diagonal = probs.diagonal(dim1=1, dim2=2)
    eye = torch.eye(n_prompts, dtype=torch.bool, device=probs.device)
    rivals = probs.masked_fill(eye[None], float("-inf")).amax(2)
    return (diagonal - rivals).clamp_min(-tau), ~own_class(y, n_prompts)


def term_l3(probs: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """max(max_{k != y} p^(k)_y - p^(y)_y, -tau): the sample's own prompt is the most confident for y (grouped by y)."""
    column = probs.gather(2, y[:, None, None].expand(-1, probs.shape[1], 1)).squeeze(2)
    own = column.gather(1, y[:, None]).squeeze(1)
    return _at_own_class((_off_diagonal_max(column, y) - own).clamp_min(-tau), y, probs.shape[1])


#: Each term gives (B, C) values and the (B, C) membership of the per-class means they enter.
TERM_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]] = {
    "l1": term_l1,
    "l2": term_l2,
    "l3": term_l3,
}


def all_prompt_probs(model: ClassifierTarget, x: torch.Tensor, prompts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, P, K): softmax of the base model on every input under every prompt."""
    prompted = apply_prompt(x[:, None], prompts[None], mask).flatten(0, 1)
    return F.softmax(model(prompted), dim=1).view(len(x), len(prompts), -1)


def pgd_on_prompted(
    model: ClassifierTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    mask: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Linf PGD with random start against ``f(clip(x' + delta * M))`` (delta fixed, per sample)."""
    delta = delta.detach()
    start = random_start(x, eps, "Linf", generator)
    return projected_ascent(lambda x_adv: F.cross_entropy(model(apply_prompt(x_adv, delta, mask)), y, reduction="sum"), x, start, eps, "Linf", steps, step_size)


def prompt_ce(model: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, own: torch.Tensor, mask: torch.Tensor, classwise: bool) -> torch.Tensor:
    """CE of the prompted inputs: a batch mean for one shared prompt, the sum of per-class means for class-wise prompts."""
    logits = model(apply_prompt(x, own, mask))
    if not classwise:
        return F.cross_entropy(logits, y)
    return class_sum_of_means(*_at_own_class(F.cross_entropy(logits, y, reduction="none"), y, logits.shape[1]))


def batch_loss(
    model: ClassifierTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    prompts: torch.Tensor,
    mask: torch.Tensor,
    recipe: PromptRecipe,
    generator: torch.Generator,
) -> torch.Tensor:
    """The training loss of one batch (differentiable in ``prompts``), normalised as the module docstring says."""
    index = y if recipe.classwise else torch.zeros_like(y)
    own = prompts[index]
    loss = prompt_ce(model, x, y, own, mask, recipe.classwise)
    if recipe.adversarial:
        x_adv = pgd_on_prompted(model, x, y, own, mask, recipe.eps, recipe.steps, recipe.rel_step_size * recipe.eps, generator)
        loss = loss + prompt_ce(model, x_adv, y, own, mask, recipe.classwise)
    if recipe.classwise and recipe.terms:
        probs = all_prompt_probs(model, x, prompts, mask)
        inter = sum(class_sum_of_means(*TERM_FUNCTIONS[name](probs, y, recipe.tau)) for name in recipe.terms)
        loss = loss + recipe.beta * inter
    return loss


def train_prompts(base: ClassifierTarget, x_train: torch.Tensor, y_train: torch.Tensor, n_classes: int, recipe: PromptRecipe) -> torch.Tensor:
    """Train prompts from zero on a frozen ``base``; returns (P, C, H, W), zero outside the mask."""
    channels, height, width = base.input_shape
    device = base.device
    base.eval()
    mask = border_mask(height, width, recipe.border).view(1, 1, height, width).float().to(device)
    generator = torch.Generator().manual_seed(recipe.seed)
    n_prompts = n_classes if recipe.classwise else 1
    prompts = torch.zeros(n_prompts, channels, height, width, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([prompts], lr=recipe.lr, momentum=recipe.momentum)
    scaler = precision.grad_scaler(device)
    steps_per_epoch = math.ceil(len(y_train) / recipe.batch_size)
    total = max(1, recipe.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(y_train), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            x, y = x_train[idx].to(device), y_train[idx].to(device)
            with precision.fit_autocast(device):
                loss = batch_loss(base, x, y, prompts * mask, mask, recipe, generator)
            (prompts.grad,) = torch.autograd.grad(scaler.scale(loss), [prompts])
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
    return (prompts.detach() * mask).cpu()
