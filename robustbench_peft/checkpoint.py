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
from .records import bits, unbits

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
            kind=doc.get("kind", "white-box"), standard=bool(doc.get("standard", False)),
        )

    def save_chunk(self, key: str, result: AttackResult) -> None:
        if self.root is None:
            return
        write_json_atomic(self._path(key), {
            "name": result.name, "threat_model": result.threat_model, "eps": result.eps,
            "correct": [bits(row.tolist()) for row in result.correct], "seconds": result.seconds,
            "config": result.config, "adaptive": result.adaptive, "details": result.details, "invalid": result.invalid,
            "kind": result.kind, "standard": result.standard,
        })


#: Numeric fields that are settings or row labels, not counts: kept (equal in every chunk), never summed.
_SETTING_KEYS = frozenset({"eps", "n_classes", "n_target_classes"})
#: Float fields that are amounts, not rates: summed over chunks.
_SUMMED_FLOAT_KEYS = frozenset({"seconds"})
#: Fields naming the rows of a list of dicts (per eps, per component): rows merge by this key.
_ROW_KEYS = ("eps", "component")


def merge_details(parts: list[tuple[Any, int]]) -> Any:
    """Combine the ``details`` of one attack over consecutive chunks ``(details, n samples)``.

    Rules, so merged numbers read as if the attack had run once over all samples:
    integers are counts and sum (bools are not integers); floats are rates and
    become sample-weighted means, except ``seconds`` (summed) and ``eps`` /
    ``n_target_classes`` (settings, kept); a dict holding ``robust`` and
    ``accuracy`` gets ``accuracy = robust / n`` from the summed counts, and a
    dict with ``pairs`` and ``worst_pair`` re-picks the worst pair from the merged
    pairs. Dicts merge key by key (a key missing in a chunk merges over the
    chunks that have it). Lists of strings become their ordered union; lists of
    dicts carrying ``eps`` or ``component`` merge row by row on that key, and a
    row missing from some chunks counts zero there, its ``robust / n`` stays over
    all samples and it gets ``n_covered`` (the samples of the chunks that had it) so the
    gap is visible; other equal-length lists merge element-wise and
    anything else is concatenated. Strings, bools and None keep the value when
    all chunks agree and become the list of distinct values when they do not.
    """
    return _merge([v for v, _ in parts], [w for _, w in parts], None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _distinct(values: list[Any]) -> list[Any]:
    """Distinct values in order (unhashable ones too; ``True`` and ``1`` stay apart)."""
    out: list[Any] = []
    for v in values:
        if not any(type(v) is type(o) and v == o for o in out):
            out.append(v)
    return out


def _merge(values: list[Any], weights: list[int], key: str | None) -> Any:
    """One field over chunks; ``key`` is the field's name, which decides sum versus mean."""
    if all(isinstance(v, dict) for v in values):
        return _merge_dicts(values, weights)
    if all(isinstance(v, list) for v in values):
        return _merge_lists(values, weights, key)
    if all(_is_number(v) for v in values) and key not in _SETTING_KEYS:
        if all(isinstance(v, int) for v in values):
            return sum(values)
        if key in _SUMMED_FLOAT_KEYS:
            return round(sum(values), 6)  # summing rounded timings leaves float noise (0.8999999999999999)
        total = sum(weights)
        if len(_distinct([float(v) for v in values])) == 1 or not total:
            return float(values[0])  # exact, no rounding from re-weighting equal rates
        return sum(float(v) * w for v, w in zip(values, weights)) / total
    distinct = _distinct(values)
    return distinct[0] if len(distinct) == 1 else distinct


def _merge_dicts(values: list[dict[str, Any]], weights: list[int], n: int | None = None) -> dict[str, Any]:
    """Key by key; ``n`` (default: these chunks' samples) is the denominator of ``accuracy = robust / n``."""
    merged: dict[str, Any] = {}
    for k in dict.fromkeys(k for v in values for k in v):
        having = [(v[k], w) for v, w in zip(values, weights) if k in v]
        merged[k] = _merge([x for x, _ in having], [w for _, w in having], k)
    n = sum(weights) if n is None else n
    if _is_number(merged.get("robust")) and _is_number(merged.get("accuracy")) and n > 0:
        merged["accuracy"] = merged["robust"] / n  # a ratio of the summed counts, not a mean of ratios
    pairs = merged.get("pairs")
    if "worst_pair" in merged and isinstance(pairs, dict):  # the worst of the merged pairs, not a mean of per-chunk worsts
        rates = {p: a for p, a in pairs.items() if _is_number(a)}
        worst = min(rates, key=rates.__getitem__) if rates else None
        merged["worst_pair"] = worst
        merged["worst_pair_accuracy"] = rates[worst] if worst is not None else merged.get("union_accuracy")
    return merged


def _row_key(values: list[list[Any]]) -> str | None:
    """The field (``eps``, ``component``) that names every row uniquely within each chunk, if any."""
    for k in _ROW_KEYS:
        try:
            if all(isinstance(r, dict) and k in r for v in values for r in v) and all(len({r[k] for r in v}) == len(v) for v in values):
                return k
        except TypeError:  # an unhashable label
            continue
    return None


def _merge_lists(values: list[list[Any]], weights: list[int], key: str | None) -> list[Any]:
    items = [x for v in values for x in v]
    if all(isinstance(x, str) for x in items):
        return list(dict.fromkeys(items))
    row_key = _row_key(values)
    if row_key is not None:
        return _merge_rows(values, weights, row_key)
    if all(len(v) == len(values[0]) for v in values):
        return [_merge([v[i] for v in values], weights, key) for i in range(len(values[0]))]
    return items  # no way to align them: keep every chunk's entries rather than drop some


def _merge_rows(values: list[list[dict[str, Any]]], weights: list[int], k: str) -> list[dict[str, Any]]:
    """Rows merged on label ``k``; a label first seen in a later chunk goes after its predecessor there.

    A chunk without the row adds nothing to its counts (true when it attacked nothing
    there, e.g. no sample left standing), while ``accuracy = robust / n`` stays over
    all samples, as the attacks report it; ``n_covered`` says which samples the row's chunks hold."""
    order: list[Any] = []
    for v in values:
        at = 0
        for row in v:
            if row[k] in order:
                at = order.index(row[k]) + 1
            else:
                order.insert(at, row[k])
                at += 1
    out = []
    for label in order:
        having = [(r, w) for v, w in zip(values, weights) for r in v if r[k] == label]
        row = _merge_dicts([r for r, _ in having], [w for _, w in having], n=sum(weights))
        if len(having) < len(values):
            row["n_covered"] = sum(w for _, w in having)
        out.append(row)
    return out


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
        kind=head.kind,
        standard=head.standard,
    )
