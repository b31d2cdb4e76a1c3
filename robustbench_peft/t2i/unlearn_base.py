"""The contract of text-to-image unlearners: ``unlearn(target, request) -> T2IUnlearnResult``.

The base class owns what makes methods comparable: it fine-tunes a copy of the
UNet (text encoder, VAE and the original stay untouched), times the update, and
caches the new UNet's weights by a recipe hash of the method's options, the
forget request and the base model's identity.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..cache import cached_tensors, recipe_hash, state_dict_sha256
from ..config import Configurable, PluginConfig, option
from .target import TextToImageTarget

T2I_UNLEARNING_VERSION = 1
CACHE_KIND = "t2i-unlearning"


@dataclass
class ForgetRequest:
    """What to erase and what to keep.

    ``forget_prompt`` names the concept; ``forget_images`` (optional, [0,1])
    show it; ``retain_images`` with ``retain_prompts`` (one per image) are
    kept concepts; ``pseudo_prompts`` are other concepts a forgotten prompt
    may be mapped to. ``identity`` fixes the data for the cache key.
    """

    forget_prompt: str
    pseudo_prompts: list[str]
    forget_images: torch.Tensor | None = None
    retain_images: torch.Tensor | None = None
    retain_prompts: list[str] | None = None
    identity: dict = field(default_factory=dict)

    def key(self) -> dict[str, Any]:
        return {"forget": self.forget_prompt, "pseudo": list(self.pseudo_prompts), "data": self.identity}


@dataclass
class T2IUnlearnResult:
    target: TextToImageTarget
    seconds: float
    method: str
    config: dict[str, Any]
    cached: bool
    sha256: str


def base_identity(target: TextToImageTarget) -> str:
    """What identifies the base model for caching: its folder/model id, else the UNet's weights hash."""
    ident = target.meta.get("identity")
    return str(ident) if ident else state_dict_sha256(target.unet.state_dict())


@dataclass(frozen=True)
class T2IUnlearnerConfig(PluginConfig):
    """Options every text-to-image unlearner has."""

    seed: int = option(0, "seed of every random choice of the update")
    threads: int = option(2, "torch threads while updating (speed only: not in the cache key)")


class T2IUnlearner(Configurable, ABC):
    """Base: subclasses implement :meth:`update` on a trainable UNet copy; options are one
    :class:`T2IUnlearnerConfig` (subclass), ``self.config``."""

    method = "t2i-unlearner"
    config_class: type[T2IUnlearnerConfig] = T2IUnlearnerConfig

    #: Options that change speed, not the result: left out of the cache key.
    NOT_IN_RECIPE = ("threads",)

    def recipe_config(self) -> dict[str, Any]:
        """The options that decide the result (the cache key's part and the report's record)."""
        return {k: v for k, v in self.config.to_json().items() if k not in self.NOT_IN_RECIPE}

    @abstractmethod
    def update(self, target: TextToImageTarget, unet: torch.nn.Module, request: ForgetRequest) -> torch.nn.Module:
        """The UNet copy after erasing ``request``'s concept (trained in place or replaced)."""

    def unlearn(self, target: TextToImageTarget, request: ForgetRequest, log: Callable[[str], None] = lambda s: None) -> T2IUnlearnResult:
        recipe = {"method": self.method, "config": self.recipe_config(), "request": request.key(), "base": base_identity(target),
                  "version": T2I_UNLEARNING_VERSION}
        seconds: list[float] = []

        def build() -> dict[str, torch.Tensor]:
            log(f"unlearning {request.forget_prompt!r} with {self.method} (cached by recipe {recipe_hash(recipe)})")
            start = time.perf_counter()
            unet = self.update(target, target.trainable_unet_copy(), request)
            seconds.append(time.perf_counter() - start)
            state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
            state["__seconds__"] = torch.tensor([seconds[-1]], dtype=torch.float64)
            return state

        state = dict(cached_tensors(CACHE_KIND, recipe, build))
        elapsed = float(state.pop("__seconds__")[0])
        unet = type(target.unet).from_config(target.unet.config)
        unet.load_state_dict(state)
        new = target.with_unet(unet, name=f"{target.name}+{self.method}", identity=f"{base_identity(target)}+{recipe_hash(recipe)}")
        return T2IUnlearnResult(new, elapsed, self.method, self.recipe_config(), cached=not seconds, sha256=state_dict_sha256(state))


def seeded_batches(n: int, batch: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches drawn with replacement from ``range(n)``."""
    return [torch.randint(n, (batch,), generator=gen) for _ in range(steps)]
