"""The Python API, mirroring the CLI: ``load_target`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from torch import nn

from .options import PluginSpec, parse_plugin_spec
from .registry import SUITES
from .report import Report
from .runner import Runner
from .suite import Suite, task_overrides


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
    eps: Sequence[float] | dict[str, Sequence[float]] | None = None,
    n: int | None = None,
    seed: int | None = None,
    defenses: Iterable[str | PluginSpec] | None = None,
    suite: str = "quick",
    out: str | Path | None = None,
    progress: bool = False,
    checks: bool | None = None,
    data_dir: str | Path | None = None,
) -> Report:
    """Evaluate ``model`` (a spec such as ``"digits:cnn"`` or an ``nn.Module`` mapping [0,1]
    images to logits) and return the :class:`Report`; also written to ``out`` when given.

    ``task`` is a name with optional options, as ``--task`` takes it
    (``"imagefolder:image_size=32,train_dir=DIR"``); ``data_dir`` is ``--data-dir``.
    A bare eps list applies to every threat model the attacks use.
    """
    base: Suite = SUITES.get(suite).factory()
    task, task_options = task_overrides(base, task, None if data_dir is None else str(data_dir))
    attack_specs = _specs(attacks)
    if eps is not None and not isinstance(eps, dict):
        norms = {str(s.options.get("norm", "Linf")) for s in (attack_specs or base.attacks)}
        eps = {norm: list(eps) for norm in norms}
    models: Any = None
    if model is not None:
        models = (model,) if isinstance(model, (str, nn.Module)) else tuple(model)
    configured = base.with_overrides(task=task, task_options=task_options, models=models, attacks=attack_specs, eps=eps, n=n, seed=seed, defenses=_specs(defenses), checks=checks)
    report = Runner(configured, progress=progress).run()
    if out is not None:
        from .render import write_outputs

        write_outputs(report, out)
    return report
