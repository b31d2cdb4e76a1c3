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
from .threat_model import AdversarialInput, check_threat_model, enforce

#: What a search returns as the adversarial prompt: text, one row of token ids (judged as they are), or an
#: :class:`AdversarialInput` (ids with word embeddings or an encoder output, for the stronger threat models).
PromptInput = Union[str, torch.Tensor, AdversarialInput]


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
    threat_model: str = "text"
    #: What the judged image was generated from (ids, and word embeddings or a condition where the threat model allows).
    adversarial: AdversarialInput | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"prompt": self.prompt, "seed": self.seed, "success": bool(self.success), "adv_prompt": self.adv_prompt,
               "steps": int(self.steps), "seconds": round(float(self.seconds), 3), "threat_model": self.threat_model,
               **self.details}
        if self.adv_ids is not None:
            out["adv_ids"] = list(self.adv_ids)
        return out


@dataclass(frozen=True)
class PromptAttackConfig(PluginConfig):
    """Options every prompt attack has."""

    seed: int = option(0, "seed of every random choice of the attack (with the prompt's own seed)")


def conditions(target: TextToImageTarget, inputs: Sequence[AdversarialInput]) -> torch.Tensor:
    """The encoder output each input is generated from: encoded ids, encoded word embeddings, or the condition
    itself. Inputs of one kind are encoded in one batch."""
    out: list[torch.Tensor | None] = [None] * len(inputs)
    with torch.no_grad():
        plain = [i for i, f in enumerate(inputs) if f.embeds is None and f.condition is None]
        embedded = [i for i, f in enumerate(inputs) if f.embeds is not None and f.condition is None]
        if plain:
            for i, c in zip(plain, target.encode(torch.stack([inputs[i].ids for i in plain]))):
                out[i] = c
        if embedded:
            ids = torch.stack([inputs[i].ids for i in embedded])
            for i, c in zip(embedded, target.encode_embeds(ids, torch.stack([inputs[i].embeds for i in embedded]))):
                out[i] = c
        for i, f in enumerate(inputs):
            if f.condition is not None:
                out[i] = f.condition
    return torch.stack(out)


def judge_inputs(target: TextToImageTarget, items: Sequence[PromptItem], judge: Judge,
                 inputs: Sequence[AdversarialInput], batch_size: int = 100) -> tuple[list[bool], torch.Tensor]:
    """Generate each item's image from its input at the item's seed and guidance (batched per guidance) and judge it."""
    flags: list[bool] = [False] * len(items)
    images: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[float | None, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.guidance, []).append(i)
    for guidance, group in groups.items():
        for start in range(0, len(group), batch_size):
            idx = group[start:start + batch_size]
            out = target.generate_from_cond(conditions(target, [inputs[i] for i in idx]), [items[i].seed for i in idx],
                                            guidance=guidance)
            for i, im in zip(idx, out):
                flags[i] = bool(judge.present(im[None], items[i].concept)[0])
                images[i] = im
    return flags, torch.stack(images) if images else torch.empty(0)


def judge_ids(target: TextToImageTarget, items: Sequence[PromptItem], judge: Judge,
              ids: torch.Tensor) -> tuple[list[bool], torch.Tensor]:
    """Generate each item's image from its exact id row and judge it."""
    return judge_inputs(target, items, judge, [AdversarialInput(row) for row in ids])


def to_input(target: TextToImageTarget, found: PromptInput) -> AdversarialInput:
    """What a search returned as an :class:`AdversarialInput` (text is tokenised; ids are kept exactly)."""
    if isinstance(found, AdversarialInput):
        return found
    if isinstance(found, str):
        return AdversarialInput(target.tokenize([found])[0])
    return AdversarialInput(found.reshape(-1).long())


class PromptAttack(Configurable, ABC):
    """Base class: subclasses implement :meth:`search` (and may batch in :meth:`search_many`);
    :meth:`run` / :meth:`run_many` time, re-generate and judge. Options are one
    :class:`PromptAttackConfig` (subclass), ``self.config``."""

    config_class: type[PromptAttackConfig] = PromptAttackConfig

    name = "prompt-attack"
    needs_reference = False  # True: the attack wants the original model's image of the prompt
    #: What the attack may change (:data:`~robustbench_peft.t2i.threat_model.PROMPT_THREAT_MODELS`); enforced in :meth:`run_many`.
    threat_model = "text"
    #: A search that descends a loss towards the reference image: the power check runs it on the original model.
    optimising = False
    #: A chance baseline (random draws): optimised attacks must beat it per item at the same judge budget.
    random_baseline = False

    def judge_budget(self) -> int | None:
        """How many judged generations the search may spend per item (None: not stated)."""
        return None

    @abstractmethod
    def search(self, target: TextToImageTarget, item: PromptItem, judge: Judge,
               reference: torch.Tensor | None) -> tuple[PromptInput, int, dict]:
        """Return (prompt text or id row to generate with, steps spent, details)."""

    def search_many(self, target: TextToImageTarget, items: Sequence[PromptItem], judge: Judge,
                    references: torch.Tensor | None) -> list[tuple[PromptInput, int, dict]]:
        """All items at once; by default one :meth:`search` each. Results must equal per-item searches."""
        return [self.search(target, it, judge, None if references is None else references[i]) for i, it in enumerate(items)]

    def judge_prompt(self, target: TextToImageTarget, item: PromptItem, judge: Judge, prompt: PromptInput) -> tuple[bool, torch.Tensor]:
        flags, images = judge_inputs(target, [item], judge, [to_input(target, prompt)])
        return flags[0], images[0]

    def checked_inputs(self, target: TextToImageTarget, found: Sequence[PromptInput]) -> list[AdversarialInput]:
        """``found`` as inputs, refused if one lies outside the declared threat model or has the wrong shape."""
        owner = f"prompt attack {self.name}"
        check_threat_model(self.threat_model, owner)
        probe = target.tokenize([""])
        with torch.no_grad():
            condition_shape = tuple(target.encode(probe).shape[1:])
        width = int(target.token_embedding.weight.shape[1])
        return [enforce(to_input(target, f), self.threat_model, owner, probe.shape[1], width, condition_shape) for f in found]

    def run_many(self, target: TextToImageTarget, items: Sequence[PromptItem], judge: Judge,
                 references: torch.Tensor | None = None) -> list[PromptResult]:
        """Search all items, then re-generate every final prompt from its ids and judge it; seconds are
        the batch's wall time shared equally."""
        if not items:
            return []
        start = time.perf_counter()
        found = self.search_many(target, list(items), judge, references)
        inputs = self.checked_inputs(target, [f[0] for f in found])
        flags, images = judge_inputs(target, list(items), judge, inputs)
        each = (time.perf_counter() - start) / len(items)
        results = []
        for it, (prompt, steps, details), adv, ok, im in zip(items, found, inputs, flags, images):
            text = prompt if isinstance(prompt, str) else target.decode(adv.ids)
            if adv.threat_model != "text":
                text = f"{text} [{adv.threat_model} optimised]"
            results.append(PromptResult(it.prompt, it.seed, ok, text, steps, each, im, details,
                                        None if isinstance(prompt, str) else [int(i) for i in adv.ids],
                                        self.threat_model, adv))
        return results

    def run(self, target: TextToImageTarget, item: PromptItem, judge: Judge, reference: torch.Tensor | None = None) -> PromptResult:
        return self.run_many(target, [item], judge, None if reference is None else reference[None])[0]
