"""Text-to-image targets (embedded digits model, Stable Diffusion), judges, prompt attacks' base, unlearning base."""

from .target import TextToImageTarget

__all__ = ["TextToImageTarget"]
