"""Visual-prompt defenses on a frozen classifier: VP, U-AVP and C-AVP (Chen et al. 2023).

``vp``   one border prompt trained on clean data;
``uavp`` one border prompt trained adversarially (clean CE + PGD CE);
``cavp`` one prompt per class trained adversarially with the three
         inter-prompt hinge terms, predicting by the diagonal rule
         (C forward passes, class i scores p^(i)_i).

The fitted target is the whole prompted pipeline, so the runner's attacks are
adaptive; ``mode=nonadaptive`` crafts on the bare base model instead, the row
the original C-AVP evaluation reported. Attacks get straight-through
gradients of the prompt's [0,1] clip (``bpda=true``, predictions unchanged);
``bpda=false`` exposes the exact, partly masked, gradients. Trained prompts
are cached by a recipe hash that includes the base model's weights sha256 and every hyper-parameter.

Defaults are the paper's setting (Chen et al. 2023, and its reference code
Phoveran/vp-for-adversarial-robustness): 50 epochs, batch 256, SGD lr 0.1 with
momentum 0.9 and cosine decay per step, PGD-10 at step eps/4 with random start,
beta 3, tau 0.1, all three inter-prompt terms, prompts from zero. Stated
deviations on a task other than CIFAR-10: the border is a quarter of the image
side, as the paper's 8 of 32 (2 on digits' 8x8); the training eps is the task's
middle Linf eps (0.1 on digits) instead of CIFAR's 8/255; no data augmentation
(the reference's random crop and flip change a digit: a mirrored 2 is no 2, and a
shifted stroke enters the prompted border).

The three configs share their fields by inheritance: the training recipe of
``vp``, plus the adversary for ``uavp``, plus the inter-prompt terms for ``cavp``;
``bpda`` (how attacks see the fitted target, not part of the recipe) comes last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from robustbench_peft import precision
from robustbench_peft.cache import cached_tensors
from robustbench_peft.config import option, require
from robustbench_peft.defense import Defense, DefenseConfig, DefenseCost, FittedDefense
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_defense
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask

from .prompt_training import INTER_PROMPT_TERMS, PromptRecipe, parse_terms, train_prompts
from .prompts import build_target, load_prompts, save_prompts, serialize_prompts

__all__ = ["VisualPrompt", "UniversalAdversarialPrompt", "ClasswiseAdversarialPrompt", "save_prompts", "load_prompts"]

#: Bump when the prompt training code changes meaning, so cached prompts are rebuilt
#: (2: C-AVP's loss is the reference's sum of per-class means).
PROMPT_CODE_VERSION = 2
CACHE_KIND = "visual-prompts"
#: Recipe values of the options a defense does not have (no adversary, no inter-prompt terms).
NEUTRAL = {"eps": 0.0, "steps": 0, "rel_step_size": 0.0, "beta": 0.0, "tau": 0.0, "terms": ()}


def resolve_train_eps(eps: float | None, task: ClassificationTask) -> float:
    """``eps`` as given; ``None`` picks the middle of the task's default Linf eps list (0.1 on digits)."""
    if eps is not None:
        return float(eps)
    values = sorted(task.default_eps.get("Linf") or [])
    if not values:
        raise UserError(f"task {task.name} has no default Linf eps; pass the training eps explicitly, e.g. eps=0.03")
    return float(values[len(values) // 2])


def resolve_border(border: int | None, task: ClassificationTask) -> int:
    """``border`` as given; ``None`` scales the paper's border (8 pixels of CIFAR's 32) to the task: a quarter of the shorter side."""
    if border is not None:
        return int(border)
    _, height, width = task.input_shape
    return max(1, min(height, width) // 4)


def _option_text(value: Any) -> str:
    """An option as the CLI writes it (lists as a+b, an empty list as none)."""
    if isinstance(value, (tuple, list)):
        return "+".join(value) or "none"
    return str(value)


@dataclass(frozen=True)
class PromptTraining(DefenseConfig):
    """The training recipe every visual prompt has: border, budget and SGD."""

    #: The plug-in named in validation errors (set by each defense's config).
    plugin: ClassVar[str] = "visual prompt"

    border: int | None = option(None, "width in pixels of the prompted image border; None: a quarter of the image side (the paper's 8 of 32; 2 on digits)")
    epochs: int = option(50, "training epochs (0 leaves the prompt at zero); the paper's 50")
    batch_size: int = option(256, "training samples per step; the reference code's 256")
    lr: float = option(0.1, "SGD learning rate (cosine decay per step)")
    momentum: float = option(0.9, "SGD momentum, in [0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.plugin, {
            "border must be >= 1 (None: a quarter of the image side)": self.border is None or self.border >= 1,
            "epochs must be >= 0": self.epochs >= 0,
            "batch_size must be >= 1": self.batch_size >= 1,
            "lr must be > 0": self.lr > 0,
            "momentum must be in [0, 1)": 0 <= self.momentum < 1,
        })

    def recipe_fields(self, task: ClassificationTask) -> dict[str, Any]:
        """This config's part of the :class:`PromptRecipe` (options it lacks keep :data:`NEUTRAL` values)."""
        return {**NEUTRAL, "border": resolve_border(self.border, task), "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum}


@dataclass(frozen=True)
class AdversarialPromptTraining(PromptTraining):
    """Adds the training adversary: Linf PGD with random start against the prompted model."""

    eps: float | None = option(None, "training Linf eps; None: the middle of the task's default Linf eps list")
    steps: int = option(10, "PGD steps of the training adversary")
    rel_step_size: float = option(0.25, "PGD step size relative to eps")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.plugin, {
            "eps must be > 0 (None: the task's default)": self.eps is None or self.eps > 0,
            "steps must be >= 1": self.steps >= 1,
            "rel_step_size must be > 0": self.rel_step_size > 0,
        })

    def recipe_fields(self, task: ClassificationTask) -> dict[str, Any]:
        return {**super().recipe_fields(task), "eps": resolve_train_eps(self.eps, task), "steps": self.steps, "rel_step_size": self.rel_step_size}


@dataclass(frozen=True)
class ClasswisePromptTraining(AdversarialPromptTraining):
    """Adds C-AVP's inter-prompt hinge terms between the per-class prompts."""

    beta: float = option(3.0, "weight of the inter-prompt terms")
    tau: float = option(0.1, "margin of the inter-prompt hinge terms")
    terms: tuple[str, ...] = option(INTER_PROMPT_TERMS, "inter-prompt terms, a '+'-list of l1, l2, l3, or none")

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", parse_terms(self.terms))
        super().__post_init__()
        require(self.plugin, {"beta must be >= 0": self.beta >= 0, "tau must be >= 0": self.tau >= 0})

    def recipe_fields(self, task: ClassificationTask) -> dict[str, Any]:
        return {**super().recipe_fields(task), "beta": self.beta, "tau": self.tau, "terms": self.terms}


@dataclass(frozen=True)
class PromptGradient(DefenseConfig):
    """How attacks see the fitted target (not part of the training recipe)."""

    bpda: bool = option(True, "straight-through gradient of the prompt's [0,1] clip for attacks (predictions unchanged)")


@dataclass(frozen=True)
class VisualPromptConfig(PromptGradient, PromptTraining):
    """Options of ``vp``."""

    plugin: ClassVar[str] = "vp"


@dataclass(frozen=True)
class UniversalAdversarialPromptConfig(PromptGradient, AdversarialPromptTraining):
    """Options of ``uavp``."""

    plugin: ClassVar[str] = "uavp"


@dataclass(frozen=True)
class ClasswiseAdversarialPromptConfig(PromptGradient, ClasswisePromptTraining):
    """Options of ``cavp``."""

    plugin: ClassVar[str] = "cavp"


class PromptDefense(Defense):
    """Shared machinery: recipe, cache, fitted target and cost."""

    classwise = False
    adversarial = False
    #: Which prompted target the fitted prompts drive (see defenses.prompts.TARGET_KINDS).
    target_kind = "shared"
    config: VisualPromptConfig

    def recipe(self, task: ClassificationTask) -> PromptRecipe:
        """The training recipe; options that do not apply to this defense keep neutral values."""
        return PromptRecipe(classwise=self.classwise, adversarial=self.adversarial, seed=self.config.seed, **self.config.recipe_fields(task))

    def label(self) -> str:
        """The name plus the options that differ from their defaults, seed aside (ablation runs stay apart)."""
        defaults = self.config_class()
        changed = [
            f"{f.name}={_option_text(getattr(self.config, f.name))}"
            for f in fields(self.config)
            if f.name != "seed" and getattr(self.config, f.name) != getattr(defaults, f.name)
        ]
        return self.name + (":" + ",".join(changed) if changed else "")

    def cache_key(self, base: ClassifierTarget, task: ClassificationTask, recipe: PromptRecipe) -> dict[str, Any]:
        """Everything that determines the trained prompts: base weights, data, recipe and (when on) ``--amp``."""
        return {
            "defense": self.name,
            "code_version": PROMPT_CODE_VERSION,
            "base_sha256": base.weights_sha256(),
            "input_shape": list(base.input_shape),
            **task.recipe(),
            "train_data_sha256": task.train_data_sha256(),
            **recipe.to_json(),
            **precision.fit_amp_recipe(),
        }

    def fit(self, base: ClassifierTarget, task: ClassificationTask) -> FittedDefense:
        """Train (or load from the cache) the prompts for ``base``; ``base`` itself is never modified.

        ``cost.fit_seconds`` is the training time of the prompts, also when they come from the cache.
        """
        if base.n_classes != task.n_classes:
            raise UserError(f"{self.name}: model {base.name} has {base.n_classes} classes but task {task.name} has {task.n_classes}")
        if tuple(base.input_shape) != tuple(task.input_shape):
            raise UserError(f"{self.name}: model {base.name} takes inputs {base.input_shape} but task {task.name} has {task.input_shape}")
        recipe = self.recipe(task)
        key = self.cache_key(base, task, recipe)

        def train() -> dict[str, torch.Tensor]:
            began = time.perf_counter()
            prompts = train_prompts(base, task.x_train, task.y_train, task.n_classes, recipe)
            return {"prompts": prompts, "train_seconds": torch.tensor([time.perf_counter() - began], dtype=torch.float64)}

        stored = cached_tensors(CACHE_KIND, key, train)
        target = build_target(base, self.target_kind, stored["prompts"].float(), recipe.border, name=f"{base.name}+{self.label()}", straight_through=self.config.bpda)
        target = target.to(base.device).eval()
        cost = DefenseCost(
            trainable_parameters=int(target.compact_values().numel()),
            stored_bytes=len(serialize_prompts(target)),
            fit_seconds=round(float(stored["train_seconds"][0]), 3),
            forward_passes=target.forward_passes,
        )
        details = {"eps": recipe.eps} if self.adversarial else {}
        return FittedDefense(target=target, base=base, cost=cost, sha256=target.prompt_sha256(), details=details)


@register_defense("vp")
class VisualPrompt(PromptDefense):
    """Visual prompting: one additive border prompt on a frozen model, trained on clean data."""

    name = "vp"
    config_class = VisualPromptConfig


@register_defense("uavp")
class UniversalAdversarialPrompt(PromptDefense):
    """U-AVP: one border prompt on a frozen model, trained adversarially (clean + PGD cross-entropy)."""

    name = "uavp"
    config_class = UniversalAdversarialPromptConfig
    adversarial = True


@register_defense("cavp")
class ClasswiseAdversarialPrompt(PromptDefense):
    """C-AVP: one border prompt per class, adversarial training, inter-prompt terms, diagonal prediction."""

    name = "cavp"
    config_class = ClasswiseAdversarialPromptConfig
    adversarial = True
    classwise = True
    target_kind = "classwise"
