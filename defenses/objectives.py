"""Training objectives of adversarial fine-tuning: clean CE, PGD-AT, TRADES and FGSM-RS.

Each objective maps a batch to the loss whose gradient updates the trainable
weights. Adversarial inputs are crafted in pixel space on the whole target
(preprocessing included), in eval mode, with gradients taken w.r.t. the input
only, so crafting never touches parameter gradients or batch-norm statistics.
Random starts draw from an explicit generator: the same seed gives the same
perturbations. Under ``eval --amp`` the crafting forward passes run in half
precision too, while the perturbation stays float32: autograd returns the input
gradient in the input's dtype, and every step is projected onto [0,1] and the ball.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_peft.threat_model import pgd_step, project, random_start

#: Step size of the training PGD relative to eps / steps (the same rule as the pgd attack's default).
PGD_REL_STEP = 2.5
#: FGSM-RS step relative to eps (Wong et al. 2020, "fast is better than free").
FGSM_RS_STEP = 1.25
#: Scale of the Gaussian start of the TRADES inner maximisation (as in the reference implementation).
TRADES_START_STD = 1e-3


@dataclass(frozen=True)
class AdversarySettings:
    """The training adversary: threat model, budget and the TRADES weight."""

    eps: float
    norm: str = "Linf"
    steps: int = 5
    beta: float = 6.0


@contextlib.contextmanager
def crafting(model: nn.Module) -> Iterator[None]:
    """Eval mode while adversarial inputs are crafted; the caller's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def projected_ascent(
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    start: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    alpha: float,
) -> torch.Tensor:
    """``steps`` PGD steps on the scalar ``loss_of(x_adv)`` from ``start`` inside the eps-ball of ``x``.

    The training-time adversaries' loop (every sample takes every step); the step and
    the projection are the evaluation PGD's own (:func:`~robustbench_peft.threat_model.pgd_step`)."""
    x_adv = start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad = torch.autograd.grad(loss_of(x_adv), x_adv)[0]
        x_adv = pgd_step(x, x_adv.detach(), grad, alpha, eps, norm).detach()
    return x_adv


def _maximise(model: nn.Module, x: torch.Tensor, start: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], settings: AdversarySettings, steps: int, alpha: float) -> torch.Tensor:
    """Projected gradient ascent of ``loss_fn(logits)`` in eval mode (see :func:`crafting`)."""
    with crafting(model):
        return projected_ascent(lambda x_adv: loss_fn(model(x_adv)), x, start, settings.eps, settings.norm, steps, alpha)


def clean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AdversarySettings, generator: torch.Generator) -> torch.Tensor:
    """Plain cross-entropy fine-tuning: the non-adversarial reference."""
    return F.cross_entropy(model(x), y)


def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AdversarySettings, generator: torch.Generator) -> torch.Tensor:
    """Madry et al.: CE on PGD examples (random start, ``steps`` steps of 2.5 eps / steps)."""
    start = random_start(x, settings.eps, settings.norm, generator)
    alpha = PGD_REL_STEP * settings.eps / settings.steps
    x_adv = _maximise(model, x, start, lambda logits: F.cross_entropy(logits, y, reduction="sum"), settings, settings.steps, alpha)
    return F.cross_entropy(model(x_adv), y)


def kl_to_clean(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(f(x) || f(x')) averaged over the batch (TRADES' robustness term)."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AdversarySettings, generator: torch.Generator) -> torch.Tensor:
    """Zhang et al.: CE(f(x), y) + beta * KL(f(x) || f(x')), x' maximises the KL."""
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    start = project(x, x + TRADES_START_STD * noise, settings.eps, settings.norm)
    with crafting(model), torch.no_grad():
        target_logits = model(x)
    alpha = PGD_REL_STEP * settings.eps / settings.steps
    x_adv = _maximise(model, x, start, lambda logits: kl_to_clean(target_logits, logits), settings, settings.steps, alpha)
    logits = model(x)
    return F.cross_entropy(logits, y) + settings.beta * kl_to_clean(logits, model(x_adv))


def fgsm_rs_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AdversarySettings, generator: torch.Generator) -> torch.Tensor:
    """Wong et al.: one signed step of 1.25 eps from a uniform random start (watch catastrophic overfitting)."""
    start = random_start(x, settings.eps, settings.norm, generator)
    x_adv = _maximise(model, x, start, lambda logits: F.cross_entropy(logits, y, reduction="sum"), settings, 1, FGSM_RS_STEP * settings.eps)
    return F.cross_entropy(model(x_adv), y)


Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, AdversarySettings, torch.Generator], torch.Tensor]

OBJECTIVES: dict[str, Objective] = {
    "clean": clean_loss,
    "pgd-at": pgd_at_loss,
    "trades": trades_loss,
    "fgsm-rs": fgsm_rs_loss,
}
