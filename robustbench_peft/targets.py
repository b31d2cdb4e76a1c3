"""Targets: the only things attacks see.

A :class:`ClassifierTarget` maps ``[0,1]`` NCHW float images to logits. Whatever
the model needs (resizing, normalisation, visual prompts, label mapping) lives
inside it, so attacks always work in pixel space under one threat model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .cache import state_dict_sha256
from .errors import UnreliableModelError, UserError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a module, so it is part of the attacked graph."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ClassifierTarget(nn.Module):
    """A classifier in the threat model's coordinates: ``[0,1]`` images in, logits out.

    Args:
        model: the network proper (expects the output of ``preprocess``).
        n_classes: number of logits.
        input_shape: (C, H, W) of the pixel-space input the attacks perturb.
        preprocess: module applied first (resize, crop, normalise); identity if None.
        name: the model spec, for reports.
        is_stochastic: the prediction is randomised (then EOT is needed).
    """

    def __init__(
        self,
        model: nn.Module,
        n_classes: int,
        input_shape: tuple[int, int, int],
        preprocess: nn.Module | None = None,
        name: str = "model",
        is_stochastic: bool = False,
        forward_passes: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.preprocess = preprocess if preprocess is not None else nn.Identity()
        self.n_classes = int(n_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.name = name
        self.is_stochastic = is_stochastic
        self.forward_passes = forward_passes
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def check_input(self, x: torch.Tensor) -> None:
        """Reject inputs outside the contract with a message that says what to fix."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise UserError(f"{self.name}: inputs must be float tensors in [0,1], got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise UserError(
                f"{self.name}: expected inputs of shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise UserError(f"{self.name}: inputs must lie in [0,1]; normalisation belongs inside the target")

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits in eval mode, batched, on the target's device; returned on the CPU."""
        self.eval()
        outs = []
        for start in range(0, len(x), batch_size):
            outs.append(self(x[start : start + batch_size].to(self.device)).float().cpu())
        out = torch.cat(outs) if outs else torch.empty(0, self.n_classes)
        return out

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self.logits(x, batch_size).argmax(1)

    def validate_outputs(self, x: torch.Tensor) -> None:
        """Fail clearly if the model is not a logits classifier of the declared size."""
        out = self.logits(x[: min(len(x), 16)])
        if out.dim() != 2 or out.shape[1] != self.n_classes:
            raise UnreliableModelError(
                f"{self.name}: model returned shape {tuple(out.shape)}, expected (N, {self.n_classes}) logits"
            )
        if not torch.isfinite(out).all():
            raise UnreliableModelError(f"{self.name}: model returned NaN or infinite outputs")
        if len(out) > 1 and bool((out >= 0).all()) and bool((out <= 1).all()) and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-4):
            raise UnreliableModelError(
                f"{self.name}: model returns probabilities (rows sum to 1); return logits instead, e.g. drop the final softmax"
            )

    def gradient_variants(self, norm: str) -> dict[str, "ClassifierTarget"]:
        """Other targets with the same outputs but another input gradient, each worth attacking
        under ``norm`` (white-box attacks run on each and keep the per-sample worst). None here."""
        return {}

    def weights_sha256(self) -> str:
        return state_dict_sha256(self.state_dict())


def as_classifier_target(model: nn.Module, n_classes: int, input_shape: tuple[int, int, int], name: str) -> ClassifierTarget:
    """Wrap a user ``nn.Module`` mapping [0,1] images to logits (targets pass through)."""
    if isinstance(model, ClassifierTarget):
        return model
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a spec string or a torch.nn.Module, got {type(model).__name__}")
    return ClassifierTarget(model, n_classes=n_classes, input_shape=input_shape, name=name)
