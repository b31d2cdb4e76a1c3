"""Leaderboard submissions: a report is accepted only if it can back a ranked number.

``python -m robustbench_peft submit REPORT --out DIR`` checks the report against
every requirement at once and either writes ``DIR/submission-<hash>.json`` (the
report, its SHA-256, the card and the leaderboard entries; exit 0) or prints
every reason for rejection (exit 1). Unreadable input is a user error (exit 2).

Requirements: the report matches its schema; it has at least one classifier
run; every run passed its sanity checks; every run evaluated at least
``--min-n`` examples, AutoAttack included; every run includes AutoAttack and an adaptive attack
(one that sees the whole defended pipeline); the weights of every model and
fitted defense are identified by a SHA-256.

Each entry is ranked, as on the leaderboard, by the per-sample worst case over the
first ``n`` samples float32 AutoAttack covered at its threat model and eps (over the
samples any attack covered where AutoAttack did not run there); ``submit`` prints
that number with its ``n`` and records both in the entries (``measured``, ``n``,
``over_autoattack``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic
from .cli import subcommand
from .errors import UserError
from .json_input import read_json
from .records import RunRecord

SUBMISSION_VERSION = "1.0"
DEFAULT_MIN_N = 100
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def run_reasons(i: int, run: RunRecord, min_n: int) -> list[str]:
    """Every requirement one run breaks."""
    name = f"run {i} ({run.label})"
    reasons = []
    failed = run.failed_checks
    if failed:
        reasons += [f"{name}: sanity check {c.get('name')} failed: {c.get('detail')}" for c in failed]
    elif run.reliable is not True:
        reasons.append(f"{name}: marked unreliable: {'; '.join(run.unreliable_reasons or ['no reason given'])}")
    if not run.checks:
        reasons.append(f"{name}: no sanity checks ran (evaluate without --no-checks)")
    if not isinstance(run.n, int) or run.n < min_n:
        reasons.append(f"{name}: n={run.n} is below the minimum of {min_n} examples")
    any_standard = [a for a in run.attacks if a.is_standard]
    standard = [a for a in any_standard if a.is_float32]
    if any_standard and not standard:
        reasons.append(f"{name}: AutoAttack ran only under mixed precision (amp=); a submission needs it in float32")
    elif not standard:
        reasons.append(f"{name}: no AutoAttack evaluation (add --attack autoattack)")
    elif max(int(a.n or 0) for a in standard) < min_n:
        reasons.append(f"{name}: AutoAttack ran on {max(int(a.n or 0) for a in standard)} examples, below the minimum of {min_n}")
    if not any(a.adaptive is True for a in run.attacks):
        reasons.append(f"{name}: no adaptive attack (an attack that sees the whole defended pipeline)")
    if not SHA256.match(str(run.model.get("sha256", ""))):
        reasons.append(f"{name}: model weights SHA-256 missing")
    if isinstance(run.defense, dict) and not SHA256.match(str(run.defense.get("sha256", ""))):
        reasons.append(f"{name}: defense weights SHA-256 missing")
    return reasons


def rejection_reasons(doc: Any, min_n: int = DEFAULT_MIN_N) -> list[str]:
    """Every reason ``doc`` cannot go on the leaderboard (empty when it can)."""
    from .validation import schema_errors

    reasons = [f"schema: {e}" for e in schema_errors(doc)]
    if not isinstance(doc, dict):
        return reasons or ["the report is not a JSON object"]
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        return reasons + ["no classifier runs: nothing to rank"]
    for i, run in enumerate(runs):
        try:
            record = RunRecord.from_json(run)
        except (KeyError, TypeError, AttributeError):
            continue  # not a run at all: the schema errors above say why
        reasons += run_reasons(i, record, min_n)
    return reasons


def load_card(path: str | None) -> dict[str, Any]:
    """The RobustBench card fields (``card`` of a claim file, or a bare card object)."""
    if not path:
        return {}
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read card {path}: {exc}") from None
    if isinstance(doc, dict) and "claims" in doc:  # a claim collection: the first claim that has a card
        doc = next((c for c in doc["claims"] if isinstance(c, dict) and "card" in c), {})
    card = doc.get("card", doc) if isinstance(doc, dict) else doc
    from .claims import claim_schema

    import jsonschema

    errors = list(jsonschema.Draft202012Validator(claim_schema()["$defs"]["card"]).iter_errors(card))
    if errors:
        raise UserError(f"card {path} is invalid: {errors[0].message}")
    return card


def build_submission(doc: dict[str, Any], raw: bytes, source: str, card: dict[str, Any]) -> dict[str, Any]:
    from .leaderboard import SUBMISSION_KEY, entries_from_report

    return {
        SUBMISSION_KEY: SUBMISSION_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "report_sha256": hashlib.sha256(raw).hexdigest(),
        "card": card,
        "entries": [e.to_json() for e in entries_from_report(doc, source, card)],
        "report": doc,
    }


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("report", metavar="REPORT", help="report.json or the run directory holding it")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the accepted submission into")
    p.add_argument("--card", metavar="JSON", help="model card fields (name, authors, venue, reported, external, unreliable, footnote), or a claim file with a card")
    p.add_argument("--min-n", type=int, default=DEFAULT_MIN_N, help=f"minimum test examples per run (default {DEFAULT_MIN_N})")


@subcommand("submit", "validate a report for the leaderboard and write the submission (exit 1 with every reason if rejected)", add_submit_arguments)
def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.report)
    if path.is_dir():
        path = path / "report.json"
    doc, raw = read_json(path, "JSON report")
    if args.min_n < 1:
        raise UserError(f"--min-n must be >= 1, got {args.min_n}")
    card = load_card(args.card)
    reasons = rejection_reasons(doc, args.min_n)
    if reasons:
        print(f"REJECTED: {path} cannot be submitted ({len(reasons)} reason{'s' if len(reasons) != 1 else ''}):")
        for reason in reasons:
            print(f"  - {reason}")
        return 1
    submission = build_submission(doc, raw, str(path), card)
    out = write_json_atomic(Path(args.out) / f"submission-{submission['report_sha256'][:12]}.json", submission)
    print(f"ACCEPTED: {len(submission['entries'])} leaderboard entries -> {out}")
    for entry in submission["entries"]:
        print("  " + entry_line(entry))
    return 0


def entry_line(entry: dict[str, Any]) -> str:
    """One accepted entry: the number it is ranked by and the samples that number is over."""
    over = "samples float32 AutoAttack covered" if entry["over_autoattack"] else "samples any attack covered (no float32 AutoAttack here)"
    return (
        f"{entry['task']} {entry['threat_model']} eps={entry['eps']:g} {entry['model']} / {entry['defense']}: "
        f"worst case {100 * entry['measured']:.1f}% over n={entry['n']} {over}"
    )
