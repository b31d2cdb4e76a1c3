"""The contract of judges: image -> is the concept present?

A judge is what makes text-to-image numbers comparable: every attack and every
unlearned model is measured by the task's judge on the image actually
generated. Built-in judges register with ``@register_judge("name")``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Judge(ABC):
    """``present(images, concept) -> bool tensor`` on [0,1] NCHW images, and a name for the report."""

    name = "judge"

    @abstractmethod
    def present(self, images: torch.Tensor, concept: Any) -> torch.Tensor:
        """One bool per image: the judge finds ``concept`` in it."""
