"""Preprocessing that lives inside a target: resize to the network's input size, then normalise.

Attacks perturb ``[0,1]`` images of the task's size; each model family reads
its own pretrained configuration (size, interpolation, mean, std) into a
:class:`PreprocessConfig`, and :class:`Preprocess` applies it as differentiable
torch operations, so the attacked graph is the whole pipeline. Cropping is the
task's job (it decides which pixels exist); the target only rescales them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..targets import ClassifierTarget, Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
#: Names other libraries use for the same resampling filters (PIL codes included).
INTERPOLATION_ALIASES: dict[Any, str] = {
    "nearest": "nearest",
    "bilinear": "bilinear",
    "linear": "bilinear",
    "bicubic": "bicubic",
    "cubic": "bicubic",
    "area": "area",
    "box": "area",
    "lanczos": "bicubic",
    "random": "bilinear",
    0: "nearest",
    1: "bicubic",  # PIL.Image.LANCZOS
    2: "bilinear",
    3: "bicubic",
    4: "area",  # PIL.Image.BOX
    5: "bilinear",  # PIL.Image.HAMMING
}


def interpolation_name(value: Any) -> str:
    """Map a library's interpolation name or PIL code onto a torch interpolation mode."""
    key = getattr(value, "value", value)  # enums such as torchvision's InterpolationMode
    if isinstance(key, str):
        key = key.lower()
    if key not in INTERPOLATION_ALIASES:
        raise UserError(f"unknown interpolation {value!r}; use one of {', '.join(INTERPOLATIONS)}")
    return INTERPOLATION_ALIASES[key]


@dataclass(frozen=True)
class PreprocessConfig:
    """What a network expects: input size (C, H, W), interpolation and per-channel mean/std."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.input_size)
        if len(size) == 2:
            size = (len(self.mean), *size)
        if len(size) != 3 or min(size) < 1:
            raise UserError(f"invalid input size {self.input_size!r}: expected (C, H, W)")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in _per_channel(self.mean, size[0], "mean")))
        object.__setattr__(self, "std", tuple(float(s) for s in _per_channel(self.std, size[0], "std")))
        if min(self.std) <= 0:
            raise UserError(f"std must be positive, got {self.std}")
        object.__setattr__(self, "interpolation", interpolation_name(self.interpolation))

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _per_channel(values: Sequence[float] | float, channels: int, what: str) -> Sequence[float]:
    values = [values] if isinstance(values, (int, float)) else list(values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserError(f"{what} has {len(values)} values for {channels} input channels")
    return values


def square(size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` or ``[224]`` -> ``(224, 224)``; ``(h, w)`` and ``(c, h, w)`` give ``(h, w)``."""
    values = (int(size),) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) in (2, 3):
        return (values[-2], values[-1])
    raise UserError(f"invalid image size {size!r}")


class Preprocess(nn.Module):
    """``[0,1]`` images -> network input: channel repeat for grey inputs, resize, normalise."""

    def __init__(self, config: PreprocessConfig) -> None:
        super().__init__()
        self.config = config
        self.normalize = Normalize(config.mean, config.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.config.input_size
        if x.shape[1] == 1 and channels > 1:
            x = x.expand(-1, channels, -1, -1)
        if tuple(x.shape[-2:]) != (height, width):
            mode = self.config.interpolation
            shrinking = x.shape[-2] > height or x.shape[-1] > width
            kwargs: dict[str, Any] = {} if mode in ("nearest", "area") else {"align_corners": False, "antialias": shrinking}
            x = F.interpolate(x, size=(height, width), mode=mode, **kwargs)
        return self.normalize(x)

    def extra_repr(self) -> str:
        return f"{self.config}"


def resolve_input_shape(input_shape: Sequence[int] | None, config: PreprocessConfig, spec: str) -> tuple[int, int, int]:
    """The pixel-space shape attacks see: the task's (when given) or the network's own input size."""
    if input_shape is None or (isinstance(input_shape, str) and not input_shape):
        return config.input_size
    try:
        if isinstance(input_shape, str):
            input_shape = [int(v) for v in input_shape.replace("x", ",").replace("+", ",").split(",") if v.strip()]
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise UserError(f"{spec}: input_shape must be (C, H, W), e.g. 3x32x32, got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"{spec}: input_shape must be (C, H, W), got {input_shape!r}")
    if shape[0] not in (1, config.input_size[0]):
        raise UserError(f"{spec}: the task gives {shape[0]}-channel images but the model expects {config.input_size[0]} channels")
    return shape  # type: ignore[return-value]


def freeze(model: nn.Module) -> nn.Module:
    """Evaluation targets start frozen (defenses unfreeze what they train)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def make_target(
    model: nn.Module,
    n_classes: int,
    config: PreprocessConfig,
    spec: str,
    input_shape: Sequence[int] | None = None,
) -> ClassifierTarget:
    """A frozen :class:`ClassifierTarget` with :class:`Preprocess` built from ``config``."""
    if n_classes < 1:
        raise UserError(f"{spec}: the model has no classification head (0 classes); load a classifier checkpoint")
    shape = resolve_input_shape(input_shape, config, spec)
    return ClassifierTarget(freeze(model), n_classes=n_classes, input_shape=shape, preprocess=Preprocess(config), name=spec)
