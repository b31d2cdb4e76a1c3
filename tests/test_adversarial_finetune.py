"""Adversarial fine-tuning: objectives, scopes, adapters in peft's format, caching."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from defenses.adversarial_finetune import AdversarialFineTune, load_adapter, save_adapter, train_epochs, weights_sha256
from defenses.objectives import OBJECTIVES, AdversarySettings
from defenses.scopes import find_layout
from robustbench_peft.errors import UserError
from robustbench_peft.options import build, parse_plugin_spec
from robustbench_peft.registry import DEFENSES
from robustbench_peft.targets import ClassifierTarget, Normalize
from robustbench_peft.task import ClassificationTask

#: A tiny budget: enough to move every trainable weight, cheap enough for a unit test.
TINY = dict(epochs=1, steps=1, n_train=64, batch_size=32, cache=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def fit(base, task, **options):
    return AdversarialFineTune(**{**TINY, **options}).fit(base, task)


def base_key(peft_key: str) -> str | None:
    """The base model's name of a frozen tensor inside a peft model (None for adapter tensors)."""
    key = peft_key.removeprefix("base_model.model.")
    for wrapper in (".base_layer.", ".original_module."):
        if wrapper in key:
            return key.replace(wrapper, ".")
    if any(part in key for part in ("lora_", "fourierft_", "c3a_", "modules_to_save")):
        return None
    return key


def frozen_tensors_unchanged(fitted, base) -> None:
    reference = base.model.state_dict()
    for key, value in fitted.target.model.state_dict().items():
        name = base_key(key)
        if name is not None:
            assert torch.equal(value, reference[name]), f"frozen tensor {key} changed"


def test_registered_with_description_and_cli_options():
    entry = DEFENSES.get("advft")
    assert "adversarial fine-tuning" in entry.description.lower()
    spec = parse_plugin_spec("advft:scope=linear,objective=trades,beta=3,eps=0.05,head=false,epochs=2")
    defense = build(entry.factory, spec.options, owner="defense advft")
    assert defense.label() == "advft-linear-trades"
    config = defense.config()
    assert config["beta"] == 3.0 and config["eps"] == 0.05 and config["head"] is False and config["epochs"] == 2
    assert config["lr"] > 0  # 0 resolves to the scope's default


@pytest.mark.parametrize(
    "options, fragment",
    [({"scope": "dora"}, "unknown scope"), ({"objective": "mart"}, "unknown objective"), ({"eps": 0.0}, "eps"), ({"norm": "L1"}, "threat model")],
)
def test_bad_options_are_user_errors(options, fragment):
    with pytest.raises(UserError, match=fragment):
        AdversarialFineTune(**options)


def full_copy(base):
    target = copy.deepcopy(base)
    target.requires_grad_(True)
    return target


def test_trades_with_beta_zero_is_clean_fine_tuning(cnn, digits):
    x, y = digits.x_train[:80], digits.y_train[:80]
    run = dict(epochs=2, lr=1e-3, batch_size=40, seed=3, train_mode=True)
    clean, trades0, trades6 = full_copy(cnn), full_copy(cnn), full_copy(cnn)
    settings = AdversarySettings(eps=0.1, steps=2, beta=0.0)
    clean_losses = train_epochs(clean, OBJECTIVES["clean"], settings, x, y, **run)
    trades_losses = train_epochs(trades0, OBJECTIVES["trades"], settings, x, y, **run)
    assert len(clean_losses) == 4
    assert trades_losses == clean_losses  # identical trajectory, step by step
    assert weights_sha256(trades0.state_dict()) == weights_sha256(clean.state_dict())
    # beta > 0 really adds the robustness term: the trajectory leaves the clean one.
    robust_losses = train_epochs(trades6, OBJECTIVES["trades"], AdversarySettings(eps=0.1, steps=2, beta=6.0), x, y, **run)
    assert robust_losses[0] > clean_losses[0]
    assert weights_sha256(trades6.state_dict()) != weights_sha256(clean.state_dict())
    # The same holds end to end through the defense.
    a = fit(cnn, digits, scope="linear", objective="trades", beta=0.0)
    b = fit(cnn, digits, scope="linear", objective="clean")
    assert a.sha256 == b.sha256


