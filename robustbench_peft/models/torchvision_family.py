"""``torchvision:`` specs: torchvision classifiers with their weights' preprocessing inside.

``torchvision:NAME`` (the DEFAULT weights), ``torchvision:NAME:WEIGHTS`` (a
weights enum name such as IMAGENET1K_V1) and ``torchvision:NAME:PATH`` with PATH
a ``.safetensors`` state dict or a folder holding ``model.safetensors``; an
optional ``config.json`` next to it (or ``NAME.json`` beside a file) gives
``num_classes``, ``model_args``, ``input_size``, ``mean``, ``std`` and
``interpolation``. Without it, ImageNet's mean/std at 224 pixels are assumed,
as for torchvision's own weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..registry import register_model
from ..targets import ClassifierTarget
from .offline import download_errors, missing_download, network_allowed, weights_only_loading
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig, make_target, square
from .sources import local_path

HINT = "torchvision:NAME:/path/to/model.safetensors (a state dict; config.json beside it for num_classes, mean, std, input_size)"
WEIGHTS_FILE = "model.safetensors"
SIDECAR = "config.json"
#: Builder arguments for architectures whose defaults do not suit evaluation (no auxiliary heads, no slow init).
BUILD_DEFAULTS: dict[str, dict[str, Any]] = {
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
}


def weights_enum(arch: str, spec: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        names = ", ".join(sorted(torchvision.models.list_models(torchvision.models))[:12])
        raise UserError(f"{spec}: torchvision has no classification model {arch!r} (e.g. {names}, ...)") from None


def pretrained_weights(arch: str, tag: str, spec: str) -> Any:
    enum = weights_enum(arch, spec)
    try:
        return enum[tag or "DEFAULT"]
    except KeyError:
        valid = ", ".join(["DEFAULT", *enum.__members__])
        raise UserError(f"{spec}: {arch} has no weights {tag!r}; choose one of {valid}, or pass {HINT}") from None


def cached_checkpoint(url: str) -> Path:
    """Where torch.hub keeps the file of ``url`` (the same place torchvision looks)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_pretrained(arch: str, tag: str, spec: str) -> tuple[nn.Module, PreprocessConfig, int]:
    """torchvision's builder with its weights enum, downloading only when the network allows."""
    import torchvision

    weights = pretrained_weights(arch, tag, spec)
    hint = f"torchvision:{arch}:/path/to/{arch}.safetensors"
    offline = not cached_checkpoint(weights.url).exists() and not network_allowed(weights.url)
    if offline:
        raise missing_download(spec, weights.url, hint)
    with download_errors(spec, hint, weights.url, offline), weights_only_loading(spec):
        model = torchvision.models.get_model(arch, weights=weights)
    transform = weights.transforms()
    config = PreprocessConfig(
        (3, *square(list(transform.crop_size))), tuple(transform.mean), tuple(transform.std), transform.interpolation
    )
    return model, config, len(weights.meta["categories"])


def read_sidecar(weights_file: Path) -> dict[str, Any]:
    for candidate in (weights_file.with_suffix(".json"), weights_file.parent / SIDECAR):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{candidate}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    return {}


def infer_num_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The class count the state dict was trained with, when only the head differs from ``model``."""
    own = model.state_dict()
    counts = {state[k].shape[0] for k in state if k in own and state[k].shape != own[k].shape and state[k].dim() > 0}
    return counts.pop() if len(counts) == 1 else None


def build(arch: str, num_classes: int | None, model_args: dict[str, Any], spec: str) -> nn.Module:
    import torchvision

    kwargs = {**BUILD_DEFAULTS.get(arch, {}), **model_args}
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    try:
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{spec}: cannot build torchvision {arch} with {kwargs}: {exc}") from None


def load_state(model: nn.Module, state: dict[str, torch.Tensor], spec: str, source: Path) -> nn.Module:
    """Strict ``load_state_dict`` with a readable error."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"{spec}: {source} does not fit the architecture: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
    return model


def load_local(arch: str, path: Path, spec: str) -> tuple[nn.Module, PreprocessConfig, int]:
    """A torchvision architecture with a local safetensors state dict and optional sidecar."""
    from safetensors.torch import load_file

    weights_file = path / WEIGHTS_FILE if path.is_dir() else path
    if weights_file.suffix != ".safetensors" or not weights_file.is_file():
        raise UserError(f"{spec}: expected a .safetensors state dict (or a folder holding {WEIGHTS_FILE}), got {path}")
    weights_enum(arch, spec)
    config = read_sidecar(weights_file)
    state = load_file(str(weights_file))
    num_classes = config.get("num_classes")
    model = build(arch, num_classes, config.get("model_args", {}), spec)
    if num_classes is None:
        inferred = infer_num_classes(model, state)
        if inferred is not None:
            model = build(arch, inferred, config.get("model_args", {}), spec)
    load_state(model, state, spec, weights_file)
    size = config.get("input_size", [3, 224, 224])
    preprocess = PreprocessConfig(
        tuple(size) if len(size) == 3 else (3, *square(size)),
        tuple(config.get("mean", IMAGENET_MEAN)),
        tuple(config.get("std", IMAGENET_STD)),
        config.get("interpolation", "bilinear"),
    )
    n_classes = int(num_classes or getattr(model, "num_classes", 0) or _head_size(model))
    return model, preprocess, n_classes


def _head_size(model: nn.Module) -> int:
    """Output size of the last linear or 1x1 conv layer (the classifier head)."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return int(last[-1].weight.shape[0]) if last else 0


@register_model("torchvision")
def torchvision_model(name: str, input_shape: Sequence[int] | None = None) -> ClassifierTarget:
    """torchvision classifiers: torchvision:NAME[:WEIGHTS] with WEIGHTS an enum name, a .safetensors file or a folder."""
    spec = f"torchvision:{name}"
    arch, _, weights = name.partition(":")
    path = local_path(weights, spec) if weights else None
    model, config, n_classes = load_local(arch, path, spec) if path is not None else load_pretrained(arch, weights, spec)
    return make_target(model, n_classes, config, spec, input_shape)
