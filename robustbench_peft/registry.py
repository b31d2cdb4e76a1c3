"""Name -> factory registries for attacks, defenses, unlearners, tasks and model specs.

Built-in plug-ins register with a one-line decorator (``@register_attack("pgd")``);
third-party packages expose modules through the ``robustbench_peft.plugins``
entry-point group, which :func:`load_plugins` imports once.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator

from .errors import UserError

BUILTIN_PLUGIN_MODULES = (
    "tasks.digits",
    "tasks.cifar",
    "tasks.imagefolder",
    "attacks.pgd",
    "attacks.autoattack",
    "attacks.transfer",
    "defenses.visual_prompt",
    "defenses.adversarial_finetune",
    "unlearning.section",
    "unlearning.diffusion",
    "tasks.t2i_concepts",
    "attacks.unlearndiff",
    "robustbench_peft.diffusion_section",
    "robustbench_peft.models.hub",
)
ENTRY_POINT_GROUP = "robustbench_peft.plugins"


@dataclass(frozen=True)
class Entry:
    """One registered plug-in: its name, factory and a one-line description."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str


def _first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


class Registry:
    """A validated name -> factory mapping for one kind of plug-in."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str | None = None) -> Callable:
        """Decorator: register ``obj`` under ``name`` (the docstring's first line describes it)."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '-' or '_'")

        def decorate(obj: Callable) -> Callable:
            existing = self._entries.get(name)
            if existing is not None and existing.factory is not obj:
                if getattr(existing.factory, "__qualname__", None) != getattr(obj, "__qualname__", None):
                    raise ValueError(f"{self.kind} {name!r} is already registered by {existing.factory!r}")
            self._entries[name] = Entry(self.kind, name, obj, description or _first_line(obj.__doc__))
            return obj

        return decorate

    def get(self, name: str) -> Entry:
        load_plugins()
        if name not in self._entries:
            known = sorted(self._entries)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known) or 'none'} "
                f"(see `python -m robustbench_peft list`)."
            )
        return self._entries[name]

    def create(self, name: str, **config: Any) -> Any:
        return self.get(name).factory(**config)

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))


ATTACKS = Registry("attack")
DEFENSES = Registry("defense")
UNLEARNERS = Registry("unlearner")
TASKS = Registry("task")
MODELS = Registry("model family", "model families")
SUITES = Registry("suite")

register_attack = ATTACKS.register
register_defense = DEFENSES.register
register_unlearner = UNLEARNERS.register
register_task = TASKS.register
register_model = MODELS.register
register_suite = SUITES.register

ALL_REGISTRIES = (TASKS, MODELS, ATTACKS, DEFENSES, UNLEARNERS, SUITES)

_loaded = False


def load_plugins() -> None:
    """Import the built-in plug-in modules and every ``robustbench_peft.plugins`` entry point."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("robustbench_peft.suites")
    for module in BUILTIN_PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plug-in must not break the suite
            import warnings

            warnings.warn(f"plug-in {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
