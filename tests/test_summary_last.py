"""`eval` ends with its one-screen summary, so the summary is what a user sees last.

The per-run details (every attack at each worst case, what the checks lowered, the
checks' verdict) are in report.md; `--verbose` prints them too, above the summary.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from robustbench_peft.cli import main
from robustbench_peft.report import Report, lowered_text

QUICK = ["eval", "--suite", "quick", "--n", "16"]


def eval_stdout(out: Path, *extra: str) -> str:
    """What ``eval`` prints on stdout (progress and logs go to stderr)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main([*QUICK, "--out", str(out), *extra]) == 0
    return buffer.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> dict[str, tuple[str, Path]]:
    """The quick suite on 16 samples, printed plainly and with --verbose."""
    root = tmp_path_factory.mktemp("summary-last")
    return {name: (eval_stdout(root / name, *extra), root / name) for name, extra in (("plain", ()), ("verbose", ("--verbose",)))}


def expected_tail(out: Path) -> str:
    """The summary of the written report, then its path: the last thing eval prints."""
    report = Report.load(out / "report.json")
    return f"{report.summary()}\n\nreport: {out / 'report.json'}  (also report.md, report.html, plots)\n"


def test_eval_ends_with_the_one_screen_summary(runs):
    stdout, out = runs["plain"]
    assert stdout.endswith(expected_tail(out))
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("report: ") and len(lines) <= 24, lines  # one screen
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["model", "defense", "n", "clean"])
    assert lines[header + 1].split()[:3] == ["digits:cnn", "none", "16"]
    assert "details:" not in lines and not any(line.startswith("digits | digits:cnn | defense:") for line in lines)
    run = Report.load(out / "report.json").runs[0]
    detail_lines = [lowered_text(low) for low in run.lowered_by_checks or []] + ["checks: all passed"]
    assert not any(line.strip() in detail_lines for line in lines)  # no detail line either


def test_the_details_are_in_report_md(runs):
    _, out = runs["plain"]
    md = (out / "report.md").read_text()
    details = md[md.index("## Details"):]
    assert "### Robust accuracy per attack" in details and "### Sanity checks" in details
    for attack in Report.load(out / "report.json").runs[0].attacks:
        assert f"| {attack.label} | {attack.threat_model} | {attack.eps:g} |" in details, attack.label


def test_verbose_prints_the_details_above_the_summary(runs):
    stdout, out = runs["verbose"]
    assert stdout.endswith(expected_tail(out))  # the summary still comes last
    details = stdout[: stdout.index(expected_tail(out))]
    assert details.startswith("details:\ndigits | digits:cnn | defense: none | n=16 | clean ")
    run = Report.load(out / "report.json").runs[0]
    assert details.count(" worst ") == len(run.worst_case) > 0
    assert ("checks: all passed" if run.reliable else "UNRELIABLE: ") in details
    assert all(f"\n  {lowered_text(low)}\n" in details for low in run.lowered_by_checks or [])
    assert all(attack.label in details for attack in run.attacks)
