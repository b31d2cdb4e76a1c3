"""The probes of one forget scenario, on every unlearned model and on retrain's seeds.

For each model: the relearning probe (forget samples mixed with retain data, and
retain data only), the representation probe, and the per-example MIA against
retrain. Retrain's seeds (the retrain row and the shadows trained without the
forget set) give each probe's spread, against which :mod:`.checks` judges the
methods. A model's relearning and representation results are cached by its
weights' hash and the probe settings, so a warm run only scores the MIA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from robustbench_peft.cache import cached_tensors
from robustbench_peft.checks import CheckResult
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask
from robustbench_peft.unlearner import ForgetScenario, Unlearner

from .checks import Distance, distance, forgets_not_hides, mia_separates_original, probes_tell_original
from .lira import PerExampleMia, shadow_models
from .probe_config import ProbeConfig
from .relearn import RelearnData, RelearnResult, relearn
from .representation import ProbeResult, linear_probe

#: Bump when a probe's code changes meaning, so cached probe results are not reused.
PROBE_VERSION = 1
CACHE_KIND = "unlearning-probes"
#: Steps stored for "not relearned within the budget".
NEVER = -1


@dataclass
class ModelProbes:
    """The relearning (mixed and retain-only) and representation probes of one model."""

    relearn: RelearnResult
    retain_relearn: RelearnResult
    representation: ProbeResult

    def fields(self) -> dict[str, Any]:
        """Row fields: fractions in [0, 1] except the steps."""
        return {
            "relearn_steps": self.relearn.steps_to_level,
            "relearn_forget": self.relearn.final,
            "relearn_area": self.relearn.area,
            "retain_relearn_forget": self.retain_relearn.final,
            "retain_relearn_area": self.retain_relearn.area,
            "probe_accuracy": self.representation.accuracy,
            "probe_confidence": self.representation.confidence,
        }

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            "probe.accuracies": torch.tensor(self.representation.accuracies, dtype=torch.float64),
            "probe.confidences": torch.tensor(self.representation.confidences, dtype=torch.float64),
        }
        for name, result in (("relearn", self.relearn), ("retain_relearn", self.retain_relearn)):
            tensors[f"{name}.curve"] = torch.tensor(result.curve, dtype=torch.float64)
            tensors[f"{name}.steps"] = torch.tensor(NEVER if result.steps_to_level is None else result.steps_to_level)
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "ModelProbes":
        def result(name: str) -> RelearnResult:
            steps = int(tensors[f"{name}.steps"])
            return RelearnResult(tensors[f"{name}.curve"].tolist(), None if steps == NEVER else steps)

        return cls(result("relearn"), result("retain_relearn"), ProbeResult(tensors["probe.accuracies"].tolist(), tensors["probe.confidences"].tolist()))


def model_probes(target: ClassifierTarget, task: ClassificationTask, scenario: ForgetScenario, data: RelearnData, config: ProbeConfig, seed: int) -> ModelProbes:
    """The probes of one model, from the cache or run now."""
    forget = task.x_train[scenario.forget_idx], task.y_train[scenario.forget_idx]

    def build() -> dict[str, torch.Tensor]:
        return ModelProbes(
            relearn(target, data, config, seed, with_forget=True),
            relearn(target, data, config, seed, with_forget=False),
            linear_probe(target, (task.x_test, task.y_test), forget, task.n_classes, config.probe_shots, config.probe_draws, seed),
        ).to_tensors()

    recipe = {"version": PROBE_VERSION, "model_sha256": target.weights_sha256(), "scenario": scenario.recipe(), "task": task.recipe(), "probes": config.relearn_recipe(), "seed": seed}
    return ModelProbes.from_tensors(cached_tensors(CACHE_KIND, recipe, build))


@dataclass(frozen=True)
class HidingStatistic:
    """A probe value the hiding check compares with retrain's seeds."""

    key: str
    higher_holds: bool
    #: The value of a row's fields (a number for every row).
    value: Callable[[dict[str, Any], ProbeConfig], float]
    #: Smallest meaningful difference, given how many forget samples the probes measure.
    resolution: Callable[[int], float]
    #: The value in words, for the check's detail.
    words: Callable[[float, Distance, ProbeConfig], str]


def _steps(fields: dict[str, Any], config: ProbeConfig) -> float:
    """Steps to relearn; one past the budget when not within it (slower than any measured)."""
    steps = fields["relearn_steps"]
    return float(config.relearn_steps + 1 if steps is None else steps)


