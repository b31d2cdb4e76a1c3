"""What adversarial fine-tuning trains: the whole network, its head, or a peft adapter.

A scope attaches trainable weights to a deep copy of the network, names the
tensors that must be shipped (all weights, the head, or the adapter), and saves
and loads them. Adapter scopes go through HF ``peft`` and its own on-disk format
(``adapter_config.json`` + ``adapter_model.safetensors``).

Layers are found automatically: every ``nn.Linear`` / ``nn.Conv2d`` of the body
that the peft method supports, with an ``nn.MultiheadAttention`` standing for the
projections inside it (its forward reads their raw weights, so an adapter on
``out_proj`` alone would never run). In peft 0.21 LoRA supports all three (grouped
convolutions are skipped: LoRA needs the rank divisible by the groups);
FourierFT and C3A support ``nn.Linear`` only, so convolutions and such attention
modules stay frozen for them and the fitted defense says so in its note. When no
layer can take the adapter, the error names the option to use instead
(``scope=linear`` / ``scope=full``, or ``head=false`` when no head is found).

The classification head stays trainable in every scope (``head=True``): peft
keeps a trainable copy in ``modules_to_save`` and ships it with the adapter.
That makes ``linear`` the common baseline of the adapter scopes: an adapter
scope is "linear probe + adapter". ``head=False`` freezes it.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from robustbench_peft.cache import load_verified, save_tensors
from robustbench_peft.config import option, require
from robustbench_peft.defense import DefenseConfig
from robustbench_peft.errors import UserError

#: Layer types an adapter can attach to.
ADAPTABLE = (nn.Linear, nn.Conv2d)
#: Attention modules whose forward reads its projections' raw weights (torch's
#: nn.MultiheadAttention passes ``out_proj.weight`` to a functional kernel): an adapter on
#: such a projection would never run, so the attention module itself is the layer (peft's
#: LoRA adapts it whole: the fused input projection and ``out_proj``).
ATTENTION = (nn.MultiheadAttention,)
#: File of the tensors shipped by the non-peft scopes.
WEIGHTS_FILE = "advft_weights.safetensors"


@dataclass(frozen=True)
class Layout:
    """The network's classification head and its adaptable body layers (names in module order)."""

    head: str | None
    layers: dict[str, nn.Module]


@dataclass(frozen=True)
class ScopeSettings(DefenseConfig):
    """Options of the scopes: LoRA rank, FourierFT frequencies and scaling, C3A block size."""

    rank: int = option(4, "LoRA rank (scope=lora)")
    head: bool = option(True, "keep the classification head trainable in every scope")
    n_frequency: int = option(1000, "spectral coefficients per layer (scope=fourierft)")
    scaling: float = option(150.0, "FourierFT scaling (scope=fourierft)")
    block_size: int | None = option(None, "C3A block size (scope=c3a); None: the largest divisor of both sides of each layer")

    def __post_init__(self) -> None:
        super().__post_init__()
        require("advft", {
            "rank must be >= 1": self.rank >= 1,
            "n_frequency must be >= 1": self.n_frequency >= 1,
            "block_size must be >= 1 (None: the largest divisor of each layer)": self.block_size is None or self.block_size >= 1,
        })

    def scope_settings(self) -> "ScopeSettings":
        """Only these fields (a config built on them keeps its other options to itself)."""
        return ScopeSettings(**{f.name: getattr(self, f.name) for f in fields(ScopeSettings)})


@dataclass
class Attached:
    """A network with its trainable weights attached, and what was adapted."""

    model: nn.Module
    adapted: list[str]
    note: str = ""
    skipped: list[str] = field(default_factory=list)


