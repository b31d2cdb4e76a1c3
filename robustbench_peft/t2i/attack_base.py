"""The contract of prompt attacks: one prompt in, one judged result out.

Classifier attacks perturb pixels within an eps ball; a diffusion attack edits
the prompt and is judged on the image the target generates from it. The base
class, not each attack, generates the final image from the returned prompt and
asks the judge, so success is always re-measured, never taken from an attack's
own bookkeeping.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import Configurable, PluginConfig, option
from .judge import Judge
from .target import TextToImageTarget


@dataclass(frozen=True)
class PromptItem:
    """One attacked generation: a prompt, its seed and guidance, and the concept the judge looks for."""

    prompt: str
    seed: int
    concept: Any
    guidance: float | None = None


@dataclass
class PromptResult:
    """Per prompt: success, the adversarial prompt as text, optimisation steps, seconds, the judged image."""

    prompt: str
    seed: int
    success: bool
    adv_prompt: str
    steps: int
    seconds: float
    image: torch.Tensor
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "seed": self.seed, "success": bool(self.success), "adv_prompt": self.adv_prompt,
                "steps": int(self.steps), "seconds": round(float(self.seconds), 3), **self.details}


@dataclass(frozen=True)
class PromptAttackConfig(PluginConfig):
    """Options every prompt attack has."""

    seed: int = option(0, "seed of every random choice of the attack (with the prompt's own seed)")


class PromptAttack(Configurable, ABC):
    """Base class: subclasses implement :meth:`search`; :meth:`run` times, re-generates and judges.
    Options are one :class:`PromptAttackConfig` (subclass), ``self.config``."""

    config_class: type[PromptAttackConfig] = PromptAttackConfig

    name = "prompt-attack"
    needs_reference = False  # True: the attack wants the original model's image of the prompt

    @abstractmethod
    def search(self, target: TextToImageTarget, item: PromptItem, judge: Judge,
               reference: torch.Tensor | None) -> tuple[str, int, dict]:
        """Return (prompt to generate with, steps spent, details)."""

    def judge_prompt(self, target: TextToImageTarget, item: PromptItem, judge: Judge, prompt: str) -> tuple[bool, torch.Tensor]:
        image = target.generate(prompt, [item.seed], guidance=item.guidance)
        return bool(judge.present(image, item.concept)[0]), image[0]

    def run(self, target: TextToImageTarget, item: PromptItem, judge: Judge, reference: torch.Tensor | None = None) -> PromptResult:
        start = time.perf_counter()
        prompt, steps, details = self.search(target, item, judge, reference)
        success, image = self.judge_prompt(target, item, judge, prompt)
        return PromptResult(item.prompt, item.seed, success, prompt, steps, time.perf_counter() - start, image, details)