@pytest.mark.parametrize("objective", ["pgd-at", "trades", "fgsm-rs"])
def test_adversarial_objectives_raise_the_loss(cnn, digits, objective):
    x, y = digits.x_test[:64], digits.y_test[:64]
    settings = AdversarySettings(eps=0.1, steps=3, beta=1.0)
    clean = OBJECTIVES["clean"](cnn, x, y, settings, torch.Generator().manual_seed(0))
    adversarial = OBJECTIVES[objective](cnn, x, y, settings, torch.Generator().manual_seed(0))
    assert adversarial.item() > clean.item()
    assert cnn.training is False  # crafting restores the caller's mode


def lora_count(module: nn.Module, rank: int) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return rank * module.in_channels * kh * kw + rank * module.out_channels
    return rank * (module.in_features + module.out_features)


def expected_trainable(model: nn.Module, scope: str, rank: int = 4, n_frequency: int = 1000) -> int:
    """Trainable parameters per scope, counted from the architecture (head fc2 stays trainable)."""
    head = sum(p.numel() for p in model.fc2.parameters())
    linears = [m for name, m in model.named_children() if isinstance(m, nn.Linear) and name != "fc2"]
    counts = {
        "full": lambda: sum(p.numel() for p in model.parameters()),
        "linear": lambda: head,
        "lora": lambda: head + sum(lora_count(m, rank) for n, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d)) and n != "fc2"),
        "fourierft": lambda: head + sum(min(n_frequency, m.in_features * m.out_features) for m in linears),
        "c3a": lambda: head + sum(m.in_features * m.out_features // math.gcd(m.in_features, m.out_features) for m in linears),
    }
    return counts[scope]()


@pytest.mark.parametrize("scope", ["full", "linear", "lora", "fourierft", "c3a"])
def test_each_scope_trains_only_what_it_should(cnn, digits, scope):
    before = cnn.weights_sha256()
    fitted = fit(cnn, digits, scope=scope)
    assert cnn.weights_sha256() == before
    assert all(not p.requires_grad for p in cnn.parameters())
    assert fitted.cost.trainable_parameters == expected_trainable(cnn.model, scope)
    assert fitted.base is cnn
    assert not any(p.requires_grad for p in fitted.target.parameters())  # frozen for evaluation
    assert not torch.equal(fitted.target.logits(digits.x_test[:32]), cnn.logits(digits.x_test[:32]))
    if scope == "full":
        assert fitted.cost.stored_bytes == sum(t.numel() * t.element_size() for t in cnn.model.state_dict().values())
    elif scope == "linear":
        state = fitted.target.model.state_dict()
        reference = cnn.model.state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference if not k.startswith("fc2."))
        assert not torch.equal(state["fc2.weight"], reference["fc2.weight"])
        assert fitted.cost.stored_bytes == 4 * fitted.cost.trainable_parameters
    else:
        frozen_tensors_unchanged(fitted, cnn)
        assert fitted.cost.stored_bytes == 4 * fitted.cost.trainable_parameters  # adapter + head, float32
    assert fitted.cost.fit_seconds > 0


@pytest.mark.parametrize("scope", ["fourierft", "c3a"])
def test_linear_only_methods_note_the_frozen_convolutions(cnn, digits, scope):
    defense = AdversarialFineTune(scope=scope, **TINY)
    fitted = defense.fit(cnn, digits)
    record = defense.record(fitted)
    assert record["config"]["adapted_modules"] == ["fc1"]
    assert "conv1" in record["config"]["note"] and "conv2" in record["config"]["note"]
    assert record["label"] == f"advft-{scope}-pgd-at"


