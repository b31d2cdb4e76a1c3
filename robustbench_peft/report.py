"""The standardized, versioned report: JSON document, DataFrame view, terminal summary.

One JSON document per evaluation (``report.json``); its JSON Schema lives in
``robustbench_peft/schema/report.schema.json``. Markdown, HTML and plots are
rendered from the same data by :mod:`robustbench_peft.render`.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .coverage import worst_case_coverage
from .records import Key, RunRecord, bits, same_eps, unbits
from .section import section_of

__all__ = ["Report", "RunSummary", "bits", "unbits", "environment", "summarize_run", "summary_keys", "summary_lines", "cell"]

SCHEMA_VERSION = "1.1"
SCHEMA_PATH = Path(__file__).parent / "schema" / "report.schema.json"
LIBRARIES = ("robustbench_peft", "torch", "torchvision", "numpy", "scikit-learn", "pyautoattack", "timm", "transformers", "diffusers", "peft", "open_clip_torch")


def environment(seed: int, device: str) -> dict[str, Any]:
    """Library versions, platform, device and seed: what a reader needs to reproduce."""
    import torch

    libs = {}
    for name in LIBRARIES:
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
    }


@dataclass
class Report:
    """A whole evaluation: environment, the suite that ran, one record per run, and the sections' data.

    ``files`` are the binary outputs of the sections (name -> bytes, e.g. image grids): written
    beside ``report.json`` and embedded in the HTML page, never inside the JSON."""

    runs: list[RunRecord]
    environment: dict[str, Any]
    suite: dict[str, Any]
    created: str
    sections: dict[str, Any] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
    files: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.runs = [RunRecord.of(run) for run in self.runs]

    def to_json(self) -> dict[str, Any]:
        doc = {
            "schema_version": self.schema_version,
            "created": self.created,
            "environment": self.environment,
            "suite": self.suite,
            "runs": [run.to_json() for run in self.runs],
        }
        doc.update(self.sections)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Report":
        known = {"schema_version", "created", "environment", "suite", "runs"}
        return cls(
            runs=[RunRecord.from_json(run) for run in doc["runs"]],
            environment=doc["environment"],
            suite=doc["suite"],
            created=doc["created"],
            sections={k: v for k, v in doc.items() if k not in known},
            schema_version=doc["schema_version"],
        )

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        from .validation import load_report_json

        return cls.from_json(load_report_json(path))

    @property
    def reliable(self) -> bool:
        return all(run.reliable for run in self.runs)

    def to_dataframe(self):
        """One row per (run, attack, eps), plus the per-sample worst case rows, then the rows sections add
        (e.g. the diffusion section's worst case per prompt threat model), each with its ``section``."""
        import pandas as pd

        rows = []
        for run in self.runs:
            base = {"task": run.task, "model": run.model_spec, "defense": run.defense_label, "n": run.n, "clean_accuracy": run.clean_accuracy, "reliable": run.reliable}
            for attack in run.attacks:
                rows.append({**base, "attack": attack.name, "adaptive": attack.adaptive, "threat_model": attack.threat_model, "eps": attack.eps, "robust_accuracy": attack.robust_accuracy, "n_attacked": attack.n, "seconds": attack.seconds})
            for worst in run.worst_case:
                rows.append({**base, "attack": "worst-case", "adaptive": True, "threat_model": worst.threat_model, "eps": worst.eps, "robust_accuracy": worst.robust_accuracy, "n_attacked": worst_case_coverage(run, worst)[0], "seconds": None})
        for name, data in self.sections.items():
            if isinstance(data, dict):
                rows += [{"section": name, **row} for row in section_of(name).dataframe_rows(data)]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """The one-screen terminal summary: one fixed-width row per run (see :func:`summary_lines`), then the
        sections' summaries. The per-run detail is :meth:`details`, kept apart so the summary can be read last."""
        rows = [summarize_run(run) for run in self.runs]
        lines = summary_lines(rows) if rows else []
        for name, data in self.sections.items():
            summary = section_of(name).summary(data) if isinstance(data, dict) else None
            if summary:
                lines.append(f"{name}:")
                lines.extend("  " + line for line in summary)
        return "\n".join(lines)

    def details(self) -> str:
        """The per-run detail (every attack at each worst case, what the checks lowered, the checks' verdict);
        ``eval --verbose`` prints it above the summary, report.md and report.html hold it as tables."""
        lines = ["details:"] if self.runs else []
        for run in self.runs:
            lines.append(f"{run.task} | {run.model_spec} | defense: {run.defense_label} | n={run.n} | clean {100 * run.clean_accuracy:.1f}%")
            for worst in run.worst_case:
                per_attack = ", ".join(
                    f"{a.label} {100 * a.robust_accuracy:.1f}% (n={a.n})" for a in run.attacks if a.threat_model == worst.threat_model and a.eps == worst.eps
                )
                n, accuracy = worst_case_coverage(run, worst)
                lines.append(f"  {worst.threat_model:>4} eps={worst.eps:<6g} worst {100 * accuracy:5.1f}% of n={n}   [{per_attack}]")
            for low in run.lowered_by_checks or []:
                lines.append("  " + lowered_text(low))
            if run.reliable:
                lines.append("  checks: all passed")
            else:
                lines.append("  UNRELIABLE: " + "; ".join(run.unreliable_reasons))
        return "\n".join(lines)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)


