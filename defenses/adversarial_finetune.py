"""Adversarial fine-tuning of a pre-trained classifier: full, linear probe, or a peft adapter.

``advft`` fine-tunes a private copy of the base model with an adversarial
objective (PGD-AT, TRADES, FGSM-RS; ``clean`` for the non-adversarial
reference) on the task's training split. ``scope`` picks what is trained (see
:mod:`defenses.scopes`); the cost reports the trainable parameters and the bytes
that must be shipped on top of the public base (everything for ``full``, the
head for ``linear``, the adapter plus head for peft scopes).

The fitted defense keeps the untouched public base next to it, so the runner's
``mode=nonadaptive`` attacks are the downstream-transfer threat: adversarial
examples crafted on the public pre-trained weights, replayed on the fine-tuned model.

The options come in three groups, one config class each: what is trained and
for how long (:class:`FineTuneTraining`), the training adversary
(:class:`AdversaryOptions`) and the scopes' own settings
(:class:`~defenses.scopes.ScopeSettings`); on the command line they stay flat
(``advft:scope=lora,epochs=2,rank=4``). The layers an adapter went on are decided
by the fit and recorded in the :class:`FittedDefense`, never in the config.

Trained tensors are cached by a recipe that holds the base weights' sha256, the
data and every hyper-parameter. ``save_adapter`` / ``load_adapter`` export them;
peft scopes use peft's own format (``PeftModel.save_pretrained``).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from robustbench_peft import precision
from robustbench_peft.atomic import write_json_atomic
from robustbench_peft.cache import cached_tensors, state_dict_sha256
from robustbench_peft.config import PluginConfig, option, require
from robustbench_peft.defense import Defense, DefenseCost, FittedDefense
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_defense
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask
from robustbench_peft.threat_model import check_norm

from .objectives import OBJECTIVES, AdversarySettings, Objective
from .scopes import SCOPES, Layout, ScopeSettings, find_layout, tensor_bytes

#: Bump when the training code changes meaning, so cached adapters are not reused.
ADVFT_VERSION = 1
CACHE_KIND = "advft"
#: Reserved cache key holding the original training time next to the trained tensors.
FIT_SECONDS_KEY = "__advft__.fit_seconds"
#: Written by save_adapter next to the weights: what load_adapter needs to rebuild the model.
MANIFEST = "advft.json"
#: Independent random streams derived from the one seed.
ORDER_STREAM, ADVERSARY_STREAM = 0, 1


class AdaptedTarget(ClassifierTarget):
    """A fine-tuned target that remembers its scope and layout, so it can be saved as an adapter."""

    scope: str = "full"
    head_module: str | None = None
    settings: ScopeSettings = ScopeSettings()

    @property
    def layout(self) -> Layout:
        return Layout(self.head_module, {})


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """``state_dict_sha256`` that also accepts 0-dim tensors (batch norm's ``num_batches_tracked``)."""
    return state_dict_sha256({k: v.reshape(1) if v.dim() == 0 else v for k, v in state.items()})


def stream(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1000 + index)


def _wrap(base: ClassifierTarget, model: torch.nn.Module, scope: str, layout: Layout, settings: ScopeSettings) -> AdaptedTarget:
    target = AdaptedTarget(
        model,
        n_classes=base.n_classes,
        input_shape=base.input_shape,
        preprocess=copy.deepcopy(base.preprocess),
        name=base.name,
        is_stochastic=base.is_stochastic,
        forward_passes=base.forward_passes,
    )
    target.scope, target.head_module, target.settings = scope, layout.head, settings
    return target.to(base.device).eval()


def train_epochs(
    target: ClassifierTarget,
    objective: Objective,
    settings: AdversarySettings,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    train_mode: bool,
) -> list[float]:
    """Adam on the target's trainable weights; returns the loss of every step.

    The data order and the adversary draw from separate seeded streams, so two
    objectives that consume randomness differently still see the same batches.
    A last batch of one sample is dropped (batch norm cannot train on it).
    Each step's objective (the adversary included) runs under ``eval --amp``'s
    autocast, with fp16 loss scaling; the weights and the optimizer stay float32.
    """
    params = [p for p in target.parameters() if p.requires_grad]
    if not params:
        raise UserError("advft: nothing to train (the scope left no trainable weights)")
    optimizer = torch.optim.Adam(params, lr=lr)
    order, adversary = stream(seed, ORDER_STREAM), stream(seed, ADVERSARY_STREAM)
    device = target.device
    scaler = precision.grad_scaler(device)
    losses: list[float] = []
    target.train(train_mode)
    try:
        for _ in range(epochs):
            permutation = torch.randperm(len(y), generator=order)
            for start in range(0, len(y), batch_size):
                idx = permutation[start : start + batch_size]
                if len(idx) < 2:
                    continue
                with precision.fit_autocast(device):
                    loss = objective(target, x[idx].to(device), y[idx].to(device), settings, adversary)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
    finally:
        target.eval()
    return losses


def _choice(value: str, options: dict, what: str) -> str:
    if value not in options:
        raise UserError(f"advft: unknown {what} {value!r}; use one of {', '.join(options)}")
    return value


@dataclass(frozen=True)
class FineTuneTraining(PluginConfig):
    """What is trained, on how much data, for how long."""

    scope: str = option("lora", "what is trained: full, linear (the head), or a peft adapter (lora, fourierft, c3a)")
    epochs: int = option(10, "training epochs")
    lr: float | None = option(None, "Adam learning rate; None: the scope's default (1e-3 for full, 1e-2 otherwise)")
    batch_size: int = option(64, "training samples per step (>= 2)")
    n_train: int | None = option(None, "train on the first n training samples; None: the whole training split")
    cache: bool = option(True, "reuse tensors trained with the same recipe from the cache")

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self.scope, SCOPES, "scope")
        require("advft", {
            "epochs must be >= 1": self.epochs >= 1,
            "lr must be > 0 (None: the scope's default)": self.lr is None or self.lr > 0,
            "batch_size must be >= 2": self.batch_size >= 2,
            "n_train must be >= 1 (None: the whole training split)": self.n_train is None or self.n_train >= 1,
        })

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else SCOPES[self.scope].default_lr

    def to_json(self) -> dict[str, Any]:
        """As stored in reports, with the learning rate the scope's default resolves to."""
        return {**super().to_json(), "lr": self.learning_rate}


