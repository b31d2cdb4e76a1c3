"""Content-addressed cache of trained artifacts (reference models, prompts, adapters).

An entry is keyed by the hash of its *recipe* (everything that determines the
result: data, architecture, hyper-parameters, seed, code version). Entries are
safetensors files written atomically next to a ``.sha256`` of their bytes; an
entry whose bytes no longer match is treated as corrupt and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .atomic import write_atomic, write_text_atomic

CACHE_ENV = "ROBUSTBENCH_PEFT_CACHE"
#: Bump when a training recipe's code changes meaning, so old entries are not reused.
CACHE_FORMAT_VERSION = 1


def cache_dir() -> Path:
    """The cache root: ``$ROBUSTBENCH_PEFT_CACHE`` or ``~/.cache/robustbench_peft``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "robustbench_peft")
    return Path(root)


def recipe_hash(recipe: dict[str, Any]) -> str:
    """A stable short hash of a JSON-serialisable recipe."""
    blob = json.dumps({"format": CACHE_FORMAT_VERSION, **recipe}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of tensor names, dtypes, shapes and values: the identity of a set of weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # reshape(-1): 0-dim tensors (batch norm's num_batches_tracked) hash their bytes too; same bytes otherwise
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def entry_path(kind: str, recipe: dict[str, Any]) -> Path:
    return cache_dir() / kind / f"{recipe_hash(recipe)}.safetensors"


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors atomically, then the checksum sidecar that vouches for them."""
    path = Path(path)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(clean, tmp, metadata=metadata))
    write_text_atomic(path.with_suffix(path.suffix + ".sha256"), file_sha256(path) + "\n")


def load_verified(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """Load a cache entry, or None when it is missing, truncated or fails its checksum."""
    path = Path(path)
    sidecar = path.with_suffix(path.suffix + ".sha256")
    if not path.exists() or not sidecar.exists():
        return None
    if sidecar.read_text().strip() != file_sha256(path):
        return None
    try:
        return load_file(str(path))
    except Exception:
        return None


def cached_tensors(kind: str, recipe: dict[str, Any], build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Return the cached tensors of ``recipe``, building (and storing) them on a miss."""
    path = entry_path(kind, recipe)
    tensors = load_verified(path)
    if tensors is None:
        tensors = build()
        save_tensors(path, tensors, metadata={"recipe": json.dumps(recipe, sort_keys=True, default=str)})
    return tensors
