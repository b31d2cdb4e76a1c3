"""The embedded default task: scikit-learn's bundled 8x8 handwritten digits.

Works offline on any machine. The suite trains its own reference classifier
(``digits:cnn``) and a surrogate of a different architecture
(``digits:surrogate``) deterministically on first use and caches them by recipe.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robustbench_peft.cache import cached_tensors
from robustbench_peft.errors import UserError
from robustbench_peft.models.file_family import register_architecture
from robustbench_peft.registry import register_model, register_task
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLIT_SEED = 0
TEST_FRACTION = 0.3


@register_task("digits")
@functools.lru_cache(maxsize=1)
def digits_task() -> ClassificationTask:
    """scikit-learn's bundled 8x8 digits (1797 images), pixels in [0,1], seeded stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return ClassificationTask(
        name="digits",
        class_names=list(DIGIT_NAMES),
        x_train=torch.from_numpy(x_tr),
        y_train=torch.from_numpy(y_tr),
        x_test=torch.from_numpy(x_te),
        y_test=torch.from_numpy(y_te),
        default_eps={"Linf": [0.05, 0.1, 0.2], "L2": [0.5, 1.0, 2.0]},
        description="scikit-learn digits, 1x8x8, 10 classes, 1257 train / 540 test",
    )


class DigitsCNN(nn.Module):
    """The reference classifier: two 3x3 conv layers, max-pool, two linear layers."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class DigitsMLP(nn.Module):
    """The surrogate: a fully connected network, so transfer crosses architectures."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that determines a reference model's weights."""

    architecture: str
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


ARCHITECTURES: dict[str, type[nn.Module]] = {"cnn": DigitsCNN, "surrogate": DigitsMLP}
RECIPES = {"cnn": TrainRecipe("cnn"), "surrogate": TrainRecipe("surrogate", seed=1)}


@register_architecture("digits")
def digits_architecture(name: str, num_classes: int, model_args: dict[str, Any]) -> nn.Module:
    """``file:`` sidecars naming ``digits:cnn`` or ``digits:surrogate`` rebuild the network from here."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown digits architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](num_classes, **model_args)


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe) -> nn.Module:
    """Plain seeded Adam training on the task's training split."""
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def build_reference_model(name: str) -> nn.Module:
    """The trained reference network ``name``, from the cache or trained now."""
    if name not in RECIPES:
        raise UserError(f"unknown digits model {name!r}; choose one of: {', '.join(sorted(RECIPES))} (e.g. digits:cnn)")
    recipe = RECIPES[name]
    task = digits_task()

    def train() -> dict[str, torch.Tensor]:
        torch.manual_seed(recipe.seed)
        model = ARCHITECTURES[name](task.n_classes)
        return train_classifier(model, task.x_train, task.y_train, recipe).state_dict()

    state = cached_tensors("digits-models", {**asdict(recipe), **task.recipe()}, train)
    model = ARCHITECTURES[name](task.n_classes)
    model.load_state_dict(state)
    return model.eval()


@register_model("digits")
def digits_model(name: str) -> ClassifierTarget:
    """Reference models of the digits task trained by the suite: digits:cnn, digits:surrogate."""
    model = build_reference_model(name)
    for p in model.parameters():
        p.requires_grad_(False)
    return ClassifierTarget(model, n_classes=10, input_shape=(1, 8, 8), name=f"digits:{name}")
