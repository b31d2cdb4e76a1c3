"""Defenses and unlearners on real architectures, end to end through ``eval``.

Adversarial fine-tuning with LoRA on a timm ViT, a transformers ViT and an
open_clip zero-shot model (its attention is adapted whole), a linear probe on a
torchvision ResNet-18, VP / U-AVP / C-AVP on a timm CNN, and ``--suite
unlearning`` on an ImageFolder task with a train folder; each stand-in is saved in
its library's own format (builders of test_front_door_families.py). Budgets are
one epoch and a handful of samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_peft.cli import main
from robustbench_peft.errors import UserError
from test_front_door_families import FAMILIES, N_CLASSES, family_specs, save_hf, save_timm, save_torchvision  # noqa: F401  (family_specs: fixture)
from test_models_hub import clip_dir  # noqa: F401  (fixture)
from test_tasks_data import CIFAR10_NAMES, fake_cifar10, write_images

PGD = ["--attack", "pgd:steps=2", "--n", "8", "--no-checks", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CIFAR-10 folder (30 train / 30 test images) and ImageFolder test and train folders of three classes."""
    root = tmp_path_factory.mktemp("front-door-defenses")
    fake_cifar10(root / "cifar")
    write_images(root / "test", {name: 3 for name in ("cat", "dog", "emu")}, size=(40, 30))
    write_images(root / "train", {name: 4 for name in ("cat", "dog", "emu")}, size=(40, 30), seed=1)
    return {"cifar": root / "cifar", "test": root / "test", "train": root / "train"}


