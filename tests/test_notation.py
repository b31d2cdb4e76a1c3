"""Your own model, evaluated the way the leaderboard would: the ecosystem's eps notation
(``8/255``, ``Linf:8/255``, threat models in any case) through ``eval`` and through
``evaluate()`` alike, the whole-box eps warning, input checks, ``--version``, the
``file:`` sidecar help, and ``evaluate()``'s runtime options (one ``RuntimeOptions``
for both front doors).

Every run is ``digits:cnn`` (or a variant of it) on 16 samples with 1-2 PGD steps.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import robustbench_peft
from robustbench_peft import evaluate, precision
from robustbench_peft.cli import build_suite, main, make_parser
from robustbench_peft.config import convert, parse_number
from robustbench_peft.errors import UserError
from robustbench_peft.models.file_family import export_file_model
from robustbench_peft.options import PluginSpec
from robustbench_peft.runner import prepare_attack
from robustbench_peft.runtime import RuntimeOptions
from robustbench_peft.threat_model import check_norm, eps_by_norm, validate_eps, whole_box_eps

pytestmark = pytest.mark.usefixtures("one_thread")

N = "16"
#: One fast attack per threat model the case needs; --no-checks keeps every run to seconds.
FAST = ["--suite", "quick", "--n", N, "--no-checks", "--quiet"]  # the quick suite's model is digits:cnn


def cli_suite(*args: str):
    """The suite ``eval`` would run for ``args`` (parsed, built, not run)."""
    return build_suite(make_parser().parse_args(["eval", *args]))


def cli_run(tmp_path: Path, capsys, *args: str) -> tuple[int, dict[str, Any] | None, str]:
    """``eval`` in this process: exit code, report.json (None when none was written), stderr."""
    out = tmp_path / "run"
    code = main(["eval", "--out", str(out), *FAST, *args])
    err = capsys.readouterr().err
    report = out / "report.json"
    return code, (json.loads(report.read_text()) if report.exists() else None), err


def api_run(**kwargs: Any):
    """``evaluate`` of digits:cnn on 16 samples, checks off unless asked."""
    kwargs = {"model": "digits:cnn", "n": 16, "checks": False, **kwargs}
    return evaluate(**kwargs)


def attack_eps(doc_or_report: Any) -> set[tuple[str, float]]:
    """(threat model, eps) of every attack record of the first run."""
    if isinstance(doc_or_report, dict):
        return {(a["threat_model"], a["eps"]) for a in doc_or_report["runs"][0]["attacks"]}
    return {(a.threat_model, a.eps) for a in doc_or_report.runs[0].attacks}


# -- the shared readers -----------------------------------------------------------------
def test_numbers_read_fractions_and_refuse_what_is_not_a_number():
    assert parse_number("8/255") == 8 / 255 and parse_number(" 0.5 ") == 0.5 and parse_number("1e-3") == 1e-3
    for bad in ("8/0", "a/b", "8/255/2", ""):
        with pytest.raises(ValueError):
            parse_number(bad)
    # a float plug-in option (e.g. a defense's eps) reads the same text
    assert convert("8/255", float, "eps", "advft") == 8 / 255
    with pytest.raises(UserError, match="not a valid float"):
        convert("8/zero", float, "eps", "advft")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("8/255", [8 / 255]),
        (0.1, [0.1]),
        ("4/255,8/255", [4 / 255, 8 / 255]),
        ("4/255+8/255", [4 / 255, 8 / 255]),
        ("1e+3", [1000.0]),
        (["8/255", 0.1, 8 / 255], [8 / 255, 0.1]),
    ],
)
def test_validate_eps_takes_every_notation(value, expected):
    assert validate_eps(value) == expected


@pytest.mark.parametrize("value, needle", [("abc", "must be a number"), ("-8/255", "positive"), (True, "must be a number"), ({"Linf": 1}, "eps must be")])
def test_bad_eps_is_a_user_error(value, needle):
    with pytest.raises(UserError, match=needle):
        validate_eps(value)


@pytest.mark.parametrize("name, canonical", [("linf", "Linf"), ("LINF", "Linf"), ("Linf", "Linf"), ("l2", "L2"), (" L2 ", "L2")])
def test_threat_model_names_in_any_case(name, canonical):
    assert check_norm(name) == canonical


def test_defense_options_take_fractions_and_norms_in_any_case():
    from defenses.adversarial_finetune import AdversaryOptions

    options = AdversaryOptions.from_options({"eps": "8/255", "norm": "l2"}, "advft")
    assert options.eps == 8 / 255 and options.norm == "L2"


def test_unknown_threat_model_names_the_valid_ones():
    with pytest.raises(UserError, match="unknown threat model 'L1'; use one of Linf, L2"):
        check_norm("L1")


def test_eps_by_norm_spreads_a_bare_list_and_keeps_named_ones():
    assert eps_by_norm(None, ["Linf"]) is None
    assert eps_by_norm("8/255", ["Linf", "L2"]) == {"Linf": [8 / 255], "L2": [8 / 255]}
    assert eps_by_norm({"*": 0.1, "l2": "1/2"}, ["Linf", "L2"]) == {"Linf": [0.1], "L2": [0.5]}
    assert eps_by_norm("linf:8/255", ["L2"]) == {"Linf": [8 / 255]}


# -- the same notation through eval and through evaluate() -------------------------------
#: (eval arguments, evaluate() keyword arguments, the eps the suite must hold).
NOTATION_CASES = {
    "fraction": (["--attack", "pgd:steps=1", "--eps", "8/255"], {"attacks": ["pgd:steps=1"], "eps": "8/255"}, {"Linf": [8 / 255]}),
    "norm-and-fraction": (["--attack", "pgd:steps=1", "--eps", "Linf:8/255"], {"attacks": ["pgd:steps=1"], "eps": "Linf:8/255"}, {"Linf": [8 / 255]}),
    "lowercase-norm-list": (["--attack", "pgd:steps=1", "--eps", "linf:4/255,8/255"], {"attacks": ["pgd:steps=1"], "eps": {"linf": ["4/255", "8/255"]}}, {"Linf": [4 / 255, 8 / 255]}),
    "scalar": (["--attack", "pgd:steps=1", "--eps", "0.1"], {"attacks": ["pgd:steps=1"], "eps": 0.1}, {"Linf": [0.1]}),
    "plugin-norm-lowercase": (["--attack", "pgd:steps=1,norm=l2", "--eps", "1/2"], {"attacks": ["pgd:steps=1,norm=l2"], "eps": [0.5]}, {"L2": [0.5]}),
    "plugin-norm-uppercase": (["--attack", "pgd:steps=1,norm=LINF", "--eps", "LINF:8/255"], {"attacks": ["pgd:steps=1,norm=LINF"], "eps": {"LINF": "8/255"}}, {"Linf": [8 / 255]}),
    "two-norms": (["--eps", "8/255", "--eps", "l2:0.5"], {"eps": {"*": "8/255", "l2": 0.5}}, {"Linf": [8 / 255], "L2": [0.5]}),
}


class Captured(Exception):
    """Raised by the stand-in runner: what a front door handed the runner, without running it."""

    def __init__(self, suite: Any, options: RuntimeOptions) -> None:
        super().__init__("captured")
        self.suite, self.options = suite, options


class CapturingRunner:
    def __init__(self, suite: Any, *args: Any, options: RuntimeOptions | None = None, **kwargs: Any) -> None:
        self.suite, self.options = suite, options

    def run(self) -> Any:
        raise Captured(self.suite, self.options)


@pytest.mark.parametrize("case", list(NOTATION_CASES))
def test_eps_notation_through_eval(case):
    cli_args, _, expected = NOTATION_CASES[case]
    assert cli_suite(*FAST, *cli_args).eps == expected


@pytest.mark.parametrize("case", list(NOTATION_CASES))
def test_eps_notation_through_evaluate(case, monkeypatch):
    _, api_kwargs, expected = NOTATION_CASES[case]
    monkeypatch.setattr("robustbench_peft.api.Runner", CapturingRunner)
    with pytest.raises(Captured) as got:
        api_run(**api_kwargs)
    assert got.value.suite.eps == expected


def test_fraction_eps_runs_end_to_end_through_eval(tmp_path, capsys):
    code, doc, err = cli_run(tmp_path, capsys, "--attack", "pgd:steps=1,norm=linf", "--eps", "Linf:8/255")
    assert code == 0, err
    assert attack_eps(doc) == {("Linf", 8 / 255)} and doc["suite"]["eps"] == {"Linf": [8 / 255]}
    assert "warning" not in err and "warnings" not in doc["suite"]


def test_scalar_and_text_eps_run_end_to_end_through_evaluate():
    """``eps=0.1`` used to raise a raw TypeError and ``eps="8/255"`` was read character by character."""
    assert attack_eps(api_run(attacks=["pgd:steps=1"], eps=0.1)) == {("Linf", 0.1)}
    assert attack_eps(api_run(attacks=["pgd:steps=1"], eps="8/255")) == {("Linf", 8 / 255)}


def test_attack_option_eps_and_norm_in_the_ecosystem_notation(tmp_path, capsys):
    prepared = prepare_attack(PluginSpec("pgd", {"eps": "4/255+8/255", "norm": "linf"}), seed=0, batch_size=16, progress=False)
    assert prepared.eps == [4 / 255, 8 / 255] and prepared.attack.norm == "Linf"
    code, doc, err = cli_run(tmp_path, capsys, "--attack", "pgd:steps=1,norm=l2,eps=1/2+1")
    assert code == 0, err
    assert attack_eps(doc) == {("L2", 0.5), ("L2", 1.0)}
    report = api_run(attacks=["pgd:steps=1,norm=l2,eps=1/2+1"])
    assert attack_eps(report) == {("L2", 0.5), ("L2", 1.0)}


def test_bad_eps_notation_is_one_error_line_through_both_doors(tmp_path, capsys):
    for args, needle in ((["--eps", "8/0"], "must be a number"), (["--eps", "Lfoo:8/255"], "unknown threat model"), (["--attack", "pgd:norm=L3"], "unknown threat model")):
        code, doc, err = cli_run(tmp_path, capsys, *args)
        assert code == 2 and doc is None
        assert err.startswith("error: ") and needle in err and err.strip().count("\n") == 0, err
    with pytest.raises(UserError, match="must be a number"):
        api_run(eps="8/zero")
    with pytest.raises(UserError, match="unknown threat model"):
        api_run(eps={"Lfoo": 0.1})


# -- an eps that allows every image ------------------------------------------------------
def test_whole_box_eps_rule():
    assert whole_box_eps("Linf", 8 / 255, (1, 8, 8)) is None
    assert "did you mean 8/255" in whole_box_eps("linf", 8, (1, 8, 8))
    assert whole_box_eps("Linf", 1.0, (1, 8, 8)) is not None
    assert whole_box_eps("L2", 7.9, (1, 8, 8)) is None  # sqrt(64) = 8 is the box's L2 diameter
    assert whole_box_eps("L2", 8.0, (1, 8, 8)) is not None


def test_pixel_unit_eps_warns_on_one_stderr_line_and_in_the_report(tmp_path, capsys):
    code, doc, err = cli_run(tmp_path, capsys, "--attack", "pgd:steps=1", "--eps", "8")
    assert code == 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: Linf eps=8 allows every image") and "8/255" in lines[0], err
    assert doc["suite"]["warnings"] == [lines[0][len("warning: "):]]


def test_pixel_unit_eps_warns_through_evaluate():
    with pytest.warns(UserWarning, match=r"L2 eps=8 allows every image .*did you mean 8/255"):
        report = api_run(attacks=["pgd:steps=1,norm=L2"], eps=8)
    assert len(report.suite["warnings"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sensible eps says nothing
        report = api_run(attacks=["pgd:steps=1,norm=L2"], eps=7.9)
    assert "warnings" not in report.suite


# -- input checks ------------------------------------------------------------------------
def test_module_of_another_input_shape_is_one_error_line_through_evaluate():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(UserError) as error:
        api_run(model=model, attacks=["pgd:steps=1"])
    text = str(error.value)
    assert "\n" not in text
    assert "received shape (N, 1, 8, 8)" in text and "expects 3072 input features, the images have 64" in text, text


def test_model_of_another_input_shape_is_one_error_line_exit_2_through_eval(tmp_path, capsys, cnn):
    """A file: sidecar whose network takes 3 channels for a 1-channel task."""
    path = export_file_model(cnn.model, tmp_path / "rgb.safetensors", "digits:cnn", 10, (1, 8, 8), input_size=[3, 8, 8])
    code, doc, err = cli_run(tmp_path, capsys, "--model", f"file:{path}", "--attack", "pgd:steps=1")
    assert code == 2 and doc is None
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "received shape (N, 1, 8, 8), (N, 3, 8, 8) after the target's preprocessing" in err
    assert "expects 1 input channels, the images have 3" in err


class Negated(nn.Module):
    """digits:cnn with its logits negated: predicts its least likely class, so nothing is correct."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.model(x)


