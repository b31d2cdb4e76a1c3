"""AutoAttack (Croce & Hein 2020) behind one adapter, over pyautoattack or upstream autoattack.

The reference ensemble (APGD-CE, APGD-T, FAB-T, Square) is the number most
robustness papers report, so the suite runs the library itself rather than a
re-implementation; :mod:`attacks.autoattack_backends` adapts the two packages
that provide it, :mod:`attacks.autoattack_log` reads their progress messages.

Few-class models are handled here instead of failing inside the library: the
number of target classes is lowered to ``n_classes - 1``, targeted components
(which need 4 classes for the targeted DLR loss) become their untargeted
counterparts below 4 classes, and DLR components become APGD-CE below 3.

The accuracy after each component is read from the library's own messages
(exact per-batch counts of perturbed points) and cross-checked against the
predictions on the returned inputs.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from robustbench_peft.attack import Attack, AttackConfig, Crafted
from robustbench_peft.config import option
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_attack
from robustbench_peft.targets import ClassifierTarget

from .autoattack_backends import BACKENDS, captured_logger, check_backend_name, package_version, resolve_backend
from .autoattack_log import ComponentLog, component_rows, parse_messages

VERSIONS = ("standard", "plus", "rand", "custom")
COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")

#: Below this many classes a component is replaced by the value (applied in order, then deduplicated).
FEW_CLASS_FALLBACKS: tuple[tuple[int, dict[str, str]], ...] = (
    (4, {"apgd-t": "apgd-dlr", "fab-t": "fab"}),  # targeted DLR needs 4 classes
    (3, {"apgd-dlr": "apgd-ce"}),  # DLR needs 3 classes
)
#: Forward passes APGD averages per step in AutoAttack's ``rand`` version (EOT for randomised models).
AUTOATTACK_RAND_EOT = 20
#: Components that use model outputs only, no gradients.
QUERY_COMPONENTS = {"square"}


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


@dataclass(frozen=True)
class AutoAttackConfig(AttackConfig):
    """Options of :class:`AutoAttackAdapter`."""

    version: str = option("standard", f"AutoAttack version: {', '.join(VERSIONS)}")
    attacks: tuple[str, ...] = option((), f"components of version=custom, '+'-separated: {'+'.join(COMPONENTS)}")
    n_target_classes: int = option(9, "target classes of the targeted components (lowered on few-class models)")
    n_queries: int | None = option(None, "Square's query budget (None: the library's 5000)")
    backend: str = option("auto", f"package that runs it: auto (the first installed) or one of {', '.join(BACKENDS)}")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version not in VERSIONS:
            raise UserError(f"unknown autoattack version {self.version!r}; use one of {', '.join(VERSIONS)}")
        raw = self.attacks.split("+") if isinstance(self.attacks, str) else self.attacks
        attacks = tuple(dict.fromkeys(str(a).strip().lower() for a in raw if str(a).strip()))
        object.__setattr__(self, "attacks", attacks)  # "apgd-ce+fab-t" or a list: one canonical tuple
        unknown = [a for a in attacks if a not in COMPONENTS]
        if unknown:
            raise UserError(f"unknown AutoAttack component(s) {', '.join(unknown)}; use {'+'.join(COMPONENTS)}")
        if self.version == "custom" and not attacks:
            raise UserError("autoattack version=custom needs attacks=..., e.g. attacks=apgd-ce+apgd-t")
        if self.version != "custom" and attacks:
            raise UserError(f"autoattack attacks=... is only used with version=custom (version {self.version} fixes its components)")
        if self.n_target_classes < 1:
            raise UserError(f"n_target_classes must be >= 1, got {self.n_target_classes}")
        if self.n_queries is not None and self.n_queries < 1:
            raise UserError(f"n_queries (Square's query budget) must be >= 1, got {self.n_queries}; leave it unset for the library's 5000")
        check_backend_name(self.backend)


def eps_record(eps: float, attacked: int, still: int, plan: dict[str, Any], log: ComponentLog) -> dict[str, Any]:
    """What one eps taught: robust counts after each component (dropped, with a warning, when
    the library's messages disagree with the re-measured count), the plan and the warnings."""
    components = plan["components"]
    rows = component_rows(components, attacked, log)
    warnings = []
    if (rows[-1]["robust"] if rows else attacked) != still:
        rows = []
        warnings.append(f"eps={eps:g}: could not read per-component counts from the library's messages; only the final accuracy is recorded")
    return {"attacked": attacked, "robust": still, "components": rows, "plan": plan, "warnings": warnings + log.real_warnings(components)}


@register_attack("autoattack")
class AutoAttackAdapter(Attack):
    """AutoAttack (APGD-CE, APGD-T, FAB-T, Square) via upstream autoattack or pyautoattack; few-class safe."""

    name = "autoattack"
    standard = True
    config_class = AutoAttackConfig
    config: AutoAttackConfig

    def __init__(self, config: AutoAttackConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.backend_name = resolve_backend(self.config.backend)
        self.backend = BACKENDS[self.backend_name]

    @property
    def kind(self) -> str:  # type: ignore[override]
        """Square alone only queries outputs; any gradient component makes the attack white-box."""
        return "query" if self.config.version == "custom" and set(self.config.attacks) <= QUERY_COMPONENTS else "white-box"

    @property
    def eot(self) -> int:
        """Forward passes APGD averages per step (the EOT check reads it from the record)."""
        return AUTOATTACK_RAND_EOT if self.config.version == "rand" else 1

    @property
    def attacks(self) -> list[str]:
        """The components of version=custom."""
        return list(self.config.attacks)

    @property
    def n_target_classes(self) -> int:
        return self.config.n_target_classes

    # -- components --------------------------------------------------------------------------
    def default_components(self) -> list[str]:
        """The components of ``version`` as the library sets them (custom: the ``attacks`` option)."""
        if self.config.version == "custom":
            return self.attacks
        probe = torch.nn.Linear(1, 2)
        with captured_logger(), contextlib.redirect_stdout(io.StringIO()):
            adversary = self.backend.build(probe, norm=self.norm, eps=1.0, version=self.config.version, seed=self.seed, device=torch.device("cpu"), components=[])
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
        if self.config.n_queries is not None:
            adversary.square.n_queries = self.config.n_queries

    # -- the attack proper ---------------------------------------------------------------------
    def perturb(self, model, x, y, eps, generator, referee=None, *, batch_size=None):
        """The library's run at ``eps``, seeded with the call's seed (the one that seeded ``generator``)."""
        device = model.device if isinstance(model, ClassifierTarget) else next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        plan = self.plan(n_classes)
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):  # the library reseeds the global generator
            adversary = self.backend.build(model, norm=self.norm, eps=float(eps), version=self.config.version, seed=generator.initial_seed(), device=device, components=plan["components"])
            self.configure(adversary, plan)
            x_adv, lines = self.backend.run(adversary, x, y, batch_size or self.batch_size)
        x_adv = x_adv.detach().to(x.dtype)
        with torch.no_grad():
            still = int((model(x_adv).argmax(1) == y).sum()) if len(x) else 0
        return Crafted(x_adv, eps_record(float(eps), len(x), still, plan, parse_messages(lines)))

    # -- reports -----------------------------------------------------------------------------------
    def recorded_config(self) -> dict[str, Any]:
        return {**super().recorded_config(), "eot": self.eot}

    def describe(self) -> str:
        queries = f"-{self.config.n_queries}q" if self.config.n_queries is not None else ""
        if self.config.version == "custom":
            return "autoattack-" + "+".join(self.attacks) + queries
        return f"autoattack-{self.config.version}" + queries

    def details(self, records: dict[float, Any], eps: list[float], n: int) -> dict[str, Any]:
        """Accuracy after each component per eps, over all ``n`` samples (a sample fooled at a
        smaller eps counts as fooled), plus the components actually run and why they changed."""
        per_eps, warnings, total = [], [], max(1, n)
        previous_robust = None
        for value in sorted(eps):
            record = records.get(value)
            if record is None:  # nothing left standing at this eps
                robust = 0 if previous_robust is None else previous_robust
                start = {"component": "start", "robust": robust, "accuracy": robust / total, "seconds": 0.0}
                per_eps.append({"eps": value, "attacked": 0, "accuracy_after": [start], "accuracy": robust / total})
                continue
            start = {"component": "start", "robust": record["attacked"], "accuracy": record["attacked"] / total, "seconds": 0.0}
            after = [start] + [{**row, "accuracy": row["robust"] / total} for row in record["components"]]
            per_eps.append({"eps": value, "attacked": record["attacked"], "accuracy_after": after, "accuracy": record["robust"] / total})
            previous_robust = record["robust"]
            warnings = list(dict.fromkeys(warnings + record["warnings"]))
        setup = next((records[e]["plan"] for e in sorted(records, reverse=True)), {})
        return _finite(
            {
                "backend": self.backend_name,
                "backend_version": package_version(self.backend.module),
                "version": self.config.version,
                "n": n,
                "components": setup.get("components", []),
                "requested_components": setup.get("requested", []),
                "n_target_classes": setup.get("n_target_classes", self.n_target_classes),
                "adjustments": setup.get("adjustments", []),
                "per_eps": per_eps,
                "warnings": warnings,
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
