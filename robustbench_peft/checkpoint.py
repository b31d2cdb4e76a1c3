"""Per-batch checkpoints of an evaluation, so a killed run resumes to the same numbers.

Every attack runs over fixed chunks of samples with a seed derived from (suite
seed, chunk index); each finished chunk is written atomically as one small JSON
file under ``OUT/.checkpoint/``. A resumed run loads finished chunks and
computes the rest, which gives exactly what an uninterrupted run gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .atomic import write_json_atomic
from .attack import AttackResult
from .errors import UserError
from .report import bits, unbits

CHECKPOINT_DIR = ".checkpoint"
SUITE_FILE = "suite.json"


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of one chunk: independent of how many chunks ran before a crash."""
    return (int(seed) * 1_000_003 + int(chunk)) % (2**31 - 1)


class CheckpointStore:
    """Finished chunks of one output directory (a no-op store when ``root`` is None)."""

    def __init__(self, out_dir: str | Path | None) -> None:
        self.root = Path(out_dir) / CHECKPOINT_DIR if out_dir is not None else None

    def save_suite(self, suite_json: dict[str, Any]) -> None:
        if self.root is not None:
            write_json_atomic(self.root / SUITE_FILE, suite_json)

    def load_suite(self) -> dict[str, Any]:
        if self.root is None or not (self.root / SUITE_FILE).exists():
            raise UserError(f"nothing to resume in {self.root.parent if self.root else '?'}: no checkpoint found (run eval without --resume)")
        try:
            return json.loads((self.root / SUITE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"checkpoint {self.root / SUITE_FILE} is unreadable: {exc}") from None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / f"{key}.json"

    def load_chunk(self, key: str) -> AttackResult | None:
        if self.root is None or not self._path(key).exists():
            return None
        try:
            doc = json.loads(self._path(key).read_text())
            correct = torch.tensor([unbits(row) for row in doc["correct"]], dtype=torch.bool)
        except (OSError, json.JSONDecodeError, KeyError, ValueError):
            return None  # a damaged chunk is recomputed, never trusted
        return AttackResult(
            name=doc["name"], threat_model=doc["threat_model"], eps=doc["eps"], correct=correct, x_adv=[],
            seconds=doc["seconds"], config=doc["config"], adaptive=doc["adaptive"], details=doc["details"], invalid=doc["invalid"],
        )

    def save_chunk(self, key: str, result: AttackResult) -> None:
        if self.root is None:
            return
        write_json_atomic(self._path(key), {
            "name": result.name, "threat_model": result.threat_model, "eps": result.eps,
            "correct": [bits(row.tolist()) for row in result.correct], "seconds": result.seconds,
            "config": result.config, "adaptive": result.adaptive, "details": result.details, "invalid": result.invalid,
        })


def merge_details(parts: list[tuple[Any, int]]) -> Any:
    """Combine per-chunk details: numbers become sample-weighted means, dicts and
    equal-length lists merge element-wise, anything else is taken from the first chunk."""
    values = [p for p, _ in parts]
    first = values[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, (int, float)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        total = sum(w for _, w in parts)
        return sum(float(v) * w for v, w in parts) / total if total else float(first)
    if isinstance(first, dict) and all(isinstance(v, dict) and v.keys() == first.keys() for v in values):
        return {k: merge_details([(v[k], w) for v, w in parts]) for k in first}
    if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [merge_details([(v[i], w) for v, w in parts]) for i in range(len(first))]
    return first


def merge_results(chunks: list[AttackResult], seed: int) -> AttackResult:
    """One result over all samples from results over consecutive chunks."""
    head = chunks[0]
    sizes = [c.correct.shape[1] for c in chunks]
    invalid = [{k: sum(c.invalid[i][k] for c in chunks) for k in head.invalid[i]} for i in range(len(head.eps))]
    return AttackResult(
        name=head.name,
        threat_model=head.threat_model,
        eps=head.eps,
        correct=torch.cat([c.correct for c in chunks], dim=1),
        x_adv=[torch.cat([c.x_adv[i] for c in chunks]) for i in range(len(head.eps))] if all(c.x_adv for c in chunks) else [],
        seconds=sum(c.seconds for c in chunks),
        config={**head.config, "seed": seed, "chunk_size": sizes[0]},
        adaptive=head.adaptive,
        details=merge_details([(c.details, n) for c, n in zip(chunks, sizes)]) if len(chunks) > 1 else head.details,
        invalid=invalid,
    )