def test_no_correct_sample_means_nothing_attacked_and_not_reliable_through_evaluate(cnn):
    with pytest.warns(UserWarning, match="nothing was attacked"):
        report = api_run(model=Negated(copy.deepcopy(cnn.model)), attacks=["pgd:steps=1"])
    (run,) = report.runs
    assert run.clean_accuracy == 0.0
    assert not run.reliable and not report.reliable
    assert any(reason.startswith("samples_to_attack: nothing was attacked") for reason in run.unreliable_reasons)


def test_no_correct_sample_is_said_by_eval_and_marked_unreliable(tmp_path, capsys, cnn):
    negated = copy.deepcopy(cnn.model)
    with torch.no_grad():
        negated.fc2.weight.neg_()
        negated.fc2.bias.neg_()
    path = export_file_model(negated, tmp_path / "negated.safetensors", "digits:cnn", 10, (1, 8, 8))
    out = tmp_path / "run"
    assert main(["eval", "--out", str(out), *FAST, "--model", f"file:{path}", "--attack", "pgd:steps=1"]) == 0
    captured = capsys.readouterr()
    assert "nothing was attacked" in captured.err and captured.err.startswith("warning: ")
    assert "UNRELIABLE" in captured.out
    run = json.loads((out / "report.json").read_text())["runs"][0]
    assert run["clean_accuracy"] == 0.0 and run["reliable"] is False
    assert [c["name"] for c in run["checks"] if not c["passed"]] == ["samples_to_attack"]


