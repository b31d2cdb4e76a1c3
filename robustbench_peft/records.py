"""Typed records of a report's runs: what ``report.json`` holds per run, per attack, per worst case.

Every reader of a report (the pages, the leaderboard, ``submit``, the claims, the
coverage rules) goes through these records instead of indexing dicts by string keys.
``to_json`` writes the layout of ``schema/report.schema.json``; ``from_json`` reads it,
older reports included (keys they lack are ``None`` and ``to_json`` leaves them out).
A record also reads like its JSON object (``run["attacks"]``), so code and notebooks
written against the document keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

#: Slack for comparing eps values read back from JSON.
EPS_TOLERANCE = 1e-9
#: A worst case's or an attack's (threat model, eps).
Key = tuple[str, float]
#: The registered attack whose records count as the standard evaluation in reports written
#: before attack records carried ``standard``.
LEGACY_STANDARD_ATTACK = "autoattack"


def bits(flags) -> str:
    """Per-sample booleans as a compact '0'/'1' string (stable, diff-friendly)."""
    return "".join("1" if bool(f) else "0" for f in flags)


def unbits(text: str) -> list[bool]:
    return [c == "1" for c in text]


def same_eps(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= EPS_TOLERANCE


def plugin_name(name: str, config: Mapping[str, Any] | None) -> str:
    """The registered attack behind a record (``autoattack-apgd-ce`` -> ``autoattack``)."""
    config = config or {}
    if config.get("attack"):
        return str(config["attack"])
    return str(name).split("-")[0]


class ReadsLikeJson:
    """``record["key"]`` and ``record.get("key")`` read the field of that name, as on the JSON object."""

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if f.name != "extra")  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            value = getattr(self, key)
            if value is None and key in getattr(self, "OPTIONAL", ()):
                raise KeyError(key)  # the JSON object leaves an unset optional key out
            return value
        extra = getattr(self, "extra", None) or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING


_MISSING = object()


def _without_none(doc: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not (k in optional and v is None)}


@dataclass(frozen=True)
class AttackRecord(ReadsLikeJson):
    """One attack at one eps of one run: its accuracy over the first ``n`` samples and their flags."""

    name: str
    threat_model: str
    eps: float
    robust_accuracy: float
    seconds: float
    config: dict[str, Any]
    adaptive: bool
    n: int
    correct: str
    kind: str | None = None
    details: dict[str, Any] | None = None
    #: The attack's ``Attack.standard`` (None in reports written before records carried it).
    standard: bool | None = None

    OPTIONAL = ("kind", "details", "standard")

    @classmethod
    def from_result(cls, result: Any, eps_index: int, n: int) -> "AttackRecord":
        """The record of ``result`` (an :class:`~robustbench_peft.attack.AttackResult`) at its ``eps_index``-th eps."""
        return cls(
            name=result.name,
            threat_model=result.threat_model,
            eps=result.eps[eps_index],
            robust_accuracy=result.robust_accuracy[eps_index],
            seconds=round(result.seconds, 4),
            config=result.config,
            adaptive=result.adaptive,
            kind=result.kind,
            n=n,
            correct=bits(result.correct[eps_index].tolist()),
            details=result.details,
            standard=bool(result.standard),
        )

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "AttackRecord":
        return cls(
            name=doc["name"], threat_model=doc["threat_model"], eps=doc["eps"], robust_accuracy=doc["robust_accuracy"],
            seconds=doc["seconds"], config=doc["config"], adaptive=doc["adaptive"], n=doc["n"], correct=doc["correct"],
            kind=doc.get("kind"), details=doc.get("details"), standard=doc.get("standard"),
        )

    def to_json(self) -> dict[str, Any]:
        return _without_none({
            "name": self.name, "threat_model": self.threat_model, "eps": self.eps, "robust_accuracy": self.robust_accuracy,
            "seconds": self.seconds, "config": self.config, "adaptive": self.adaptive, "kind": self.kind, "n": self.n,
            "correct": self.correct, "details": self.details, "standard": self.standard,
        }, self.OPTIONAL)

    @property
    def key(self) -> Key:
        return (str(self.threat_model), float(self.eps))

    @property
    def plugin(self) -> str:
        """The registered attack behind the record."""
        return plugin_name(self.name, self.config)

    @property
    def is_float32(self) -> bool:
        """Did the attack craft in float32 (no ``amp`` in its config)?"""
        return (self.config or {}).get("amp") in (None, "", "off")

    @property
    def is_standard(self) -> bool:
        """A record of the standard evaluation a leaderboard ranks by. A record without ``standard``
        (an older report) counts when its registered attack is AutoAttack, the one standard attack then."""
        return self.standard if self.standard is not None else self.plugin == LEGACY_STANDARD_ATTACK

    def at(self, threat_model: str, eps: float) -> bool:
        return self.threat_model == threat_model and same_eps(self.eps, eps)

    @property
    def label(self) -> str:
        """The name as the pages show it (non-adaptive runs marked)."""
        return self.name + ("" if self.adaptive else " (non-adaptive)")


@dataclass(frozen=True)
class WorstCaseRecord(ReadsLikeJson):
    """A run's per-sample worst case at one (threat model, eps), as written by
    :class:`~robustbench_peft.worst_case.WorstCase`: over the ``n`` samples some attack covered.
    Reports of schema 1.0 have no ``n`` / ``covered`` (see :mod:`~robustbench_peft.coverage`)."""

    threat_model: str
    eps: float
    robust_accuracy: float
    attacks: list[str]
    correct: str
    n: int | None = None
    covered: str | None = None

    OPTIONAL = ("n", "covered")

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "WorstCaseRecord":
        return cls(threat_model=doc["threat_model"], eps=doc["eps"], robust_accuracy=doc["robust_accuracy"], attacks=list(doc.get("attacks") or []),
                   correct=str(doc.get("correct", "")), n=doc.get("n"), covered=doc.get("covered"))

    def to_json(self) -> dict[str, Any]:
        return _without_none({
            "threat_model": self.threat_model, "eps": self.eps, "robust_accuracy": self.robust_accuracy, "n": self.n,
            "attacks": list(self.attacks), "correct": self.correct, "covered": self.covered,
        }, self.OPTIONAL)

    @property
    def key(self) -> Key:
        return (str(self.threat_model), float(self.eps))


#: What the bare model costs: no trainable parameters, no stored bytes, no fit, one pass per prediction.
BARE_COST = {"trainable_parameters": 0, "stored_bytes": 0, "fit_seconds": 0.0, "forward_passes": 1}


@dataclass(frozen=True)
class RunRecord(ReadsLikeJson):
    """One (task, model, defense) run: clean accuracy, every attack record, the worst cases, the checks."""

    task: str
    model: dict[str, Any]
    defense: dict[str, Any] | None
    n: int
    clean_accuracy: float
    attacks: list[AttackRecord]
    worst_case: list[WorstCaseRecord]
    checks: list[dict[str, Any]]
    reliable: bool
    unreliable_reasons: list[str]
    clean_correct: str | None = None
    #: The sanity checks' own attacks on the evaluated target (None in reports before they were kept).
    check_attacks: list[AttackRecord] | None = None
    #: The worst cases the checks' own attacks lowered (None in reports before they were kept).
    lowered_by_checks: list[dict[str, Any]] | None = None
    #: Keys of the JSON object that no field holds, kept so a report reads back as it was written.
    extra: dict[str, Any] = field(default_factory=dict)

    OPTIONAL = ("clean_correct", "check_attacks", "lowered_by_checks")

    @classmethod
    def of(cls, run: "RunRecord | Mapping[str, Any]") -> "RunRecord":
        """``run`` as a record (a JSON object is read with :meth:`from_json`)."""
        return run if isinstance(run, RunRecord) else cls.from_json(run)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "RunRecord":
        known = {f.name for f in fields(cls)} - {"extra"}
        checks = doc.get("check_attacks")
        return cls(
            task=doc["task"], model=dict(doc["model"]), defense=doc.get("defense"), n=doc["n"], clean_accuracy=doc["clean_accuracy"],
            attacks=[AttackRecord.from_json(a) for a in doc.get("attacks") or []],
            worst_case=[WorstCaseRecord.from_json(w) for w in doc.get("worst_case") or []],
            checks=list(doc.get("checks") or []), reliable=doc["reliable"], unreliable_reasons=list(doc.get("unreliable_reasons") or []),
            clean_correct=doc.get("clean_correct"),
            check_attacks=None if checks is None else [AttackRecord.from_json(a) for a in checks],
            lowered_by_checks=doc.get("lowered_by_checks"),
            extra={k: v for k, v in doc.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        doc = _without_none({
            "task": self.task, "model": self.model, "defense": self.defense, "n": self.n, "clean_accuracy": self.clean_accuracy,
            "clean_correct": self.clean_correct, "attacks": [a.to_json() for a in self.attacks],
            "check_attacks": None if self.check_attacks is None else [a.to_json() for a in self.check_attacks],
            "worst_case": [w.to_json() for w in self.worst_case], "lowered_by_checks": self.lowered_by_checks,
            "checks": self.checks, "reliable": self.reliable, "unreliable_reasons": self.unreliable_reasons,
        }, self.OPTIONAL)
        return {**doc, **self.extra}

    @property
    def model_spec(self) -> str:
        return str(self.model["spec"])

    @property
    def defense_label(self) -> str:
        """The defense as the pages name it; ``none`` for the bare model."""
        return self.defense["label"] if self.defense else "none"

    @property
    def label(self) -> str:
        return f"{self.model_spec} / {self.defense_label}"

    def cost(self, name: str) -> Any:
        """One cost field of the defense (``trainable_parameters``, ``stored_bytes``, ``fit_seconds``,
        ``forward_passes``); the bare model's (:data:`BARE_COST`) without a defense."""
        return (self.defense or {}).get(name, BARE_COST[name])

    @property
    def all_attacks(self) -> list[AttackRecord]:
        """The suite's attack records, then the checks' own."""
        return self.attacks + list(self.check_attacks or [])

    def attacks_at(self, threat_model: str, eps: float) -> list[AttackRecord]:
        return [a for a in self.attacks if a.at(threat_model, eps)]

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c.get("passed", False)]
