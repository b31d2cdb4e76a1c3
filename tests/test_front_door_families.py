"""Every model family through the front doors: ``eval`` (in process and one real
``python -m robustbench_peft eval``) and ``evaluate(...)``.

Each family has a tiny stand-in saved the way its own library saves it, and runs
(a) on an ImageFolder task whose pixel size differs from the network's own input
size and (b) on a CIFAR-10 folder in torchvision's ``cifar-10-batches-py`` layout,
under PGD and AutoAttack (APGD-CE). The runner loads every spec for its task, so
each family gets the task's class names and pixel size, and the target resizes
the task's images to the network's size inside (the attacks perturb at the
task's size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from robustbench_peft import evaluate
from robustbench_peft.cli import main
from robustbench_peft.errors import UserError
from robustbench_peft.runner import Runner, load_task
from robustbench_peft.suite import Suite
from test_models_hub import MEAN, STD, STAND_IN_ROBUSTBENCH, clip_dir  # noqa: F401  (clip_dir: fixture)
from test_tasks_data import CIFAR10_NAMES, fake_cifar10, write_images

ROOT = Path(__file__).resolve().parent.parent
N_CLASSES = len(CIFAR10_NAMES)
PGD = "pgd:steps=2"
AUTOATTACK = "autoattack:version=custom,attacks=apgd-ce,n={n}"
#: AutoAttack's samples per family: the first four, or all eight where the zero-shot stand-in
#: classifies none of the first four correctly (AutoAttack attacks correctly classified samples only).
AUTOATTACK_N = {"open_clip": 8}


def attacks_for(family: str) -> list[str]:
    return [PGD, AUTOATTACK.format(n=AUTOATTACK_N.get(family, 4))]


#: The stand-ins' heads favour this class ("bird": the first CIFAR test image and the third
#: ImageFolder one), so some of the first samples are classified correctly and really attacked.
FAVOURED = 2

pytestmark = pytest.mark.usefixtures("one_thread")


def favour(model: torch.nn.Module, margin: float = 4.0, cls: int = FAVOURED) -> torch.nn.Module:
    """Raise the head's bias of class ``cls`` (the last bias with one entry per class)."""
    biases = [p for n, p in model.named_parameters() if n.endswith("bias") and tuple(p.shape) == (N_CLASSES,)]
    if biases:
        with torch.no_grad():
            biases[-1][cls] += margin
    return model


# -- stand-ins, each saved in its library's own format (reused by test_front_door_defenses.py) ------


def save_timm(folder: Path, arch: str = "test_resnet", size: int = 48, num_classes: int = N_CLASSES, seed: int = 0) -> Path:
    """A timm model in timm's hub layout (config.json + model.safetensors, ``save_for_hf``), native ``size``."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    overlay = {"mean": MEAN, "std": STD, "input_size": (3, size, size), "interpolation": "bilinear"}
    model_args = {"img_size": size} if "vit" in arch else {}
    model = favour(timm.create_model(arch, pretrained=False, num_classes=num_classes, pretrained_cfg_overlay=overlay, **model_args).eval())
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder


def save_torchvision(folder: Path, arch: str = "mobilenet_v3_small", size: int = 40, num_classes: int = N_CLASSES, model_args: dict | None = None, seed: int = 0) -> Path:
    """A torchvision state dict as model.safetensors with the config.json sidecar the family reads."""
    import torchvision
    from safetensors.torch import save_file

    model_args = {"width_mult": 0.25} if model_args is None and arch == "mobilenet_v3_small" else dict(model_args or {})
    torch.manual_seed(seed)
    model = favour(torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **model_args).eval())
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    sidecar = {"num_classes": num_classes, "model_args": model_args, "input_size": [3, size, size], "mean": list(MEAN), "std": list(STD)}
    (folder / "config.json").write_text(json.dumps(sidecar))
    return folder


def save_hf(folder: Path, size: int = 32, num_classes: int = N_CLASSES, seed: int = 0) -> Path:
    """``save_pretrained`` of a tiny ViTForImageClassification and of a ViTImageProcessor whose size is ``size``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=num_classes)
    favour(ViTForImageClassification(config).eval()).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=list(MEAN), image_std=list(STD)).save_pretrained(folder)
    return folder


