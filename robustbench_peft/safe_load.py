"""Load weights without executing code: safetensors, or ``torch.load(weights_only=True)``.

A checkpoint that needs arbitrary unpickling is refused with a clear message; it
is never unpickled with the unrestricted loader.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import UserError

SAFETENSORS_SUFFIXES = (".safetensors",)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor mapping from a safetensors file or a plain tensor checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    if path.suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise UserError(f"{path} is not a valid safetensors file: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"refused to load {path}: it needs arbitrary unpickling, which can execute code "
            f"({str(exc).splitlines()[0][:160]}). Convert it to safetensors or a plain state dict of tensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable torch checkpoint: {str(exc).splitlines()[0][:200]}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return state
