"""Benchmark 2: robust accuracy under PGD-50 through the suite vs torchattacks' PGD.

Same model (digits:cnn), the whole digits test split, Linf eps where about half
of the digits break (or an eps list, ``--eps 0.05,0.1,0.2``: the task's robust
accuracy curve), the same step size (2.5 eps / steps), random start (or none:
``--no-random-start``, which makes both deterministic) and batch size.
torchattacks runs every step on every sample, once per eps; the suite skips
samples that are misclassified to begin with, stops spending passes on a sample
the step it is broken (handing its batch slot to the next sample), and attacks
at a larger eps only the samples still standing at the smaller one. Both robust
accuracies are re-measured on the returned inputs and reported; the speed-up
only counts at equal accuracy (the suite no weaker at any eps).

Goal: at least 1.3x faster.   Run:  python benchmarks/robust_accuracy_vs_torchattacks.py
Needs: pip install torchattacks --no-deps   (it pins an old requests otherwise)
"""

from __future__ import annotations

import argparse

import torch

from _common import record, setup, side_by_side, table


def torchattacks_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: list[float], steps: int, batch: int, random_start: bool) -> torch.Tensor:
    """Per-eps, per-sample correctness after torchattacks.PGD, batch by batch, one pass over the data per eps."""
    import torchattacks

    rows = []
    for eps in eps_list:
        attack = torchattacks.PGD(model, eps=eps, alpha=(2.5 / steps) * eps, steps=steps, random_start=random_start)
        correct = []
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            adv = attack(xb, yb)
            with torch.no_grad():
                correct.append(model(adv).argmax(1) == yb)
        rows.append(torch.cat(correct))
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eps", type=lambda t: [float(v) for v in t.split(",")], default=[0.1], help="one eps or a comma-separated list (default 0.1)")
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
    suite = PGD(norm="Linf", steps=args.steps, rel_step_size=2.5 / args.steps, random_start=random_start, batch_size=args.batch_size, progress=False, seed=0)
    with torch.no_grad():
        clean = float((target(x).argmax(1) == y).float().mean())
    ta_name = f"torchattacks {torchattacks.__version__} PGD"
    runs = side_by_side(
        {
            ta_name: lambda: torchattacks_accuracy(target, x, y, args.eps, args.steps, args.batch_size, random_start),
            "suite pgd": lambda: suite(target, x, y, args.eps).correct,
        },
        repeats=args.repeats,
    )
    ta, ours = runs[ta_name], runs["suite pgd"]
    speedup = ta["median"] / ours["median"]
    acc_ta, acc_ours = ta["value"].float().mean(1).tolist(), ours["value"].float().mean(1).tolist()
    no_weaker = all(o <= t + 1e-9 for o, t in zip(acc_ours, acc_ta))
    met = speedup >= 1.3 and no_weaker
    both = (ta["value"] & ours["value"]).sum(1).tolist()
    eps_text = ", ".join(f"{e:g}" for e in args.eps)
    rows = [[name, r["median"], *[round(a, 4) for a in r["value"].float().mean(1).tolist()]] for name, r in runs.items()]
    text = "\n".join([
        f"PGD-{args.steps} Linf eps {eps_text} step (2.5 / {args.steps}) eps {'random start' if random_start else 'no random start'} on digits:cnn, {len(x)} test digits (clean accuracy {clean:.4f}), "
        f"batch {args.batch_size}, median of {args.repeats} interleaved repeats after warm-up, {torch.get_num_threads()} threads",
        "",
        table(["contender", "seconds", *[f"robust acc @{e:g}" for e in args.eps]], rows),
        "",
        f"samples robust under both, per eps: {both}; robust accuracy difference (suite - torchattacks): {', '.join(f'{o - t:+.4f}' for o, t in zip(acc_ours, acc_ta))}",
        f"suite speed-up: {speedup:.2f}x  (goal: at least 1.3x at equal robust accuracy) -> {'met' if met else 'MISSED'}",
    ])
    name = "robust_accuracy_vs_torchattacks" + ("" if len(args.eps) == 1 else "-eps_curve") + ("" if random_start else "-no_random_start")
    record(name, text, {
        "config": vars(args) | {"n": len(x), "clean_accuracy": clean},
        "results": {name: {k: v for k, v in r.items() if k != "value"} | {"robust_accuracy": r["value"].float().mean(1).tolist()} for name, r in runs.items()},
        "speedup": speedup,
        "robust_under_both": both,
        "goal": 1.3,
        "met": met,
    }, threads=args.threads)


if __name__ == "__main__":
    main()
