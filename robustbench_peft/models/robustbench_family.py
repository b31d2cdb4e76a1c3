"""``robustbench:DATASET/THREAT/NAME`` specs: RobustBench model-zoo entries (optional extra).

The ``robustbench`` package is imported only when such a spec is loaded: PyPI's
robustbench pins an old timm and needs upstream ``autoattack``, so it stays an
extra (``pip install 'robustbench_peft[robustbench]'``). Zoo models take ``[0,1]``
inputs and normalise inside, so the target adds no normalisation.
"""

from __future__ import annotations

import difflib
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from ..cache import cache_dir
from ..errors import UserError
from ..registry import register_model
from ..targets import ClassifierTarget
from .offline import hub_access, missing_download, network_allowed, weights_only_loading
from .preprocessing import PreprocessConfig, make_target

#: dataset -> (classes, (C, H, W) the zoo's models take)
DATASETS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "cifar10": (10, (3, 32, 32)),
    "cifar100": (100, (3, 32, 32)),
    "imagenet": (1000, (3, 224, 224)),
}
THREATS = ("Linf", "L2", "corruptions", "corruptions_3d")
DOWNLOAD_URL = "https://drive.google.com"
INSTALL = (
    "pip install 'robustbench_peft[robustbench]' (PyPI robustbench pins timm==1.0.9 and needs the upstream "
    "autoattack: pip install git+https://github.com/fra31/auto-attack), or export the checkpoint's state dict "
    "to safetensors and load it with file:PATH"
)


def import_robustbench(spec: str) -> Any:
    """``robustbench.utils.load_model`` and the zoo, or a UserError saying how to install them."""
    try:
        from robustbench import model_zoo
        from robustbench.utils import load_model
    except ImportError as exc:
        raise UserError(f"{spec}: the optional package robustbench is not installed or fails to import ({exc}); {INSTALL}") from None
    return load_model, model_zoo


def parse(name: str, spec: str) -> tuple[str, str, str]:
    parts = name.split("/")
    if len(parts) != 3 or not all(parts):
        raise UserError(f"{spec}: expected robustbench:DATASET/THREAT/NAME, e.g. robustbench:cifar10/Linf/Carmon2019Unlabeled")
    dataset, threat, model_name = parts
    if dataset not in DATASETS:
        raise UserError(f"{spec}: unknown RobustBench dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if threat not in THREATS:
        raise UserError(f"{spec}: unknown RobustBench threat model {threat!r}; choose one of {', '.join(THREATS)}")
    return dataset, threat, model_name


def zoo_entry(model_zoo: Any, dataset: str, threat: str, model_name: str, spec: str) -> None:
    """Fail with close matches when the zoo has no such model."""
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    models = model_zoo.model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat.replace("_3d", ""))]
    if model_name not in models:
        close = difflib.get_close_matches(model_name, list(models), n=3)
        raise UserError(f"{spec}: RobustBench has no {dataset}/{threat} model {model_name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))


def is_cached(model_dir: Path, dataset: str, threat: str, model_name: str) -> bool:
    folder = model_dir / dataset / threat.replace("_3d", "")
    return (folder / f"{model_name}.pt").is_file() or (folder / f"{model_name}.pt_m0.pt").is_file()


def hosted_on_hub(dataset: str, threat: str, model_name: str) -> bool:
    """Newer zoo entries are timm models whose weights live on the Hugging Face hub."""
    import timm

    return timm.is_model(f"{model_name.lower().replace('-', '_')}_{dataset}_{threat.replace('_3d', '').lower()}")


@register_model("robustbench")
def robustbench_model(name: str, model_dir: str = "", input_shape: Sequence[int] | None = None) -> ClassifierTarget:
    """RobustBench model zoo (optional extra): robustbench:DATASET/THREAT/NAME, e.g. robustbench:cifar10/Linf/Standard."""
    spec = f"robustbench:{name}"
    dataset, threat, model_name = parse(name, spec)
    load_model, model_zoo = import_robustbench(spec)
    zoo_entry(model_zoo, dataset, threat, model_name, spec)
    folder = Path(model_dir).expanduser() if model_dir else cache_dir() / "robustbench"
    hint = f"{folder}/{dataset}/{threat.replace('_3d', '')}/{model_name}.pt copied from a machine with network access (or model_dir=DIR)"
    on_hub = hosted_on_hub(dataset, threat, model_name)
    if not on_hub and not is_cached(folder, dataset, threat, model_name) and not network_allowed(DOWNLOAD_URL):
        raise missing_download(spec, DOWNLOAD_URL, hint)
    access = hub_access(spec, hint) if on_hub else nullcontext()
    try:
        with access, weights_only_loading(spec):
            model = load_model(model_name=model_name, model_dir=str(folder), dataset=dataset, threat_model=threat)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{spec}: RobustBench could not load it ({exc})") from None
    n_classes, size = DATASETS[dataset]
    return make_target(model, n_classes, PreprocessConfig(size), spec, input_shape)
