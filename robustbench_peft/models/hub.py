"""Model families backed by hubs and files; importing this module registers them.

``timm:``, ``torchvision:``, ``open_clip:``, ``hf:``, ``robustbench:`` and
``file:`` each live in their own module and import their library only when a
spec of theirs is loaded, so listing plug-ins stays fast.

:func:`load_for_task` loads a spec for a task: families that need to know the
task (the pixel size it gives, the class names a zero-shot model scores) get
them as options, the others are loaded as :func:`load_target` would.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from ..registry import MODELS
from ..targets import ClassifierTarget
from ..task import ClassificationTask
from . import file_family, hf_family, open_clip_family, robustbench_family, timm_family, torchvision_family  # noqa: F401
from . import load_target, parse_spec

#: Option name -> how a task supplies it; a family receives the ones its loader accepts.
TASK_HINTS: dict[str, Callable[[ClassificationTask], Any]] = {
    "class_names": lambda task: list(task.class_names),
    "input_shape": lambda task: tuple(task.input_shape),
}


def task_options(spec: str, task: ClassificationTask) -> dict[str, Any]:
    """The task hints the loader of ``spec``'s family accepts."""
    family, _ = parse_spec(spec)
    params = inspect.signature(MODELS.get(family).factory).parameters
    return {name: hint(task) for name, hint in TASK_HINTS.items() if name in params}


def load_for_task(spec: str, task: ClassificationTask, **options: Any) -> ClassifierTarget:
    """:func:`load_target` with the task's pixel size and class names for families that use them."""
    return load_target(spec, **{**task_options(spec, task), **options})