# -- --version and the file: sidecar help ------------------------------------------------
def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"robustbench_peft {robustbench_peft.__version__}\n"


def test_version_through_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "robustbench_peft", "--version"], capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and result.stdout.strip() == f"robustbench_peft {robustbench_peft.__version__}", result.stderr


def test_list_file_describes_the_sidecar(capsys):
    assert main(["list", "file"]) == 0
    out = capsys.readouterr().out
    for needle in ("model family file:", "architecture", "num_classes", "input_shape", "input_size", "mean, std", "export_file_model", "timm", "digits"):
        assert needle in out, needle


# -- evaluate()'s runtime options: one RuntimeOptions for both front doors -------------------
def test_evaluate_hands_the_runner_the_options_eval_would(monkeypatch, tmp_path):
    monkeypatch.setattr("robustbench_peft.api.Runner", CapturingRunner)
    with pytest.raises(Captured) as api:
        api_run(attacks=["pgd:steps=1"], eps="8/255", device="cpu", batch_size=7, chunk_size=5, threads=1, amp="bf16", channels_last=True)
    assert api.value.options == RuntimeOptions(device="cpu", threads=1, amp="bf16", channels_last=True)
    assert (api.value.suite.batch_size, api.value.suite.chunk_size) == (7, 5)

    monkeypatch.setattr("robustbench_peft.runner.Runner", CapturingRunner)  # eval imports it when it runs
    with pytest.raises(Captured) as cli:
        main(["eval", "--out", str(tmp_path / "never-written"), *FAST, "--attack", "pgd:steps=1", "--eps", "8/255", "--device", "cpu",
              "--batch-size", "7", "--chunk-size", "5", "--threads", "1", "--amp", "bf16", "--channels-last"])
    assert cli.value.options == api.value.options
    assert cli.value.suite.to_json() == api.value.suite.to_json()


