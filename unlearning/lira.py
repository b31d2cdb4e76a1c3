"""Per-example membership inference against reference models, in the spirit of U-LiRA.

Population MIAs (the SVC on confidence) ask whether the forget set *looks like*
non-members on average; they overstate forgetting (Hayes et al. 2024, arXiv
2403.01218). Here each forget sample gets its own reference: K shadow models
trained with it (the whole training split) and K without it (retrain's recipe,
other seeds). A model's logit margin on the sample, ``z_y - logsumexp_{j!=y} z_j``
(LiRA's logit-scaled confidence), is scored by the likelihood ratio of two
Gaussians fitted per sample to the shadows' margins. The attack then tells the
unlearned model's scores on the forget set from retrain's: AUC (0.5 = as
retrain) and the true-positive rate at a low false-positive rate. The shadows
are retrain's own code and cache, so they train once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask
from robustbench_peft.unlearner import ForgetScenario, Unlearner, UnlearnResult

#: Scenario kind of the shadows trained with every training sample.
NOTHING_FORGOTTEN = "none"


def nothing_forgotten(task: ClassificationTask, seed: int) -> ForgetScenario:
    """The scenario that keeps the whole training split: retrain on it trains an original."""
    return ForgetScenario(NOTHING_FORGOTTEN, torch.zeros(0, dtype=torch.long), torch.arange(len(task.y_train)), seed)


@dataclass
class Shadows:
    """K models trained with the forget set and K without; ``seconds`` is their training time as
    recorded when they were built (cached ones included), ``trained`` how many were built now."""

    with_forget: list[ClassifierTarget]
    without_forget: list[ClassifierTarget]
    seeds: list[int]
    seconds: float
    trained: int


def shadow_models(retrain: Unlearner, original: ClassifierTarget, task: ClassificationTask, scenario: ForgetScenario, k: int) -> Shadows:
    """``k`` seeds after retrain's own, each trained with and without the forget set by retrain's recipe."""
    seeds = [retrain.config.seed + 1 + i for i in range(k)]
    everything = nothing_forgotten(task, scenario.seed)
    built: list[UnlearnResult] = []
    for target_scenario in (everything, scenario):
        built += [type(retrain)(retrain.config.replace(seed=s)).unlearn(original, task, target_scenario) for s in seeds]
    return Shadows(
        with_forget=[r.model for r in built[:k]],
        without_forget=[r.model for r in built[k:]],
        seeds=seeds,
        seconds=sum(r.seconds for r in built),
        trained=sum(not r.cached for r in built),
    )


def logit_margin(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - logsumexp_{j != y} z_j`` per sample: the log-odds of the true class, computed stably."""
    logits = target.logits(x).double()
    true = logits.gather(1, y.view(-1, 1)).flatten()
    others = logits.scatter(1, y.view(-1, 1), -math.inf)
    return true - torch.logsumexp(others, 1)


@dataclass
class Reference:
    """Per-sample Gaussians of the shadows' margins, with and without the sample."""

    mean_in: torch.Tensor
    std_in: torch.Tensor
    mean_out: torch.Tensor
    std_out: torch.Tensor


def _std(margins: torch.Tensor) -> torch.Tensor:
    """Per-sample standard deviation over models; the pooled one where a sample's is zero."""
    std = margins.std(0)
    pooled = margins.var(0).mean().sqrt().clamp_min(torch.finfo(margins.dtype).tiny)
    return torch.where(std > 0, std, pooled)


def fit_reference(margins_in: torch.Tensor, margins_out: torch.Tensor) -> Reference:
    """Gaussians per sample from (models x samples) margins of the shadows."""
    return Reference(margins_in.mean(0), _std(margins_in), margins_out.mean(0), _std(margins_out))


def likelihood_ratio(margins: torch.Tensor, ref: Reference) -> torch.Tensor:
    """log N(margin; in) - log N(margin; out) per sample: large = looks trained on the sample."""
    log_in = -0.5 * ((margins - ref.mean_in) / ref.std_in) ** 2 - ref.std_in.log()
    log_out = -0.5 * ((margins - ref.mean_out) / ref.std_out) ** 2 - ref.std_out.log()
    return torch.nan_to_num(log_in - log_out)


def auc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """P(positive score > negative score), ties counted half (Mann-Whitney)."""
    p, n = positives.view(-1, 1), negatives.view(1, -1)
    return float(((p > n).double() + 0.5 * (p == n).double()).mean())


def auc_null_std(n_positives: int, n_negatives: int) -> float:
    """Standard deviation of the Mann-Whitney AUC when both sets come from one distribution."""
    return math.sqrt((n_positives + n_negatives + 1) / (12 * n_positives * n_negatives))


def tpr_at_fpr(positives: torch.Tensor, negatives: torch.Tensor, fpr: float) -> float:
    """Fraction of positives above the lowest threshold that at most ``fpr`` of the negatives exceed."""
    ranked = negatives.sort(descending=True).values
    threshold = ranked[min(int(math.floor(fpr * len(ranked))), len(ranked) - 1)]
    return float((positives > threshold).double().mean())


@dataclass
class MiaScore:
    """The per-example MIA against retrain for one model."""

    auc: float
    tpr: float


class PerExampleMia:
    """Scores models' forget-set margins against the shadows, with retrain's scores as negatives."""

    def __init__(self, shadows: Shadows, forget: tuple[torch.Tensor, torch.Tensor], retrain: ClassifierTarget, fpr: float) -> None:
        self.forget = forget
        self.fpr = fpr
        self.margins_in = torch.stack([logit_margin(m, *forget) for m in shadows.with_forget])
        self.margins_out = torch.stack([logit_margin(m, *forget) for m in shadows.without_forget])
        self.retrain_margins = logit_margin(retrain, *forget)
        self.reference = fit_reference(self.margins_in, self.margins_out)
        self.negatives = likelihood_ratio(self.retrain_margins, self.reference)

    def score(self, target: ClassifierTarget) -> MiaScore:
        positives = likelihood_ratio(logit_margin(target, *self.forget), self.reference)
        return MiaScore(auc(positives, self.negatives), tpr_at_fpr(positives, self.negatives, self.fpr))

    def null_aucs(self) -> list[float]:
        """Each shadow without the forget set (another retrain seed) against retrain, fitted on the others."""
        k = len(self.margins_out)
        values = []
        for j in range(k):
            others = self.margins_out[[i for i in range(k) if i != j]]
            ref = fit_reference(self.margins_in, others)
            values.append(auc(likelihood_ratio(self.margins_out[j], ref), likelihood_ratio(self.retrain_margins, ref)))
        return values

    def null_std(self) -> float:
        n = len(self.retrain_margins)
        return auc_null_std(n, n)
