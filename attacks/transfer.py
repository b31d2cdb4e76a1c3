"""Transfer attacks: adversarial examples crafted on surrogate models, replayed on the target.

This is the threat of an attacker who holds public models but cannot query the
evaluated one (PubDef, ICLR 2024): every (source, method) pair crafts white-box
on a surrogate (or on an ensemble that averages the surrogates' logits), the
target only sees the result. Per sample the first pair that fools the target is
kept (the per-sample union). The target's gradients are never used, so the
result is non-adaptive and must never beat the white-box attacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from robustbench_peft.attack import Attack, AttackConfig, Crafted
from robustbench_peft.config import option
from robustbench_peft.errors import UserError
from robustbench_peft.models import load_target, parse_spec
from robustbench_peft.models.hub import load_for_task
from robustbench_peft.registry import register_attack
from robustbench_peft.targets import ClassifierTarget

from .pgd import PGD

#: Method name -> PGD options for a number of steps (besides norm, seed); none stops early.
#: MI-FGSM (Dong et al. 2018): mu = 1, step eps / steps, no random start; DI adds resize-and-pad, p = 0.5.
METHODS: dict[str, Callable[[int], dict[str, Any]]] = {
    "pgd": lambda steps: {},
    "mifgsm": lambda steps: {"momentum": 1.0, "random_start": False, "rel_step_size": 1.0 / steps},
    "di": lambda steps: {"momentum": 1.0, "random_start": False, "rel_step_size": 1.0 / steps, "input_diversity": 0.5},
}
ENSEMBLE = "ensemble"


class LogitEnsemble(nn.Module):
    """Average of the surrogates' logits: one differentiable source."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


def pair_name(source: str, method: str) -> str:
    return f"{source}/{method}"


@dataclass(frozen=True)
class TransferConfig(AttackConfig):
    """Options of :class:`Transfer`."""

    surrogates: tuple[str, ...] = option(("digits:surrogate",), "surrogate model specs, '+'-separated (the target's task)")
    methods: tuple[str, ...] = option(tuple(METHODS), f"crafting methods, '+'-separated: {'+'.join(METHODS)}")
    steps: int = option(20, "steps of every crafting method")
    ensemble: bool = option(True, "with several surrogates, also craft on the average of their logits")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "surrogates", _names(self.surrogates, str))  # text or a list: one canonical tuple
        object.__setattr__(self, "methods", _names(self.methods, str.lower))
        if not self.surrogates:
            raise UserError("transfer needs at least one surrogate model spec, e.g. surrogates=digits:surrogate")
        for spec in self.surrogates:
            parse_spec(spec)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UserError(f"unknown transfer method(s) {', '.join(unknown) or '(none given)'}; use some of {'+'.join(METHODS)}")
        if self.steps < 1:
            raise UserError(f"transfer steps must be >= 1, got {self.steps}")


def _names(values: str | Sequence[str], normalise: Callable[[str], str]) -> tuple[str, ...]:
    """A '+'-list or a sequence of names, stripped, normalised, deduplicated in order."""
    items = values.split("+") if isinstance(values, str) else values
    return tuple(dict.fromkeys(normalise(str(v).strip()) for v in items if str(v).strip()))


