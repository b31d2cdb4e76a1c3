"""The classifier unlearner contract: ``unlearn(original, task, scenario) -> UnlearnResult``.

A :class:`ForgetScenario` says which training samples must be forgotten. The
base class owns what every method needs to be comparable: it works on a deep
copy (the original is never touched), times the update (RTE), returns an
ordinary :class:`ClassifierTarget` so attacks run on it, and caches the result
by a recipe hash of the method's config, the scenario, the data and the
original weights' sha256. An unlearner is built from one frozen
:class:`UnlearnerConfig` (``Unlearner(config)`` or ``Unlearner(key=value)``).
"""

from __future__ import annotations

import copy
import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .cache import cached_tensors, state_dict_sha256
from .config import Configurable, PluginConfig, option, require
from .targets import ClassifierTarget
from .threads import torch_threads
from .task import ClassificationTask

#: Bump when an unlearner's code changes meaning, so stale cache entries are not reused.
UNLEARNING_VERSION = 2
CACHE_KIND = "unlearning"
_META = "meta."
_DETAIL = "detail."


@dataclass(frozen=True)
class ForgetScenario:
    """Disjoint, sorted forget / retain indices of a task's training split.

    ``forgotten_class`` is set for class-wise forgetting, where the test split
    also splits into kept-class and forgotten-class samples.
    """

    kind: str
    forget_idx: torch.Tensor
    retain_idx: torch.Tensor
    seed: int
    forgotten_class: int | None = None
    fraction: float | None = None

    @property
    def name(self) -> str:
        return self.kind

    def describe(self, task: ClassificationTask) -> str:
        if self.forgotten_class is not None:
            return f"class-wise: forget class {self.forgotten_class} ({task.class_names[self.forgotten_class]}), {len(self.forget_idx)} training samples"
        return f"random: forget {100 * (self.fraction or 0):g}% of the training split ({len(self.forget_idx)} samples, seed {self.seed})"

    def indices_sha256(self) -> str:
        """Identity of the split itself, so any change of it changes cache keys."""
        digest = hashlib.sha256()
        digest.update(self.forget_idx.to(torch.int64).numpy().tobytes())
        digest.update(b"|")
        digest.update(self.retain_idx.to(torch.int64).numpy().tobytes())
        return digest.hexdigest()

    def recipe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "forgotten_class": self.forgotten_class,
            "fraction": self.fraction,
            "n_forget": len(self.forget_idx),
            "n_retain": len(self.retain_idx),
            "indices_sha256": self.indices_sha256(),
        }

    def kept_test_mask(self, task: ClassificationTask) -> torch.Tensor:
        """Test samples the unlearned model should still classify (all of them for random forgetting)."""
        if self.forgotten_class is None:
            return torch.ones(len(task.y_test), dtype=torch.bool)
        return task.y_test != self.forgotten_class

    def to_json(self, task: ClassificationTask) -> dict[str, Any]:
        """The recipe with a description in words, as reports show the scenario."""
        recipe = self.recipe()
        return {"kind": recipe.pop("kind"), "description": self.describe(task), **recipe}


@dataclass
class ForgetData:
    """The forget and retain samples of a scenario, as tensors."""

    x_forget: torch.Tensor
    y_forget: torch.Tensor
    x_retain: torch.Tensor
    y_retain: torch.Tensor
    n_classes: int

    @classmethod
    def of(cls, task: ClassificationTask, scenario: ForgetScenario) -> "ForgetData":
        return cls(
            task.x_train[scenario.forget_idx],
            task.y_train[scenario.forget_idx],
            task.x_train[scenario.retain_idx],
            task.y_train[scenario.retain_idx],
            task.n_classes,
        )


@dataclass
class UnlearnResult:
    """An unlearned model (a target like any other), its run time and provenance."""

    model: ClassifierTarget
    seconds: float
    method: str
    label: str
    config: dict[str, Any]
    sha256: str
    cached: bool
    details: dict[str, float] = field(default_factory=dict)


def trainable_copy(original: ClassifierTarget) -> ClassifierTarget:
    """A deep copy of the original target whose network weights require gradients."""
    model = copy.deepcopy(original)
    for p in model.model.parameters():
        p.requires_grad_(True)
    return model


def freeze(model: ClassifierTarget) -> ClassifierTarget:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@dataclass(frozen=True)
class UnlearnerConfig(PluginConfig):
    """Options every unlearner has."""

    #: The plug-in named in validation errors (set by each method's config).
    plugin: ClassVar[str] = "unlearner"

    seed: int = option(0, "seed of every random choice of the method")
    threads: int = option(1, "torch intra-op threads while unlearning (0 keeps torch's setting)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.plugin, {f"threads must be >= 0 (0 keeps torch's setting), got {self.threads}": self.threads >= 0})


class Unlearner(Configurable, ABC):
    """Base class of classifier unlearning methods.

    Subclasses set ``name`` and ``config_class`` and implement :meth:`update`,
    which trains the given copy in place and may return numeric details for the report.
    """

    name: str = "unlearner"
    config_class: type[UnlearnerConfig] = UnlearnerConfig
    config: UnlearnerConfig

    @abstractmethod
    def update(self, model: ClassifierTarget, data: ForgetData, generator: torch.Generator) -> dict[str, float] | None:
        """Unlearn in place on ``model`` (a trainable copy of the original)."""

    def label(self) -> str:
        return self.name

    def recipe(self, original: ClassifierTarget, task: ClassificationTask, scenario: ForgetScenario) -> dict[str, Any]:
        return {
            "unlearner": self.name,
            "version": UNLEARNING_VERSION,
            "config": self.config.to_json(),
            "scenario": scenario.recipe(),
            "task": task.recipe(),
            "original_sha256": original.weights_sha256(),
        }

    def unlearn(self, original: ClassifierTarget, task: ClassificationTask, scenario: ForgetScenario, use_cache: bool = True) -> UnlearnResult:
        """Unlearn ``scenario``'s forget set from a copy of ``original`` (cached by recipe)."""
        model = trainable_copy(original)
        built = False

        def build() -> dict[str, torch.Tensor]:
            nonlocal built
            built = True
            data = ForgetData.of(task, scenario)
            generator = torch.Generator().manual_seed(self.config.seed)
            with torch_threads(self.config.threads):
                start = time.perf_counter()
                details = self.update(model, data, generator) or {}
                seconds = time.perf_counter() - start
            tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            tensors[_META + "seconds"] = torch.tensor(seconds, dtype=torch.float64)
            tensors.update({_DETAIL + k: torch.tensor(float(v), dtype=torch.float64) for k, v in details.items()})
            return tensors

        recipe = self.recipe(original, task, scenario)
        tensors = cached_tensors(CACHE_KIND, recipe, build) if use_cache else build()
        state = {k: v for k, v in tensors.items() if not k.startswith((_META, _DETAIL))}
        if not built:
            model.load_state_dict(state)
        freeze(model)
        model.name = f"{original.name}+{self.label()}"
        return UnlearnResult(
            model=model,
            seconds=float(tensors[_META + "seconds"]),
            method=self.name,
            label=self.label(),
            config=self.config.to_json(),
            sha256=state_dict_sha256(model.state_dict()),
            cached=not built,
            details={k[len(_DETAIL) :]: float(v) for k, v in tensors.items() if k.startswith(_DETAIL)},
        )
