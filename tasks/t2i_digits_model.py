"""The embedded digits text-to-image model: trained by the suite, cached in Hugging Face formats.

A pixel-space, text-conditioned diffusers UNet at the digits' native 8x8, a
small CLIP text encoder (transformers ``CLIPTextModel``) and a word-level
tokenizer (``tokenizers``, saved as a ``PreTrainedTokenizerFast``). It learns
prompts such as "a handwritten digit three" from scikit-learn's bundled digits,
so the whole diffusion-unlearning evaluation runs offline on a laptop. The
vocabulary holds words the training prompts never use, so an adversarial
prompt search has tokens to choose from, as it would on a real model.

Training is seeded and runs once: the three components are written with
``save_pretrained`` to a folder named by the recipe hash (a temporary folder,
renamed into place when complete) and reloaded through ``from_pretrained``.
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

from robustbench_peft.cache import cache_dir, recipe_hash
from robustbench_peft.errors import UserError
from robustbench_peft.t2i.target import TextToImageTarget
from robustbench_peft.threads import torch_threads

from .digits import digits_task

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Training prompt templates; ``{d}`` is the digit's word.
TEMPLATES = (
    "a handwritten digit {d}",
    "a handwritten digit {d}",
    "the number {d}",
    "a drawing of the digit {d}",
    "{d}",
)
#: Words the training prompts never use: the search space of adversarial prompts.
EXTRA_WORDS = tuple("""
photo picture image sketch painting scan small large big tiny bold thin thick dark light bright
black white gray red blue green yellow purple orange pink brown round square curved straight
line lines circle loop stroke strokes pen pencil ink paper chalk board sign letter letters word
numeral numeric figure symbol shape glyph character font style printed typed written scribbled
neat messy clean blurry sharp old new first last second third top bottom left right center middle
up down open closed upper lower half double single many few some all none no not very quite
cat dog bird fish tree house car boat sun moon star cloud rain snow fire water stone wood
apple ball box cup door hat key lamp book chair table phone clock hand face eye head heart
is are was be and or of in on at to with without by for from like as this that it its
art artist photograph portrait landscape cartoon comic poster logo icon pixel grid noise texture
""".split())
BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"


def digit_prompt(digit: int) -> str:
    """The canonical prompt of a digit: the one generation, judging and unlearning use."""
    return TEMPLATES[0].format(d=DIGIT_WORDS[digit])


def vocabulary() -> list[str]:
    """Special tokens, then every training word, then the extra words (order is part of the recipe)."""
    words: list[str] = []
    for text in [t.format(d=d) for t in TEMPLATES for d in DIGIT_WORDS] + list(EXTRA_WORDS):
        for w in text.split():
            if w not in words:
                words.append(w)
    return [BOS, EOS, PAD, UNK] + words


@dataclass(frozen=True)
class DigitsT2IRecipe:
    """Everything that determines the embedded model's weights."""

    steps: int = 700
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.999
    prompt_dropout: float = 0.1
    channels: tuple[int, int] = (32, 64)
    text_hidden: int = 64
    text_layers: int = 2
    max_length: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    seed: int = 0
    version: int = 1


