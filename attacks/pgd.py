"""Projected gradient descent (Madry et al. 2018) with the options evaluations need.

Linf and L2, random start, restarts, step-size schedules, CE / CW / DLR losses,
targeted mode, momentum (MI-FGSM), input diversity (DI) for transfer, and
expectation over transformation (``eot``: gradients averaged over several
forward passes of a randomised model).

Samples stop receiving effort the step the evaluated model, in float32,
misclassifies them by more than ``kappa`` (``early_stop``; the base class's
:class:`~robustbench_peft.referee.Referee` decides). Crafted on another model
(non-adaptive, transfer), PGD gets no referee and spends its whole budget: every
step, every restart, and per sample the restart with the highest crafting loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from robustbench_peft.attack import Attack, AttackConfig, Effort
from robustbench_peft.config import option
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_attack
from robustbench_peft.threat_model import pgd_step, random_start

from .active_batch import ActiveBatch
from .losses import LOSSES, get_loss

SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda t, steps: 1.0,
    "cosine": lambda t, steps: 0.5 * (1 + math.cos(math.pi * t / max(1, steps))),
    "step": lambda t, steps: 1.0 if t < steps // 2 else (0.5 if t < (3 * steps) // 4 else 0.25),
}


def _least_likely(logits: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return logits.argmin(1)


def _random_other(logits: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    shift = torch.randint(1, logits.shape[1], y.shape, generator=generator)
    return (y + shift.to(y.device)) % logits.shape[1]


def _next_class(logits: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (y + 1) % logits.shape[1]


TARGET_CHOICES = {"least_likely": _least_likely, "random": _random_other, "next": _next_class}


def diverse_input(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Random resize-and-pad (Xie et al. 2019) with probability ``prob``, back to the input size."""
    if prob <= 0 or torch.rand(1, generator=generator).item() >= prob:
        return x
    size = x.shape[-1]
    outer = max(size + 1, int(round(size * 1.15)))
    inner = int(torch.randint(size, outer, (1,), generator=generator))
    resized = F.interpolate(x, size=(inner, inner), mode="nearest")
    pad_left = int(torch.randint(0, outer - inner + 1, (1,), generator=generator))
    pad_top = int(torch.randint(0, outer - inner + 1, (1,), generator=generator))
    padded = F.pad(resized, (pad_left, outer - inner - pad_left, pad_top, outer - inner - pad_top))
    return F.interpolate(padded, size=x.shape[-2:], mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class PGDConfig(AttackConfig):
    """Options of :class:`PGD`."""

    steps: int = option(20, "gradient steps per restart")
    restarts: int = option(1, "runs from fresh random starts (a sample broken by one skips the rest)")
    step_size: float | None = option(None, "step size in pixel units (None: rel_step_size * eps)")
    rel_step_size: float | None = option(None, "step size relative to eps (None: 2.5 / steps)")
    schedule: str = option("constant", f"step-size schedule: {', '.join(SCHEDULES)}")
    random_start: bool = option(True, "start from a uniformly random point of the eps-ball")
    loss: str = option("ce", f"loss to maximise: {', '.join(LOSSES)}")
    targeted: bool = option(False, "move towards a target class instead of away from the label")
    target_choice: str = option("least_likely", f"the target class when targeted: {', '.join(TARGET_CHOICES)}")
    momentum: float = option(0.0, "MI-FGSM momentum on the normalised gradient (0: plain PGD)")
    input_diversity: float = option(0.0, "probability of a random resize-and-pad per step (DI, for transfer)")
    early_stop: bool = option(True, "stop on a sample once the evaluated model misclassifies it")
    kappa: float = option(0.0, "logit margin by which a sample must be misclassified to stop early")
    eot: int = option(1, "forward passes averaged per gradient (EOT, for randomised models)")

    def __post_init__(self) -> None:
        super().__post_init__()
        get_loss(self.loss)
        if self.kappa < 0:
            raise UserError(f"pgd kappa is a logit margin >= 0, got {self.kappa}")
        if self.eot < 1:
            raise UserError(f"pgd eot is the number of forward passes averaged per step, >= 1; got {self.eot}")
        if self.steps < 1 or self.restarts < 1:
            raise UserError(f"pgd needs steps >= 1 and restarts >= 1, got steps={self.steps}, restarts={self.restarts}")
        if any(v is not None and v <= 0 for v in (self.step_size, self.rel_step_size)):
            raise UserError("pgd step_size and rel_step_size must be > 0 (leave them unset for the default 2.5 * eps / steps)")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown pgd schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.target_choice not in TARGET_CHOICES:
            raise UserError(f"unknown target_choice {self.target_choice!r}; use one of {', '.join(TARGET_CHOICES)}")
        if not 0 <= self.input_diversity <= 1:
            raise UserError(f"input_diversity is a probability in [0,1], got {self.input_diversity}")


@register_attack("pgd")
class PGD(Attack):
    """Projected gradient descent: Linf/L2, restarts, CE/CW/DLR, targeted, schedules, MI and DI."""

    name = "pgd"
    config_class = PGDConfig
    config: PGDConfig
    check_reference = True

    def __init__(self, config: PGDConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.loss_fn = get_loss(self.config.loss)

    @property
    def kappa(self) -> float:  # type: ignore[override]
        return self.config.kappa

    @classmethod
    def with_effort(cls, norm: str, seed: int, effort: Effort) -> "PGD":
        """PGD with the effort's steps, restarts and loss; a single step is FGSM-like (whole eps, no random start)."""
        single = {"random_start": False, "rel_step_size": 1.0} if effort.single_step else {}
        return cls(norm=norm, seed=seed, progress=False, steps=effort.steps, restarts=effort.restarts, loss=effort.loss, **single)

    def describe(self) -> str:
        c = self.config
        parts = [f"pgd-{c.steps}"]
        if c.restarts > 1:
            parts.append(f"x{c.restarts}")
        if c.loss != "ce":
            parts.append(c.loss)
        if c.targeted:
            parts.append("targeted")
        if c.eot > 1:
            parts.append(f"eot{c.eot}")
        return "-".join(parts)

    def alpha(self, eps: float) -> float:
        c = self.config
        if c.step_size is not None:
            return c.step_size
        return (c.rel_step_size if c.rel_step_size is not None else 2.5 / c.steps) * eps

    def perturb(self, model, x, y, eps, generator, referee=None, *, batch_size=None):
        c, size = self.config, batch_size or self.batch_size
        target = None
        if c.targeted:
            target = TARGET_CHOICES[c.target_choice](model.logits(x, size), y, generator)
        if referee is None:
            return self._full_budget(model, x, y, target, eps, generator, size)
        best = x.clone()
        done = torch.zeros(len(x), dtype=torch.bool)
        for restart in range(c.restarts):
            todo = (~done).nonzero().flatten()
            if len(todo) == 0:
                break
            final_check = restart < c.restarts - 1  # the last restart's flags are never read
            found, x_last = self._one_run(model, x[todo], y[todo], None if target is None else target[todo], eps, generator, referee, size, final_check)
            best[todo] = x_last  # fooling iterates are frozen; others keep the latest restart's last iterate
            done[todo] |= found
        return best

    def _full_budget(self, model, x, y, target, eps, generator, size: int):
        """Every step of every restart on every sample; per sample, the restart whose last
        iterate has the highest crafting loss (the crafting model cannot say who is broken
        on the evaluated one)."""
        best, best_loss = x.clone(), torch.full((len(x),), float("-inf"))
        for _ in range(self.config.restarts):
            _, x_last = self._one_run(model, x, y, target, eps, generator, None, size, final_check=False)
            loss = self._crafting_loss(model, x_last, y, target, size)
            better = loss > best_loss
            best[better], best_loss[better] = x_last[better], loss[better]
        return best

    @torch.no_grad()
    def _crafting_loss(self, model, x, y, target, size: int) -> torch.Tensor:
        logits = model.logits(x, size)
        return self.loss_fn(logits, y, None if target is None else target.cpu()).float()

    def _fooled(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == target if target is not None else pred != y

    def _gradient(self, model, xa, y, target, generator):
        """Logits of the first pass and the input gradient of the loss summed over ``eot`` passes."""
        total, first = None, None
        for _ in range(self.config.eot):
            logits = model(diverse_input(xa, self.config.input_diversity, generator))
            loss = self.loss_fn(logits, y, target).sum()
            total = loss if total is None else total + loss
            first = logits if first is None else first
        return first, torch.autograd.grad(total, xa)[0].detach()

    def _one_run(self, model, x, y, target, eps, generator, referee, size: int, final_check: bool = True):
        """One PGD run over every sample; returns (fooled flags, first-fooling or final iterates).

        Samples flow through an :class:`ActiveBatch` of ``size`` slots: a sample
        leaves it the step the referee confirms it fooled (``early_stop``; never without
        a referee) or after its last step, and the next one waiting takes its slot.
        Samples that ran every step unfooled are checked in one graph-free pass at the
        end, and not at all without ``final_check`` (the caller re-measures the returned
        inputs anyway).
        """
        c = self.config
        start = random_start(x, eps, c.norm, generator) if c.random_start else x
        out = start.clone()
        found = torch.zeros(len(x), dtype=torch.bool)
        unchecked: list[torch.Tensor] = []
        alphas = [self.alpha(eps) * SCHEDULES[c.schedule](t, c.steps) for t in range(c.steps)]
        constant_alpha = len(set(alphas)) == 1
        alpha_table = torch.tensor(alphas, dtype=x.dtype, device=model.device)
        shape = (-1, *([1] * (x.dim() - 1)))
        batch = ActiveBatch.empty(x, model.device, targeted=target is not None, momentum=c.momentum > 0)
        early_stop = c.early_stop and referee is not None
        single_pass = c.input_diversity == 0 and c.eot == 1  # the gradient's logits are those of x_adv itself
        waiting, oldest = 0, 0  # next sample to admit; steps taken by the longest-serving slot
        while waiting < len(x) or len(batch):
            if len(batch) < size and waiting < len(x):
                rows = torch.arange(waiting, min(len(x), waiting + size - len(batch)))
                waiting += len(rows)
                batch.admit(rows, x[rows], start[rows], y[rows], None if target is None else target[rows])
            xa = batch.x_adv.detach().requires_grad_(True)
            logits, grad = self._gradient(model, xa, batch.y, batch.target, generator)
            fooled = None
            if early_stop:
                seen = logits.detach() if single_pass else None
                if seen is None:
                    with torch.no_grad():
                        seen = model(xa)
                fooled = referee.confirm(model, xa, batch.y, self._fooled(seen, batch.y, batch.target), logits=seen)
            if batch.momentum is not None:
                grad = grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(shape)
                batch.momentum = c.momentum * batch.momentum + grad
                grad = batch.momentum
            alpha = alphas[0] if constant_alpha else alpha_table[batch.step].view(shape)
            stepped = pgd_step(batch.x_clean, batch.x_adv, grad, alpha, eps, c.norm)
            any_fooled = fooled is not None and bool(fooled.any())
            # a fooling iterate is kept as it is
            batch.x_adv = torch.where(fooled.view(shape), batch.x_adv, stepped) if any_fooled else stepped
            batch.step += 1
            oldest += 1
            if any_fooled or oldest >= c.steps:
                out_of_steps = batch.step >= c.steps
                retire = out_of_steps | fooled if any_fooled else out_of_steps
                leaving = batch.rows[retire.cpu()]
                broken = fooled[retire].cpu() if any_fooled else torch.zeros(len(leaving), dtype=torch.bool)
                out[leaving] = batch.x_adv[retire].to(out.device)
                found[leaving[broken]] = True
                unchecked.append(leaving[~broken])
                batch.keep(~retire)
                oldest = int(batch.step.max()) if len(batch) else 0
        if final_check and unchecked and referee is not None:
            rows = torch.cat(unchecked)
            labels = y[rows]
            logits = model.logits(out[rows], size)
            flagged = self._fooled(logits, labels, None if target is None else target[rows])
            found[rows] = referee.confirm(model, out[rows], labels, flagged, logits=logits).cpu()
        return found, out
