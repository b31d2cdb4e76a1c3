"""Masked additive visual prompts and the prompted targets built from them.

A prompt ``delta`` lives only on an outer border of the image (mask ``M``) and is
added in ``[0,1]`` pixel space: ``x' = clip(x + delta * M, 0, 1)``, before the
base model's own preprocessing, so attacks see prompt, clip and model as one
differentiable pipeline.

Two targets:

* :class:`PromptedClassifier` -- one prompt shared by every input (VP, U-AVP);
  its outputs are the base model's logits on the prompted input.
* :class:`ClasswisePromptedClassifier` -- one prompt per class (C-AVP). An
  unlabelled input is run through every prompt (C forward passes) and class
  ``i`` scores ``log p^(i)_i``, the log-probability that prompt ``i`` gives its
  own class. The label never chooses the prompt: that would be an oracle.

Attacks get straight-through gradients of the clip (BPDA): exact clip gradients
are zero on saturated pixels and measurably weaken every gradient attack. Under
L2 the straight-through gradient in turn spends part of each normalised step on
border pixels that the clip holds fixed, so white-box attacks under L2 also run
on the exact-gradient variant (:meth:`PromptedClassifier.gradient_variants`) and
keep the per-sample worst. Under Linf each pixel steps by the sign on its own, a
held pixel takes nothing from the others, and the straight-through run alone is kept.

Prompts are stored compactly (only the entries inside the mask) in safetensors
files with a checksum sidecar; see :func:`save_prompts` / :func:`load_prompts`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from robustbench_peft.atomic import write_bytes_atomic, write_text_atomic
from robustbench_peft.cache import file_sha256, state_dict_sha256
from robustbench_peft.defense import FittedDefense
from robustbench_peft.errors import UserError
from robustbench_peft.targets import ClassifierTarget

#: Version of the on-disk prompt format (metadata key ``format``).
PROMPT_FILE_FORMAT = "robustbench_peft.prompts/1"


def border_mask(height: int, width: int, border: int) -> torch.Tensor:
    """Boolean (H, W) mask of the outer frame of width ``border`` (all True if it covers the image)."""
    if border < 1:
        raise UserError(f"prompt border must be >= 1 pixel, got {border}")
    rows = torch.arange(height)
    cols = torch.arange(width)
    inner_rows = (rows >= border) & (rows < height - border)
    inner_cols = (cols >= border) & (cols < width - border)
    return ~(inner_rows[:, None] & inner_cols[None, :])


def apply_prompt(x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``clip(x + delta * M, 0, 1)``; ``delta`` broadcasts against ``x`` (one prompt or one per sample)."""
    return (x + delta * mask.to(x.dtype)).clamp(0.0, 1.0)


