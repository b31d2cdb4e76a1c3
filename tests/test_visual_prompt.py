"""Visual-prompt defenses: frozen base, masked prompts, the diagonal rule, files and cache."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from defenses.prompt_training import PromptRecipe, batch_loss, parse_terms, pgd_on_prompted, term_l1, term_l2, term_l3, train_prompts
from defenses.prompts import ClasswisePromptedClassifier, PromptedClassifier, apply_prompt, border_mask, build_target, load_prompts, save_prompts
from defenses.visual_prompt import ClasswiseAdversarialPrompt, UniversalAdversarialPrompt, VisualPrompt
from robustbench_peft.attack import Attack
from robustbench_peft.cache import cache_dir
from robustbench_peft.errors import UserError
from robustbench_peft.options import build
from robustbench_peft.registry import DEFENSES
from robustbench_peft.task import ClassificationTask

#: Small, cheap training settings: the tests check mechanics, not accuracy.
SMALL = {"epochs": 1, "batch_size": 64, "steps": 2}


@pytest.fixture(scope="module")
def small_task(digits) -> ClassificationTask:
    """The digits task with its first 192 training images (a cache key of its own)."""
    return replace(digits, x_train=digits.x_train[:192], y_train=digits.y_train[:192])


@pytest.fixture(scope="module")
def fitted_cavp(cnn, small_task, tmp_path_factory):
    """A C-AVP fit in a private cache; returns (fitted, base sha before, seconds, cache dir)."""
    cache = tmp_path_factory.mktemp("prompt-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTBENCH_PEFT_CACHE", str(cache))
        before = cnn.weights_sha256()
        start = time.perf_counter()
        fitted = ClasswiseAdversarialPrompt(**SMALL).fit(cnn, small_task)
        seconds = time.perf_counter() - start
    return fitted, before, seconds, cache


def random_classwise(cnn, scale: float = 0.6, seed: int = 0) -> ClasswisePromptedClassifier:
    """Hand-made, clearly different class prompts (independent of training)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = (torch.rand(10, 1, 8, 8, generator=gen) * 2 - 1) * scale
    return build_target(cnn, "classwise", prompts, border=2)


