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
from unlearning.metrics import ALL_GAP_METRICS

ROOT = Path(__file__).resolve().parent.parent


def _rows(scenario):
    return {r["method"]: r for r in scenario["rows"]}


def test_quick_section_runs_and_renders(tmp_path):
    """The paper's metrics alone (probes off): the closest line falls back to the Avg. Gap and says it is unchecked."""
    settings = {"preset": "quick", "pgd_steps": 5, "probes": {"enabled": False}}
    suite = Suite(name="quick-unlearning", task="digits", models=(), attacks=(), sections=("unlearning",), extra={"unlearning": settings})
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
    assert scenario["best_approximate"] == ["salun"] and scenario["closest_by"] == "avg_gap" and not scenario["probed"]
    assert section["summary"] and all(isinstance(line, str) for line in section["summary"])
    assert any("probes off, unchecked" in line for line in section["summary"])
    assert "unlearning:" in report.summary()
    markdown = paths["report.md"].read_text()
    assert "Unlearning: class-wise" in markdown and "MIA-efficacy %" in markdown
    assert (tmp_path / "unlearning.png").read_bytes()[:4] == b"\x89PNG"


def test_section_flags_the_suppression_unlearner_and_never_names_it_closest(tmp_path):
    """Class-wise: the one-bias edit matches retrain on the paper's output metrics, the hiding check flags
    it, and the closest-to-retrain line (gap over every metric) never names it."""
    probes = {"shadows": 3, "relearn_steps": 40, "probe_draws": 10}  # the settings of test_unlearning_probes.py's world: one cache
    settings = {"preset": "quick", "pgd_steps": 0, "methods": ["retrain:epochs=10", "salun", "suppress"], "probes": probes}
    suite = Suite(name="suppress-unlearning", task="digits", models=(), attacks=(), sections=("unlearning",), extra={"unlearning": settings})
    report = Runner(suite, progress=False).run()
    paths = write_outputs(report, tmp_path)
    section = load_report_json(paths["report.json"])["unlearning"]
    [scenario] = section["scenarios"]
    rows = _rows(scenario)
    assert (rows["suppress"]["UA"], rows["suppress"]["MIA"]) == (rows["retrain"]["UA"], rows["retrain"]["MIA"]) == (1.0, 1.0)
    assert rows["suppress"]["flags"] == ["forgets_not_hides"] and "suppress" in scenario["flagged"]
    assert rows["retrain"]["flags"] == [] and rows["retrain"]["gap_all"] == 0.0
    by_hand = sum(abs(rows["suppress"][k] - rows["retrain"][k]) for k in ALL_GAP_METRICS) / len(ALL_GAP_METRICS)
    assert rows["suppress"]["gap_all"] == pytest.approx(by_hand) and rows["suppress"]["MIA_AUC"] > rows["retrain"]["MIA_AUC"]
    assert "suppress" not in scenario["best_approximate"]
    closest = [line for line in section["summary"] if "closest to retrain" in line]
    assert closest and all("suppress" not in line for line in closest)
    assert section["reliable"] and {c["name"] for c in section["checks"]} == {"mia_separates_original", "probes_tell_original", "forgets_not_hides"}
    assert not next(c for c in section["checks"] if c["scope"] == "class: suppress")["passed"]
    assert all(r["MIA_AUC"] is not None and r["relearn_area"] is not None and r["probe_accuracy"] is not None for r in rows.values())
    markdown = paths["report.md"].read_text()
    assert "Unlearning probes: class-wise" in markdown and "Unlearning sanity checks" in markdown


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
    assert "closest to retrain (gap over every metric" in proc.stdout
    doc = json.loads((out / "report.json").read_text())
    section = doc["unlearning"]
    assert [s["kind"] for s in section["scenarios"]] == ["class", "random"]
    for scenario in section["scenarios"]:
        rows = _rows(scenario)
        assert set(rows) == {"original", "retrain", "ft", "ga", "rl", "l1sparse", "salun"}
        assert rows["retrain"]["avg_gap"] == 0.0 and rows["retrain"]["gap_all"] == 0.0
        assert all(0.0 <= r["robust_accuracy"] <= 1.0 for r in rows.values())
        assert all(r["MIA_AUC"] is not None and r["probe_accuracy"] is not None for r in rows.values())
        assert not set(scenario["best_approximate"]) & set(scenario["flagged"])
    class_rows = _rows(section["scenarios"][0])
    assert class_rows["retrain"]["UA"] == 1.0 and class_rows["salun"]["UA"] >= 0.99
    class_checks = [c for c in section["checks"] if c["scope"] == "class"]
    assert class_checks and all(c["passed"] for c in class_checks)
