"""The shared training of the gradient-based unlearners: budget, optimiser and epochs.

:class:`TrainingConfig` holds the budget every classifier unlearner has (retrain
included); :class:`GradientConfig` adds the optimiser choice of the approximate
methods, which :class:`GradientUnlearner` runs for them, step hooks included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from robustbench_peft.config import option, require
from robustbench_peft.errors import UserError
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.unlearner import Unlearner, UnlearnerConfig

#: Optimisers the gradient-based unlearners accept, by option value.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, momentum, weight_decay: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay),
    "adam": lambda params, lr, momentum, weight_decay: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
}


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, momentum, weight_decay)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one seeded shuffled pass over ``n`` samples."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def split(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of one seeded shuffled pass."""
    for idx in epoch_batches(len(y), batch_size, generator):
        yield x[idx], y[idx]


def random_other_labels(y: torch.Tensor, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from the true one, per sample."""
    shift = torch.randint(1, n_classes, y.shape, generator=generator)
    return (y + shift) % n_classes


@dataclass(frozen=True)
class TrainingConfig(UnlearnerConfig):
    """The training budget every classifier unlearner has."""

    epochs: int = option(5, "passes over the data the method iterates on")
    lr: float = option(0.01, "learning rate")
    batch_size: int = option(64, "samples per step")
    weight_decay: float = option(5e-4, "L2 weight decay of the optimiser")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.plugin, {
            "epochs must be >= 1": self.epochs >= 1,
            "batch_size must be >= 1": self.batch_size >= 1,
            "lr must be > 0": self.lr > 0,
            "weight_decay must be >= 0": self.weight_decay >= 0,
        })


@dataclass(frozen=True)
class GradientConfig(TrainingConfig):
    """Adds the optimiser of the approximate methods (ft, ga, rl, l1sparse, salun).

    Defaults are the SalUn reference code's (``arg_parser.py`` of
    OPTML-Group/Unlearn-Saliency/Classification): SGD, momentum 0.9, weight decay
    5e-4, batch 256, 10 epochs at lr 0.01, constant (its step decay at epochs 91
    and 136 never comes within 10 epochs). A method overrides what its paper row used.
    """

    epochs: int = option(10, "passes over the data the method iterates on")
    lr: float = option(0.01, "learning rate (constant)")
    batch_size: int = option(256, "samples per step")
    optimizer: str = option("sgd", f"optimiser: {' or '.join(OPTIMIZERS)} (momentum applies to sgd)")
    momentum: float = option(0.9, "SGD momentum")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"{self.plugin}: unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        require(self.plugin, {"momentum must be >= 0": self.momentum >= 0})


class GradientUnlearner(Unlearner):
    """The approximate methods' training step on their shared budget and optimiser."""

    config_class = GradientConfig
    config: GradientConfig

    def new_optimizer(self, model: ClassifierTarget) -> torch.optim.Optimizer:
        c = self.config
        return make_optimizer(c.optimizer, [p for p in model.model.parameters() if p.requires_grad], c.lr, c.momentum, c.weight_decay)

    def batches_of(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """Each epoch: one seeded shuffled pass over (x, y)."""
        return lambda epoch: split(x, y, self.config.batch_size, generator)

    def run_epochs(
        self,
        model: ClassifierTarget,
        n: int,
        batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
        loss_fn: Callable[[ClassifierTarget, torch.Tensor, torch.Tensor, float], torch.Tensor],
        before_step: Callable[[], None] | None = None,
        after_step: Callable[[], None] | None = None,
    ) -> int:
        """Train for ``epochs`` over ``n`` samples; ``batches(epoch)`` yields that epoch's
        (x, y) batches and ``loss_fn(model, x, y, progress)`` the loss (progress in [0, 1) over the run)."""
        epochs = self.config.epochs
        optimizer = self.new_optimizer(model)
        device = model.device
        total = max(1, epochs * -(-n // self.config.batch_size))
        step = 0
        model.train()
        for epoch in range(epochs):
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
