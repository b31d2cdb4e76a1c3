"""Model specs -> targets.

A spec is ``FAMILY:NAME`` (``digits:cnn``, ``timm:resnet18.a1_in1k``,
``hf:./my-vit``...). Each family registers one loader with
``@register_model("family")``; the loader receives everything after the first
colon and returns a :class:`~robustbench_peft.targets.ClassifierTarget`.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..registry import MODELS
from ..targets import ClassifierTarget


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``FAMILY:NAME``; a clear error when the spec has no family."""
    if not isinstance(spec, str) or ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        raise UserError(f"invalid model spec {spec!r}: expected FAMILY:NAME such as digits:cnn or timm:resnet18")
    family, name = spec.split(":", 1)
    return family, name


def load_target(spec: str, **options: Any) -> ClassifierTarget:
    """Build the target a spec names (an ``nn.Module``: [0,1] images in, logits out)."""
    family, name = parse_spec(spec)
    target = MODELS.get(family).factory(name, **options)
    target.name = spec
    return target.eval()
