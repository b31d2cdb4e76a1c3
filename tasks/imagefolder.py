"""ImageFolder: a directory with one sub-folder of images per class.

Images are resized (shorter side to ``image_size / crop_pct``) and centre-cropped
to ``image_size``, RobustBench's ImageNet recipe (256 -> 224 by default). The test
split interleaves the classes (first image of every class, then the second...)
so the first n test images are class-balanced and always the same; at most
``max_test`` images are decoded, which bounds memory.

Labels: ``sorted`` numbers the class folders alphabetically; ``imagenet`` reads
folder names as ImageNet-1k synsets (n01440764...) and uses their ImageNet
indices and names, so a subset of ImageNet classes still matches a 1000-class
model; ``auto`` picks ``imagenet`` when every folder is a known synset.
Default budgets are RobustBench's ImageNet ones: Linf 4/255, L2 3.0.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch

from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_task
from robustbench_peft.task import ClassificationTask

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
DEFAULT_EPS = {"Linf": [4 / 255], "L2": [3.0]}


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted), with clear errors for the usual layout mistakes."""
    if not root.is_dir():
        raise UserError(f"imagefolder: {root} is not a directory; pass --data-dir DIR with one sub-folder of images per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise UserError(
            f"imagefolder: {len(loose)} images lie directly in {root} (e.g. {loose[0]}); put every image in the folder "
            f"of its class, {root}/CLASS/{loose[0]}"
        )
    classes = {p.name: sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) for p in folders}
    if not classes:
        raise UserError(f"imagefolder: {root} has no class folders; expected {root}/CLASS/IMAGE.jpg for every class")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise UserError(
            f"imagefolder: class folder(s) {', '.join(empty[:5])} in {root} hold no images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}); remove them or add images"
        )
    return classes


def interleave(classes: dict[str, list[Path]], limit: int) -> list[tuple[Path, str]]:
    """Round-robin over classes (in name order) until ``limit`` files: a balanced, fixed order."""
    order: list[tuple[Path, str]] = []
    depth = max(len(files) for files in classes.values())
    for i in range(depth):
        for name, files in classes.items():
            if i < len(files):
                order.append((files[i], name))
                if len(order) == limit:
                    return order
    return order


def sorted_labels(names: list[str]) -> tuple[list[str], dict[str, int]]:
    return list(names), {name: i for i, name in enumerate(names)}


@functools.lru_cache(maxsize=1)
def _imagenet_info() -> tuple[list[str], list[str]]:
    """(synsets in ImageNet-1k index order, their first English names), from timm's bundled tables."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    synsets = list(info.label_names())
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(len(synsets))]
    return synsets, names


def imagenet_labels(names: list[str]) -> tuple[list[str], dict[str, int]]:
    synsets, readable = _imagenet_info()
    index = {s: i for i, s in enumerate(synsets)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise UserError(f"imagefolder: labels=imagenet but {', '.join(unknown[:5])} are not ImageNet-1k synsets (e.g. n01440764)")
    return readable, {n: index[n] for n in names}


LABELINGS: dict[str, Callable[[list[str]], tuple[list[str], dict[str, int]]]] = {"sorted": sorted_labels, "imagenet": imagenet_labels}


def choose_labeling(labels: str, names: list[str]) -> str:
    if labels == "auto":
        synsets = set(_imagenet_info()[0]) if all(len(n) == 9 and n.startswith("n") and n[1:].isdigit() for n in names) else set()
        return "imagenet" if synsets and all(n in synsets for n in names) else "sorted"
    if labels not in LABELINGS:
        raise UserError(f"imagefolder: labels must be auto, {' or '.join(LABELINGS)}, got {labels!r}")
    return labels


def load_images(items: list[tuple[Path, str]], mapping: dict[str, int], image_size: int, crop_pct: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode, resize, centre-crop: (N,3,S,S) floats in [0,1] and int64 labels."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    resize = int(round(image_size / crop_pct))
    x = torch.empty(len(items), 3, image_size, image_size)
    for i, (path, name) in enumerate(items):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"imagefolder: cannot read image {path} ({exc}); remove or replace it") from None
        image = TF.center_crop(TF.resize(image, resize, interpolation=TF.InterpolationMode.BILINEAR), [image_size, image_size])
        x[i] = TF.pil_to_tensor(image).float().div_(255)
    y = torch.tensor([mapping[name] for _, name in items], dtype=torch.int64)
    return x, y


@register_task("imagefolder")
@functools.lru_cache(maxsize=2)
def imagefolder(
    data_dir: str = "",
    image_size: int = 224,
    crop_pct: float = 0.875,
    max_test: int = 1000,
    labels: str = "auto",
    train_dir: str = "",
    max_train: int = 5000,
) -> ClassificationTask:
    """A folder of class folders (--data-dir DIR): resize/centre-crop to image_size, class-interleaved first-n test images."""
    if not data_dir:
        raise UserError("imagefolder needs --data-dir DIR: a folder with one sub-folder of images per class")
    if image_size < 1 or not 0 < crop_pct <= 1 or max_test < 1 or max_train < 0:
        raise UserError("imagefolder: need image_size >= 1, 0 < crop_pct <= 1, max_test >= 1 and max_train >= 0")
    root = Path(data_dir).expanduser()
    classes = class_folders(root)
    labeling = choose_labeling(labels, list(classes))
    if labeling == "sorted" and len(classes) < 2:
        raise UserError(f"imagefolder: {root} has a single class folder; a classification task needs at least two")
    class_names, mapping = LABELINGS[labeling](list(classes))
    x_test, y_test = load_images(interleave(classes, max_test), mapping, image_size, crop_pct)
    x_train, y_train = torch.empty(0, 3, image_size, image_size), torch.empty(0, dtype=torch.int64)
    if train_dir:
        train_classes = class_folders(Path(train_dir).expanduser())
        extra = sorted(set(train_classes) - set(mapping))
        if extra:
            raise UserError(f"imagefolder: train_dir has classes the test folder lacks: {', '.join(extra[:5])}")
        if max_train:
            x_train, y_train = load_images(interleave(train_classes, max_train), mapping, image_size, crop_pct)
    return ClassificationTask(
        name="imagefolder",
        class_names=class_names,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        default_eps={k: list(v) for k, v in DEFAULT_EPS.items()},
        description=(
            f"image folder {root}: {len(classes)} class folders ({labeling} labels), 3x{image_size}x{image_size}, "
            f"{len(y_train)} train / {len(y_test)} test (class-interleaved)"
        ),
    )
