"""Benchmark 3: AutoAttack through the suite vs calling pyautoattack directly.

Same model (digits:cnn), samples, eps, seed, components (APGD-CE + APGD-T by
default; ``--components`` changes them) and batch size. The suite adds its
contract around the library: input checks, the clean prediction that picks the
samples still standing, projection and validity checks, the re-measured
prediction and the per-component accuracy read from the library's messages.

Goal: overhead at most 5%.   Run:  python benchmarks/autoattack_overhead.py [--n 128 --repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from _common import record, setup, side_by_side, table


def direct_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, components: list[str], seed: int, batch: int) -> torch.Tensor:
    """Per-sample correctness after pyautoattack.AutoAttack, called as its README shows."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=components, seed=seed, device="cpu")
    adversary.apgd_targeted.n_target_classes = 9
    adversary.fab.n_target_classes = 9
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--components", default="apgd-ce+apgd-t")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)

    from attacks.autoattack import AutoAttackAdapter
    from robustbench_peft import load_target
    from robustbench_peft.runner import load_task

    components = args.components.split("+")
    target = load_target("digits:cnn").eval()
    task = load_task("digits")
    x, y = task.x_test[: args.n], task.y_test[: args.n]
    suite = AutoAttackAdapter(norm="Linf", version="custom", attacks=components, backend="pyautoattack", seed=0, batch_size=args.batch_size, progress=False)
    runs = side_by_side(
        {
            "pyautoattack directly": lambda: direct_accuracy(target, x, y, args.eps, components, 0, args.batch_size),
            "suite autoattack": lambda: suite(target, x, y, [args.eps]).correct[0],
        },
        repeats=args.repeats,
    )
    direct, ours = runs["pyautoattack directly"], runs["suite autoattack"]
    overhead = ours["median"] / direct["median"] - 1
    same = bool(torch.equal(direct["value"], ours["value"]))
    rows = [[name, r["median"], r["median"] / direct["median"], float(r["value"].float().mean())] for name, r in runs.items()]
    text = "\n".join([
        f"AutoAttack {'+'.join(components)} Linf eps={args.eps} seed 0 on digits:cnn, first {len(x)} test digits, batch {args.batch_size}, "
        f"median of {args.repeats} interleaved repeats after warm-up, {torch.get_num_threads()} threads",
        "",
        table(["contender", "seconds", "ratio", "robust acc"], rows),
        "",
        f"per-sample results identical: {same}",
        f"suite overhead: {100 * overhead:+.1f}%  (goal: at most +5%) -> {'met' if overhead <= 0.05 else 'MISSED'}",
    ])
    record("autoattack_overhead", text, {
        "config": vars(args) | {"components": components},
        "results": {name: {k: v for k, v in r.items() if k != "value"} | {"robust_accuracy": float(r["value"].float().mean())} for name, r in runs.items()},
        "identical_per_sample": same,
        "overhead": overhead,
        "goal": 0.05,
        "met": overhead <= 0.05,
    }, threads=args.threads)


if __name__ == "__main__":
    main()
