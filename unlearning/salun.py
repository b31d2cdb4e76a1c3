"""SalUn: saliency unlearning (Fan et al., ICLR 2024).

A weight saliency mask selects the weights the forgetting loss is most
sensitive to: |gradient of -CE summed over the forget set| at the original
weights, top ``fraction`` globally. Only those weights are updated, with the
random-label objective (RL). Masked-out weights are restored exactly after every
optimiser step, so momentum and weight decay cannot move them: they stay
bit-identical to the original.

Settings are the paper's for classifiers: SGD (momentum 0.9, weight decay
5e-4), 10 epochs at a constant lr 0.013, batch 256, 50% of the weights; the
update loop is RL's (the forget pass with random labels, then the retain pass,
every epoch), as in the reference ``unlearn/RL.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from robustbench_peft.config import option, require
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_unlearner
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.unlearner import ForgetData

from .baselines import RandomLabel, RandomLabelConfig, _ce

#: Samples per backward pass while accumulating the saliency gradient.
SALIENCY_BATCH = 256


def forget_gradients(model: ClassifierTarget, data: ForgetData) -> dict[str, torch.Tensor]:
    """Gradient of the forgetting loss (-CE, summed over the forget set) w.r.t. every weight."""
    params = dict(model.model.named_parameters())
    model.eval()
    model.zero_grad(set_to_none=True)
    device = model.device
    for start in range(0, len(data.y_forget), SALIENCY_BATCH):
        x = data.x_forget[start : start + SALIENCY_BATCH].to(device)
        y = data.y_forget[start : start + SALIENCY_BATCH].to(device)
        (-F.cross_entropy(model(x), y, reduction="sum")).backward()
    grads = {name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for name, p in params.items()}
    model.zero_grad(set_to_none=True)
    return grads


def saliency_mask(grads: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Boolean masks keeping exactly the top ``fraction`` of |gradient| entries over all weights.

    Ties are broken by position (a stable sort), so the mask is deterministic and
    holds exactly ``round(fraction * total)`` entries.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"salun: fraction must be in (0, 1], got {fraction}")
    names = list(grads)
    flat = torch.cat([grads[n].abs().flatten().cpu() for n in names])
    keep = max(1, int(round(fraction * flat.numel())))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.sort(flat, descending=True, stable=True).indices[:keep]] = True
    masks, offset = {}, 0
    for n in names:
        size = grads[n].numel()
        masks[n] = chosen[offset : offset + size].view_as(grads[n]).to(grads[n].device)
        offset += size
    return masks


@dataclass(frozen=True)
class SalUnConfig(RandomLabelConfig):
    """Options of ``salun``: the paper's classifier setting (SGD, 10 epochs, lr 0.013, batch 256, mask 50%)."""

    plugin: ClassVar[str] = "salun"

    fraction: float = option(0.5, "fraction of the weights updated: the most forget-salient ones, in (0, 1]")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.plugin, {f"fraction must be in (0, 1], got {self.fraction}": 0 < self.fraction <= 1})


@register_unlearner("salun")
class SalUn(RandomLabel):
    """SalUn: random labels on the forget set + CE on retain, updating only the most forget-salient weights."""

    name = "salun"
    config_class = SalUnConfig
    config: SalUnConfig

    def label(self) -> str:
        fraction = self.config.fraction
        return self.name if fraction == 0.5 else f"{self.name}:fraction={fraction:g}"

    def update(self, model: ClassifierTarget, data: ForgetData, generator: torch.Generator) -> dict[str, float]:
        masks = saliency_mask(forget_gradients(model, data), self.config.fraction)
        params = dict(model.model.named_parameters())
        frozen = {n: params[n].detach().clone() for n in params}

        def mask_gradients() -> None:
            for n, p in params.items():
                if p.grad is not None:
                    p.grad.mul_(masks[n])

        @torch.no_grad()
        def restore_masked_out() -> None:
            for n, p in params.items():
                p.copy_(torch.where(masks[n], p, frozen[n]))

        steps = self.run_epochs(
            model,
            len(data.y_forget) + len(data.y_retain),
            self.relabelled_batches(data, generator),
            _ce,
            before_step=mask_gradients,
            after_step=restore_masked_out,
        )
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        return {"steps": float(steps), "masked_in": float(kept), "weights": float(total)}

