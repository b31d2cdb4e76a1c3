"""Lp threat models in pixel space: distances, projection, random starts.

Every attack's output passes through :func:`project` and :func:`violations`, so a
bug inside one attack cannot produce an input outside the threat model.
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
        factor = (eps / norms).clamp(max=1.0).view(-1, *([1] * (x.dim() - 1)))
        delta = delta * factor
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random point of the eps-ball around x (clipped to [0,1])."""
    if norm == "Linf":
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=generator)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        radius = torch.rand(len(x), generator=generator).pow(1.0 / max(1, x[0].numel())) * eps
        noise = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    return (x + noise.to(x.device, x.dtype)).clamp(0.0, 1.0)


def broken_rules(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> dict[str, torch.Tensor]:
    """Per rule of the contract (finite, in [0,1], in the eps-ball), a per-sample mask of the
    inputs that break it; ``any`` over the masks marks the invalid samples."""
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    in_box = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(1)
    in_ball = distance(x, torch.nan_to_num(x_adv), norm) <= eps + TOLERANCE
    return {"not_finite": ~finite, "outside_0_1": ~in_box, "outside_ball": ~in_ball}


def violations(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> dict[str, int]:
    """Counts of returned inputs that break the contract (must all be zero)."""
    return {rule: int(mask.sum()) for rule, mask in broken_rules(x, x_adv, eps, norm).items()}
