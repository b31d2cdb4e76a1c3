"""The text-to-image target: everything a diffusion attack or unlearner may see.

One class serves both the embedded pixel-space ``digits`` model (no VAE, a
BERT text encoder) and Stable Diffusion (latent space, VAE, CLIP). Attacks work
through ``encode`` / ``encode_embeds`` (ids or token embeddings in),
``image_to_x0``, ``add_noise``, ``denoise``, ``generate`` and ``generate_ids``
(images from exact token ids, so an optimised id sequence is judged as it is,
not as a re-tokenised decoding); they never touch a pipeline object.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


@dataclass
class TextToImageTarget:
    """A text-conditioned noise predictor with its tokenizer, text encoder and sampler."""

    name: str
    tokenizer: Any
    text_encoder: nn.Module
    unet: nn.Module
    scheduler: Any  # a diffusers scheduler carrying the training noise schedule
    vae: nn.Module | None = None
    image_channels: int = 1
    default_guidance: float = 1.5
    default_steps: int = 25
    max_length: int = 16
    use_attention_mask: bool = False  # BERT-style encoders mask padding; CLIP in Stable Diffusion does not
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for module in (self.text_encoder, self.unet, self.vae):
            if module is not None:
                module.eval()
                module.requires_grad_(False)

    # ------------------------------------------------------------------ text
    @property
    def vocab_size(self) -> int:
        return int(self.token_embedding.weight.shape[0])

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    @property
    def start_id(self) -> int:
        """The id every prompt starts with (CLIP's start-of-text, BERT's [CLS])."""
        tok = self.tokenizer
        return int(tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id)

    @property
    def end_id(self) -> int:
        """The id that closes every prompt (CLIP's end-of-text, BERT's [SEP])."""
        tok = self.tokenizer
        return int(tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def special_ids(self) -> set[int]:
        """The tokenizer's special tokens (start, end, padding, unknown, mask, ...): never adversarial tokens."""
        tok = self.tokenizer
        ids = set(getattr(tok, "all_special_ids", []) or [])
        ids |= {getattr(tok, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
                                                 "cls_token_id", "sep_token_id", "mask_token_id")}
        return {int(i) for i in ids if i is not None and 0 <= int(i) < self.vocab_size}

    @property
    def reserved_ids(self) -> set[int]:
        """Placeholder entries no text produces (BERT's ``[unusedN]``): their embeddings were never trained
        and typing ``[unused5]`` tokenises into other pieces, so they are left out of adversarial search."""
        if not hasattr(self, "_reserved"):
            pattern = re.compile(r"^\[unused\d+\]$")
            vocab = self.tokenizer.get_vocab() if hasattr(self.tokenizer, "get_vocab") else {}
            self._reserved = {int(i) for w, i in vocab.items() if pattern.match(w) and int(i) < self.vocab_size}
        return set(self._reserved)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompt strings -> padded id tensor (B, max_length) starting with the start token."""
        out = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return out["input_ids"]

    def decode(self, ids: torch.Tensor) -> str:
        """One id row -> prompt text without special tokens (for display: judging uses the ids)."""
        keep = [int(i) for i in ids.tolist() if int(i) not in self.special_ids]
        return self.tokenizer.decode(keep, skip_special_tokens=True).strip()

    def _mask(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"attention_mask": (ids != self.pad_id).long()} if self.use_attention_mask else {}

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> the text condition (B, L, D) the UNet attends to."""
        return self.text_encoder(input_ids=ids, **self._mask(ids)).last_hidden_state

    def encode_embeds(self, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Like :meth:`encode`, with the word embeddings replaced by ``embeds`` (B, L, D), differentiably.

        An encoder that takes ``inputs_embeds`` (BERT) gets them directly (its
        position and type embeddings are added inside); one that does not (CLIP,
        which needs ``ids`` for its end-of-text pooling) gets them through a
        forward hook on its embedding table. ``ids`` fixes the attention mask
        and the end-of-text position.
        """
        if "inputs_embeds" in inspect.signature(self.text_encoder.forward).parameters:
            return self.text_encoder(inputs_embeds=embeds, **self._mask(ids)).last_hidden_state
        hook = self.token_embedding.register_forward_hook(lambda _m, _i, _o: embeds)
        try:
            return self.text_encoder(input_ids=ids, **self._mask(ids)).last_hidden_state
        finally:
            hook.remove()

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.encode(self.tokenize(prompts))

    # ----------------------------------------------------------------- image
    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def image_to_x0(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] NCHW images -> the clean sample the UNet denoises (pixels or VAE latents)."""
        x = images * 2 - 1
        if self.vae is None:
            return x
        with torch.no_grad():
            latent = self.vae.encode(x).latent_dist.mean
        return latent * self.vae.config.scaling_factor

    def x0_to_image(self, x0: torch.Tensor) -> torch.Tensor:
        if self.vae is not None:
            x0 = self.vae.decode(x0 / self.vae.config.scaling_factor).sample
        return ((x0 + 1) / 2).clamp(0, 1)

    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (int(cfg.in_channels), int(size), int(size))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, t)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction eps(x_t, t, cond)."""
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])
        return self.unet(x_t, t, encoder_hidden_states=cond).sample

    # -------------------------------------------------------------- sampling
    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """One seeded starting sample per seed: the same seed gives the same image."""
        shape = self.sample_shape()
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    def _ddim(self, guidance: float | None, steps: int | None):
        from diffusers import DDIMScheduler

        sampler = DDIMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(self.default_steps if steps is None else int(steps))
        return sampler, self.default_guidance if guidance is None else float(guidance)

    @torch.no_grad()
    def _ddim_latents(self, cond: torch.Tensor, seeds: Sequence[int], sampler: Any, guidance: float, stop: int | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from seeded noise with classifier-free guidance against the
        empty prompt, through all of ``sampler.timesteps`` or the first ``stop`` of them."""
        x = self.initial_noise(seeds) * sampler.init_noise_sigma
        uncond = self.encode_prompts([""]).expand(cond.shape[0], -1, -1)
        both = torch.cat([uncond, cond])
        for t in sampler.timesteps[:stop]:
            if guidance == 1.0:
                eps = self.denoise(x, t, cond)
            else:  # one UNet call for the unconditional and conditional halves
                eps_u, eps_c = self.denoise(torch.cat([x, x]), t, both).chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            x = sampler.step(eps, t, x).prev_sample
        return x

    @torch.no_grad()
    def sample_latents(self, cond: torch.Tensor, seeds: Sequence[int], guidance: float | None = None,
                       steps: int | None = None) -> torch.Tensor:
        """The finished latents of deterministic DDIM sampling (eta 0) with classifier-free guidance
        against the empty prompt (pixels for a model without a VAE, still in [-1, 1])."""
        sampler, guidance = self._ddim(guidance, steps)
        return self._ddim_latents(cond, seeds, sampler, guidance)

    @torch.no_grad()
    def generate_from_cond(self, cond: torch.Tensor, seeds: Sequence[int], guidance: float | None = None,
                           steps: int | None = None) -> torch.Tensor:
        """Deterministic DDIM sampling (eta 0) with classifier-free guidance against the empty prompt."""
        return self.x0_to_image(self.sample_latents(cond, seeds, guidance, steps))

    @torch.no_grad()
    def partial_sample(self, cond: torch.Tensor, seeds: Sequence[int], stop: int, guidance: float | None = None,
                       steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, t): the latents after the first ``stop`` of ``steps`` DDIM steps, and the timestep
        they stand at. ESD trains on such points of the model's own sampling trajectory."""
        sampler, guidance = self._ddim(guidance, steps)
        if not 0 <= stop < len(sampler.timesteps):
            raise ValueError(f"stop must be in [0, {len(sampler.timesteps)}), got {stop}")
        return self._ddim_latents(cond, seeds, sampler, guidance, stop), sampler.timesteps[stop]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | str, seeds: Sequence[int] | int, guidance: float | None = None,
                 steps: int | None = None, batch_size: int = 100) -> torch.Tensor:
        """Images in [0,1] for prompts (one per seed; a single prompt is repeated)."""
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        prompts = [prompts] * len(seeds) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        return self.generate_ids(self.tokenize(prompts) if prompts else torch.empty(0, self.max_length, dtype=torch.long),
                                 seeds, guidance, steps, batch_size)

    @torch.no_grad()
    def generate_ids(self, ids: torch.Tensor, seeds: Sequence[int], guidance: float | None = None,
                     steps: int | None = None, batch_size: int = 100) -> torch.Tensor:
        """Images in [0,1] from exact token id rows (B, L), one per seed: what a prompt attack is judged on."""
        seeds = list(seeds)
        if ids.dim() == 1:
            ids = ids[None].expand(len(seeds), -1)
        if len(ids) != len(seeds):
            raise ValueError(f"{len(ids)} id rows but {len(seeds)} seeds")
        out = []
        for i in range(0, len(seeds), batch_size):
            cond = self.encode(ids[i:i + batch_size])
            out.append(self.generate_from_cond(cond, seeds[i:i + batch_size], guidance, steps))
        return torch.cat(out) if out else torch.empty(0, *self.sample_shape())

    # ----------------------------------------------------------------- copies
    def with_unet(self, unet: nn.Module, name: str | None = None, **meta: Any) -> "TextToImageTarget":
        """The same target with another UNet (an unlearned one); text side and sampler shared."""
        return dataclasses.replace(self, name=name or self.name, unet=unet, meta={**self.meta, **meta})

    def trainable_unet_copy(self) -> nn.Module:
        """A deep copy of the UNet with gradients on, for an unlearner to fine-tune."""
        unet = copy.deepcopy(self.unet)
        unet.requires_grad_(True)
        unet.train()
        return unet
