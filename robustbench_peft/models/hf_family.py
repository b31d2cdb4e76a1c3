"""``hf:`` specs: transformers image classifiers with their image processor's preprocessing inside.

``hf:ORG/REPO`` (the Hugging Face hub) or ``hf:DIR`` (a folder written by
``save_pretrained`` of the model and of its image processor). The processor's
``preprocessor_config.json`` gives the input size, resampling filter, rescale
factor and mean/std; they become one differentiable resize + normalise.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..registry import register_model
from ..targets import ClassifierTarget
from .offline import hub_access, weights_only_loading
from .preprocessing import PreprocessConfig, make_target, square
from .sources import local_dir

HINT = "hf:/path/to/folder (model.save_pretrained(dir) and image_processor.save_pretrained(dir))"


class LogitsOf(nn.Module):
    """A transformers classifier called with ``pixel_values``, returning plain logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def processor_size(processor: dict[str, Any], model_config: Any) -> tuple[int, int]:
    """The (H, W) the network sees: the crop when the processor crops, else its resize target."""
    if processor.get("do_center_crop") and processor.get("crop_size"):
        size = processor["crop_size"]
    else:
        size = processor.get("size") or getattr(model_config, "image_size", None)
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        edge = size.get("shortest_edge") or size.get("longest_edge")
        if edge:
            return square(int(edge))
        raise UserError(f"unsupported image processor size {size!r}")
    if size is None:
        raise UserError("the image processor config gives no input size")
    return square(size if isinstance(size, int) else list(size))


def preprocess_config(processor: dict[str, Any], model_config: Any) -> PreprocessConfig:
    """Fold rescale and normalisation into one per-channel ``(x - mean) / std`` on [0,1] pixels.

    A processor maps 0..255 pixels p to ``(p * r - mean) / std`` (``r`` the rescale factor,
    1 without rescaling); with ``p = 255 x`` that is ``(x - mean / s) / (std / s)``, ``s = 255 r``.
    """
    scale = 255.0 * float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 255.0
    channels = int(getattr(model_config, "num_channels", 3))
    if processor.get("do_normalize", True):
        mean = processor.get("image_mean", [0.5] * channels)
        std = processor.get("image_std", [0.5] * channels)
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    mean = [mean] * channels if isinstance(mean, (int, float)) else list(mean)
    std = [std] * channels if isinstance(std, (int, float)) else list(std)
    return PreprocessConfig(
        (channels, *processor_size(processor, model_config)),
        tuple(m / scale for m in mean),
        tuple(s / scale for s in std),
        processor.get("resample", 2),
    )


def load(name: str, spec: str) -> tuple[nn.Module, dict[str, Any]]:
    """(transformers model in eval mode, image processor config dict)."""
    from transformers import AutoModelForImageClassification
    from transformers.image_processing_base import ImageProcessingMixin

    folder = local_dir(name, spec, "config.json, the weights and preprocessor_config.json")
    source = str(folder) if folder is not None else name
    access = nullcontext() if folder is not None else hub_access(spec, HINT)
    try:
        with access, weights_only_loading(spec):
            model = AutoModelForImageClassification.from_pretrained(source)
            processor, _ = ImageProcessingMixin.get_image_processor_dict(source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{spec}: transformers could not load it ({first}); pass {HINT}") from None
    return model.eval(), processor


@register_model("hf")
def hf_model(name: str, input_shape: Sequence[int] | None = None) -> ClassifierTarget:
    """transformers image classifiers: hf:ORG/REPO or hf:DIR (save_pretrained of model and image processor)."""
    spec = f"hf:{name}"
    model, processor = load(name, spec)
    config = preprocess_config(processor, model.config)
    return make_target(LogitsOf(model), int(model.config.num_labels), config, spec, input_shape)
