"""The built-in suites: ``digits`` (the default, small budgets) and ``full`` (leaderboard budgets)."""

from __future__ import annotations

from .options import PluginSpec
from .registry import register_suite
from .suite import Suite


@register_suite("digits")
def digits_suite() -> Suite:
    """Default: every capability once on the embedded digits task, at small budgets."""
    return Suite(
        name="digits",
        task="digits",
        models=("digits:cnn",),
        attacks=(
            PluginSpec("pgd", {"norm": "Linf", "steps": 20}),
            PluginSpec("pgd", {"norm": "L2", "steps": 20}),
        ),
        n=540,
        description="digits:cnn under PGD Linf/L2 at the task's default eps",
    )


@register_suite("full")
def full_suite() -> Suite:
    """Leaderboard budgets on digits: PGD-100 x5 restarts on the whole test split."""
    return Suite(
        name="full",
        task="digits",
        models=("digits:cnn",),
        attacks=(
            PluginSpec("pgd", {"norm": "Linf", "steps": 100, "restarts": 5}),
            PluginSpec("pgd", {"norm": "Linf", "steps": 100, "restarts": 5, "loss": "dlr"}),
            PluginSpec("pgd", {"norm": "L2", "steps": 100, "restarts": 5}),
        ),
        description="leaderboard budgets",
    )