# --- the per-run summary shared by the terminal summary, report.md and report.html ---

def key_order(key: Key) -> tuple[bool, str, float]:
    """Linf first, then the other threat models by name; eps ascending."""
    return (key[0] != "Linf", key[0], key[1])


def _key(record: Any) -> Key:
    return (str(record["threat_model"]), float(record["eps"]))


def _find(keys, key: Key) -> Key | None:
    return next((k for k in keys if k[0] == key[0] and same_eps(k[1], key[1])), None)


@dataclass(frozen=True)
class RunSummary:
    """What a reader comes for, per (model, defense) run."""

    task: str
    model: str
    defense: str
    n: int
    clean_accuracy: float
    #: (threat model, eps) -> (n, robust accuracy over those n): the worst case over every attack
    worst: dict[Key, tuple[int, float]]
    #: the worst cases the checks' own attacks lowered (``RunRecord.lowered_by_checks``)
    lowered: tuple[dict[str, Any], ...]
    #: (threat model, eps) -> (n, robust accuracy): the lowest float32 AutoAttack record there
    autoattack: dict[Key, tuple[int, float]]
    reliable: bool
    reasons: tuple[str, ...]
    trainable_parameters: int
    stored_bytes: int
    fit_seconds: float
    forward_passes: int

    @property
    def label(self) -> str:
        return f"{self.model} / {self.defense}"

    def is_lowered(self, key: Key) -> bool:
        return _find([_key(low) for low in self.lowered], key) is not None

    @property
    def reliability(self) -> str:
        """``yes``, or ``NO: the first reason`` (and how many more)."""
        return self.reliability_text()

    def reliability_text(self, limit: int | None = None) -> str:
        """:attr:`reliability`, the reason cut to about ``limit`` characters (at a word) when given."""
        if self.reliable:
            return "yes"
        reason = self.reasons[0] if self.reasons else "run marked unreliable"
        if limit is not None and len(reason) > limit:
            reason = reason[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(") + " \u2026"
        more = f" (+{len(self.reasons) - 1} more)" if len(self.reasons) > 1 else ""
        return "NO: " + reason + more


def autoattack_lowest(run: RunRecord) -> dict[Key, tuple[int, float]]:
    """Per (threat model, eps): the lowest robust accuracy of the run's float32 standard-evaluation
    (AutoAttack) records, with its n."""
    lowest: dict[Key, tuple[int, float]] = {}
    for record in run.attacks:
        if not record.is_standard or not record.is_float32:
            continue
        key = _find(lowest, record.key) or record.key
        value = (int(record.n or 0), float(record.robust_accuracy))
        if key not in lowest or (value[1], -value[0]) < (lowest[key][1], -lowest[key][0]):
            lowest[key] = value
    return dict(sorted(lowest.items(), key=lambda kv: key_order(kv[0])))


def summarize_run(run: RunRecord | dict[str, Any]) -> RunSummary:
    """The run's summary row; reads old reports too (worst cases without ``n``, no ``lowered_by_checks``).
    The bare model costs 0 trainable parameters, 0 stored bytes, 0 fit seconds and one pass per prediction."""
    run = RunRecord.of(run)
    worst = {w.key: worst_case_coverage(run, w) for w in run.worst_case}
    return RunSummary(
        task=run.task,
        model=run.model_spec,
        defense=run.defense_label,
        n=int(run.n),
        clean_accuracy=float(run.clean_accuracy),
        worst=dict(sorted(worst.items(), key=lambda kv: key_order(kv[0]))),
        lowered=tuple(run.lowered_by_checks or ()),
        autoattack=autoattack_lowest(run),
        reliable=bool(run.reliable),
        reasons=tuple(run.unreliable_reasons),
        trainable_parameters=int(run.cost("trainable_parameters")),
        stored_bytes=int(run.cost("stored_bytes")),
        fit_seconds=float(run.cost("fit_seconds")),
        forward_passes=int(run.cost("forward_passes")),
    )


def summary_keys(rows: list[RunSummary], attr: str) -> list[Key]:
    """The (threat model, eps) columns: every key any row has in ``attr`` (``worst`` or ``autoattack``), in order."""
    keys: list[Key] = []
    for row in rows:
        for key in getattr(row, attr):
            if _find(keys, key) is None:
                keys.append(key)
    return sorted(keys, key=key_order)


def cell(row: RunSummary, attr: str, key: Key) -> tuple[int, float] | None:
    values = getattr(row, attr)
    found = _find(values, key)
    return None if found is None else values[found]


def lowered_text(low: dict[str, Any]) -> str:
    n = f" (n={low['n']})" if low.get("n") is not None else ""
    return f"the checks' own attacks lowered {low['threat_model']} eps={low['eps']:g} from {100 * low['from']:.1f}% to {100 * low['to']:.1f}%{n}"


def _short(count: int | float) -> str:
    """640 -> '640', 151306 -> '151k', 2_400_000 -> '2.4M'."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            value = count / size
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return f"{count:g}"


def fixed_width(header: list[str], rows: list[list[str]], right: set[int], groups: list[tuple[str, int, int]] = ()) -> list[str]:
    """Aligned columns, two spaces apart; ``right`` columns right-aligned. ``groups`` (label, first, last
    column) add a line above the header with each label over its columns (a column widens to fit)."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for label, first, last in groups:
        span = sum(widths[first : last + 1]) + 2 * (last - first)
        widths[last] += max(0, len(label) - span)

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(header)] + [line(r) for r in rows]
    if groups:
        top = [" " * w for w in widths]
        for label, first, last in groups:
            span = sum(widths[first : last + 1]) + 2 * (last - first)
            top[first : last + 1] = [label.center(span)] + [None] * (last - first)
        lines.insert(0, "  ".join(t for t in top if t is not None).rstrip())
    return lines


def _groups(keys: list[Key], first: int, prefix: str = "") -> list[tuple[str, int, int]]:
    groups: list[tuple[str, int, int]] = []
    for i, (threat, _) in enumerate(keys):
        if groups and groups[-1][0] == prefix + threat:
            groups[-1] = (groups[-1][0], groups[-1][1], first + i)
        else:
            groups.append((prefix + threat, first + i, first + i))
    return groups


def summary_lines(rows: list[RunSummary]) -> list[str]:
    """The compact terminal table, one row per run, eps columns under their threat model, and its notes
    (unreliable runs with the first reason). A cell is robust % over the run's n samples, or ``%/k`` over
    the k samples covered; ``*`` marks a worst case the checks' own attacks lowered (listed in :meth:`Report.details`)."""
    worst_keys, aa_keys = summary_keys(rows, "worst"), summary_keys(rows, "autoattack")
    lead = (["task"] if len({row.task for row in rows}) > 1 else []) + ["model", "defense", "n", "clean"]
    marks = any(row.lowered for row in rows)  # then every worst-case cell ends in "*" or " ": digits stay aligned

    def pct(row: RunSummary, attr: str, key: Key) -> str:
        value = cell(row, attr, key)
        if value is None:
            return "-" + (" " if attr == "worst" and marks else "")
        n, accuracy = value
        mark = ("*" if row.is_lowered(key) else " ") if attr == "worst" and marks else ""
        return f"{100 * accuracy:.1f}" + ("" if n == row.n else f"/{n}") + mark

    header = lead + [f"{e:g}" for _, e in worst_keys] + [f"{e:g}" for _, e in aa_keys] + ["reliable", "params", "bytes", "fit s", "passes"]
    table = []
    for row in rows:
        cells = ([row.task] if "task" in lead else []) + [row.model, row.defense, str(row.n), f"{100 * row.clean_accuracy:.1f}"]
        cells += [pct(row, "worst", k) for k in worst_keys] + [pct(row, "autoattack", k) for k in aa_keys]
        cells += ["yes" if row.reliable else "NO", _short(row.trainable_parameters), _short(row.stored_bytes), f"{row.fit_seconds:.1f}", str(row.forward_passes)]
        table.append(cells)
    groups = _groups(worst_keys, len(lead), "worst ") + _groups(aa_keys, len(lead) + len(worst_keys), "AA ")
    right = set(range(len(lead) - 2, len(header))) - {header.index("reliable")}
    lines = fixed_width(header, table, right, groups)
    lines.append("robust % over n (x/k: over the k covered); worst: over every attack; AA: AutoAttack's lowest float32 record")
    if marks:
        lines.append("*: lowered by the checks' own attacks (listed in report.md's details, or by eval --verbose)")
    for row in rows:
        if not row.reliable:
            lines.append(f"UNRELIABLE {row.label}: {row.reliability[4:]}")
    return lines
