"""The suite's PGD at two git revisions, side by side: did a change slow attacks down?

Checks out each revision into a temporary worktree, then times the same PGD runs
(benchmark 1's fixed-pass batch and benchmark 2's early-stopping whole split) in
fresh interpreter processes that import that worktree, alternating revisions
over the repeats. Prints medians, the ratio new / old and whether per-sample
results are identical.

Run:  python benchmarks/ab_revisions.py OLD_REV [NEW_REV, default: the working tree] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Run inside a fresh interpreter with the revision's tree first on sys.path.
PROBE = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
from robustbench_peft import load_target
from robustbench_peft.registry import ATTACKS
from tasks.digits import digits_task
task = digits_task(); x, y = task.x_test, task.y_test
cnn = load_target("digits:cnn")
ok = cnn.predict(x) == y
fixed = ATTACKS.create("pgd", steps=50, early_stop=False, seed=0, progress=False)
early = ATTACKS.create("pgd", steps=50, seed=0, progress=False)
fixed(cnn, x[ok][:64], y[ok][:64], [0.1]); early(cnn, x[:64], y[:64], [0.1])  # warm-up
t0 = time.perf_counter(); a = fixed(cnn, x[ok][:256], y[ok][:256], [0.1]); t1 = time.perf_counter()
b = early(cnn, x, y, [0.1]); t2 = time.perf_counter()
print(json.dumps({"fixed_s": t1 - t0, "early_s": t2 - t1,
                  "fixed_bits": "".join("1" if v else "0" for v in a.correct[0].tolist()),
                  "early_bits": "".join("1" if v else "0" for v in b.correct[0].tolist())}))
"""


def worktree(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), rev], check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default=None, help="a revision (default: the working tree)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"old": worktree(args.old, Path(tmp) / "old"), "new": worktree(args.new, Path(tmp) / "new") if args.new else ROOT}
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        try:
            for _ in range(args.repeats):
                for label, tree in trees.items():
                    out = subprocess.run([sys.executable, "-c", PROBE, str(tree), str(args.threads)], check=True, capture_output=True, text=True)
                    runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            for label, tree in trees.items():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"suite PGD-50 Linf 0.1 on digits:cnn, {args.old} vs {args.new or 'working tree'}, median of {args.repeats} alternating fresh processes, {args.threads} threads\n")
    print(f"{'run':<48} {'old s':>8} {'new s':>8} {'new/old':>8}  per-sample identical")
    for key, what in (("fixed", "256 correct digits, early_stop=False (fixed passes)"), ("early", "whole test split, default early stop")):
        old = statistics.median(r[f"{key}_s"] for r in runs["old"])
        new = statistics.median(r[f"{key}_s"] for r in runs["new"])
        same = runs["old"][0][f"{key}_bits"] == runs["new"][0][f"{key}_bits"]
        print(f"{what:<48} {old:8.4f} {new:8.4f} {new / old:8.3f}  {same}")


if __name__ == "__main__":
    main()
