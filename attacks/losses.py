"""Per-sample attack losses, all to be *maximised*: CE, CW margin and DLR.

Targeted variants move towards ``target`` instead of away from ``y``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from robustbench_peft.errors import UserError

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _other_max(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """max_{k != label} logits_k."""
    masked = logits.clone()
    masked.scatter_(1, label[:, None], float("-inf"))
    return masked.amax(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def cw_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Carlini-Wagner margin on logits (positive once the attack succeeds)."""
    if target is None:
        return _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)
    return logits.gather(1, target[:, None]).squeeze(1) - _other_max(logits, target)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020): shift and scale invariant."""
    n_classes = logits.shape[1]
    ordered = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        if n_classes < 3:
            raise UserError("the DLR loss needs at least 3 classes; use loss=ce or loss=cw")
        return -(z_y - _other_max(logits, y)) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    if n_classes < 4:
        raise UserError("the targeted DLR loss needs at least 4 classes; use loss=ce or loss=cw")
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    return LOSSES[name]
