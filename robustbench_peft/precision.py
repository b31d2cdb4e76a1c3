"""Memory layout and numeric precision: speed options that never change what is attacked.

Evaluation attacks run in full float32 precision: a half-precision gradient can
vanish or saturate and make a model look more robust than it is. Mixed precision
is offered only for *fitting* defenses and adaptations, where it is an ordinary
training speed-up, and only when asked for (``eval --amp``). ``channels_last``
changes how convolution weights are laid out in memory, not their values.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, TypeVar

import torch
from torch import nn

from .errors import UserError

M = TypeVar("M", bound=nn.Module)

#: ``--amp`` choices: name -> autocast dtype (None = full precision).
AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

_fit_amp = "off"
_fit_amp_applied = False


def memory_format(module: M, channels_last: bool) -> M:
    """The module with 4-D weights in channels_last layout when asked (in place; a no-op otherwise)."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def set_fit_amp(name: str) -> None:
    """Choose the precision of defense fitting for this process: off, bf16 or fp16."""
    global _fit_amp, _fit_amp_applied
    if name not in AMP_DTYPES:
        raise UserError(f"unknown --amp {name!r}; use one of {', '.join(AMP_DTYPES)}")
    _fit_amp, _fit_amp_applied = name, False


class FitPrecision:
    """What :func:`fit_precision` saw: whether a fit ran under (or keyed its cache by) mixed precision."""

    applied: bool = False


@contextlib.contextmanager
def fit_precision(name: str) -> Iterator[FitPrecision]:
    """The fitting precision ``name`` for one run only (the runner's ``RuntimeOptions.amp``);
    the previous setting comes back afterwards, so a run never leaves its ``--amp`` behind.

    Defenses read it deep inside their training loops (:func:`fit_autocast`,
    :func:`fit_amp_recipe`), hence a scoped setting rather than an argument."""
    global _fit_amp, _fit_amp_applied
    previous = (_fit_amp, _fit_amp_applied)
    set_fit_amp(name)
    seen = FitPrecision()
    try:
        yield seen
    finally:
        seen.applied = _fit_amp_applied
        _fit_amp, _fit_amp_applied = previous


def fit_amp() -> str:
    """The precision chosen for fitting ("off" unless ``--amp`` asked otherwise).

    A defense that honours it puts it in its cache recipe, so a mixed-precision
    fit never stands in for a full-precision one."""
    return _fit_amp


def fit_amp_recipe() -> dict[str, str]:
    """The cache-recipe entry of a fit about to be trained or loaded: ``{"amp": name}``, or
    nothing when off, so full-precision recipes (and their cache entries) stay as they were.

    Asking for it counts as applying ``--amp``: a mixed-precision fit served from the
    cache is used as much as one trained now, so ``eval`` must not call the flag ignored."""
    global _fit_amp_applied
    if _fit_amp == "off":
        return {}
    _fit_amp_applied = True
    return {"amp": _fit_amp}


def fit_amp_applied() -> bool:
    """Whether any fitting step ran under the chosen mixed precision, or a defense keyed its
    fit by it, since :func:`set_fit_amp` (False tells the user that ``--amp`` had no effect)."""
    return _fit_amp_applied


def _autocast(device: torch.device | str, name: str, what: str) -> contextlib.AbstractContextManager:
    """Autocast to the dtype ``name`` names (a no-op for "off"); fp16 on CPU is refused
    (CPU autocast supports bfloat16)."""
    if name not in AMP_DTYPES:
        raise UserError(f"unknown {what} precision {name!r}; use one of {', '.join(AMP_DTYPES)}")
    dtype = AMP_DTYPES[name]
    if dtype is None:
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if kind == "cpu" and dtype is torch.float16:
        raise UserError(f"{what} fp16 needs a CUDA device; use bf16 on CPU")
    return torch.autocast(device_type=kind, dtype=dtype)


@contextlib.contextmanager
def fit_autocast(device: torch.device | str) -> Iterator[None]:
    """Autocast around the forward pass and loss of one *training* step of a defense.

    Full precision unless ``--amp`` chose a dtype. fp16 on CPU is refused (CPU
    autocast supports bfloat16); use bf16 there.
    """
    global _fit_amp_applied
    with _autocast(device, _fit_amp, "--amp"):
        _fit_amp_applied = _fit_amp_applied or _fit_amp != "off"
        yield


def crafting_autocast(device: torch.device | str, name: str) -> contextlib.AbstractContextManager:
    """Autocast while an attack *crafts* its inputs, only when asked (attack option ``amp=bf16``).

    The attack's own perturbation stays float32 (input gradients come back in the
    input's dtype), and the accuracy it is scored by is re-measured outside, in float32."""
    return _autocast(device, name, "attack amp")


@contextlib.contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """Switch autocast off, e.g. around the evaluation of a fitted defense."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def grad_scaler(device: torch.device | str) -> "torch.amp.GradScaler":
    """A loss scaler for fitting: active only for fp16 on CUDA (bf16 needs none)."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=_fit_amp == "fp16" and kind == "cuda")
