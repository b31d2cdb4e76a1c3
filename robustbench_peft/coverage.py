"""Which samples a worst case is over: reading a report's worst-case rows by coverage.

Attacks cover prefixes of a run's test samples (an attack record's ``n``: it ran on
samples ``[0, n)``). A worst-case row of a current report carries ``n`` (samples at
least one attack covered at its threat model and eps), ``covered`` (bits) and a
``robust_accuracy`` over those ``n``. Older reports (schema 1.0) lack ``n`` / ``covered``
and kept the clean bit for samples no attack ran on; :func:`worst_case_coverage`
reads both the same way, so the leaderboard and ``submit`` never count an
unattacked sample as robust.

The leaderboard ranks by :func:`ranked_worst_case`: the worst case over the samples
float32 standard evaluation (AutoAttack, ``Attack.standard``) covered, or, without it, over every covered sample (flagged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .records import EPS_TOLERANCE, AttackRecord, RunRecord, WorstCaseRecord, plugin_name

__all__ = ["EPS_TOLERANCE", "attack_kind", "is_float32", "worst_case_coverage", "standard_n", "ranked_worst_case", "RankedWorstCase"]


def attack_kind(record: AttackRecord | Mapping[str, Any]) -> str:
    """The registered attack behind a report's attack record (``autoattack-apgd-ce`` -> ``autoattack``)."""
    if isinstance(record, AttackRecord):
        return record.plugin
    return plugin_name(str(record.get("name", "")), record.get("config"))


def is_float32(record: AttackRecord | Mapping[str, Any]) -> bool:
    """Did the attack craft in float32 (no ``amp`` in its config)?"""
    return (record.get("config") or {}).get("amp") in (None, "", "off")


def _mean(bits: str) -> float:
    return bits.count("1") / len(bits) if bits else 0.0


def _worst(worst: WorstCaseRecord | Mapping[str, Any]) -> WorstCaseRecord:
    return worst if isinstance(worst, WorstCaseRecord) else WorstCaseRecord.from_json(worst)


def worst_case_coverage(run: RunRecord | Mapping[str, Any], worst: WorstCaseRecord | Mapping[str, Any]) -> tuple[int, float]:
    """``(n, robust_accuracy)`` of a worst-case row over the samples some attack covered.

    A row with ``n`` (current reports) is read as written. A row without (schema 1.0) is
    taken as covering the longest attack's prefix at its (threat model, eps) among the run's
    attacks, and its accuracy is recomputed from ``correct`` over that prefix (the old rows
    kept the clean bit for uncovered samples). With no matching attack record at all, the
    whole ``correct`` string counts.
    """
    worst = _worst(worst)
    if worst.n is not None:
        return int(worst.n), float(worst.robust_accuracy)
    lengths = [int(a.n or 0) for a in RunRecord.of(run).attacks_at(worst.threat_model, worst.eps)]
    n = min(max(lengths, default=0) or len(worst.correct), len(worst.correct))
    return n, _mean(worst.correct[:n])


def standard_n(run: RunRecord | Mapping[str, Any], norm: str, eps: float) -> int | None:
    """The most samples any float32 standard-evaluation record (AutoAttack) covered at (norm, eps);
    None when none ran."""
    lengths = [int(a.n or 0) for a in RunRecord.of(run).attacks_at(norm, eps) if a.is_standard and a.is_float32]
    return max(lengths) if lengths and max(lengths) > 0 else None


@dataclass(frozen=True)
class RankedWorstCase:
    """The number a leaderboard entry is ranked by, and what it is over."""

    robust_accuracy: float
    n: int
    over_autoattack: bool
    #: The row's own worst case over every covered sample (:func:`worst_case_coverage`).
    covered_accuracy: float
    covered_n: int


def ranked_worst_case(run: RunRecord | Mapping[str, Any], worst: WorstCaseRecord | Mapping[str, Any]) -> RankedWorstCase:
    """The per-sample worst case over the first n samples the float32 standard evaluation covered at
    the row's (threat model, eps), n its largest ``n``; without it, over the covered samples."""
    run, worst = RunRecord.of(run), _worst(worst)
    covered_n, covered_accuracy = worst_case_coverage(run, worst)
    n_standard = standard_n(run, worst.threat_model, worst.eps)
    if n_standard is None or not worst.correct:
        return RankedWorstCase(covered_accuracy, covered_n, False, covered_accuracy, covered_n)
    n = min(n_standard, len(worst.correct))
    return RankedWorstCase(_mean(worst.correct[:n]), n, True, covered_accuracy, covered_n)
