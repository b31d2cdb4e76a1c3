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

SCHEMA_VERSION = "1.1"
SCHEMA_PATH = Path(__file__).parent / "schema" / "report.schema.json"
LIBRARIES = ("robustbench_peft", "torch", "torchvision", "numpy", "scikit-learn", "pyautoattack", "timm", "transformers", "diffusers", "peft", "open_clip_torch")


def bits(flags) -> str:
    """Per-sample booleans as a compact '0'/'1' string (stable, diff-friendly)."""
    return "".join("1" if bool(f) else "0" for f in flags)


def unbits(text: str) -> list[bool]:
    return [c == "1" for c in text]


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
    """A whole evaluation: environment, the suite that ran, and one entry per run."""

    runs: list[dict[str, Any]]
    environment: dict[str, Any]
    suite: dict[str, Any]
    created: str
    sections: dict[str, Any] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        doc = {
            "schema_version": self.schema_version,
            "created": self.created,
            "environment": self.environment,
            "suite": self.suite,
            "runs": self.runs,
        }
        doc.update(self.sections)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Report":
        known = {"schema_version", "created", "environment", "suite", "runs"}
        return cls(
            runs=doc["runs"],
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
        return all(run["reliable"] for run in self.runs)

    def to_dataframe(self):
        """One row per (run, attack, eps), plus the per-sample worst case rows."""
        import pandas as pd

        rows = []
        for run in self.runs:
            base = {
                "task": run["task"],
                "model": run["model"]["spec"],
                "defense": run["defense"]["label"] if run.get("defense") else "none",
                "n": run["n"],
                "clean_accuracy": run["clean_accuracy"],
                "reliable": run["reliable"],
            }
            for attack in run["attacks"]:
                rows.append({**base, "attack": attack["name"], "adaptive": attack["adaptive"], "threat_model": attack["threat_model"], "eps": attack["eps"], "robust_accuracy": attack["robust_accuracy"], "n_attacked": attack["n"], "seconds": attack["seconds"]})
            for worst in run["worst_case"]:
                rows.append({**base, "attack": "worst-case", "adaptive": True, "threat_model": worst["threat_model"], "eps": worst["eps"], "robust_accuracy": worst["robust_accuracy"], "n_attacked": worst_case_coverage(run, worst)[0], "seconds": None})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """The one-screen terminal summary."""
        lines = []
        for run in self.runs:
            defense = run["defense"]["label"] if run.get("defense") else "none"
            lines.append(f"{run['task']} | {run['model']['spec']} | defense: {defense} | n={run['n']} | clean {100 * run['clean_accuracy']:.1f}%")
            for worst in run["worst_case"]:
                per_attack = ", ".join(
                    f"{a['name']}{'' if a['adaptive'] else ' (non-adaptive)'} {100 * a['robust_accuracy']:.1f}% (n={a['n']})"
                    for a in run["attacks"]
                    if a["threat_model"] == worst["threat_model"] and a["eps"] == worst["eps"]
                )
                n, accuracy = worst_case_coverage(run, worst)
                lines.append(f"  {worst['threat_model']:>4} eps={worst['eps']:<6g} worst {100 * accuracy:5.1f}% of n={n}   [{per_attack}]")
            for low in run.get("lowered_by_checks") or []:
                lines.append(f"  the checks' own attacks lowered {low['threat_model']} eps={low['eps']:g} from {100 * low['from']:.1f}% to {100 * low['to']:.1f}%")
            if run["reliable"]:
                lines.append("  checks: all passed")
            else:
                lines.append("  UNRELIABLE: " + "; ".join(run["unreliable_reasons"]))
        for name, section in self.sections.items():
            summary = section.get("summary") if isinstance(section, dict) else None
            if summary:
                lines.append(f"{name}:")
                lines.extend("  " + line for line in summary)
        return "\n".join(lines)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)
