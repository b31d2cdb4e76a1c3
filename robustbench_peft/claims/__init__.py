"""Claims: numbers a project promises about a defense or an unlearner, re-checked on demand.

A claim file (JSON, schema ``schema/claim.schema.json``) names the whole
evaluation, which metric of its report is claimed, the claimed value, a
tolerance and a direction. ``python -m robustbench_peft verify PATH...`` maps
every evaluation onto a :class:`~robustbench_peft.suite.Suite`, runs each
distinct one once (trained artifacts come from the cache), extracts the metric
and prints one row per claim. A claim whose evaluation is unreliable fails even
when its number matches, because an unreliable number proves nothing.

The parts, one job each: :mod:`.claim` (a claim and the suite that measures it),
:mod:`.files` (the schema and reading claim files), :mod:`.metrics` (reading a
claimed number out of a report; report sections bring their own), :mod:`.verdicts`
(judging, running each evaluation once) and :mod:`.output` (table, JUnit XML).
This module is the ``verify`` command and the names callers import.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..cli import subcommand
from ..errors import UserError
from ..suite import Suite
from .claim import UNLEARNING, Claim, evaluation_key, plugin_spec
from .files import CLAIM_SCHEMA_PATH, claim_files, claim_schema, collect_claims, load_claim_file
from .metrics import METRICS, MetricExtractor, clean_accuracy, known_metrics, register_metric, robust_accuracy, unreliable_reasons, worst_case_n
from .output import junit_xml, table
from .verdicts import COMPARE_EPSILON, SuiteRunner, Verdict, judge, verify, within

__all__ = [
    "UNLEARNING", "Claim", "evaluation_key", "plugin_spec", "CLAIM_SCHEMA_PATH", "claim_files", "claim_schema", "collect_claims",
    "load_claim_file", "METRICS", "MetricExtractor", "clean_accuracy", "known_metrics", "register_metric", "robust_accuracy",
    "unreliable_reasons", "worst_case_n", "junit_xml", "table", "COMPARE_EPSILON", "SuiteRunner", "Verdict", "judge", "verify",
    "within", "run_suite", "cmd_verify",
]


def run_suite(suite: Suite, quiet: bool = True, out: Path | None = None) -> dict[str, Any]:
    """Run ``suite`` with the standard runner; write its outputs into ``out`` when given."""
    from ..runner import Runner

    log = (lambda m: None) if quiet else (lambda m: print(f"[verify] {m}", file=sys.stderr))
    report = Runner(suite, progress=False, log=log).run()
    if out is not None:
        from ..render import write_outputs

        write_outputs(report, out)
    return report.to_json()


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="claim files or directories of them (*.json)")
    p.add_argument("--junit", metavar="PATH", help="also write a JUnit XML file (one test case per claim)")
    p.add_argument("--out", metavar="DIR", help="write each evaluation's report (json, md, html) into DIR/<claim id>/")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is often fastest for the digits claims on a busy machine")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


@subcommand("verify", "re-run claims and check each still reproduces (exit 1 if any does not)", add_verify_arguments)
def cmd_verify(args: argparse.Namespace) -> int:
    claims = collect_claims(args.paths)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    log = (lambda m: None) if args.quiet else (lambda m: print(f"[verify] {m}", file=sys.stderr))
    out = Path(args.out) if args.out else None

    def runner(suite: Suite) -> dict[str, Any]:
        target = out / suite.name.removeprefix("claim-") if out is not None else None
        return run_suite(suite, quiet=args.quiet, out=target)

    start = time.perf_counter()
    verdicts = verify(claims, runner, log)
    print(table(verdicts))
    log(f"verified {len(verdicts)} claims in {time.perf_counter() - start:.1f} s")
    if args.junit:
        write_text_atomic(args.junit, junit_xml(verdicts))
    return 0 if all(v.passed for v in verdicts) else 1