def build_tokenizer(max_length: int):
    """A word-level fast tokenizer over :func:`vocabulary` that wraps prompts in start/end tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=max_length)


def build_text_encoder(recipe: DigitsT2IRecipe, tokenizer) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=recipe.text_hidden,
                            intermediate_size=2 * recipe.text_hidden, num_hidden_layers=recipe.text_layers,
                            num_attention_heads=4, max_position_embeddings=recipe.max_length,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def build_unet(recipe: DigitsT2IRecipe) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=recipe.channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=recipe.text_hidden, attention_head_dim=8, norm_num_groups=8)


def build_scheduler(recipe: DigitsT2IRecipe):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=recipe.num_train_timesteps, beta_schedule=recipe.beta_schedule,
                         prediction_type="epsilon", clip_sample=False)


def training_prompts(labels: torch.Tensor, generator: torch.Generator, dropout: float) -> list[str]:
    """One prompt per label from a seeded template draw; a ``dropout`` share becomes the empty prompt."""
    pick = torch.randint(len(TEMPLATES), (len(labels),), generator=generator).tolist()
    drop = (torch.rand(len(labels), generator=generator) < dropout).tolist()
    return ["" if d else TEMPLATES[p].format(d=DIGIT_WORDS[int(y)]) for y, p, d in zip(labels.tolist(), pick, drop)]


def train(recipe: DigitsT2IRecipe, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Jointly train UNet and text encoder (EMA copies are what is kept); returns the parts and timings."""
    torch.manual_seed(recipe.seed)
    task = digits_task()
    x, y = task.x_train * 2 - 1, task.y_train
    tokenizer = build_tokenizer(recipe.max_length)
    text_encoder, unet, scheduler = build_text_encoder(recipe, tokenizer), build_unet(recipe), build_scheduler(recipe)
    ema = [copy.deepcopy(text_encoder).requires_grad_(False), copy.deepcopy(unet).requires_grad_(False)]
    params = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe.seed)
    start = time.perf_counter()
    text_encoder.train(), unet.train()
    for step in range(recipe.steps):
        idx = torch.randint(len(y), (recipe.batch_size,), generator=gen)
        ids = tokenizer(training_prompts(y[idx], gen, recipe.prompt_dropout), padding="max_length",
                        max_length=recipe.max_length, truncation=True, return_tensors="pt")["input_ids"]
        noise = torch.randn(x[idx].shape, generator=gen)
        t = torch.randint(recipe.num_train_timesteps, (recipe.batch_size,), generator=gen)
        pred = unet(scheduler.add_noise(x[idx], noise, t), t, encoder_hidden_states=text_encoder(input_ids=ids).last_hidden_state).sample
        loss = nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))  # warm-up: early averages forget the init
        with torch.no_grad():
            for avg, live in zip(ema, (text_encoder, unet)):
                for pa, pl in zip(avg.parameters(), live.parameters()):
                    pa.lerp_(pl, 1 - decay)
        if step % 25 == 0 or step == recipe.steps - 1:
            log(f"digits-t2i step {step + 1}/{recipe.steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    return {"tokenizer": tokenizer, "text_encoder": ema[0].eval(), "unet": ema[1].eval(), "scheduler": scheduler,
            "train_seconds": time.perf_counter() - start}


REQUIRED_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                  "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json",
                  "recipe.json")


def model_dir(recipe: DigitsT2IRecipe) -> Path:
    return cache_dir() / "digits-t2i" / recipe_hash({"kind": "digits-t2i", **asdict(recipe)})


def is_complete(folder: Path) -> bool:
    """All parts present and the recipe file readable: a folder missing any is rebuilt."""
    if not all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in REQUIRED_FILES):
        return False
    try:
        json.loads((folder / "recipe.json").read_text())
    except ValueError:
        return False
    return True


def save_model(parts: dict[str, Any], recipe: DigitsT2IRecipe, folder: Path, info: dict[str, Any]) -> None:
    """Write every part in its library's own format to a temporary folder, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        parts["unet"].save_pretrained(tmp / "unet", safe_serialization=True)
        parts["text_encoder"].save_pretrained(tmp / "text_encoder", safe_serialization=True)
        parts["tokenizer"].save_pretrained(tmp / "tokenizer")
        parts["scheduler"].save_pretrained(tmp / "scheduler")
        (tmp / "recipe.json").write_text(json.dumps({"recipe": asdict(recipe), **info}, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_folder(folder: Path, name: str = "digits-t2i", guidance: float = 1.5, steps: int = 25) -> TextToImageTarget:
    """Load a saved embedded model through the Hugging Face loaders."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    info = json.loads((folder / "recipe.json").read_text())
    return TextToImageTarget(
        name=name, tokenizer=tokenizer, text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
        scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"), vae=None, image_channels=1,
        default_guidance=guidance, default_steps=steps, max_length=int(info["recipe"]["max_length"]),
        meta={"folder": str(folder), "identity": f"digits-t2i/{folder.name}", **{k: v for k, v in info.items() if k != "recipe"}})


def load_digits_t2i(recipe: DigitsT2IRecipe | None = None, log: Callable[[str], None] = print,
                    threads: int | None = None) -> TextToImageTarget:
    """The embedded model: loaded from the cache, or trained now (once) and cached.

    ``threads`` (default ``$ROBUSTBENCH_PEFT_T2I_THREADS`` or 1): on a shared
    2-core machine one thread trained several times faster per step than two.
    """
    threads = int(threads or os.environ.get("ROBUSTBENCH_PEFT_T2I_THREADS", 1))
    recipe = recipe or DigitsT2IRecipe()
    folder = model_dir(recipe)
    if not is_complete(folder):
        log(f"training the embedded digits text-to-image model (once; cached in {folder}) ...")
        with torch_threads(threads):
            parts = train(recipe, log)
            save_model(parts, recipe, folder, {"train_seconds": round(parts["train_seconds"], 1)})
    try:
        return load_folder(folder)
    except Exception as exc:  # a folder damaged after its check: say where, so it can be removed
        raise UserError(f"cached digits text-to-image model in {folder} is unreadable ({exc}); delete the folder to rebuild") from exc
