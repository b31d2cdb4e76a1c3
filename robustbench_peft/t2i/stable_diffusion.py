"""Stable Diffusion as a :class:`TextToImageTarget`, through diffusers.

The base model comes from a hub id or a local diffusers folder; an unlearned
model is usually only a new UNet, so ``unet=`` replaces it with a diffusers
UNet folder or a single safetensors state dict (never a pickle). Offline, a hub
id that is not cached fails at once with one line naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..models.offline import hub_access
from .target import TextToImageTarget

SD_GUIDANCE = 7.5
SD_STEPS = 50


def load_unet_replacement(base_unet: torch.nn.Module, source: str | Path) -> torch.nn.Module:
    """A diffusers UNet folder, or a safetensors file of the base UNet's weights (an unlearned model)."""
    from diffusers import UNet2DConditionModel

    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"unet folder {path} has no config.json (expected a diffusers UNet saved with save_pretrained)")
        return UNet2DConditionModel.from_pretrained(path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise UserError(f"unet {source!r}: expected a diffusers UNet folder or an existing .safetensors file")
    from ..safe_load import load_state_dict

    state = load_state_dict(path)
    unet = UNet2DConditionModel.from_config(base_unet.config)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"unet {path}: does not match the base UNet ({len(missing)} missing, {len(unexpected)} unexpected keys, "
                        f"e.g. {(missing or unexpected)[0]})")
    return unet


def load_stable_diffusion(model: str, unet: str | None = None, guidance: float = SD_GUIDANCE, steps: int = SD_STEPS,
                          name: str | None = None) -> TextToImageTarget:
    """``StableDiffusionPipeline`` parts from ``model`` (hub id or folder), with an optional replacement UNet."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    local = Path(model).is_dir()
    hint = "a local diffusers folder (model=/path/to/stable-diffusion)"
    try:
        if local:
            pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
        else:
            with hub_access(f"stable diffusion {model}", hint):
                pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    except (UserError, ImportError):
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f"stable diffusion {model}: cannot load a diffusers pipeline ({str(exc).splitlines()[0][:200]})") from None
    denoiser = pipe.unet if unet is None else load_unet_replacement(pipe.unet, unet)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return TextToImageTarget(
        name=name or (f"sd:{model}" + (f"+unet:{unet}" if unet else "")), tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder, unet=denoiser, scheduler=scheduler, vae=pipe.vae,
        image_channels=3, default_guidance=guidance, default_steps=steps,
        max_length=int(pipe.tokenizer.model_max_length), meta={"model": model, "unet": unet})
