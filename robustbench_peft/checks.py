"""Evaluation sanity checks: catch gradient masking and broken evaluations.

Each check returns a :class:`CheckResult`; any failure marks the run unreliable
and its detail is printed in plain words. Pre-attack checks look at the target
itself; post-attack checks look at what the attacks produced (Carlini et al.
2019, Tramer et al. 2020, Pintor et al. 2021, AutoAttack's flags).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .attack import AttackResult
from .registry import ATTACKS
from .targets import ClassifierTarget

#: Samples used by the checks that run extra attacks (kept small: checks must be cheap).
CHECK_SUBSET = 64
#: Allowed accuracy slack where randomness may move a few samples.
SLACK = 0.02


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RunContext:
    """Everything the post-attack checks may look at for one (model, defense) run."""

    target: ClassifierTarget
    x: torch.Tensor
    y: torch.Tensor
    clean_correct: torch.Tensor
    results: list[AttackResult]
    eps: dict[str, list[float]]
    seed: int
    worst: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)


PreCheck = Callable[[ClassifierTarget, torch.Tensor, torch.Tensor], CheckResult]
PostCheck = Callable[[RunContext], "CheckResult | None"]
PRE_CHECKS: list[PreCheck] = []
POST_CHECKS: list[PostCheck] = []


def pre_check(fn: PreCheck) -> PreCheck:
    PRE_CHECKS.append(fn)
    return fn


def post_check(fn: PostCheck) -> PostCheck:
    POST_CHECKS.append(fn)
    return fn


@pre_check
def eval_mode_deterministic(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    target.eval()
    training = [name for name, m in target.named_modules() if m.training]
    if training:
        return CheckResult("eval_mode_deterministic", False, f"modules still in training mode: {', '.join(training[:3])}")
    sample = x[:32]
    first, second = target.logits(sample), target.logits(sample)
    if target.is_stochastic:
        return CheckResult("eval_mode_deterministic", True, "declared stochastic: attacks must average over randomness (EOT)")
    if not torch.equal(first, second):
        diff = (first - second).abs().max().item()
        return CheckResult("eval_mode_deterministic", False, f"two forward passes on the same inputs differ by up to {diff:.3g}: the model is randomised but not declared stochastic")
    return CheckResult("eval_mode_deterministic", True, "eval mode; repeated forward passes identical")


@pre_check
def outputs_are_logits(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    out = target.logits(x[:64])
    rows_sum_one = torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3) and bool((out >= 0).all()) and bool((out <= 1).all())
    log_probs = bool((out <= 1e-6).all()) and torch.allclose(out.logsumexp(1), torch.zeros(len(out)), atol=1e-3)
    if rows_sum_one:
        return CheckResult("outputs_are_logits", False, "outputs are probabilities (rows sum to 1): return logits, softmax saturates gradients")
    if log_probs:
        return CheckResult("outputs_are_logits", False, "outputs are log-probabilities: return logits so margin losses (CW, DLR) are meaningful")
    return CheckResult("outputs_are_logits", True, "outputs are unnormalised logits")


@pre_check
def input_gradients_informative(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    sample, labels = x[:64].to(target.device).clone().requires_grad_(True), y[:64].to(target.device)
    loss = F.cross_entropy(target(sample), labels, reduction="sum")
    if not loss.requires_grad:
        return CheckResult("input_gradients_informative", False, "the loss does not depend differentiably on the input: gradient-based attacks cannot work")
    grad = torch.autograd.grad(loss, sample)[0].flatten(1)
    nan = int((~torch.isfinite(grad)).any(1).sum())
    zero = int((grad.abs().amax(1) == 0).sum())
    if nan:
        return CheckResult("input_gradients_informative", False, f"{nan}/{len(grad)} samples have NaN or infinite input gradients")
    if zero > SLACK * len(grad):
        return CheckResult("input_gradients_informative", False, f"{zero}/{len(grad)} samples have exactly zero input gradients: gradients are masked (quantised or saturated outputs?)")
    return CheckResult("input_gradients_informative", True, f"input gradients finite and non-zero ({zero}/{len(grad)} zero)")


@post_check
def returned_inputs_valid(ctx: RunContext) -> CheckResult:
    bad = [(r.name, r.eps[i], v) for r in ctx.results for i, v in enumerate(r.invalid) if any(v.values())]
    if bad:
        return CheckResult("returned_inputs_valid", False, f"{len(bad)} attack outputs outside the threat model or [0,1]: {bad[:2]}")
    count = sum(len(r.eps) for r in ctx.results)
    return CheckResult("returned_inputs_valid", True, f"all {count} attack outputs within eps + 1e-6, in [0,1] and finite")


@post_check
def accuracy_non_increasing_in_eps(ctx: RunContext) -> CheckResult:
    problems = []
    for r in ctx.results:
        pairs = sorted(zip(r.eps, r.robust_accuracy))
        problems += [f"{r.name} {r.threat_model}: {a1:.3f} at eps={e1:g} < {a2:.3f} at eps={e2:g}" for (e1, a1), (e2, a2) in zip(pairs, pairs[1:]) if a2 > a1 + 1e-12]
    if problems:
        return CheckResult("accuracy_non_increasing_in_eps", False, "robust accuracy rises with eps: " + "; ".join(problems[:2]))
    return CheckResult("accuracy_non_increasing_in_eps", True, "robust accuracy never rises with eps")


def _check_pgd(norm: str, seed: int, **options) -> object:
    return ATTACKS.create("pgd", norm=norm, seed=seed, progress=False, **options)


def _subset(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    return ctx.x[:CHECK_SUBSET], ctx.y[:CHECK_SUBSET]


LARGE_EPS = {"Linf": 1.0, "L2": None}  # None: the diameter of the [0,1] box


@post_check
def large_eps_breaks_everything(ctx: RunContext) -> CheckResult | None:
    norms = sorted({r.threat_model for r in ctx.results if r.adaptive}) or ["Linf"]
    x, y = _subset(ctx)
    details = []
    for norm in norms:
        eps = LARGE_EPS[norm] or float(x[0].numel() ** 0.5)
        acc = _check_pgd(norm, ctx.seed, steps=50, restarts=2)(ctx.target, x, y, [eps]).robust_accuracy[0]
        details.append((norm, eps, acc))
    bad = [d for d in details if d[2] > 0.05]
    text = ", ".join(f"{n} eps={e:g}: {100 * a:.1f}%" for n, e, a in details)
    if bad:
        return CheckResult("large_eps_breaks_everything", False, f"accuracy stays above 5% at an eps that allows any image ({text}): the attack cannot optimise against this model")
    return CheckResult("large_eps_breaks_everything", True, text)


def _main_eps(ctx: RunContext, norm: str) -> float:
    values = sorted(ctx.eps.get(norm) or [])
    return values[len(values) // 2] if values else 0.1


#: Losses the step-count check tries: cross-entropy saturates on outputs that are log-probabilities
#: (e.g. C-AVP's diagonal rule), the margin (CW) loss does not, so it decides the verdict.
STEP_CHECK_LOSSES = ("ce", "cw")
#: How far (accuracy) a run's worst case may stay above the check's own 50-step attack.
WEAKER_THAN_CHECK_SLACK = 0.10


def _step_sequence(ctx: RunContext, norm: str, eps: float, loss: str) -> tuple[float, float, float]:
    """Accuracy after a single step, 10 steps, and 50 steps x 2 restarts of PGD with ``loss``."""
    x, y = _subset(ctx)
    single = _check_pgd(norm, ctx.seed, steps=1, random_start=False, rel_step_size=1.0, loss=loss)(ctx.target, x, y, [eps]).robust_accuracy[0]
    short = _check_pgd(norm, ctx.seed, steps=10, loss=loss)(ctx.target, x, y, [eps]).robust_accuracy[0]
    long = _check_pgd(norm, ctx.seed, steps=50, restarts=2, loss=loss)(ctx.target, x, y, [eps]).robust_accuracy[0]
    return single, short, long


@post_check
def more_steps_never_raise_accuracy(ctx: RunContext) -> CheckResult | None:
    """Single step >= 10 steps >= 50 steps x 2 under the margin loss, and the run's own worst
    case not far above that 50-step attack (else the reported number overestimates robustness)."""
    norms = sorted({r.threat_model for r in ctx.results if r.adaptive})
    if not norms:
        return None
    details, failed = [], False
    for norm in norms:
        eps = _main_eps(ctx, norm)
        sequences = {loss: _step_sequence(ctx, norm, eps, loss) for loss in STEP_CHECK_LOSSES}
        for loss, (single, short, long) in sequences.items():
            anomaly = long > short + SLACK or short > single + SLACK
            decisive = loss == "cw"
            failed |= anomaly and decisive
            note = " (non-monotone" + ("" if decisive else ": this loss saturates, the margin loss decides") + ")" if anomaly else ""
            details.append(f"{norm} eps={eps:g} {loss}: single-step {100 * single:.1f}%, 10 steps {100 * short:.1f}%, 50 steps x2 {100 * long:.1f}%{note}")
        worst = ctx.worst.get((norm, eps))
        if worst is not None:
            reported = float(worst[:CHECK_SUBSET].float().mean())
            strongest = min(long for _, _, long in sequences.values())
            if reported > strongest + WEAKER_THAN_CHECK_SLACK:
                failed = True
                details.append(f"{norm} eps={eps:g}: the run's worst case leaves {100 * reported:.1f}% of the first {CHECK_SUBSET} samples robust, a 50-step PGD only {100 * strongest:.1f}%: add stronger attacks")
    text = "; ".join(details)
    if failed:
        return CheckResult("more_steps_never_raise_accuracy", False, f"more attack effort changes the verdict ({text}): a sign of gradient masking or too weak an evaluation")
    return CheckResult("more_steps_never_raise_accuracy", True, text)


@post_check
def transfer_not_stronger_than_white_box(ctx: RunContext) -> CheckResult | None:
    transfers = [r for r in ctx.results if not r.adaptive or r.config.get("attack") == "transfer"]
    white = [r for r in ctx.results if r.adaptive and r.config.get("attack") != "transfer"]
    if not transfers or not white:
        return None
    problems, compared = [], 0
    for t in transfers:
        for i, eps in enumerate(t.eps):
            rows = [w.correct[w.eps.index(eps)] for w in white if w.threat_model == t.threat_model and eps in w.eps and len(w.correct[0]) == len(t.correct[0])]
            if not rows:
                continue
            compared += 1
            white_correct = torch.stack(rows).all(0)
            beats = int((white_correct & ~t.correct[i]).sum())
            if beats > max(1, SLACK * len(white_correct)) or t.correct[i].float().mean() < white_correct.float().mean():
                problems.append(f"{t.name} {t.threat_model} eps={eps:g}: {beats} samples fooled by transfer but not white-box ({100 * t.correct[i].float().mean():.1f}% vs white-box {100 * white_correct.float().mean():.1f}%)")
    if problems:
        return CheckResult("transfer_not_stronger_than_white_box", False, "a transfer or non-adaptive attack beats the white-box attacks: " + "; ".join(problems[:2]))
    if not compared:
        return None
    return CheckResult("transfer_not_stronger_than_white_box", True, f"white-box at least as strong per sample in {compared} comparisons")


def run_pre_checks(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> list[CheckResult]:
    return [check(target, x, y) for check in PRE_CHECKS]


def run_post_checks(ctx: RunContext) -> list[CheckResult]:
    return [result for check in POST_CHECKS if (result := check(ctx)) is not None]
