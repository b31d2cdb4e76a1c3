"""Classifier unlearning: scenarios, SalUn's mask, metrics, caching and the report section."""

from __future__ import annotations

import copy

import pytest
import torch

from robustbench_peft.cache import state_dict_sha256
from robustbench_peft.errors import UserError
from robustbench_peft.registry import UNLEARNERS
from robustbench_peft.suite import Suite
from robustbench_peft.unlearner import ForgetData, trainable_copy
from unlearning.baselines import RandomLabel, Retrain, reinitialize
from unlearning.metrics import GAP_METRICS, avg_gap, evaluate, mia_efficacy
from unlearning.salun import SalUn, forget_gradients, saliency_mask
from unlearning.scenarios import class_wise, make_scenario, random_subset
from unlearning.section import PRESETS, section_config


def _weights(target):
    return {k: v.clone() for k, v in target.model.state_dict().items()}


# -- scenarios ------------------------------------------------------------------


@pytest.mark.parametrize("build", [lambda t: class_wise(t, forget_class=3), lambda t: random_subset(t, fraction=0.1, seed=5)])
def test_scenario_splits_are_disjoint_and_cover_the_training_split(digits, build):
    s = build(digits)
    n = len(digits.y_train)
    together = torch.cat([s.forget_idx, s.retain_idx])
    assert len(set(s.forget_idx.tolist()) & set(s.retain_idx.tolist())) == 0
    assert sorted(together.tolist()) == list(range(n))
    assert len(s.forget_idx) > 0 and len(s.retain_idx) > 0


def test_class_wise_forgets_exactly_one_class(digits):
    s = class_wise(digits, forget_class=7)
    assert (digits.y_train[s.forget_idx] == 7).all()
    assert (digits.y_train[s.retain_idx] != 7).all()
    kept = s.kept_test_mask(digits)
    assert (digits.y_test[~kept] == 7).all() and (digits.y_test[kept] != 7).all()


def test_random_scenario_is_seeded(digits):
    a, b, c = random_subset(digits, 0.1, seed=1), random_subset(digits, 0.1, seed=1), random_subset(digits, 0.1, seed=2)
    assert torch.equal(a.forget_idx, b.forget_idx)
    assert not torch.equal(a.forget_idx, c.forget_idx)
    assert a.indices_sha256() == b.indices_sha256() != c.indices_sha256()
    assert len(a.forget_idx) == round(0.1 * len(digits.y_train))


@pytest.mark.parametrize("kind,options", [("class", {"forget_class": 10}), ("random", {"fraction": 0.0}), ("random", {"fraction": 1.0}), ("nope", {})])
def test_bad_scenarios_are_user_errors(digits, kind, options):
    with pytest.raises(UserError):
        make_scenario(kind, digits, **options)


# -- SalUn ------------------------------------------------------------------------


def test_saliency_mask_keeps_the_largest_gradients(cnn, digits):
    data = ForgetData.of(digits, class_wise(digits, 0))
    grads = forget_gradients(trainable_copy(cnn), data)
    masks = saliency_mask(grads, 0.3)
    flat_g = torch.cat([grads[n].abs().flatten() for n in grads])
    flat_m = torch.cat([masks[n].flatten() for n in grads])
    assert int(flat_m.sum()) == round(0.3 * flat_g.numel())
    assert flat_g[flat_m].min() >= flat_g[~flat_m].max()


