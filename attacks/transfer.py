"""Transfer attacks: adversarial examples crafted on surrogate models, replayed on the target.

This is the threat of an attacker who holds public models but cannot query the
evaluated one (PubDef, ICLR 2024): every (source, method) pair crafts white-box
on a surrogate (or on an ensemble that averages the surrogates' logits), the
target only sees the result. Per sample the first pair that fools the target is
kept (the per-sample union). The target's gradients are never used, so the
result is non-adaptive and must never beat the white-box attacks.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from robustbench_peft.attack import Attack, AttackResult, validate_eps
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


@register_attack("transfer")
class Transfer(Attack):
    """Transfer from surrogate models (PGD, MI-FGSM, MI-DI; logit ensemble): non-adaptive, per-sample union."""

    name = "transfer"
    adaptive = False
    kind = "transfer"

    def __init__(
        self,
        norm: str = "Linf",
        surrogates: Sequence[str] = ("digits:surrogate",),
        methods: Sequence[str] = ("pgd", "mifgsm", "di"),
        steps: int = 20,
        ensemble: bool = True,
        seed: int = 0,
        batch_size: int = 256,
        progress: bool = True,
    ) -> None:
        super().__init__(norm=norm, seed=seed, batch_size=batch_size, progress=progress)
        surrogates = surrogates.split("+") if isinstance(surrogates, str) else surrogates
        methods = methods.split("+") if isinstance(methods, str) else methods
        self.surrogates = list(dict.fromkeys(str(s).strip() for s in surrogates if str(s).strip()))
        if not self.surrogates:
            raise UserError("transfer needs at least one surrogate model spec, e.g. surrogates=digits:surrogate")
        for spec in self.surrogates:
            parse_spec(spec)
        self.methods = list(dict.fromkeys(str(m).strip().lower() for m in methods))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UserError(f"unknown transfer method(s) {', '.join(unknown) or '(none given)'}; use some of {'+'.join(METHODS)}")
        if int(steps) < 1:
            raise UserError(f"transfer steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self.ensemble = bool(ensemble)
        self.crafters = {m: PGD(norm=norm, steps=self.steps, early_stop=False, seed=seed, batch_size=batch_size, progress=False, **METHODS[m](self.steps)) for m in self.methods}
        self._loaded: dict[str, ClassifierTarget] = {}
        self._task: Any = None
        self._reset([], 0)

    def prepare(self, task: Any) -> None:
        """Surrogates are loaded for the task (its class names and pixel size), as the runner loads the target."""
        if task is not self._task:
            self._task, self._loaded = task, {}

    # -- bookkeeping of one evaluation -----------------------------------------------------
    def _reset(self, eps: list[float], n: int) -> None:
        self._eps, self._n = eps, n
        self._records: dict[float, dict[str, Any]] = {}

    def __call__(self, target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], **options: Any) -> AttackResult:
        """The base contract; also remembers how many samples and which eps the details cover."""
        self._reset(validate_eps(eps_list), len(x))
        return super().__call__(target, x, y, eps_list, **options)

    # -- sources -------------------------------------------------------------------------------
    def sources(self, like: ClassifierTarget) -> dict[str, ClassifierTarget]:
        """Surrogates (loaded once), plus their logit ensemble when there are several."""
        out: dict[str, ClassifierTarget] = {}
        for spec in self.surrogates:
            if spec not in self._loaded:
                self._loaded[spec] = (load_for_task(spec, self._task) if self._task is not None else load_target(spec)).eval()
            surrogate = self._loaded[spec].to(like.device)
            if surrogate.n_classes != like.n_classes or surrogate.input_shape != like.input_shape:
                raise UserError(
                    f"surrogate {spec} has {surrogate.n_classes} classes and inputs {surrogate.input_shape}, "
                    f"but the target has {like.n_classes} and {like.input_shape}: pick surrogates of the same task"
                )
            out[spec] = surrogate
        if self.ensemble and len(out) > 1:
            members = list(out.values())
            out[ENSEMBLE] = ClassifierTarget(LogitEnsemble(members), like.n_classes, like.input_shape, name=ENSEMBLE).to(like.device).eval()
        return out

    def pairs(self) -> list[str]:
        sources = self.surrogates + ([ENSEMBLE] if self.ensemble and len(self.surrogates) > 1 else [])
        return [pair_name(s, m) for s in sources for m in self.methods]

    # -- the attack proper ----------------------------------------------------------------------
    def perturb(self, model, x, y, eps, generator, referee=None):
        union = x.clone()
        undecided = torch.ones(len(x), dtype=torch.bool)
        fooled_by: dict[str, int] = {}
        for source_name, source in self.sources(model).items():
            for method in self.methods:
                self.crafters[method].batch_size = self.batch_size  # follows the base class's out-of-memory back-off
                candidates = self.crafters[method].perturb(source, x, y, eps, generator).detach().cpu()
                fooled = model.predict(candidates, self.batch_size) != y
                fooled_by[pair_name(source_name, method)] = int(fooled.sum())
                take = undecided & fooled
                union[take] = candidates[take]
                undecided &= ~fooled
                union[undecided] = candidates[undecided]  # the last candidate where nothing fooled yet
        self._records[float(eps)] = {"attacked": len(x), "fooled": fooled_by, "union_fooled": int((~undecided).sum())}
        return union

    # -- reports ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "surrogates": list(self.surrogates),
            "methods": list(self.methods),
            "steps": self.steps,
            "ensemble": self.ensemble,
        }

    def details(self) -> dict[str, Any]:
        """Target accuracy per (source, method) pair, the worst pair and the union, per eps.

        Accuracies are over all evaluated samples. At each eps the pairs attack the
        samples the union left standing at the previous eps, so a pair's accuracy at a
        larger eps counts samples fooled at a smaller eps as fooled (exact at the smallest eps).
        """
        n = max(1, self._n)
        per_eps, standing = [], None
        for eps in sorted(self._eps):
            record = self._records.get(eps, {"attacked": 0, "fooled": {}, "union_fooled": 0})
            attacked = record["attacked"] if eps in self._records else (standing or 0)
            pairs = {p: (attacked - record["fooled"].get(p, 0)) / n for p in self.pairs()}
            worst = min(pairs, key=pairs.get) if pairs else None
            union = (attacked - record["union_fooled"]) / n
            per_eps.append({"eps": eps, "attacked": attacked, "pairs": pairs, "worst_pair": worst, "worst_pair_accuracy": pairs.get(worst, union), "union_accuracy": union})
            standing = attacked - record["union_fooled"]
        return {"n": self._n, "pairs": self.pairs(), "per_eps": per_eps}
