"""Name -> factory registries for every kind of plug-in, classifier and text-to-image.

Plug-ins register with a one-line decorator (``@register_attack("pgd")``).
:func:`load_plugins` imports them once: every module of the built-in packages
(:data:`BUILTIN_PACKAGES`, so a new built-in method needs no entry anywhere) and
every module third-party packages expose through the ``robustbench_peft.plugins``
entry-point group.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator

from .errors import UserError

#: The built-in plug-ins: a package stands for every module in it, a module for itself.
BUILTIN_PACKAGES = ("robustbench_peft.suites", "robustbench_peft.models", "tasks", "attacks", "defenses", "unlearning")
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


def _label(obj: Any) -> str:
    """``module.qualname`` of a plug-in (its repr when it has none), for collision messages."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)


def _same_definition(old: Any, new: Any) -> bool:
    """The same object, or the same definition imported again (a reload makes a new object)."""
    if old is new:
        return True
    module, qualname = getattr(old, "__module__", None), getattr(old, "__qualname__", None)
    return bool(module and qualname) and (module, qualname) == (getattr(new, "__module__", None), getattr(new, "__qualname__", None))


class Registry:
    """A validated name -> factory mapping for one kind of plug-in."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str | None = None) -> Callable:
        """Decorator: register ``obj`` under ``name`` (the docstring's first line describes it).

        A name already taken raises ValueError naming both plug-ins, unless the new
        object is the registered one or the same definition imported again (same
        ``__module__`` and ``__qualname__``, as after ``importlib.reload``), which
        replaces it. Two plug-ins that merely share a class name still collide.
        """
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '-' or '_'")

        def decorate(obj: Callable) -> Callable:
            existing = self._entries.get(name)
            if existing is not None and not _same_definition(existing.factory, obj):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {_label(existing.factory)}; "
                    f"cannot register {_label(obj)} under the same name"
                )
            self._entries[name] = Entry(self.kind, name, obj, description or _first_line(obj.__doc__))
            return obj

        return decorate

    def get(self, name: str) -> Entry:
        load_plugins()
        if name not in self._entries:
            known = sorted(self._entries)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            elsewhere = [r.kind for r in ALL_REGISTRIES if r is not self and name in r._entries]
            if elsewhere:
                hint = f" {name!r} is registered as a {' and as a '.join(elsewhere)} instead."
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
# Text-to-image plug-ins: another contract (prompts in, judged images out), so their own names.
T2I_TASKS = Registry("text-to-image task")
PROMPT_ATTACKS = Registry("prompt attack")
T2I_UNLEARNERS = Registry("text-to-image unlearner")
JUDGES = Registry("judge")

register_attack = ATTACKS.register
register_defense = DEFENSES.register
register_unlearner = UNLEARNERS.register
register_task = TASKS.register
register_model = MODELS.register
register_suite = SUITES.register
register_t2i_task = T2I_TASKS.register
register_prompt_attack = PROMPT_ATTACKS.register
register_t2i_unlearner = T2I_UNLEARNERS.register
register_judge = JUDGES.register

ALL_REGISTRIES = (TASKS, MODELS, ATTACKS, DEFENSES, UNLEARNERS, SUITES, T2I_TASKS, PROMPT_ATTACKS, T2I_UNLEARNERS, JUDGES)

_loaded = False
_loading = False


def _import_builtin(name: str) -> None:
    """Import one built-in module; its error, chained, names the module that failed."""
    try:
        importlib.import_module(name)
    except Exception as exc:
        raise RuntimeError(f"built-in plug-in module {name!r} failed to import: {type(exc).__name__}: {exc}") from exc


def builtin_modules(package: str) -> list[str]:
    """The modules a built-in entry stands for: the package's own modules (not ``_private``), or the module."""
    _import_builtin(package)
    path = getattr(importlib.import_module(package), "__path__", None)
    if path is None:
        return [package]
    return [f"{package}.{m.name}" for m in sorted(pkgutil.iter_modules(path), key=lambda m: m.name) if not m.name.startswith("_")]


def load_plugins() -> None:
    """Import every module of the built-in packages and every ``robustbench_peft.plugins`` entry point.

    A built-in module that fails to import is a broken installation: RuntimeError
    naming it (the real error chained), and the next call tries again rather than
    serving a half-filled registry. A broken third-party entry point only warns,
    so it cannot break the suite. ``_loading`` stops a plug-in that looks a name
    up while being imported from re-entering the loop.
    """
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        for package in BUILTIN_PACKAGES:
            for module in builtin_modules(package):
                _import_builtin(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plug-in must not break the suite
                warnings.warn(f"plug-in {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
        _loaded = True
    finally:
        _loading = False
