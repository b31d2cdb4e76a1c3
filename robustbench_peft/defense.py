"""The defense / adaptation contract: ``fit(base, task) -> FittedDefense``.

A fitted defense is itself a :class:`ClassifierTarget`, so every attack sees the
whole defended pipeline (adaptive evaluation). The bare base model is kept next
to it for the non-adaptive row (attack the base, then apply the defense) and the
downstream-transfer threat (the attacker holds the public pre-trained weights).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

from .targets import ClassifierTarget
from .task import ClassificationTask


@dataclass
class DefenseCost:
    """What a defense costs: the numbers reported next to its accuracy."""

    trainable_parameters: int
    stored_bytes: int
    fit_seconds: float
    forward_passes: int = 1


@dataclass
class FittedDefense:
    target: ClassifierTarget
    base: ClassifierTarget
    cost: DefenseCost
    sha256: str = ""


class Defense(ABC):
    """Base class of defenses and adaptations. Subclasses set ``name`` and implement ``fit``."""

    name: str = "defense"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    @abstractmethod
    def fit(self, base: ClassifierTarget, task: ClassificationTask) -> FittedDefense:
        """Adapt ``base`` on ``task``'s training split (never modifying ``base``'s weights in place
        unless the defense is full fine-tuning of a copy)."""

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def label(self) -> str:
        return self.name

    def record(self, fitted: FittedDefense) -> dict[str, Any]:
        return {"name": self.name, "label": self.label(), "config": self.config(), **asdict(fitted.cost), "sha256": fitted.sha256}
