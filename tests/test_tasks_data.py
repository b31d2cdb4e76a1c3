"""CIFAR in torchvision's on-disk format and ImageFolder directories, written here and loaded back."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_peft.cli import main
from robustbench_peft.errors import UserError
from robustbench_peft.runner import load_task

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_batch(path: Path, content: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(content, fh, protocol=2)


def fake_cifar10(root: Path, n_test: int = 30, n_train_per_batch: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """A cifar-10-batches-py folder in torchvision's layout with random pixels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for name, n in [("test_batch", n_test)] + [(f"data_batch_{i}", n_train_per_batch) for i in range(1, 6)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        write_batch(folder / name, {"batch_label": name, "data": data, "labels": labels, "filenames": [f"{i}.png" for i in range(n)]})
        arrays[name] = data
        arrays[name + "/labels"] = np.array(labels)
    write_batch(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": n_train_per_batch, "num_vis": 3072})
    return arrays


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, fake_cifar10(root)


def test_cifar10_reads_torchvision_layout_in_file_order(cifar_dir):
    root, arrays = cifar_dir
    task = load_task("cifar10", {"data_dir": str(root)})
    assert task.class_names == CIFAR10_NAMES and task.input_shape == (3, 32, 32)
    expected = torch.from_numpy(arrays["test_batch"].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(task.x_test, expected)
    assert torch.equal(task.y_test, torch.from_numpy(arrays["test_batch/labels"]))
    assert len(task.y_train) == 30 and task.x_train.shape[1:] == (3, 32, 32)
    x, y = task.test_subset(7)
    assert torch.equal(x, expected[:7]) and len(y) == 7
    assert task.default_eps["Linf"] == pytest.approx([8 / 255]) and task.default_eps["L2"] == [0.5]
    # the batches folder itself works as --data-dir too; limits bound what is read
    small = load_task("cifar10", {"data_dir": str(root / "cifar-10-batches-py"), "max_test": "5", "max_train": "0"})
    assert len(small.y_test) == 5 and len(small.y_train) == 0


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"class_{i}" for i in range(100)]
    for split, n in (("train", 12), ("test", 9)):
        write_batch(folder / split, {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)), "coarse_labels": [0] * n})
    write_batch(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["c"] * 20})
    task = load_task("cifar100", {"data_dir": str(tmp_path)})
    assert task.n_classes == 100 and task.y_test.tolist() == list(range(9)) and len(task.y_train) == 12


def test_cifar_missing_data_offline_says_pass_data_dir(tmp_path):
    with pytest.raises(UserError, match="--data-dir") as info:
        load_task("cifar10", {"data_dir": str(tmp_path / "empty")})
    assert "HF_HUB_OFFLINE" in str(info.value)


def test_cifar_batches_never_run_code(tmp_path):
    import os

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    write_batch(folder / "test_batch", {"data": Exploit(), "labels": []})
    write_batch(folder / "batches.meta", {"label_names": CIFAR10_NAMES})
    with pytest.raises(UserError, match="not a readable CIFAR batch"):
        load_task("cifar10", {"data_dir": str(tmp_path), "max_train": "0"})
    assert not marker.exists()


def test_cli_eval_cifar10_with_a_file_model(cifar_dir, tmp_path):
    import timm

    from robustbench_peft.models.file_family import export_file_model

    root, _ = cifar_dir
    torch.manual_seed(0)
    model = timm.create_model("test_convnext", pretrained=False, num_classes=10)
    path = export_file_model(
        model, tmp_path / "tiny.safetensors", architecture="timm:test_convnext", num_classes=10,
        input_shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
    )
    out = tmp_path / "report"
    code = main(["eval", "--task", "cifar10", "--data-dir", str(root), "--model", f"file:{path}", "--attack", "pgd:steps=3",
                 "--n", "8", "--no-checks", "--quiet", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    run = report["runs"][0]
    assert run["task"] == "cifar10" and run["n"] == 8 and run["model"]["spec"] == f"file:{path}"
    worst = run["worst_case"][0]
    assert worst["eps"] == pytest.approx(8 / 255) and worst["robust_accuracy"] <= run["clean_accuracy"]


# -- ImageFolder -----------------------------------------------------------------------


def write_images(folder: Path, per_class: dict[str, int], size=(40, 30), seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in per_class.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"img{i}.png")


def test_imagefolder_balanced_first_n(tmp_path):
    write_images(tmp_path, {"cat": 3, "dog": 2, "emu": 3})
    task = load_task("imagefolder", {"data_dir": str(tmp_path), "image_size": "16", "crop_pct": "1.0"})
    assert task.class_names == ["cat", "dog", "emu"] and task.input_shape == (3, 16, 16)
    assert task.y_test.tolist() == [0, 1, 2, 0, 1, 2, 0, 2]
    assert task.x_test.min() >= 0 and task.x_test.max() <= 1 and len(task.y_train) == 0
    from PIL import Image
    from torchvision.transforms import functional as TF

    with Image.open(tmp_path / "dog" / "img1.png") as image:
        expected = TF.pil_to_tensor(TF.center_crop(TF.resize(image.convert("RGB"), 16), [16, 16])).float() / 255
    assert torch.allclose(task.x_test[4], expected)
    assert len(load_task("imagefolder", {"data_dir": str(tmp_path), "image_size": "16", "max_test": "4"}).y_test) == 4


def test_imagefolder_imagenet_synsets(tmp_path):
    write_images(tmp_path / "val", {"n01443537": 1, "n01440764": 2}, size=(20, 20))
    task = load_task("imagefolder", {"data_dir": str(tmp_path / "val"), "image_size": "8"})
    assert task.n_classes == 1000 and task.class_names[0] == "tench" and task.class_names[1] == "goldfish"
    assert task.y_test.tolist() == [0, 1, 0]


def test_imagefolder_layout_errors(tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        load_task("imagefolder", {})
    with pytest.raises(UserError, match="not a directory"):
        load_task("imagefolder", {"data_dir": str(tmp_path / "nope")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_task("imagefolder", {"data_dir": str(tmp_path / "empty")})
    write_images(tmp_path / "loose", {"a": 1, "b": 1}, size=(8, 8))
    (tmp_path / "loose" / "a" / "img0.png").rename(tmp_path / "loose" / "stray.png")
    with pytest.raises(UserError, match="directly in"):
        load_task("imagefolder", {"data_dir": str(tmp_path / "loose")})
    (tmp_path / "loose" / "stray.png").unlink()
    with pytest.raises(UserError, match="hold no images"):
        load_task("imagefolder", {"data_dir": str(tmp_path / "loose")})
    write_images(tmp_path / "one", {"only": 2}, size=(8, 8))
    with pytest.raises(UserError, match="single class"):
        load_task("imagefolder", {"data_dir": str(tmp_path / "one")})
    write_images(tmp_path / "bad", {"a": 1, "b": 1}, size=(8, 8))
    (tmp_path / "bad" / "b" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image"):
        load_task("imagefolder", {"data_dir": str(tmp_path / "bad")})