HIDING_STATISTICS = (
    HidingStatistic(
        "relearn_steps", False, _steps, lambda n: 1.0,
        lambda v, d, c: f"relearns it to {100 * c.relearn_level:g}% in {v:g} steps (retrain's seeds {d.mean:.1f} +/- {d.std:.1f})",
    ),
    HidingStatistic(
        "probe_confidence", True, lambda fields, config: float(fields["probe_confidence"]), lambda n: 1.0 / n,
        lambda v, d, c: f"a linear probe of its features gives it {100 * v:.1f}% to the true class (retrain's seeds {100 * d.mean:.1f} +/- {100 * d.std:.1f})",
    ),
)


@dataclass
class ScenarioProbes:
    """Per row: probe fields and the hiding check; per scenario: the power checks, retrain's seeds and the MIA's setup."""

    rows: dict[str, dict[str, Any]]
    hiding: dict[str, CheckResult]
    power: list[CheckResult]
    reference: dict[str, Any]
    mia: dict[str, Any]


def hiding_verdicts(rows: dict[str, dict[str, Any]], seeds: list[dict[str, Any]], n_measured: int, config: ProbeConfig) -> dict[str, CheckResult]:
    """Each row's distances to retrain's seeds (stored in its fields) and its hiding check."""
    verdicts = {}
    for label, fields in rows.items():
        findings = {
            s.key: distance(s.value(fields, config), [s.value(f, config) for f in seeds], s.resolution(n_measured), config.alpha, s.higher_holds)
            for s in HIDING_STATISTICS
        }
        fields["distances"] = {k: d.to_json() for k, d in findings.items()}
        words = {s.key: s.words(s.value(fields, config), findings[s.key], config) for s in HIDING_STATISTICS}
        verdicts[label] = forgets_not_hides(label, findings, words)
    return verdicts


def probe_obstacle(task: ClassificationTask, scenario: ForgetScenario, config: ProbeConfig) -> str | None:
    """Why the probes cannot run on this task and scenario (too few samples), or None."""
    n_forget = len(scenario.forget_idx)
    if n_forget <= config.relearn_forget:
        return f"the forget set has {n_forget} samples; the relearning probe trains on {config.relearn_forget} and measures the rest"
    per_class = torch.bincount(task.y_test, minlength=task.n_classes)
    if int(per_class.min()) < config.probe_shots:
        return f"the test split has {int(per_class.min())} samples of some class; the linear probe draws {config.probe_shots} per class"
    return None


def probe_scenario(
    scenario: ForgetScenario,
    task: ClassificationTask,
    models: dict[str, ClassifierTarget],
    original_label: str,
    retrain: tuple[str, Unlearner],
    config: ProbeConfig,
    seed: int,
    log: Callable[[str], None],
) -> ScenarioProbes:
    """Probe every model of ``models`` (row label -> target: the original, retrain and the methods)
    against retrain (its row label and unlearner, whose recipe trains the shadows)."""
    retrain_label, retrain_unlearner = retrain
    original = models[original_label]
    forget = task.x_train[scenario.forget_idx], task.y_train[scenario.forget_idx]
    retain = task.x_train[scenario.retain_idx], task.y_train[scenario.retain_idx]
    kept = scenario.kept_test_mask(task)
    data = RelearnData.split(forget, retain, (task.x_test[kept], task.y_test[kept]), config.relearn_forget, seed)

    log(f"unlearning probes ({scenario.kind}): {2 * config.shadows} shadow models (trained once, then cached)")
    shadows = shadow_models(retrain_unlearner, original, task, scenario, config.shadows)
    mia = PerExampleMia(shadows, forget, models[retrain_label], config.fpr)

    log(f"unlearning probes ({scenario.kind}): relearning and representation probes")
    rows = {label: model_probes(target, task, scenario, data, config, seed).fields() for label, target in models.items()}
    seeds = [rows[retrain_label]] + [model_probes(m, task, scenario, data, config, seed).fields() for m in shadows.without_forget]
    for label, target in models.items():
        score = mia.score(target)
        rows[label].update({"MIA_AUC": score.auc, "MIA_TPR": score.tpr})
    hiding = hiding_verdicts(rows, seeds, len(forget[1]), config)
    null_aucs = mia.null_aucs()
    return ScenarioProbes(
        rows=rows,
        hiding=hiding,
        power=[
            mia_separates_original(rows[original_label]["MIA_AUC"], null_aucs, mia.null_std(), config.alpha),
            probes_tell_original(hiding[original_label]),
        ],
        reference={"seeds": [retrain_unlearner.config.seed] + shadows.seeds, **{s.key: [s.value(f, config) for f in seeds] for s in HIDING_STATISTICS}},
        mia={
            "shadows": config.shadows,
            "shadow_seeds": shadows.seeds,
            "fpr": config.fpr,
            "null_auc": null_aucs,
            "null_std": mia.null_std(),
            "shadow_training_seconds": shadows.seconds,
            "shadows_trained": shadows.trained,
        },
    )
