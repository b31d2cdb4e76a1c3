"""Forgetting, not hiding: the probes, the per-example MIA and the checks on a small digits world.

The world is ``digits:cnn`` with retrain's recipe cut to a few epochs (retrain, its
seeds and the shadows alike) and three shadows a side, as the section test uses it,
so both share one cache; everything is cached after the first run.
"""

from __future__ import annotations

import pytest
import torch

from robustbench_peft.errors import UserError
from robustbench_peft.unlearner import ForgetData
from unlearning.baselines import Retrain
from unlearning.checks import HIDING, MIA_POWER, PROBE_POWER, distance, mia_separates_original, probes_tell_original
from unlearning.lira import PerExampleMia, auc, auc_null_std, logit_margin, nothing_forgotten, shadow_models, tpr_at_fpr
from unlearning.metrics import evaluate
from unlearning.probe_config import ProbeConfig
from unlearning.probes import hiding_verdicts, model_probes, probe_scenario
from unlearning.relearn import RelearnData, relearn
from unlearning.representation import final_linear, linear_probe, penultimate_features
from unlearning.scenarios import class_wise, random_subset
from unlearning.suppress import LogitSuppression

EPOCHS = 10
CONFIG = ProbeConfig(shadows=3, relearn_steps=40, probe_draws=10)


@pytest.fixture(scope="module")
def world(one_thread, cnn, digits):
    """Original, retrain, an independent retrain seed, the suppression unlearner and the probes of them."""
    recipe = Retrain(epochs=EPOCHS)
    scenario = class_wise(digits, 0)
    models = {
        "original": cnn,
        "retrain": recipe.unlearn(cnn, digits, scenario).model,
        "suppress": LogitSuppression().unlearn(cnn, digits, scenario).model,
    }
    probes = probe_scenario(scenario, digits, models, "original", ("retrain", recipe), CONFIG, 0, lambda message: None)
    independent = Retrain(epochs=EPOCHS, seed=CONFIG.shadows + 1).unlearn(cnn, digits, scenario).model
    shadows = shadow_models(recipe, cnn, digits, scenario, CONFIG.shadows)
    return {"scenario": scenario, "models": models, "probes": probes, "independent": independent, "shadows": shadows}


def _forget(digits, scenario):
    return digits.x_train[scenario.forget_idx], digits.y_train[scenario.forget_idx]


def _relearn_data(digits, scenario, config=CONFIG):
    """The relearning probe's data as the section splits it."""
    kept = scenario.kept_test_mask(digits)
    retain = digits.x_train[scenario.retain_idx], digits.y_train[scenario.retain_idx]
    return RelearnData.split(_forget(digits, scenario), retain, (digits.x_test[kept], digits.y_test[kept]), config.relearn_forget, seed=0)


# -- the suppression unlearner: outputs like retrain's, weights like the original's ------------------


def test_suppression_unlearner_matches_retrain_on_every_output_metric(world, digits):
    scenario, models = world["scenario"], world["models"]
    suppressed = evaluate(models["suppress"], digits, scenario, pgd_steps=0)
    retrained = evaluate(models["retrain"], digits, scenario, pgd_steps=0)
    assert suppressed["UA"] == retrained["UA"] == 1.0 and suppressed["MIA"] == retrained["MIA"] == 1.0
    assert abs(suppressed["RA"] - retrained["RA"]) < 0.02 and abs(suppressed["TA"] - retrained["TA"]) < 0.02
    # ... while only one bias differs from the original
    before, after = models["original"].state_dict(), models["suppress"].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.fc2.bias"} and int((before["model.fc2.bias"] != after["model.fc2.bias"]).sum()) == 1


def test_suppression_needs_one_forgotten_class(cnn, digits):
    with pytest.raises(UserError, match="class-wise"):
        LogitSuppression().unlearn(cnn, digits, random_subset(digits, 0.1, seed=0), use_cache=False)


# -- the checks: each fails on the suppression unlearner and passes on retrain -------------------------


def test_hiding_check_fails_on_the_suppression_unlearner_and_passes_on_retrain(world):
    hiding = world["probes"].hiding
    assert hiding["suppress"].name == HIDING and not hiding["suppress"].passed
    assert "still holds the forget set" in hiding["suppress"].detail
    assert hiding["retrain"].passed, hiding["retrain"].detail
    # both probes give it away on their own: relearning speed and the features
    distances = world["probes"].rows["suppress"]["distances"]
    assert distances["relearn_steps"]["far"] and distances["probe_confidence"]["far"]


