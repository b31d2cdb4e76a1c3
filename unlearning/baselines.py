"""Baseline unlearners: retrain (the gold standard), FT, GA, RL and l1-sparse.

Retrain re-initialises the network and trains it from scratch on the retain set
with the recipe of the original (``tasks.digits.TrainRecipe`` defaults, Adam
through ``tasks.digits.train_classifier``). The approximate methods start from
the original weights with a small budget (epochs, lr) and a seeded optimiser.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_unlearner
from robustbench_peft.targets import ClassifierTarget
from tasks.digits import RECIPES, TrainRecipe, train_classifier

from .base import ForgetData, Unlearner, epoch_batches, make_optimizer, random_other_labels

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


@register_unlearner("retrain")
class Retrain(Unlearner):
    """Gold standard: re-initialise and train from scratch on the retain set with the original's recipe."""

    name = "retrain"

    def __init__(
        self,
        epochs: int = _REFERENCE.epochs,
        batch_size: int = _REFERENCE.batch_size,
        lr: float = _REFERENCE.lr,
        weight_decay: float = _REFERENCE.weight_decay,
        seed: int = _REFERENCE.seed,
        threads: int = 1,
    ) -> None:
        super().__init__(seed=seed, threads=threads)
        if epochs < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
            raise UserError("retrain needs epochs >= 1, batch_size >= 1, lr > 0 and weight_decay >= 0")
        self.recipe_ = TrainRecipe("retrain", epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), weight_decay=float(weight_decay), seed=self.seed)

    def config(self) -> dict[str, Any]:
        r = self.recipe_
        return {**super().config(), "epochs": r.epochs, "batch_size": r.batch_size, "lr": r.lr, "weight_decay": r.weight_decay, "optimizer": "adam"}

    def update(self, model: ClassifierTarget, data: ForgetData, generator: torch.Generator) -> dict[str, float]:
        reinitialize(model.model, self.seed)
        device = model.device
        train_classifier(model, data.x_retain.to(device), data.y_retain.to(device), self.recipe_)
        return {"steps": float(self.recipe_.epochs * -(-len(data.y_retain) // self.recipe_.batch_size))}


class GradientUnlearner(Unlearner):
    """Shared budget and optimiser of the approximate methods, and their training step.

    Args:
        epochs: passes over the data the method iterates on.
        lr: learning rate.
        batch_size: samples per step.
        optimizer: "sgd" (with ``momentum``) or "adam".
        weight_decay: L2 weight decay of the optimiser.
    """

    def __init__(
        self,
        epochs: int = 5,
        lr: float = 0.01,
        batch_size: int = 64,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        super().__init__(seed=seed, threads=threads)
        if epochs < 1 or batch_size < 1 or lr <= 0 or momentum < 0 or weight_decay < 0:
            raise UserError(f"{self.name}: needs epochs >= 1, batch_size >= 1, lr > 0, momentum >= 0, weight_decay >= 0")
        make_optimizer(optimizer, [nn.Parameter(torch.zeros(1))], 1.0, 0.0, 0.0)  # validates the name early
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.optimizer, self.momentum, self.weight_decay = optimizer, float(momentum), float(weight_decay)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
        }

    def new_optimizer(self, model: ClassifierTarget) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer, [p for p in model.model.parameters() if p.requires_grad], self.lr, self.momentum, self.weight_decay)

    def run_epochs(
        self,
        model: ClassifierTarget,
        n: int,
        batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
        loss_fn: Callable[[ClassifierTarget, torch.Tensor, torch.Tensor, float], torch.Tensor],
        before_step: Callable[[], None] | None = None,
        after_step: Callable[[], None] | None = None,
    ) -> int:
        """Train for ``self.epochs`` over ``n`` samples; ``batches(epoch)`` yields that epoch's
        (x, y) batches and ``loss_fn(model, x, y, progress)`` the loss (progress in [0, 1) over the run)."""
        optimizer = self.new_optimizer(model)
        device = model.device
        total = max(1, self.epochs * -(-n // self.batch_size))
        step = 0
        model.train()
        for epoch in range(self.epochs):
            for x, y in batches(epoch):
                loss = loss_fn(model, x.to(device), y.to(device), step / total)
                optimizer.zero_grad()
                loss.backward()
                if before_step is not None:
                    before_step()
                optimizer.step()
                if after_step is not None:
                    after_step()
                step += 1
        model.eval()
        return step


def _split(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for idx in epoch_batches(len(y), batch_size, generator):
        yield x[idx], y[idx]


def _ce(model: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, progress: float) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


@register_unlearner("ft")
class FineTune(GradientUnlearner):
    """FT: fine-tune the original on the retain set only (catastrophic forgetting)."""

    name = "ft"

    def update(self, model, data, generator):
        steps = self.run_epochs(model, len(data.y_retain), lambda e: _split(data.x_retain, data.y_retain, self.batch_size, generator), _ce)
        return {"steps": float(steps)}


@register_unlearner("ga")
class GradientAscent(GradientUnlearner):
    """GA: gradient ascent on the forget set's cross-entropy."""

    name = "ga"

    def update(self, model, data, generator):
        steps = self.run_epochs(
            model,
            len(data.y_forget),
            lambda e: _split(data.x_forget, data.y_forget, self.batch_size, generator),
            lambda m, x, y, progress: -F.cross_entropy(m(x), y),
        )
        return {"steps": float(steps)}


@register_unlearner("rl")
class RandomLabel(GradientUnlearner):
    """RL: cross-entropy to a random other class on the forget set plus CE on the retain set."""

    name = "rl"

    def relabelled_batches(self, data: ForgetData, generator: torch.Generator) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """Each epoch: forget samples with fresh random wrong labels, shuffled with the retain set."""
        x = torch.cat([data.x_forget, data.x_retain])

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            y = torch.cat([random_other_labels(data.y_forget, data.n_classes, generator), data.y_retain])
            return _split(x, y, self.batch_size, generator)

        return batches

    def update(self, model, data, generator):
        steps = self.run_epochs(model, len(data.y_forget) + len(data.y_retain), self.relabelled_batches(data, generator), _ce)
        return {"steps": float(steps)}


@register_unlearner("l1sparse")
class L1Sparse(GradientUnlearner):
    """l1-sparse: fine-tune on the retain set with an l1 weight penalty decaying linearly to zero."""

    name = "l1sparse"

    def __init__(
        self,
        epochs: int = 5,
        lr: float = 0.01,
        batch_size: int = 64,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        alpha: float = 1e-4,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        super().__init__(epochs, lr, batch_size, optimizer, momentum, weight_decay, seed, threads)
        if alpha < 0:
            raise UserError(f"l1sparse: alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha}

    def update(self, model, data, generator):
        def loss(m: ClassifierTarget, x: torch.Tensor, y: torch.Tensor, progress: float) -> torch.Tensor:
            l1 = sum(p.abs().sum() for p in m.model.parameters())
            return F.cross_entropy(m(x), y) + self.alpha * (1 - progress) * l1

        steps = self.run_epochs(model, len(data.y_retain), lambda e: _split(data.x_retain, data.y_retain, self.batch_size, generator), loss)
        return {"steps": float(steps)}
