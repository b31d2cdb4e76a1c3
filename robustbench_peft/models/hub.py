"""Model families backed by hubs and files; importing this module registers them.

``timm:``, ``torchvision:``, ``open_clip:``, ``hf:``, ``robustbench:`` and
``file:`` each live in their own module and import their library only when a
spec of theirs is loaded, so listing plug-ins stays fast.

:func:`load_for_task` loads a spec for a task: families that need to know the
task (the pixel size it gives, the class names a zero-shot model scores) get
them as options, the others are loaded as :func:`load_target` would. The runner
loads every model spec this way.
"""

from __future__ import annotations

from typing import Any, Callable

from ..targets import ClassifierTarget
from ..task import ClassificationTask
from . import file_family, hf_family, open_clip_family, robustbench_family, timm_family, torchvision_family  # noqa: F401
from . import load_target, loader_parameters, parse_spec, split_options

#: Option name -> how a task supplies it; a family receives the ones its loader accepts.
TASK_HINTS: dict[str, Callable[[ClassificationTask], Any]] = {
    "class_names": lambda task: list(task.class_names),
    "input_shape": lambda task: tuple(task.input_shape),
}


def task_options(spec: str, task: ClassificationTask) -> dict[str, Any]:
    """The task hints the loader of ``spec``'s family accepts and the spec does not set itself."""
    family, _ = parse_spec(spec)
    params = loader_parameters(family)
    _, own = split_options(spec)
    return {name: hint(task) for name, hint in TASK_HINTS.items() if name in params and name not in own}


def load_for_task(spec: str, task: ClassificationTask, **options: Any) -> ClassifierTarget:
    """:func:`load_target` with the task's pixel size and class names for families that use them.

    The target then takes the task's images as they are (the attacks perturb at the
    task's pixel size) and resizes them to the network's own input size inside.
    Options in the spec, then keyword ``options``, take precedence over the task's.
    """
    return load_target(spec, **{**task_options(spec, task), **options})
