"""Baseline unlearners: retrain (the gold standard), FT, GA, RL and l1-sparse.

Retrain re-initialises the network and trains it from scratch on the retain set
with the recipe of the original (``tasks.digits.TrainRecipe`` defaults, Adam
through ``tasks.digits.train_classifier``). The approximate methods start from
the original weights with a seeded SGD at the budgets of SalUn's reference code
(README of OPTML-Group/Unlearn-Saliency/Classification): FT 10 epochs at lr
0.01, GA 5 epochs at lr 1e-4, l1-sparse 10 epochs at lr 0.01, RL the budget of
SalUn (10 epochs at lr 0.013), so that RL and SalUn differ by the mask alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_peft.config import option, require
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_unlearner
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.unlearner import ForgetData, Unlearner
from tasks.digits import RECIPES, TrainRecipe, train_classifier

from .training import GradientConfig, GradientUnlearner, TrainingConfig, random_other_labels, split

_REFERENCE = RECIPES["cnn"]


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Fresh seeded weights: every submodule's ``reset_parameters`` in module order.

    For a network built in the order its modules are registered (as the digits
    models are), this reproduces the initialisation of ``torch.manual_seed(seed)``
    followed by the constructor, i.e. the original training's starting point.
    """
    resettable = [m for m in model.modules() if callable(getattr(m, "reset_parameters", None))]
    if not resettable:
        raise UserError(f"{type(model).__name__} has no module with reset_parameters(); retrain cannot re-initialise it")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in resettable:
            module.reset_parameters()
    return model


@dataclass(frozen=True)
class RetrainConfig(TrainingConfig):
    """Options of ``retrain``: the budget of the original's training recipe (Adam)."""

    plugin: ClassVar[str] = "retrain"

    seed: int = option(_REFERENCE.seed, "seed of the re-initialisation and the training (the original's by default)")
    epochs: int = option(_REFERENCE.epochs, "training epochs (the original's by default)")
    lr: float = option(_REFERENCE.lr, "Adam learning rate (the original's by default)")
    batch_size: int = option(_REFERENCE.batch_size, "samples per step (the original's by default)")
    weight_decay: float = option(_REFERENCE.weight_decay, "Adam weight decay (the original's by default)")

    def train_recipe(self) -> TrainRecipe:
        return TrainRecipe("retrain", epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay, seed=self.seed)


@register_unlearner("retrain")
class Retrain(Unlearner):
    """Gold standard: re-initialise and train from scratch on the retain set with the original's recipe."""

    name = "retrain"
    config_class = RetrainConfig
    config: RetrainConfig

    def update(self, model: ClassifierTarget, data: ForgetData, generator: torch.Generator) -> dict[str, float]:
        recipe = self.config.train_recipe()
        reinitialize(model.model, recipe.seed)
        device = model.device
        train_classifier(model, data.x_retain.to(device), data.y_retain.to(device), recipe)
        return {"steps": float(recipe.epochs * -(-len(data.y_retain) // recipe.batch_size))}


def _ce(model: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, progress: float) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


@register_unlearner("ft")
class FineTune(GradientUnlearner):
    """FT: fine-tune the original on the retain set only (catastrophic forgetting)."""

    name = "ft"

    def update(self, model, data, generator):
        steps = self.run_epochs(model, len(data.y_retain), self.batches_of(data.x_retain, data.y_retain, generator), _ce)
        return {"steps": float(steps)}


@dataclass(frozen=True)
class RandomLabelConfig(GradientConfig):
    """Options of ``rl`` (and ``salun``): SalUn's budget, 10 epochs of SGD at lr 0.013."""

    plugin: ClassVar[str] = "rl"

    lr: float = option(0.013, "learning rate (constant); SalUn's 0.013")


@dataclass(frozen=True)
class GradientAscentConfig(GradientConfig):
    """Options of ``ga``: the reference's 5 epochs at lr 1e-4."""

    plugin: ClassVar[str] = "ga"

    epochs: int = option(5, "passes over the forget set")
    lr: float = option(1e-4, "learning rate (constant)")


@register_unlearner("ga")
class GradientAscent(GradientUnlearner):
    """GA: gradient ascent on the forget set's cross-entropy."""

    name = "ga"
    config_class = GradientAscentConfig

    def update(self, model, data, generator):
        steps = self.run_epochs(model, len(data.y_forget), self.batches_of(data.x_forget, data.y_forget, generator), lambda m, x, y, progress: -F.cross_entropy(m(x), y))
        return {"steps": float(steps)}


@register_unlearner("rl")
class RandomLabel(GradientUnlearner):
    """RL: cross-entropy to a random other class on the forget set, then CE on the retain set, every epoch.

    As the reference code's CIFAR-10 loop (``unlearn/RL.py``): each epoch is one
    pass over the forget set with fresh random labels, then one pass over the
    retain set, each in its own shuffled batches. Stated deviation: the random
    label is drawn among the other classes (y' != y, as the paper writes the
    loss); the reference draws among all classes, the true one included.
    """

    name = "rl"
    config_class = RandomLabelConfig

    def relabelled_batches(self, data: ForgetData, generator: torch.Generator) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """Each epoch: the forget samples with fresh random wrong labels, then the retain samples."""
        size = self.config.batch_size

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            yield from split(data.x_forget, random_other_labels(data.y_forget, data.n_classes, generator), size, generator)
            yield from split(data.x_retain, data.y_retain, size, generator)

        return batches

    def update(self, model, data, generator):
        steps = self.run_epochs(model, len(data.y_forget) + len(data.y_retain), self.relabelled_batches(data, generator), _ce)
        return {"steps": float(steps)}


@dataclass(frozen=True)
class L1SparseConfig(GradientConfig):
    """Options of ``l1sparse``: the approximate methods' budget and the l1 weight."""

    plugin: ClassVar[str] = "l1sparse"

    alpha: float = option(1e-4, "initial weight of the l1 penalty on all weights (decays linearly to zero)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.plugin, {f"alpha must be >= 0, got {self.alpha}": self.alpha >= 0})


@register_unlearner("l1sparse")
class L1Sparse(GradientUnlearner):
    """l1-sparse: fine-tune on the retain set with an l1 weight penalty decaying linearly to zero."""

    name = "l1sparse"
    config_class = L1SparseConfig
    config: L1SparseConfig

    def update(self, model, data, generator):
        alpha = self.config.alpha

        def loss(m: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, progress: float) -> torch.Tensor:
            l1 = sum(p.abs().sum() for p in m.model.parameters())
            return F.cross_entropy(m(x), y) + alpha * (1 - progress) * l1

        steps = self.run_epochs(model, len(data.y_retain), self.batches_of(data.x_retain, data.y_retain, generator), loss)
        return {"steps": float(steps)}
