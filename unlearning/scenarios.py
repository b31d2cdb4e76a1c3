"""Forget scenarios: which training samples an unlearner must forget.

A scenario (:class:`robustbench_peft.unlearner.ForgetScenario`) splits a task's
training split into disjoint forget / retain index sets that together cover it. Class-wise forgetting removes one class; random
forgetting removes a seeded fraction of the samples. Builders live in
:data:`SCENARIOS`, keyed by the name used in suite configurations.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from robustbench_peft.errors import UserError
from robustbench_peft.task import ClassificationTask
from robustbench_peft.unlearner import ForgetScenario


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
