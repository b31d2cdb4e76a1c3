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
"""

from __future__ import annotations

import time
from typing import Any

import torch

from robustbench_peft import precision
from robustbench_peft.cache import cached_tensors
from robustbench_peft.defense import Defense, DefenseCost, FittedDefense
from robustbench_peft.errors import UserError
from robustbench_peft.registry import register_defense
from robustbench_peft.targets import ClassifierTarget
from robustbench_peft.task import ClassificationTask

from .prompt_training import PromptRecipe, parse_terms, train_prompts
from .prompts import build_target, load_prompts, save_prompts, serialize_prompts

__all__ = ["VisualPrompt", "UniversalAdversarialPrompt", "ClasswiseAdversarialPrompt", "save_prompts", "load_prompts"]

#: Bump when the prompt training code changes meaning, so cached prompts are rebuilt.
PROMPT_CODE_VERSION = 1
CACHE_KIND = "visual-prompts"
DEFAULT_BORDER = 2
DEFAULT_EPOCHS = 10


def resolve_train_eps(eps: float, task: ClassificationTask) -> float:
    """``eps > 0`` as given; ``0`` picks the middle of the task's default Linf eps list (0.1 on digits)."""
    if eps > 0:
        return float(eps)
    values = sorted(task.default_eps.get("Linf") or [])
    if not values:
        raise UserError(f"task {task.name} has no default Linf eps; pass the training eps explicitly, e.g. eps=0.03")
    return float(values[len(values) // 2])


def _option_text(value: Any) -> str:
    """An option as the CLI writes it (lists as a+b, an empty list as none)."""
    if isinstance(value, (tuple, list)):
        return "+".join(value) or "none"
    return str(value)


class PromptDefense(Defense):
    """Shared machinery: validation, recipe, cache, fitted target and cost."""

    classwise = False
    adversarial = False
    #: Which prompted target the fitted prompts drive (see defenses.prompts.TARGET_KINDS).
    target_kind = "shared"

    def __init__(self, seed: int = 0, **options: Any) -> None:
        super().__init__(seed)
        self.options = dict(options)
        self._validate()
        self._train_eps: float | None = None

    def _validate(self) -> None:
        o = self.options
        checks = {
            "border": o["border"] >= 1,
            "epochs": o["epochs"] >= 0,
            "batch_size": o["batch_size"] >= 1,
            "lr": o["lr"] > 0,
            "momentum": 0 <= o["momentum"] < 1,
            "eps": o.get("eps", 0.0) >= 0,
            "steps": o.get("steps", 1) >= 1,
            "rel_step_size": o.get("rel_step_size", 1.0) > 0,
            "beta": o.get("beta", 0.0) >= 0,
            "tau": o.get("tau", 0.0) >= 0,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            hints = "border >= 1, epochs >= 0, batch_size >= 1, lr > 0, 0 <= momentum < 1, eps >= 0 (0 = task default), steps >= 1, rel_step_size > 0, beta >= 0, tau >= 0"
            raise UserError(f"{self.name}: invalid option(s) {', '.join(f'{k}={o[k]}' for k in bad)}; need {hints}")

    def recipe(self, task: ClassificationTask) -> PromptRecipe:
        """The training recipe; options that do not apply to this defense keep neutral values."""
        o = self.options
        fields: dict[str, Any] = {key: o[key] for key in ("border", "epochs", "batch_size", "lr", "momentum")}
        fields.update(eps=0.0, steps=0, rel_step_size=0.0, beta=0.0, tau=0.0, terms=())
        if self.adversarial:
            fields.update(eps=resolve_train_eps(o["eps"], task), steps=o["steps"], rel_step_size=o["rel_step_size"])
        if self.classwise:
            fields.update(beta=o["beta"], tau=o["tau"], terms=o["terms"])
        return PromptRecipe(classwise=self.classwise, adversarial=self.adversarial, seed=self.seed, **fields)

    def config(self) -> dict[str, Any]:
        config = {**self.options, "seed": self.seed}
        if "terms" in config:
            config["terms"] = list(config["terms"]) or ["none"]
        if self._train_eps is not None:
            config["eps"] = self._train_eps
        return config

    def label(self) -> str:
        """The name plus the options that differ from their defaults (ablation runs stay apart)."""
        defaults = type(self)().options
        changed = [f"{key}={_option_text(value)}" for key, value in self.options.items() if value != defaults[key]]
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
        self._train_eps = recipe.eps if self.adversarial else None
        key = self.cache_key(base, task, recipe)

        def train() -> dict[str, torch.Tensor]:
            began = time.perf_counter()
            prompts = train_prompts(base, task.x_train, task.y_train, task.n_classes, recipe)
            return {"prompts": prompts, "train_seconds": torch.tensor([time.perf_counter() - began], dtype=torch.float64)}

        stored = cached_tensors(CACHE_KIND, key, train)
        target = build_target(base, self.target_kind, stored["prompts"].float(), recipe.border, name=f"{base.name}+{self.label()}", straight_through=self.options["bpda"])
        target = target.to(base.device).eval()
        cost = DefenseCost(
            trainable_parameters=int(target.compact_values().numel()),
            stored_bytes=len(serialize_prompts(target)),
            fit_seconds=round(float(stored["train_seconds"][0]), 3),
            forward_passes=target.forward_passes,
        )
        return FittedDefense(target=target, base=base, cost=cost, sha256=target.prompt_sha256())


@register_defense("vp")
class VisualPrompt(PromptDefense):
    """Visual prompting: one additive border prompt on a frozen model, trained on clean data."""

    name = "vp"

    def __init__(self, border: int = DEFAULT_BORDER, epochs: int = DEFAULT_EPOCHS, batch_size: int = 128, lr: float = 0.1, momentum: float = 0.9, bpda: bool = True, seed: int = 0) -> None:
        super().__init__(seed, border=border, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, bpda=bpda)


@register_defense("uavp")
class UniversalAdversarialPrompt(PromptDefense):
    """U-AVP: one border prompt on a frozen model, trained adversarially (clean + PGD cross-entropy)."""

    name = "uavp"
    adversarial = True

    def __init__(
        self,
        border: int = DEFAULT_BORDER,
        epochs: int = DEFAULT_EPOCHS,
        batch_size: int = 128,
        lr: float = 0.1,
        momentum: float = 0.9,
        eps: float = 0.0,
        steps: int = 10,
        rel_step_size: float = 0.25,
        bpda: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(seed, border=border, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, eps=eps, steps=steps, rel_step_size=rel_step_size, bpda=bpda)


@register_defense("cavp")
class ClasswiseAdversarialPrompt(PromptDefense):
    """C-AVP: one border prompt per class, adversarial training, inter-prompt terms, diagonal prediction."""

    name = "cavp"
    adversarial = True
    classwise = True
    target_kind = "classwise"

    def __init__(
        self,
        border: int = DEFAULT_BORDER,
        epochs: int = DEFAULT_EPOCHS,
        batch_size: int = 128,
        lr: float = 0.1,
        momentum: float = 0.9,
        eps: float = 0.0,
        steps: int = 10,
        rel_step_size: float = 0.25,
        beta: float = 3.0,
        tau: float = 0.1,
        terms: list[str] = ["l1", "l2", "l3"],  # noqa: B006 - read only; the type drives CLI parsing (a+b)
        bpda: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            seed,
            border=border,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            eps=eps,
            steps=steps,
            rel_step_size=rel_step_size,
            beta=beta,
            tau=tau,
            terms=parse_terms(terms),
            bpda=bpda,
        )
