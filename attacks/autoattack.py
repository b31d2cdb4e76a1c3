"""AutoAttack (Croce & Hein 2020) behind one adapter, over pyautoattack or upstream autoattack.

The reference ensemble (APGD-CE, APGD-T, FAB-T, Square) is the number most
robustness papers report, so the suite runs the library itself rather than a
re-implementation. Two packages provide it with different APIs: upstream
``autoattack`` (GitHub only) and PyPI's ``pyautoattack``. Each gets a small
backend adapter; the attack picks upstream when installed, else pyautoattack.

Few-class models are handled here instead of failing inside the library: the
number of target classes is lowered to ``n_classes - 1``, targeted components
(which need 4 classes for the targeted DLR loss) become their untargeted
counterparts below 4 classes, and DLR components become APGD-CE below 3.

The accuracy after each component is read from the library's own progress
messages (exact per-batch counts of perturbed points) and cross-checked against
the predictions on the returned inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from robustbench_peft.attack import Attack, AttackResult, validate_eps
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_attack
from robustbench_peft.targets import ClassifierTarget

VERSIONS = ("standard", "plus", "rand", "custom")
COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")

#: Below this many classes a component is replaced by the value (applied in order, then deduplicated).
FEW_CLASS_FALLBACKS: tuple[tuple[int, dict[str, str]], ...] = (
    (4, {"apgd-t": "apgd-dlr", "fab-t": "fab"}),  # targeted DLR needs 4 classes
    (3, {"apgd-dlr": "apgd-ce"}),  # DLR needs 3 classes
)

LOGGER_NAME = "auto-attack"
_PERTURBED = re.compile(r"^\s*(?P<component>[a-z-]+) - \d+/\d+ - (?:tensor\()?(?P<fooled>\d+)\)? out of (?P<total>\d+) successfully perturbed")
_AFTER = re.compile(r"robust accuracy after (?P<component>[A-Za-z-]+): .*\(total time (?P<seconds>[\d.]+) s\)")
_WARNING = re.compile(r"^\s*warning:?\s*", re.IGNORECASE)
#: Library warnings that are false alarms for some component lists: message fragment -> "is a false alarm".
#: (The library's class-count check warns about the targeted DLR loss whenever APGD-DLR runs on 3 classes.)
FALSE_ALARMS: dict[str, Callable[[Sequence[str]], bool]] = {
    "targeted DLR loss": lambda components: "apgd-t" not in components,
}


# -- few-class adjustments -------------------------------------------------------------
def adjust_components(components: Sequence[str], n_classes: int) -> tuple[list[str], list[str]]:
    """Components runnable on ``n_classes`` classes, and the reasons for every change."""
    out, notes = list(components), []
    for min_classes, fallback in FEW_CLASS_FALLBACKS:
        if n_classes >= min_classes:
            continue
        for i, name in enumerate(out):
            if name in fallback:
                notes.append(f"{name} -> {fallback[name]}: needs >= {min_classes} classes, model has {n_classes}")
                out[i] = fallback[name]
    return list(dict.fromkeys(out)), notes


# -- backends ------------------------------------------------------------------------
class Backend(Protocol):
    """What the adapter needs from one AutoAttack package."""

    module: str

    def build(self, model: torch.nn.Module, *, norm: str, eps: float, version: str, seed: int, device: torch.device, components: list[str]) -> Any:
        ...

    def run(self, adversary: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        """Adversarial inputs and the library's progress messages (warnings prefixed 'Warning:')."""
        ...


class _CaptureHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.lines.append(f"Warning: {text}" if record.levelno >= logging.WARNING else text)


