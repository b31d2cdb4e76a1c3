"""How a run executes, never what it measures: one frozen object for ``eval`` and ``evaluate()``.

``eval``'s flags and ``evaluate()``'s keyword arguments of the same names build one
:class:`RuntimeOptions`, handed to the :class:`~robustbench_peft.runner.Runner`, so
the CLI and the Python API cannot drift apart and nothing is set process-wide
before a run: the runner applies the thread count and the fitting precision for
the length of its run only. The settings that decide the numbers (``n``, ``seed``,
``batch_size``, ``chunk_size``) belong to the suite and are checked by
:func:`check_run_numbers`, for both front doors alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import UserError
from .precision import AMP_DTYPES


def check_device(text: str) -> str:
    """A torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else a one-line error."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {text!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {text}: unsupported device type {device.type!r}; use cpu, cuda or mps")
    return str(text)


@dataclass(frozen=True)
class RuntimeOptions:
    """Speed and placement of one run: the same numbers whatever they are (attacks run in float32).

    ``amp`` is the precision of *fitting* defenses (``eval --amp``), ``threads`` torch's
    intra-op threads (None: torch's choice), ``channels_last`` the memory layout of
    attacked models."""

    device: str = "cpu"
    threads: int | None = None
    amp: str = "off"
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device))
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"--threads must be an integer >= 1, got {self.threads!r}")
        if self.amp not in AMP_DTYPES:
            raise UserError(f"unknown --amp {self.amp!r}; use one of {', '.join(AMP_DTYPES)}")
        object.__setattr__(self, "channels_last", bool(self.channels_last))


def cli_flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``: how the CLI spells an option in its errors."""
    return "--" + name.replace("_", "-")


def check_run_numbers(spell: Callable[[str], str] = cli_flag, **values: int | None) -> None:
    """``n``, ``batch_size`` and ``chunk_size`` >= 1 and ``seed`` in [0, 2**31) where given (None:
    the suite's); ``spell`` names the option in the error as the caller's front door spells it."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{spell(name)} must be an integer, got {value!r}")
        if name == "seed":
            if not 0 <= value < 2**31:
                raise UserError(f"{spell(name)} must be in [0, 2**31), got {value}")
        elif value < 1:
            raise UserError(f"{spell(name)} must be >= 1, got {value}")
