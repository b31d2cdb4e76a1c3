"""Claims: numbers a project promises about a defense or an unlearner, re-checked on demand.

A claim file (JSON, schema ``schema/claim.schema.json``) names the whole
evaluation, which metric of its report is claimed, the claimed value, a
tolerance and a direction. ``python -m robustbench_peft verify PATH...`` maps
every evaluation onto a :class:`~robustbench_peft.suite.Suite`, runs each
distinct one once (trained artifacts come from the cache), extracts the metric
and prints one row per claim. A claim whose evaluation is unreliable fails even
when its number matches, because an unreliable number proves nothing.

Metrics are pluggable: :func:`register_metric` maps a name to
``function(report_doc, claim) -> float``, so report sections added later (e.g.
diffusion attack success rates) bring their own extractor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from .atomic import write_text_atomic
from .cli import subcommand
from .errors import UserError
from .options import PluginSpec, parse_plugin_spec
from .paths import json_files
from .suite import Suite

CLAIM_SCHEMA_PATH = Path(__file__).parent / "schema" / "claim.schema.json"
UNLEARNING = "unlearning"
#: Slack for float noise when comparing a measured value with its bound.
COMPARE_EPSILON = 1e-9


@lru_cache(maxsize=1)
def claim_schema() -> dict[str, Any]:
    return json.loads(CLAIM_SCHEMA_PATH.read_text())


def _schema_errors(doc: Any, definition: str) -> list[str]:
    import jsonschema

    schema = {**claim_schema(), "$ref": f"#/$defs/{definition}"}
    schema.pop("oneOf", None)
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]


def _plugin(value: Any) -> PluginSpec:
    if isinstance(value, str):
        return parse_plugin_spec(value)
    return PluginSpec(value["name"], dict(value.get("options", {})))


def _plugin_text(value: Any) -> str:
    return _plugin(value).label()


@dataclass(frozen=True)
class Claim:
    """One claimed number with the evaluation that reproduces it."""

    id: str
    description: str
    evaluation: dict[str, Any]
    metric: dict[str, Any]
    claimed: float
    tolerance: float
    direction: str
    card: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str = "") -> "Claim":
        return cls(
            id=doc["id"],
            description=doc["description"],
            evaluation=dict(doc["evaluation"]),
            metric=dict(doc["metric"]),
            claimed=float(doc["claimed"]),
            tolerance=float(doc["tolerance"]),
            direction=doc["direction"],
            card=dict(doc.get("card", {})),
            source=source,
        )

    def suite(self) -> Suite:
        """The suite that measures this claim (sanity checks always on)."""
        e = self.evaluation
        unlearner = e.get("unlearner")
        attacks = tuple(_plugin(a) for a in e.get("attacks", []))
        defense = _plugin(e["defense"]) if e.get("defense") else PluginSpec("none")
        sections = list(e.get("sections", []))
        extra = dict(e.get("extra", {}))
        if unlearner is not None:
            if defense.name != "none":
                raise UserError(f"claim {self.id} ({self.source}): give a defense or an unlearner, not both")
            sections = [UNLEARNING] + [s for s in sections if s != UNLEARNING]
            extra[UNLEARNING] = {
                **dict(e.get("unlearning_options", {})),
                "model": e["model"],
                "methods": [_plugin_text(b) for b in e.get("baselines", [])] + [_plugin_text(unlearner)],
                "scenarios": [_plugin_text(e.get("scenario", "class"))],
            }
        # The classifier run is skipped for a pure unlearning claim: nothing in it is claimed.
        models = (e["model"],) if (unlearner is None or attacks) else ()
        eps = {k: [float(v) for v in values] for k, values in e["eps"].items()} if e.get("eps") else None
        return Suite(
            name=f"claim-{self.id}",
            task=e["task"],
            models=models,
            attacks=attacks,
            defenses=(defense,),
            eps=eps,
            n=int(e["n"]),
            seed=int(e["seed"]),
            batch_size=int(e.get("batch_size", 256)),
            chunk_size=int(e.get("chunk_size", Suite.chunk_size)),
            checks=True,
            description=self.description,
            task_options=dict(e.get("task_options", {})),
            sections=tuple(sections),
            extra=extra,
        )

    def metric_label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.metric.items() if k != "name")
        return self.metric["name"] + (f"[{params}]" if params else "")


def evaluation_key(suite: Suite) -> str:
    """Identity of an evaluation: claims with the same key share one run."""
    doc = {k: v for k, v in suite.to_json().items() if k not in ("name",)}
    doc.pop("description", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def load_claim_file(path: str | Path) -> list[Claim]:
    """Claims of one file (one claim, or ``{"claims": [...]}``); a clear error if malformed."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no claim file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable JSON claim file: {exc}") from None
    definition = "collection" if isinstance(doc, dict) and "claims" in doc else "claim"
    errors = _schema_errors(doc, definition)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{path} does not match the claim schema: {errors[0]}{more}")
    items = doc["claims"] if definition == "collection" else [doc]
    claims = [Claim.from_json(item, str(path)) for item in items]
    for claim in claims:
        unknown = claim.metric["name"]
        if unknown not in METRICS:
            raise UserError(f"{path}: claim {claim.id} uses unknown metric {unknown!r}; known: {', '.join(sorted(METRICS))}")
        try:
            claim.suite()
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
    return claims


