"""Merging the per-chunk ``details`` of one attack: counts sum, rates average, nothing dropped."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from robustbench_peft.attack import AttackResult
from robustbench_peft.checkpoint import merge_details, merge_results
from robustbench_peft.errors import UserError


def _rounded(value: Any) -> Any:
    """A copy with floats rounded, to compare merged means with single-run ratios."""
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def test_counts_sum_rates_average_and_settings_stay():
    parts = [
        ({"n": 4, "attacked": 4, "robust": 2, "union_fooled": 2, "fooled": {"a": 1, "b": 2}, "rate": 0.5, "seconds": 1.5,
          "referee": {"kappa": 0.25, "confirmed": 3, "disagreements": 1}, "n_target_classes": 9, "eps": 0.1}, 4),
        ({"n": 4, "attacked": 3, "robust": 1, "union_fooled": 2, "fooled": {"a": 0, "b": 2}, "rate": 0.25, "seconds": 2.0,
          "referee": {"kappa": 0.25, "confirmed": 2, "disagreements": 0}, "n_target_classes": 9, "eps": 0.1}, 4),
        ({"n": 2, "attacked": 2, "robust": 0, "union_fooled": 2, "fooled": {"a": 2, "b": 1}, "rate": 1.0, "seconds": 0.5,
          "referee": {"kappa": 0.25, "confirmed": 2, "disagreements": 4}, "n_target_classes": 9, "eps": 0.1}, 2),
    ]
    merged = merge_details(parts)
    assert {k: merged[k] for k in ("n", "attacked", "robust", "union_fooled")} == {"n": 10, "attacked": 9, "robust": 3, "union_fooled": 6}
    assert merged["fooled"] == {"a": 3, "b": 5}
    assert merged["referee"] == {"kappa": 0.25, "confirmed": 7, "disagreements": 5}
    assert merged["rate"] == pytest.approx((0.5 * 4 + 0.25 * 4 + 1.0 * 2) / 10)
    assert merged["seconds"] == pytest.approx(4.0)
    assert merged["n_target_classes"] == 9 and merged["eps"] == 0.1


def test_accuracy_is_summed_robust_over_summed_samples():
    parts = [({"robust": 1, "accuracy": 1 / 3}, 3), ({"robust": 2, "accuracy": 2 / 3}, 3), ({"robust": 3, "accuracy": 3 / 4}, 4)]
    assert merge_details(parts) == {"robust": 6, "accuracy": 6 / 10}


def test_string_lists_are_ordered_unions_of_every_chunk():
    parts = [
        ({"warnings": ["w1"], "adjustments": [], "components": ["apgd-ce", "apgd-t"]}, 4),
        ({"warnings": ["w1", "w2"], "adjustments": ["fab-t dropped"], "components": ["apgd-ce", "apgd-t"]}, 4),
        ({"warnings": ["w3", "w1"], "adjustments": ["fab-t dropped"], "components": ["apgd-ce", "apgd-t", "square"]}, 2),
    ]
    merged = merge_details(parts)
    assert merged == {"warnings": ["w1", "w2", "w3"], "adjustments": ["fab-t dropped"], "components": ["apgd-ce", "apgd-t", "square"]}


def test_per_eps_rows_of_different_length_merge_by_eps():
    parts = [
        ({"per_eps": [{"eps": 0.1, "attacked": 4, "accuracy": 0.5}, {"eps": 0.2, "attacked": 2, "accuracy": 0.25}]}, 4),
        ({"per_eps": [{"eps": 0.1, "attacked": 4, "accuracy": 0.75}]}, 4),
        ({"per_eps": [{"eps": 0.05, "attacked": 2, "accuracy": 1.0}, {"eps": 0.1, "attacked": 2, "accuracy": 0.5}, {"eps": 0.2, "attacked": 1, "accuracy": 0.0}]}, 2),
    ]
    rows = merge_details(parts)["per_eps"]
    assert [r["eps"] for r in rows] == [0.05, 0.1, 0.2]
    assert [r["attacked"] for r in rows] == [2, 10, 3]
    assert rows[1]["accuracy"] == pytest.approx((0.5 * 4 + 0.75 * 4 + 0.5 * 2) / 10) and "n_covered" not in rows[1]
    assert rows[0]["n_covered"] == 2 and rows[2]["n_covered"] == 6


def test_autoattack_rows_merge_by_component_with_accuracy_over_all_samples():
    def row(component: str, robust: int, n: int, seconds: float) -> dict[str, Any]:
        return {"component": component, "robust": robust, "accuracy": robust / n, "seconds": seconds}

    parts = [
        ({"accuracy_after": [row("start", 4, 4, 0.0), row("apgd-ce", 3, 4, 0.5), row("apgd-t", 2, 4, 1.0)]}, 4),
        ({"accuracy_after": [row("start", 3, 4, 0.0), row("apgd-ce", 3, 4, 0.25), row("apgd-t", 1, 4, 0.5)]}, 4),
        ({"accuracy_after": [row("start", 0, 2, 0.0)]}, 2),  # nothing left standing in this chunk
    ]
    rows = merge_details(parts)["accuracy_after"]
    assert [(r["component"], r["robust"], r["accuracy"]) for r in rows] == [("start", 7, 0.7), ("apgd-ce", 6, 0.6), ("apgd-t", 3, 0.3)]
    assert [r["seconds"] for r in rows] == pytest.approx([0.0, 0.75, 1.5])
    assert [r.get("n_covered") for r in rows] == [None, 8, 8]


def test_transfer_worst_pair_is_picked_from_the_merged_pairs():
    def entry(a: float, b: float) -> dict[str, Any]:
        worst = "s/pgd" if a <= b else "s/mi"
        return {"eps": 0.1, "pairs": {"s/pgd": a, "s/mi": b}, "worst_pair": worst, "worst_pair_accuracy": min(a, b), "union_accuracy": min(a, b)}

    parts = [({"per_eps": [entry(0.25, 0.5)]}, 4), ({"per_eps": [entry(0.75, 0.5)]}, 4), ({"per_eps": [entry(1.0, 0.5)]}, 2)]
    (merged,) = merge_details(parts)["per_eps"]
    assert merged["pairs"] == pytest.approx({"s/pgd": 0.6, "s/mi": 0.5})
    assert merged["worst_pair"] == "s/mi" and merged["worst_pair_accuracy"] == pytest.approx(0.5)


def test_scalars_keep_an_agreed_value_and_list_disagreements():
    parts = [
        ({"backend": "pyautoattack", "backend_version": "1.0", "adaptive": True, "note": None, "tokens": [1, 2]}, 4),
        ({"backend": "pyautoattack", "backend_version": "1.1", "adaptive": False, "note": None, "tokens": [3]}, 4),
        ({"backend": "pyautoattack", "backend_version": "1.0", "adaptive": True, "note": None, "tokens": [4, 5, 6]}, 2),
    ]
    merged = merge_details(parts)
    assert merged["backend"] == "pyautoattack" and merged["note"] is None
    assert merged["backend_version"] == ["1.0", "1.1"] and merged["adaptive"] == [True, False]
    assert merged["tokens"] == [1, 2, 3, 4, 5, 6]  # lists that cannot be aligned keep every entry


def _autoattack_adapter():
    from attacks.autoattack import AutoAttackAdapter

    try:
        return AutoAttackAdapter(version="custom", attacks="apgd-ce+apgd-t", progress=False)
    except UserError as exc:
        pytest.skip(str(exc))


def test_merge_results_of_three_autoattack_chunks_equals_one_run_over_all_samples():
    """Real AutoAttack details of 3 chunks (the last one has nothing left at the larger eps)
    merge to the details the adapter reports for one run holding the summed records."""
    from attacks.autoattack import eps_record
    from attacks.autoattack_log import ComponentLog

    eps, components = [0.05, 0.1], ["apgd-ce", "apgd-t"]
    plan = {"requested": components, "components": components, "n_target_classes": 1, "adjustments": []}
    # per chunk: n, warnings, {eps: (attacked, fooled by component, cumulative seconds by component)}
    chunks = [
        (4, ["w-a"], {0.05: (4, {"apgd-ce": 1, "apgd-t": 1}, {"apgd-ce": 0.5, "apgd-t": 1.25}), 0.1: (2, {"apgd-ce": 1}, {"apgd-ce": 0.25, "apgd-t": 0.5})}),
        (4, ["w-a", "w-b"], {0.05: (3, {"apgd-ce": 1}, {"apgd-ce": 0.5, "apgd-t": 1.0}), 0.1: (2, {"apgd-ce": 2}, {"apgd-ce": 0.25, "apgd-t": 0.25})}),
        (2, [], {0.05: (1, {"apgd-ce": 1}, {"apgd-ce": 0.125, "apgd-t": 0.125})}),
    ]
    results, whole, whole_records = [], _autoattack_adapter(), {}
    for n, warns, records in chunks:
        adapter, chunk_records = _autoattack_adapter(), {}
        for e, (attacked, fooled, seconds) in records.items():
            chunk_records[e] = eps_record(e, attacked, attacked - sum(fooled.values()), plan, ComponentLog(dict(fooled), dict(seconds), list(warns)))
        correct = torch.zeros(len(eps), n, dtype=torch.bool)
        results.append(AttackResult(name="autoattack-custom", threat_model="Linf", eps=eps, correct=correct, x_adv=[], seconds=1.0,
                                    config={"attack": "autoattack"}, details=adapter.details(chunk_records, eps, n), invalid=[{"norm": 0} for _ in eps]))
    for e in eps:  # the single run's records: counts summed over the chunks
        attacked = sum(r[e][0] for _, _, r in chunks if e in r)
        fooled = {c: sum(r[e][1].get(c, 0) for _, _, r in chunks if e in r) for c in components}
        whole_records[e] = eps_record(e, attacked, attacked - sum(fooled.values()), plan, ComponentLog(fooled, {}, ["w-a", "w-b"]))

    merged = merge_results(results, seed=0)
    assert merged.correct.shape == (2, 10) and merged.seconds == 3.0
    expected = whole.details(whole_records, eps, sum(n for n, _, _ in chunks))
    got = merged.details
    assert [r["seconds"] for e in got["per_eps"] for r in e["accuracy_after"]] == pytest.approx([0.0, 1.125, 1.25, 0.0, 0.5, 0.25])
    assert [[r.pop("n_covered", None) for r in e["accuracy_after"]] for e in got["per_eps"]] == [[None, None, None], [None, 8, 8]]
    for details in (expected, got):
        for e in details["per_eps"]:
            for r in e["accuracy_after"]:
                r.pop("seconds")
    assert _rounded(got) == _rounded(expected)
    assert got["n"] == 10 and got["warnings"] == ["w-a", "w-b"]
