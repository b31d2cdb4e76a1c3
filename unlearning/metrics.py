"""The standard unlearning metrics: UA, RA, TA, MIA-efficacy, RTE and Avg. Gap.

All accuracies are fractions in [0, 1]. For class-wise forgetting TA is measured
on the test samples of the kept classes and reported separately for the
forgotten class. MIA-efficacy follows SalUn's reference code
(``evaluation/SVC_MIA.py``, ``main_random.py`` / ``main_forget.py`` of
OPTML-Group/Unlearn-Saliency): an RBF SVC (C=3, gamma "auto") learns member vs
non-member from the true-class softmax confidence, with the first ``len(test)``
retain samples in training order as members (the reference's
``Subset(retain, range(test_len))``) and the whole test split as non-members;
efficacy is the fraction of forget samples it calls non-members.
"""

from __future__ import annotations

from typing import Any

import torch

from robustbench_peft.registry import ATTACKS
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask
from robustbench_peft.unlearner import ForgetScenario

#: Metrics averaged by Avg. Gap (each compared with Retrain), as the paper defines it.
GAP_METRICS = ("UA", "RA", "TA", "MIA")
#: Metrics averaged by the gap over every metric: the paper's four and the probes' fractions
#: (per-example MIA AUC, mean forget accuracy while relearning with and without forget samples,
#: linear-probe accuracy on the forget set), each against retrain's own value.
ALL_GAP_METRICS = GAP_METRICS + ("MIA_AUC", "relearn_area", "retain_relearn_area", "probe_accuracy")
SVC_C = 3.0


def accuracy(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Top-1 accuracy, or None on an empty set."""
    if len(y) == 0:
        return None
    return float((target.predict(x) == y).float().mean())


def true_class_confidence(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the true class, per sample (0 where a diverged model gives NaN)."""
    probs = target.logits(x).softmax(1).gather(1, y.view(-1, 1)).flatten()
    return torch.nan_to_num(probs, nan=0.0, posinf=0.0, neginf=0.0)


def mia_efficacy(
    target: ClassifierTarget,
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    forget: tuple[torch.Tensor, torch.Tensor],
) -> float:
    """Fraction of forget samples an SVC membership attack predicts to be non-members.

    The SVC trains on the first ``len(non_members)`` members in their given
    (training) order, as the reference code takes them, against every non-member.
    """
    from sklearn.svm import SVC

    x_in, y_in = members
    n = min(len(y_in), len(non_members[1]))
    conf_in = true_class_confidence(target, x_in[:n], y_in[:n])
    conf_out = true_class_confidence(target, *non_members)
    features = torch.cat([conf_in, conf_out]).double().view(-1, 1).numpy()
    labels = [1] * len(conf_in) + [0] * len(conf_out)
    svc = SVC(C=SVC_C, kernel="rbf", gamma="auto").fit(features, labels)
    predicted = svc.predict(true_class_confidence(target, *forget).double().view(-1, 1).numpy())
    return float((predicted == 0).mean())


def robust_accuracy(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int) -> float:
    """PGD Linf robust accuracy of the (unlearned) target at ``eps``."""
    attack = ATTACKS.create("pgd", norm="Linf", steps=steps, seed=seed, progress=False)
    return float(attack(target, x, y, [eps]).robust_accuracy[0])


def middle_eps(task: ClassificationTask, norm: str = "Linf") -> float | None:
    """The middle of the task's default eps values for ``norm`` (None if it has none)."""
    values = sorted(task.default_eps.get(norm, []))
    return values[len(values) // 2] if values else None


def evaluate(
    target: ClassifierTarget,
    task: ClassificationTask,
    scenario: ForgetScenario,
    seed: int = 0,
    pgd_steps: int = 20,
) -> dict[str, Any]:
    """UA, RA, TA (and TA of the forgotten class), MIA-efficacy and PGD robust accuracy."""
    x_f, y_f = task.x_train[scenario.forget_idx], task.y_train[scenario.forget_idx]
    x_r, y_r = task.x_train[scenario.retain_idx], task.y_train[scenario.retain_idx]
    kept = scenario.kept_test_mask(task)
    x_t, y_t = task.x_test[kept], task.y_test[kept]
    forget_acc = accuracy(target, x_f, y_f)
    metrics: dict[str, Any] = {
        "UA": None if forget_acc is None else 1.0 - forget_acc,
        "RA": accuracy(target, x_r, y_r),
        "TA": accuracy(target, x_t, y_t),
        "TA_forgotten": accuracy(target, task.x_test[~kept], task.y_test[~kept]) if scenario.forgotten_class is not None else None,
        "MIA": mia_efficacy(target, (x_r, y_r), (task.x_test, task.y_test), (x_f, y_f)),
    }
    eps = middle_eps(task)
    if eps is not None and pgd_steps > 0:
        metrics["robust_eps"] = eps
        metrics["robust_accuracy"] = robust_accuracy(target, x_t, y_t, eps, pgd_steps, seed)
    return metrics


def avg_gap(metrics: dict[str, Any], reference: dict[str, Any]) -> float | None:
    """Mean |metric - reference| over UA, RA, TA and MIA (None if any is missing)."""
    return mean_gap(metrics, reference, GAP_METRICS)


def mean_gap(metrics: dict[str, Any], reference: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    """Mean |metric - reference| over ``keys`` (None if any is missing)."""
    gaps = []
    for key in keys:
        if metrics.get(key) is None or reference.get(key) is None:
            return None
        gaps.append(abs(metrics[key] - reference[key]))
    return sum(gaps) / len(gaps)
