"""Claims: schema, mapping onto suites, verdicts (numbers and reliability), the verify command."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from robustbench_peft import claims as claims_module
from robustbench_peft.claims import METRICS, Claim, collect_claims, evaluation_key, judge, load_claim_file, register_metric, table, verify, within
from robustbench_peft.cli import main
from robustbench_peft.errors import UserError
from test_leaderboard import fake_report, fake_run

REPO = Path(__file__).resolve().parent.parent
CLAIMS_DIR = REPO / "reports" / "claims"


def claim_doc(**changes: Any) -> dict[str, Any]:
    doc = {
        "id": "fake-cavp",
        "description": "C-AVP robust accuracy",
        "evaluation": {"task": "digits", "model": "digits:cnn", "defense": "cavp", "attacks": ["pgd:steps=10"], "eps": {"Linf": [0.1]}, "n": 200, "seed": 0},
        "metric": {"name": "robust_accuracy", "threat_model": "Linf", "eps": 0.1},
        "claimed": 0.5,
        "tolerance": 0.02,
        "direction": ">=",
    }
    doc.update(changes)
    return doc


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_project_claims_load_and_map_onto_suites():
    claims = collect_claims([CLAIMS_DIR])
    ids = {c.id for c in claims}
    assert len(ids) == len(claims) >= 3
    names = {c.evaluation.get("defense", c.evaluation.get("unlearner", "")).split(":")[0] for c in claims}
    assert {"cavp", "advft", "salun"} <= names
    for claim in claims:
        suite = claim.suite()
        assert suite.checks and suite.n == claim.evaluation["n"]
        if "unlearner" in claim.evaluation:
            assert suite.sections[0] == "unlearning" and suite.extra["unlearning"]["methods"][-1].startswith("salun")


def test_malformed_claims_name_the_file_and_the_problem(tmp_path):
    cases = {
        "no-tolerance.json": ({k: v for k, v in claim_doc().items() if k != "tolerance"}, "'tolerance' is a required property"),
        "direction.json": (claim_doc(direction=">"), "direction"),
        "metric.json": (claim_doc(metric={"name": "nosuch"}), "unknown metric 'nosuch'"),
        "both.json": (claim_doc(evaluation={**claim_doc()["evaluation"], "unlearner": "salun"}), "not both"),
    }
    for name, (doc, needle) in cases.items():
        with pytest.raises(UserError) as err:
            load_claim_file(write(tmp_path / name, doc))
        assert name in str(err.value) and needle in str(err.value), str(err.value)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="broken.json is not a readable JSON claim file"):
        load_claim_file(tmp_path / "broken.json")


def test_duplicate_ids_are_refused(tmp_path):
    write(tmp_path / "a.json", claim_doc())
    write(tmp_path / "b.json", {"claims": [claim_doc()]})
    with pytest.raises(UserError, match="appears twice"):
        collect_claims([tmp_path])


def test_within_each_direction():
    assert within(0.49, 0.5, 0.02, ">=") and not within(0.47, 0.5, 0.02, ">=")
    assert within(0.51, 0.5, 0.02, "<=") and not within(0.53, 0.5, 0.02, "<=")
    assert within(0.48, 0.5, 0.02, "==") and within(0.52, 0.5, 0.02, "==") and not within(0.53, 0.5, 0.02, "==")


def test_claim_suite_maps_every_field():
    suite = Claim.from_json(claim_doc(evaluation={**claim_doc()["evaluation"], "batch_size": 64, "task_options": {"k": 1}})).suite()
    assert (suite.task, suite.models, suite.n, suite.seed, suite.batch_size, suite.task_options) == ("digits", ("digits:cnn",), 200, 0, 64, {"k": 1})
    assert [d.label() for d in suite.defenses] == ["cavp"] and [a.label() for a in suite.attacks] == ["pgd:steps=10"]
    assert suite.eps == {"Linf": [0.1]}
    unlearn = Claim.from_json(claim_doc(evaluation={"task": "digits", "model": "digits:cnn", "unlearner": "salun:fraction=0.3", "baselines": ["retrain"], "scenario": "random:fraction=0.2", "unlearning_options": {"pgd_steps": 0}, "n": 100, "seed": 3})).suite()
    assert unlearn.models == () and unlearn.sections == ("unlearning",)
    assert unlearn.extra["unlearning"] == {"pgd_steps": 0, "model": "digits:cnn", "methods": ["retrain", "salun:fraction=0.3"], "scenarios": ["random:fraction=0.2"]}


def test_judge_passes_fails_and_flags_unreliable_evaluations():
    claim = Claim.from_json(claim_doc())
    assert judge(claim, fake_report(fake_run(robust=0.49))).status == "PASS"
    low = judge(claim, fake_report(fake_run(robust=0.47)))
    assert low.status == "FAIL" and low.measured == pytest.approx(0.47) and "not >= 0.4800" in low.reasons[0]
    masked = judge(claim, fake_report(fake_run(robust=0.6, reliable=False)))
    assert masked.status == "FAIL" and masked.reasons == ["unreliable evaluation: more_steps_never_raise_accuracy: 10 steps beat 50"]
    missing = judge(Claim.from_json(claim_doc(metric={"name": "robust_accuracy", "eps": 0.3})), fake_report())
    assert missing.status == "ERROR" and "Linf 0.1" in missing.reasons[0]


def test_attack_metric_takes_the_lowest_matching_record():
    run = fake_run(robust=0.6)
    run["attacks"][1]["robust_accuracy"] = 0.55
    claim = Claim.from_json(claim_doc(metric={"name": "robust_accuracy", "attack": "autoattack"}, claimed=0.55, tolerance=0.0))
    verdict = judge(claim, fake_report(run))
    assert verdict.measured == pytest.approx(0.55) and verdict.passed


def unlearning_section(ua: float, gap: float) -> dict[str, Any]:
    rows = [
        {"label": "retrain", "method": "retrain", "UA": 1.0, "RA": 1.0, "TA": 0.98, "MIA": 1.0, "avg_gap": 0.0},
        {"label": "salun (fraction=0.5)", "method": "salun", "UA": ua, "RA": 0.99, "TA": 0.97, "MIA": 1.0, "avg_gap": gap},
    ]
    return {"scenarios": [{"kind": "class", "rows": rows}]}


def test_unlearning_metric_reads_the_section():
    doc = claim_doc(evaluation={"task": "digits", "model": "digits:cnn", "unlearner": "salun", "baselines": ["retrain"], "n": 100, "seed": 0}, metric={"name": "unlearning", "key": "UA"}, claimed=0.99, tolerance=0.01)
    report = fake_report(unlearning=unlearning_section(ua=0.985, gap=0.01))
    assert judge(Claim.from_json(doc), report).measured == pytest.approx(0.985)
    gap = Claim.from_json({**doc, "metric": {"name": "unlearning", "key": "avg_gap", "scenario": "class"}, "claimed": 0.005, "direction": "<="})
    assert judge(gap, report).passed  # 0.01 <= 0.005 + 0.01
    strict = judge(Claim.from_json({**doc, "metric": gap.metric, "claimed": 0.0, "tolerance": 0.005, "direction": "<="}), report)
    assert strict.status == "FAIL" and strict.measured == pytest.approx(0.01) and "not <= 0.0050" in strict.reasons[0]
    assert judge(Claim.from_json({**doc, "metric": {"name": "unlearning", "key": "XYZ"}}), report).status == "ERROR"


def test_metric_extractors_are_pluggable():
    @register_metric("test_section_value")
    def value(doc, claim):
        return float(doc["test_section"]["value"])

    try:
        claim = Claim.from_json(claim_doc(metric={"name": "test_section_value"}, claimed=0.2, direction="<=", tolerance=0.0))
        assert judge(claim, fake_report(test_section={"value": 0.1})).passed
        assert not judge(claim, fake_report(test_section={"value": 0.3})).passed
        unreliable = judge(claim, fake_report(test_section={"value": 0.1, "reliable": False, "unreliable_reasons": ["judge disagreed"]}))
        assert unreliable.status == "FAIL" and "test_section: judge disagreed" in unreliable.reasons[0]
    finally:
        METRICS.pop("test_section_value")


def test_claims_sharing_an_evaluation_run_it_once():
    first = Claim.from_json(claim_doc())
    second = Claim.from_json(claim_doc(id="fake-clean", metric={"name": "clean_accuracy"}, claimed=0.9))
    other = Claim.from_json(claim_doc(id="fake-n100", evaluation={**claim_doc()["evaluation"], "n": 100}))
    assert evaluation_key(first.suite()) == evaluation_key(second.suite()) != evaluation_key(other.suite())
    calls = []

    def runner(suite):
        calls.append(suite.n)
        return fake_report(fake_run(robust=0.5, clean=0.9))

    verdicts = verify([first, second, other], runner)
    assert calls == [200, 100] and [v.status for v in verdicts] == ["PASS"] * 3


def test_evaluation_errors_become_error_rows():
    def runner(suite):
        raise UserError("unknown attack 'pgdx'")

    (verdict,) = verify([Claim.from_json(claim_doc())], runner)
    assert verdict.status == "ERROR" and "unknown attack" in verdict.reasons[0]
    assert "ERROR" in table([verdict])

    def crashing(suite):
        if suite.n == 200:
            raise RuntimeError("out of memory")
        return fake_report()

    crashed, fine = verify([Claim.from_json(claim_doc()), Claim.from_json(claim_doc(id="other", evaluation={**claim_doc()["evaluation"], "n": 100}))], crashing)
    assert crashed.status == "ERROR" and "RuntimeError: out of memory" in crashed.reasons[0] and fine.passed


def test_verify_command_exit_codes_table_and_junit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(claims_module, "run_suite", lambda suite, quiet=True, out=None: fake_report(fake_run(robust=0.5)))
    good = write(tmp_path / "good.json", {"claims": [claim_doc(id="ok-1"), claim_doc(id="ok-2", metric={"name": "clean_accuracy"}, claimed=0.9)]})
    junit = tmp_path / "junit.xml"
    assert main(["verify", str(good), "--quiet", "--junit", str(junit)]) == 0
    out = capsys.readouterr().out
    assert "claimed" in out and "measured" in out and "tolerance" in out and "2/2 claims reproduce" in out
    assert ET.parse(junit).getroot().get("failures") == "0"
    moved = copy.deepcopy(json.loads(good.read_text()))
    moved["claims"][0]["claimed"] = 0.6  # 0.5 measured is beyond the 0.02 tolerance
    write(good, moved)
    assert main(["verify", str(good), "--quiet", "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("ok-1"))
    assert ">= 0.6000" in row and "0.5000" in row and "0.0200" in row and "FAIL" in row and "not >= 0.5800" in row
    root = ET.parse(junit).getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1"
    assert root.find("testcase[@name='ok-1']/failure") is not None and root.find("testcase[@name='ok-2']/failure") is None


def test_verify_command_user_errors(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nothing.json")]) == 2
    assert "no claim file or directory" in capsys.readouterr().err
    assert main(["verify", str(tmp_path)]) == 2
    assert "no claim files" in capsys.readouterr().err
    assert main(["verify", str(CLAIMS_DIR), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_verify_runs_a_real_evaluation(tmp_path, capsys):
    """End to end through the runner: a cheap claim on the bare digits CNN reproduces itself."""
    evaluation = {"task": "digits", "model": "digits:cnn", "attacks": ["pgd:steps=3"], "eps": {"Linf": [0.3]}, "n": 48, "seed": 0}
    doc = claim_doc(id="tiny", evaluation=evaluation, metric={"name": "clean_accuracy"}, claimed=0.9, tolerance=0.0)
    path = write(tmp_path / "tiny.json", doc)
    out = tmp_path / "reports"
    code = main(["verify", str(path), "--quiet", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    report = json.loads((out / "tiny" / "report.json").read_text())
    assert report["runs"][0]["checks"] and report["runs"][0]["n"] == 48
    assert (out / "tiny" / "report.html").exists()