@register_attack("transfer")
class Transfer(Attack):
    """Transfer from surrogate models (PGD, MI-FGSM, MI-DI; logit ensemble): non-adaptive, per-sample union."""

    name = "transfer"
    adaptive = False
    kind = "transfer"
    config_class = TransferConfig
    config: TransferConfig

    def __init__(self, config: TransferConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        c = self.config
        self.crafters = {m: PGD(norm=c.norm, steps=c.steps, early_stop=False, seed=c.seed, batch_size=c.batch_size, progress=False, **METHODS[m](c.steps)) for m in c.methods}
        #: Surrogates loaded for the task of :meth:`prepare` (loaded once, on first use).
        self._loaded: dict[str, ClassifierTarget] = {}
        self._task: Any = None

    def prepare(self, task: Any) -> None:
        """Surrogates are loaded for the task (its class names and pixel size), as the runner loads the target."""
        if task is not self._task:
            self._task, self._loaded = task, {}

    # -- sources -------------------------------------------------------------------------------
    def sources(self, like: ClassifierTarget) -> dict[str, ClassifierTarget]:
        """Surrogates (loaded once), plus their logit ensemble when there are several."""
        out: dict[str, ClassifierTarget] = {}
        for spec in self.config.surrogates:
            if spec not in self._loaded:
                self._loaded[spec] = (load_for_task(spec, self._task) if self._task is not None else load_target(spec)).eval()
            surrogate = self._loaded[spec].to(like.device)
            if surrogate.n_classes != like.n_classes or surrogate.input_shape != like.input_shape:
                raise UserError(
                    f"surrogate {spec} has {surrogate.n_classes} classes and inputs {surrogate.input_shape}, "
                    f"but the target has {like.n_classes} and {like.input_shape}: pick surrogates of the same task"
                )
            out[spec] = surrogate
        if self.config.ensemble and len(out) > 1:
            members = list(out.values())
            out[ENSEMBLE] = ClassifierTarget(LogitEnsemble(members), like.n_classes, like.input_shape, name=ENSEMBLE).to(like.device).eval()
        return out

    def pairs(self) -> list[str]:
        c = self.config
        sources = list(c.surrogates) + ([ENSEMBLE] if c.ensemble and len(c.surrogates) > 1 else [])
        return [pair_name(s, m) for s in sources for m in c.methods]

    # -- the attack proper ----------------------------------------------------------------------
    def perturb(self, model, x, y, eps, generator, referee=None, *, batch_size=None):
        """Every (source, method) pair on ``x``; per sample the first fooling candidate, else the last."""
        size = batch_size or self.batch_size
        union = x.clone()
        undecided = torch.ones(len(x), dtype=torch.bool)
        fooled_by: dict[str, int] = {}
        for source_name, source in self.sources(model).items():
            for method in self.config.methods:
                candidates = self.crafters[method].perturb(source, x, y, eps, generator, batch_size=size).detach().cpu()
                fooled = model.predict(candidates, size) != y
                fooled_by[pair_name(source_name, method)] = int(fooled.sum())
                take = undecided & fooled
                union[take] = candidates[take]
                undecided &= ~fooled
                union[undecided] = candidates[undecided]  # the last candidate where nothing fooled yet
        return Crafted(union, {"attacked": len(x), "fooled": fooled_by, "union_fooled": int((~undecided).sum())})

    # -- reports ---------------------------------------------------------------------------------
    def details(self, records: dict[float, Any], eps: list[float], n: int) -> dict[str, Any]:
        """Target accuracy per (source, method) pair, the worst pair and the union, per eps.

        Accuracies are over all ``n`` evaluated samples. At each eps the pairs attack the
        samples the union left standing at the previous eps, so a pair's accuracy at a
        larger eps counts samples fooled at a smaller eps as fooled (exact at the smallest eps).
        """
        total = max(1, n)
        per_eps, standing = [], None
        for value in sorted(eps):
            record = records.get(value, {"attacked": 0, "fooled": {}, "union_fooled": 0})
            attacked = record["attacked"] if value in records else (standing or 0)
            pairs = {p: (attacked - record["fooled"].get(p, 0)) / total for p in self.pairs()}
            worst = min(pairs, key=pairs.get) if pairs else None
            union = (attacked - record["union_fooled"]) / total
            per_eps.append({"eps": value, "attacked": attacked, "pairs": pairs, "worst_pair": worst, "worst_pair_accuracy": pairs.get(worst, union), "union_accuracy": union})
            standing = attacked - record["union_fooled"]
        return {"n": n, "pairs": self.pairs(), "per_eps": per_eps}
