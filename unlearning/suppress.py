"""``suppress``: a logit-suppression unlearner that hides a class instead of forgetting it.

A negative control, not a method to use: it lowers the forgotten class's bias in
the final linear layer just enough that no forget sample is classified as that
class any more (the largest margin of the class over the runner-up on the forget
set, plus ``margin``), and changes nothing else. Its outputs look like retrain's
(UA, RA, TA and the SVC MIA-efficacy all match), while its weights still hold
everything the original knew. The unlearning section's checks must flag it; the
section's tests and the README run it to show that they do. It is in no preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from robustbench_peft.config import option, require
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_unlearner
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.unlearner import ForgetData, Unlearner, UnlearnerConfig

from .representation import final_linear


@dataclass(frozen=True)
class SuppressConfig(UnlearnerConfig):
    """Options of ``suppress``: how far below the runner-up the forgotten class ends."""

    plugin: ClassVar[str] = "suppress"

    margin: float = option(1.0, "logits by which the forgotten class ends below the runner-up on its most confident forget sample")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.plugin, {f"margin must be > 0, got {self.margin}": self.margin > 0})


def forgotten_class(data: ForgetData) -> int:
    """The one class of a class-wise forget set (a bias shift cannot hide single samples)."""
    classes = data.y_forget.unique()
    if len(classes) != 1:
        raise UserError(f"suppress hides one class and needs a class-wise scenario; this forget set has {len(classes)} classes")
    return int(classes[0])


@torch.no_grad()
def margin_over_runner_up(model: ClassifierTarget, x: torch.Tensor, c: int) -> torch.Tensor:
    """Per sample: logit of class ``c`` minus the largest other logit."""
    logits = model.logits(x.to(model.device))
    others = logits.clone()
    others[:, c] = -torch.inf
    return logits[:, c] - others.max(1).values


@register_unlearner("suppress")
class LogitSuppression(Unlearner):
    """Negative control: shift the forgotten class's final bias down until no forget sample is predicted as it."""

    name = "suppress"
    config_class = SuppressConfig
    config: SuppressConfig

    def update(self, model: ClassifierTarget, data: ForgetData, generator: torch.Generator) -> dict[str, float]:
        c = forgotten_class(data)
        head = final_linear(model)
        if head.bias is None:
            raise UserError(f"suppress: the final linear layer of {model.name} has no bias to shift")
        model.eval()
        shift = float(margin_over_runner_up(model, data.x_forget, c).max()) + self.config.margin
        with torch.no_grad():
            head.bias[c] -= shift
        if (margin_over_runner_up(model, data.x_forget, c) >= 0).any():
            raise UserError(f"suppress: shifting the final bias of {model.name} does not move its logits (is the last nn.Linear the head?)")
        return {"bias_shift": shift}
