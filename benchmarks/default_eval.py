"""Benchmark 4: wall time and peak memory of the default ``python -m robustbench_peft eval``.

Runs whatever the default suite is, as a user would, in fresh processes: one
warm-up (fills the model cache) and then ``--repeats`` measured runs. Peak
memory is the child's maximum resident set size. From each report it also reads
the seconds spent inside attacks, so the share of wall time the suite spends
around the attacks (start-up, data, checks, report writing) is visible.

Run:  python benchmarks/default_eval.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, record, table

#: Runs one command and prints its own peak RSS (kB on Linux), so each measurement is one fresh process.
MEASURE = (
    "import resource, subprocess, sys; "
    "rc = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
)


def run_once(out: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "robustbench_peft", "eval", "--quiet", "--force", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    peak_kb, rc = proc.stdout.strip().splitlines()[-1].split()
    if int(rc) != 0:
        raise SystemExit(f"eval failed (exit {rc}):\n{proc.stdout[-2000:]}")
    doc = json.loads((out / "report.json").read_text())
    # one record per (attack, eps) repeats the attack's total seconds: count each attack once
    per_attack = {(i, a["name"], a["threat_model"], json.dumps(a["config"], sort_keys=True)): a["seconds"] for i, run in enumerate(doc["runs"]) for a in run["attacks"]}
    attack_seconds = sum(per_attack.values())
    return {"wall": wall, "peak_mib": int(peak_kb) / 1024, "attack_seconds": attack_seconds, "suite": doc["suite"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rbp-bench-") as tmp:
        out = Path(tmp) / "run"
        run_once(out, args.threads)  # warm-up: model cache, imports in the page cache
        runs = [run_once(out, args.threads) for _ in range(args.repeats)]
    import_start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import robustbench_peft.cli, robustbench_peft.runner"], check=True, cwd=ROOT)
    import_seconds = time.perf_counter() - import_start
    suite = runs[-1]["suite"]
    wall = statistics.median(r["wall"] for r in runs)
    peak = max(r["peak_mib"] for r in runs)
    attack = statistics.median(r["attack_seconds"] for r in runs)
    attacks = ", ".join(a["name"] + (":" + ",".join(f"{k}={v}" for k, v in a.get("options", {}).items()) if a.get("options") else "") for a in suite["attacks"])
    rows = [[i + 1, r["wall"], r["attack_seconds"], r["peak_mib"]] for i, r in enumerate(runs)]
    text = "\n".join([
        f"python -m robustbench_peft eval (default suite '{suite['name']}': task {suite['task']}, models {', '.join(suite['models'])}, "
        f"attacks {attacks}, n={suite['n']}, checks={suite['checks']}, sections={suite.get('sections') or []}), "
        f"warm, OMP_NUM_THREADS={args.threads}",
        "",
        table(["run", "wall s", "attack s", "peak RSS MiB"], rows),
        "",
        f"median wall time {wall:.2f} s; peak RSS {peak:.0f} MiB; attacks {attack:.2f} s = {100 * attack / wall:.0f}% of wall time; "
        f"importing the CLI alone takes {import_seconds:.2f} s",
    ])
    record("default_eval", text, {
        "config": vars(args),
        "suite": suite,
        "runs": [{k: v for k, v in r.items() if k != "suite"} for r in runs],
        "median_wall_seconds": wall,
        "peak_rss_mib": peak,
        "attack_seconds": attack,
        "attack_share": attack / wall,
        "import_seconds": import_seconds,
    }, threads=args.threads)


if __name__ == "__main__":
    main()
