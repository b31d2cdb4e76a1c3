"""The attack contract, enforced in one final ``__call__`` for every attack.

Subclasses only implement :meth:`Attack.perturb` (craft candidates for the samples
still standing at one eps). The base class owns everything that makes numbers
trustworthy: input checks, eps handling from small to large, effort only on
samples not yet broken, projection onto the threat model, [0,1] clipping, a
validity check of what is returned, and predictions re-measured on the returned
inputs by the evaluated target.

An attack may stop working on a sample only on the word of a
:class:`~robustbench_peft.referee.Referee` (the evaluated target in float32).
An attack crafted on another model (non-adaptive) gets none and spends its
whole budget. A returned input that still breaks the contract after projection
(a projection bug) is replaced by the clean input, never scored, and counted in
``AttackResult.invalid``, which the ``returned_inputs_valid`` check reads.
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .errors import UserError
from .precision import crafting_autocast
from .referee import Referee
from .targets import ClassifierTarget
from .threat_model import broken_rules, check_norm, project


class AttackValidityError(RuntimeError):
    """An attack returned candidates of the wrong shape: a bug."""


@dataclass
class AttackResult:
    """Per-sample, per-eps outcome of one attack on one target.

    ``correct[i, j]`` is True when sample j is still classified correctly by the
    evaluated target on ``x_adv[i][j]`` (re-measured, never an attack's own flag).
    """

    name: str
    threat_model: str
    eps: list[float]
    correct: torch.Tensor
    x_adv: list[torch.Tensor]
    seconds: float
    config: dict[str, Any]
    adaptive: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    invalid: list[dict[str, int]] = field(default_factory=list)
    #: The attack's :attr:`Attack.kind` ("white-box", "transfer", "query").
    kind: str = "white-box"
    #: The attack's :attr:`Attack.standard`: a reference evaluation leaderboards rank by.
    standard: bool = False

    @property
    def robust_accuracy(self) -> list[float]:
        return [float(row.float().mean()) if row.numel() else float("nan") for row in self.correct]

    @property
    def success(self) -> torch.Tensor:
        """Per-sample, per-eps success flags (the attack fooled the target)."""
        return ~self.correct


def validate_eps(eps_list: Iterable[Any]) -> list[float]:
    """Positive finite numbers, deduplicated, in the caller's order."""
    values: list[float] = []
    for raw in eps_list:
        try:
            eps = float(raw)
        except (TypeError, ValueError):
            raise UserError(f"eps must be a number, got {raw!r}") from None
        if not math.isfinite(eps) or eps <= 0:
            raise UserError(f"eps must be a positive finite number, got {raw!r}")
        if eps not in values:
            values.append(eps)
    if not values:
        raise UserError("at least one eps value is needed")
    return values


class Attack(ABC):
    """Base class of white-box, transfer and black-box classifier attacks.

    Args:
        norm: the threat model, "Linf" or "L2".
        seed: every random choice of the attack derives from it.
        batch_size: samples crafted at once.
    """

    #: Registry name; set by subclasses.
    name: str = "attack"
    #: False for attacks whose perturbation is crafted without the evaluated pipeline.
    adaptive: bool = True
    #: How the attack learns about the model: "white-box" (gradients of the evaluated
    #: pipeline), "transfer" (gradients of other models only) or "query" (outputs only).
    #: The checks compare the latter two with white-box per sample.
    kind: str = "white-box"
    #: True for the reference evaluation a leaderboard ranks by (AutoAttack): submissions
    #: need it, and the ranked worst case is over the samples it covered.
    standard: bool = False
    #: Margin the evaluated target must show (max wrong logit - true logit) before a
    #: sample counts as broken during the attack (early stop); 0 = misclassified.
    kappa: float = 0.0
    #: Autocast while crafting ("off", "bf16", "fp16"); set by the runner option ``amp=``.
    #: Off by default: a half-precision gradient can vanish and overstate robustness.
    #: Accuracy is re-measured in float32 either way.
    amp: str = "off"

    def __init__(self, norm: str = "Linf", seed: int = 0, batch_size: int = 256, progress: bool = True) -> None:
        self.norm = check_norm(norm)
        self.seed = int(seed)
        if int(batch_size) < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.progress = progress

    # -- what subclasses implement -------------------------------------------------
    @abstractmethod
    def perturb(self, model: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, eps: float, generator: torch.Generator, referee: Referee | None = None) -> torch.Tensor:
        """Candidates for ``x`` (all still correctly classified) within ``eps``.

        ``referee`` (None when crafting on another model than the evaluated one) is
        the only authority on whether a sample may stop receiving effort."""

    def prepare(self, task: Any) -> None:
        """Called once by the runner before a run, with the task: an attack that loads models
        of its own (transfer surrogates) loads them for the task's classes and pixel size."""

    def config(self) -> dict[str, Any]:
        """The settings that reproduce this attack (recorded in reports)."""
        return {"norm": self.norm, "seed": self.seed}

    def describe(self) -> str:
        return self.name

    # -- the contract ----------------------------------------------------------------
    def __call__(
        self,
        target: ClassifierTarget,
        x: torch.Tensor,
        y: torch.Tensor,
        eps_list: Sequence[float],
        *,
        craft_target: ClassifierTarget | None = None,
        same_function: bool = False,
    ) -> AttackResult:
        """Attack ``target`` at every eps; perturbations are crafted on ``craft_target``
        (the target itself unless given: a different one makes the evaluation non-adaptive,
        unless ``same_function`` says it computes the same outputs through another gradient,
        e.g. a prompt's exact clip gradient instead of the straight-through one)."""
        eps_values = validate_eps(eps_list)
        target.check_input(x)
        y = torch.as_tensor(y, dtype=torch.long)
        if len(y) != len(x):
            raise UserError(f"{len(x)} inputs but {len(y)} labels")
        craft = craft_target if craft_target is not None else target
        target.eval()
        craft.eval()
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        adaptive = craft is target or same_function
        referee = Referee(target, self.kappa) if adaptive else None
        correct = target.predict(x, self.batch_size) == y
        best = x.clone()
        order = sorted(range(len(eps_values)), key=lambda i: eps_values[i])
        rows: dict[int, torch.Tensor] = {}
        advs: dict[int, torch.Tensor] = {}
        invalid: dict[int, dict[str, int]] = {}
        unconfirmed = 0  # samples the referee confirmed broken that re-measure as correct
        bar = tqdm(total=len(order), desc=f"{self.describe()} {self.norm}", leave=False, disable=not self.progress)
        for i in order:
            eps = eps_values[i]
            standing = correct.nonzero().flatten()
            confirmed_before = referee.confirmed if referee is not None else 0
            if len(standing):
                with crafting_autocast(craft.device, self.amp):
                    candidates = self._perturb_with_backoff(craft, x[standing], y[standing], eps, generator, referee)
                if candidates.shape != x[standing].shape:
                    raise AttackValidityError(f"{self.name} returned shape {tuple(candidates.shape)} for {tuple(x[standing].shape)}")
                best[standing] = project(x[standing], torch.nan_to_num(candidates, nan=0.0), eps, self.norm)
            rules = broken_rules(x, best, eps, self.norm)
            invalid[i] = {rule: int(mask.sum()) for rule, mask in rules.items()}
            bad = torch.stack(list(rules.values())).any(0)
            if bool(bad.any()):
                best[bad] = x[bad]  # never score an input outside the threat model
                warnings.warn(f"{self.name} at eps={eps}: {int(bad.sum())} inputs outside the threat model after projection: {invalid[i]}; scored as the clean inputs", RuntimeWarning, stacklevel=2)
            x_adv = best.clone()
            correct = target.predict(x_adv, self.batch_size) == y  # re-measured on what is returned
            if referee is not None and len(standing):
                newly_broken = int((~correct[standing]).sum())
                unconfirmed += max(0, referee.confirmed - confirmed_before - newly_broken)
            rows[i], advs[i] = correct.clone(), x_adv
            bar.update(1)
        bar.close()
        details = self.details()
        if referee is not None:
            details = {**details, "referee": {**referee.record(), "unconfirmed_on_remeasure": unconfirmed}}
        return AttackResult(
            name=self.describe() + ("" if self.amp == "off" else f"@{self.amp}"),
            threat_model=self.norm,
            eps=eps_values,
            correct=torch.stack([rows[i] for i in range(len(eps_values))]),
            x_adv=[advs[i] for i in range(len(eps_values))],
            seconds=time.perf_counter() - start,
            config={"attack": self.name, **self.config(), **({"amp": self.amp} if self.amp != "off" else {})},
            adaptive=self.adaptive and adaptive,
            details=details,
            invalid=[invalid[i] for i in range(len(eps_values))],
            kind=self.kind,
            standard=self.standard,
        )

    def _perturb_with_backoff(self, model: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, eps: float, generator: torch.Generator, referee: Referee | None) -> torch.Tensor:
        """``perturb``, halving the batch size on out-of-memory until it fits (or 1 fails)."""
        while True:
            state = generator.get_state()
            try:
                return self.perturb(model, x, y, eps, generator, referee=referee).detach().cpu()
            except (torch.OutOfMemoryError, MemoryError) as exc:
                if self.batch_size <= 1:
                    raise UserError(f"{self.name}: out of memory even with batch size 1: {exc}") from None
                self.batch_size = max(1, self.batch_size // 2)
                generator.set_state(state)
                warnings.warn(f"{self.name}: out of memory; retrying with batch size {self.batch_size}", RuntimeWarning, stacklevel=2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def details(self) -> dict[str, Any]:
        """Attack-specific extras for the report (e.g. accuracy after each component)."""
        return {}


def batches(n: int, batch_size: int) -> Iterable[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))