def apply_prompt_straight_through(x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same values as :func:`apply_prompt`; the backward pass treats the clip as the identity.

    The exact gradient of the clip is zero on every saturated pixel (a dark
    background pixel under a negative prompt entry), so gradient attacks cannot
    move those pixels even where a small change would count: gradient masking.
    Passing the gradient straight through the clip (BPDA, Athalye et al. 2018)
    removes it without changing any prediction.
    """
    return _StraightThroughClip.apply(x + delta * mask.to(x.dtype))


class _StraightThroughClip(torch.autograd.Function):
    """Forward: clamp to [0,1] (bit-identical values); backward: identity."""

    @staticmethod
    def forward(ctx, raw: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return raw.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def pack(prompts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(P, C, H, W) prompts -> (P, C, K): only the K entries inside the mask are stored."""
    return prompts.flatten(2)[:, :, mask.flatten()].contiguous()


def unpack(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`: zeros outside the mask."""
    n_prompts, channels, _ = values.shape
    height, width = mask.shape
    full = values.new_zeros(n_prompts, channels, height * width)
    full[:, :, mask.flatten()] = values
    return full.view(n_prompts, channels, height, width)


class PromptedClassifier(ClassifierTarget):
    """A frozen base classifier behind one shared border prompt (VP, U-AVP).

    The prompt and mask are buffers: the target has no trainable parameters and
    its ``weights_sha256`` covers base weights and prompt together. With
    ``straight_through`` (the default) input gradients pass the [0,1] clip as
    if it were the identity; outputs are identical either way.
    """

    kind = "shared"

    def __init__(self, base: ClassifierTarget, prompts: torch.Tensor, border: int, name: str | None = None, straight_through: bool = True) -> None:
        channels, height, width = base.input_shape
        if prompts.dim() != 4 or tuple(prompts.shape[1:]) != (channels, height, width):
            raise UserError(f"prompts must have shape (P, {channels}, {height}, {width}) for {base.name}, got {tuple(prompts.shape)}")
        super().__init__(
            base,
            n_classes=base.n_classes,
            input_shape=base.input_shape,
            name=name or f"{base.name}+{self.kind}-prompt",
            forward_passes=self.passes(len(prompts)),
        )
        self.border = int(border)
        mask = border_mask(height, width, self.border)
        self.register_buffer("mask", mask.view(1, 1, height, width).float().to(prompts.device))
        self.register_buffer("prompts", prompts.detach().float() * self.mask)
        self.n_prompts = len(prompts)
        self.straight_through = bool(straight_through)
        self._check_prompt_count()

    @staticmethod
    def passes(n_prompts: int) -> int:
        return 1

    def gradient_variants(self, norm: str) -> dict[str, ClassifierTarget]:
        """Under L2, the same pipeline with the other clip gradient (see the module docstring)."""
        if norm != "L2":
            return {}
        variant = copy.copy(self)  # shares base, prompts and mask; only the gradient rule differs
        variant.straight_through = not self.straight_through
        return {"straight-through clip" if variant.straight_through else "exact clip": variant}

    def _check_prompt_count(self) -> None:
        if self.n_prompts != 1:
            raise UserError(f"a shared prompt target needs exactly 1 prompt, got {self.n_prompts}")

    @property
    def base(self) -> ClassifierTarget:
        return self.model  # type: ignore[return-value]

    def apply(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``clip(x + delta * M, 0, 1)`` with this target's choice of clip gradient."""
        return (apply_prompt_straight_through if self.straight_through else apply_prompt)(x, delta, self.mask)

    def prompted_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, C, H, W): every input under every prompt."""
        return self.apply(x[:, None], self.prompts[None])

    def prompt_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, K): ``log softmax f(clip(x + delta_p * M))`` for every prompt p, in one batched pass."""
        prompted = self.prompted_inputs(x)
        logits = self.base(prompted.flatten(0, 1))
        return F.log_softmax(logits, dim=1).view(len(x), self.n_prompts, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.apply(x, self.prompts[0]))

    def compact_values(self) -> torch.Tensor:
        """The stored representation: (P, C, K) entries inside the mask."""
        return pack(self.prompts, self.mask[0, 0].bool())

    def prompt_sha256(self) -> str:
        return state_dict_sha256({"values": self.compact_values()})


class ClasswisePromptedClassifier(PromptedClassifier):
    """A frozen base classifier behind one border prompt per class (C-AVP).

    ``forward(x)[:, i] = log p^(i)_i(x)``: the i-th class probability under the
    i-th prompt. Its argmax is the diagonal prediction rule, and CE or margin
    losses on it are the adaptive attacker's objective on the whole pipeline.
    """

    kind = "classwise"

    @staticmethod
    def passes(n_prompts: int) -> int:
        return n_prompts

    def _check_prompt_count(self) -> None:
        if self.n_prompts != self.n_classes:
            raise UserError(f"class-wise prompts need one prompt per class ({self.n_classes}), got {self.n_prompts}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prompt_log_probs(x).diagonal(dim1=1, dim2=2)


TARGET_KINDS: dict[str, type[PromptedClassifier]] = {cls.kind: cls for cls in (PromptedClassifier, ClasswisePromptedClassifier)}


def build_target(base: ClassifierTarget, kind: str, prompts: torch.Tensor, border: int, name: str | None = None, straight_through: bool = True) -> PromptedClassifier:
    if kind not in TARGET_KINDS:
        raise UserError(f"unknown prompt kind {kind!r}; expected one of {', '.join(TARGET_KINDS)}")
    return TARGET_KINDS[kind](base, prompts, border, name=name, straight_through=straight_through)


# -- files ------------------------------------------------------------------------------


def serialize_prompts(target: PromptedClassifier) -> bytes:
    """The safetensors bytes that :func:`save_prompts` writes (their length is the stored cost)."""
    metadata = {
        "format": PROMPT_FILE_FORMAT,
        "kind": target.kind,
        "border": str(target.border),
        "input_shape": json.dumps(list(target.input_shape)),
        "n_classes": str(target.n_classes),
        "base_sha256": target.base.weights_sha256(),
        "name": target.name,
    }
    return safetensors_bytes({"values": target.compact_values().cpu()}, metadata=metadata)


def save_prompts(path: str | os.PathLike, fitted: FittedDefense | PromptedClassifier) -> Path:
    """Write the prompts of a fitted visual-prompt defense atomically, with a ``.sha256`` sidecar."""
    target = fitted.target if isinstance(fitted, FittedDefense) else fitted
    if not isinstance(target, PromptedClassifier):
        raise UserError(f"save_prompts needs a fitted visual-prompt defense, got {type(target).__name__}")
    path = Path(path)
    write_bytes_atomic(path, serialize_prompts(target))
    write_text_atomic(path.with_suffix(path.suffix + ".sha256"), file_sha256(path) + "\n")
    return path


def load_prompts(path: str | os.PathLike, base: ClassifierTarget, straight_through: bool = True) -> PromptedClassifier:
    """Rebuild the prompted target saved by :func:`save_prompts` on top of ``base``.

    The file's checksum sidecar (when present) must match, and ``base`` must be
    the very model the prompts were trained for (same weights sha256).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist; write one with save_prompts(path, fitted)")
    sidecar = path.with_suffix(path.suffix + ".sha256")
    if sidecar.exists() and sidecar.read_text().strip() != file_sha256(path):
        raise UserError(f"prompt file {path} does not match its checksum {sidecar.name}: it is corrupt or was modified; save it again")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            values = fh.get_tensor("values")
    except Exception as exc:
        raise UserError(f"cannot read prompt file {path}: {exc}") from None
    if metadata.get("format") != PROMPT_FILE_FORMAT:
        raise UserError(f"{path} is not a prompt file of this suite (format {metadata.get('format')!r}, expected {PROMPT_FILE_FORMAT!r})")
    expected = metadata["base_sha256"]
    if base.weights_sha256() != expected:
        raise UserError(f"prompts in {path} were trained for a base model with weights sha256 {expected[:12]}..., not {base.name}; load them on that model")
    if list(base.input_shape) != json.loads(metadata["input_shape"]):
        raise UserError(f"prompts in {path} are for inputs {metadata['input_shape']}, but {base.name} takes {list(base.input_shape)}")
    border = int(metadata["border"])
    mask = border_mask(base.input_shape[1], base.input_shape[2], border)
    if values.dim() != 3 or values.shape[1] != base.input_shape[0] or values.shape[2] != int(mask.sum()):
        raise UserError(f"prompt values in {path} have shape {tuple(values.shape)}, inconsistent with border {border} on {base.name}")
    return build_target(base, metadata["kind"], unpack(values.float(), mask), border, name=metadata.get("name"), straight_through=straight_through)
