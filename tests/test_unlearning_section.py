"""The unlearning report section end to end: runner, report files, CLI suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustbench_peft.render import write_outputs
from robustbench_peft.runner import Runner
from robustbench_peft.suite import Suite
from robustbench_peft.validation import load_report_json

ROOT = Path(__file__).resolve().parent.parent


def _rows(scenario):
    return {r["method"]: r for r in scenario["rows"]}


def test_quick_section_runs_and_renders(tmp_path):
    suite = Suite(name="quick-unlearning", task="digits", models=(), attacks=(), sections=("unlearning",), extra={"unlearning": {"preset": "quick", "pgd_steps": 5}})
    report = Runner(suite, progress=False).run()
    paths = write_outputs(report, tmp_path)
    doc = load_report_json(paths["report.json"])  # schema-valid, NaN-free JSON
    section = doc["unlearning"]
    [scenario] = section["scenarios"]
    rows = _rows(scenario)
    assert set(rows) == {"original", "retrain", "salun"}
    salun, retrain = rows["salun"], rows["retrain"]
    assert salun["UA"] >= 0.99 and abs(salun["RA"] - retrain["RA"]) <= 0.02
    assert salun["RTE"] < 0.5 * retrain["RTE"]
    assert salun["avg_gap"] < rows["original"]["avg_gap"]
    assert scenario["best_approximate"] == ["salun"]
    assert section["summary"] and all(isinstance(line, str) for line in section["summary"])
    assert "unlearning:" in report.summary()
    markdown = paths["report.md"].read_text()
    assert "Unlearning: class-wise" in markdown and "MIA-efficacy %" in markdown
    assert (tmp_path / "unlearning.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_unlearning_suite_through_the_cli(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "robustbench_peft", "eval", "--suite", "unlearning", "--out", str(out), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "smallest Avg. Gap" in proc.stdout
    doc = json.loads((out / "report.json").read_text())
    section = doc["unlearning"]
    assert [s["kind"] for s in section["scenarios"]] == ["class", "random"]
    for scenario in section["scenarios"]:
        rows = _rows(scenario)
        assert set(rows) == {"original", "retrain", "ft", "ga", "rl", "l1sparse", "salun"}
        assert rows["retrain"]["avg_gap"] == 0.0
        assert all(0.0 <= r["robust_accuracy"] <= 1.0 for r in rows.values())
    class_rows = _rows(section["scenarios"][0])
    assert class_rows["retrain"]["UA"] == 1.0 and class_rows["salun"]["UA"] >= 0.99
