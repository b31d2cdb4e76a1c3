"""Prompt threat models: what a prompt attack may change, from weakest to strongest.

As Linf and L2 are for pixels, a prompt threat model bounds what an attack on
a text-to-image model may touch:

* ``text``: token ids. Whatever a user can type (``no_attack``,
  ``random_tokens``, ``unlearndiff``).
* ``embedding``: continuous word embeddings fed through the frozen text
  encoder (concept inversion): every text prompt is one such point.
* ``condition``: the text encoder's output the UNet attends to. Every prompt
  and every word embedding ends as one, so this is the upper bound of all of them.

Each model contains the ones before it, so an item broken under a weaker model
is broken under every stronger one: the worst case per item under a threat
model folds in every attack of that model and of the weaker ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_peft.errors import UserError

#: Weakest first: each contains the ones before it.
PROMPT_THREAT_MODELS = ("text", "embedding", "condition")


def check_threat_model(name: str, owner: str = "prompt attack") -> str:
    if name not in PROMPT_THREAT_MODELS:
        raise UserError(f"{owner}: unknown prompt threat model {name!r}; use one of {', '.join(PROMPT_THREAT_MODELS)}")
    return name


def strength(name: str) -> int:
    """0 for ``text``, 1 for ``embedding``, 2 for ``condition``."""
    return PROMPT_THREAT_MODELS.index(check_threat_model(name))


def contained_in(name: str) -> tuple[str, ...]:
    """The threat models whose attacks count towards ``name``'s worst case: itself and every weaker one."""
    return PROMPT_THREAT_MODELS[: strength(name) + 1]


@dataclass(frozen=True)
class AdversarialInput:
    """What a prompt search returns, in the terms of its threat model.

    ``ids`` (L,) is always there: the prompt's token ids, with any inserted
    slots; it fixes the attention mask. ``embeds`` (L, D) replaces the word
    embeddings fed to the frozen encoder (``embedding``); ``condition`` (L', D')
    replaces the encoder's output (``condition``). The base attack class checks
    that an attack returns nothing beyond its declared threat model.
    """

    ids: torch.Tensor
    embeds: torch.Tensor | None = None
    condition: torch.Tensor | None = None

    @property
    def threat_model(self) -> str:
        """The weakest threat model this input lies in."""
        return "condition" if self.condition is not None else "embedding" if self.embeds is not None else "text"


def enforce(found: AdversarialInput, declared: str, owner: str, ids_length: int,
            embed_dim: int, condition_shape: tuple[int, ...]) -> AdversarialInput:
    """Refuse an input outside the attack's declared threat model or of the wrong shape (a bug in the attack)."""
    if strength(found.threat_model) > strength(declared):
        raise UserError(f"{owner} declares threat model {declared!r} but returned a {found.threat_model!r} input")
    if found.ids.dim() != 1 or len(found.ids) != ids_length:
        raise UserError(f"{owner} returned ids of shape {tuple(found.ids.shape)}; expected ({ids_length},)")
    if found.embeds is not None and tuple(found.embeds.shape) != (ids_length, embed_dim):
        raise UserError(f"{owner} returned word embeddings of shape {tuple(found.embeds.shape)}; expected ({ids_length}, {embed_dim})")
    if found.condition is not None and tuple(found.condition.shape) != tuple(condition_shape):
        raise UserError(f"{owner} returned a condition of shape {tuple(found.condition.shape)}; expected {tuple(condition_shape)}")
    for name, t in (("embeds", found.embeds), ("condition", found.condition)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise UserError(f"{owner} returned non-finite {name}")
    return found
