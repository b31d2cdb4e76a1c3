"""A claim and the suite that measures it: the claimed number, and the evaluation mapped onto a :class:`Suite`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..options import PluginSpec, parse_plugin_spec
from ..suite import Suite

#: The report section an evaluation with an ``unlearner`` runs.
UNLEARNING = "unlearning"


def plugin_spec(value: Any) -> PluginSpec:
    """A claim's plug-in: ``"name:k=v"`` or ``{"name": ..., "options": {...}}``."""
    if isinstance(value, str):
        return parse_plugin_spec(value)
    return PluginSpec(value["name"], dict(value.get("options", {})))


def _plugin_text(value: Any) -> str:
    return plugin_spec(value).label()


@dataclass(frozen=True)
class Claim:
    """One claimed number with the evaluation that reproduces it."""

    id: str
    description: str
    evaluation: dict[str, Any]
    metric: dict[str, Any]
    claimed: float
    tolerance: float
    direction: str
    card: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str = "") -> "Claim":
        return cls(
            id=doc["id"],
            description=doc["description"],
            evaluation=dict(doc["evaluation"]),
            metric=dict(doc["metric"]),
            claimed=float(doc["claimed"]),
            tolerance=float(doc["tolerance"]),
            direction=doc["direction"],
            card=dict(doc.get("card", {})),
            source=source,
        )

    def suite(self) -> Suite:
        """The suite that measures this claim (sanity checks always on)."""
        e = self.evaluation
        unlearner = e.get("unlearner")
        attacks = tuple(plugin_spec(a) for a in e.get("attacks", []))
        defense = plugin_spec(e["defense"]) if e.get("defense") else PluginSpec("none")
        sections = list(e.get("sections", []))
        extra = dict(e.get("extra", {}))
        if unlearner is not None:
            if defense.name != "none":
                raise UserError(f"claim {self.id} ({self.source}): give a defense or an unlearner, not both")
            sections = [UNLEARNING] + [s for s in sections if s != UNLEARNING]
            extra[UNLEARNING] = {
                **dict(e.get("unlearning_options", {})),
                "model": e["model"],
                "methods": [_plugin_text(b) for b in e.get("baselines", [])] + [_plugin_text(unlearner)],
                "scenarios": [_plugin_text(e.get("scenario", "class"))],
            }
        # The classifier run is skipped for a pure unlearning claim: nothing in it is claimed.
        models = (e["model"],) if (unlearner is None or attacks) else ()
        eps = {k: [float(v) for v in values] for k, values in e["eps"].items()} if e.get("eps") else None
        return Suite(
            name=f"claim-{self.id}",
            task=e["task"],
            models=models,
            attacks=attacks,
            defenses=(defense,),
            eps=eps,
            n=int(e["n"]),
            seed=int(e["seed"]),
            batch_size=int(e.get("batch_size", 256)),
            chunk_size=int(e.get("chunk_size", Suite.chunk_size)),
            checks=True,
            description=self.description,
            task_options=dict(e.get("task_options", {})),
            sections=tuple(sections),
            extra=extra,
        )

    def metric_label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.metric.items() if k != "name")
        return self.metric["name"] + (f"[{params}]" if params else "")


def evaluation_key(suite: Suite) -> str:
    """Identity of an evaluation: claims with the same key share one run."""
    doc = {k: v for k, v in suite.to_json().items() if k not in ("name",)}
    doc.pop("description", None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
