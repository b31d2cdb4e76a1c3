"""The contract of text-to-image tasks: what to erase, which prompts attack it, which concepts must stay.

Built-in tasks register with ``@register_t2i_task("name")`` and are run by the
diffusion report section, never by the classifier runner: they have no pixel
threat model, only prompts, a judge and a forget request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .attack_base import PromptItem
from .judge import Judge
from .target import TextToImageTarget
from .unlearn_base import ForgetRequest


@dataclass
class T2IConceptTask:
    """A concept-erasure task: model loader, judge, attacked prompts, kept prompts, forget request."""

    name: str
    description: str
    load_model: Callable[[], TextToImageTarget]
    make_judge: Callable[[], Judge]
    attacked: list[PromptItem]
    kept: list[PromptItem]
    forget_request: Callable[[], ForgetRequest]
    options: dict = field(default_factory=dict)
    #: A kept concept's prompt for the attacks' positive control: on the original model, an optimising attack
    #: must steer it to the erased concept's reference images (None: the task has no control).
    control_prompt: str | None = None
    #: An already unlearned model given by the user (e.g. a replacement UNet): base target -> unlearned target.
    unlearned: Callable[[TextToImageTarget], TextToImageTarget] | None = None
