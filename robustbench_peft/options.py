"""Parse ``NAME:key=value,...`` plug-in specs and build plug-ins from them.

Option values are converted to the type of the parameter's default in the
factory's signature, so every attack, defense and unlearner gets validated
options without writing a parser of its own.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import parse_number
from .errors import UserError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class PluginSpec:
    """A plug-in name with its options, e.g. ``pgd:norm=L2,steps=50``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.options.items())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}


def parse_plugin_spec(text: str) -> PluginSpec:
    """``"pgd:norm=L2,steps=50"`` -> PluginSpec("pgd", {"norm": "L2", "steps": "50"})."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"empty plug-in spec {text!r}: expected NAME or NAME:key=value,...")
    name, _, rest = text.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"invalid option {item!r} in {text!r}: expected key=value")
        options[key.strip()] = value.strip()
    return PluginSpec(name.strip(), options)


def _convert(value: Any, default: Any, key: str, owner: str) -> Any:
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            lowered = value.lower()
            if lowered in TRUE | FALSE:
                return lowered in TRUE
            raise ValueError
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            number = parse_number(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if isinstance(default, (list, tuple)):
            return [v for v in value.split("+") if v]
    except ValueError:
        raise UserError(f"{owner}: option {key}={value!r} is not a valid {type(default).__name__}") from None
    return value


def build(factory: Callable[..., Any], options: dict[str, Any], owner: str, **fixed: Any) -> Any:
    """Call ``factory`` with converted ``options`` (unknown keys are a clear error).

    A plug-in that declares a ``config_class`` (:mod:`.config`) gets one config
    object, built and validated from the options; other factories (tasks, model
    loaders) get the options as keyword arguments, converted by their signature."""
    from .config import config_class_of

    config_class = config_class_of(factory)
    if config_class is not None:
        config = config_class.from_options(options, owner)
        try:
            return factory(config, **fixed)
        except TypeError as exc:
            raise UserError(f"{owner}: {exc}") from None
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params and not accepts_any:
            valid = [k for k, p in params.items() if k not in fixed and p.kind is not inspect.Parameter.VAR_KEYWORD]
            raise UserError(f"{owner}: unknown option {key!r}; valid options: {', '.join(valid)}")
        default = params[key].default if key in params else None
        kwargs[key] = _convert(value, None if default is inspect.Parameter.empty else default, key, owner)
    try:
        return factory(**fixed, **kwargs)
    except TypeError as exc:
        raise UserError(f"{owner}: {exc}") from None


def parse_setting(text: str) -> tuple[list[str], Any]:
    """``"diffusion.task_options.n_attack=4"`` -> (["diffusion", "task_options", "n_attack"], 4).

    The value is read as JSON when it parses (numbers, true/false/null, lists,
    objects) and kept as text otherwise, so ``task=sd-object`` needs no quotes.
    """
    path, sep, raw = str(text).partition("=")
    keys = [k.strip() for k in path.split(".")]
    if not sep or len(keys) < 2 or not all(keys):
        raise UserError(f"invalid --set {text!r}: expected SECTION.KEY=VALUE, e.g. diffusion.task=sd-object")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw.strip()
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"invalid --set {text!r}: {raw!r} is not a finite number")
    return keys, value


def apply_settings(extra: dict[str, Any], settings: list[str], sections: tuple[str, ...]) -> dict[str, Any]:
    """``extra`` (a suite's section settings) with each ``--set`` applied; the original is untouched.

    Only the suite's own report sections can be set; a key below a value that
    is not an object is refused rather than silently replaced."""
    merged = copy.deepcopy(extra)
    for text in settings:
        keys, value = parse_setting(text)
        if keys[0] not in sections:
            have = ", ".join(sections) or "none"
            raise UserError(f"--set {text!r}: this suite has no {keys[0]!r} section (its sections: {have}); pick a suite that has it, e.g. --suite {keys[0]}")
        node = merged
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: {'.'.join(keys[: depth + 1])} is {child!r}, not a group of settings")
            node = child
        node[keys[-1]] = value
    return merged
