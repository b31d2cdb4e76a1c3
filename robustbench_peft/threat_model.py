"""Lp threat models in pixel space: distances, projection, random starts, ascent steps.

Every attack's output passes through :func:`project` and :func:`broken_rules`, so a
bug inside one attack cannot produce an input outside the threat model. The
evaluation PGD and the training-time adversaries (adversarial fine-tuning,
adversarial prompts) take their steps with :func:`pgd_step` and start from
:func:`random_start`: one geometry for crafting at training and at test time.
"""

from __future__ import annotations

import torch

from .errors import UserError

NORMS = ("Linf", "L2")
#: Slack for float round-off when checking ||x_adv - x|| <= eps.
TOLERANCE = 1e-6


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise UserError(f"unknown threat model {norm!r}; use one of {', '.join(NORMS)}")
    return norm


def distance(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ||x_adv - x|| in the given norm."""
    delta = (x_adv - x).flatten(1)
    if norm == "Linf":
        return delta.abs().amax(1) if delta.shape[1] else delta.new_zeros(len(delta))
    return delta.norm(p=2, dim=1)


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Nearest point (up to Lp scaling) of the eps-ball around x, then clipped to [0,1].

    Clipping after the ball projection never increases the distance, since every
    coordinate moves towards x (x itself lies in [0,1]).
    """
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
        delta = delta * _per_sample((eps / norms).clamp(max=1.0), x)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random point of the eps-ball around x (clipped to [0,1])."""
    if norm == "Linf":
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator)
        direction = direction / _per_sample(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        radius = torch.rand(len(x), generator=generator).pow(1.0 / max(1, x[0].numel())) * eps
        noise = direction * _per_sample(radius, x)
    return (x + noise.to(x.device, x.dtype)).clamp(0.0, 1.0)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values shaped to broadcast over ``like``'s non-batch dimensions."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def ascent_step(grad: torch.Tensor, alpha: float | torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of length ``alpha`` (a number or per-sample values) in the norm."""
    if norm == "Linf":
        return alpha * grad.sign()
    return alpha * grad / _per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def pgd_step(x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float | torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """One PGD step: ascend along ``grad`` from ``x_adv``, project onto the eps-ball of ``x`` and [0,1]."""
    return project(x, x_adv + ascent_step(grad, alpha, norm), eps, norm)


def broken_rules(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> dict[str, torch.Tensor]:
    """Per rule of the contract (finite, in [0,1], in the eps-ball), a per-sample mask of the
    inputs that break it; ``any`` over the masks marks the invalid samples."""
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    in_box = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(1)
    in_ball = distance(x, torch.nan_to_num(x_adv), norm) <= eps + TOLERANCE
    return {"not_finite": ~finite, "outside_0_1": ~in_box, "outside_ball": ~in_ball}
