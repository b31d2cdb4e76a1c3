"""Render a report as Markdown, a self-contained HTML page and PNG plots.

Every output is written atomically; plots are embedded in the HTML as data URIs
so the page opens from disk with no other files.

Both pages lead with what a reader comes for, in this order (the terminal summary,
:meth:`Report.summary`, follows it too, without the plots and the details: those are
:meth:`Report.details`, which ``eval --verbose`` prints above the summary):

1. the summary table (:func:`summary_table`): one row per (model, defense) run with
   clean accuracy, the worst case at each (threat model, eps) with its n, AutoAttack's
   lowest float32 accuracy, reliability (the first reason) and cost; a dagger marks
   a worst case the checks' own attacks lowered;
2. the plots;
3. each report section (unlearning, diffusion): its tables, plot and extra HTML, each asked of its
   :class:`~robustbench_peft.section.Section`;
4. the details (collapsed ``<details>`` in HTML, a "Details" heading in Markdown):
   robust accuracy per attack (the checks' attacks too), the worst cases the checks
   lowered, the sanity checks.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from .coverage import worst_case_coverage
from .records import RunRecord, WorstCaseRecord
from .report import Report, RunSummary, cell, summarize_run, summary_keys
from .section import Table, section_of

PLOT_NAME = "robust_accuracy_vs_eps.png"
EFFICIENCY_PLOT_NAME = "robust_accuracy_vs_trainable_parameters.png"


def figure_png(fig, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """PNG bytes as a data URI, so a page embeds its images and opens from disk alone."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def main_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """Rows: run x (clean, each attack/eps, each of the checks' own attacks, worst case)."""
    header = ["task", "model", "defense", "n", "clean %", "attack", "threat", "eps", "robust %", "over n", "seconds", "reliable"]
    rows = []
    for run in report.runs:
        lead = [run.task, run.model_spec, run.defense_label, run.n, _pct(run.clean_accuracy)]
        reliable = "yes" if run.reliable else "NO"
        labelled = [(a.label, a) for a in run.attacks] + [(f"{a.name} (check)", a) for a in run.check_attacks or []]
        for label, a in labelled:
            rows.append(lead + [label, a.threat_model, f"{a.eps:g}", _pct(a.robust_accuracy), a.n, f"{a.seconds:.1f}", reliable])
        for w in run.worst_case:
            rows.append(lead + ["worst case", w.threat_model, f"{w.eps:g}", _pct(w.robust_accuracy), worst_case_coverage(run, w)[0], "", reliable])
    return header, rows


def main_worst_case(run: RunRecord | dict[str, Any]) -> WorstCaseRecord | dict[str, Any] | None:
    """The worst case a run is ranked by: Linf (else the first threat model) at its middle eps
    (the row as the caller holds it: a record's row, or a JSON object's)."""
    rows = RunRecord.of(run).worst_case
    order = sorted(range(len(rows)), key=lambda i: (rows[i].threat_model != "Linf", rows[i].threat_model, rows[i].eps))
    if not order:
        return None
    same = [i for i in order if rows[i].threat_model == rows[order[0]].threat_model]
    return run["worst_case"][same[len(same) // 2]]


def defense_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """Cost next to accuracy: one row per run, the bare model included when the run has defenses.
    (The pages show cost in :func:`summary_table`; this table is for callers that want it alone.)"""
    header = ["model", "defense", "trainable params", "stored bytes", "fit s", "passes / prediction", "clean %", "worst-case robust % (threat, eps)"]
    rows = []
    for run in report.runs:
        worst = main_worst_case(run)
        worst_text = f"{_pct(worst.robust_accuracy)} ({worst.threat_model}, {worst.eps:g}, n={worst_case_coverage(run, worst)[0]})" if worst else ""
        rows.append([run.model_spec, run.defense_label, run.cost("trainable_parameters"), run.cost("stored_bytes"), f"{run.cost('fit_seconds'):.1f}",
                     run.cost("forward_passes"), _pct(run.clean_accuracy), worst_text])
    if not any(run.defense for run in report.runs):
        return header, []
    return header, rows


def efficiency_plot(report: Report) -> bytes | None:
    """Worst-case robust accuracy against trainable parameters, one point per defended run
    (the bare model at zero parameters); None when the report has no defense."""
    points = [(run, main_worst_case(run)) for run in report.runs]
    points = [(run, worst) for run, worst in points if worst is not None]
    if not any(run.defense for run, _ in points):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, worst in points:
        params = run.cost("trainable_parameters")
        ax.scatter([max(params, 1)], [100 * worst.robust_accuracy], s=40)
        ax.annotate(run.label, (max(params, 1), 100 * worst.robust_accuracy), fontsize=7, xytext=(4, 3), textcoords="offset points")
    threat = {w.key for _, w in points}
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log; the bare model at 1)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_title("Robustness per trainable parameter: " + ", ".join(f"{n} eps={e:g}" for n, e in sorted(threat)), fontsize=9)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig, 110)


def checks_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    header = ["model", "defense", "check", "passed", "detail"]
    rows = [[run.model_spec, run.defense_label, c["name"], "yes" if c["passed"] else "NO", c["detail"]] for run in report.runs for c in run.checks]
    return header, rows


def summary_rows(report: Report) -> list[RunSummary]:
    return [summarize_run(run) for run in report.runs]


SUMMARY_LEGEND = (
    "One row per (model, defense) run. Worst case: per sample, over every attack at that threat model and eps "
    "(the checks' own attacks included), robust % over the n samples the attacks covered. AutoAttack: the lowest "
    "float32 AutoAttack record there. Cost: the defense's trainable parameters, stored bytes, fit seconds and "
    "forward passes per prediction (the bare model: 0, 0, 0, 1)."
)
#: The first unreliable reason in a summary cell is cut to about this many characters (all are in the checks).
REASON_CHARS = 90
LOWERED_MARK = "†"  # dagger: a worst case the checks' own attacks lowered


def summary_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """One row per run: clean accuracy, the worst case at each (threat model, eps) with its n, AutoAttack's
    lowest float32 accuracy, reliability (with the first reason) and cost."""
    rows = summary_rows(report)
    worst_keys, aa_keys = summary_keys(rows, "worst"), summary_keys(rows, "autoattack")
    several_tasks = len({row.task for row in rows}) > 1

    def value(row: RunSummary, attr: str, key) -> str:
        found = cell(row, attr, key)
        if found is None:
            return ""
        mark = f" {LOWERED_MARK}" if attr == "worst" and row.is_lowered(key) else ""
        return f"{_pct(found[1])} (n={found[0]}){mark}"

    header = (["task"] if several_tasks else []) + ["model", "defense", "n", "clean %"]
    header += [f"worst {t} {e:g} %" for t, e in worst_keys] + [f"AutoAttack {t} {e:g} %" for t, e in aa_keys]
    header += ["reliable", "trainable params", "stored bytes", "fit s", "passes / prediction"]
    table = []
    for row in rows:
        cells = ([row.task] if several_tasks else []) + [row.model, row.defense, row.n, _pct(row.clean_accuracy)]
        cells += [value(row, "worst", k) for k in worst_keys] + [value(row, "autoattack", k) for k in aa_keys]
        cells += [row.reliability_text(REASON_CHARS), row.trainable_parameters, row.stored_bytes, f"{row.fit_seconds:.1f}", row.forward_passes]
        table.append(cells)
    return header, table


LOWERED_NOTE = f"{LOWERED_MARK}: lowered by the checks' own attacks (the details list each, and the checks' attack records)."


def lowered_table(report: Report) -> tuple[list[str], list[list[Any]]]:
    """The worst cases the checks' own attacks lowered (``RunRecord.lowered_by_checks``; marked in the summary)."""
    header = ["model", "defense", "threat", "eps", "worst % before the checks", "worst % after", "over n"]
    rows = [
        [row.model, row.defense, low["threat_model"], f"{low['eps']:g}", _pct(low["from"]), _pct(low["to"]), low.get("n", "")]
        for row in summary_rows(report)
        for low in row.lowered
    ]
    return header, rows


def unreliable_status(report: Report) -> str:
    """The page's one-line verdict: which runs failed a check, and which check first."""
    rows = summary_rows(report)
    bad = [row for row in rows if not row.reliable]
    if not bad:
        return "Reliable: all sanity checks passed."
    first = "; ".join(f"{row.label} ({row.reasons[0].split(':', 1)[0] if row.reasons else 'marked unreliable'})" for row in bad)
    return f"UNRELIABLE: {len(bad)} of {len(rows)} runs failed a sanity check: {first}. The reasons are in the summary table and the sanity checks."


def section_tables(report: Report) -> list[tuple[str, list[Table]]]:
    """Per report section (unlearning, diffusion, ...): its name and its tables."""
    return [(name, section_of(name).tables(data)) for name, data in report.sections.items() if isinstance(data, dict)]


def section_plots(report: Report) -> list[tuple[str, bytes]]:
    """Per report section with a plot: its name and the PNG."""
    plots = [(name, section_of(name).plot(data)) for name, data in report.sections.items() if isinstance(data, dict)]
    return [(name, png) for name, png in plots if png]


LOWERED_TITLE = "Worst cases the checks' own attacks lowered"


def detail_tables(report: Report) -> list[tuple[str, list[str], list[list[Any]]]]:
    """Per-attack robust accuracy (the checks' attacks marked "(check)"), the worst cases those lowered, the checks."""
    tables = [("Robust accuracy per attack", *main_table(report))]
    header, rows = lowered_table(report)
    if rows:
        tables.append((LOWERED_TITLE, header, rows))
    return tables + [("Sanity checks", *checks_table(report))]


def all_tables(report: Report) -> list[tuple[str, list[str], list[list[Any]]]]:
    """Every table in page order: the summary, the sections', then the details."""
    tables = [("Summary", *summary_table(report))]
    for _, tables_of_section in section_tables(report):
        tables.extend(tables_of_section)
    return tables + detail_tables(report)


def _markdown_table(title: str, header: list[str], rows: list[list[Any]], level: str = "##") -> list[str]:
    lines = [f"{level} {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines + [""]


def markdown(report: Report) -> str:
    """The summary table, the plots, the sections' tables, then a Details heading: per-attack table, checks."""
    env = report.environment
    lines = [
        f"# robustbench_peft report: suite `{report.suite['name']}`",
        "",
        f"Created {report.created} · schema {report.schema_version} · seed {env['seed']} · device {env['device']} · torch {env['libraries'].get('torch')}",
        "",
        "**Reliable: yes**" if report.reliable else "**Reliable: NO** (see the sanity checks)",
        "",
    ]
    summary: list[str] = []
    if report.runs:
        summary += _markdown_table("Summary", *summary_table(report)) + [SUMMARY_LEGEND, ""]
        if lowered_table(report)[1]:
            summary += [LOWERED_NOTE, ""]
    plots = [f"![robust accuracy vs eps]({PLOT_NAME})"]
    if any(run.defense for run in report.runs):
        plots.append(f"![robust accuracy vs trainable parameters]({EFFICIENCY_PLOT_NAME})")
    plots.append("")
    sections = [line for _, tables in section_tables(report) for table in tables for line in _markdown_table(*table)]
    # a report of sections only (no classifier run) leads with its sections
    lines += summary + plots + sections if report.runs else sections + plots
    lines += ["## Details", ""]
    for title, header, rows in detail_tables(report):
        lines += _markdown_table(title, header, rows, level="###")
    return "\n".join(lines).rstrip("\n") + "\n"


def accuracy_plot(report: Report) -> bytes:
    """Worst-case robust accuracy against eps, one line per (model, defense), one panel per threat model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = sorted({w.threat_model for run in report.runs for w in run.worst_case}, key=lambda norm: (norm != "Linf", norm)) or ["Linf"]
    fig, axes = plt.subplots(1, len(norms), figsize=(5 * len(norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for run in report.runs:
            points = sorted((w.eps, w.robust_accuracy) for w in run.worst_case if w.threat_model == norm)
            if not points:
                continue
            xs = [0.0] + [p[0] for p in points]
            ys = [run.clean_accuracy] + [p[1] for p in points]
            ax.plot(xs, [100 * v for v in ys], marker="o", label=run.label)
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
    return figure_png(fig, 110)


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
details { margin-bottom: 1em; } details > summary { cursor: pointer; font-weight: bold; margin-bottom: 0.6em; }
td.nowrap { white-space: nowrap; }
.legend, .notes { font-size: 13px; color: #444; max-width: 70em; }
"""


def html_table(header: list[str], rows: list[list[Any]], css: str = "", wrap: set[str] = frozenset()) -> str:
    """A sortable table; with ``css``, its cells keep to one line except in the ``wrap`` columns."""
    classes = ["" if not css or h in wrap else " class='nowrap'" for h in header]
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{k}>{html.escape(str(c))}</td>" for k, c in zip(classes, row)) + "</tr>" for row in rows)
    return f'<table class="sortable{" " + css if css else ""}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(title: str, png: bytes) -> str:
    return f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{png_data_uri(png)}'>"


def html_page(report: Report, plots: list[tuple[str, bytes]]) -> str:
    """The page: the summary table, the plots, each section (tables, plot, HTML), then the details, collapsed.

    ``plots`` are (title, PNG); a plot titled with a report section's name is shown with that section."""
    env = report.environment
    status = f'<p class="{"good" if report.reliable else "bad"}">{html.escape(unreliable_status(report))}</p>'
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>robustbench_peft report: {html.escape(report.suite['name'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>robustbench_peft report: suite <code>{html.escape(report.suite['name'])}</code></h1>",
        f"<p>Created {html.escape(report.created)} · schema {report.schema_version} · seed {env['seed']} · device {html.escape(env['device'])}</p>",
        status,
    ]
    summary = []
    if report.runs:
        summary = ["<section id='summary'><h2>Summary</h2>", html_table(*summary_table(report), css="summary", wrap={"reliable"}), f"<p class='legend'>{html.escape(SUMMARY_LEGEND)}</p>"]
        if lowered_table(report)[1]:
            summary.append(f"<p class='notes'>{html.escape(LOWERED_NOTE)}</p>")
        summary.append("</section>")
    shown_with_sections = {title: png for title, png in plots if title in report.sections}
    main_plots = ["<section id='plots'>" + "\n".join(_img(title, png) for title, png in plots if title not in shown_with_sections) + "</section>"]
    sections = []
    tables = dict(section_tables(report))
    for name, data in report.sections.items():
        body = [f"<h2>{html.escape(title)}</h2>" + html_table(header, rows) for title, header, rows in tables.get(name, [])]
        if name in shown_with_sections:
            body.append(_img(name, shown_with_sections[name]))
        extra = section_of(name).html(data, report.files) if isinstance(data, dict) else ""
        if extra:
            body.append(extra)
        if body:
            sections.append(f"<section class='report-section' id='section-{html.escape(name)}'>" + "\n".join(body) + "</section>")
    # a report of sections only (no classifier run) leads with its sections
    parts += summary + main_plots + sections if report.runs else sections + main_plots
    parts.append("<section id='details'><h2>Details</h2>")
    for title, header, rows in detail_tables(report):
        failed = sum(1 for row in rows if row[3] == "NO") if title == "Sanity checks" else 0
        count = f"{len(rows)} rows" + (f", {failed} failed" if failed else "")
        parts.append(f"<details><summary>{html.escape(title)} ({count})</summary>{html_table(header, rows)}</details>")
    parts.append("</section>")
    parts.append(f"<script>{SORT_SCRIPT}</script></body></html>")
    return "\n".join(parts)


# Writing the output set (all or nothing, umask permissions) lives in outputs.py; re-exported for
# the callers that import it from here (cli, api, claims, tests).
from .outputs import write_outputs  # noqa: E402,F401