def test_runtime_options_reach_a_real_run_and_are_undone_after_it():
    threads = torch.get_num_threads()
    report = api_run(attacks=["pgd:steps=1"], eps="8/255", device="cpu", batch_size=4, chunk_size=8, threads=2, amp="bf16")
    assert report.environment["device"] == "cpu" and report.environment["torch_threads"] == 2
    assert report.suite["batch_size"] == 4 and report.suite["chunk_size"] == 8
    assert torch.get_num_threads() == threads and precision.fit_amp() == "off"  # nothing process-wide left behind


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"threads": 0}, "threads must be"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"amp": "fp8"}, "unknown --amp 'fp8'"),
        ({"device": "nosuchdevice"}, "not a torch device"),
    ],
)
def test_bad_runtime_options_are_user_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        api_run(attacks=["pgd:steps=1"], **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluate_on_cuda_with_channels_last():
    report = api_run(attacks=["pgd:steps=2"], eps="8/255", device="cuda", channels_last=True, batch_size=8)
    on_cpu = api_run(attacks=["pgd:steps=2"], eps="8/255", device="cpu", batch_size=8)
    assert report.environment["device"] == "cuda"
    assert report.runs[0].clean_accuracy == on_cpu.runs[0].clean_accuracy
    assert attack_eps(report) == {("Linf", 8 / 255)}
