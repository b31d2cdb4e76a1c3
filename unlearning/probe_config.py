"""Settings of the unlearning probes and checks (``suite.extra["unlearning"]["probes"]``).

Output metrics (UA, RA, TA, MIA-efficacy) cannot tell a model that forgot from
one that hides: the probes look at what the weights still hold. Every method and
retrain's own seeds go through the same probes with the same seeds, so their
numbers compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from robustbench_peft.config import PluginConfig, option, require


@dataclass(frozen=True)
class ProbeConfig(PluginConfig):
    """The relearning probe, the representation probe, the per-example MIA and the checks' level."""

    plugin: ClassVar[str] = "unlearning.probes"

    enabled: bool = option(True, "run the probes and the checks (off: the paper's output metrics only)")
    shadows: int = option(4, "K: shadow models trained with the forget set (whole training split) and K without (retrain's recipe), seeds seed+1..seed+K")
    fpr: float = option(0.05, "false-positive rate at which the per-example MIA's true-positive rate is reported")
    alpha: float = option(0.01, "one-sided level of the checks (a method is far from retrain, the MIA separates the original)")
    relearn_steps: int = option(50, "SGD steps of the relearning probe")
    relearn_lr: float = option(1e-3, "learning rate of the relearning probe")
    relearn_momentum: float = option(0.9, "SGD momentum of the relearning probe")
    relearn_batch: int = option(64, "retain samples in every relearning step")
    relearn_forget: int = option(5, "forget samples added to every step of the mixed relearning probe (held out of its evaluation)")
    relearn_level: float = option(0.5, "held-out forget accuracy at which the forgotten data counts as relearned (kept classes at least as high)")
    probe_shots: int = option(2, "held-out (test) images per class the linear probe is fitted on")
    probe_draws: int = option(20, "seeded draws of those images; the probe's accuracy and confidence are their means")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.plugin, {
            f"shadows must be >= 3 (the MIA's leave-one-out needs two left), got {self.shadows}": self.shadows >= 3,
            f"fpr must be in (0, 1), got {self.fpr}": 0 < self.fpr < 1,
            f"alpha must be in (0, 0.5), got {self.alpha}": 0 < self.alpha < 0.5,
            f"relearn_steps must be >= 1, got {self.relearn_steps}": self.relearn_steps >= 1,
            f"relearn_lr must be > 0, got {self.relearn_lr}": self.relearn_lr > 0,
            f"relearn_momentum must be >= 0, got {self.relearn_momentum}": self.relearn_momentum >= 0,
            f"relearn_batch must be >= 1, got {self.relearn_batch}": self.relearn_batch >= 1,
            f"relearn_forget must be >= 1, got {self.relearn_forget}": self.relearn_forget >= 1,
            f"relearn_level must be in (0, 1], got {self.relearn_level}": 0 < self.relearn_level <= 1,
            f"probe_shots must be >= 1, got {self.probe_shots}": self.probe_shots >= 1,
            f"probe_draws must be >= 1, got {self.probe_draws}": self.probe_draws >= 1,
        })

    def relearn_recipe(self) -> dict[str, Any]:
        """What determines a model's relearning and representation probe results (their cache key)."""
        return {k: v for k, v in self.to_json().items() if k.startswith(("relearn_", "probe_"))}