def claim_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus every ``*.json`` under a named directory (sorted)."""
    return json_files(paths, lambda f: True, "claim files (*.json)", "claim file or directory")


def collect_claims(paths: Iterable[str | Path]) -> list[Claim]:
    """Every claim under ``paths``; ids must be unique."""
    claims: list[Claim] = []
    seen: dict[str, str] = {}
    for path in claim_files(paths):
        for claim in load_claim_file(path):
            if claim.id in seen:
                raise UserError(f"claim id {claim.id!r} appears twice: {seen[claim.id]} and {claim.source}")
            seen[claim.id] = claim.source
            claims.append(claim)
    if not claims:
        raise UserError("no claims to verify")
    return claims


# --------------------------------------------------------------------------- metrics

MetricExtractor = Callable[[dict[str, Any], Claim], float]
METRICS: dict[str, MetricExtractor] = {}


def register_metric(name: str) -> Callable[[MetricExtractor], MetricExtractor]:
    """Register ``function(report_doc, claim) -> float`` under ``name`` (raise UserError if absent)."""

    def decorate(fn: MetricExtractor) -> MetricExtractor:
        METRICS[name] = fn
        return fn

    return decorate


def _close(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)), abs(float(b)))


def _single_run(doc: dict[str, Any]) -> dict[str, Any]:
    if not doc.get("runs"):
        raise UserError("the report has no classifier run to take the metric from")
    return doc["runs"][0]


def _threat(run: dict[str, Any], metric: dict[str, Any]) -> tuple[str, float]:
    """The (threat model, eps) of the metric; either may be left out when the run has only one."""
    pairs = sorted({(w["threat_model"], w["eps"]) for w in run["worst_case"]})
    if "threat_model" in metric:
        pairs = [p for p in pairs if p[0] == metric["threat_model"]]
    if "eps" in metric:
        pairs = [p for p in pairs if _close(p[1], metric["eps"])]
    if len(pairs) != 1:
        found = ", ".join(f"{t} {e:g}" for t, e in sorted({(w['threat_model'], w['eps']) for w in run['worst_case']})) or "none"
        what = "no" if not pairs else "more than one"
        raise UserError(f"{what} (threat_model, eps) in the report matches the metric; the report has: {found}")
    return pairs[0]


@register_metric("robust_accuracy")
def robust_accuracy(doc: dict[str, Any], claim: Claim) -> float:
    """Per-sample worst case over every attack at (threat_model, eps), or the lowest of one attack's with ``attack``.

    ``attack`` matches a record's name (``pgd-10``) or its registered attack (``pgd``).
    """
    run = _single_run(doc)
    norm, eps = _threat(run, claim.metric)
    name = claim.metric.get("attack")
    if name is None:
        return float(next(w["robust_accuracy"] for w in run["worst_case"] if w["threat_model"] == norm and w["eps"] == eps))
    from .leaderboard import attack_kind

    values = [a["robust_accuracy"] for a in run["attacks"] if name in (a["name"], attack_kind(a)) and a["threat_model"] == norm and a["eps"] == eps]
    if not values:
        raise UserError(f"attack {name!r} did not run at {norm} {eps:g}; attacks in the report: {', '.join(sorted({a['name'] for a in run['attacks']}))}")
    return float(min(values))


@register_metric("clean_accuracy")
def clean_accuracy(doc: dict[str, Any], claim: Claim) -> float:
    """Accuracy of the (defended) model on the first n test examples."""
    return float(_single_run(doc)["clean_accuracy"])


@register_metric(UNLEARNING)
def unlearning_metric(doc: dict[str, Any], claim: Claim) -> float:
    """A value of the unlearning section: ``key`` (UA, RA, TA, MIA, avg_gap, ...) of ``method`` in ``scenario``."""
    section = doc.get(UNLEARNING)
    if not isinstance(section, dict) or not section.get("scenarios"):
        raise UserError("the report has no unlearning section")
    metric = claim.metric
    scenarios = section["scenarios"]
    if "scenario" in metric:
        scenarios = [s for s in scenarios if s["kind"] == metric["scenario"]]
    if len(scenarios) != 1:
        raise UserError(f"the metric must name one scenario; the report has: {', '.join(s['kind'] for s in section['scenarios'])}")
    unlearner = claim.evaluation.get("unlearner")
    method = metric.get("method") or (_plugin(unlearner).name if unlearner else None)
    rows = [r for r in scenarios[0]["rows"] if method in (r["method"], r["label"])]
    if not rows:
        raise UserError(f"no row for method {method!r}; rows: {', '.join(r['label'] for r in scenarios[0]['rows'])}")
    key = metric.get("key")
    if key is None or rows[0].get(key) is None:
        known = ", ".join(k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise UserError(f"metric key {key!r} has no value in row {rows[0]['label']!r}; numeric keys: {known}")
    return float(rows[0][key])


def unreliable_reasons(doc: dict[str, Any]) -> list[str]:
    """Why an evaluation cannot back a claim: failed sanity checks of a run or a section."""
    reasons = []
    for run in doc.get("runs", []):
        if not run.get("reliable", False):
            reasons += run.get("unreliable_reasons") or ["run marked unreliable"]
    for name, section in doc.items():
        if isinstance(section, dict) and section.get("reliable") is False:
            reasons += [f"{name}: {r}" for r in section.get("unreliable_reasons") or ["section marked unreliable"]]
    return reasons


# --------------------------------------------------------------------------- verdicts


def within(measured: float, claimed: float, tolerance: float, direction: str) -> bool:
    """Does ``measured`` reproduce ``claimed`` in ``direction`` within ``tolerance``?"""
    if direction == ">=":
        return measured >= claimed - tolerance - COMPARE_EPSILON
    if direction == "<=":
        return measured <= claimed + tolerance + COMPARE_EPSILON
    if direction == "==":
        return abs(measured - claimed) <= tolerance + COMPARE_EPSILON
    raise ValueError(f"unknown direction {direction!r}")


@dataclass
class Verdict:
    """The outcome of one claim: PASS, FAIL (number or reliability) or ERROR (could not evaluate)."""

    claim: Claim
    status: str
    measured: float | None = None
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Samples the measured per-sample worst case is over (robust_accuracy without ``attack``); None otherwise.
    n: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def judge(claim: Claim, doc: dict[str, Any]) -> Verdict:
    """Extract the claim's metric from its report and decide."""
    try:
        measured = METRICS[claim.metric["name"]](doc, claim)
    except UserError as exc:
        return Verdict(claim, "ERROR", reasons=[f"metric: {exc}"])
    reasons = []
    if not within(measured, claim.claimed, claim.tolerance, claim.direction):
        bound = {">=": claim.claimed - claim.tolerance, "<=": claim.claimed + claim.tolerance}.get(claim.direction)
        limit = f"{claim.direction} {bound:.4f}" if bound is not None else f"within {claim.tolerance:g} of {claim.claimed:g}"
        reasons.append(f"measured {measured:.4f} is not {limit}")
    reasons += [f"unreliable evaluation: {r}" for r in unreliable_reasons(doc)]
    return Verdict(claim, "FAIL" if reasons else "PASS", measured, reasons, n=worst_case_n(doc, claim))


