"""The attack contract, enforced in one final ``__call__`` for every attack.

Subclasses only implement :meth:`Attack.perturb` (craft candidates for the samples
still standing at one eps). The base class owns everything that makes numbers
trustworthy: input checks, eps handling from small to large, effort only on
samples not yet broken, projection onto the threat model, [0,1] clipping, a
validity check of what is returned, and predictions re-measured on the returned
inputs by the evaluated target.

An attack is its frozen :class:`AttackConfig`; what belongs to one call lives in
the call: its seed (the runner's per-chunk seed), generator, referee and the batch
size it fell back to on out-of-memory. What ``perturb`` learns at one eps comes
back with its candidates (:class:`Crafted`), and :meth:`Attack.details` turns the
call's records into the report's details.

An attack may stop working on a sample only on the word of a
:class:`~robustbench_peft.referee.Referee` (the evaluated target in float32).
An attack crafted on another model (non-adaptive) gets none and spends its
whole budget. A returned input that still breaks the contract after projection
(a projection bug) is replaced by the clean input, never scored, and counted in
``AttackResult.invalid``, which the ``returned_inputs_valid`` check reads.
"""

from __future__ import annotations

import inspect
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from tqdm.auto import tqdm

from .config import Configurable, PluginConfig, option
from .errors import UserError
from .precision import AMP_DTYPES, crafting_autocast
from .referee import Referee
from .targets import ClassifierTarget
from .threat_model import broken_rules, check_norm, project, validate_eps  # noqa: F401 - validate_eps: re-exported


