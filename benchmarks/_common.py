"""Shared helpers of the benchmark scripts: side-by-side timing, tables, recorded output.

Every benchmark times its two contenders in the same process, interleaved
(A, B, A, B, ...) after a warm-up, and reports medians, so a busy machine slows
both alike and the ratio stays meaningful.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "reports" / "benchmarks"
THREADS = 2


def setup(threads: int = THREADS) -> None:
    """Fixed thread count and seed, so runs are comparable across machines and days."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def machine() -> dict[str, Any]:
    """What the numbers were measured on (load average included: other work slows both sides)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in load] if load else None,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def side_by_side(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Time each contender ``repeats`` times, interleaved; returns seconds, median and last value."""
    last: dict[str, Any] = {}
    for _ in range(warmup):
        for name, fn in contenders.items():
            last[name] = fn()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            last[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: {"seconds": [round(s, 5) for s in seconds[name]], "median": statistics.median(seconds[name]), "value": last[name]} for name in contenders}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(c) for c in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def record(name: str, text: str, payload: dict[str, Any], threads: int) -> Path:
    """Print ``text`` and write it and the JSON payload under reports/benchmarks/ atomically,
    as ``NAME-threadsN.{txt,json}`` (thread counts are recorded side by side, never overwritten)."""
    from robustbench_peft.atomic import write_bytes_atomic

    print(text)
    policy = os.environ.get("OMP_WAIT_POLICY", "").lower()
    stem = f"{name}-threads{threads}" + (f"-{policy}" if policy else "")
    write_bytes_atomic(OUT_DIR / f"{stem}.txt", (text.rstrip() + "\n").encode())
    doc = {"benchmark": name, "machine": machine(), **payload}
    path = write_bytes_atomic(OUT_DIR / f"{stem}.json", (json.dumps(doc, indent=2) + "\n").encode())
    print(f"\nrecorded: {path.relative_to(ROOT)}", file=sys.stderr)
    return path


def correct_subset(target: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples the model classifies correctly (so every sample is attacked)."""
    with torch.no_grad():
        keep = (target(x).argmax(1) == y).nonzero().flatten()[:n]
    return x[keep].contiguous(), y[keep].contiguous()