def worst_case_n(doc: dict[str, Any], claim: Claim) -> int | None:
    """Samples the claim's measured worst case is over: the row's ``n`` (samples some attack
    covered); for a schema-1.0 row, which has none, the run's n its accuracy was taken over.
    None for any other metric."""
    if claim.metric["name"] != "robust_accuracy" or claim.metric.get("attack") is not None:
        return None
    try:
        run = _single_run(doc)
        norm, eps = _threat(run, claim.metric)
    except UserError:
        return None
    row = next(w for w in run["worst_case"] if w["threat_model"] == norm and w["eps"] == eps)
    return int(row["n"]) if row.get("n") is not None else int(run["n"])


#: Runs a suite and returns its report document (replaceable in tests).
SuiteRunner = Callable[[Suite], dict[str, Any]]


def run_suite(suite: Suite, quiet: bool = True, out: Path | None = None) -> dict[str, Any]:
    """Run ``suite`` with the standard runner; write its outputs into ``out`` when given."""
    from .runner import Runner

    log = (lambda m: None) if quiet else (lambda m: print(f"[verify] {m}", file=sys.stderr))
    report = Runner(suite, progress=False, log=log).run()
    if out is not None:
        from .render import write_outputs

        write_outputs(report, out)
    return report.to_json()


def verify(claims: list[Claim], runner: SuiteRunner, log: Callable[[str], None] = lambda m: None) -> list[Verdict]:
    """Run every distinct evaluation once and judge each claim against its report."""
    groups: dict[str, list[Claim]] = {}
    suites: dict[str, Suite] = {}
    for claim in claims:
        suite = claim.suite()
        key = evaluation_key(suite)
        groups.setdefault(key, []).append(claim)
        suites.setdefault(key, suite)
    verdicts: dict[str, Verdict] = {}
    for i, (key, members) in enumerate(groups.items(), 1):
        log(f"evaluation {i}/{len(groups)} for {', '.join(c.id for c in members)}")
        start = time.perf_counter()
        try:
            doc = runner(suites[key])
        except UserError as exc:
            doc, error = None, f"evaluation failed: {exc}"
        except Exception as exc:  # one broken evaluation must not hide the verdicts of the others
            doc, error = None, f"evaluation crashed: {type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        log(f"  done in {seconds:.1f} s")
        for claim in members:
            verdict = judge(claim, doc) if doc is not None else Verdict(claim, "ERROR", reasons=[error])
            verdict.seconds = seconds / len(members)
            verdicts[claim.id] = verdict
    return [verdicts[c.id] for c in claims]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _measured(v: Verdict) -> str:
    """The measured value with the samples it is over, when known."""
    return _fmt(v.measured) + ("" if v.n is None else f" (n={v.n})")


