"""The diffusion report section lives in :mod:`unlearning.diffusion_section`; importing this module registers it."""

from unlearning.diffusion_section import *  # noqa: F401,F403
