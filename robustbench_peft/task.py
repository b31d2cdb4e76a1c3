"""The task concept: data, label space and default threat models."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ClassificationTask:
    """An image-classification task in pixel space.

    ``x_*`` are float tensors in ``[0,1]`` of shape (N, C, H, W); ``y_*`` are int64
    labels. ``default_eps`` maps a threat model ("Linf", "L2") to the eps values a
    suite uses when none are given.
    """

    name: str
    class_names: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    default_eps: dict[str, list[float]] = field(default_factory=dict)
    description: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_test.shape[1:])  # type: ignore[return-value]

    def test_subset(self, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test examples (all when None): deterministic, as RobustBench does."""
        if n is None or n >= len(self.y_test):
            return self.x_test, self.y_test
        return self.x_test[:n], self.y_test[:n]

    def recipe(self) -> dict:
        """What identifies the data in cache keys."""
        return {"task": self.name, "n_train": len(self.y_train), "n_test": len(self.y_test)}

    def train_data_sha256(self) -> str:
        """The training images and labels themselves: two folders with equal counts, or one
        folder at another image size, must not share a cached fit."""
        from .cache import state_dict_sha256

        return state_dict_sha256({"x": self.x_train, "y": self.y_train})
