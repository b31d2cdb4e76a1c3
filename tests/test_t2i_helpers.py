"""Tiny text-to-image targets for the diffusion tests: a tiny BERT saved to a folder and a tiny UNet, in seconds."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from tasks.t2i_digits_model import DIGIT_WORDS, DigitsT2IRecipe, build_scheduler, load_encoder, make_target
from robustbench_peft.t2i.target import TextToImageTarget

RESERVED = [f"[unused{i}]" for i in range(3)]
SPECIALS = ["[PAD]", *RESERVED, "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["a", "handwritten", "digit", "the", "number", "drawing", "of", "photo", "an", "image", *DIGIT_WORDS,
         *[str(d) for d in range(10)], "cat", "dog", "tree", "sun", "moon", "star", "red", "blue", "bold", "thin",
         "sketch", "pen", "ink", "paper", "##s", "##ing", "##ed", "##er"]


class FixedJudge:
    """A judge that always answers ``answer`` (lets a test control early stopping)."""

    name = "fixed"

    def __init__(self, answer: bool) -> None:
        self.answer = answer

    def present(self, images: torch.Tensor, concept) -> torch.Tensor:
        return torch.full((len(images),), self.answer, dtype=torch.bool)


class RecordingJudge(FixedJudge):
    """A fixed answer, keeping every image it was shown."""

    def __init__(self, answer: bool) -> None:
        super().__init__(answer)
        self.seen: list[torch.Tensor] = []

    def present(self, images: torch.Tensor, concept) -> torch.Tensor:
        self.seen.append(images.clone())
        return super().present(images, concept)


def tiny_bert_folder(folder: Path, seed: int = 0) -> Path:
    """A WordPiece tokenizer and a randomly initialised 1-layer BertModel, saved as transformers folders are."""
    from transformers import BertConfig, BertModel, BertTokenizer

    if (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))  # built aside, renamed into place
    (tmp / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(SPECIALS + WORDS)}, do_lower_case=True)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=32))
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process put it there first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_digits_target(seed: int = 0, folder: Path | None = None) -> TextToImageTarget:
    """The embedded model's architecture at a tenth of its width on a tiny BERT, randomly initialised."""
    from diffusers import UNet2DConditionModel

    folder = tiny_bert_folder(folder or Path(tempfile.gettempdir()) / "robustbench-peft-tiny-bert")
    tokenizer, encoder = load_encoder(folder)
    torch.manual_seed(seed)
    recipe = DigitsT2IRecipe()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    return make_target("tiny", tokenizer, encoder, unet, build_scheduler(recipe), recipe.max_length,
                       meta={"identity": f"tiny-{seed}"}, steps=3)
