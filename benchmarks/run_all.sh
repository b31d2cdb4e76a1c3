#!/usr/bin/env bash
# Runs the four benchmarks one after the other (never in parallel: they would slow each other)
# and records their output under reports/benchmarks/. Benchmark 2 runs three ways: one eps with
# random start, one eps from the clean input (deterministic: comparable sample by sample), and
# the task's eps curve from the clean input.
set -euo pipefail
cd "$(dirname "$0")"
python pgd_overhead.py "$@"
python robust_accuracy_vs_torchattacks.py "$@"
python robust_accuracy_vs_torchattacks.py --no-random-start "$@"
python robust_accuracy_vs_torchattacks.py --no-random-start --eps 0.05,0.1,0.2 "$@"
python robust_accuracy_vs_torchattacks.py --eps 0.05,0.1,0.2 "$@"
python autoattack_overhead.py "$@"
python default_eval.py "$@"
