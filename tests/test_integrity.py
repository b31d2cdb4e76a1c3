"""Numbers that cannot be inflated: coverage, the non-adaptive protocol, the lowest known
accuracy, an early stop that cannot lie, prompt gradients under L2, a gradient-free probe."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from attacks.pgd import PGD
from robustbench_peft.cli import main
from robustbench_peft.options import PluginSpec
from robustbench_peft.registry import SUITES
from robustbench_peft.runner import Runner
from robustbench_peft.suite import Suite
from robustbench_peft.targets import ClassifierTarget


pytestmark = pytest.mark.usefixtures("one_thread")


def _flags(bits: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


def test_worst_case_is_over_the_samples_an_attack_covered(tmp_path):
    out = tmp_path / "run"
    code = main(["eval", "--n", "200", "--attack", "pgd:n=50,steps=5", "--out", str(out), "--quiet"])
    assert code == 0
    runs = json.loads((out / "report.json").read_text())["runs"]
    assert len(runs) == 7  # the default suite's bare model and six defenses
    for run in runs:
        assert run["n"] == 200
        for worst in run["worst_case"]:
            covered = _flags(worst["covered"])
            assert worst["n"] == 50 and int(covered.sum()) == 50 and bool(covered[:50].all())
            correct = _flags(worst["correct"])
            assert not bool(correct[50:].any())  # an unattacked sample is never robust
            assert abs(worst["robust_accuracy"] - float(correct[:50].float().mean())) < 1e-12
        clean = _flags(run["clean_correct"])
        assert bool(clean[50:].any())  # the old rule would have counted these as robust
    markdown = (out / "report.md").read_text()
    assert "over n" in markdown and "| 50 |" in markdown


class CountingTarget(ClassifierTarget):
    """The digits CNN, counting the samples of every gradient pass (calls with grad enabled)."""

    def __init__(self, inner: ClassifierTarget) -> None:
        super().__init__(inner.model, inner.n_classes, inner.input_shape, name="counting")
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.samples += len(x)
        return super().forward(x)


def test_non_adaptive_pgd_spends_its_whole_budget_on_the_crafting_model(cnn, small_batch):
    x, y = small_batch
    craft = CountingTarget(cnn)
    attack = PGD(steps=10, restarts=2, loss="cw", progress=False)
    result = attack(cnn, x, y, [0.1], craft_target=craft)
    standing = int((cnn.predict(x) == y).sum())
    assert craft.samples == standing * 10 * 2  # no early stop, no skipped restart
    assert not result.adaptive and "referee" not in result.details
    adaptive = CountingTarget(cnn)
    PGD(steps=10, restarts=2, loss="cw", progress=False)(adaptive, x, y, [0.1])
    assert adaptive.samples < standing * 10 * 2  # the evaluated model may stop its own attack


def test_non_adaptive_restarts_are_kept_by_the_crafting_loss(cnn, small_batch):
    from attacks.losses import cw_loss

    x, y = small_batch
    one = PGD(steps=5, restarts=1, loss="cw", seed=1, progress=False)
    three = PGD(steps=5, restarts=3, loss="cw", seed=1, progress=False)
    g1, g3 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x1 = one.perturb(cnn, x, y, 0.1, g1, referee=None)
    x3 = three.perturb(cnn, x, y, 0.1, g3, referee=None)
    loss1, loss3 = cw_loss(cnn.logits(x1), y, None), cw_loss(cnn.logits(x3), y, None)
    assert bool((loss3 >= loss1 - 1e-6).all())  # the first restart is one of the candidates
    assert bool((loss3 > loss1 + 1e-6).any())


class HalfPrecisionLiar(nn.Module):
    """Under autocast a constant lifts another class to the top: every sample looks fooled in
    half precision (same gradients), while float32 says otherwise."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if torch.is_autocast_enabled("cpu"):
            lifted = (logits.detach().argmax(1) + 1) % logits.shape[1]
            return logits + 100.0 * nn.functional.one_hot(lifted, logits.shape[1]).to(logits.dtype)
        return logits


def test_early_stop_needs_the_evaluated_model_in_float32(cnn, small_batch):
    from robustbench_peft.referee import Referee

    class Credulous(Referee):
        """The old rule: freeze a sample on the attack's own flag."""

        def confirm(self, model, x_adv, y, flagged, logits=None):
            return flagged

    x, y = small_batch
    liar = ClassifierTarget(HalfPrecisionLiar(cnn.model), 10, (1, 8, 8), name="liar")

    def bf16_accuracy(referee: Referee) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            candidates = PGD(steps=10, loss="ce", progress=False).perturb(liar, x, y, 0.1, torch.Generator().manual_seed(0), referee=referee)
        return float((liar.predict(candidates) == y).float().mean())  # scored in float32

    referee = Referee(liar)
    believed, checked = bf16_accuracy(Credulous(liar)), bf16_accuracy(referee)
    assert believed > checked + 0.15  # frozen on a lie, samples count as robust
    assert referee.disagreements > 0
    attack = PGD(steps=10, progress=False, amp="bf16")
    assert attack(liar, x, y, [0.1]).details["referee"]["disagreements"] > 0  # recorded in the details
    assert PGD(steps=10, progress=False)(cnn, x, y, [0.1]).details["referee"]["disagreements"] == 0


