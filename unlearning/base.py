"""The unlearner contract lives in :mod:`robustbench_peft.unlearner`; these names stay importable from here."""

from robustbench_peft.unlearner import Unlearner, torch_threads  # noqa: F401