@dataclass(frozen=True)
class AdversaryOptions(PluginConfig):
    """The training objective and its adversary's threat model and budget."""

    objective: str = option("pgd-at", "training objective: clean, pgd-at, trades or fgsm-rs")
    eps: float = option(0.1, "the adversary's eps")
    norm: str = option("Linf", "the adversary's threat model: Linf or L2")
    steps: int = option(5, "PGD steps of the adversary (pgd-at, trades)")
    beta: float = option(6.0, "TRADES weight of the robustness term")

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice(self.objective, OBJECTIVES, "objective")
        object.__setattr__(self, "norm", check_norm(self.norm))  # norm=l2 is L2
        require("advft", {"eps must be > 0": self.eps > 0, "steps must be >= 1": self.steps >= 1, "beta must be >= 0": self.beta >= 0})

    def adversary(self) -> AdversarySettings:
        return AdversarySettings(eps=float(self.eps), norm=self.norm, steps=int(self.steps), beta=float(self.beta))


@dataclass(frozen=True)
class AdversarialFineTuneConfig(ScopeSettings, AdversaryOptions, FineTuneTraining):
    """Options of ``advft``: training, adversary and scope settings (flat on the command line)."""

    plugin: ClassVar[str] = "advft"


@register_defense("advft")
class AdversarialFineTune(Defense):
    """Adversarial fine-tuning (PGD-AT, TRADES, FGSM-RS): full, linear probe, or LoRA / FourierFT / C3A adapters via peft."""

    name = "advft"
    config_class = AdversarialFineTuneConfig
    config: AdversarialFineTuneConfig

    def label(self) -> str:
        return f"advft-{self.config.scope}-{self.config.objective}"

    def recipe(self, base: ClassifierTarget, task: ClassificationTask, layout: Layout, adapted: list[str]) -> dict[str, Any]:
        """Everything that determines the trained tensors (the cache key)."""
        options = {k: v for k, v in self.config.to_json().items() if k != "cache"}
        return {
            "defense": self.name,
            "version": ADVFT_VERSION,
            "base_sha256": weights_sha256(base.state_dict()),
            "data": task.recipe(),
            "train_data_sha256": task.train_data_sha256(),
            "adapted": adapted,
            "head_module": layout.head,
            "peft": importlib.metadata.version("peft"),  # not `import peft`: seconds, for a version string
            **options,
            **precision.fit_amp_recipe(),
        }

    def fit(self, base: ClassifierTarget, task: ClassificationTask) -> FittedDefense:
        config = self.config
        x, y = task.x_train, task.y_train
        if config.n_train is not None:
            x, y = x[: config.n_train], y[: config.n_train]
        base.check_input(x[:2])
        scope = SCOPES[config.scope]
        settings = config.scope_settings()
        layout = find_layout(base.model, base.n_classes)
        model = copy.deepcopy(base.model).requires_grad_(False)
        attached = scope.attach(model, layout, settings)
        n_trainable = sum(p.numel() for p in attached.model.parameters() if p.requires_grad)
        target = _wrap(base, attached.model, config.scope, layout, settings)

        def train() -> dict[str, torch.Tensor]:
            start = time.perf_counter()
            cuda = [target.device] if target.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(config.seed)  # dropout and other global-RNG layers in training mode
                train_epochs(
                    target, OBJECTIVES[config.objective], config.adversary(), x, y,
                    epochs=config.epochs, lr=config.learning_rate, batch_size=config.batch_size, seed=config.seed, train_mode=scope.train_mode,
                )
            seconds = time.perf_counter() - start
            return {**scope.shipped(target.model, layout), FIT_SECONDS_KEY: torch.tensor(seconds, dtype=torch.float64)}

        recipe = self.recipe(base, task, layout, attached.adapted)
        stored = cached_tensors(CACHE_KIND, recipe, train) if config.cache else train()
        fit_seconds = float(stored.pop(FIT_SECONDS_KEY))
        scope.restore(target.model, layout, {k: v.to(target.device) for k, v in stored.items()})
        target.requires_grad_(False).eval()
        details = {"adapted_modules": attached.adapted, "head_module": layout.head, **({"note": attached.note} if attached.note else {})}
        cost = DefenseCost(trainable_parameters=n_trainable, stored_bytes=tensor_bytes(stored), fit_seconds=round(fit_seconds, 3))
        return FittedDefense(target=target, base=base, cost=cost, sha256=weights_sha256(stored), details=details)


