"""The relearning probe: how fast does fine-tuning bring the forgotten data back?

A model that hides the forget set (its weights still hold it) gets it back in a
few steps; a model that never learned it (retrain) needs many. Fine-tuning on a
few forget samples alone has no power: within a few steps every model, retrain
included, calls everything the forgotten class. So every step here mixes a small
fixed set of forget samples into a batch of retain samples, and the forgotten
data counts as back only when the held-out forget samples reach the level while
the kept classes' test accuracy is at the level too (a model that calls
everything the forgotten class has not relearned it). A second variant
fine-tunes on retain samples only (does unrelated fine-tuning bring it back?).
The same seeded recipe runs on every method and on retrain's seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustbench_peft.errors import UserError
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.unlearner import trainable_copy

from .probe_config import ProbeConfig


@dataclass
class RelearnData:
    """What the probe trains on and measures: forget samples split into the few it trains on
    and the held-out rest it measures, the retain samples and the kept classes' test samples."""

    x_train_forget: torch.Tensor
    y_train_forget: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    x_retain: torch.Tensor
    y_retain: torch.Tensor
    x_kept: torch.Tensor
    y_kept: torch.Tensor

    @classmethod
    def split(cls, forget: tuple[torch.Tensor, torch.Tensor], retain: tuple[torch.Tensor, torch.Tensor], kept: tuple[torch.Tensor, torch.Tensor], n_train: int, seed: int) -> "RelearnData":
        """Draw ``n_train`` forget samples (seeded) to relearn from; the others measure."""
        x_f, y_f = forget
        if len(y_f) <= n_train:
            raise UserError(f"the relearning probe trains on {n_train} forget samples and needs more to measure; the forget set has {len(y_f)}")
        order = torch.randperm(len(y_f), generator=torch.Generator().manual_seed(seed))
        pick, rest = order[:n_train].sort().values, order[n_train:].sort().values
        return cls(x_f[pick], y_f[pick], x_f[rest], y_f[rest], *retain, *kept)


@dataclass
class RelearnResult:
    """Held-out forget accuracy before and after every step, and when the data came back."""

    curve: list[float]
    #: First step (0 = before any) at which the held-out forget accuracy reached the level with the
    #: kept classes' accuracy at the level too; None if not within the budget.
    steps_to_level: int | None

    @property
    def final(self) -> float:
        return self.curve[-1]

    @property
    def area(self) -> float:
        """Mean held-out forget accuracy over the probe (0 = never back, 1 = never gone)."""
        return sum(self.curve) / len(self.curve)


def _accuracy(model: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x) == y).float().mean())


def relearn(model: ClassifierTarget, data: RelearnData, config: ProbeConfig, seed: int, with_forget: bool) -> RelearnResult:
    """Fine-tune a copy of ``model`` for ``config.relearn_steps`` SGD steps on seeded retain batches
    (plus the probe's forget samples in every step when ``with_forget``)."""
    copy = trainable_copy(model)
    device = copy.device
    optimizer = torch.optim.SGD(copy.model.parameters(), lr=config.relearn_lr, momentum=config.relearn_momentum)
    generator = torch.Generator().manual_seed(seed)
    level = config.relearn_level

    def back(accuracy: float) -> bool:
        return accuracy >= level and _accuracy(copy, data.x_kept, data.y_kept) >= level

    curve = [_accuracy(copy, data.x_eval, data.y_eval)]
    steps = 0 if back(curve[0]) else None
    for step in range(1, config.relearn_steps + 1):
        idx = torch.randint(len(data.y_retain), (config.relearn_batch,), generator=generator)
        x, y = data.x_retain[idx], data.y_retain[idx]
        if with_forget:
            x, y = torch.cat([x, data.x_train_forget]), torch.cat([y, data.y_train_forget])
        copy.train()
        loss = F.cross_entropy(copy(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(_accuracy(copy, data.x_eval, data.y_eval))
        if steps is None and back(curve[-1]):
            steps = step
    return RelearnResult(curve, steps)
