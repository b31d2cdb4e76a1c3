"""Leaderboard: reports and submissions ranked by the lowest known robust accuracy.

``python -m robustbench_peft leaderboard REPORTS... --out DIR`` writes
``leaderboard.md``, a self-contained ``leaderboard.html`` (sortable columns,
task and threat-model filters, embedded plot, no external resources),
``leaderboard.json`` and the plot of robust accuracy against trainable
parameters. Following RobustBench, an entry's rank uses the lowest robust
accuracy anyone knows for it: the measured per-sample worst case, the paper's
reported number and an external (adaptive) evaluation, whichever is lowest.
The measured worst case is over the first ``n`` samples float32 AutoAttack covered
(every attack that ran on them counts); an entry without AutoAttack at its threat
model and eps is measured over the samples any attack covered and marked so. A
sample no attack ran on never counts (:mod:`robustbench_peft.coverage`).
Unreliable entries (a failed sanity check, or a card that says so) stay on the
board, marked, so readers see them for what they are.
"""

from __future__ import annotations

import argparse
import html
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from .cli import subcommand
from .coverage import attack_kind, ranked_worst_case
from .errors import UserError
from .json_input import read_json
from .paths import json_files
from .records import RunRecord

__all__ = ["Entry", "attack_kind", "entries_from_report", "load_document", "deduplicate", "rank", "markdown", "html_page", "write_leaderboard"]

PLOT_NAME = "robust_accuracy_vs_trainable_parameters.png"
SUBMISSION_KEY = "submission_version"


@dataclass
class Entry:
    """One (task, model, defense, threat model, eps) row of the board.

    ``measured`` is the per-sample worst case over the first ``n`` samples: those float32
    AutoAttack covered (``over_autoattack``), or, without it, those any attack covered.
    ``worst_case`` / ``worst_case_n`` keep the report's worst case over every covered sample.
    """

    task: str
    threat_model: str
    eps: float
    model: str
    defense: str
    clean_accuracy: float
    measured: float
    autoattack: float | None
    reported: float | None
    external: float | None
    trainable_parameters: int
    stored_bytes: int | None
    reliable: bool
    reasons: list[str] = field(default_factory=list)
    name: str = ""
    venue: str = ""
    footnote: str = ""
    source: str = ""
    weights: str = ""
    rank: int = 0
    n: int = 0
    over_autoattack: bool = False
    worst_case: float | None = None
    worst_case_n: int = 0

    @property
    def lowest(self) -> float:
        """The lowest known robust accuracy: what the entry is ranked by."""
        return min(v for v in (self.measured, self.reported, self.external) if v is not None)

    @property
    def group(self) -> tuple[str, str, float]:
        return (self.task, self.threat_model, self.eps)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "lowest": self.lowest}


def _card_applies(card: dict[str, Any], norm: str, eps: float) -> bool:
    """A card's reported / external numbers belong to its threat model and eps (all when unset)."""
    if card.get("threat_model") not in (None, norm):
        return False
    return card.get("eps") is None or abs(float(card["eps"]) - eps) <= 1e-9


def entries_from_report(doc: dict[str, Any], source: str, card: dict[str, Any] | None = None) -> list[Entry]:
    """One entry per run and worst-case (threat model, eps) of a report document."""
    card = dict(card or {})
    entries = []
    for run in map(RunRecord.of, doc.get("runs", [])):
        trainable = run.defense["trainable_parameters"] if run.defense else int(run.model.get("parameters") or 0)
        for worst in run.worst_case:
            norm, eps = worst.threat_model, worst.eps
            standard = [a.robust_accuracy for a in run.attacks if a.is_standard and a.threat_model == norm and a.eps == eps]
            applies = _card_applies(card, norm, eps)
            ranked = ranked_worst_case(run, worst)
            reasons = list(run.unreliable_reasons)
            if card.get("unreliable"):
                reasons.append("card: " + (card.get("footnote") or "marked unreliable"))
            entries.append(
                Entry(
                    task=run.task,
                    threat_model=norm,
                    eps=float(eps),
                    model=run.model_spec,
                    defense=run.defense_label,
                    clean_accuracy=float(run.clean_accuracy),
                    measured=float(ranked.robust_accuracy),
                    autoattack=min(standard) if standard else None,
                    reported=card.get("reported") if applies else None,
                    external=card.get("external") if applies else None,
                    trainable_parameters=int(trainable),
                    stored_bytes=run.defense["stored_bytes"] if run.defense else None,
                    reliable=bool(run.reliable) and not card.get("unreliable", False),
                    reasons=reasons,
                    name=str(card.get("name", "")),
                    venue=str(card.get("venue", "")),
                    footnote=str(card.get("footnote", "")),
                    source=source,
                    weights=run.model["sha256"] + "+" + str((run.defense or {}).get("sha256", "")),
                    n=ranked.n,
                    over_autoattack=ranked.over_autoattack,
                    worst_case=float(ranked.covered_accuracy),
                    worst_case_n=ranked.covered_n,
                )
            )
    return entries


