"""Training of visual prompts on a frozen classifier: VP, U-AVP and C-AVP.

Per sample (x, y), with ``delta_y`` the prompt the sample trains (its class's
prompt for C-AVP, the single prompt otherwise):

* ``CE(f(x + delta_y), y)`` always;
* ``+ CE(f(x' + delta_y), y)`` when adversarial, ``x'`` = Linf PGD (random
  start, step ``rel_step_size * eps``) against the prompted model;
* ``+ beta * (l1 + l2 + l3)`` for class-wise prompts, hinge terms on the
  probabilities of the clean input under every prompt (Chen et al. 2023):
  l1 the right diagonal entry wins, l2 no wrong prompt votes for its own class
  (summed over the wrong prompts), l3 the sample's own prompt is the most
  confident one for its class.

Only the prompts receive gradients (``torch.autograd.grad`` on the prompts
alone), the base stays in eval mode, so its weights and buffers never change.
SGD with momentum and a per-step cosine decay of the learning rate. Under
``eval --amp`` each step's loss (its PGD included) runs under autocast, with
fp16 loss scaling; the prompts, their updates and the PGD inputs stay float32.
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
    epochs: int = 10
    batch_size: int = 128
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


def term_l1(probs: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """max(max_{k != y} p^(k)_k - p^(y)_y, -tau): the right diagonal entry wins."""
    diagonal = probs.diagonal(dim1=1, dim2=2)
    own = diagonal.gather(1, y[:, None]).squeeze(1)
    return (_off_diagonal_max(diagonal, y) - own).clamp_min(-tau)


def term_l2(probs: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """sum_{j != y} max(p^(j)_j - max_{k != j} p^(j)_k, -tau): a wrong prompt does not vote for itself."""
    n_prompts = probs.shape[1]
    diagonal = probs.diagonal(dim1=1, dim2=2)
    eye = torch.eye(n_prompts, dtype=torch.bool, device=probs.device)
    rivals = probs.masked_fill(eye[None], float("-inf")).amax(2)
    hinge = (diagonal - rivals).clamp_min(-tau)
    wrong = torch.ones_like(hinge, dtype=torch.bool).scatter(1, y[:, None], False)
    return (hinge * wrong).sum(1)


def term_l3(probs: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """max(max_{k != y} p^(k)_y - p^(y)_y, -tau): the sample's own prompt is the most confident for y."""
    column = probs.gather(2, y[:, None, None].expand(-1, probs.shape[1], 1)).squeeze(2)
    own = column.gather(1, y[:, None]).squeeze(1)
    return (_off_diagonal_max(column, y) - own).clamp_min(-tau)


TERM_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {"l1": term_l1, "l2": term_l2, "l3": term_l3}


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


def batch_loss(
    model: ClassifierTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    prompts: torch.Tensor,
    mask: torch.Tensor,
    recipe: PromptRecipe,
    generator: torch.Generator,
) -> torch.Tensor:
    """The mean training loss of one batch (differentiable in ``prompts``)."""
    index = y if recipe.classwise else torch.zeros_like(y)
    own = prompts[index]
    loss = F.cross_entropy(model(apply_prompt(x, own, mask)), y)
    if recipe.adversarial:
        x_adv = pgd_on_prompted(model, x, y, own, mask, recipe.eps, recipe.steps, recipe.rel_step_size * recipe.eps, generator)
        loss = loss + F.cross_entropy(model(apply_prompt(x_adv, own, mask)), y)
    if recipe.classwise and recipe.terms:
        probs = all_prompt_probs(model, x, prompts, mask)
        inter = sum(TERM_FUNCTIONS[name](probs, y, recipe.tau) for name in recipe.terms)
        loss = loss + recipe.beta * inter.mean()
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