def test_salun_leaves_masked_out_weights_bit_identical(cnn, digits):
    scenario = class_wise(digits, 0)
    before = _weights(cnn)
    salun = SalUn(epochs=1, fraction=0.5, weight_decay=5e-4, momentum=0.9)
    result = salun.unlearn(cnn, digits, scenario, use_cache=False)
    masks = saliency_mask(forget_gradients(trainable_copy(cnn), ForgetData.of(digits, scenario)), 0.5)
    after = result.model.model.state_dict()
    moved_in = 0
    for name, mask in masks.items():
        assert torch.equal(after[name][~mask], before[name][~mask]), name
        moved_in += int((after[name][mask] != before[name][mask]).sum())
    assert moved_in > 0  # the masked-in weights did train
    assert all(torch.equal(v, before[k]) for k, v in cnn.model.state_dict().items())  # original untouched
    # Without the mask, momentum and weight decay move the same weights: the restore is what keeps them.
    unmasked = RandomLabel(epochs=1, weight_decay=5e-4, momentum=0.9).unlearn(cnn, digits, scenario, use_cache=False)
    other = unmasked.model.model.state_dict()
    assert any(not torch.equal(other[n][~m], before[n][~m]) for n, m in masks.items())


def test_unlearning_is_deterministic_and_cached(cnn, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    scenario = random_subset(digits, 0.1, seed=0)
    first = SalUn(epochs=1).unlearn(cnn, digits, scenario)
    again = SalUn(epochs=1).unlearn(cnn, digits, scenario, use_cache=False)
    cached = SalUn(epochs=1).unlearn(cnn, digits, scenario)
    other = SalUn(epochs=1, fraction=0.2).unlearn(cnn, digits, scenario)
    assert not first.cached and cached.cached and not other.cached
    assert first.sha256 == again.sha256 == cached.sha256 != other.sha256
    assert cached.seconds == first.seconds and cached.details == first.details
    assert first.sha256 != cnn.weights_sha256()


def test_salun_defaults_are_the_papers_classifier_setting():
    """SGD (momentum 0.9, weight decay 5e-4), 10 epochs, lr 0.013, batch 256, mask 50%."""
    c = SalUn().config
    assert (c.optimizer, c.momentum, c.weight_decay) == ("sgd", 0.9, 5e-4)
    assert (c.epochs, c.lr, c.batch_size, c.fraction) == (10, 0.013, 256, 0.5)


def test_random_label_epochs_pass_the_forget_set_then_the_retain_set(digits):
    """The reference RL loop: per epoch, the forget samples (relabelled to another class) first, then the retain samples."""
    data = ForgetData.of(digits, random_subset(digits, 0.1, seed=0))
    batches = list(RandomLabel(batch_size=100).relabelled_batches(data, torch.Generator().manual_seed(0))(0))
    n_forget_batches = -(-len(data.y_forget) // 100)
    forget_part, retain_part = batches[:n_forget_batches], batches[n_forget_batches:]
    forget_rows = {tuple(x.flatten().tolist()) for x in data.x_forget}
    assert all(tuple(x.flatten().tolist()) in forget_rows for xb, _ in forget_part for x in xb)
    assert sum(len(yb) for _, yb in forget_part) == len(data.y_forget)
    assert sum(len(yb) for _, yb in retain_part) == len(data.y_retain)
    # forget labels are never the true class
    x_f = torch.cat([xb for xb, _ in forget_part])
    y_f = torch.cat([yb for _, yb in forget_part])
    index = {tuple(x.flatten().tolist()): int(y) for x, y in zip(data.x_forget, data.y_forget)}
    assert all(index[tuple(x.flatten().tolist())] != int(y) for x, y in zip(x_f, y_f))


def test_unlearners_register_and_validate_options():
    assert {"retrain", "ft", "ga", "rl", "l1sparse", "salun"} <= {e.name for e in UNLEARNERS}
    with pytest.raises(UserError):
        UNLEARNERS.create("salun", fraction=1.5)
    with pytest.raises(UserError):
        UNLEARNERS.create("ft", optimizer="rmsprop")


# -- retrain and metrics --------------------------------------------------------------


def test_reinitialize_reproduces_the_original_starting_point(cnn):
    from tasks.digits import DigitsCNN

    torch.manual_seed(0)
    fresh = DigitsCNN(10)
    model = reinitialize(copy.deepcopy(cnn.model), seed=0)
    assert state_dict_sha256(model.state_dict()) == state_dict_sha256(fresh.state_dict())


def test_retrain_uses_the_reference_recipe():
    from tasks.digits import RECIPES

    config, recipe = Retrain().config(), RECIPES["cnn"]
    assert (config["epochs"], config["batch_size"], config["lr"], config["weight_decay"], config["seed"]) == (
        recipe.epochs,
        recipe.batch_size,
        recipe.lr,
        recipe.weight_decay,
        recipe.seed,
    )


def test_untouched_model_forget_set_looks_like_members(cnn, digits):
    scenario = random_subset(digits, 0.1, seed=0)
    x_f, y_f = digits.x_train[scenario.forget_idx], digits.y_train[scenario.forget_idx]
    x_r, y_r = digits.x_train[scenario.retain_idx], digits.y_train[scenario.retain_idx]
    efficacy = mia_efficacy(cnn, (x_r, y_r), (digits.x_test, digits.y_test), (x_f, y_f))
    assert efficacy < 0.1
    # and the attack is not blind: held-out test samples are called non-members more often
    assert mia_efficacy(cnn, (x_r, y_r), (digits.x_test, digits.y_test), (digits.x_test, digits.y_test)) > efficacy


def test_mia_members_are_the_first_retain_samples_as_the_reference_takes_them(cnn, digits):
    """The SVC's members are retain[:len(test)] in training order: reordering the members beyond that
    prefix changes nothing, reordering within the full set does."""
    scenario = random_subset(digits, 0.1, seed=0)
    x_f, y_f = digits.x_train[scenario.forget_idx], digits.y_train[scenario.forget_idx]
    x_r, y_r = digits.x_train[scenario.retain_idx], digits.y_train[scenario.retain_idx]
    n_test = len(digits.y_test)
    tail = torch.arange(n_test, len(y_r)).flip(0)
    shuffled_tail = torch.cat([torch.arange(n_test), tail])
    test_set = (digits.x_test, digits.y_test)
    probe = (digits.x_test[:200], digits.y_test[:200])
    base = mia_efficacy(cnn, (x_r, y_r), test_set, probe)
    assert mia_efficacy(cnn, (x_r[shuffled_tail], y_r[shuffled_tail]), test_set, probe) == base
    assert mia_efficacy(cnn, (x_r[:n_test], y_r[:n_test]), test_set, probe) == base


def test_retrain_forgets_a_class_completely(cnn, digits):
    scenario = class_wise(digits, 0)
    result = Retrain().unlearn(cnn, digits, scenario)  # cached after the first run
    metrics = evaluate(result.model, digits, scenario, seed=0, pgd_steps=5)
    original = evaluate(cnn, digits, scenario, seed=0, pgd_steps=0)
    assert metrics["UA"] == 1.0 and metrics["TA_forgotten"] == 0.0
    assert metrics["MIA"] > 0.9 > original["MIA"]
    assert metrics["RA"] > 0.97 and metrics["TA"] > 0.9
    assert 0.0 <= metrics["robust_accuracy"] <= metrics["TA"]
    assert avg_gap(metrics, metrics) == 0.0
    expected = sum(abs(original[k] - metrics[k]) for k in GAP_METRICS) / len(GAP_METRICS)
    assert avg_gap(original, metrics) == pytest.approx(expected)


# -- section configuration --------------------------------------------------------------


def test_section_config_presets_and_errors():
    base = Suite(name="t", task="digits", models=(), attacks=(), seed=3)
    quick = section_config(base)
    assert quick["methods"] == PRESETS["quick"]["methods"] and quick["seed"] == 3 and quick["model"] == "digits:cnn"
    full = section_config(base.with_overrides(extra={"unlearning": {"preset": "full", "methods": "ft+salun"}}))
    assert full["methods"] == ["ft", "salun"] and full["scenarios"] == ["class", "random"]
    with pytest.raises(UserError):
        section_config(base.with_overrides(extra={"unlearning": {"bogus": 1}}))
    with pytest.raises(UserError):
        section_config(base.with_overrides(extra={"unlearning": {"preset": "huge"}}))