def diagonal_rule(cnn, prompts: torch.Tensor, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The C-AVP prediction written out directly: argmax_i softmax(f(clip(x + delta_i M)))_i."""
    scores = []
    with torch.no_grad():
        for i in range(len(prompts)):
            probs = F.softmax(cnn(torch.clamp(x + prompts[i] * mask, 0, 1)), dim=1)
            scores.append(probs[:, i])
    return torch.stack(scores, 1).argmax(1)


def oracle_rule(cnn, prompts: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The label-picked prompt (an oracle that must never be reported): argmax_k f(clip(x + delta_y M))_k."""
    with torch.no_grad():
        return cnn(torch.clamp(x + prompts[y] * mask, 0, 1)).argmax(1)


def test_registered_with_descriptions():
    for name in ("vp", "uavp", "cavp"):
        assert name in DEFENSES
        assert DEFENSES.get(name).description


def test_base_weights_bit_identical_after_fitting(fitted_cavp, cnn):
    fitted, before, _, _ = fitted_cavp
    assert cnn.weights_sha256() == before
    assert fitted.base is cnn
    assert all(not p.requires_grad for p in cnn.parameters())
    assert fitted.target.base.weights_sha256() == before
    assert not any(p.requires_grad for p in fitted.target.parameters())


def test_prompt_stays_inside_its_mask_and_images_in_box(fitted_cavp, digits):
    target = fitted_cavp[0].target
    mask = border_mask(8, 8, 2)
    assert int(mask.sum()) == 64 - 16
    outside = target.prompts[:, :, ~mask]
    assert torch.equal(outside, torch.zeros_like(outside))
    assert target.prompts[:, :, mask].abs().sum() > 0, "training should move the prompts"
    prompted = target.prompted_inputs(digits.x_test[:32])
    assert prompted.min() >= 0 and prompted.max() <= 1
    # inside the border the prompt is added, outside the input is untouched
    assert torch.equal(prompted[:, :, :, 2:6, 2:6], digits.x_test[:32, None, :, 2:6, 2:6].expand_as(prompted[:, :, :, 2:6, 2:6]))


def test_costs_count_what_is_trainable_and_stored(fitted_cavp, tmp_path):
    fitted = fitted_cavp[0]
    assert fitted.cost.trainable_parameters == 10 * 1 * 48
    assert fitted.cost.forward_passes == 10
    path = save_prompts(tmp_path / "p.safetensors", fitted)
    assert fitted.cost.stored_bytes == path.stat().st_size
    assert fitted.cost.fit_seconds > 0


def test_predictions_follow_the_diagonal_rule_not_the_oracle(cnn, digits):
    target = random_classwise(cnn)
    x, y = digits.x_test[:200], digits.y_test[:200]
    mask = border_mask(8, 8, 2).float()
    expected = diagonal_rule(cnn, target.prompts, mask, x)
    assert torch.equal(target.predict(x), expected)
    oracle = oracle_rule(cnn, target.prompts, mask, x, y)
    assert (oracle != expected).any(), "the oracle and the diagonal rule should disagree on some input"
    # the accuracy an evaluation reports is the diagonal one
    assert float((target.predict(x) == y).float().mean()) == float((expected == y).float().mean())
    # outputs are log p^(i)_i, computed in one batched pass
    with torch.no_grad():
        out = target(x[:5])
        manual = torch.stack([F.log_softmax(cnn(torch.clamp(x[:5] + target.prompts[i] * mask, 0, 1)), 1)[:, i] for i in range(10)], 1)
    assert torch.allclose(out, manual, atol=1e-5)


def test_fitted_cavp_predicts_by_diagonal(fitted_cavp, cnn, digits):
    target = fitted_cavp[0].target
    x = digits.x_test[:100]
    assert torch.equal(target.predict(x), diagonal_rule(cnn, target.prompts, target.mask, x))


def test_shared_prompt_target_outputs_base_logits_on_prompted_input(cnn, digits):
    prompt = torch.full((1, 1, 8, 8), 0.3)
    target = build_target(cnn, "shared", prompt, border=1)
    x = digits.x_test[:16]
    with torch.no_grad():
        expected = cnn(torch.clamp(x + prompt[0] * border_mask(8, 8, 1).float(), 0, 1))
        assert torch.equal(target(x), expected)
    assert target.forward_passes == 1 and isinstance(target, PromptedClassifier)
    with pytest.raises(UserError):
        build_target(cnn, "shared", torch.zeros(2, 1, 8, 8), border=1)
    with pytest.raises(UserError):
        build_target(cnn, "classwise", torch.zeros(3, 1, 8, 8), border=1)


def test_straight_through_clip_keeps_values_and_unmasks_gradients(cnn, digits):
    prompts = random_classwise(cnn).prompts
    exact = build_target(cnn, "classwise", prompts, border=2, straight_through=False)
    bpda = build_target(cnn, "classwise", prompts, border=2, straight_through=True)
    x = digits.x_test[:32]
    assert torch.equal(exact.logits(x), bpda.logits(x))
    grads = []
    for target in (exact, bpda):
        xa = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(target(xa).sum(), xa)[0])
    # border pixels saturated by every prompt have no exact gradient but a straight-through one
    zero_exact = (grads[0] == 0).sum()
    zero_bpda = (grads[1] == 0).sum()
    assert zero_bpda < zero_exact


