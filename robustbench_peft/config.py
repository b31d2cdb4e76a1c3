"""Plug-in options as frozen dataclasses (PEFT's ``LoraConfig`` is the model).

Every attack, defense and unlearner declares one ``PluginConfig`` subclass and
sets it as the class attribute ``config_class``. A field is declared with
:func:`option`, which gives it a one-line help shown by ``list NAME`` and
``eval --help-plugin NAME``. Validation lives in ``__post_init__``; shared fields
come by inheritance (e.g. every classifier attack has ``norm``, ``seed`` and
``batch_size``); ``None`` means "the task's (or the method's) default", never a
magic 0. Reports store :meth:`PluginConfig.to_json` (``asdict``).

Command-line text (``pgd:steps=50``) reaches a config through
:meth:`PluginConfig.from_options`, which converts each value to its field's
declared type and refuses unknown keys with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar

from .errors import UserError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}

C = TypeVar("C", bound="PluginConfig")


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING) -> Any:  # noqa: A002 - the dataclass idiom
    """A config field with a one-line ``help``; lists and dicts take ``default_factory``."""
    if not help:
        raise ValueError("every plug-in option needs a one-line help")
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def parse_number(text: str) -> float:
    """``"0.1"``, ``"1e-3"`` or a fraction ``"8/255"`` -> float (ValueError otherwise).

    The one reader of number text (option values, ``--eps``): the ecosystem writes
    pixel budgets as fractions of 255, and ``8/255`` must mean the same everywhere."""
    numerator, sep, denominator = str(text).partition("/")
    if not sep:
        return float(text)
    top, bottom = float(numerator), float(denominator)
    try:
        return top / bottom
    except (ZeroDivisionError, OverflowError):
        raise ValueError(f"{text!r} is not a finite number") from None


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``int`` -> (int, False)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def convert(value: Any, annotation: Any, key: str, owner: str) -> Any:
    """Command-line text to the field's declared type (non-text values pass through)."""
    if not isinstance(value, str):
        return value
    kind, optional = _unwrap_optional(annotation)
    if optional and value.strip().lower() in ("none", "null", "default", ""):
        return None
    origin = typing.get_origin(kind) or kind
    try:
        if kind is bool:
            lowered = value.strip().lower()
            if lowered in TRUE | FALSE:
                return lowered in TRUE
            raise ValueError
        if kind is int:
            return int(value)
        if kind is float:
            number = parse_number(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if origin in (list, tuple):
            items = [v for v in value.split("+") if v]
            (inner,) = typing.get_args(kind)[:1] or (str,)
            converted = [convert(v, inner, key, owner) for v in items]
            return tuple(converted) if origin is tuple else converted
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise UserError(f"{owner}: option {key}={value!r} is not a valid {name}") from None
    return value


@dataclass(frozen=True)
class PluginConfig:
    """Base of every plug-in config: conversion from text, validation, help and JSON."""

    def __post_init__(self) -> None:
        """Validation hook: a subclass checks its own fields and calls ``super().__post_init__()``,
        so configs built from several groups of options validate every group.

        Here: an int given for a float field becomes a float, so ``lr=1`` and ``lr=1.0``
        record (and hash into cache keys) the same."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is int and _unwrap_optional(hints.get(f.name))[0] is float:
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def fields_help(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) per field, for ``list NAME`` / ``--help-plugin``."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else "required")
            kind = hints.get(f.name, f.type)
            rows.append((f.name, getattr(kind, "__name__", str(kind).replace("typing.", "")), default, f.metadata.get("help", "")))
        return rows

    @classmethod
    def from_options(cls: type[C], options: dict[str, Any], owner: str) -> C:
        """A config from ``key -> value`` options (text is converted by each field's type)."""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key not in names:
                raise UserError(f"{owner}: unknown option {key!r}; valid options: {', '.join(names)}")
            kwargs[key] = convert(value, hints[key], key, owner)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise UserError(f"{owner}: {exc}") from None

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The settings as stored in reports (``asdict``; tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def __call__(self) -> dict[str, Any]:
        """``plugin.config()`` reads as :meth:`to_json`: the plug-in's settings as a dict."""
        return self.to_json()


def require(owner: str, checks: dict[str, bool]) -> None:
    """One :class:`UserError` naming every failed check (``{"eps must be > 0": eps > 0}``)."""
    failed = [message for message, ok in checks.items() if not ok]
    if failed:
        raise UserError(f"{owner}: " + "; ".join(failed))


def config_class_of(factory: Any) -> type[PluginConfig] | None:
    """The ``config_class`` a plug-in declares, if any."""
    cls = getattr(factory, "config_class", None)
    return cls if isinstance(cls, type) and issubclass(cls, PluginConfig) else None


def help_lines(factory: Any) -> list[str]:
    """One line per option of a plug-in: ``name (type, default D): help``."""
    cls = config_class_of(factory)
    if cls is None:
        return []
    return [f"  {name} ({kind}, default {default!r}): {text}" for name, kind, default, text in cls.fields_help()]


class Configurable:
    """Mixin of a plug-in built from one config: ``Plugin(config)`` or ``Plugin(**options)``.

    The config is ``self.config`` (frozen); per-call state never lives on the plug-in."""

    config_class: type[PluginConfig] = PluginConfig

    def __init__(self, config: PluginConfig | None = None, **options: Any) -> None:
        if config is None:
            config = self.config_class(**options)
        elif options:
            config = config.replace(**options)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
