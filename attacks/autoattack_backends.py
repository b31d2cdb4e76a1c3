"""The two packages that provide AutoAttack, behind one small adapter each.

Upstream ``autoattack`` (GitHub only) and PyPI's ``pyautoattack`` run the same
ensemble through different APIs: keyword names, how the batch size is passed,
and where progress messages go (a log file and stdout upstream, the
``auto-attack`` logger in pyautoattack). Each adapter builds the library's
adversary and runs it, returning the adversarial inputs and the library's
messages as lines (read by :mod:`attacks.autoattack_log`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from robustbench_peft.errors import UserError

LOGGER_NAME = "auto-attack"


class Backend(Protocol):
    """What the adapter needs from one AutoAttack package."""

    module: str

    def build(self, model: torch.nn.Module, *, norm: str, eps: float, version: str, seed: int, device: torch.device, components: list[str]) -> Any:
        ...

    def run(self, adversary: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        """Adversarial inputs and the library's progress messages (warnings prefixed 'Warning:')."""
        ...


class _CaptureHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.lines.append(f"Warning: {text}" if record.levelno >= logging.WARNING else text)


@contextlib.contextmanager
def captured_logger(name: str = LOGGER_NAME) -> Iterator[_CaptureHandler]:
    """Collect a library logger's messages (debug included) without printing them."""
    logger = logging.getLogger(name)
    handler = _CaptureHandler()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class PyAutoAttackBackend:
    """PyPI ``pyautoattack``: keyword-only API, messages through ``logging.getLogger('auto-attack')``."""

    module = "pyautoattack"

    def build(self, model, *, norm, eps, version, seed, device, components):
        from pyautoattack import AutoAttack

        attacks = list(components) if version == "custom" else None
        return AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed, device=device, attacks=attacks)

    def run(self, adversary, x, y, batch_size):
        with captured_logger() as handler:
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        return x_adv, handler.lines


class UpstreamBackend:
    """Upstream ``autoattack`` (fra31/auto-attack): prints progress and appends it to ``log_path``."""

    module = "autoattack"

    def build(self, model, *, norm, eps, version, seed, device, components):
        from autoattack import AutoAttack

        log = Path(tempfile.mkdtemp(prefix="robustbench-peft-aa-")) / "autoattack.log"
        attacks = list(components) if version == "custom" else []
        return AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed, device=device, attacks_to_run=attacks, log_path=str(log))

    def run(self, adversary, x, y, batch_size):
        log = Path(adversary.logger.log_path)
        with contextlib.redirect_stdout(io.StringIO()):
            x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
        lines = log.read_text().splitlines() if log.exists() else []
        with contextlib.suppress(OSError):
            log.unlink()
            log.parent.rmdir()
        return x_adv, lines


#: Preference order: upstream when installed, else PyPI's pyautoattack.
BACKENDS: dict[str, Backend] = {"autoattack": UpstreamBackend(), "pyautoattack": PyAutoAttackBackend()}


def check_backend_name(name: str) -> None:
    if name != "auto" and name not in BACKENDS:
        raise UserError(f"unknown autoattack backend {name!r}; use auto or one of {', '.join(BACKENDS)}")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def resolve_backend(name: str) -> str:
    """The backend to use: ``auto`` is the first installed one of :data:`BACKENDS`."""
    check_backend_name(name)
    candidates = list(BACKENDS) if name == "auto" else [name]
    for candidate in candidates:
        if _importable(BACKENDS[candidate].module):
            return candidate
    raise UserError(f"AutoAttack backend {' or '.join(candidates)} is not installed: pip install pyautoattack")


def package_version(module: str) -> str | None:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(module), "__version__", None)