def test_adaptive_attack_runs_through_the_pipeline(cnn, digits):
    from attacks.pgd import PGD

    target = random_classwise(cnn, scale=0.2)
    x, y = digits.x_test[:48], digits.y_test[:48]
    attack: Attack = PGD(steps=5, progress=False)
    adaptive = attack(target, x, y, [0.1])
    transfer = attack(target, x, y, [0.1], craft_target=cnn)
    assert adaptive.adaptive and not transfer.adaptive
    for result in (adaptive, transfer):
        assert torch.equal(result.correct[0], target.predict(result.x_adv[0]) == y)
    clean = float((target.predict(x) == y).float().mean())
    assert adaptive.robust_accuracy[0] < clean


def test_save_load_round_trip(fitted_cavp, cnn, surrogate, digits, tmp_path):
    fitted = fitted_cavp[0]
    path = save_prompts(tmp_path / "cavp.safetensors", fitted)
    loaded = load_prompts(path, cnn)
    x = digits.x_test[:100]
    assert isinstance(loaded, ClasswisePromptedClassifier)
    assert torch.equal(loaded.prompts, fitted.target.prompts)
    assert torch.equal(loaded.logits(x), fitted.target.logits(x))
    assert loaded.prompt_sha256() == fitted.sha256
    with pytest.raises(UserError, match="base model"):
        load_prompts(path, surrogate)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        load_prompts(path, cnn)
    with pytest.raises(UserError, match="does not exist"):
        load_prompts(tmp_path / "missing.safetensors", cnn)


def test_cache_reuse_is_fast_and_identical(fitted_cavp, cnn, small_task, monkeypatch):
    fitted, _, first_seconds, cache = fitted_cavp
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(cache))
    entries = sorted((cache / "visual-prompts").glob("*.safetensors"))
    assert len(entries) == 1
    start = time.perf_counter()
    again = ClasswiseAdversarialPrompt(**SMALL).fit(cnn, small_task)
    seconds = time.perf_counter() - start
    assert seconds < first_seconds
    assert again.sha256 == fitted.sha256
    assert torch.equal(again.target.prompts, fitted.target.prompts)
    assert again.cost == fitted.cost
    assert sorted((cache / "visual-prompts").glob("*.safetensors")) == entries
    # any hyper-parameter change is a different entry
    other = ClasswiseAdversarialPrompt(**SMALL, terms=["l1"]).fit(cnn, small_task)
    assert other.sha256 != fitted.sha256
    assert len(list((cache / "visual-prompts").glob("*.safetensors"))) == 2


def test_training_is_seeded(cnn, small_task):
    recipe = PromptRecipe(classwise=False, adversarial=True, epochs=1, batch_size=96, steps=2, eps=0.1, seed=3)
    first = train_prompts(cnn, small_task.x_train, small_task.y_train, 10, recipe)
    second = train_prompts(cnn, small_task.x_train, small_task.y_train, 10, recipe)
    third = train_prompts(cnn, small_task.x_train, small_task.y_train, 10, PromptRecipe(**{**recipe.__dict__, "seed": 4}))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def _hinge_tables(probs: torch.Tensor, y: torch.Tensor, tau: float) -> dict[str, list[list[float | None]]]:
    """Per term, a (B, C) table written with explicit loops: the hinge of sample b in class j's mean, or None."""
    n, k, _ = probs.shape
    tables: dict[str, list[list[float | None]]] = {"l1": [], "l2": [], "l3": []}
    for b in range(n):
        yb = int(y[b])
        own = float(probs[b, yb, yb])
        l1 = max(max(float(probs[b, c, c]) for c in range(k) if c != yb) - own, -tau)
        l3 = max(max(float(probs[b, c, yb]) for c in range(k) if c != yb) - own, -tau)
        tables["l1"].append([l1 if j == yb else None for j in range(k)])
        tables["l3"].append([l3 if j == yb else None for j in range(k)])
        tables["l2"].append([None if j == yb else max(float(probs[b, j, j]) - max(float(probs[b, j, c]) for c in range(k) if c != j), -tau) for j in range(k)])
    return tables


