#!/usr/bin/env bash
# Runs the four benchmarks one after the other (never in parallel: they would slow each other)
# and records their output under reports/benchmarks/.
set -euo pipefail
cd "$(dirname "$0")"
python pgd_overhead.py "$@"
python robust_accuracy_vs_torchattacks.py "$@"
python autoattack_overhead.py "$@"
python default_eval.py "$@"
