"""Benchmark 2: robust accuracy under PGD-50 through the suite vs torchattacks' PGD.

Same model (digits:cnn), the whole digits test split, Linf eps where about half
of the digits break, the same step size (2.5 eps / steps), random start (or none:
``--no-random-start``, which makes both deterministic) and batch size. torchattacks runs every step on every sample; the suite skips
samples that are misclassified to begin with and stops spending passes on a
sample the step it is broken. Both robust accuracies are re-measured on the
returned inputs and reported; the speed-up only counts at equal accuracy.

Goal: at least 1.3x faster.   Run:  python benchmarks/robust_accuracy_vs_torchattacks.py
Needs: pip install torchattacks --no-deps   (it pins an old requests otherwise)
"""

from __future__ import annotations

import argparse

import torch

from _common import record, setup, side_by_side, table


def torchattacks_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, batch: int, random_start: bool) -> torch.Tensor:
    """Per-sample correctness after torchattacks.PGD, batch by batch."""
    import torchattacks

    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    correct = []
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        adv = attack(xb, yb)
        with torch.no_grad():
            correct.append(model(adv).argmax(1) == yb)
    return torch.cat(correct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-random-start", action="store_true", help="start both at the clean input: deterministic, so the accuracies can be compared sample by sample")
    args = parser.parse_args()
    random_start = not args.no_random_start
    setup(args.threads)
    try:
        import torchattacks
    except ImportError:
        raise SystemExit("this benchmark needs torchattacks: pip install torchattacks --no-deps") from None

    from attacks.pgd import PGD
    from robustbench_peft import load_target
    from robustbench_peft.runner import load_task

    target = load_target("digits:cnn").eval()
    task = load_task("digits")
    x, y = task.x_test, task.y_test
    alpha = 2.5 * args.eps / args.steps
    suite = PGD(norm="Linf", steps=args.steps, step_size=alpha, random_start=random_start, batch_size=args.batch_size, progress=False, seed=0)
    with torch.no_grad():
        clean = float((target(x).argmax(1) == y).float().mean())
    runs = side_by_side(
        {
            f"torchattacks {torchattacks.__version__} PGD": lambda: torchattacks_accuracy(target, x, y, args.eps, alpha, args.steps, args.batch_size, random_start),
            "suite pgd": lambda: suite(target, x, y, [args.eps]).correct[0],
        },
        repeats=args.repeats,
    )
    ta, ours = runs[f"torchattacks {torchattacks.__version__} PGD"], runs["suite pgd"]
    speedup = ta["median"] / ours["median"]
    acc_ta, acc_ours = float(ta["value"].float().mean()), float(ours["value"].float().mean())
    both = int((ta["value"] & ours["value"]).sum())
    rows = [[name, r["median"], float(r["value"].float().mean()), int(r["value"].sum())] for name, r in runs.items()]
    text = "\n".join([
        f"PGD-{args.steps} Linf eps={args.eps} step {alpha:g} {'random start' if random_start else 'no random start'} on digits:cnn, {len(x)} test digits (clean accuracy {clean:.4f}), "
        f"batch {args.batch_size}, median of {args.repeats} interleaved repeats after warm-up, {torch.get_num_threads()} threads",
        "",
        table(["contender", "seconds", "robust acc", "robust samples"], rows),
        "",
        f"samples robust under both: {both}; robust accuracy difference (suite - torchattacks): {acc_ours - acc_ta:+.4f}",
        f"suite speed-up: {speedup:.2f}x  (goal: at least 1.3x at equal robust accuracy) -> {'met' if speedup >= 1.3 and acc_ours <= acc_ta + 1e-9 else 'MISSED'}",
    ])
    record("robust_accuracy_vs_torchattacks" + ("" if random_start else "-no_random_start"), text, {
        "config": vars(args) | {"alpha": alpha, "n": len(x), "clean_accuracy": clean},
        "results": {name: {k: v for k, v in r.items() if k != "value"} | {"robust_accuracy": float(r["value"].float().mean())} for name, r in runs.items()},
        "speedup": speedup,
        "robust_under_both": both,
        "goal": 1.3,
        "met": speedup >= 1.3 and acc_ours <= acc_ta + 1e-9,
    }, threads=args.threads)


if __name__ == "__main__":
    main()