def save_adapter(fitted: FittedDefense, directory: str | Path) -> Path:
    """Write what must be shipped: peft's adapter format for peft scopes, safetensors otherwise."""
    target = fitted.target
    if not isinstance(target, AdaptedTarget):
        raise UserError("save_adapter needs a target fitted by advft")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    SCOPES[target.scope].save(target.model, target.layout, directory)
    manifest = {
        "format": ADVFT_VERSION,
        "scope": target.scope,
        "head_module": target.head_module,
        "settings": asdict(target.settings),
        "base_sha256": weights_sha256(fitted.base.state_dict()),
        "base": fitted.base.name,
    }
    write_json_atomic(directory / MANIFEST, manifest)
    return directory


def load_adapter(base: ClassifierTarget, directory: str | Path) -> AdaptedTarget:
    """Rebuild a fine-tuned target from ``base`` and a folder written by :func:`save_adapter`."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{directory} is not an advft adapter folder ({MANIFEST} unreadable: {exc}); write it with save_adapter") from None
    scope_name = _choice(str(manifest.get("scope")), SCOPES, "scope")
    if scope_name != "full" and manifest.get("base_sha256") != weights_sha256(base.state_dict()):
        raise UserError(f"the adapter in {directory} was trained on other base weights ({manifest.get('base')}); load it onto that base model")
    layout = find_layout(base.model, base.n_classes)
    if layout.head != manifest.get("head_module"):
        raise UserError(f"the adapter's head module {manifest.get('head_module')!r} is not this model's head {layout.head!r}")
    saved = manifest.get("settings", {})
    settings = ScopeSettings(**{**saved, "block_size": saved.get("block_size") or None})  # 0 meant None in older folders
    model = copy.deepcopy(base.model).requires_grad_(False)
    loaded = SCOPES[scope_name].load(model, layout, settings, directory)
    return _wrap(base, loaded, scope_name, layout, settings).requires_grad_(False)
