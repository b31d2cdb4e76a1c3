"""The Python API, mirroring the CLI: ``load_target`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from torch import nn

from .options import PluginSpec, apply_settings, parse_plugin_spec
from .registry import SUITES
from .report import Report
from .runner import Runner
from .runtime import RuntimeOptions, check_run_numbers
from .suite import Suite, attack_norms, task_overrides
from .threat_model import eps_by_norm


def _specs(items: Iterable[str | PluginSpec] | None) -> tuple[PluginSpec, ...] | None:
    if items is None:
        return None
    if isinstance(items, (str, PluginSpec)):
        items = [items]
    return tuple(item if isinstance(item, PluginSpec) else parse_plugin_spec(item) for item in items)


def evaluate(
    model: str | nn.Module | Sequence[str] | None = None,
    task: str | None = None,
    attacks: Iterable[str | PluginSpec] | None = None,
    eps: float | str | Sequence[float | str] | Mapping[str, float | str | Sequence[float | str]] | None = None,
    n: int | None = None,
    seed: int | None = None,
    defenses: Iterable[str | PluginSpec] | None = None,
    suite: str = "quick",
    out: str | Path | None = None,
    progress: bool = False,
    checks: bool | None = None,
    data_dir: str | Path | None = None,
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
    amp: str = "off",
    channels_last: bool = False,
    settings: str | Sequence[str] | None = None,
) -> Report:
    """Evaluate ``model`` (a spec such as ``"digits:cnn"`` or an ``nn.Module`` mapping [0,1]
    images to logits) and return the :class:`Report`; also written to ``out`` when given.

    ``task`` is a name with optional options, as ``--task`` takes it
    (``"imagefolder:image_size=32,train_dir=DIR"``); ``data_dir`` is ``--data-dir``.
    ``eps`` is written as ``--eps`` takes it, or as Python values: ``0.1``, ``"8/255"``,
    ``[4/255, "8/255"]``, ``"L2:0.5,1"`` or ``{"linf": "8/255", "L2": [0.5]}``; a value
    without a threat model applies to every threat model the attacks use.

    The keyword-only options are ``eval``'s flags of the same names (``device``,
    ``batch_size``, ``chunk_size``, ``threads``, ``amp``, ``channels_last``, and
    ``settings`` for ``--set SECTION.KEY=VALUE``), so a run from Python is the run
    the CLI would make.
    """
    options = RuntimeOptions(device=device, threads=threads, amp=amp, channels_last=channels_last)
    check_run_numbers(spell=str, n=n, seed=seed, batch_size=batch_size, chunk_size=chunk_size)
    base: Suite = SUITES.get(suite).factory()
    task, task_options = task_overrides(base, task, None if data_dir is None else str(data_dir))
    attack_specs = _specs(attacks)
    eps_map = eps_by_norm(eps, attack_norms(attack_specs or base.attacks)) if eps is not None else None
    models: Any = None
    if model is not None:
        models = (model,) if isinstance(model, (str, nn.Module)) else tuple(model)
    configured = base.with_overrides(
        task=task, task_options=task_options, models=models, attacks=attack_specs, eps=eps_map, n=n, seed=seed,
        defenses=_specs(defenses), checks=checks, batch_size=batch_size, chunk_size=chunk_size,
    )
    if settings:
        texts = [settings] if isinstance(settings, str) else list(settings)
        configured = configured.with_overrides(extra=apply_settings(configured.extra, texts, configured.sections))
    report = Runner(configured, progress=progress, options=options).run()
    if out is not None:
        from .render import write_outputs

        write_outputs(report, out)
    return report
