"""The contract of prompt attacks: prompts in, judged results out.

Classifier attacks perturb pixels within an eps ball; a diffusion attack edits
the prompt and is judged on the image the target generates from it. The base
class, not each attack, generates the final image from what the search
returns and asks the judge, so success is always re-measured, never taken from
an attack's own bookkeeping. A search may return token ids: the image judged
is then generated from those exact ids (their decoded text is for display
only, since decoding and re-tokenising need not give the same ids back).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch

from ..config import Configurable, PluginConfig, option
from .judge import Judge
from .target import TextToImageTarget

#: What a search returns as the adversarial prompt: text, or one row of token ids (judged as they are).
PromptInput = Union[str, torch.Tensor]


@dataclass(frozen=True)
class PromptItem:
    """One attacked generation: a prompt, its seed and guidance, and the concept the judge looks for."""

    prompt: str
    seed: int
    concept: Any
    guidance: float | None = None


@dataclass
class PromptResult:
    """Per prompt: success, the adversarial prompt (display text and the ids judged), steps, seconds, the judged image."""

    prompt: str
    seed: int
    success: bool
    adv_prompt: str
    steps: int
    seconds: float
    image: torch.Tensor
    details: dict = field(default_factory=dict)
    adv_ids: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"prompt": self.prompt, "seed": self.seed, "success": bool(self.success), "adv_prompt": self.adv_prompt,
               "steps": int(self.steps), "seconds": round(float(self.seconds), 3), **self.details}
        if self.adv_ids is not None:
            out["adv_ids"] = list(self.adv_ids)
        return out


@dataclass(frozen=True)
class PromptAttackConfig(PluginConfig):
    """Options every prompt attack has."""

    seed: int = option(0, "seed of every random choice of the attack (with the prompt's own seed)")


def judge_ids(target: TextToImageTarget, items: Sequence[PromptItem], judge: Judge,
              ids: torch.Tensor) -> tuple[list[bool], torch.Tensor]:
    """Generate each item's image from its exact id row (batched per guidance) and judge it."""
    flags: list[bool] = [False] * len(items)
    images: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[float | None, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.guidance, []).append(i)
    for guidance, idx in groups.items():
        out = target.generate_ids(ids[idx], [items[i].seed for i in idx], guidance=guidance)
        for i, im in zip(idx, out):
            flags[i] = bool(judge.present(im[None], items[i].concept)[0])
            images[i] = im
    return flags, torch.stack(images) if images else torch.empty(0)


def as_ids(target: TextToImageTarget, found: PromptInput) -> torch.Tensor:
    """One id row for what a search returned (text is tokenised; ids are kept exactly)."""
    if isinstance(found, str):
        return target.tokenize([found])[0]
    return found.reshape(-1).long()


class PromptAttack(Configurable, ABC):
    """Base class: subclasses implement :meth:`search` (and may batch in :meth:`search_many`);
    :meth:`run` / :meth:`run_many` time, re-generate and judge. Options are one
    :class:`PromptAttackConfig` (subclass), ``self.config``."""

    config_class: type[PromptAttackConfig] = PromptAttackConfig

    name = "prompt-attack"
    needs_reference = False  # True: the attack wants the original model's image of the prompt

    @abstractmethod
    def search(self, target: TextToImageTarget, item: PromptItem, judge: Judge,
               reference: torch.Tensor | None) -> tuple[PromptInput, int, dict]:
        """Return (prompt text or id row to generate with, steps spent, details)."""

    def search_many(self, target: TextToImageTarget, items: Sequence[PromptItem], judge: Judge,
                    references: torch.Tensor | None) -> list[tuple[PromptInput, int, dict]]:
        """All items at once; by default one :meth:`search` each. Results must equal per-item searches."""
        return [self.search(target, it, judge, None if references is None else references[i]) for i, it in enumerate(items)]

    def judge_prompt(self, target: TextToImageTarget, item: PromptItem, judge: Judge, prompt: PromptInput) -> tuple[bool, torch.Tensor]:
        flags, images = judge_ids(target, [item], judge, as_ids(target, prompt)[None])
        return flags[0], images[0]

    def run_many(self, target: TextToImageTarget, items: Sequence[PromptItem], judge: Judge,
                 references: torch.Tensor | None = None) -> list[PromptResult]:
        """Search all items, then re-generate every final prompt from its ids and judge it; seconds are
        the batch's wall time shared equally."""
        if not items:
            return []
        start = time.perf_counter()
        found = self.search_many(target, list(items), judge, references)
        ids = torch.stack([as_ids(target, f[0]) for f in found])
        flags, images = judge_ids(target, list(items), judge, ids)
        each = (time.perf_counter() - start) / len(items)
        results = []
        for it, (prompt, steps, details), row, ok, im in zip(items, found, ids, flags, images):
            text = prompt if isinstance(prompt, str) else target.decode(row)
            results.append(PromptResult(it.prompt, it.seed, ok, text, steps, each, im, details,
                                        None if isinstance(prompt, str) else [int(i) for i in row]))
        return results

    def run(self, target: TextToImageTarget, item: PromptItem, judge: Judge, reference: torch.Tensor | None = None) -> PromptResult:
        return self.run_many(target, [item], judge, None if reference is None else reference[None])[0]