def test_lora_leaves_base_identical_and_adapter_reloads_in_peft_format(cnn, digits, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    fitted = fit(cnn, digits, scope="lora", epochs=2)
    after = cnn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(fitted.target.model, PeftModel)
    frozen_tensors_unchanged(fitted, cnn)

    folder = save_adapter(fitted, tmp_path / "adapter")
    assert (folder / "adapter_config.json").exists()
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in tensors) and any("lora_B" in k for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == fitted.cost.trainable_parameters

    reloaded = load_adapter(cnn, folder)
    x = digits.x_test[:128]
    assert torch.equal(reloaded.logits(x), fitted.target.logits(x))
    assert torch.equal(reloaded.predict(x), fitted.target.predict(x))
    assert not torch.equal(reloaded.logits(x), cnn.logits(x))
    assert all(torch.equal(before[k], cnn.model.state_dict()[k]) for k in before)


@pytest.mark.parametrize("scope", ["linear", "full", "fourierft", "c3a"])
def test_every_scope_round_trips_through_save_and_load(cnn, digits, tmp_path, scope):
    fitted = fit(cnn, digits, scope=scope)
    reloaded = load_adapter(cnn, save_adapter(fitted, tmp_path / scope))
    x = digits.x_test[:64]
    assert torch.equal(reloaded.logits(x), fitted.target.logits(x))


def test_adapter_refuses_other_base_weights(cnn, digits, tmp_path):
    folder = save_adapter(fit(cnn, digits, scope="lora"), tmp_path / "a")
    other = copy.deepcopy(cnn)
    with torch.no_grad():
        other.model.fc1.bias.add_(1.0)
    with pytest.raises(UserError, match="other base weights"):
        load_adapter(other, folder)
    with pytest.raises(UserError, match="not an advft adapter"):
        load_adapter(cnn, tmp_path / "missing")


def test_same_seed_same_weights_and_cache_hit(cnn, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path / "cache"))
    first = fit(cnn, digits, scope="lora", cache=True)
    second = fit(cnn, digits, scope="lora", cache=True)  # served from the cache
    fresh = fit(cnn, digits, scope="lora", cache=False)
    other_seed = fit(cnn, digits, scope="lora", cache=False, seed=1)
    assert first.sha256 == second.sha256 == fresh.sha256
    assert other_seed.sha256 != first.sha256
    assert second.cost.fit_seconds == first.cost.fit_seconds  # the training time is stored with the tensors
    assert len(list((tmp_path / "cache" / "advft").glob("*.safetensors"))) == 1
    x = digits.x_test[:64]
    assert torch.equal(first.target.logits(x), second.target.logits(x))


def test_cache_key_holds_the_training_data_not_only_its_counts(cnn, digits):
    from dataclasses import replace

    defense = build(DEFENSES.get("advft").factory, {"scope": "lora"}, owner="defense advft")
    layout = find_layout(cnn.model, 10)
    flipped = replace(digits, x_train=digits.x_train.flip(-1))  # same name and counts, other images
    assert defense.recipe(cnn, digits, layout, []) != defense.recipe(cnn, flipped, layout, [])


class PairSum(nn.Module):
    """Ten logits from twenty features, so no single layer has one output per class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(len(x), 10, 2).sum(-1)


def test_head_discovery_and_headless_models(digits):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    layout = find_layout(mlp, 10)
    assert layout.head == "3" and list(layout.layers) == ["1"]
    headless = ClassifierTarget(nn.Sequential(nn.Flatten(), nn.Linear(64, 20), PairSum()).requires_grad_(False), 10, (1, 8, 8))
    assert find_layout(headless.model, 10).head is None
    with pytest.raises(UserError, match="no classification head"):
        AdversarialFineTune(scope="linear", **TINY).fit(headless, digits)
    fitted = AdversarialFineTune(scope="lora", head=False, **TINY).fit(headless, digits)  # adapters need no head
    assert fitted.cost.trainable_parameters == 4 * (64 + 20)


def tiny_image_task(n: int = 24, size: int = 16, classes: int = 3) -> ClassificationTask:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=generator)
    y = torch.arange(n) % classes
    return ClassificationTask("tiny", [str(i) for i in range(classes)], x, y, x[:8], y[:8])


def timm_target(name: str, **kwargs) -> ClassifierTarget:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs).eval().requires_grad_(False)
    return ClassifierTarget(model, 3, (3, 16, 16), preprocess=Normalize((0.5,) * 3, (0.25,) * 3), name=f"timm:{name}")


@pytest.mark.parametrize(
    "name, kwargs, scope",
    [("test_resnet", {}, "lora"), ("test_resnet", {}, "full"), ("test_vit", {"img_size": 16, "patch_size": 4}, "fourierft")],
)
def test_timm_models(name, kwargs, scope):
    task = tiny_image_task()
    base = timm_target(name, **kwargs)
    before = weights_sha256(base.state_dict())
    fitted = AdversarialFineTune(scope=scope, epochs=1, steps=1, batch_size=12, eps=8 / 255, cache=False).fit(base, task)
    assert weights_sha256(base.state_dict()) == before
    head = find_layout(base.model, 3).head
    assert head == ("fc" if name == "test_resnet" else "head")
    head_params = sum(p.numel() for p in base.model.get_submodule(head).parameters())
    total = sum(p.numel() for p in base.model.parameters())
    assert head_params < fitted.cost.trainable_parameters <= total
    assert (fitted.cost.trainable_parameters == total) == (scope == "full")
    out = fitted.target.logits(task.x_test)
    assert out.shape == (8, 3) and torch.isfinite(out).all()
    if scope != "full":
        frozen_tensors_unchanged(fitted, base)
