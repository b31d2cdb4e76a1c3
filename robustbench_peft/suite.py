"""Suites: what an ``eval`` runs, as data.

A suite is a task, model specs, defenses, attacks, eps per threat model, n and a
seed. Named suites register with ``@register_suite``; the CLI overrides fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from .errors import UserError
from .options import PluginSpec, parse_plugin_spec

MODES = ("adaptive", "nonadaptive")


def split_task(text: str) -> tuple[str, dict[str, Any]]:
    """``"imagefolder:image_size=32,train_dir=DIR"`` -> ("imagefolder", {"image_size": "32", "train_dir": "DIR"}).

    The syntax of ``--attack`` and ``--defense``; the task's factory converts and checks the values.
    """
    if not isinstance(text, str):
        raise UserError(f"task must be a name such as digits or imagefolder:image_size=32, got {text!r}")
    spec = parse_plugin_spec(text)
    if not spec.name:
        raise UserError(f"invalid task {text!r}: expected NAME or NAME:key=value,... such as imagefolder:image_size=32")
    return spec.name, dict(spec.options)


def task_overrides(suite: "Suite", text: str | None, data_dir: str | None = None) -> tuple[str | None, dict[str, Any]]:
    """``--task NAME[:k=v,...]`` and ``--data-dir DIR`` over ``suite`` -> (task name or None, task options).

    The suite's own task options are kept for its own task only; ``--data-dir DIR``
    is the option ``data_dir=DIR``."""
    name, given = split_task(text) if text else (None, {})
    options = {**(suite.task_options if name in (None, suite.task) else {}), **given}
    if data_dir:
        if "data_dir" in given and str(given["data_dir"]) != data_dir:
            raise UserError(f"--data-dir {data_dir} and the task's data_dir={given['data_dir']} name two data directories; give one of them")
        options["data_dir"] = data_dir
    return name, options


def attack_norms(attacks: Iterable[PluginSpec]) -> set[str]:
    """The threat models ``attacks`` use (their ``norm`` option, else Linf, in canonical spelling):
    where an eps list given for every threat model goes, for ``--eps`` and ``evaluate(eps=...)`` alike."""
    from .threat_model import check_norm

    return {check_norm(str(spec.options.get("norm", "Linf"))) for spec in attacks}


@dataclass(frozen=True)
class Suite:
    name: str
    task: str
    models: tuple[str, ...]
    attacks: tuple[PluginSpec, ...]
    defenses: tuple[PluginSpec, ...] = (PluginSpec("none"),)
    eps: dict[str, list[float]] | None = None
    n: int | None = None
    seed: int = 0
    batch_size: int = 256
    #: Samples per checkpointed, separately seeded unit of work (and per torchrun shard
    #: unit). Several batches per chunk let attacks refill batches as samples break.
    chunk_size: int = 1024
    checks: bool = True
    description: str = ""
    task_options: dict[str, Any] = field(default_factory=dict)
    #: Report sections beyond classifier runs (e.g. "unlearning"), run by registered section runners.
    sections: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A task written with its options ("imagefolder:image_size=32") keeps the bare name;
        # its options go to task_options (over the ones given there).
        if isinstance(self.task, str) and ":" in self.task:
            name, options = split_task(self.task)
            object.__setattr__(self, "task", name)
            object.__setattr__(self, "task_options", {**self.task_options, **options})

    def with_overrides(self, **changes: Any) -> "Suite":
        """Replace the fields given (None keeps a field).

        ``task`` may carry its options (``imagefolder:image_size=32``). A suite's
        defenses, report sections, eps and task options were chosen for its own task
        and models: another task drops all four (the task's default eps apply), other
        models drop defenses and sections, unless they are given too. A suite with no
        models of its own (``unlearning``, ``diffusion``: its sections are the whole
        suite) keeps its sections.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        if "task" in changes:
            name, options = split_task(changes["task"])
            if name != self.task:
                changes.setdefault("task_options", {})
            changes["task"] = name
            changes["task_options"] = {**changes.get("task_options", self.task_options), **options}
        new_task = changes.get("task", self.task) != self.task
        new_models = tuple(changes.get("models", self.models)) != tuple(self.models)
        if new_task:
            changes.setdefault("eps", None)
        if new_task or new_models:
            changes.setdefault("defenses", (PluginSpec("none"),))
            if self.models:
                changes.setdefault("sections", ())
        return replace(self, **changes)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Suite":
        """Rebuild a suite from :meth:`to_json` (used by ``eval --resume``)."""
        specs = lambda items: tuple(PluginSpec(i["name"], dict(i.get("options", {}))) for i in items)
        return cls(
            name=doc["name"],
            task=doc["task"],
            models=tuple(doc["models"]),
            attacks=specs(doc["attacks"]),
            defenses=specs(doc.get("defenses", [{"name": "none"}])),
            eps={k: list(v) for k, v in doc["eps"].items()} or None,
            n=doc.get("n"),
            seed=int(doc["seed"]),
            batch_size=int(doc.get("batch_size", 256)),
            # runs written before chunk_size existed were chunked by batch
            chunk_size=int(doc.get("chunk_size", doc.get("batch_size", 256))),
            checks=bool(doc.get("checks", True)),
            task_options=dict(doc.get("task_options", {})),
            sections=tuple(doc.get("sections", ())),
            extra=dict(doc.get("extra", {})),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "models": [m if isinstance(m, str) else f"module:{type(m).__name__}" for m in self.models],
            "defenses": [d.to_json() for d in self.defenses],
            "attacks": [a.to_json() for a in self.attacks],
            "eps": {k: list(v) for k, v in (self.eps or {}).items()},
            "n": self.n,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "chunk_size": self.chunk_size,
            "checks": self.checks,
            "task_options": {k: str(v) for k, v in self.task_options.items()},
            "sections": list(self.sections),
            **({"extra": self.extra} if self.extra else {}),
        }


def section_settings(suite: Suite, section: str, presets: dict[str, dict[str, Any]], default: str) -> dict[str, Any]:
    """A report section's settings: the preset named in ``suite.extra[section]`` (else ``default``)
    overlaid by the other keys there; an unknown preset or key is a :class:`UserError`."""
    extra = dict(suite.extra.get(section) or {})
    preset = extra.pop("preset", default)
    if preset not in presets:
        raise UserError(f"{section}: unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    unknown = sorted(set(extra) - set(presets[preset]))
    if unknown:
        raise UserError(f"{section}: unknown setting(s) {', '.join(unknown)}; valid: preset, {', '.join(presets[preset])}")
    return {**presets[preset], **extra, "preset": preset}


def name_list(value: Any, section: str, key: str, allow_empty: bool = False) -> list[str]:
    """A section setting that lists plug-in names: a list, or one text with ``,`` or ``+`` between names
    (plug-in options after ``:`` keep their commas only in the list form)."""
    if isinstance(value, str):
        value = [v for v in value.replace("+", ",").split(",") if v.strip()]
    valid = isinstance(value, (list, tuple)) and (value or allow_empty) and all(isinstance(v, str) and v.strip() for v in value)
    if not valid:
        raise UserError(f"{section}: {key} must be a {'' if allow_empty else 'non-empty '}list of names, got {value!r}")
    return [v.strip() for v in value]