def _out_size(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def find_head(model: nn.Module, n_classes: int) -> str | None:
    """The classification head: timm's ``get_classifier()``, else the last layer with ``n_classes`` outputs."""
    names = {id(m): n for n, m in model.named_modules()}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except Exception:
            head = None
        if isinstance(head, nn.Module) and id(head) in names and any(True for _ in head.parameters()):
            return names[id(head)]
    candidates = [n for n, m in model.named_modules() if isinstance(m, ADAPTABLE) and _out_size(m) == n_classes]
    return candidates[-1] if candidates else None


def find_layout(model: nn.Module, n_classes: int) -> Layout:
    """The head and the body layers: every Linear / Conv2d outside the head, with an attention
    module (:data:`ATTENTION`) standing for the projections inside it."""
    head = find_head(model, n_classes)
    inside_head = (lambda n: n == head or n.startswith(head + ".")) if head else (lambda n: False)
    attention = [n for n, m in model.named_modules() if n and isinstance(m, ATTENTION)]
    inside_attention = lambda n: any(n.startswith(a + ".") for a in attention)  # noqa: E731
    layers = {
        n: m for n, m in model.named_modules()
        if n and not inside_head(n) and (isinstance(m, ATTENTION) or (isinstance(m, ADAPTABLE) and not inside_attention(n)))
    }
    return Layout(head, layers)


def exact_names(names: list[str]) -> str:
    """A regex matching exactly these module names (peft full-matches a string ``target_modules``)."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class Scope(ABC):
    """One answer to "which weights does fine-tuning change?"."""

    name: str = "scope"
    #: Adam learning rate when the user gives none.
    default_lr: float = 1e-3
    #: Whether batch-norm / dropout run in training mode during the update (only when every weight is trained).
    train_mode: bool = False

    @abstractmethod
    def attach(self, model: nn.Module, layout: Layout, settings: ScopeSettings) -> Attached:
        """Make the weights of this scope trainable on ``model`` (a private copy) and return it."""

    @abstractmethod
    def shipped(self, model: nn.Module, layout: Layout) -> dict[str, torch.Tensor]:
        """The tensors that must be stored to reproduce the fitted network from the base."""

    @abstractmethod
    def restore(self, model: nn.Module, layout: Layout, tensors: dict[str, torch.Tensor]) -> None:
        """Load ``shipped`` tensors into an attached ``model``."""

    def save(self, model: nn.Module, layout: Layout, directory: Path) -> None:
        save_tensors(directory / WEIGHTS_FILE, self.shipped(model, layout))

    def load(self, model: nn.Module, layout: Layout, settings: ScopeSettings, directory: Path) -> nn.Module:
        tensors = load_verified(directory / WEIGHTS_FILE)
        if tensors is None:
            raise UserError(f"{directory / WEIGHTS_FILE} is missing or fails its checksum; save the adapter again with save_adapter")
        attached = self.attach(model, layout, settings).model
        self.restore(attached, layout, tensors)
        return attached


class FullScope(Scope):
    """Every weight of the network: the most expressive and the most expensive to ship."""

    name = "full"
    default_lr = 1e-3
    train_mode = True

    def attach(self, model: nn.Module, layout: Layout, settings: ScopeSettings) -> Attached:
        for p in model.parameters():
            p.requires_grad_(True)
        return Attached(model, ["*"])

    def shipped(self, model: nn.Module, layout: Layout) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module, layout: Layout, tensors: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(tensors, strict=True)


def require_head(layout: Layout, scope: str) -> str:
    if layout.head is None:
        raise UserError(
            f"scope={scope}: no classification head found (no get_classifier() and no Linear/Conv2d layer with one output per class); "
            "use scope=full or a model whose last layer maps to the classes"
        )
    return layout.head


class LinearScope(Scope):
    """The classification head only (linear probing): the backbone's features stay as they are."""

    name = "linear"
    default_lr = 1e-2

    def attach(self, model: nn.Module, layout: Layout, settings: ScopeSettings) -> Attached:
        head = require_head(layout, self.name)
        model.get_submodule(head).requires_grad_(True)
        return Attached(model, [head])

    def shipped(self, model: nn.Module, layout: Layout) -> dict[str, torch.Tensor]:
        head = require_head(layout, self.name)
        return {f"{head}.{k}": v.detach().clone() for k, v in model.get_submodule(head).state_dict().items()}

    def restore(self, model: nn.Module, layout: Layout, tensors: dict[str, torch.Tensor]) -> None:
        head = require_head(layout, self.name)
        prefix = head + "."
        unknown = [k for k in tensors if not k.startswith(prefix)]
        if unknown:
            raise UserError(f"head weights name modules outside the head {head!r}: {unknown[:3]}")
        model.get_submodule(head).load_state_dict({k[len(prefix):]: v for k, v in tensors.items()}, strict=True)


ConfigFactory = Callable[[dict[str, nn.Module], list[str] | None, ScopeSettings], object]


class PeftScope(Scope):
    """An adapter injected by HF peft into the supported body layers, plus (optionally) the head."""

    default_lr = 1e-2

    def __init__(self, name: str, supports: Callable[[nn.Module, ScopeSettings], bool], make_config: ConfigFactory, unsupported_note: str) -> None:
        self.name = name
        self.supports = supports
        self.make_config = make_config
        self.unsupported_note = unsupported_note

    def attach(self, model: nn.Module, layout: Layout, settings: ScopeSettings) -> Attached:
        from peft import get_peft_model

        targets = {n: m for n, m in layout.layers.items() if self.supports(m, settings)}
        skipped = [n for n in layout.layers if n not in targets]
        if not layout.layers:
            raise UserError(
                f"scope={self.name}: the model has no Linear / Conv2d layer outside its classification head "
                f"{layout.head!r} to take an adapter; use scope=linear (the head alone) or scope=full"
            )
        if not targets:
            raise UserError(
                f"scope={self.name}: none of the model's {len(layout.layers)} Linear/Conv2d body layers can take a {self.name} adapter "
                f"({self.unsupported_note}); try scope=lora or scope=linear"
            )
        save = [layout.head] if settings.head and layout.head else None
        if settings.head and layout.head is None:
            raise UserError(f"scope={self.name}: no classification head found to keep trainable; pass head=false")
        config = self.make_config(targets, save, settings)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)  # adapter initialisation (e.g. LoRA's A) is seeded
            try:
                peft_model = get_peft_model(model, config)
            except (ValueError, TypeError, NotImplementedError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(
                    f"scope={self.name}: peft cannot attach {self.name} adapters to this architecture ({first}); "
                    "use scope=linear or scope=full, or head=false when the head is the problem"
                ) from None
        note = f"{self.unsupported_note}: {len(skipped)} layer(s) left frozen ({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''})" if skipped else ""
        return Attached(peft_model, list(targets), note, skipped)

    def shipped(self, model: nn.Module, layout: Layout) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}

    def restore(self, model: nn.Module, layout: Layout, tensors: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, tensors)
        if result.unexpected_keys:
            raise UserError(f"adapter tensors do not fit the model: unexpected {result.unexpected_keys[:3]}")

    def save(self, model: nn.Module, layout: Layout, directory: Path) -> None:
        model.save_pretrained(str(directory), safe_serialization=True)

    def load(self, model: nn.Module, layout: Layout, settings: ScopeSettings, directory: Path) -> nn.Module:
        from peft import PeftModel

        if not (directory / "adapter_config.json").exists():
            raise UserError(f"{directory} holds no peft adapter (adapter_config.json is missing)")
        return PeftModel.from_pretrained(model, str(directory), is_trainable=False)


