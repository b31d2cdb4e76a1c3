"""Model specs -> targets.

A spec is ``FAMILY:NAME`` (``digits:cnn``, ``timm:resnet18.a1_in1k``,
``hf:./my-vit``...), optionally followed by loader options in the same
``key=value,...`` syntax as attacks and defenses, after a colon:
``open_clip:DIR:templates=simple``, ``robustbench:cifar10/Linf/NAME:model_dir=DIR``.
Each family registers one loader with ``@register_model("family")``; the loader
receives everything after the first colon (options removed) and its options as
keyword arguments, and returns a :class:`~robustbench_peft.targets.ClassifierTarget`.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

from ..errors import UserError
from ..registry import MODELS
from ..targets import ClassifierTarget

#: Where a spec's options start: the first ``:`` followed by ``key=``.
OPTIONS_START = re.compile(r":(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``FAMILY:NAME``; a clear error when the spec has no family."""
    if not isinstance(spec, str) or ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        raise UserError(f"invalid model spec {spec!r}: expected FAMILY:NAME such as digits:cnn or timm:resnet18")
    family, name = spec.split(":", 1)
    return family, name


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"open_clip:DIR:templates=simple"`` -> (``"open_clip:DIR"``, {"templates": "simple"}).

    Options start at the first colon after the family that is followed by
    ``key=``; the values are text, converted by :func:`family_options`.
    """
    from ..options import parse_plugin_spec

    family, name = parse_spec(spec)
    match = OPTIONS_START.search(name)
    if match is None:
        return spec, {}
    base = f"{family}:{name[: match.start()]}"
    parse_spec(base)  # the name before the options must not be empty
    return base, dict(parse_plugin_spec(f"{family}:{name[match.end():]}").options)


def loader_parameters(family: str) -> dict[str, inspect.Parameter]:
    """The options the loader of ``family`` accepts (its parameters after the name)."""
    params = list(inspect.signature(MODELS.get(family).factory).parameters.values())
    return {p.name: p for p in params[1:] if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def family_options(spec: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against the loader of ``spec``'s family, text converted to the type of each default."""
    from ..options import _convert

    family, _ = parse_spec(spec)
    params = loader_parameters(family)
    factory: Callable[..., Any] = MODELS.get(family).factory
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    converted: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params and not accepts_any:
            valid = ", ".join(params) or "none"
            raise UserError(f"model {spec}: unknown option {key!r}; {family}: models take the options: {valid}")
        default = params[key].default if key in params else None
        converted[key] = _convert(value, None if default is inspect.Parameter.empty else default, key, f"model {spec}")
    return converted


def load_target(spec: str, **options: Any) -> ClassifierTarget:
    """Build the target a spec names (an ``nn.Module``: [0,1] images in, logits out).

    Options written in the spec (``FAMILY:NAME:key=value,...``) reach the family's
    loader; keyword ``options`` override them.
    """
    base, spec_options = split_options(spec)
    family, name = parse_spec(base)
    target = MODELS.get(family).factory(name, **family_options(spec, {**spec_options, **options}))
    target.name = spec
    return target.eval()
