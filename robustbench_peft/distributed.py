"""Sharded evaluation on torch.distributed: every rank computes a share of the chunks.

The runner splits each attack's samples into fixed chunks whose seeds depend only
on (suite seed, chunk index), never on the process that computes them. So under
``torchrun`` rank r computes the chunks with ``c % world_size == r``, all ranks
gather the per-chunk results and merge them in chunk order, and the numbers equal
those of one process. Everything else (task, clean accuracy, checks) is cheap and
deterministic and runs on every rank; only rank 0 writes outputs.

The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import torch

from .errors import UserError

T = TypeVar("T")

#: How long a rank waits for the others (a rank that died makes torchrun stop the rest sooner).
TIMEOUT = _dt.timedelta(minutes=int(os.environ.get("ROBUSTBENCH_PEFT_DIST_TIMEOUT_MIN", "60")))


@dataclass(frozen=True)
class Shard:
    """This process's place in the job: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 prints and writes; the other ranks only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, chunk: int) -> bool:
        """Round-robin assignment of chunk indices to ranks."""
        return chunk % self.world_size == self.rank


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer, got {raw!r}") from None


def env_shard() -> Shard:
    """The shard torchrun describes in the environment (a single process without it)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"invalid torch.distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return Shard(rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", rank))


def current() -> Shard:
    """The shard of the initialised process group, or a single process when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Shard(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=_env_int("LOCAL_RANK", dist.get_rank()))
    return Shard()


def backend_for(device: str) -> str:
    """nccl for CUDA devices (when built in), gloo otherwise."""
    import torch.distributed as dist

    if torch.device(device).type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def rank_device(device: str, shard: Shard) -> str:
    """``cuda`` without an index means this rank's local GPU; other devices pass through."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and shard.distributed:
        if not torch.cuda.is_available():
            raise UserError("--device cuda but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if shard.local_rank >= count:
            raise UserError(f"local rank {shard.local_rank} has no GPU: this node has {count}; use --nproc_per_node={count} or fewer")
        return f"cuda:{shard.local_rank}"
    return device


def setup(device: str = "cpu") -> tuple[Shard, str]:
    """Join the process group when torchrun started several processes.

    Returns the shard and the device this rank should use. A single process
    (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) starts no group and gets its device back.
    """
    import torch.distributed as dist

    shard = env_shard()
    if not shard.distributed:
        return shard, device
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE > 1 but {', '.join(missing)} is not set: start the job with torchrun")
    device = rank_device(device, shard)
    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend=backend, rank=shard.rank, world_size=shard.world_size, timeout=TIMEOUT)
        atexit.register(shutdown)
    return current(), device


def shutdown() -> None:
    """Leave the process group (safe to call twice or without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its value (or its :class:`UserError`) to every rank.

    Used for decisions that must be made once, such as creating the output folder.
    """
    import torch.distributed as dist

    shard = current()
    if not shard.distributed:
        return fn()
    box: list[object] = [None]
    if shard.is_main:
        try:
            box[0] = ("ok", fn())
        except UserError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]  # type: ignore[misc]
    if status == "error":
        raise UserError(str(value))
    return value  # type: ignore[return-value]


def gather_chunks(local: Mapping[int, T], n_chunks: int, strip: Callable[[T], T] | None = None) -> list[T]:
    """Every chunk's result, in chunk order, on every rank.

    ``local`` holds the chunks this rank computed; ``strip`` drops what need not
    travel (e.g. adversarial inputs) before the exchange.
    """
    import torch.distributed as dist

    shard = current()
    if not shard.distributed:
        missing = [c for c in range(n_chunks) if c not in local]
        if missing:
            raise RuntimeError(f"chunks {missing} were not computed")
        return [local[c] for c in range(n_chunks)]
    payload = {c: (strip(r) if strip else r) for c, r in local.items()}
    parts: list[dict[int, T] | None] = [None] * shard.world_size
    dist.all_gather_object(parts, payload)
    merged: dict[int, T] = {}
    for part in parts:
        merged.update(part or {})
    missing = [c for c in range(n_chunks) if c not in merged]
    if missing:
        raise RuntimeError(f"chunks {missing} were computed by no rank")
    return [merged[c] for c in range(n_chunks)]