def _lora_supports(module: nn.Module, settings: ScopeSettings) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return bool(module._qkv_same_embed_dim)  # peft 0.21: one fused input projection only
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _lora_config(targets: dict[str, nn.Module], save: list[str] | None, settings: ScopeSettings) -> object:
    from peft import LoraConfig

    # lora_alpha = r: the adapter's update is B @ A without extra scaling.
    return LoraConfig(r=settings.rank, lora_alpha=settings.rank, lora_dropout=0.0, target_modules=exact_names(list(targets)), modules_to_save=save)


def _fourierft_supports(module: nn.Module, settings: ScopeSettings) -> bool:
    return isinstance(module, nn.Linear)


def _fourierft_config(targets: dict[str, nn.Module], save: list[str] | None, settings: ScopeSettings) -> object:
    from peft import FourierFTConfig

    # Layers with fewer weights than n_frequency get one coefficient per weight.
    small = {re.escape(n): m.in_features * m.out_features for n, m in targets.items() if m.in_features * m.out_features < settings.n_frequency}
    return FourierFTConfig(
        n_frequency=settings.n_frequency,
        n_frequency_pattern=small,
        scaling=settings.scaling,
        random_loc_seed=settings.seed,
        init_weights=True,  # zero spectrum: fine-tuning starts from the base network's function
        target_modules=exact_names(list(targets)),
        modules_to_save=save,
    )


def c3a_block_size(module: nn.Linear, settings: ScopeSettings) -> int:
    """The requested block size, or the largest one that divides both sides of the layer."""
    return settings.block_size or math.gcd(module.in_features, module.out_features)


def _c3a_supports(module: nn.Module, settings: ScopeSettings) -> bool:
    if not isinstance(module, nn.Linear):
        return False
    size = c3a_block_size(module, settings)
    return module.in_features % size == 0 and module.out_features % size == 0


def _c3a_config(targets: dict[str, nn.Module], save: list[str] | None, settings: ScopeSettings) -> object:
    from peft import C3AConfig

    sizes = {re.escape(n): c3a_block_size(m, settings) for n, m in targets.items()}
    return C3AConfig(
        block_size=next(iter(sizes.values())),
        block_size_pattern=sizes,
        init_weights=True,  # zero kernels: fine-tuning starts from the base network's function
        target_modules=exact_names(list(targets)),
        modules_to_save=save,
    )


SCOPES: dict[str, Scope] = {
    "full": FullScope(),
    "linear": LinearScope(),
    "lora": PeftScope("lora", _lora_supports, _lora_config, "peft LoRA skips grouped convolutions and attention with separate key / value sizes"),
    "fourierft": PeftScope("fourierft", _fourierft_supports, _fourierft_config, "peft 0.21 FourierFT supports nn.Linear only"),
    "c3a": PeftScope("c3a", _c3a_supports, _c3a_config, "peft 0.21 C3A supports nn.Linear only, with a block size dividing both sides"),
}
