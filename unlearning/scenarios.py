"""Forget scenarios: which training samples an unlearner must forget.

A scenario splits a task's training split into disjoint forget / retain index
sets that together cover it. Class-wise forgetting removes one class; random
forgetting removes a seeded fraction of the samples. Builders live in
:data:`SCENARIOS`, keyed by the name used in suite configurations.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from robustbench_peft.errors import UserError
from robustbench_peft.task import ClassificationTask


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
        return {
            "kind": self.kind,
            "description": self.describe(task),
            "seed": self.seed,
            "forgotten_class": self.forgotten_class,
            "fraction": self.fraction,
            "n_forget": len(self.forget_idx),
            "n_retain": len(self.retain_idx),
            "indices_sha256": self.indices_sha256(),
        }


def _complement(n: int, forget: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[forget] = False
    return keep.nonzero().flatten()


def class_wise(task: ClassificationTask, forget_class: int = 0, seed: int = 0) -> ForgetScenario:
    """Forget every training sample of one class."""
    if not 0 <= int(forget_class) < task.n_classes:
        raise UserError(f"forget_class must be in 0..{task.n_classes - 1} for task {task.name}, got {forget_class}")
    forget = (task.y_train == int(forget_class)).nonzero().flatten()
    if len(forget) == 0:
        raise UserError(f"class {forget_class} has no training samples in task {task.name}; choose another forget_class")
    return ForgetScenario("class", forget, _complement(len(task.y_train), forget), int(seed), forgotten_class=int(forget_class))


def random_subset(task: ClassificationTask, fraction: float = 0.1, seed: int = 0) -> ForgetScenario:
    """Forget a seeded uniformly random fraction of the training samples."""
    n = len(task.y_train)
    count = int(round(float(fraction) * n))
    if not 0 < float(fraction) < 1 or not 0 < count < n:
        raise UserError(f"fraction must leave a non-empty forget and retain set (0 < fraction < 1), got {fraction}")
    generator = torch.Generator().manual_seed(int(seed))
    forget = torch.randperm(n, generator=generator)[:count].sort().values
    return ForgetScenario("random", forget, _complement(n, forget), int(seed), fraction=float(fraction))


SCENARIOS: dict[str, Callable[..., ForgetScenario]] = {"class": class_wise, "random": random_subset}


def make_scenario(kind: str, task: ClassificationTask, seed: int = 0, **options: Any) -> ForgetScenario:
    """Build the scenario ``kind`` (a key of :data:`SCENARIOS`) with its options."""
    if kind not in SCENARIOS:
        raise UserError(f"unknown forget scenario {kind!r}; choose one of: {', '.join(SCENARIOS)}")
    from robustbench_peft.options import build

    return build(SCENARIOS[kind], options, owner=f"scenario {kind}", task=task, seed=seed)