def test_suppression_relearns_much_faster_than_retrain(world):
    rows = world["probes"].rows
    assert rows["original"]["relearn_steps"] == 0
    assert rows["retrain"]["relearn_steps"] is not None
    assert 2 * rows["suppress"]["relearn_steps"] <= rows["retrain"]["relearn_steps"]
    assert rows["suppress"]["relearn_area"] > rows["retrain"]["relearn_area"]


def test_power_checks_pass_with_the_original_and_fail_when_it_is_another_retrain(world, digits):
    """Both power checks pass on the real original; with another retrain seed standing in for the
    original (a model that never saw the forget set) each fails: no power."""
    probes, scenario = world["probes"], world["scenario"]
    assert [c.name for c in probes.power] == [MIA_POWER, PROBE_POWER]
    assert all(c.passed for c in probes.power), [c.detail for c in probes.power]
    mia = PerExampleMia(world["shadows"], _forget(digits, scenario), world["models"]["retrain"], CONFIG.fpr)
    assert not mia_separates_original(mia.score(world["independent"]).auc, mia.null_aucs(), mia.null_std(), CONFIG.alpha).passed
    data = _relearn_data(digits, scenario)
    seeds = [model_probes(m, digits, scenario, data, CONFIG, 0).fields() for m in [world["models"]["retrain"], *world["shadows"].without_forget]]
    stand_in = {"stand-in": model_probes(world["independent"], digits, scenario, data, CONFIG, 0).fields()}
    verdict = hiding_verdicts(stand_in, seeds, len(scenario.forget_idx), CONFIG)["stand-in"]
    assert verdict.passed and not probes_tell_original(verdict).passed


# -- the per-example MIA ------------------------------------------------------------------------------


def test_per_example_mia_separates_the_original_and_not_retrain_from_itself(world, digits):
    mia = PerExampleMia(world["shadows"], _forget(digits, world["scenario"]), world["models"]["retrain"], CONFIG.fpr)
    assert mia.score(world["models"]["original"]).auc > 0.9
    assert abs(mia.score(world["independent"]).auc - 0.5) < 0.1
    assert mia.score(world["models"]["retrain"]).auc == 0.5
    assert all(abs(a - 0.5) < 0.15 for a in mia.null_aucs())


def test_per_example_mia_sees_what_the_population_mia_misses(world):
    """The SVC calls every forget sample of the suppressed model a non-member, as retrain's; the
    per-example MIA tells the two apart (U-LiRA's point)."""
    rows = world["probes"].rows
    assert rows["suppress"]["MIA_AUC"] > 0.7 and rows["suppress"]["MIA_TPR"] > 5 * CONFIG.fpr


def test_auc_and_tpr_at_fpr():
    neg = torch.arange(100, dtype=torch.float64)
    assert auc(neg + 1000, neg) == 1.0 and auc(neg - 1000, neg) == 0.0 and auc(neg, neg) == 0.5
    assert tpr_at_fpr(neg + 1000, neg, 0.05) == 1.0
    assert tpr_at_fpr(neg, neg, 0.05) == pytest.approx(0.05, abs=0.01)
    assert auc_null_std(100, 100) == pytest.approx((201 / (12 * 100 * 100)) ** 0.5)


def test_logit_margin_is_the_log_odds_of_the_true_class(cnn, small_batch):
    x, y = small_batch
    p = cnn.logits(x).double().softmax(1).gather(1, y.view(-1, 1)).flatten()
    assert torch.allclose(logit_margin(cnn, x, y), (p / (1 - p)).log(), atol=1e-6)


# -- probe pieces ----------------------------------------------------------------------------------------


def test_distance_is_one_sided_and_floored_at_the_resolution():
    reference = [14.0, 14.0, 14.0, 14.0, 14.0]  # seeds that agree exactly: the floor keeps 13 steps near
    assert not distance(13.0, reference, 1.0, 0.01, higher_holds=False).far
    assert distance(5.0, reference, 1.0, 0.01, higher_holds=False).far
    assert not distance(40.0, reference, 1.0, 0.01, higher_holds=False).far  # slower than retrain: not hiding
    assert distance(0.9, [0.6, 0.62, 0.64, 0.66, 0.68], 0.01, 0.01, higher_holds=True).far


