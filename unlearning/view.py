"""How the unlearning section looks in reports: Markdown/HTML tables and a comparison plot."""

from __future__ import annotations

import io
from typing import Any

from robustbench_peft.report import Report

#: Bars drawn per method, in order.
PLOTTED = ("UA", "RA", "TA", "MIA")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _gap(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def scenario_table(scenario: dict[str, Any]) -> tuple[str, list[str], list[list[Any]]]:
    """One table per scenario: a row per method with every metric (percentages, gap in points)."""
    classwise = scenario.get("forgotten_class") is not None
    probed = bool(scenario.get("probed"))
    eps = next((r.get("robust_eps") for r in scenario["rows"] if r.get("robust_eps") is not None), None)
    header = ["method", "UA %", "RA %", "TA %"]
    header += ["TA forgotten class %"] if classwise else []
    header += ["MIA-efficacy %", "Avg. Gap (points)"]
    header += ["per-example MIA AUC %", "gap, all metrics (points)", "flagged"] if probed else []
    header += ["RTE s", "RTE / retrain %"]
    header += [f"PGD-Linf eps={eps:g} %"] if eps is not None else []
    header += ["cached"]
    rows = []
    for r in scenario["rows"]:
        row = [r["label"], _pct(r["UA"]), _pct(r["RA"]), _pct(r["TA"])]
        row += [_pct(r.get("TA_forgotten"))] if classwise else []
        row += [_pct(r["MIA"]), _gap(r.get("avg_gap"))]
        row += [_pct(r["MIA_AUC"]), _gap(r["gap_all"]), "yes" if r["flags"] else ""] if probed else []
        row += [f"{r['RTE']:.2f}", _pct(r.get("rte_vs_retrain"))]
        row += [_pct(r.get("robust_accuracy"))] if eps is not None else []
        row += ["yes" if r.get("cached") else "no"]
        rows.append(row)
    return f"Unlearning: {scenario['description']}", header, rows


def _distance(d: dict[str, Any], scale: float, digits: int) -> str:
    """``value (retrain mean +/- sd, t)`` of a probe against retrain's seeds."""
    return f"{scale * d['value']:.{digits}f} ({scale * d['mean']:.{digits}f} +/- {scale * d['std']:.{digits}f}, t {d['t']:.1f})"


def probe_table(scenario: dict[str, Any]) -> tuple[str, list[str], list[list[Any]]]:
    """The probes per method: relearning, representation, per-example MIA, against retrain's seeds."""
    mia, reference = scenario["mia"], scenario["reference"]
    fpr = 100 * mia["fpr"]
    header = [
        "method", "relearn: steps to level (retrain seeds mean +/- sd, t)", "relearn: forget % after", "relearn: mean forget %",
        "retain-only: forget % after", "linear probe accuracy %", "linear probe confidence % (retrain seeds mean +/- sd, t)", "per-example MIA AUC %", f"TPR at {fpr:g}% FPR %", "flagged",
    ]
    rows = []
    for r in scenario["rows"]:
        d = r["distances"]
        rows.append([
            r["label"], _distance(d["relearn_steps"], 1, 1), _pct(r["relearn_forget"]), _pct(r["relearn_area"]),
            _pct(r["retain_relearn_forget"]), _pct(r["probe_accuracy"]), _distance(d["probe_confidence"], 100, 1), _pct(r["MIA_AUC"]), _pct(r["MIA_TPR"]),
            "yes" if r["flags"] else "",
        ])
    title = (f"Unlearning probes: {scenario['description']} (retrain seeds {', '.join(map(str, reference['seeds']))}; "
             f"{mia['shadows']} + {mia['shadows']} shadow models; steps past the budget count as budget + 1)")
    return title, header, rows


def checks_table(section: dict[str, Any]) -> tuple[str, list[str], list[list[Any]]]:
    return ("Unlearning sanity checks", ["scope", "check", "passed", "detail"],
            [[c["scope"], c["name"], "yes" if c["passed"] else "NO", c["detail"]] for c in section["checks"]])


def section_tables(section: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    scenarios = section.get("scenarios", [])
    tables = [scenario_table(s) for s in scenarios] + [probe_table(s) for s in scenarios if s.get("probed")]
    return tables + ([checks_table(section)] if section.get("checks") else [])


def _bar_label(r: dict[str, Any]) -> str:
    """Method, its Avg. Gap and (probes run) its gap over every metric, marked when a check flags it."""
    label = r["method"] if r["method"] == "original" else r["label"]
    label += "" if r.get("avg_gap") is None else f"\ngap {100 * r['avg_gap']:.2f}"
    label += "" if r.get("gap_all") is None else f"\nall {100 * r['gap_all']:.2f}"
    return label + ("\nFLAGGED" if r.get("flags") else "")


def section_plot(report: Report) -> bytes | None:
    """Grouped bars of UA / RA / TA / MIA per method, one panel per scenario, the gaps and flags in the labels."""
    section = report.sections.get("unlearning") or {}
    scenarios = section.get("scenarios") or []
    if not scenarios:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 3.8), squeeze=False)
    width = 0.8 / len(PLOTTED)
    for ax, scenario in zip(axes[0], scenarios):
        rows = scenario["rows"]
        for k, metric in enumerate(PLOTTED):
            xs = [i + (k - (len(PLOTTED) - 1) / 2) * width for i in range(len(rows))]
            ax.bar(xs, [100 * (r[metric] or 0.0) for r in rows], width, label=metric)
        labels = [_bar_label(r) for r in rows]
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(scenario["description"], fontsize=9)
        ax.set_ylabel("%")
        ax.set_ylim(0, 122)
        ax.set_yticks(range(0, 101, 20))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(PLOTTED), loc="upper center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
