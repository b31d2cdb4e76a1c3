"""Render a report as Markdown, a self-contained HTML page and PNG plots.

Every output is written atomically; plots are embedded in the HTML as data URIs
so the page opens from disk with no other files.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Callable

from .atomic import write_bytes_atomic, write_text_atomic
from .coverage import worst_case_coverage
from .report import Report

PLOT_NAME = "robust_accuracy_vs_eps.png"
EFFICIENCY_PLOT_NAME = "robust_accuracy_vs_trainable_parameters.png"
#: Extra plots contributed by report sections: name -> function(report) -> PNG bytes or None.
SECTION_PLOTS: dict[str, Callable[[Report], bytes | None]] = {}
#: Extra Markdown tables contributed by report sections: name -> function(section) -> (title, header, rows).
SECTION_TABLES: dict[str, Callable[[Any], list[tuple[str, list[str], list[list[Any]]]]]] = {}


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def main_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """Rows: run x (clean, each attack/eps, worst case)."""
    header = ["task", "model", "defense", "n", "clean %", "attack", "threat", "eps", "robust %", "over n", "seconds", "reliable"]
    rows = []
    for run in report.runs:
        defense = run["defense"]["label"] if run.get("defense") else "none"
        lead = [run["task"], run["model"]["spec"], defense, run["n"], _pct(run["clean_accuracy"])]
        for a in run["attacks"]:
            label = a["name"] + ("" if a["adaptive"] else " (non-adaptive)")
            rows.append(lead + [label, a["threat_model"], f"{a['eps']:g}", _pct(a["robust_accuracy"]), a["n"], f"{a['seconds']:.1f}", "yes" if run["reliable"] else "NO"])
        for w in run["worst_case"]:
            rows.append(lead + ["worst case", w["threat_model"], f"{w['eps']:g}", _pct(w["robust_accuracy"]), worst_case_coverage(run, w)[0], "", "yes" if run["reliable"] else "NO"])
    return header, rows


def main_worst_case(run: dict[str, Any]) -> dict[str, Any] | None:
    """The worst case a run is ranked by: Linf (else the first threat model) at its middle eps."""
    rows = sorted(run["worst_case"], key=lambda w: (w["threat_model"] != "Linf", w["threat_model"], w["eps"]))
    if not rows:
        return None
    same = [w for w in rows if w["threat_model"] == rows[0]["threat_model"]]
    return same[len(same) // 2]


def defense_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """Cost next to accuracy: one row per run, the bare model included when the run has defenses."""
    header = ["model", "defense", "trainable params", "stored bytes", "fit s", "passes / prediction", "clean %", "worst-case robust % (threat, eps)"]
    rows = []
    for run in report.runs:
        d = run.get("defense") or {"label": "none", "trainable_parameters": 0, "stored_bytes": 0, "fit_seconds": 0.0, "forward_passes": 1}
        worst = main_worst_case(run)
        worst_text = f"{_pct(worst['robust_accuracy'])} ({worst['threat_model']}, {worst['eps']:g}, n={worst_case_coverage(run, worst)[0]})" if worst else ""
        rows.append([run["model"]["spec"], d["label"], d["trainable_parameters"], d["stored_bytes"], f"{d['fit_seconds']:.1f}", d["forward_passes"], _pct(run["clean_accuracy"]), worst_text])
    if not any(run.get("defense") for run in report.runs):
        return header, []
    return header, rows


def efficiency_plot(report: Report) -> bytes | None:
    """Worst-case robust accuracy against trainable parameters, one point per defended run
    (the bare model at zero parameters); None when the report has no defense."""
    points = [(run, main_worst_case(run)) for run in report.runs]
    points = [(run, worst) for run, worst in points if worst is not None]
    if not any(run.get("defense") for run, _ in points):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, worst in points:
        d = run.get("defense")
        params = d["trainable_parameters"] if d else 0
        label = f"{run['model']['spec']} / {d['label'] if d else 'none'}"
        ax.scatter([max(params, 1)], [100 * worst["robust_accuracy"]], s=40)
        ax.annotate(label, (max(params, 1), 100 * worst["robust_accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    threat = {(w["threat_model"], w["eps"]) for _, w in points}
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log; the bare model at 1)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_title("Robustness per trainable parameter: " + ", ".join(f"{n} eps={e:g}" for n, e in sorted(threat)), fontsize=9)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def checks_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    header = ["model", "defense", "check", "passed", "detail"]
    rows = []
    for run in report.runs:
        defense = run["defense"]["label"] if run.get("defense") else "none"
        for c in run["checks"]:
            rows.append([run["model"]["spec"], defense, c["name"], "yes" if c["passed"] else "NO", c["detail"]])
    return header, rows


def all_tables(report: Report) -> list[tuple[str, list[str], list[list[Any]]]]:
    tables = [("Robust accuracy", *main_table(report))]
    header, rows = defense_table(report)
    if rows:
        tables.append(("Defense cost", header, rows))
    for name, section in report.sections.items():
        if name in SECTION_TABLES:
            tables.extend(SECTION_TABLES[name](section))
    tables.append(("Sanity checks", *checks_table(report)))
    return tables


def markdown(report: Report) -> str:
    env = report.environment
    lines = [
        f"# robustbench_peft report: suite `{report.suite['name']}`",
        "",
        f"Created {report.created} · schema {report.schema_version} · seed {env['seed']} · device {env['device']} · torch {env['libraries'].get('torch')}",
        "",
        "**Reliable: yes**" if report.reliable else "**Reliable: NO** (see the sanity checks)",
        "",
    ]
    for title, header, rows in all_tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    lines.append(f"![robust accuracy vs eps]({PLOT_NAME})")
    if any(run.get("defense") for run in report.runs):
        lines.append(f"![robust accuracy vs trainable parameters]({EFFICIENCY_PLOT_NAME})")
    return "\n".join(lines) + "\n"


def accuracy_plot(report: Report) -> bytes:
    """Worst-case robust accuracy against eps, one line per (model, defense), one panel per threat model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = sorted({w["threat_model"] for run in report.runs for w in run["worst_case"]}) or ["Linf"]
    fig, axes = plt.subplots(1, len(norms), figsize=(5 * len(norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for run in report.runs:
            points = sorted((w["eps"], w["robust_accuracy"]) for w in run["worst_case"] if w["threat_model"] == norm)
            if not points:
                continue
            defense = run["defense"]["label"] if run.get("defense") else "none"
            xs = [0.0] + [p[0] for p in points]
            ys = [run["clean_accuracy"]] + [p[1] for p in points]
            ax.plot(xs, [100 * v for v in ys], marker="o", label=f"{run['model']['spec']} / {defense}")
        ax.set_title(f"{norm} worst case over attacks")
        ax.set_xlabel("eps")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no classifier runs in this report", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.getAttribute('data-order') !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-order'); });
    th.setAttribute('data-order', asc ? 'asc' : 'desc');
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; cursor: pointer; }
th[data-order=asc]::after { content: ' \\25B2'; } th[data-order=desc]::after { content: ' \\25BC'; }
.bad { color: #b00; font-weight: bold; } .good { color: #070; }
img { max-width: 100%; }
"""


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_page(report: Report, plots: list[tuple[str, bytes]]) -> str:
    env = report.environment
    status = '<p class="good">Reliable: all sanity checks passed.</p>' if report.reliable else '<p class="bad">UNRELIABLE: ' + html.escape("; ".join(r for run in report.runs for r in run["unreliable_reasons"])) + "</p>"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>robustbench_peft report: {html.escape(report.suite['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>robustbench_peft report: suite <code>{html.escape(report.suite['name'])}</code></h1>",
        f"<p>Created {html.escape(report.created)} · schema {report.schema_version} · seed {env['seed']} · device {html.escape(env['device'])}</p>",
        status,
    ]
    for title, header, rows in all_tables(report):
        parts += [f"<h2>{html.escape(title)}</h2>", html_table(header, rows)]
    for title, png in plots:
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    for section in report.sections.values():
        if isinstance(section, dict) and section.get("html"):
            parts.append(section["html"])
    parts.append(f"<script>{SORT_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_outputs(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the plot(s) into ``out_dir``."""
    out = Path(out_dir)
    plots = [("Robust accuracy vs eps", PLOT_NAME, accuracy_plot(report))]
    efficiency = efficiency_plot(report)
    if efficiency is not None:
        plots.append(("Robust accuracy vs trainable parameters", EFFICIENCY_PLOT_NAME, efficiency))
    for name, make in SECTION_PLOTS.items():
        if name in report.sections:
            png = make(report)
            if png:
                plots.append((name, f"{name}.png", png))
    paths = {}
    for _, filename, png in plots:
        paths[filename] = write_bytes_atomic(out / filename, png)
    paths["report.md"] = write_text_atomic(out / "report.md", markdown(report))
    paths["report.html"] = write_text_atomic(out / "report.html", html_page(report, [(t, p) for t, _, p in plots]))
    paths["report.json"] = write_text_atomic(out / "report.json", report.dumps() + "\n")
    return paths
