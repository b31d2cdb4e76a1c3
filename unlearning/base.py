"""The unlearner contract: ``unlearn(original, task, scenario) -> UnlearnResult``.

The base class owns what every method needs to be comparable: it works on a
deep copy (the original is never touched), times the update (RTE), returns an
ordinary :class:`ClassifierTarget` so attacks run on it, and caches the result
by a recipe hash of the method's options, the scenario, the data and the
original weights' sha256.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from robustbench_peft.cache import cached_tensors, state_dict_sha256
from robustbench_peft.errors import UserError
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask

from .scenarios import ForgetScenario

#: Bump when an unlearner's code changes meaning, so stale cache entries are not reused.
UNLEARNING_VERSION = 1
CACHE_KIND = "unlearning"
_META = "meta."
_DETAIL = "detail."


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


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads (0 keeps the current setting).

    One thread is both faster for these small models on a shared CPU and makes
    the numbers independent of the machine's core count.
    """
    if n <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one seeded shuffled pass over ``n`` samples."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def random_other_labels(y: torch.Tensor, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from the true one, per sample."""
    shift = torch.randint(1, n_classes, y.shape, generator=generator)
    return (y + shift) % n_classes


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


class Unlearner(ABC):
    """Base class of classifier unlearning methods.

    Subclasses set ``name`` and implement :meth:`update`, which trains the given
    copy in place and may return numeric details for the report.

    Args:
        seed: every random choice of the method derives from it.
        threads: torch intra-op threads while unlearning (0 keeps the current setting).
    """

    name: str = "unlearner"

    def __init__(self, seed: int = 0, threads: int = 1) -> None:
        self.seed = int(seed)
        if int(threads) < 0:
            raise UserError(f"threads must be >= 0 (0 keeps torch's setting), got {threads}")
        self.threads = int(threads)

    @abstractmethod
    def update(self, model: ClassifierTarget, data: ForgetData, generator: torch.Generator) -> dict[str, float] | None:
        """Unlearn in place on ``model`` (a trainable copy of the original)."""

    def config(self) -> dict[str, Any]:
        """Every option that determines the result (recorded in reports and cache keys)."""
        return {"seed": self.seed, "threads": self.threads}

    def label(self) -> str:
        return self.name

    def recipe(self, original: ClassifierTarget, task: ClassificationTask, scenario: ForgetScenario) -> dict[str, Any]:
        return {
            "unlearner": self.name,
            "version": UNLEARNING_VERSION,
            "config": self.config(),
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
            generator = torch.Generator().manual_seed(self.seed)
            with torch_threads(self.threads):
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
            config=self.config(),
            sha256=state_dict_sha256(model.state_dict()),
            cached=not built,
            details={k[len(_DETAIL) :]: float(v) for k, v in tensors.items() if k.startswith(_DETAIL)},
        )


#: Optimisers the gradient-based unlearners accept, by option value.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, momentum, weight_decay: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay),
    "adam": lambda params, lr, momentum, weight_decay: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
}


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, momentum, weight_decay)