def eval_run(out: Path, *args: str) -> list[dict]:
    assert main(["eval", *args, "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())["runs"]


def cifar(data) -> list[str]:
    return ["--task", "cifar10", "--data-dir", str(data["cifar"])]


def assert_fitted(run: dict, label: str) -> dict:
    defense = run["defense"]
    assert defense is not None and defense["label"] == label, defense
    assert 0 < defense["trainable_parameters"] <= run["model"]["parameters"]  # what the defense trains, not more than the model
    assert len(defense["sha256"]) == 64 and defense["stored_bytes"] > 0
    assert [a["name"] for a in run["attacks"]] == ["pgd-2"] and run["n"] == 8
    return defense["config"]


def test_advft_lora_on_a_timm_vit_at_another_size(data, tmp_path):
    """LoRA PGD-AT on timm's test_vit (native 32) on an ImageFolder at 24 pixels with a train folder."""
    vit = save_timm(tmp_path / "vit", arch="test_vit", size=32, num_classes=3)
    task = f"imagefolder:image_size=24,train_dir={data['train']}"
    (run,) = eval_run(tmp_path / "run", "--task", task, "--data-dir", str(data["test"]), "--model", f"timm:{vit}",
                      "--defense", "advft:scope=lora,epochs=1,steps=2", *PGD)
    config = assert_fitted(run, "advft-lora-pgd-at")
    assert run["task"] == "imagefolder"
    assert "blocks.0.attn.qkv" in config["adapted_modules"] and "blocks.0.mlp.fc1" in config["adapted_modules"]
    assert config["head_module"] == "head"


def test_advft_lora_on_a_transformers_vit(data, tmp_path):
    hf = save_hf(tmp_path / "hf")
    (run,) = eval_run(tmp_path / "run", *cifar(data), "--model", f"hf:{hf}", "--defense", "advft:scope=lora,epochs=1,steps=2", *PGD)
    config = assert_fitted(run, "advft-lora-pgd-at")
    adapted = config["adapted_modules"]
    assert any(".attention." in name for name in adapted) and any("intermediate" in name or "mlp" in name for name in adapted), adapted
    assert config["head_module"] == "model.classifier"


def test_advft_linear_on_a_torchvision_resnet18(data, tmp_path):
    """A linear probe on ResNet-18 (10 classes, 32-pixel input): only ``fc`` is trained and shipped."""
    resnet = save_torchvision(tmp_path / "rn", arch="resnet18", size=32)
    (run,) = eval_run(tmp_path / "run", *cifar(data), "--model", f"torchvision:resnet18:{resnet}", "--defense", "advft:scope=linear,epochs=1,steps=2", *PGD)
    config = assert_fitted(run, "advft-linear-pgd-at")
    assert config["adapted_modules"] == ["fc"]
    assert run["defense"]["trainable_parameters"] == 512 * N_CLASSES + N_CLASSES


def test_advft_lora_on_open_clip_adapts_the_attention_and_names_head_false(clip_dir, data, tmp_path, capsys):  # noqa: F811
    """A zero-shot model has no head: the error names head=false; with it, LoRA adapts each
    nn.MultiheadAttention whole (an adapter on its out_proj alone would never run)."""
    folder, _ = clip_dir
    spec = f"open_clip:{folder}"
    assert main(["eval", *cifar(data), "--model", spec, "--defense", "advft:scope=lora,epochs=1", *PGD, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "head=false" in err
    (run,) = eval_run(tmp_path / "b", *cifar(data), "--model", spec, "--defense", "advft:scope=lora,epochs=1,steps=2,head=false", *PGD)
    config = assert_fitted(run, "advft-lora-pgd-at")
    adapted = config["adapted_modules"]
    assert "visual.transformer.resblocks.0.attn" in adapted and not any(name.endswith("out_proj") for name in adapted), adapted


def test_visual_prompts_on_a_timm_cnn(data, tmp_path):
    """VP, U-AVP and C-AVP on timm's test_resnet (native 48) at CIFAR's 32 pixels: one eval, three fitted defenses."""
    cnn = save_timm(tmp_path / "cnn", arch="test_resnet", size=48)
    runs = eval_run(tmp_path / "run", *cifar(data), "--model", f"timm:{cnn}", "--defense", "vp:epochs=1",
                    "--defense", "uavp:epochs=1,steps=2", "--defense", "cavp:epochs=1,steps=2", *PGD)
    labels = [run["defense"]["label"] for run in runs]
    assert labels == ["vp:epochs=1", "uavp:epochs=1,steps=2", "cavp:epochs=1,steps=2"]
    border = 32 * 32 - 16 * 16  # pixels on the default frame of a 32x32 image: 8 pixels, the paper's CIFAR border
    for run in runs:
        assert run["defense"]["trainable_parameters"] in (3 * border, N_CLASSES * 3 * border)
        assert run["n"] == 8 and run["attacks"]
    assert runs[2]["defense"]["forward_passes"] == N_CLASSES


@pytest.fixture(scope="module")
def folders10(tmp_path_factory):
    """ImageFolder test (one image per class) and train (two per class) folders of the ten CIFAR-10 classes."""
    root = tmp_path_factory.mktemp("front-door-folders10")
    write_images(root / "test", {name: 1 for name in CIFAR10_NAMES}, size=(40, 30))
    write_images(root / "train", {name: 2 for name in CIFAR10_NAMES}, size=(40, 30), seed=1)
    return root / "test", root / "train"


@pytest.mark.parametrize("family", FAMILIES)
def test_unlearning_suite_on_an_imagefolder_with_a_train_folder(family, family_specs, folders10, tmp_path):
    """``--suite unlearning --task imagefolder:train_dir=DIR --model SPEC``: the section unlearns the given model on that task."""
    spec, _, _ = family_specs[family]
    test, train = folders10
    out = tmp_path / "run"
    args = ["eval", "--suite", "unlearning", "--task", f"imagefolder:image_size=24,train_dir={train}", "--data-dir", str(test),
            "--model", spec, "--set", 'unlearning.methods=["retrain:epochs=1", "ga:epochs=1", "salun:epochs=1"]',
            "--set", "unlearning.scenarios=class", "--set", "unlearning.pgd_steps=2", "--n", "8", "--no-checks", "--quiet", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    section = report["unlearning"]
    assert section["task"] == "imagefolder" and section["original"]["spec"] == spec
    (scenario,) = section["scenarios"]
    assert [row["method"] for row in scenario["rows"]] == ["original", "retrain", "ga", "salun"]
    for row in scenario["rows"]:
        assert all(0 <= row[key] <= 1 for key in ("UA", "RA", "TA", "MIA"))
    assert report["suite"]["task_options"]["train_dir"] == str(train)
    assert report["runs"][0]["model"]["spec"] == spec  # the bare model's clean accuracy on the same task


@pytest.mark.parametrize("family,defense,label", [
    ("file", "vp:epochs=1", "vp:epochs=1"),
    ("robustbench", "advft:scope=linear,epochs=1,steps=2", "advft-linear-pgd-at"),
], ids=["file-vp", "robustbench-advft-linear"])
def test_a_defense_on_the_file_and_robustbench_stand_ins(family, defense, label, family_specs, data, tmp_path, capsys):
    spec, _, _ = family_specs[family]
    (run,) = eval_run(tmp_path / "run", *cifar(data), "--model", spec, "--defense", defense, *PGD)
    assert_fitted(run, label)
    if family == "robustbench":  # a zoo model that is one Linear layer: LoRA has no body layer to adapt
        assert main(["eval", *cifar(data), "--model", spec, "--defense", "advft:scope=lora,epochs=1", *PGD, "--out", str(tmp_path / "lora")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "scope=linear" in err


# -- scopes on architectures where adapters cannot go everywhere ---------------------------


class TinyAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def test_lora_on_multihead_attention_changes_the_function():
    """The attention module is the layer, not its out_proj (whose raw weight MHA's forward reads)."""
    from defenses.scopes import SCOPES, ScopeSettings, find_layout

    torch.manual_seed(0)
    model = TinyAttention().eval()
    layout = find_layout(model, 3)
    assert layout.head == "head" and list(layout.layers) == ["attn"]
    attached = SCOPES["lora"].attach(model, layout, ScopeSettings(rank=2))
    assert attached.adapted == ["attn"]
    x = torch.randn(2, 4, 8)
    before = attached.model(x).detach()
    with torch.no_grad():
        for name, p in attached.model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    assert (attached.model(x) - before).abs().max() > 1e-3
    with pytest.raises(UserError, match="scope=linear"):
        SCOPES["fourierft"].attach(TinyAttention(), find_layout(TinyAttention(), 3), ScopeSettings())


def test_no_body_layer_names_scope_linear():
    from defenses.scopes import SCOPES, ScopeSettings, find_layout

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(UserError, match=r"no Linear / Conv2d layer outside its classification head '1'.*scope=linear"):
        SCOPES["lora"].attach(model, find_layout(model, 3), ScopeSettings())
