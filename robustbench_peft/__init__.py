"""robustbench_peft: pluggable attacks against pluggable defenses, adaptations and
unlearning methods, on image classifiers and text-to-image models, ending in one
standardized, versioned report."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import evaluate
from .models import load_target
from .registry import (
    register_attack,
    register_defense,
    register_model,
    register_suite,
    register_task,
    register_unlearner,
)
from .report import Report
from .targets import ClassifierTarget

__all__ = [
    "__version__",
    "ClassifierTarget",
    "Report",
    "evaluate",
    "load_target",
    "register_attack",
    "register_defense",
    "register_model",
    "register_suite",
    "register_task",
    "register_unlearner",
]
