"""The unlearning section's checks: a method that hides is flagged, probes without power are reported.

``forgets_not_hides`` compares a method's probe values with retrain's seeds (the
retrain row and the shadows trained without the forget set): a value beyond the
one-sided prediction interval of those seeds, at level ``alpha``, gives the
method away. The other two are positive controls, as an attack must break the
undefended model: the original holds the forget set, so the per-example MIA
(``mia_separates_original``) and the hiding probes (``probes_tell_original``)
must tell it from retrain, or their verdicts on the methods prove nothing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from robustbench_peft.checks import CheckResult

HIDING = "forgets_not_hides"
MIA_POWER = "mia_separates_original"
PROBE_POWER = "probes_tell_original"


@dataclass
class Distance:
    """A value against retrain's seeds: ``t`` > 0 when it holds more of the forget set than they do."""

    value: float
    mean: float
    std: float
    t: float
    threshold: float

    @property
    def far(self) -> bool:
        return self.t > self.threshold

    def to_json(self) -> dict[str, float | bool]:
        return {**asdict(self), "far": self.far}


def distance(value: float, reference: list[float], resolution: float, alpha: float, higher_holds: bool) -> Distance:
    """Prediction-interval t statistic of ``value`` against ``reference`` (retrain's seeds).

    The seeds' standard deviation is floored at the statistic's ``resolution`` (one
    step, one sample), so seeds that happen to agree exactly do not make every
    difference significant; ``higher_holds`` says which direction means "still holds it".
    """
    from scipy.stats import t as student_t

    n = len(reference)
    mean = statistics.fmean(reference)
    std = max(statistics.stdev(reference), resolution)
    signed = (value - mean) if higher_holds else (mean - value)
    t = signed / (std * math.sqrt(1 + 1 / n))
    return Distance(value, mean, std, t, float(student_t.ppf(1 - alpha, n - 1)))


def forgets_not_hides(label: str, findings: dict[str, Distance], words: dict[str, str]) -> CheckResult:
    """Fails when any probe puts the method beyond retrain's seeds in the direction of still holding
    the forget set; ``words[name]`` describes that probe's value for the detail."""
    far = [name for name, d in findings.items() if d.far]
    if not far:
        closest = max(findings.items(), key=lambda item: item[1].t)
        return CheckResult(HIDING, True, f"{label}: every probe within retrain's seeds (largest t {closest[1].t:.1f} for {closest[0]}, bar {closest[1].threshold:.2f})")
    told = "; ".join(f"{words[name]} (t {findings[name].t:.1f} > {findings[name].threshold:.2f})" for name in far)
    return CheckResult(HIDING, False, f"{label} still holds the forget set: {told}")


def mia_separates_original(original_auc: float, null_aucs: list[float], null_std: float, alpha: float) -> CheckResult:
    """The MIA tells the original from retrain: its AUC is above 0.5 at level ``alpha`` (Mann-Whitney
    null) and above every other retrain seed's AUC against retrain."""
    z = (original_auc - 0.5) / null_std
    need = statistics.NormalDist().inv_cdf(1 - alpha)
    seeds = f"retrain's other seeds {min(null_aucs):.2f}-{max(null_aucs):.2f}"
    if z >= need and original_auc > max(null_aucs):
        return CheckResult(MIA_POWER, True, f"per-example MIA AUC of the original against retrain {original_auc:.2f} (z {z:.1f} >= {need:.2f}; {seeds})")
    return CheckResult(MIA_POWER, False, f"per-example MIA has no power here: the original scores AUC {original_auc:.2f} against retrain "
                       f"(z {z:.1f}, needs {need:.2f}; {seeds}), so its AUCs prove nothing")


def probes_tell_original(original: CheckResult) -> CheckResult:
    """The hiding probes give the original away (its own hiding check fails), else a hiding method would pass too."""
    if not original.passed:
        return CheckResult(PROBE_POWER, True, f"the probes give the original away: {original.detail}")
    return CheckResult(PROBE_POWER, False, f"the relearning and representation probes do not tell the original from retrain ({original.detail}), "
                       "so a method that hides would pass them too")