def save_file_model(folder: Path, size: int = 40, num_classes: int = N_CLASSES, seed: int = 0) -> Path:
    """``file:``: safetensors weights of a timm architecture plus the JSON sidecar naming it."""
    import timm

    from robustbench_peft.models.file_family import export_file_model

    torch.manual_seed(seed)
    model = favour(timm.create_model("test_convnext", pretrained=False, num_classes=num_classes))
    return export_file_model(model, folder / "tiny.safetensors", architecture="timm:test_convnext", num_classes=num_classes, input_shape=(3, size, size), mean=MEAN, std=STD)


@contextmanager
def robustbench_stand_in(root: Path) -> Iterator[Path]:
    """The stand-in ``robustbench`` package of test_models_hub.py on sys.path, with one zoo
    checkpoint in RobustBench's layout (MODEL_DIR/cifar10/Linf/Tiny2099.pt); yields MODEL_DIR."""
    package = root / "site" / "robustbench"
    for relative, text in STAND_IN_ROBUSTBENCH.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    torch.manual_seed(0)
    reference = favour(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, N_CLASSES)))
    checkpoint = root / "zoo" / "cifar10" / "Linf" / "Tiny2099.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": reference.state_dict()}, checkpoint)

    def drop_modules() -> None:
        for name in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
            del sys.modules[name]

    with pytest.MonkeyPatch.context() as mp:
        saved = {m: sys.modules[m] for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")}
        drop_modules()
        mp.syspath_prepend(str(root / "site"))
        try:
            yield root / "zoo"
        finally:
            drop_modules()
            sys.modules.update(saved)


# -- data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CIFAR-10 folder (30 test images) and an ImageFolder of the same ten classes (40x30 images)."""
    root = tmp_path_factory.mktemp("front-door-data")
    fake_cifar10(root / "cifar")
    write_images(root / "folder", {name: 1 for name in CIFAR10_NAMES}, size=(40, 30))
    return {"cifar": root / "cifar", "folder": root / "folder"}


# -- families: spec, the network's own input size, the ImageFolder size to run at --------


@pytest.fixture(scope="module")
def family_specs(tmp_path_factory, clip_dir):  # noqa: F811
    """family -> (spec, native (H, W), ImageFolder task option text); open_clip reuses test_models_hub's folder."""
    root = tmp_path_factory.mktemp("front-door-models")
    clip_folder, _ = clip_dir
    with robustbench_stand_in(root / "rb") as zoo:
        yield {
            "timm": (f"timm:{save_timm(root / 'timm')}", 48, "imagefolder:image_size=32"),
            "torchvision": (f"torchvision:mobilenet_v3_small:{save_torchvision(root / 'tv')}", 40, "imagefolder:image_size=24"),
            "open_clip": (f"open_clip:{clip_folder}", 32, "imagefolder:image_size=24"),
            # the case: a transformers classifier whose processor says 32x32, at the ImageFolder default 224
            "hf": (f"hf:{save_hf(root / 'hf')}", 32, "imagefolder"),
            "file": (f"file:{save_file_model(root / 'file')}", 40, "imagefolder:image_size=32,crop_pct=1.0"),
            "robustbench": (f"robustbench:cifar10/Linf/Tiny2099:model_dir={zoo}", 32, "imagefolder:image_size=24"),
        }


FAMILIES = ["timm", "torchvision", "open_clip", "hf", "file", "robustbench"]


def run_of(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == 1
    return report["runs"][0]


def assert_attacked(run: dict, task: str, spec: str, family: str, n: int = 8) -> None:
    """PGD on every sample and APGD-CE on the first few, at least one of them classified correctly."""
    assert run["task"] == task and run["model"]["spec"] == spec and run["n"] == n
    names = {a["name"] for a in run["attacks"]}
    assert "pgd-2" in names and "autoattack-apgd-ce" in names, names
    n_autoattack = AUTOATTACK_N.get(family, 4)
    assert all(a["n"] == n_autoattack for a in run["attacks"] if a["name"] == "autoattack-apgd-ce")
    assert "1" in run["clean_correct"][:n_autoattack], "AutoAttack had no correctly classified sample to attack"
    for worst in run["worst_case"]:
        assert worst["robust_accuracy"] <= run["clean_accuracy"] + 1e-9 or worst["n"] < n


def assert_loaded_for_task(spec: str, task_text: str, data_dir: Path, native: int) -> None:
    """The runner's target takes the task's images and resizes them to the network's own size."""
    suite = Suite(name="t", task=task_text, models=(spec,), attacks=(), task_options={"data_dir": str(data_dir)})
    task = load_task(suite.task, suite.task_options)
    target = Runner(suite, progress=False).base_target(spec, task)
    assert target.input_shape == task.input_shape and target.n_classes == task.n_classes
    assert target.preprocess.config.input_size[1:] == (native, native)
    assert target.preprocess(task.x_test[:2]).shape[-2:] == (native, native)


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_on_an_imagefolder_at_another_size_than_the_network(family, family_specs, data, tmp_path):
    """(a) ``eval --task imagefolder[:image_size=S] --data-dir DIR --model SPEC`` with PGD and AutoAttack."""
    spec, native, task_text = family_specs[family]
    out = tmp_path / "run"
    attacks = [arg for attack in attacks_for(family) for arg in ("--attack", attack)]
    code = main(["eval", "--task", task_text, "--data-dir", str(data["folder"]), "--model", spec, *attacks, "--n", "8", "--no-checks", "--quiet", "--out", str(out)])
    assert code == 0
    run = run_of(out)
    assert_attacked(run, "imagefolder", spec, family)
    suite = json.loads((out / "report.json").read_text())["suite"]
    assert suite["task"] == "imagefolder" and suite["task_options"]["data_dir"] == str(data["folder"])
    assert_loaded_for_task(spec, task_text, data["folder"], native)


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_on_a_cifar10_folder(family, family_specs, data):
    """(b) ``evaluate(task="cifar10", data_dir=DIR, model=SPEC)`` with PGD and AutoAttack; the timm run keeps the checks on."""
    spec, _, _ = family_specs[family]
    checks = family == "timm"
    report = evaluate(model=spec, task="cifar10", data_dir=data["cifar"], attacks=attacks_for(family), n=8, checks=checks)
    run = report.runs[0]
    assert_attacked(run, "cifar10", spec, family)
    assert report.suite["task"] == "cifar10"
    if checks:
        assert run["checks"], "the checks ran"
        assert {c["name"] for c in run["checks"]} >= {"eval_mode_deterministic", "outputs_are_logits", "input_gradients_informative"}


def test_cli_subprocess_open_clip_zero_shot_on_cifar10(family_specs, data, tmp_path):
    """The issue's command with a local open_clip folder, as a real process: exit 0 and a report."""
    spec, _, _ = family_specs["open_clip"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "robustbench_peft", "eval", "--task", "cifar10", "--data-dir", str(data["cifar"]), "--model", spec,
               "--attack", PGD, "--n", "8", "--no-checks", "--quiet", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = run_of(out)
    assert run["task"] == "cifar10" and run["model"]["spec"] == spec and run["n"] == 8


def test_evaluate_takes_the_task_with_its_options(family_specs, data):
    """``evaluate(task="imagefolder:image_size=32,data_dir=DIR")``: the options reach the task and the report."""
    spec, _, _ = family_specs["timm"]
    report = evaluate(model=spec, task=f"imagefolder:image_size=32,crop_pct=1.0,data_dir={data['folder']}", attacks=[PGD], n=4, checks=False)
    assert report.suite["task"] == "imagefolder"
    assert report.suite["task_options"] == {"image_size": "32", "crop_pct": "1.0", "data_dir": str(data["folder"])}
    assert report.runs[0]["n"] == 4


def test_model_options_in_the_spec_reach_the_loader(family_specs, data):
    """``open_clip:DIR:templates=simple`` and ``class_names=a+b`` from the spec; task hints fill the rest."""
    from robustbench_peft.models import load_target, split_options
    from robustbench_peft.models.hub import load_for_task, task_options

    spec, _, _ = family_specs["open_clip"]
    folder = spec.split(":", 1)[1]
    assert split_options(f"{spec}:templates=simple") == (spec, {"templates": "simple"})
    assert split_options("torchvision:resnet18:IMAGENET1K_V1") == ("torchvision:resnet18:IMAGENET1K_V1", {})
    task = load_task("cifar10", {"data_dir": str(data["cifar"])})
    simple = load_for_task(f"{spec}:templates=simple", task)
    direct = load_target(spec, class_names=task.class_names, templates="simple", input_shape=task.input_shape)
    assert simple.name == f"{spec}:templates=simple" and simple.input_shape == (3, 32, 32)
    assert torch.equal(simple.model.class_embeddings, direct.model.class_embeddings)
    assert not torch.equal(simple.model.class_embeddings, load_for_task(spec, task).model.class_embeddings)  # default: ensemble
    assert set(task_options(f"{spec}:class_names=cat+dog", task)) == {"input_shape"}
    two = load_target(f"open_clip:{folder}:class_names=cat+dog,templates=simple")
    assert two.n_classes == 2
    with pytest.raises(UserError, match=r"unknown option 'templatez'.*templates"):
        load_target(f"{spec}:templatez=simple", class_names=["a", "b"])
    timm_spec, _, _ = family_specs["timm"]
    assert load_target(f"{timm_spec}:input_shape=3x24x24").input_shape == (3, 24, 24)
    with pytest.raises(UserError, match="input_shape must be"):
        load_target(f"{timm_spec}:input_shape=big")


def test_bad_task_options_are_one_line_errors(data, tmp_path, capsys):
    folder = str(data["folder"])
    assert main(["eval", "--task", "imagefolder:image_sise=32", "--data-dir", folder, "--model", "digits:cnn", "--quiet", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown option 'image_sise'" in err and "image_size" in err
    assert main(["eval", "--task", "imagefolder:image_size=big", "--data-dir", folder, "--quiet", "--out", str(tmp_path / "b")]) == 2
    assert "image_size='big' is not a valid int" in capsys.readouterr().err
    assert main(["eval", "--task", f"imagefolder:data_dir={folder}", "--data-dir", str(tmp_path), "--quiet", "--out", str(tmp_path / "c")]) == 2
    assert "two data directories" in capsys.readouterr().err
    assert main(["eval", "--task", "imagefolder:image_size", "--quiet", "--out", str(tmp_path / "d")]) == 2
    assert "expected key=value" in capsys.readouterr().err


def test_task_options_belong_to_their_task():
    from robustbench_peft.suite import task_overrides

    suite = Suite(name="s", task="imagefolder:image_size=32", models=(), attacks=(), task_options={"data_dir": "/d"})
    assert suite.task == "imagefolder" and suite.task_options == {"data_dir": "/d", "image_size": "32"}
    assert suite.with_overrides(task="cifar10").task_options == {}
    assert suite.with_overrides(task="imagefolder:crop_pct=1.0").task_options == {"data_dir": "/d", "image_size": "32", "crop_pct": "1.0"}
    assert task_overrides(suite, None, "/e") == (None, {"data_dir": "/e", "image_size": "32"})
    assert task_overrides(suite, "cifar10", "/c") == ("cifar10", {"data_dir": "/c"})
    assert Suite.from_json(suite.to_json()).task_options == {"data_dir": "/d", "image_size": "32"}


def test_transfer_loads_its_surrogates_for_the_task(tmp_path, data, family_specs):
    """A timm surrogate (native 48x48) transfers to a file model on an ImageFolder at 32x32: the
    surrogate is loaded for the task, as the target is, and resizes inside."""
    target_spec, _, task_text = family_specs["file"]
    surrogate_spec = family_specs["timm"][0]
    out = tmp_path / "run"
    code = main(["eval", "--task", task_text, "--data-dir", str(data["folder"]), "--model", target_spec,
                 "--attack", f"transfer:surrogates={surrogate_spec},methods=pgd,steps=2", "--n", "8", "--no-checks", "--out", str(out), "--quiet"])
    assert code == 0
    (record,) = run_of(out)["attacks"]
    assert record["kind"] == "transfer" and record["details"]["pairs"] == [f"{surrogate_spec}/pgd"]
