"""Hub-backed model families: a tiny model of each, saved in its family's own format,
loaded back through its spec (offline), preprocessing checked against the saved
config, and attacked with PGD through the whole pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attacks.pgd import PGD
from robustbench_peft import load_target
from robustbench_peft.errors import OfflineModelError, UserError
from robustbench_peft.models import offline
from robustbench_peft.models.hub import load_for_task, task_options
from robustbench_peft.task import ClassificationTask

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)


pytestmark = pytest.mark.usefixtures("one_thread")


def normalized(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def assert_preprocess(target, size, mean=MEAN, std=STD) -> None:
    cfg = target.preprocess.config
    assert cfg.input_size == size
    assert cfg.mean == pytest.approx(mean) and cfg.std == pytest.approx(std)


def assert_attackable(target, n: int = 6, eps: float = 0.25) -> None:
    """PGD through the loaded pipeline stays in the threat model and breaks some prediction."""
    torch.manual_seed(1)
    x = torch.rand(n, *target.input_shape)
    y = target.predict(x)  # the model's own predictions: clean accuracy 1
    result = PGD(norm="Linf", steps=5, progress=False)(target, x, y, [eps])
    x_adv = result.x_adv[0]
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(result.correct[0], target.predict(x_adv) == y)
    assert result.robust_accuracy[0] < 1.0


# -- timm ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_dir(tmp_path_factory):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(
        "test_resnet", pretrained=False, num_classes=5,
        pretrained_cfg_overlay={"mean": MEAN, "std": STD, "input_size": (3, 48, 48), "interpolation": "bilinear"},
    ).eval()
    folder = tmp_path_factory.mktemp("timm") / "tiny"
    save_for_hf(model, str(folder), safe_serialization=True)
    assert (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").exists()
    return folder, model


def test_timm_local_folder_round_trip(timm_dir):
    folder, model = timm_dir
    saved = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    target = load_target(f"timm:{folder}")
    assert_preprocess(target, tuple(saved["input_size"]), saved["mean"], saved["std"])
    assert target.n_classes == 5 and target.input_shape == (3, 48, 48)
    x = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(target(x), model(normalized(x)), atol=1e-5)
    assert all(not p.requires_grad for p in target.parameters())


def test_timm_task_size_and_pgd(timm_dir):
    folder, _ = timm_dir
    target = load_target(f"timm:local-dir:{folder}", input_shape=(3, 32, 32))
    assert target.input_shape == (3, 32, 32)
    assert target.preprocess(torch.rand(2, 3, 32, 32)).shape == (2, 3, 48, 48)
    assert_attackable(target)


def test_timm_hub_id_loads_from_the_cache_offline(timm_dir, tmp_path, monkeypatch):
    """A hub id whose files are in the Hugging Face cache loads with HF_HUB_OFFLINE=1."""
    import shutil

    from huggingface_hub import constants

    folder, model = timm_dir
    repo = tmp_path / "models--someone--tiny-resnet"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    target = load_target("timm:someone/tiny-resnet")
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(target(x), model(normalized(x)), atol=1e-5)


def test_timm_unknown_name_is_a_user_error():
    with pytest.raises(UserError, match="timm has no architecture"):
        load_target("timm:no_such_net_xyz")
    with pytest.raises(UserError, match="no such file or folder"):
        load_target("timm:./missing/folder")


# -- torchvision ---------------------------------------------------------------------


def test_torchvision_safetensors_folder(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=4, width_mult=0.25).eval()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"num_classes": 4, "model_args": {"width_mult": 0.25}, "input_size": [3, 40, 40], "mean": MEAN, "std": STD}))
    target = load_target(f"torchvision:mobilenet_v3_small:{tmp_path}")
    assert_preprocess(target, (3, 40, 40))
    assert target.n_classes == 4
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(target(x), model(normalized(x)), atol=1e-5)
    assert_attackable(load_target(f"torchvision:mobilenet_v3_small:{tmp_path / 'model.safetensors'}", input_shape=(3, 32, 32)))


def test_torchvision_infers_classes_and_uses_imagenet_defaults(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    model = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=3)
    save_file(model.state_dict(), str(tmp_path / "sq.safetensors"))
    target = load_target(f"torchvision:squeezenet1_1:{tmp_path / 'sq.safetensors'}")
    assert target.n_classes == 3
    assert_preprocess(target, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_torchvision_weights_enum_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """Named weights load offline from torch.hub's cache, with the weights' own preprocessing."""
    import torchvision

    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=1000).eval()
    (tmp_path / "checkpoints").mkdir()
    torch.save(model.state_dict(), tmp_path / "checkpoints" / os.path.basename(weights.url))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    target = load_target("torchvision:squeezenet1_1:IMAGENET1K_V1", input_shape=(3, 64, 64))
    reference = weights.transforms()
    assert_preprocess(target, (3, reference.crop_size[0], reference.crop_size[-1]), reference.mean, reference.std)
    assert target.n_classes == len(weights.meta["categories"]) and target.input_shape == (3, 64, 64)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(target.model(target.preprocess.normalize(x)), model(normalized(x, reference.mean, reference.std)), atol=1e-5)


def test_torchvision_bad_names():
    with pytest.raises(UserError, match="no weights 'NOPE'"):
        load_target("torchvision:resnet18:NOPE")
    with pytest.raises(UserError, match="no classification model"):
        load_target("torchvision:resnet_unknown")


# -- open_clip -----------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_open_clip(folder: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny CLIP in open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    preprocess = {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": preprocess}))
    return folder, model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_open_clip(tmp_path_factory.mktemp("clip"))


def test_open_clip_zero_shot(clip_dir):
    import open_clip

    folder, model = clip_dir
    names = ["cat", "dog", "traffic_light"]
    target = load_target(f"open_clip:{folder}", class_names=names, templates="simple")
    assert_preprocess(target, (3, 32, 32))
    assert target.n_classes == 3 and target.preprocess.config.interpolation == "bicubic"
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in names])), dim=-1)
        image = F.normalize(model.encode_image(normalized(x)), dim=-1)
        expected = model.logit_scale.exp() * image @ text.T
    assert torch.allclose(target(x), expected, atol=1e-4)
    assert_attackable(load_target(f"open_clip:{folder}", class_names=names, input_shape=(3, 24, 24)), eps=0.3)


def test_open_clip_arch_with_checkpoint_file(clip_dir, tmp_path):
    import open_clip

    folder, model = clip_dir
    (tmp_path / "rbp-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path)
    target = load_target(f"open_clip:rbp-tiny-clip/{folder / 'open_clip_model.safetensors'}", class_names=["a", "b"])
    assert target.n_classes == 2 and target.input_shape == (3, 32, 32)
    assert torch.equal(target.model.visual.conv1.weight, model.visual.conv1.weight)


def test_open_clip_needs_class_names_and_a_pretrained_tag(clip_dir):
    folder, _ = clip_dir
    with pytest.raises(UserError, match="class names"):
        load_target(f"open_clip:{folder}")
    with pytest.raises(UserError, match="ARCH/PRETRAINED"):
        load_target("open_clip:ViT-B-32", class_names=["a", "b"])
    with pytest.raises(UserError, match="no pretrained tag"):
        load_target("open_clip:ViT-B-32/not_a_tag", class_names=["a", "b"])


def test_load_for_task_passes_class_names_and_size(clip_dir):
    folder, _ = clip_dir
    task = ClassificationTask("toy", ["red", "green"], torch.empty(0, 3, 20, 20), torch.empty(0, dtype=torch.long), torch.rand(4, 3, 20, 20), torch.zeros(4, dtype=torch.long))
    assert set(task_options(f"open_clip:{folder}", task)) == {"class_names", "input_shape"}
    assert task_options("digits:cnn", task) == {}
    target = load_for_task(f"open_clip:{folder}", task)
    assert target.n_classes == 2 and target.input_shape == (3, 20, 20)
    target.check_input(task.x_test)


# -- transformers --------------------------------------------------------------------


def test_hf_save_pretrained_round_trip(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=4)
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(MEAN), image_std=list(STD)).save_pretrained(tmp_path)
    target = load_target(f"hf:{tmp_path}")
    assert_preprocess(target, (3, 32, 32))
    assert target.n_classes == 4
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(target(x), model(pixel_values=normalized(x)).logits, atol=1e-5)
    assert_attackable(load_target(f"hf:{tmp_path}", input_shape=(3, 24, 24)), eps=0.3)


def test_hf_rescale_folds_into_normalisation():
    from robustbench_peft.models.hf_family import preprocess_config

    class Config:
        num_channels = 3
        image_size = 16

    cfg = preprocess_config({"do_rescale": False, "do_normalize": True, "image_mean": [127.5] * 3, "image_std": [127.5] * 3, "resample": 3}, Config())
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose((x - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1), (x * 255 - 127.5) / 127.5, atol=1e-5)
    assert cfg.interpolation == "bicubic" and cfg.input_size == (3, 16, 16)


# -- file: ---------------------------------------------------------------------------


def test_file_model_with_digits_architecture(tmp_path, cnn, small_batch):
    from robustbench_peft.models.file_family import export_file_model

    path = export_file_model(cnn.model, tmp_path / "digits.safetensors", architecture="digits:cnn", num_classes=10, input_shape=(1, 8, 8))
    assert (tmp_path / "digits.json").is_file()
    target = load_target(f"file:{path}")
    x, y = small_batch
    assert torch.equal(target.logits(x), cnn.logits(x))
    (tmp_path / "digits.json").unlink()  # the copy in the safetensors metadata is enough
    assert torch.equal(load_target(f"file:{path}").logits(x), cnn.logits(x))
    result = PGD(norm="Linf", steps=10, progress=False)(target, x, y, [0.3])
    assert result.robust_accuracy[0] < float((target.predict(x) == y).float().mean())


def test_file_model_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="sidecar"):
        load_target(f"file:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "digits:cnn", "num_classes": 10, "input_shape": [1, 8, 8]}))
    with pytest.raises(UserError, match="do not fit"):
        load_target(f"file:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "keras:cnn", "num_classes": 10}))
    with pytest.raises(UserError, match="FAMILY:NAME"):
        load_target(f"file:{tmp_path}")
    with pytest.raises(UserError, match="no such file"):
        load_target(f"file:{tmp_path / 'nope.safetensors'}")


# -- robustbench ---------------------------------------------------------------------


def test_robustbench_zoo_model_when_installed():
    pytest.importorskip("robustbench")
    with pytest.raises(UserError, match="no cifar10/Linf model"):
        load_target("robustbench:cifar10/Linf/NoSuchModel2099")


def test_robustbench_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import robustbench now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'robustbench_peft\[robustbench\]'"):
        load_target("robustbench:cifar10/Linf/Standard")
    with pytest.raises(UserError, match="DATASET/THREAT/NAME"):
        load_target("robustbench:cifar10/Standard")


# -- offline -------------------------------------------------------------------------


def test_offline_hub_fails_fast_in_process():
    start = time.perf_counter()
    with pytest.raises(OfflineModelError, match="HF_HUB_OFFLINE") as info:
        load_target("timm:resnet18.a1_in1k")
    assert "timm:resnet18.a1_in1k" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(OfflineModelError, match="torchvision:resnet18"):
        load_target("torchvision:resnet18")
    with pytest.raises(OfflineModelError, match="hf:google/vit-base-patch16-224"):
        load_target("hf:google/vit-base-patch16-224")
    with pytest.raises(OfflineModelError, match="open_clip:RN50/openai"):
        load_target("open_clip:RN50/openai", class_names=["a", "b"])
    assert time.perf_counter() - start < wall_limit(15.0)


def test_third_party_torch_load_is_forced_to_weights_only(tmp_path):
    import argparse

    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="never unpickled"):
        with offline.weights_only_loading("file:ckpt.pt"):
            torch.load(tmp_path / "ckpt.pt", weights_only=False)  # as a library might call it
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with offline.weights_only_loading("file:plain.pt"):
        assert torch.equal(torch.load(tmp_path / "plain.pt", weights_only=False)["w"], torch.zeros(2))
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_probe_of_unreachable_host_is_bounded():
    import socket

    silent = socket.socket()  # accepts connections into its backlog but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        start = time.perf_counter()
        assert offline.reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) is False
        assert time.perf_counter() - start < 1.5
    finally:
        silent.close()
    assert offline.reachable("http://127.0.0.1:9", timeout=1.0) is False  # refused
    assert offline.network_allowed("https://example.invalid") is False  # HF_HUB_OFFLINE is set in tests


def wall_limit(alone: float) -> float:
    """``alone`` seconds on an idle machine; more when other work already saturates the cores.

    Hub retries would take about 50 s on their own, so even the relaxed limit tells
    them apart from a fast failure.
    """
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 0.0
    return alone if load < 1.5 else 3 * alone


def _timed_run(command: list[str], env: dict[str, str], out: list) -> None:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    out.append((proc, time.perf_counter() - start))


def test_cli_offline_model_exits_2_quickly(tmp_path):
    """With HF_HUB_OFFLINE=1, and without it against an unreachable hub endpoint."""
    base = {k: v for k, v in os.environ.items() if k not in offline.OFFLINE_ENV}
    envs = [{**base, "HF_HUB_OFFLINE": "1"}, {**base, "HF_ENDPOINT": "http://127.0.0.1:9"}]
    command = [sys.executable, "-m", "robustbench_peft", "eval", "--model", "timm:resnet18.a1_in1k", "--quiet"]
    results: list[list] = [[], []]
    threads = [
        threading.Thread(target=_timed_run, args=([*command, "--out", str(tmp_path / f"run{i}")], env, results[i]))
        for i, env in enumerate(envs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    limit = 2 * wall_limit(15.0)  # two processes side by side share the two cores
    for (proc, seconds), in results:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and "timm:resnet18.a1_in1k" in lines[0] and "local copy" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
        assert seconds < limit, f"took {seconds:.1f} s"
    assert "HF_HUB_OFFLINE" in results[0][0][0].stderr
    assert "127.0.0.1:9 is unreachable" in results[1][0][0].stderr


STAND_IN_ROBUSTBENCH = {
    "__init__.py": "",
    "model_zoo/__init__.py": (
        "from .enums import BenchmarkDataset, ThreatModel\n"
        "model_dicts = {BenchmarkDataset('cifar10'): {ThreatModel('Linf'): {'Tiny2099': None}}}\n"
    ),
    "model_zoo/enums.py": (
        "from enum import Enum\n"
        "class BenchmarkDataset(Enum):\n    cifar_10 = 'cifar10'\n"
        "class ThreatModel(Enum):\n    Linf = 'Linf'\n    L2 = 'L2'\n"
    ),
    "utils.py": (
        "import os, torch\n"
        "def load_model(model_name, model_dir, dataset, threat_model):\n"
        "    # RobustBench's layout: MODEL_DIR/DATASET/THREAT/NAME.pt holding {'state_dict': ...}\n"
        "    path = os.path.join(model_dir, dataset, threat_model, model_name + '.pt')\n"
        "    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))\n"
        "    model.load_state_dict(torch.load(path, map_location='cpu')['state_dict'])\n"
        "    return model.eval()\n"
    ),
}


def test_robustbench_zoo_layout_through_a_stand_in_package(tmp_path, monkeypatch):
    """The robustbench: loader end to end against a package with robustbench's API and on-disk layout."""
    from attacks.pgd import PGD

    package = tmp_path / "site" / "robustbench"
    for relative, text in STAND_IN_ROBUSTBENCH.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    checkpoint = tmp_path / "zoo" / "cifar10" / "Linf" / "Tiny2099.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": reference.state_dict()}, checkpoint)

    target = load_target("robustbench:cifar10/Linf/Tiny2099", model_dir=str(tmp_path / "zoo"))
    x = torch.rand(6, 3, 32, 32)
    assert target.input_shape == (3, 32, 32) and target.n_classes == 10
    assert torch.allclose(target(x), reference(x), atol=1e-6)  # zoo models take [0,1]: no normalisation added
    y = target.predict(x)
    result = PGD(steps=5, progress=False)(target, x, y, [8 / 255])
    assert (result.x_adv[0] - x).abs().max() <= 8 / 255 + 1e-6 and result.robust_accuracy[0] < 1.0
    with pytest.raises(UserError, match="no cifar10/Linf model 'Tiny2098'"):
        load_target("robustbench:cifar10/Linf/Tiny2098", model_dir=str(tmp_path / "zoo"))