def load_document(path: Path) -> list[Entry]:
    """Entries of a report.json, a directory holding one, or a submission written by ``submit``."""
    from .validation import load_report_json, schema_errors

    if path.is_dir():
        return load_document(path / "report.json")
    doc, _ = read_json(path, "JSON document", missing="report or submission")
    if isinstance(doc, dict) and SUBMISSION_KEY in doc:
        errors = schema_errors(doc.get("report"))
        if errors:
            raise UserError(f"{path}: the submitted report does not match the report schema: {errors[0]}")
        return entries_from_report(doc["report"], str(path), doc.get("card"))
    return entries_from_report(load_report_json(path), str(path))


def input_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly; under a directory, every report.json and submission*.json (sorted)."""
    return json_files(paths, lambda f: f.name == "report.json" or f.name.startswith("submission"), "report.json or submission*.json", "report or submission")


def deduplicate(entries: list[Entry]) -> list[Entry]:
    """One entry per (task, threat model, eps, weights, measured value): the same run given twice
    (a report and its submission) counts once, keeping the copy that carries a card."""
    kept: dict[tuple, Entry] = {}
    for e in entries:
        key = (*e.group, e.weights, e.model, e.defense, e.measured)
        has_card = bool(e.name or e.venue or e.reported is not None or e.external is not None)
        if key not in kept or (has_card and not kept[key].name and kept[key].reported is None and kept[key].external is None):
            kept[key] = e
    return list(kept.values())


def rank(entries: list[Entry]) -> list[Entry]:
    """Sort by (task, threat model, eps), then lowest known robust accuracy, best first; number the ranks."""
    ordered = sorted(entries, key=lambda e: (e.task, e.threat_model, e.eps, -e.lowest, -e.clean_accuracy, e.model, e.defense))
    position: dict[tuple[str, str, float], int] = {}
    for e in ordered:
        position[e.group] = position.get(e.group, 0) + 1
        e.rank = position[e.group]
    return ordered


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


#: What ``measured %`` is over, per entry.
OVER_AUTOATTACK, OVER_COVERED = "AutoAttack", "no AutoAttack"

HEADER = ["rank", "task", "threat", "eps", "name", "model", "defense", "clean %", "measured %", "n", "measured over", "AutoAttack %", "reported %", "external %", "lowest known %", "trainable params", "stored bytes", "reliable", "venue", "footnote"]


def row(e: Entry) -> list[str]:
    reliable = "yes" if e.reliable else "UNRELIABLE"
    return [
        str(e.rank), e.task, e.threat_model, f"{e.eps:g}", e.name, e.model, e.defense, _pct(e.clean_accuracy), _pct(e.measured), str(e.n),
        OVER_AUTOATTACK if e.over_autoattack else OVER_COVERED, _pct(e.autoattack),
        _pct(e.reported), _pct(e.external), _pct(e.lowest), str(e.trainable_parameters), "-" if e.stored_bytes is None else str(e.stored_bytes),
        reliable, e.venue, e.footnote,
    ]


def markdown(entries: list[Entry]) -> str:
    lines = [
        "# robustbench_peft leaderboard",
        "",
        "Ranked by the lowest known robust accuracy (measured per-sample worst case, reported, external), per task, threat model and eps. "
        f"measured % is the worst case over every attack on the first n samples float32 AutoAttack covered; \"{OVER_COVERED}\" entries "
        "had no float32 AutoAttack there and are measured over the n samples any attack covered. "
        "UNRELIABLE entries failed a sanity check or are marked so by their card.",
        "",
    ]
    groups: dict[tuple[str, str, float], list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.group, []).append(e)
    for (task, norm, eps), members in groups.items():
        lines += [f"## {task} · {norm} eps={eps:g}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row(e)) + " |" for e in members]
        for e in members:
            if e.reasons:
                lines.append(f"\n- {e.model} / {e.defense}: unreliable: {'; '.join(e.reasons)}")
        lines.append("")
    lines.append(f"![robust accuracy vs trainable parameters]({PLOT_NAME})")
    return "\n".join(lines) + "\n"


def plot(entries: list[Entry]) -> bytes:
    """Lowest known robust accuracy against trainable parameters (log scale), one colour per threat model and eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .render import figure_png

    fig, ax = plt.subplots(figsize=(6.5, 4))
    groups = sorted({e.group for e in entries})
    for i, group in enumerate(groups):
        members = [e for e in entries if e.group == group]
        color = f"C{i % 10}"
        for reliable, marker in ((True, "o"), (False, "x")):
            pts = [e for e in members if e.reliable == reliable]
            if pts:
                label = f"{group[0]} {group[1]} {group[2]:g}" + ("" if reliable else " (unreliable)")
                ax.scatter([max(e.trainable_parameters, 1) for e in pts], [100 * e.lowest for e in pts], c=color, marker=marker, label=label)
        for e in members:
            ax.annotate(e.defense.split(":")[0], (max(e.trainable_parameters, 1), 100 * e.lowest), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (undefended: the whole model)")
    ax.set_ylabel("lowest known robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig, 100)


FILTER_SCRIPT = """
function applyFilters() {
  var task = document.getElementById('filter-task').value;
  var threat = document.getElementById('filter-threat').value;
  var shown = 0;
  document.querySelectorAll('#leaderboard tbody tr').forEach(function (tr) {
    var ok = (task === '' || tr.getAttribute('data-task') === task) && (threat === '' || tr.getAttribute('data-threat') === threat);
    tr.style.display = ok ? '' : 'none';
    if (ok) { shown += 1; }
  });
  document.getElementById('shown').textContent = String(shown);
}
document.getElementById('filter-task').addEventListener('change', applyFilters);
document.getElementById('filter-threat').addEventListener('change', applyFilters);
applyFilters();
"""

EXTRA_STYLE = """
tr.unreliable td { background: #fff0f0; }
td.flag { color: #b00; font-weight: bold; }
label { margin-right: 1.5em; }
"""


def _select(ident: str, label: str, values: list[str]) -> str:
    options = "<option value=''>all</option>" + "".join(f"<option value='{html.escape(v)}'>{html.escape(v)}</option>" for v in values)
    return f"<label>{html.escape(label)} <select id='{ident}'>{options}</select></label>"


def html_page(entries: list[Entry], png: bytes) -> str:
    """A single self-contained page: inline CSS, inline JS, the plot as a data URI."""
    from .render import SORT_SCRIPT, STYLE, png_data_uri

    rows = []
    for e in entries:
        cells = []
        for name, value in zip(HEADER, row(e)):
            cls = " class='flag'" if name == "reliable" and not e.reliable else ""
            title = f" title='{html.escape('; '.join(e.reasons))}'" if name == "reliable" and e.reasons else ""
            cells.append(f"<td{cls}{title}>{html.escape(value)}</td>")
        attrs = f"data-task='{html.escape(e.task)}' data-threat='{html.escape(e.threat_model)}'" + ("" if e.reliable else " class='unreliable'")
        rows.append(f"<tr {attrs}>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    tasks = sorted({e.task for e in entries})
    threats = sorted({e.threat_model for e in entries})
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>robustbench_peft leaderboard</title><style>{STYLE}{EXTRA_STYLE}</style></head><body>",
            "<h1>robustbench_peft leaderboard</h1>",
            "<p>Ranked by the lowest known robust accuracy (measured per-sample worst case, reported, external) within each task, threat model and eps. "
            f"measured % is the worst case over every attack on the first n samples float32 AutoAttack covered; &quot;{OVER_COVERED}&quot; rows "
            "had no float32 AutoAttack there and are measured over the n samples any attack covered. "
            "Rows marked UNRELIABLE failed a sanity check or are marked so by their card (hover for the reasons). Click a column header to sort.</p>",
            "<p>" + _select("filter-task", "task", tasks) + _select("filter-threat", "threat model", threats) + f"<span><span id='shown'>{len(entries)}</span> of {len(entries)} entries</span></p>",
            f"<table id='leaderboard' class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
            "<h2>Robust accuracy against trainable parameters</h2>",
            f"<img alt='robust accuracy against trainable parameters' src='{png_data_uri(png)}'>",
            f"<script>{SORT_SCRIPT}{FILTER_SCRIPT}</script></body></html>",
        ]
    )


def write_leaderboard(entries: list[Entry], out_dir: str | Path) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.html, leaderboard.json and the plot into ``out_dir``."""
    out = Path(out_dir)
    ranked = rank(deduplicate(entries))
    png = plot(ranked)
    return {
        PLOT_NAME: write_bytes_atomic(out / PLOT_NAME, png),
        "leaderboard.md": write_text_atomic(out / "leaderboard.md", markdown(ranked)),
        "leaderboard.html": write_text_atomic(out / "leaderboard.html", html_page(ranked, png)),
        "leaderboard.json": write_json_atomic(out / "leaderboard.json", {"entries": [e.to_json() for e in ranked]}),
    }


def add_leaderboard_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="REPORT", help="report.json files, run directories, or submissions (directories are searched)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for leaderboard.md / .html / .json and the plot")


@subcommand("leaderboard", "rank reports and submissions into a Markdown and a static HTML leaderboard", add_leaderboard_arguments)
def cmd_leaderboard(args: argparse.Namespace) -> int:
    entries = [e for path in input_files(args.paths) for e in load_document(path)]
    if not entries:
        raise UserError("no entries: the reports hold no classifier run with a worst case")
    entries = deduplicate(entries)
    paths = write_leaderboard(entries, args.out)
    unreliable = sum(not e.reliable for e in entries)
    print(f"{len(entries)} entries ({unreliable} unreliable) -> {paths['leaderboard.html']} and {paths['leaderboard.md']}")
    return 0
