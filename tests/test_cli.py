"""The CLI path a user walks: eval, list, errors with exit code 2 and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustbench_peft.cli import main
from robustbench_peft.validation import schema_errors

FAST = ["--suite", "quick", "--attack", "pgd:steps=5", "--eps", "0.1,0.2", "--n", "64", "--no-checks", "--quiet"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "robustbench_peft", *args], capture_output=True, text=True, env=env, timeout=300)


def test_eval_writes_four_outputs_and_valid_schema(tmp_path):
    out = tmp_path / "run"
    assert main(["eval", "--out", str(out), *FAST]) == 0
    for name in ("report.json", "report.md", "report.html", "robust_accuracy_vs_eps.png"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "report.json").read_text())
    assert schema_errors(doc) == []
    run = doc["runs"][0]
    assert run["model"]["spec"] == "digits:cnn" and len(run["model"]["sha256"]) == 64
    assert {a["eps"] for a in run["attacks"]} == {0.1, 0.2}
    assert "<table" in (out / "report.html").read_text()


def test_same_command_twice_gives_identical_numbers(tmp_path):
    docs = []
    for name in ("a", "b"):
        assert main(["eval", "--out", str(tmp_path / name), *FAST, "--attack", "pgd:norm=L2,steps=5", "--eps", "L2:1.0"]) == 0
        docs.append(json.loads((tmp_path / name / "report.json").read_text()))
    strip = lambda doc: [{k: v for k, v in run.items()} | {"attacks": [{k: v for k, v in a.items() if k != "seconds"} for a in run["attacks"]]} for run in doc["runs"]]
    assert strip(docs[0]) == strip(docs[1])


def test_list_prints_registered_plugins(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "pgd" in out and "digits" in out and "Projected gradient descent" in out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--task", "nosuchtask"], "unknown task"),
        (["--model", "nosuch:thing"], "unknown model family"),
        (["--model", "digits"], "invalid model spec"),
        (["--attack", "nosuchattack"], "unknown attack"),
        (["--attack", "pgd:stepz=3"], "unknown option"),
        (["--attack", "pgd:steps=abc"], "not a valid int"),
        (["--eps", "-0.1"], "positive"),
        (["--eps", "abc"], "must be a number"),
        (["--eps", "Lfoo:0.1"], "unknown threat model"),
        (["--n", "0"], "--n must be"),
        (["--bogus-flag"], "unrecognized arguments"),
        (["--chunk-size", "0"], "--chunk-size must be"),
        (["--set", "unlearning"], "expected SECTION.KEY=VALUE"),
        (["--set", "diffusion.task=sd-object"], "no 'diffusion' section"),
        (["--set", "unlearning.methodz=salun"], "unknown setting(s) methodz"),
        (["--set", "unlearning.preset=nosuch"], "unknown preset 'nosuch'"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    result = run_cli("eval", "--out", str(tmp_path / "o"), "--quiet", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert needle in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_unwritable_out_dir_and_existing_report_untouched(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("eval", "--out", str(blocker / "sub"), "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # an earlier report is never damaged by a failing or repeated run
    out = tmp_path / "keep"
    assert main(["eval", "--out", str(out), *FAST]) == 0
    before = (out / "report.json").read_bytes()
    assert main(["eval", "--out", str(out), *FAST]) == 2  # exists: needs --force
    assert main(["eval", "--out", str(out), "--force", "--attack", "nosuch"]) == 2
    assert (out / "report.json").read_bytes() == before


def test_set_reaches_a_report_section_and_nests(tmp_path):
    from robustbench_peft.cli import build_suite, make_parser
    from unlearning.section import section_config

    args = make_parser().parse_args(["eval", "--suite", "unlearning", "--set", "unlearning.methods=retrain,ga",
                                     "--set", "unlearning.forget_class=4", "--set", 'unlearning.scenarios=["class"]'])
    suite = build_suite(args)
    config = section_config(suite)
    assert config["methods"] == ["retrain", "ga"] and config["forget_class"] == 4 and config["scenarios"] == ["class"]
    assert config["preset"] == "full"  # the suite's own preset stays; --set overlays it


def test_set_values_are_json_or_text_and_groups_stay_groups():
    from robustbench_peft.errors import UserError
    from robustbench_peft.options import apply_settings, parse_setting

    assert parse_setting("diffusion.task_options.n_attack=4") == (["diffusion", "task_options", "n_attack"], 4)
    assert parse_setting("diffusion.task=sd-object") == (["diffusion", "task"], "sd-object")
    assert parse_setting('diffusion.attacks=["unlearndiff"]') == (["diffusion", "attacks"], ["unlearndiff"])
    extra = {"diffusion": {"preset": "digits", "task_options": {"forget_digit": 3}}}
    merged = apply_settings(extra, ["diffusion.task_options.n_attack=2", "diffusion.grid=0"], ("diffusion",))
    assert merged == {"diffusion": {"preset": "digits", "grid": 0, "task_options": {"forget_digit": 3, "n_attack": 2}}}
    assert extra["diffusion"]["task_options"] == {"forget_digit": 3}  # the suite's own settings are untouched
    for bad in (["diffusion.grid.size=2"], ["diffusion.x=NaN"], ["=1"], ["diffusion.=1"]):
        with pytest.raises(UserError):
            apply_settings(extra | {"diffusion": {"grid": 6}}, bad, ("diffusion",))
