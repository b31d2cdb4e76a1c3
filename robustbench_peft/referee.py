"""Who decides that a sample is broken while an attack is still running.

An iterative attack stops spending effort on a sample (early stop, skipped
restarts) once it believes the sample is fooled. That belief must come from the
model being evaluated, in float32: a sample frozen on the word of a surrogate,
of half-precision logits or of a coin-flip forward pass would be counted as
robust by the final re-measurement although the attack stopped trying.

The :class:`Referee` is created by :class:`~robustbench_peft.attack.Attack`'s
``__call__`` for one call, handed to ``perturb``, and read back into the
attack's details (``details["referee"]``). An attack crafted on another model
than the evaluated one (non-adaptive, transfer) gets no referee: it has no
right to look at the evaluated model, so it spends its whole budget.
"""

from __future__ import annotations

import torch

from .targets import ClassifierTarget


def misclassification_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{k != y} z_k - z_y`` per sample: positive once the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return others - true


class Referee:
    """Confirms an attack's "fooled" flags on the evaluated target in float32, with margin ``kappa``.

    ``disagreements`` counts flags it refused (the attack keeps working on those
    samples); ``confirmed`` counts the flags it accepted.
    """

    def __init__(self, target: ClassifierTarget, kappa: float = 0.0) -> None:
        self.target = target
        self.kappa = float(kappa)
        self.disagreements = 0
        self._confirmed: torch.Tensor | int = 0  # a tensor sum while attacking: no device sync per step

    @property
    def confirmed(self) -> int:
        return int(self._confirmed)

    def trusts(self, model: torch.nn.Module, logits: torch.Tensor | None) -> bool:
        """Whether ``logits`` computed by ``model`` are already the evaluated target's float32 verdict."""
        if logits is None or model is not self.target or self.target.is_stochastic or logits.dtype != torch.float32:
            return False
        device_type = self.target.device.type
        return not torch.is_autocast_enabled(device_type)

    def confirm(self, model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor, flagged: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """The subset of ``flagged`` samples that the evaluated target misclassifies by more than ``kappa``.

        ``logits`` are the attack's own logits for ``x_adv`` (reused when they can be
        trusted, so confirming costs nothing in the common adaptive float32 case)."""
        trusted = self.trusts(model, logits)
        if trusted and self.kappa == 0.0:
            self._confirmed = self._confirmed + flagged.sum()  # the attack's logits are the verdict
            return flagged
        if not bool(flagged.any()):
            return flagged
        margin = torch.full(flagged.shape, float("-inf"), device=flagged.device)
        if trusted:
            margin[flagged] = misclassification_margin(logits[flagged].detach(), y[flagged])
        else:
            with torch.no_grad(), torch.autocast(self.target.device.type, enabled=False):
                verdict = self.target(x_adv[flagged].detach().float().to(self.target.device)).float()
            margin[flagged] = misclassification_margin(verdict, y[flagged].to(verdict.device)).to(margin.device)
        confirmed = flagged & (margin > self.kappa)
        self._confirmed = self._confirmed + int(confirmed.sum())
        self.disagreements += int((flagged & ~confirmed).sum())
        return confirmed

    def record(self) -> dict[str, float | int]:
        return {"kappa": self.kappa, "confirmed": self.confirmed, "disagreements": self.disagreements}
