"""``eval --amp``: mixed precision while fitting advft and visual prompts, float32 everywhere else."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Iterator

import pytest
import torch
from torch import nn

from defenses.adversarial_finetune import AdversarialFineTune, train_epochs, weights_sha256
from defenses.objectives import OBJECTIVES, AdversarySettings
from defenses.prompt_training import PromptRecipe, train_prompts
from defenses.prompts import border_mask
from defenses.scopes import find_layout
from defenses.visual_prompt import UniversalAdversarialPrompt
from robustbench_peft import precision
from robustbench_peft.cache import recipe_hash
from robustbench_peft.errors import UserError
from robustbench_peft.task import ClassificationTask
from robustbench_peft.threat_model import TOLERANCE, distance

#: Tiny fits: the tests check precision mechanics, not accuracy.
ADVFT = dict(scope="linear", epochs=1, steps=1, n_train=64, batch_size=32)
PROMPTS = dict(epochs=1, batch_size=32, steps=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _amp_off() -> Iterator[None]:
    """``--amp`` is process-global: every test starts and ends with it off."""
    precision.set_fit_amp("off")
    try:
        yield
    finally:
        precision.set_fit_amp("off")


@pytest.fixture(scope="module")
def small_task(digits) -> ClassificationTask:
    """The digits task with its first 64 training images."""
    return replace(digits, x_train=digits.x_train[:64], y_train=digits.y_train[:64])


class DtypeRecorder:
    """Records the output dtype of a module on every forward pass (until removed)."""

    def __init__(self, module: nn.Module) -> None:
        self.seen: set[torch.dtype] = set()
        self.handle = module.register_forward_hook(lambda _m, _i, out: self.seen.add(out.dtype))

    def __enter__(self) -> "DtypeRecorder":
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.remove()


def fine_tune(cnn, digits, amp: str) -> tuple[nn.Module, set[torch.dtype]]:
    """PGD-AT of a full copy of the cnn on 64 digits under ``amp``; returns it and its fc1 output dtypes."""
    precision.set_fit_amp(amp)
    target = copy.deepcopy(cnn).requires_grad_(True)
    with DtypeRecorder(target.model.fc1) as recorder:
        train_epochs(target, OBJECTIVES["pgd-at"], AdversarySettings(eps=0.1, steps=2), digits.x_train[:64], digits.y_train[:64], epochs=1, lr=1e-3, batch_size=32, seed=0, train_mode=True)
    return target, recorder.seen


def float32_and_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def test_bf16_fine_tuning_runs_in_bfloat16_and_keeps_float32_weights(cnn, digits):
    reference, seen_off = fine_tune(cnn, digits, "off")
    assert seen_off == {torch.float32} and not precision.fit_amp_applied()
    tuned, seen_bf16 = fine_tune(cnn, digits, "bf16")
    assert torch.bfloat16 in seen_bf16 and precision.fit_amp_applied()
    assert float32_and_finite(tuned.state_dict())
    assert weights_sha256(tuned.state_dict()) != weights_sha256(reference.state_dict())
    assert not torch.is_autocast_enabled("cpu")  # nothing leaks out of the training steps
    assert tuned.logits(digits.x_test[:16]).dtype == torch.float32


@pytest.mark.parametrize("objective, norm, eps", [("pgd-at", "Linf", 0.1), ("trades", "Linf", 0.1), ("pgd-at", "L2", 1.0)])
def test_adversary_under_autocast_crafts_float32_inputs_inside_the_ball(cnn, digits, objective, norm, eps):
    x, y = digits.x_test[:32], digits.y_test[:32]
    inputs: list[torch.Tensor] = []
    handle = cnn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
    precision.set_fit_amp("bf16")
    try:
        with precision.fit_autocast("cpu"):
            loss = OBJECTIVES[objective](cnn, x, y, AdversarySettings(eps=eps, norm=norm, steps=3), torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert torch.isfinite(loss)
    assert all(t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1 for t in inputs)
    assert all(bool((distance(x, t, norm) <= eps + TOLERANCE).all()) for t in inputs)
    assert any(distance(x, t, norm).max() > eps / 2 for t in inputs)  # the gradient steps really moved


def test_advft_recipe_names_amp_only_when_on_and_caches_fits_apart(cnn, small_task, tmp_path, monkeypatch):
    defense = AdversarialFineTune(**ADVFT)
    layout = find_layout(cnn.model, cnn.n_classes)
    off = defense.recipe(cnn, small_task, layout, [])
    assert "amp" not in off  # full-precision cache keys are the ones written before --amp existed
    precision.set_fit_amp("bf16")
    assert defense.recipe(cnn, small_task, layout, []) == {**off, "amp": "bf16"}

    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    mixed = AdversarialFineTune(**ADVFT).fit(cnn, small_task)
    assert float32_and_finite(dict(mixed.target.model.named_parameters()))
    precision.set_fit_amp("bf16")  # a fresh run: --amp not applied yet
    with DtypeRecorder(cnn.model.fc1) as recorder:
        again = AdversarialFineTune(**ADVFT).fit(cnn, small_task)
    assert torch.bfloat16 not in recorder.seen and again.sha256 == mixed.sha256  # served from the cache...
    assert precision.fit_amp_applied()  # ...and still a mixed-precision fit: eval must not call --amp ignored
    with DtypeRecorder(mixed.target.model.fc2) as recorder:
        mixed.target.logits(small_task.x_test[:16])
    assert recorder.seen == {torch.float32}  # the fitted defense is evaluated in float32
    precision.set_fit_amp("off")
    full = AdversarialFineTune(**ADVFT).fit(cnn, small_task)
    assert full.sha256 != mixed.sha256  # the bf16 entry did not stand in for the float32 fit
    assert len(list((tmp_path / "advft").glob("*.safetensors"))) == 2


def prompt_recipe() -> PromptRecipe:
    return PromptRecipe(classwise=False, adversarial=True, border=2, epochs=1, batch_size=32, eps=0.1, steps=2, rel_step_size=0.25)


def fit_prompts(cnn, task, amp: str) -> tuple[torch.Tensor, set[torch.dtype]]:
    precision.set_fit_amp(amp)
    with DtypeRecorder(cnn.model.fc1) as recorder:
        prompts = train_prompts(cnn, task.x_train, task.y_train, task.n_classes, prompt_recipe())
    return prompts, recorder.seen


def test_bf16_prompt_training_runs_in_bfloat16_and_keeps_float32_prompts(cnn, small_task):
    before = cnn.weights_sha256()
    reference, seen_off = fit_prompts(cnn, small_task, "off")
    assert seen_off == {torch.float32}
    prompts, seen_bf16 = fit_prompts(cnn, small_task, "bf16")
    assert torch.bfloat16 in seen_bf16 and precision.fit_amp_applied()
    assert prompts.dtype == torch.float32 and bool(torch.isfinite(prompts).all())
    outside = ~border_mask(8, 8, 2).bool()
    assert bool((prompts[:, :, outside] == 0).all())
    assert not torch.equal(prompts, reference)
    assert cnn.weights_sha256() == before
    assert not torch.is_autocast_enabled("cpu")


def test_prompt_cache_key_names_amp_only_when_on_and_caches_fits_apart(cnn, small_task, tmp_path, monkeypatch):
    defense = UniversalAdversarialPrompt(**PROMPTS)
    recipe = defense.recipe(small_task)
    off = defense.cache_key(cnn, small_task, recipe)
    assert "amp" not in off
    precision.set_fit_amp("bf16")
    mixed_key = defense.cache_key(cnn, small_task, recipe)
    assert mixed_key == {**off, "amp": "bf16"} and recipe_hash(mixed_key) != recipe_hash(off)

    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    mixed = UniversalAdversarialPrompt(**PROMPTS).fit(cnn, small_task)
    with DtypeRecorder(cnn.model.fc1) as recorder:
        mixed.target.logits(small_task.x_test[:16])
    assert recorder.seen == {torch.float32}
    precision.set_fit_amp("off")
    full = UniversalAdversarialPrompt(**PROMPTS).fit(cnn, small_task)
    assert full.sha256 != mixed.sha256
    assert len(list((tmp_path / "visual-prompts").glob("*.safetensors"))) == 2


def test_fp16_on_cpu_is_a_user_error(cnn, small_task):
    precision.set_fit_amp("fp16")
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        AdversarialFineTune(**ADVFT, cache=False).fit(cnn, small_task)
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        train_prompts(cnn, small_task.x_train, small_task.y_train, small_task.n_classes, prompt_recipe())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 fitting needs CUDA")
def test_fp16_on_cuda_scales_the_loss_and_keeps_float32_weights(cnn, digits):
    base = copy.deepcopy(cnn).to("cuda")
    precision.set_fit_amp("fp16")
    assert precision.grad_scaler("cuda").is_enabled()
    target = copy.deepcopy(base).requires_grad_(True)
    with DtypeRecorder(target.model.fc1) as recorder:
        losses = train_epochs(target, OBJECTIVES["trades"], AdversarySettings(eps=0.1, steps=2), digits.x_train[:64], digits.y_train[:64], epochs=1, lr=1e-3, batch_size=32, seed=0, train_mode=True)
    assert torch.float16 in recorder.seen and precision.fit_amp_applied()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert float32_and_finite(target.state_dict())
    prompts = train_prompts(base, digits.x_train[:64], digits.y_train[:64], 10, prompt_recipe())
    assert prompts.dtype == torch.float32 and bool(torch.isfinite(prompts).all())
