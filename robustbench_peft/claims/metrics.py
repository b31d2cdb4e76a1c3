"""Claim metrics: how a claimed number is read out of a report, and why a report cannot back it.

Metrics are pluggable: :func:`register_metric` maps a name to
``function(report_doc, claim) -> float`` (raising UserError when the number is absent).
A report section brings its own through :meth:`Section.claim_metrics
<robustbench_peft.section.Section.claim_metrics>`, which reads the section's data only.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import UserError
from ..records import RunRecord, WorstCaseRecord
from ..report import Report
from ..section import claim_metrics as section_metrics
from ..section import section_of
from .claim import Claim

MetricExtractor = Callable[[dict[str, Any], Claim], float]
METRICS: dict[str, MetricExtractor] = {}


def register_metric(name: str) -> Callable[[MetricExtractor], MetricExtractor]:
    """Register ``function(report_doc, claim) -> float`` under ``name`` (raise UserError if absent)."""

    def decorate(fn: MetricExtractor) -> MetricExtractor:
        METRICS[name] = fn
        return fn

    return decorate


def known_metrics() -> dict[str, MetricExtractor]:
    """Every metric a claim may name: the registered ones, then those the report sections provide."""
    found = dict(METRICS)
    for metric, (section, read) in section_metrics().items():
        found.setdefault(metric, _from_section(section, read))
    return found


def _from_section(name: str, read: Callable[[dict[str, Any], Claim], float]) -> MetricExtractor:
    def extract(doc: dict[str, Any], claim: Claim) -> float:
        data = doc.get(name)
        if not isinstance(data, dict):
            raise UserError(f"the report has no {name} section")
        return read(data, claim)

    return extract


def measure(doc: dict[str, Any], claim: Claim) -> float:
    """The claim's metric read from its report document."""
    return known_metrics()[claim.metric["name"]](doc, claim)


def _close(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)), abs(float(b)))


def _single_run(doc: dict[str, Any]) -> RunRecord:
    if not doc.get("runs"):
        raise UserError("the report has no classifier run to take the metric from")
    return RunRecord.of(doc["runs"][0])


def _threat(run: RunRecord, metric: dict[str, Any]) -> WorstCaseRecord:
    """The worst-case row of the metric's (threat model, eps); either may be left out when the run has only one."""
    pairs = sorted({(w.threat_model, w.eps) for w in run.worst_case})
    if "threat_model" in metric:
        pairs = [p for p in pairs if p[0] == metric["threat_model"]]
    if "eps" in metric:
        pairs = [p for p in pairs if _close(p[1], metric["eps"])]
    if len(pairs) != 1:
        found = ", ".join(f"{t} {e:g}" for t, e in sorted({(w.threat_model, w.eps) for w in run.worst_case})) or "none"
        what = "no" if not pairs else "more than one"
        raise UserError(f"{what} (threat_model, eps) in the report matches the metric; the report has: {found}")
    return next(w for w in run.worst_case if (w.threat_model, w.eps) == pairs[0])


@register_metric("robust_accuracy")
def robust_accuracy(doc: dict[str, Any], claim: Claim) -> float:
    """Per-sample worst case over every attack at (threat_model, eps), or the lowest of one attack's with ``attack``.

    ``attack`` matches a record's name (``pgd-10``) or its registered attack (``pgd``).
    """
    run = _single_run(doc)
    worst = _threat(run, claim.metric)
    name = claim.metric.get("attack")
    if name is None:
        return float(worst.robust_accuracy)
    norm, eps = worst.threat_model, worst.eps
    values = [a.robust_accuracy for a in run.attacks if name in (a.name, a.plugin) and a.threat_model == norm and a.eps == eps]
    if not values:
        raise UserError(f"attack {name!r} did not run at {norm} {eps:g}; attacks in the report: {', '.join(sorted({a.name for a in run.attacks}))}")
    return float(min(values))


@register_metric("clean_accuracy")
def clean_accuracy(doc: dict[str, Any], claim: Claim) -> float:
    """Accuracy of the (defended) model on the first n test examples."""
    return float(_single_run(doc).clean_accuracy)


def worst_case_n(doc: dict[str, Any], claim: Claim) -> int | None:
    """Samples the claim's measured worst case is over: the row's ``n`` (samples some attack
    covered); for a schema-1.0 row, which has none, the run's n its accuracy was taken over.
    None for any other metric."""
    if claim.metric["name"] != "robust_accuracy" or claim.metric.get("attack") is not None:
        return None
    try:
        run = _single_run(doc)
        row = _threat(run, claim.metric)
    except UserError:
        return None
    return int(row.n) if row.n is not None else int(run.n)


def unreliable_reasons(doc: dict[str, Any]) -> list[str]:
    """Why an evaluation cannot back a claim: failed sanity checks of a run, or a section's own reasons."""
    report = Report.from_json(doc)
    reasons = []
    for run in report.runs:
        if not run.reliable:
            reasons += run.unreliable_reasons or ["run marked unreliable"]
    for name, data in report.sections.items():
        if isinstance(data, dict):
            reasons += [f"{name}: {r}" for r in section_of(name).unreliable_reasons(data)]
    return reasons