def _sum_of_class_means(table: list[list[float | None]]) -> float:
    """sum over classes j of the mean of the entries present in column j."""
    total = 0.0
    for j in range(len(table[0])):
        column = [row[j] for row in table if row[j] is not None]
        if column:
            total += sum(column) / len(column)
    return total


def test_inter_prompt_terms_match_their_definitions():
    gen = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(6, 4, 4, generator=gen) * 3, dim=2)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    tables = _hinge_tables(probs, y, 0.1)
    for name, fn in (("l1", term_l1), ("l2", term_l2), ("l3", term_l3)):
        values, members = fn(probs, y, 0.1)
        expected_members = torch.tensor([[v is not None for v in row] for row in tables[name]])
        assert torch.equal(members, expected_members)
        expected = torch.tensor([[0.0 if v is None else v for v in row] for row in tables[name]])
        assert torch.allclose(values * members, expected, atol=1e-6)


def test_cavp_loss_is_the_reference_sum_of_per_class_means(cnn, small_task):
    """C-AVP's batch loss equals the reference objective written by hand: for clean CE, adversarial CE and
    each of l1, l2, l3, a sum over classes of the mean over that class's samples (l2: the other classes')."""
    x, y = small_task.x_train[:40], small_task.y_train[:40]
    x, y = x[y < 6], y[y < 6]  # classes 6..9 absent: a missing class adds nothing
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randn(10, *cnn.input_shape, generator=gen) * 0.3
    mask = border_mask(8, 8, 2).view(1, 1, 8, 8).float()
    prompts = prompts * mask
    recipe = PromptRecipe(classwise=True, adversarial=True, eps=0.1, steps=2, terms=("l1", "l2", "l3"), beta=3.0, tau=0.1)
    loss = batch_loss(cnn, x, y, prompts, mask, recipe, torch.Generator().manual_seed(5))

    x_adv = pgd_on_prompted(cnn, x, y, prompts[y], mask, 0.1, 2, 0.025, torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = 0.0
        for inputs in (x, x_adv):
            for i in range(10):
                rows = [b for b in range(len(y)) if int(y[b]) == i]
                if rows:
                    ces = [float(F.cross_entropy(cnn(apply_prompt(inputs[b : b + 1], prompts[i], mask)), y[b : b + 1])) for b in rows]
                    expected += sum(ces) / len(ces)
        probs = torch.stack([torch.stack([F.softmax(cnn(apply_prompt(x[b : b + 1], prompts[j], mask)), 1)[0] for j in range(10)]) for b in range(len(y))])
        tables = _hinge_tables(probs, y, 0.1)
        expected += 3.0 * sum(_sum_of_class_means(tables[name]) for name in ("l1", "l2", "l3"))
    assert abs(float(loss) - expected) < 1e-4
    # one batch mean of the same terms would be about 1/C of it: the scale is the reference's, not that
    assert float(loss) > 3 * float(F.cross_entropy(cnn(apply_prompt(x, prompts[y], mask)), y))


def test_shared_prompt_loss_stays_a_batch_mean(cnn, small_task):
    """U-AVP (one prompt) keeps the reference's plain batch means of clean and adversarial CE."""
    x, y = small_task.x_train[:32], small_task.y_train[:32]
    prompts = torch.zeros(1, *cnn.input_shape)
    mask = border_mask(8, 8, 2).view(1, 1, 8, 8).float()
    recipe = PromptRecipe(classwise=False, adversarial=True, eps=0.1, steps=2)
    loss = batch_loss(cnn, x, y, prompts, mask, recipe, torch.Generator().manual_seed(2))
    x_adv = pgd_on_prompted(cnn, x, y, prompts[torch.zeros_like(y)], mask, 0.1, 2, 0.025, torch.Generator().manual_seed(2))
    expected = F.cross_entropy(cnn(x), y) + F.cross_entropy(cnn(x_adv), y)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_prompt_defaults_are_the_papers_training_length():
    """50 epochs, PGD-10 at step eps/4, SGD 0.1 momentum 0.9 (cosine), batch 256, beta 3, tau 0.1, all three terms."""
    config = ClasswiseAdversarialPrompt().config
    assert (config.epochs, config.steps, config.rel_step_size, config.lr, config.momentum, config.batch_size) == (50, 10, 0.25, 0.1, 0.9, 256)
    assert (config.beta, config.tau, config.terms) == (3.0, 0.1, ("l1", "l2", "l3"))


def test_options_from_the_command_line():
    defense = build(DEFENSES.get("cavp").factory, {"terms": "l1+l3", "epochs": "2", "bpda": "false"}, owner="defense cavp")
    assert defense.options["terms"] == ("l1", "l3") and defense.options["epochs"] == 2 and defense.options["bpda"] is False
    assert defense.label() == "cavp:epochs=2,terms=l1+l3,bpda=False"
    assert build(DEFENSES.get("cavp").factory, {"terms": "none"}, owner="x").options["terms"] == ()
    assert parse_terms(["l3", "l1", "l2"]) == ("l1", "l2", "l3")
    assert ClasswiseAdversarialPrompt().label() == "cavp"
    with pytest.raises(UserError, match="inter-prompt"):
        build(DEFENSES.get("cavp").factory, {"terms": "l4"}, owner="defense cavp")
    with pytest.raises(UserError, match="border"):
        VisualPrompt(border=0)
    with pytest.raises(UserError, match="unknown option"):
        build(DEFENSES.get("vp").factory, {"eps": "0.1"}, owner="defense vp")


def test_border_defaults_to_a_quarter_of_the_image_side(small_task):
    """The paper's border is 8 pixels of CIFAR's 32: a quarter of the shorter side, 2 on digits' 8x8."""
    from defenses.visual_prompt import resolve_border

    assert VisualPrompt().recipe(small_task).border == 2
    assert VisualPrompt(border=3).recipe(small_task).border == 3
    wide = replace(small_task, x_train=torch.zeros(4, 3, 224, 160), x_test=torch.zeros(4, 3, 224, 160))
    assert resolve_border(None, wide) == 40


def test_training_eps_defaults_to_the_task(cnn, small_task):
    defense = UniversalAdversarialPrompt(epochs=0)
    assert defense.recipe(small_task).eps == 0.1
    assert UniversalAdversarialPrompt(eps=0.05).recipe(small_task).eps == 0.05
    assert VisualPrompt().recipe(small_task).steps == 0


def test_fit_rejects_a_mismatched_task(cnn, digits):
    other = ClassificationTask("three", ["a", "b", "c"], digits.x_train[:9], digits.y_train[:9] % 3, digits.x_test[:9], digits.y_test[:9] % 3)
    with pytest.raises(UserError, match="classes"):
        VisualPrompt(epochs=0).fit(cnn, other)


@pytest.mark.slow
def test_eval_pipeline_reports_adaptive_and_nonadaptive_rows(tmp_path, monkeypatch):
    from robustbench_peft.api import evaluate

    shared = cache_dir() / "digits-models"  # the reference models stay shared; prompts go to a fresh cache
    (tmp_path / "cache").mkdir()
    if shared.exists():
        (tmp_path / "cache" / "digits-models").symlink_to(shared.resolve())
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path / "cache"))
    report = evaluate(
        "digits:cnn",
        attacks=["pgd:steps=5", "pgd:steps=5,mode=nonadaptive"],
        eps=[0.1],
        n=64,
        defenses=["cavp:epochs=1,steps=2"],
        checks=False,
    )
    (run,) = report.runs
    assert run["defense"]["name"] == "cavp" and run["defense"]["forward_passes"] == 10
    assert run["defense"]["trainable_parameters"] == 480
    assert [a["adaptive"] for a in run["attacks"]] == [True, False]
    assert run["worst_case"][0]["robust_accuracy"] <= min(a["robust_accuracy"] for a in run["attacks"])
