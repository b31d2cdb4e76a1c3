"""Verdicts: does a measured number reproduce its claim, and running every distinct evaluation once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError
from ..suite import Suite
from .claim import Claim, evaluation_key
from .metrics import measure, unreliable_reasons, worst_case_n

#: Slack for float noise when comparing a measured value with its bound.
COMPARE_EPSILON = 1e-9
#: Runs a suite and returns its report document (replaceable in tests).
SuiteRunner = Callable[[Suite], dict[str, Any]]


def within(measured: float, claimed: float, tolerance: float, direction: str) -> bool:
    """Does ``measured`` reproduce ``claimed`` in ``direction`` within ``tolerance``?"""
    if direction == ">=":
        return measured >= claimed - tolerance - COMPARE_EPSILON
    if direction == "<=":
        return measured <= claimed + tolerance + COMPARE_EPSILON
    if direction == "==":
        return abs(measured - claimed) <= tolerance + COMPARE_EPSILON
    raise ValueError(f"unknown direction {direction!r}")


@dataclass
class Verdict:
    """The outcome of one claim: PASS, FAIL (number or reliability) or ERROR (could not evaluate)."""

    claim: Claim
    status: str
    measured: float | None = None
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Samples the measured per-sample worst case is over (robust_accuracy without ``attack``); None otherwise.
    n: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def judge(claim: Claim, doc: dict[str, Any]) -> Verdict:
    """Extract the claim's metric from its report and decide."""
    try:
        measured = measure(doc, claim)
    except UserError as exc:
        return Verdict(claim, "ERROR", reasons=[f"metric: {exc}"])
    reasons = []
    if not within(measured, claim.claimed, claim.tolerance, claim.direction):
        bound = {">=": claim.claimed - claim.tolerance, "<=": claim.claimed + claim.tolerance}.get(claim.direction)
        limit = f"{claim.direction} {bound:.4f}" if bound is not None else f"within {claim.tolerance:g} of {claim.claimed:g}"
        reasons.append(f"measured {measured:.4f} is not {limit}")
    reasons += [f"unreliable evaluation: {r}" for r in unreliable_reasons(doc)]
    return Verdict(claim, "FAIL" if reasons else "PASS", measured, reasons, n=worst_case_n(doc, claim))


def verify(claims: list[Claim], runner: SuiteRunner, log: Callable[[str], None] = lambda m: None) -> list[Verdict]:
    """Run every distinct evaluation once and judge each claim against its report."""
    groups: dict[str, list[Claim]] = {}
    suites: dict[str, Suite] = {}
    for claim in claims:
        suite = claim.suite()
        key = evaluation_key(suite)
        groups.setdefault(key, []).append(claim)
        suites.setdefault(key, suite)
    verdicts: dict[str, Verdict] = {}
    for i, (key, members) in enumerate(groups.items(), 1):
        log(f"evaluation {i}/{len(groups)} for {', '.join(c.id for c in members)}")
        start = time.perf_counter()
        try:
            doc = runner(suites[key])
        except UserError as exc:
            doc, error = None, f"evaluation failed: {exc}"
        except Exception as exc:  # one broken evaluation must not hide the verdicts of the others
            doc, error = None, f"evaluation crashed: {type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        log(f"  done in {seconds:.1f} s")
        for claim in members:
            verdict = judge(claim, doc) if doc is not None else Verdict(claim, "ERROR", reasons=[error])
            verdict.seconds = seconds / len(members)
            verdicts[claim.id] = verdict
    return [verdicts[c.id] for c in claims]
