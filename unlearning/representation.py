"""The representation probe: is the forget set still linearly readable from a model's features?

An unlearner can make the outputs look forgotten while the features underneath
still separate the forgotten data (a changed head over unchanged features). A
linear probe on the penultimate features, fitted on a few held-out images per
class (the test split, forgotten class included), then asked to classify the
forget set, reads what the features still hold. Few shots per class keep the
probe sensitive: with the whole test split the class is decodable from almost
any digits model, retrain's included. Each draw of the shots is seeded. Beside
the accuracy, the probe's confidence (its mean probability of the true class)
reads the same thing without accuracy's ceiling at 100%, so it tells models
apart that the accuracy cannot; the checks use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_peft.errors import UserError
from robustbench_peft.targets import ClassifierTarget

#: Iterations of the probe's solver: the few-shot problems converge in far fewer.
PROBE_MAX_ITER = 1000


def final_linear(target: ClassifierTarget) -> nn.Linear:
    """The last ``nn.Linear`` of the network: the layer whose output is the logits."""
    layers = [m for m in target.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise UserError(f"{target.name} has no nn.Linear layer: the probes need a linear head over penultimate features")
    return layers[-1]


@torch.no_grad()
def penultimate_features(target: ClassifierTarget, x: torch.Tensor) -> torch.Tensor:
    """The input of the final linear layer for ``x`` (what the head reads)."""
    captured: list[torch.Tensor] = []
    handle = final_linear(target).register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach().flatten(1)))
    try:
        target.eval()
        target(x.to(target.device))
    finally:
        handle.remove()
    return captured[0].cpu()


def few_shot_indices(y: torch.Tensor, n_classes: int, shots: int, generator: torch.Generator) -> torch.Tensor:
    """``shots`` seeded random indices of every class of ``y``."""
    chosen = []
    for c in range(n_classes):
        members = (y == c).nonzero().flatten()
        if len(members) < shots:
            raise UserError(f"the representation probe needs {shots} held-out samples of class {c}, the test split has {len(members)}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(chosen)


@dataclass
class ProbeResult:
    """Forget-set accuracy and confidence (mean probability of the true class) of the linear probe, per draw."""

    accuracies: list[float]
    confidences: list[float]

    @property
    def accuracy(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def confidence(self) -> float:
        return sum(self.confidences) / len(self.confidences)


def linear_probe(
    target: ClassifierTarget,
    held_out: tuple[torch.Tensor, torch.Tensor],
    forget: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
    shots: int,
    draws: int,
    seed: int,
) -> ProbeResult:
    """Fit a logistic regression on standardised penultimate features of ``shots`` held-out
    images per class, ``draws`` times, and score it on the forget set."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_features = penultimate_features(target, held_out[0]).double().numpy()
    forget_features = penultimate_features(target, forget[0]).double().numpy()
    y_held, y_forget = held_out[1], forget[1].numpy()
    generator = torch.Generator().manual_seed(seed)
    accuracies, confidences = [], []
    for _ in range(draws):
        idx = few_shot_indices(y_held, n_classes, shots, generator).numpy()
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER))
        probe.fit(train_features[idx], y_held.numpy()[idx])
        probabilities = probe.predict_proba(forget_features)
        true_column = np.searchsorted(probe.classes_, y_forget)
        accuracies.append(float((probe.classes_[probabilities.argmax(1)] == y_forget).mean()))
        confidences.append(float(probabilities[np.arange(len(y_forget)), true_column].mean()))
    return ProbeResult(accuracies, confidences)
