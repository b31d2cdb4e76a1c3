"""Text-to-image contracts and loaders: target, task, prompt attack, unlearner, judge, evaluation, Stable Diffusion.

The methods themselves are plug-ins elsewhere: prompt attacks in ``attacks/``,
unlearners in ``unlearning/``, tasks, judges and the embedded digits model in
``tasks/``.
"""

from .attack_base import PromptAttack, PromptItem, PromptResult
from .judge import Judge
from .target import TextToImageTarget
from .task import T2IConceptTask
from .unlearn_base import ForgetRequest, T2IUnlearner

__all__ = ["ForgetRequest", "Judge", "PromptAttack", "PromptItem", "PromptResult", "T2IConceptTask", "T2IUnlearner",
           "TextToImageTarget"]
