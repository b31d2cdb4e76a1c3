"""Tiny text-to-image targets for the diffusion tests (untrained, built from configs in seconds)."""
from __future__ import annotations

import torch

from tasks.t2i_digits_model import DigitsT2IRecipe, build_scheduler, build_text_encoder, build_tokenizer
from robustbench_peft.t2i.target import TextToImageTarget


class FixedJudge:
    """A judge that always answers ``answer`` (lets a test control early stopping)."""

    name = "fixed"

    def __init__(self, answer: bool) -> None:
        self.answer = answer

    def present(self, images: torch.Tensor, concept) -> torch.Tensor:
        return torch.full((len(images),), self.answer, dtype=torch.bool)


def tiny_digits_target(seed: int = 0) -> TextToImageTarget:
    """The embedded model's architecture at a tenth of its width, randomly initialised."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    recipe = DigitsT2IRecipe(text_hidden=32, text_layers=1)
    tokenizer = build_tokenizer(recipe.max_length)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    return TextToImageTarget(name="tiny", tokenizer=tokenizer, text_encoder=build_text_encoder(recipe, tokenizer), unet=unet,
                             scheduler=build_scheduler(recipe), default_steps=3, max_length=recipe.max_length,
                             meta={"identity": f"tiny-{seed}"})