def table(verdicts: list[Verdict]) -> str:
    """The plain-text table: claim, metric, claimed, measured, n (samples of a measured worst case), tolerance, verdict, reason."""
    header = ["claim", "metric", "claimed", "measured", "n", "tolerance", "verdict", "reason"]
    rows = [
        [v.claim.id, v.claim.metric_label(), f"{v.claim.direction} {v.claim.claimed:.4f}", _fmt(v.measured), "-" if v.n is None else str(v.n), f"{v.claim.tolerance:.4f}", v.status, "; ".join(v.reasons)]
        for v in verdicts
    ]
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header) - 1)]
    lines = []
    for row in [header] + rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    passed = sum(v.passed for v in verdicts)
    lines.append(f"\n{passed}/{len(verdicts)} claims reproduce" + ("" if passed == len(verdicts) else f"; {len(verdicts) - passed} {'does' if len(verdicts) - passed == 1 else 'do'} not"))
    return "\n".join(lines)


def junit_xml(verdicts: list[Verdict]) -> str:
    """JUnit XML: one test case per claim, a <failure> for FAIL and an <error> for ERROR."""
    failures = sum(v.status == "FAIL" for v in verdicts)
    errors = sum(v.status == "ERROR" for v in verdicts)
    suite = ET.Element("testsuite", name="robustbench_peft.verify", tests=str(len(verdicts)), failures=str(failures), errors=str(errors), time=f"{sum(v.seconds for v in verdicts):.3f}")
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=Path(v.claim.source).stem or "claims", name=v.claim.id, time=f"{v.seconds:.3f}")
        summary = f"{v.claim.metric_label()}: claimed {v.claim.direction} {v.claim.claimed:.4f} (tolerance {v.claim.tolerance:.4f}), measured {_measured(v)}"
        if v.status != "PASS":
            node = ET.SubElement(case, "failure" if v.status == "FAIL" else "error", message="; ".join(v.reasons), type=v.status)
            node.text = summary + "\n" + "\n".join(v.reasons)
        ET.SubElement(case, "system-out").text = summary
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- command


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="claim files or directories of them (*.json)")
    p.add_argument("--junit", metavar="PATH", help="also write a JUnit XML file (one test case per claim)")
    p.add_argument("--out", metavar="DIR", help="write each evaluation's report (json, md, html) into DIR/<claim id>/")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is often fastest for the digits claims on a busy machine")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


@subcommand("verify", "re-run claims and check each still reproduces (exit 1 if any does not)", add_verify_arguments)
def cmd_verify(args: argparse.Namespace) -> int:
    claims = collect_claims(args.paths)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    log = (lambda m: None) if args.quiet else (lambda m: print(f"[verify] {m}", file=sys.stderr))
    out = Path(args.out) if args.out else None

    def runner(suite: Suite) -> dict[str, Any]:
        target = out / suite.name.removeprefix("claim-") if out is not None else None
        return run_suite(suite, quiet=args.quiet, out=target)

    start = time.perf_counter()
    verdicts = verify(claims, runner, log)
    print(table(verdicts))
    log(f"verified {len(verdicts)} claims in {time.perf_counter() - start:.1f} s")
    if args.junit:
        write_text_atomic(args.junit, junit_xml(verdicts))
    return 0 if all(v.passed for v in verdicts) else 1
