"""``timm:`` specs: timm classifiers with their pretrained preprocessing inside the target.

``timm:NAME[.TAG]`` (timm's registry, weights from the Hugging Face hub),
``timm:hf-hub:ORG/REPO`` or ``timm:ORG/REPO`` (a timm repository on the hub) and
``timm:DIR`` (a folder in timm's hub layout: ``config.json`` plus
``model.safetensors``, as ``timm.models.save_for_hf`` writes it).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

from ..errors import UserError
from ..registry import register_model
from ..targets import ClassifierTarget
from .offline import hub_access, weights_only_loading
from .preprocessing import PreprocessConfig, make_target
from .sources import local_dir

HINT = "timm:/path/to/folder (config.json + model.safetensors, as timm.models.save_for_hf writes them)"
#: timm's RuntimeError messages -> what the user should read instead.
TIMM_ERRORS = {
    "Unknown model": "timm has no architecture of that name; see timm.list_models(), or pass {hint}",
    "No pretrained weights exist": "timm has no pretrained weights for it; name a tagged model such as resnet18.a1_in1k, or pass {hint}",
    "Config file not found": "the folder has no config.json; pass {hint}",
    "No suitable checkpoints": "the folder has no weights file; pass {hint}",
}


def timm_name(name: str, spec: str) -> tuple[str, bool]:
    """(name for timm.create_model, whether it is local)."""
    if name.startswith(("hf-hub:", "hf_hub:")):
        return name, False
    if name.startswith("local-dir:"):
        name = name.split(":", 1)[1]
    folder = local_dir(name, spec, "config.json and model.safetensors")
    if folder is not None:
        return f"local-dir:{folder}", True
    if "/" in name:
        return f"hf-hub:{name}", False
    return name, False


def preprocess_config(model: Any) -> PreprocessConfig:
    """The model's pretrained data config (input size, interpolation, mean, std) as timm resolves it."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return PreprocessConfig(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))


def create(name: str, spec: str) -> Any:
    """``timm.create_model(name, pretrained=True)`` with offline handling and safe loading."""
    import timm

    timm_id, is_local = timm_name(name, spec)
    access = nullcontext() if is_local else hub_access(spec, HINT)
    try:
        with access, weights_only_loading(spec):
            return timm.create_model(timm_id, pretrained=True)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        for fragment, message in TIMM_ERRORS.items():
            if fragment in str(exc):
                raise UserError(f"{spec}: {message.format(hint=HINT)}") from None
        raise


@register_model("timm")
def timm_model(name: str, input_shape: Sequence[int] | None = None) -> ClassifierTarget:
    """timm classifiers: timm:NAME[.TAG], timm:hf-hub:ORG/REPO or timm:DIR (timm's config.json + model.safetensors)."""
    spec = f"timm:{name}"
    model = create(name, spec)
    return make_target(model, int(getattr(model, "num_classes", 0)), preprocess_config(model), spec, input_shape)
