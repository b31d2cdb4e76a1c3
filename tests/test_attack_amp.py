"""Attacks craft in float32 unless asked (``amp=bf16``); their accuracy is always re-measured in float32."""

from __future__ import annotations

import json

import pytest
import torch

from attacks.pgd import PGD
from robustbench_peft.errors import UserError
from robustbench_peft.options import PluginSpec
from robustbench_peft.runner import prepare_attack
from robustbench_peft.submission import run_reasons
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.threat_model import distance


class Recording(torch.nn.Module):
    """Records, per forward pass, whether autocast was on and the dtype of the logits."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        out = self.inner(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


@pytest.fixture
def recorded(cnn):
    wrapper = Recording(cnn)
    return wrapper, ClassifierTarget(wrapper, 10, (1, 8, 8), name="recorded")


def test_bf16_crafting_is_scored_in_float32(recorded, small_batch):
    wrapper, target = recorded
    x, y = small_batch
    attack = PGD(steps=5, progress=False, amp="bf16")
    result = attack(target, x, y, [0.1])
    autocast_flags = [on for on, _ in wrapper.seen]
    assert autocast_flags[0] is False and autocast_flags[-1] is False  # clean prediction and re-measurement
    crafting = autocast_flags[1:-1]
    assert any(crafting)  # the crafting passes run under autocast
    referee = result.details["referee"]
    # the passes outside autocast in between are the referee's float32 confirmations of "fooled" flags
    assert (False in crafting) == (referee["confirmed"] + referee["disagreements"] > 0)
    assert wrapper.seen[1][1] == torch.bfloat16 and wrapper.seen[-1][1] == torch.float32
    x_adv = result.x_adv[0]
    assert x_adv.dtype == torch.float32 and (distance(x, x_adv, "Linf") <= 0.1 + 1e-6).all()
    assert torch.equal(result.correct[0], target.predict(x_adv) == y)
    assert result.name.endswith("@bf16") and result.config["amp"] == "bf16"
    assert not torch.is_autocast_enabled("cpu")


def test_float32_is_the_default_and_leaves_no_mark(recorded, small_batch):
    wrapper, target = recorded
    result = PGD(steps=3, progress=False)(target, *small_batch, [0.1])
    assert not any(on for on, _ in wrapper.seen)
    assert "@" not in result.name and "amp" not in result.config


def test_runner_option_validates_and_sets_amp(small_batch, cnn):
    prepared = prepare_attack(PluginSpec("pgd", {"steps": "2", "amp": "bf16"}), seed=0, batch_size=64, progress=False)
    assert prepared.attack.amp == "bf16"
    with pytest.raises(UserError, match="amp must be one of"):
        prepare_attack(PluginSpec("pgd", {"amp": "fp8"}), seed=0, batch_size=64, progress=False)
    fp16 = prepare_attack(PluginSpec("pgd", {"steps": "2", "amp": "fp16"}), seed=0, batch_size=64, progress=False).attack
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        fp16(cnn, *small_batch, [0.1])


def test_eval_reports_the_precision_and_submit_wants_float32_autoattack(tmp_path):
    from robustbench_peft.cli import main
    from robustbench_peft.records import RunRecord

    out = tmp_path / "run"
    assert main(["eval", "--suite", "quick", "--attack", "pgd:steps=3,amp=bf16", "--eps", "0.1", "--n", "32", "--no-checks", "--quiet", "--out", str(out)]) == 0
    run = json.loads((out / "report.json").read_text())["runs"][0]
    assert [a["name"] for a in run["attacks"]] == ["pgd-3@bf16"] and run["attacks"][0]["config"]["amp"] == "bf16"
    autoattack = {**run["attacks"][0], "name": "autoattack-apgd-ce@bf16", "n": 1000, "adaptive": True, "standard": True, "config": {"attack": "autoattack", "amp": "bf16"}}
    reasons = run_reasons(0, RunRecord.from_json({**run, "n": 1000, "attacks": [autoattack]}), min_n=100)
    assert any("only under mixed precision" in r for r in reasons)
    reasons = run_reasons(0, RunRecord.from_json({**run, "n": 1000, "attacks": [{**autoattack, "config": {"attack": "autoattack"}}]}), min_n=100)
    assert not any("AutoAttack" in r for r in reasons)
