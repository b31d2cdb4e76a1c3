"""``open_clip:`` specs: zero-shot CLIP classifiers over the task's class names.

``open_clip:ARCH/PRETRAINED`` (an open_clip architecture with a pretrained tag
or a checkpoint file), ``open_clip:hf-hub:ORG/REPO`` and ``open_clip:DIR`` (a
folder with ``open_clip_config.json`` and weights, open_clip's ``local-dir``
layout). The classifier embeds every class name through each prompt template,
averages the normalised text embeddings per class, and scores an image by
``logit_scale * cos(image, class)``: logits over the task's classes.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..registry import register_model
from ..targets import ClassifierTarget
from .offline import hf_endpoint, hub_access, weights_only_loading
from .preprocessing import PreprocessConfig, make_target, square
from .sources import local_dir, local_path

HINT = "open_clip:/path/to/folder (open_clip_config.json + open_clip_model.safetensors) or open_clip:ARCH//path/to/checkpoint.safetensors"
#: Prompt template sets; a template holds ``{}`` where the class name goes.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "simple": ("a photo of a {}.",),
    "ensemble": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a photo of the large {}.",
        "a photo of the small {}.",
        "a low resolution photo of a {}.",
        "a cropped photo of a {}.",
        "a close-up photo of a {}.",
        "a good photo of a {}.",
    ),
}
TEXT_BATCH = 256


def parse_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A named set (``simple``, ``ensemble``) or custom templates separated by ``|``, each with ``{}``."""
    if not isinstance(templates, str):
        chosen = tuple(templates)
    elif templates in TEMPLATES:
        chosen = TEMPLATES[templates]
    else:
        chosen = tuple(t.strip() for t in templates.split("|") if t.strip())
    bad = [t for t in chosen if "{}" not in t]
    if not chosen or bad:
        raise UserError(
            f"open_clip templates must be one of {', '.join(TEMPLATES)} or texts with '{{}}' for the class name "
            f"separated by '|', got {templates!r}"
        )
    return chosen


def parse_class_names(class_names: Sequence[str] | str | None, spec: str) -> list[str]:
    if class_names is None or (isinstance(class_names, str) and not class_names.strip()):
        raise UserError(
            f"{spec}: a zero-shot classifier needs the task's class names; load it for a task "
            "(eval --task, evaluate(task=...) or load_for_task(spec, task)) or pass class_names=['cat', 'dog', ...] "
            "(in a spec: open_clip:NAME:class_names=cat+dog)"
        )
    names = re.split(r"[,+]", class_names) if isinstance(class_names, str) else list(class_names)
    names = [str(n).strip().replace("_", " ") for n in names]
    if len(names) < 2 or not all(names):
        raise UserError(f"{spec}: need at least two non-empty class names, got {class_names!r}")
    return names


class ZeroShotClassifier(nn.Module):
    """CLIP's image tower against fixed class embeddings: ``scale * normalize(f(x)) @ W.T``.

    Only the image tower is kept: the text tower's whole contribution is the
    ``class_embeddings`` buffer, computed once when the classifier is built.
    """

    def __init__(self, visual: nn.Module, class_embeddings: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("class_embeddings", class_embeddings)
        self.logit_scale = float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.visual(x)
        if isinstance(features, (tuple, list)):  # towers that also return tokens (CoCa)
            features = features[0]
        return self.logit_scale * F.normalize(features, dim=-1) @ self.class_embeddings.T


@torch.no_grad()
def class_embeddings(clip: nn.Module, tokenizer: Any, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Per class, the renormalised mean of the normalised text embeddings of its prompts."""
    texts = [t.format(name) for name in class_names for t in templates]
    device = next(clip.parameters()).device
    chunks = [F.normalize(clip.encode_text(tokenizer(texts[i : i + TEXT_BATCH]).to(device)), dim=-1) for i in range(0, len(texts), TEXT_BATCH)]
    embeddings = torch.cat(chunks).view(len(class_names), len(templates), -1).mean(1)
    return F.normalize(embeddings, dim=-1).float()


def resolve(name: str, spec: str) -> tuple[str, str | None, str | None]:
    """(model name for open_clip, pretrained tag or file, download url) of a spec's name."""
    if name.startswith("hf-hub:"):
        return name, None, hf_endpoint()
    if name.startswith("local-dir:"):
        name = name.split(":", 1)[1]
    folder = local_dir(name, spec, "open_clip_config.json and the weights")
    if folder is not None:
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"{spec}: {folder} has no open_clip_config.json; pass {HINT}")
        return f"local-dir:{folder}", None, None
    import open_clip

    arch, sep, pretrained = name.partition("/")
    if not sep or not pretrained:
        raise UserError(f"{spec}: expected open_clip:ARCH/PRETRAINED (e.g. open_clip:ViT-B-32/laion2b_s34b_b79k), open_clip:hf-hub:ORG/REPO or {HINT}")
    if arch not in open_clip.list_models():
        raise UserError(f"{spec}: open_clip has no architecture {arch!r}; see open_clip.list_models()")
    checkpoint = local_path(pretrained, spec)
    if checkpoint is not None:
        return arch, str(checkpoint), None
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise UserError(f"{spec}: {arch} has no pretrained tag {pretrained!r}; tags: {tags}")
    return arch, pretrained, hf_endpoint() if cfg.get("hf_hub") else cfg.get("url") or hf_endpoint()


@contextmanager
def root_logging_muted() -> Iterator[None]:
    """open_clip logs failures on the root logger before raising; the raised error is what we report."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def load_clip(name: str, spec: str) -> tuple[nn.Module, Any]:
    """(open_clip model in eval mode, its tokenizer), offline-aware and with safe loading."""
    import open_clip

    model_name, pretrained, url = resolve(name, spec)
    access = nullcontext() if url is None else hub_access(spec, HINT, url)
    try:
        with access, weights_only_loading(spec), root_logging_muted():
            clip = open_clip.create_model(model_name, pretrained=pretrained, require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{spec}: open_clip could not load it ({str(exc).splitlines()[0]}); pass {HINT}") from None
    return clip.eval(), tokenizer


def preprocess_config(clip: nn.Module) -> PreprocessConfig:
    from open_clip.model import get_model_preprocess_cfg

    cfg = get_model_preprocess_cfg(clip)
    return PreprocessConfig((3, *square(cfg["size"])), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))


@register_model("open_clip")
def open_clip_model(
    name: str,
    class_names: Sequence[str] | str | None = None,
    templates: str = "ensemble",
    input_shape: Sequence[int] | None = None,
) -> ClassifierTarget:
    """Zero-shot open_clip over the task's class names: open_clip:ARCH/PRETRAINED, open_clip:hf-hub:ORG/REPO or open_clip:DIR."""
    spec = f"open_clip:{name}"
    names = parse_class_names(class_names, spec)
    prompts = parse_templates(templates)
    clip, tokenizer = load_clip(name, spec)
    scale = float(clip.logit_scale.detach().exp().clamp(max=100)) if hasattr(clip, "logit_scale") else 100.0
    classifier = ZeroShotClassifier(clip.visual, class_embeddings(clip, tokenizer, names, prompts), scale)
    return make_target(classifier, len(names), preprocess_config(clip), spec, input_shape)
