"""The defense / adaptation contract: ``fit(base, task) -> FittedDefense``.

A fitted defense is itself a :class:`ClassifierTarget`, so every attack sees the
whole defended pipeline (adaptive evaluation). The bare base model is kept next
to it for the non-adaptive row (attack the base, then apply the defense) and the
downstream-transfer threat (the attacker holds the public pre-trained weights).

A defense is built from one frozen :class:`DefenseConfig` (``Defense(config)`` or
``Defense(key=value)``) that never changes: what a fit decides (an option left
to the task's default, the layers an adapter went on) lives in the
:class:`FittedDefense` it returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .config import Configurable, PluginConfig, option
from .targets import ClassifierTarget
from .task import ClassificationTask


@dataclass(frozen=True)
class DefenseConfig(PluginConfig):
    """Options every defense has."""

    seed: int = option(0, "seed of every random choice of the fit")


@dataclass
class DefenseCost:
    """What a defense costs: the numbers reported next to its accuracy."""

    trainable_parameters: int
    stored_bytes: int
    fit_seconds: float
    forward_passes: int = 1


@dataclass
class FittedDefense:
    """The defended target, its public base and cost, and what the fit decided (``details``:
    values chosen for options left to the task's default, layers adapted); reports merge
    ``details`` into the recorded config."""

    target: ClassifierTarget
    base: ClassifierTarget
    cost: DefenseCost
    sha256: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Defense(Configurable, ABC):
    """Base class of defenses and adaptations. Subclasses set ``name``, ``config_class`` and implement ``fit``."""

    name: str = "defense"
    config_class: type[DefenseConfig] = DefenseConfig
    config: DefenseConfig

    @property
    def options(self) -> dict[str, Any]:
        """The config's fields by name, as typed (tuples stay tuples)."""
        return {f.name: getattr(self.config, f.name) for f in fields(self.config)}

    @abstractmethod
    def fit(self, base: ClassifierTarget, task: ClassificationTask) -> FittedDefense:
        """Adapt ``base`` on ``task``'s training split (never modifying ``base``'s weights in place
        unless the defense is full fine-tuning of a copy)."""

    def label(self) -> str:
        return self.name

    def record(self, fitted: FittedDefense) -> dict[str, Any]:
        config = {**self.config.to_json(), **fitted.details}
        return {"name": self.name, "label": self.label(), "config": config, **asdict(fitted.cost), "sha256": fitted.sha256}
