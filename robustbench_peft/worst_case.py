"""The per-sample worst case of a run, over the samples some attack covered.

Rule (documented in the README, "Worst case and coverage"): at each (threat
model, eps) a sample counts as robust only if at least one attack ran on it at
that eps and every attack that ran on it failed. The worst case is reported
over the covered samples, with their number ``n``; a sample no attack touched
is never robust and never in the denominator. Every attack the run executes on
the evaluated target folds in, the sanity checks' own attacks included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from .attack import AttackResult
from .records import WorstCaseRecord
from .report import bits

Key = tuple[str, float]


@dataclass
class WorstCase:
    """Per-sample robustness at one (threat model, eps) over the run's ``len(correct)`` samples."""

    threat_model: str
    eps: float
    correct: torch.Tensor
    covered: torch.Tensor
    attacks: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.covered.sum())

    @property
    def robust_accuracy(self) -> float:
        return float(self.correct[self.covered].float().mean()) if self.n else float("nan")

    def fold(self, correct: torch.Tensor, name: str) -> None:
        """AND in one attack's per-sample flags over the prefix of samples it ran on."""
        k = len(correct)
        self.correct[:k] &= correct
        self.covered[:k] = True
        self.correct &= self.covered
        self.attacks.append(name)

    def record(self) -> WorstCaseRecord:
        """The report's row: flags as bit strings, accuracy over the ``n`` covered samples."""
        return WorstCaseRecord(self.threat_model, self.eps, self.robust_accuracy, list(self.attacks),
                               bits(self.correct.tolist()), n=self.n, covered=bits(self.covered.tolist()))

    def to_json(self) -> dict[str, Any]:
        return self.record().to_json()


def display_name(result: AttackResult, source: str = "") -> str:
    return source + result.name + ("" if result.adaptive else " (non-adaptive)")


def worst_case(results: Iterable[AttackResult], n_samples: int, only: Iterable[Key] | None = None, source: str = "") -> dict[Key, WorstCase]:
    """Per (threat model, eps), the worst case over ``results`` (``only``: restrict to these keys)."""
    worst: dict[Key, WorstCase] = {}
    return fold_into(worst, results, n_samples, only, source)


def fold_into(worst: dict[Key, WorstCase], results: Iterable[AttackResult], n_samples: int, only: Iterable[Key] | None = None, source: str = "") -> dict[Key, WorstCase]:
    """Fold ``results`` into ``worst`` in place (new keys only when ``only`` is None)."""
    allowed = set(only) if only is not None else None
    for r in results:
        for i, eps in enumerate(r.eps):
            key = (r.threat_model, eps)
            if allowed is not None and key not in allowed:
                continue
            if key not in worst:
                worst[key] = WorstCase(r.threat_model, eps, torch.ones(n_samples, dtype=torch.bool), torch.zeros(n_samples, dtype=torch.bool))
            worst[key].fold(r.correct[i], display_name(r, source))
    return worst


def copy(worst: dict[Key, WorstCase]) -> dict[Key, WorstCase]:
    return {k: WorstCase(w.threat_model, w.eps, w.correct.clone(), w.covered.clone(), list(w.attacks)) for k, w in worst.items()}