@contextlib.contextmanager
def _captured_logger(name: str) -> Iterator[_CaptureHandler]:
    """Collect a library logger's messages (debug included) without printing them."""
    logger = logging.getLogger(name)
    handler = _CaptureHandler()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class PyAutoAttackBackend:
    """PyPI ``pyautoattack``: keyword-only API, messages through ``logging.getLogger('auto-attack')``."""

    module = "pyautoattack"

    def build(self, model, *, norm, eps, version, seed, device, components):
        from pyautoattack import AutoAttack

        attacks = list(components) if version == "custom" else None
        return AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed, device=device, attacks=attacks)

    def run(self, adversary, x, y, batch_size):
        with _captured_logger(LOGGER_NAME) as handler:
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        return x_adv, handler.lines


class UpstreamBackend:
    """Upstream ``autoattack`` (fra31/auto-attack): prints progress and appends it to ``log_path``."""

    module = "autoattack"

    def build(self, model, *, norm, eps, version, seed, device, components):
        from autoattack import AutoAttack

        log = Path(tempfile.mkdtemp(prefix="robustbench-peft-aa-")) / "autoattack.log"
        attacks = list(components) if version == "custom" else []
        return AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed, device=device, attacks_to_run=attacks, log_path=str(log))

    def run(self, adversary, x, y, batch_size):
        log = Path(adversary.logger.log_path)
        with contextlib.redirect_stdout(io.StringIO()):
            x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
        lines = log.read_text().splitlines() if log.exists() else []
        with contextlib.suppress(OSError):
            log.unlink()
            log.parent.rmdir()
        return x_adv, lines


#: Preference order: upstream when installed, else PyPI's pyautoattack.
BACKENDS: dict[str, Backend] = {"autoattack": UpstreamBackend(), "pyautoattack": PyAutoAttackBackend()}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def resolve_backend(name: str) -> str:
    """The backend to use: ``auto`` is the first installed one of :data:`BACKENDS`."""
    if name != "auto" and name not in BACKENDS:
        raise UserError(f"unknown autoattack backend {name!r}; use auto or one of {', '.join(BACKENDS)}")
    candidates = list(BACKENDS) if name == "auto" else [name]
    for candidate in candidates:
        if _importable(BACKENDS[candidate].module):
            return candidate
    raise UserError(f"AutoAttack backend {' or '.join(candidates)} is not installed: pip install pyautoattack")


def _package_version(module: str) -> str | None:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(module), "__version__", None)


# -- reading the library's messages -----------------------------------------------------
@dataclass
class ComponentLog:
    """Points perturbed by each component and its cumulative time, from the library's messages."""

    fooled: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def parse_messages(lines: Sequence[str]) -> ComponentLog:
    parsed = ComponentLog()
    for line in lines:
        if m := _PERTURBED.match(line):
            parsed.fooled[m["component"]] = parsed.fooled.get(m["component"], 0) + int(m["fooled"])
        elif m := _AFTER.search(line):
            parsed.seconds[m["component"].lower()] = float(m["seconds"])
        elif _WARNING.match(line):
            parsed.warnings.append(_WARNING.sub("", line, count=1).strip())
    return parsed


def _component_rows(components: list[str], attacked: int, log: ComponentLog) -> list[dict[str, Any]]:
    """Robust counts after each component (components never reached keep the last count)."""
    rows, robust, previous = [], attacked, 0.0
    for name in components:
        robust -= log.fooled.get(name, 0)
        total = log.seconds.get(name, previous)
        rows.append({"component": name, "robust": robust, "seconds": round(max(0.0, total - previous), 3)})
        previous = total
    return rows


#: Forward passes APGD averages per step in AutoAttack's ``rand`` version (EOT for randomised models).
AUTOATTACK_RAND_EOT = 20
#: Components that use model outputs only, no gradients.
QUERY_COMPONENTS = {"square"}