@dataclass(frozen=True)
class AttackConfig(PluginConfig):
    """Options every classifier attack has."""

    norm: str = option("Linf", "threat model: Linf or L2")
    seed: int = option(0, "seed of every random choice (the runner derives one per chunk from it)")
    batch_size: int = option(256, "samples crafted at once (halved while out of memory)")
    progress: bool = option(True, "show a progress bar over the eps values")
    amp: str = option("off", "autocast while crafting: off, bf16 or fp16 (accuracy is re-measured in float32 either way)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))  # norm=linf is Linf
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.amp not in AMP_DTYPES:
            raise UserError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")

    def to_json(self) -> dict[str, Any]:
        """``asdict`` less what does not decide the result: ``progress`` (display only) and
        ``amp`` when off (only mixed precision marks a record)."""
        out = super().to_json()
        del out["progress"]
        if self.amp == "off":
            del out["amp"]
        return out


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


@dataclass(frozen=True)
class Crafted:
    """What :meth:`Attack.perturb` may return instead of bare candidates: the candidates and
    what the attack learned crafting them at this eps (e.g. the accuracy after each
    component), which the call hands to :meth:`Attack.details`."""

    x_adv: torch.Tensor
    record: Any = None


class Attack(Configurable, ABC):
    """Base class of white-box, transfer and black-box classifier attacks.

    Built from one :class:`AttackConfig` (a subclass per attack): ``PGD(steps=10)`` or
    ``PGD(PGDConfig(steps=10))``.
    """

    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    config: AttackConfig
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
    #: True for the attack the checks build their own white-box attacks from (see
    #: :meth:`with_effort`); the checks find it by this flag, never by name.
    check_reference: bool = False
    #: Margin the evaluated target must show (max wrong logit - true logit) before a
    #: sample counts as broken during the attack (early stop); 0 = misclassified.
    kappa: float = 0.0

    def __init__(self, config: AttackConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        #: The largest batch size known to fit, once a call ran out of memory with a larger
        #: one: later calls start there instead of running out again.
        self._fitting_batch: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        #: Whether ``perturb`` takes the call's ``batch_size`` (one written without it reads
        #: :attr:`batch_size`, which follows the out-of-memory back-off too).
        cls._perturb_takes_batch_size = "batch_size" in inspect.signature(cls.perturb).parameters

    @property
    def norm(self) -> str:
        return self.config.norm

    @property
    def seed(self) -> int:
        """The configured seed; one call may be given another (the runner's per-chunk seed)."""
        return self.config.seed

    @property
    def amp(self) -> str:
        """Autocast while crafting ("off", "bf16", "fp16"). Off by default: a half-precision
        gradient can vanish and overstate robustness. Accuracy is re-measured in float32."""
        return self.config.amp

    @property
    def batch_size(self) -> int:
        """Samples crafted at once: the configured number, or less once it ran out of memory."""
        return self._fitting_batch or self.config.batch_size

    @classmethod
    def with_effort(cls, norm: str, seed: int, effort: Effort) -> "Attack":
        """This attack at the effort a check asks for; only a :attr:`check_reference` attack needs it."""
        raise NotImplementedError(f"{cls.__name__} does not serve as the checks' reference attack")

    # -- what subclasses implement -------------------------------------------------
    @abstractmethod
    def perturb(
        self,
        model: ClassifierTarget,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        generator: torch.Generator,
        referee: Referee | None = None,
        *,
        batch_size: int | None = None,
    ) -> torch.Tensor | Crafted:
        """Candidates for ``x`` (all still correctly classified) within ``eps``.

        ``referee`` (None when crafting on another model than the evaluated one) is
        the only authority on whether a sample may stop receiving effort; ``batch_size``
        is the call's (None: :attr:`batch_size`). Return :class:`Crafted` to hand a
        record of this eps to :meth:`details`."""

    def prepare(self, task: Any) -> None:
        """Called once by the runner before a run, with the task: an attack that loads models
        of its own (transfer surrogates) loads them for the task's classes and pixel size."""

    def recorded_config(self) -> dict[str, Any]:
        """The settings that reproduce this attack, as reports record them."""
        return {"attack": self.name, **self.config.to_json()}

    def describe(self) -> str:
        return self.name

    def details(self, records: dict[float, Any], eps: list[float], n: int) -> dict[str, Any]:
        """Attack-specific extras for the report from one call's ``records`` (per eps that had
        samples standing, what :meth:`perturb` returned in :class:`Crafted`) over ``n`` samples."""
        return {}

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
        seed: int | None = None,
    ) -> AttackResult:
        """Attack ``target`` at every eps; perturbations are crafted on ``craft_target``
        (the target itself unless given: a different one makes the evaluation non-adaptive,
        unless ``same_function`` says it computes the same outputs through another gradient,
        e.g. a prompt's exact clip gradient instead of the straight-through one). ``seed``
        seeds this call (None: the configured seed)."""
        eps_values = validate_eps(eps_list)
        target.check_input(x)
        y = torch.as_tensor(y, dtype=torch.long)
        if len(y) != len(x):
            raise UserError(f"{len(x)} inputs but {len(y)} labels")
        craft = craft_target if craft_target is not None else target
        target.eval()
        craft.eval()
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
        adaptive = craft is target or same_function
        referee = Referee(target, self.kappa) if adaptive else None
        size = self.batch_size  # this call's; halved while out of memory
        correct = target.predict(x, size) == y
        best = x.clone()
        order = sorted(range(len(eps_values)), key=lambda i: eps_values[i])
        rows: dict[int, torch.Tensor] = {}
        advs: dict[int, torch.Tensor] = {}
        invalid: dict[int, dict[str, int]] = {}
        records: dict[float, Any] = {}
        unconfirmed = 0  # samples the referee confirmed broken that re-measure as correct
        bar = tqdm(total=len(order), desc=f"{self.describe()} {self.norm}", leave=False, disable=not self.config.progress)
        for i in order:
            eps = eps_values[i]
            standing = correct.nonzero().flatten()
            confirmed_before = referee.confirmed if referee is not None else 0
            if len(standing):
                with crafting_autocast(craft.device, self.amp):
                    crafted, size = self._perturb_with_backoff(craft, x[standing], y[standing], eps, generator, referee, size)
                candidates = crafted.x_adv.detach().cpu()
                records[eps] = crafted.record
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
            correct = target.predict(x_adv, size) == y  # re-measured on what is returned
            if referee is not None and len(standing):
                newly_broken = int((~correct[standing]).sum())
                unconfirmed += max(0, referee.confirmed - confirmed_before - newly_broken)
            rows[i], advs[i] = correct.clone(), x_adv
            bar.update(1)
        bar.close()
        details = self.details(records, eps_values, len(x))
        if referee is not None:
            details = {**details, "referee": {**referee.record(), "unconfirmed_on_remeasure": unconfirmed}}
        return AttackResult(
            name=self.describe() + ("" if self.amp == "off" else f"@{self.amp}"),
            threat_model=self.norm,
            eps=eps_values,
            correct=torch.stack([rows[i] for i in range(len(eps_values))]),
            x_adv=[advs[i] for i in range(len(eps_values))],
            seconds=time.perf_counter() - start,
            config=self.recorded_config(),
            adaptive=self.adaptive and adaptive,
            details=details,
            invalid=[invalid[i] for i in range(len(eps_values))],
            kind=self.kind,
            standard=self.standard,
        )

    def _perturb_with_backoff(self, model: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, eps: float, generator: torch.Generator, referee: Referee | None, size: int) -> tuple[Crafted, int]:
        """``perturb`` at batch size ``size``, halved on out-of-memory until it fits (or 1 fails);
        the candidates and the size that fitted. The generator restarts from the same state."""
        while True:
            state = generator.get_state()
            try:
                sized = {"batch_size": size} if self._perturb_takes_batch_size else {}
                out = self.perturb(model, x, y, eps, generator, referee=referee, **sized)
                return (out if isinstance(out, Crafted) else Crafted(out)), size
            except (torch.OutOfMemoryError, MemoryError) as exc:
                if size <= 1:
                    raise UserError(f"{self.name}: out of memory even with batch size 1: {exc}") from None
                size = self._fitting_batch = max(1, size // 2)
                generator.set_state(state)
                warnings.warn(f"{self.name}: out of memory; retrying with batch size {size}", RuntimeWarning, stacklevel=3)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


@dataclass(frozen=True)
class Effort:
    """How hard one of the checks' own white-box attacks tries: the only settings they vary."""

    steps: int
    restarts: int = 1
    #: "ce" (cross-entropy) or "cw" (the margin loss, which does not saturate).
    loss: str = "ce"
    #: One step of the whole eps from the clean input (no random start).
    single_step: bool = False
