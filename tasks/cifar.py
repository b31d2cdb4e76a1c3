"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (``cifar-10-batches-py`` / ``cifar-100-python``).

The test split keeps the file's order, so ``test_subset(n)`` is the first n test
images, as RobustBench evaluates. Batches are read with an unpickler that only
rebuilds numpy arrays, lists, dicts and strings: a tampered file cannot run code.
Data are downloaded (through torchvision, checksums verified) only when no local
copy exists and the network answers; otherwise the error says to pass --data-dir.
"""

from __future__ import annotations

import functools
import importlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_peft.cache import cache_dir
from robustbench_peft.errors import UserError
from robustbench_peft.models.offline import network_allowed, offline_reason
from robustbench_peft.registry import register_task
from robustbench_peft.task import ClassificationTask

DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/"
DEFAULT_EPS = {"Linf": [8 / 255], "L2": [0.5]}


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches, labels and class names."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str
    labels_key: str
    torchvision_class: str
    archive: str


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        "batches.meta", "label_names", "labels", "CIFAR10", "cifar-10-python.tar.gz",
    ),
    "cifar100": CifarLayout(
        "cifar100", "cifar-100-python", ("train",), ("test",), "meta", "fine_label_names", "fine_labels", "CIFAR100",
        "cifar-100-python.tar.gz",
    ),
}


def _numpy_core() -> Any:
    return importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")


#: (module, name) globals a CIFAR batch may reference: numpy array reconstruction and bytes decoding.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core()._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core()._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_core().scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_core().scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: __import__("codecs").encode,
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        return ALLOWED_GLOBALS[(module, name)]()


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys."""
    try:
        with open(path, "rb") as fh:
            raw = ArrayUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"{path}: not a readable CIFAR batch ({exc}); re-extract the archive") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a CIFAR batch (expected a dict, found {type(raw).__name__})")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_split(folder: Path, files: tuple[str, ...], layout: CifarLayout, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,3,32,32) float in [0,1] and int64 labels of the first ``limit`` examples of ``files``."""
    images, labels, count = [], [], 0
    for name in files:
        if count >= limit:
            break
        batch = read_batch(folder / name)
        if "data" not in batch or layout.labels_key not in batch:
            raise UserError(f"{folder / name}: missing 'data' or '{layout.labels_key}'; is this {layout.name}?")
        take = limit - count
        data = np.asarray(batch["data"], dtype=np.uint8)[:take]
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{folder / name}: expected rows of 3072 pixel bytes, found shape {data.shape}")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(np.asarray(batch[layout.labels_key][:take], dtype=np.int64)))
        count += len(data)
    if not images:
        return torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.int64)
    return torch.cat(images).float().div_(255), torch.cat(labels)


def find_folder(root: Path, layout: CifarLayout) -> Path | None:
    """``root/<folder>`` or ``root`` itself when it already is the batches folder."""
    for candidate in (root / layout.folder, root):
        if all((candidate / f).is_file() for f in (*layout.test_files, layout.meta_file)):
            return candidate
    return None


def download(root: Path, layout: CifarLayout) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, layout.torchvision_class)(str(root), train=False, download=True)
    except Exception as exc:  # network trouble, a full disk, a checksum mismatch
        raise UserError(f"{layout.name}: download into {root} failed ({exc}); download {DOWNLOAD_URL}{layout.archive}, extract it and pass --data-dir") from None


def resolve_folder(data_dir: str, layout: CifarLayout) -> Path:
    root = Path(data_dir).expanduser() if data_dir else cache_dir() / "data"
    folder = find_folder(root, layout)
    if folder is not None:
        return folder
    if not network_allowed(DOWNLOAD_URL):
        where = f"no {layout.folder} in {root}" if data_dir else "no local copy (no --data-dir given)"
        raise UserError(
            f"{layout.name}: {where} and no download possible ({offline_reason(DOWNLOAD_URL)}); extract "
            f"{layout.archive} ({DOWNLOAD_URL}{layout.archive}) and pass --data-dir DIR, the folder holding {layout.folder}"
        )
    download(root, layout)
    folder = find_folder(root, layout)
    if folder is None:
        raise UserError(f"{layout.name}: downloaded into {root} but found no {layout.folder}; pass --data-dir")
    return folder


@functools.lru_cache(maxsize=2)
def load_cifar(name: str, data_dir: str, max_test: int, max_train: int) -> ClassificationTask:
    """Read (or download, then read) one CIFAR variant; cached per arguments."""
    layout = LAYOUTS[name]
    if max_test < 1 or max_train < 0:
        raise UserError(f"{name}: max_test must be >= 1 and max_train >= 0, got {max_test} and {max_train}")
    folder = resolve_folder(data_dir, layout)
    meta = read_batch(folder / layout.meta_file)
    class_names = [_text(n) for n in meta.get(layout.names_key, [])]
    x_test, y_test = read_split(folder, layout.test_files, layout, max_test)
    present = all((folder / f).is_file() for f in layout.train_files)
    x_train, y_train = read_split(folder, layout.train_files, layout, max_train if present else 0)
    if not class_names or (len(y_test) and int(y_test.max()) >= len(class_names)):
        raise UserError(f"{folder}: class names in {layout.meta_file} do not cover the labels; re-extract the archive")
    return ClassificationTask(
        name=name,
        class_names=class_names,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        default_eps={k: list(v) for k, v in DEFAULT_EPS.items()},
        description=f"{name} from {folder}: 3x32x32, {len(class_names)} classes, {len(y_train)} train / {len(y_test)} test (file order)",
    )


@register_task("cifar10")
def cifar10(data_dir: str = "", max_test: int = 10000, max_train: int = 50000) -> ClassificationTask:
    """CIFAR-10 (torchvision's format; --data-dir DIR, download only with network), first-n test images, Linf 8/255 / L2 0.5."""
    return load_cifar("cifar10", data_dir, max_test, max_train)


@register_task("cifar100")
def cifar100(data_dir: str = "", max_test: int = 10000, max_train: int = 50000) -> ClassificationTask:
    """CIFAR-100 fine labels (torchvision's format; --data-dir DIR, download only with network), Linf 8/255 / L2 0.5."""
    return load_cifar("cifar100", data_dir, max_test, max_train)