# -- the attack ---------------------------------------------------------------------------
@register_attack("autoattack")
class AutoAttackAdapter(Attack):
    """AutoAttack (APGD-CE, APGD-T, FAB-T, Square) via upstream autoattack or pyautoattack; few-class safe."""

    name = "autoattack"
    standard = True

    @property
    def kind(self) -> str:  # type: ignore[override]
        """Square alone only queries outputs; any gradient component makes the attack white-box."""
        return "query" if self.version == "custom" and set(self.attacks) <= QUERY_COMPONENTS else "white-box"

    def __init__(
        self,
        norm: str = "Linf",
        version: str = "standard",
        attacks: Sequence[str] = (),
        n_target_classes: int = 9,
        n_queries: int = 0,
        backend: str = "auto",
        seed: int = 0,
        batch_size: int = 256,
        progress: bool = True,
    ) -> None:
        super().__init__(norm=norm, seed=seed, batch_size=batch_size, progress=progress)
        if version not in VERSIONS:
            raise UserError(f"unknown autoattack version {version!r}; use one of {', '.join(VERSIONS)}")
        attacks = [str(a).strip().lower() for a in (attacks.split("+") if isinstance(attacks, str) else attacks) if str(a).strip()]
        unknown = [a for a in attacks if a not in COMPONENTS]
        if unknown:
            raise UserError(f"unknown AutoAttack component(s) {', '.join(unknown)}; use {'+'.join(COMPONENTS)}")
        if version == "custom" and not attacks:
            raise UserError("autoattack version=custom needs attacks=..., e.g. attacks=apgd-ce+apgd-t")
        if version != "custom" and attacks:
            raise UserError(f"autoattack attacks=... is only used with version=custom (version {version} fixes its components)")
        if int(n_target_classes) < 1:
            raise UserError(f"n_target_classes must be >= 1, got {n_target_classes}")
        self.version = version
        self.attacks = list(dict.fromkeys(attacks))
        self.n_target_classes = int(n_target_classes)
        if int(n_queries) < 0:
            raise UserError(f"n_queries (Square's query budget; 0 = the library's 5000) must be >= 0, got {n_queries}")
        self.n_queries = int(n_queries)
        self.backend_name = resolve_backend(backend)
        self.backend = BACKENDS[self.backend_name]
        self._reset([], 0)

    # -- bookkeeping of one evaluation ------------------------------------------------------
    def _reset(self, eps: list[float], n: int) -> None:
        self._eps, self._n = eps, n
        self._records: dict[float, dict[str, Any]] = {}
        self._setup: dict[str, Any] = {}
        self._warnings: list[str] = []

    def __call__(self, target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], **options: Any) -> AttackResult:
        """The base contract; also remembers how many samples and which eps the details cover."""
        self._reset(validate_eps(eps_list), len(x))
        return super().__call__(target, x, y, eps_list, **options)

    # -- components --------------------------------------------------------------------------
    def default_components(self) -> list[str]:
        """The components of ``version`` as the library sets them (custom: the ``attacks`` option)."""
        if self.version == "custom":
            return list(self.attacks)
        probe = torch.nn.Linear(1, 2)
        with _captured_logger(LOGGER_NAME), contextlib.redirect_stdout(io.StringIO()):
            adversary = self.backend.build(probe, norm=self.norm, eps=1.0, version=self.version, seed=self.seed, device=torch.device("cpu"), components=[])
        return list(adversary.attacks_to_run)

    def plan(self, n_classes: int) -> dict[str, Any]:
        """Components and number of target classes for a model with ``n_classes`` logits."""
        requested = self.default_components()
        components, notes = adjust_components(requested, n_classes)
        targets = max(1, min(self.n_target_classes, n_classes - 1))
        if targets != self.n_target_classes and any(c.endswith("-t") for c in components):
            notes.append(f"n_target_classes {self.n_target_classes} -> {targets}: the model has {n_classes} classes")
        return {"requested": requested, "components": components, "n_target_classes": targets, "adjustments": notes, "n_classes": n_classes}

    def configure(self, adversary: Any, plan: dict[str, Any]) -> None:
        """Apply the plan through the attributes both packages share."""
        adversary.attacks_to_run = list(plan["components"])
        adversary.apgd_targeted.n_target_classes = plan["n_target_classes"]
        adversary.fab.n_target_classes = plan["n_target_classes"]
        if self.n_queries:
            adversary.square.n_queries = self.n_queries

    # -- the attack proper ---------------------------------------------------------------------
    def perturb(self, model, x, y, eps, generator, referee=None):
        device = model.device if isinstance(model, ClassifierTarget) else next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        plan = self.plan(n_classes)
        self._setup = plan
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):  # the library reseeds the global generator
            adversary = self.backend.build(model, norm=self.norm, eps=float(eps), version=self.version, seed=self.seed, device=device, components=plan["components"])
            self.configure(adversary, plan)
            x_adv, lines = self.backend.run(adversary, x, y, self.batch_size)
        x_adv = x_adv.detach().to(x.dtype)
        with torch.no_grad():
            still = int((model(x_adv).argmax(1) == y).sum()) if len(x) else 0
        self._record(float(eps), len(x), still, plan["components"], parse_messages(lines))
        return x_adv

    def _record(self, eps: float, attacked: int, still: int, components: list[str], log: ComponentLog) -> None:
        rows = _component_rows(components, attacked, log)
        consistent = (rows[-1]["robust"] if rows else attacked) == still
        if not consistent:
            rows = []
            self._warnings.append(f"eps={eps:g}: could not read per-component counts from the library's messages; only the final accuracy is recorded")
        self._records[eps] = {"attacked": attacked, "robust": still, "components": rows}
        for warning in log.warnings:
            false_alarm = any(fragment in warning and test(components) for fragment, test in FALSE_ALARMS.items())
            if not false_alarm and warning not in self._warnings:
                self._warnings.append(warning)

    # -- reports -----------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "version": self.version,
            "attacks": list(self.attacks),
            "n_target_classes": self.n_target_classes,
            "n_queries": self.n_queries or None,
            "backend": self.backend_name,
            "batch_size": self.batch_size,
            "eot": AUTOATTACK_RAND_EOT if self.version == "rand" else 1,
        }

    def describe(self) -> str:
        queries = f"-{self.n_queries}q" if self.n_queries else ""
        if self.version == "custom":
            return "autoattack-" + "+".join(self.attacks) + queries
        return f"autoattack-{self.version}" + queries

    def details(self) -> dict[str, Any]:
        """Accuracy after each component per eps, over all evaluated samples (a sample fooled at a
        smaller eps counts as fooled), plus the components actually run and why they changed."""
        n = max(1, self._n)
        per_eps = []
        previous_robust = None
        for eps in sorted(self._eps):
            record = self._records.get(eps)
            if record is None:  # nothing left standing at this eps
                robust = 0 if previous_robust is None else previous_robust
                start = {"component": "start", "robust": robust, "accuracy": robust / n, "seconds": 0.0}
                per_eps.append({"eps": eps, "attacked": 0, "accuracy_after": [start], "accuracy": robust / n})
                continue
            start = {"component": "start", "robust": record["attacked"], "accuracy": record["attacked"] / n, "seconds": 0.0}
            after = [start] + [{**row, "accuracy": row["robust"] / n} for row in record["components"]]
            per_eps.append({"eps": eps, "attacked": record["attacked"], "accuracy_after": after, "accuracy": record["robust"] / n})
            previous_robust = record["robust"]
        setup = self._setup or {}
        return _finite(
            {
                "backend": self.backend_name,
                "backend_version": _package_version(self.backend.module),
                "version": self.version,
                "n": self._n,
                "components": setup.get("components", []),
                "requested_components": setup.get("requested", []),
                "n_target_classes": setup.get("n_target_classes", self.n_target_classes),
                "adjustments": setup.get("adjustments", []),
                "per_eps": per_eps,
                "warnings": list(self._warnings),
            }
        )


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
