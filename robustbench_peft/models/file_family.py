"""``file:PATH`` specs: safetensors weights plus a JSON sidecar naming their architecture.

PATH is a ``.safetensors`` file (sidecar: the same name with ``.json``, or
``config.json`` beside it) or a folder holding ``model.safetensors`` and
``config.json``. The sidecar says how to rebuild the network and what it expects::

    {"architecture": "timm:resnet18",        # FAMILY:NAME, see ARCHITECTURES
     "num_classes": 10,
     "model_args": {},                        # extra constructor arguments
     "input_shape": [3, 32, 32],              # pixel-space input the attacks perturb
     "input_size": [3, 32, 32],               # what the network takes (default: input_shape)
     "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],  # omitted: the network takes [0,1]
     "interpolation": "bilinear",
     "class_names": ["airplane", ...]}        # optional

Nothing is unpickled: the architecture is rebuilt from code and the tensors come
from safetensors. :func:`export_file_model` writes both files. :func:`sidecar_help`
describes the format for ``python -m robustbench_peft list file``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..atomic import write_atomic, write_json_atomic
from ..errors import UserError
from ..registry import register_model
from ..targets import ClassifierTarget
from .preprocessing import PreprocessConfig, make_target

WEIGHTS_FILE = "model.safetensors"
SIDECAR = "config.json"
#: Architecture family -> builder(name, num_classes, model_args) returning an untrained nn.Module.
#: Hubs register here; a task with networks of its own registers them from its module.
ARCHITECTURES: dict[str, Callable[[str, int, dict[str, Any]], nn.Module]] = {}


def register_architecture(family: str) -> Callable:
    """Register how ``file:`` sidecars naming ``family:NAME`` rebuild their network."""

    def decorate(builder: Callable[[str, int, dict[str, Any]], nn.Module]) -> Callable:
        ARCHITECTURES[family] = builder
        return builder

    return decorate


@register_architecture("timm")
def _timm_architecture(name: str, num_classes: int, model_args: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise UserError(f"timm has no architecture {name!r}; see timm.list_models()")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **model_args)


@register_architecture("torchvision")
def _torchvision_architecture(name: str, num_classes: int, model_args: dict[str, Any]) -> nn.Module:
    from .torchvision_family import build

    return build(name, num_classes, model_args, f"torchvision architecture {name}")


def locate(path: Path, spec: str) -> tuple[Path, Path | None]:
    """(weights file, sidecar file or None) of a ``file:`` PATH."""
    if not path.exists():
        raise UserError(f"{spec}: no such file or folder {path}")
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if weights.suffix != ".safetensors" or not weights.is_file():
        raise UserError(f"{spec}: expected a .safetensors file or a folder holding {WEIGHTS_FILE}, got {path}")
    for candidate in (weights.with_suffix(".json"), weights.parent / SIDECAR):
        if candidate.is_file():
            return weights, candidate
    return weights, None


def read_config(weights: Path, sidecar: Path | None, spec: str) -> dict[str, Any]:
    """The sidecar, or the same JSON stored in the safetensors metadata under ``config``."""
    if sidecar is not None:
        text, where = sidecar.read_text(), str(sidecar)
    else:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            text, where = (fh.metadata() or {}).get("config", ""), f"{weights} metadata"
        if not text:
            raise UserError(f"{spec}: no sidecar {weights.with_suffix('.json').name} or {SIDECAR} next to {weights}; write one naming the architecture (see export_file_model)")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{spec}: {where} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise UserError(f"{spec}: {where} must be a JSON object with an 'architecture' such as 'timm:resnet18'")
    return config


def build_network(config: dict[str, Any], spec: str) -> tuple[nn.Module, int]:
    family, sep, arch = str(config["architecture"]).partition(":")
    if not sep or family not in ARCHITECTURES:
        raise UserError(f"{spec}: architecture must be FAMILY:NAME with FAMILY one of {', '.join(sorted(ARCHITECTURES))}, got {config['architecture']!r}")
    if "num_classes" not in config:
        raise UserError(f"{spec}: the sidecar needs num_classes")
    num_classes = int(config["num_classes"])
    try:
        return ARCHITECTURES[family](arch, num_classes, dict(config.get("model_args", {}))), num_classes
    except UserError as exc:
        raise UserError(f"{spec}: {exc}") from None
    except TypeError as exc:
        raise UserError(f"{spec}: cannot build {config['architecture']} with model_args {config.get('model_args', {})}: {exc}") from None


def preprocess_config(config: dict[str, Any], spec: str) -> tuple[PreprocessConfig, tuple[int, ...]]:
    """(network preprocessing, pixel-space input shape) from the sidecar."""
    shape = config.get("input_shape") or config.get("input_size")
    if not shape:
        raise UserError(f"{spec}: the sidecar needs input_shape (C, H, W) of the images the model classifies")
    size = tuple(config.get("input_size") or shape)
    if ("mean" in config) != ("std" in config):
        raise UserError(f"{spec}: give both mean and std, or neither (the network then takes [0,1] pixels)")
    channels = size[0]
    return (
        PreprocessConfig(size, tuple(config.get("mean", [0.0] * channels)), tuple(config.get("std", [1.0] * channels)), config.get("interpolation", "bilinear")),
        tuple(int(s) for s in shape),
    )


def sidecar_help() -> list[str]:
    """The sidecar format, for ``list file``: so a user can write one without reading the code."""
    families = ", ".join(sorted(ARCHITECTURES)) or "none registered"
    return [
        f"PATH: a .safetensors file (sidecar: the same name with .json, or {SIDECAR} beside it), or a folder holding {WEIGHTS_FILE} and {SIDECAR};",
        "  without a sidecar file, the same JSON stored in the safetensors metadata under 'config'. Nothing is unpickled.",
        "sidecar (a JSON object):",
        f"  architecture   FAMILY:NAME of the network, rebuilt from code; FAMILY one of {families} (required)",
        "  num_classes    number of logits (required)",
        "  input_shape    [C, H, W] of the [0,1] images the model classifies (required, or input_size)",
        "  input_size     [C, H, W] the network itself takes (default: input_shape); images are resized inside the model",
        "  mean, std      per-channel normalisation applied inside the model (both or neither; neither: the network takes [0,1])",
        "  interpolation  resize filter: bilinear (default), bicubic, nearest or area",
        "  model_args     extra keyword arguments of the architecture's constructor (default: {})",
        'example: {"architecture": "timm:resnet18", "num_classes": 10, "input_shape": [3, 32, 32], "mean": [0.491, 0.482, 0.447], "std": [0.247, 0.243, 0.262]}',
        "write both files from Python: robustbench_peft.models.file_family.export_file_model(model, PATH, architecture, num_classes, input_shape, mean, std)",
        "options (file:PATH:key=value): input_shape=CxHxW, the images the attacks perturb (default: the task's)",
    ]


@register_model("file")
def file_model(name: str, input_shape: Sequence[int] | None = None) -> ClassifierTarget:
    """Local safetensors weights with a JSON sidecar naming the architecture (timm:, torchvision:, digits:)."""
    from safetensors.torch import load_file

    spec = f"file:{name}"
    weights, sidecar = locate(Path(name).expanduser(), spec)
    config = read_config(weights, sidecar, spec)
    model, num_classes = build_network(config, spec)
    result = model.load_state_dict(load_file(str(weights)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"{spec}: the weights do not fit {config['architecture']}: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
    preprocess, own_shape = preprocess_config(config, spec)
    return make_target(model, num_classes, preprocess, spec, input_shape if input_shape is not None else own_shape)


file_model.usage = sidecar_help  # type: ignore[attr-defined] - ``list file`` prints it


def export_file_model(
    model: nn.Module,
    path: str | Path,
    architecture: str,
    num_classes: int,
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **extra: Any,
) -> Path:
    """Write ``model``'s state dict as ``path`` (.safetensors) and its sidecar, loadable as ``file:path``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / WEIGHTS_FILE
    config: dict[str, Any] = {"architecture": architecture, "num_classes": int(num_classes), "input_shape": [int(s) for s in input_shape], **extra}
    if (mean is None) != (std is None):
        raise UserError("export_file_model: give both mean and std, or neither")
    if mean is not None and std is not None:
        config["mean"], config["std"] = [float(m) for m in mean], [float(s) for s in std]
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata={"config": json.dumps(config)}))
    write_json_atomic(path.with_suffix(".json") if path.name != WEIGHTS_FILE else path.parent / SIDECAR, config)
    return path