def test_relearning_probe_counts_steps_only_while_the_kept_classes_stay(cnn, digits):
    """Mixed with retain data, the original is back at step 0 and keeps its kept classes; the forget
    samples it trains on are held out of what it measures."""
    scenario = class_wise(digits, 0)
    data = _relearn_data(digits, scenario)
    assert len(data.y_eval) == len(scenario.forget_idx) - CONFIG.relearn_forget
    result = relearn(cnn, data, ProbeConfig(relearn_steps=3), seed=0, with_forget=True)
    assert result.steps_to_level == 0 and len(result.curve) == 4 and result.final == 1.0
    with pytest.raises(UserError, match="forget set has"):
        RelearnData.split(_forget(digits, scenario), (data.x_retain, data.y_retain), (data.x_kept, data.y_kept), len(scenario.forget_idx), seed=0)


def test_representation_probe_reads_the_penultimate_features(cnn, digits):
    assert final_linear(cnn) is cnn.model.fc2
    features = penultimate_features(cnn, digits.x_test[:8])
    assert features.shape == (8, cnn.model.fc2.in_features)
    scenario = class_wise(digits, 0)
    result = linear_probe(cnn, (digits.x_test, digits.y_test), _forget(digits, scenario), 10, shots=2, draws=3, seed=0)
    assert len(result.accuracies) == len(result.confidences) == 3
    assert result.accuracy > 0.9 and 0 < result.confidence <= 1


def test_probe_config_validates():
    with pytest.raises(UserError, match="shadows"):
        ProbeConfig(shadows=2)
    with pytest.raises(UserError, match="fpr"):
        ProbeConfig(fpr=1.0)
    assert ProbeConfig().relearn_recipe().keys() >= {"relearn_steps", "probe_shots"}
    assert "shadows" not in ProbeConfig().relearn_recipe()


def test_forget_data_of_the_nothing_forgotten_scenario_is_the_training_split(digits):
    data = ForgetData.of(digits, nothing_forgotten(digits, 0))
    assert len(data.y_forget) == 0 and torch.equal(data.y_retain, digits.y_train)


# -- section settings ----------------------------------------------------------------------------------


def test_section_probe_settings_are_validated():
    from robustbench_peft.suite import Suite
    from unlearning.section import section_config

    base = Suite(name="t", task="digits", models=(), attacks=())
    assert section_config(base)["probes"] == ProbeConfig().to_json()
    custom = section_config(base.with_overrides(extra={"unlearning": {"probes": {"shadows": "5", "fpr": "0.01"}}}))["probes"]
    assert (custom["shadows"], custom["fpr"]) == (5, 0.01)
    with pytest.raises(UserError, match="unknown option 'shadowz'"):
        section_config(base.with_overrides(extra={"unlearning": {"probes": {"shadowz": 3}}}))
    with pytest.raises(UserError, match="group of settings"):
        section_config(base.with_overrides(extra={"unlearning": {"probes": 4}}))


def test_probes_say_why_they_did_not_run(cnn, digits):
    """Without retrain among the methods, or on a forget set too small to hold out samples from, the
    section reports the paper's metrics and says why the probes did not run; repeated labels are refused."""
    from robustbench_peft.suite import Suite
    from robustbench_peft.runner import Runner
    from unlearning.probes import probe_obstacle
    from unlearning.section import run_unlearning_section

    tiny = class_wise(digits, 0)
    tiny = type(tiny)(tiny.kind, tiny.forget_idx[:3], tiny.retain_idx, 0, forgotten_class=0)
    assert "forget set has 3 samples" in probe_obstacle(digits, tiny, ProbeConfig())
    assert probe_obstacle(digits, class_wise(digits, 0), ProbeConfig()) is None
    assert "linear probe draws" in probe_obstacle(digits, class_wise(digits, 0), ProbeConfig(probe_shots=10_000))

    suite = Suite(name="t", task="digits", models=(), attacks=(), sections=("unlearning",),
                  extra={"unlearning": {"preset": "quick", "pgd_steps": 0, "methods": ["suppress"]}})
    data = run_unlearning_section(suite, Runner(suite, progress=False))
    [scenario] = data["scenarios"]
    assert not scenario["probed"] and "add retrain" in scenario["probes_skipped"]
    assert any("probes skipped" in line for line in data["summary"])
    twice = suite.with_overrides(extra={"unlearning": {"preset": "quick", "methods": ["retrain", "ft", "ft:epochs=1"]}})
    with pytest.raises(UserError, match="labels repeat"):
        run_unlearning_section(twice, Runner(twice, progress=False))