def test_kappa_freezes_only_confident_breaks(cnn, small_batch):
    from robustbench_peft.referee import misclassification_margin

    x, y = small_batch
    plain = PGD(steps=20, loss="cw", progress=False)(cnn, x, y, [0.15])
    margin = PGD(steps=20, loss="cw", kappa=2.0, progress=False)(cnn, x, y, [0.15])
    broken_plain, broken_margin = ~plain.correct[0], ~margin.correct[0]
    m_plain = misclassification_margin(cnn.logits(plain.x_adv[0]), y)[broken_plain]
    m_margin = misclassification_margin(cnn.logits(margin.x_adv[0]), y)[broken_margin]
    assert float(m_margin.median()) > float(m_plain.median()) + 0.5
    assert margin.config["kappa"] == 2.0 and margin.details["referee"]["kappa"] == 2.0


def test_prompt_defenses_under_l2_keep_the_worst_of_both_clip_gradients():
    suite = Suite(name="l2-prompts", task="digits", models=("digits:cnn",), attacks=(PluginSpec("pgd", {"norm": "L2", "steps": 10}),),
                  defenses=(PluginSpec("cavp", {"epochs": 3}),), eps={"L2": [0.5]}, n=128, checks=False)
    (run,) = Runner(suite, progress=False).run().runs
    (record,) = run["attacks"]
    variants = record["details"]["gradient_variants"]
    assert set(variants) == {"default", "exact clip"}
    assert record["robust_accuracy"] <= min(v[0] for v in variants.values()) + 1e-12  # per-sample worst of the two
    assert record["adaptive"] is True


def _default_suite(n: int) -> Suite:
    return replace(SUITES.get("digits").factory(), n=n, sections=())


def test_default_suite_worst_case_is_not_above_any_attack_it_ran():
    report = Runner(_default_suite(32), progress=False).run()
    assert len(report.runs) == 7
    for run in report.runs:
        rows = {(w["threat_model"], w["eps"]): w for w in run["worst_case"]}
        worst = rows[("Linf", 0.1)]
        correct = _flags(worst["correct"])
        ran = [a for a in run["attacks"] + run["check_attacks"] if (a["threat_model"], a["eps"]) == ("Linf", 0.1)]
        assert any(a["name"].startswith("pgd-50") for a in run["check_attacks"])  # the checks' own attacks count
        for attack in ran:
            flags = _flags(attack["correct"])
            assert not bool((correct[: len(flags)] & ~flags).any()), (run["defense"], attack["name"])
        query = [a for a in run["attacks"] if a.get("kind") == "query"]
        assert query and query[0]["n"] == 32  # the gradient-free probe runs in every default evaluation


class UselessGradient(torch.autograd.Function):
    """Forward: the network's logits. Backward: a fixed random direction, finite and non-zero."""

    @staticmethod
    def forward(ctx, x, logits):
        ctx.save_for_backward(x)
        return logits.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        direction = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(7)).expand_as(x)
        return direction * grad.abs().sum(1).view(-1, 1, 1, 1) + 0.0, None


class ObfuscatedNet(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.inner(x)
        return UselessGradient.apply(x, logits)


def test_useless_gradients_are_never_reported_robust_and_reliable(cnn):
    suite = _default_suite(96)
    bare = Runner(replace(suite, defenses=(PluginSpec("none"),)), progress=False).run().runs[0]
    obfuscated = Runner(replace(suite, models=(ObfuscatedNet(cnn.model),), defenses=(PluginSpec("none"),)), progress=False).run().runs[0]
    grads = {c["name"]: c for c in obfuscated["checks"]}
    assert grads["input_gradients_informative"]["passed"]  # finite, non-zero: no gradient check fires
    linf = {w["eps"]: w["robust_accuracy"] for w in obfuscated["worst_case"] if w["threat_model"] == "Linf"}
    bare_linf = {w["eps"]: w["robust_accuracy"] for w in bare["worst_case"] if w["threat_model"] == "Linf"}
    broken = linf[0.1] <= bare_linf[0.1] + 0.1
    assert broken or not obfuscated["reliable"]
    assert not obfuscated["reliable"]  # this one is caught by the Square probe
    assert any("query_not_stronger_than_white_box" in r for r in obfuscated["unreliable_reasons"])
