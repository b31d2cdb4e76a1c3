"""Intra-op thread count for a block of work, restored afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads (0 keeps the current setting).

    One thread is both faster for these small models on a shared CPU and makes
    the numbers independent of the machine's core count.
    """
    if n <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
