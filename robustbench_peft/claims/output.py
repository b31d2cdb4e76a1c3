"""The claims' output: a plain-text table and JUnit XML, one row or test case per claim."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .verdicts import Verdict


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
