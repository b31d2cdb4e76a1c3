"""Which samples a worst case is over: reading a report's worst-case rows by coverage.

Attacks cover prefixes of a run's test samples (an attack record's ``n``: it ran on
samples ``[0, n)``). A worst-case row of a current report carries ``n`` (samples at
least one attack covered at its threat model and eps), ``covered`` (bits) and a
``robust_accuracy`` over those ``n``. Older reports (schema 1.0) lack ``n`` / ``covered``
and kept the clean bit for samples no attack ran on; :func:`worst_case_coverage`
reads both the same way, so the leaderboard and ``submit`` never count an
unattacked sample as robust.

The leaderboard ranks by :func:`ranked_worst_case`: the worst case over the samples
float32 AutoAttack covered, or, without it, over every covered sample (flagged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Slack for comparing eps values read back from JSON.
EPS_TOLERANCE = 1e-9


def attack_kind(record: dict[str, Any]) -> str:
    """The registered attack behind a report's attack record (``autoattack-apgd-ce`` -> ``autoattack``)."""
    config = record.get("config") or {}
    if config.get("attack"):
        return str(config["attack"])
    return str(record.get("name", "")).split("-")[0]


def is_float32(record: dict[str, Any]) -> bool:
    """Did the attack craft in float32 (no ``amp`` in its config)?"""
    return (record.get("config") or {}).get("amp") in (None, "", "off")


def _at(record: dict[str, Any], norm: str, eps: float) -> bool:
    return record.get("threat_model") == norm and abs(float(record.get("eps", float("nan"))) - float(eps)) <= EPS_TOLERANCE


def _mean(bits: str) -> float:
    return bits.count("1") / len(bits) if bits else 0.0


def worst_case_coverage(run: dict[str, Any], worst: dict[str, Any]) -> tuple[int, float]:
    """``(n, robust_accuracy)`` of a worst-case row over the samples some attack covered.

    A row with ``n`` (current reports) is read as written. A row without (schema 1.0) is
    taken as covering the longest attack's prefix at its (threat model, eps) among
    ``run["attacks"]``, and its accuracy is recomputed from ``correct`` over that prefix
    (the old rows kept the clean bit for uncovered samples). With no matching attack record
    at all, the whole ``correct`` string counts.
    """
    if worst.get("n") is not None:
        return int(worst["n"]), float(worst["robust_accuracy"])
    correct = str(worst.get("correct", ""))
    lengths = [int(a.get("n") or 0) for a in run.get("attacks") or [] if _at(a, worst["threat_model"], worst["eps"])]
    n = min(max(lengths, default=0) or len(correct), len(correct))
    return n, _mean(correct[:n])


def autoattack_n(run: dict[str, Any], norm: str, eps: float) -> int | None:
    """The most samples any float32 AutoAttack record covered at (norm, eps); None when none ran."""
    lengths = [int(a.get("n") or 0) for a in run.get("attacks") or [] if attack_kind(a) == "autoattack" and is_float32(a) and _at(a, norm, eps)]
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


def ranked_worst_case(run: dict[str, Any], worst: dict[str, Any]) -> RankedWorstCase:
    """The per-sample worst case over the first n samples float32 AutoAttack covered at the row's
    (threat model, eps), n the largest AutoAttack ``n``; without AutoAttack, over the covered samples."""
    covered_n, covered_accuracy = worst_case_coverage(run, worst)
    n_aa = autoattack_n(run, worst["threat_model"], worst["eps"])
    correct = str(worst.get("correct", ""))
    if n_aa is None or not correct:
        return RankedWorstCase(covered_accuracy, covered_n, False, covered_accuracy, covered_n)
    n = min(n_aa, len(correct))
    return RankedWorstCase(_mean(correct[:n]), n, True, covered_accuracy, covered_n)
