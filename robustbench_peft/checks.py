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

from .attack import Attack, AttackResult, Effort
from .checkpoint import chunk_seed
from .registry import ATTACKS
from .targets import ClassifierTarget
from .worst_case import WorstCase

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
    """Everything the post-attack checks may look at for one (model, defense) run.

    ``worst`` is the run's worst case before the checks; checks that attack the
    evaluated target append their results to ``extra``, and the runner folds
    them into the reported worst case (every attack the suite runs counts).
    """

    target: ClassifierTarget
    x: torch.Tensor
    y: torch.Tensor
    clean_correct: torch.Tensor
    results: list[AttackResult]
    eps: dict[str, list[float]]
    seed: int
    worst: dict[tuple[str, float], WorstCase] = field(default_factory=dict)
    #: The undefended base model of a defended run (None for a bare model).
    base: ClassifierTarget | None = None
    #: The run's adaptive white-box attacks (for "the base model falls to the same attack").
    white_box: list[Attack] = field(default_factory=list)
    extra: list[AttackResult] = field(default_factory=list)
    #: Check attacks already run, by (settings, eps, samples): two checks asking for the same
    #: attack (e.g. margin PGD-10 at the middle eps) share one run.
    _ran: dict[tuple, AttackResult] = field(default_factory=dict)

    def attack(self, attack: Attack, x: torch.Tensor, y: torch.Tensor, eps: list[float]) -> AttackResult:
        """Run a check's attack on the evaluated target; its result folds into the worst case."""
        key = (repr(attack.config), tuple(eps), len(x))
        if key not in self._ran:
            self._ran[key] = attack(self.target, x, y, eps)
            self.extra.append(self._ran[key])
        return self._ran[key]

    def covered(self, norm: str) -> int:
        """Samples every worst-case row of ``norm`` covers (checks stay inside what the run attacked)."""
        counts = [w.n for (n, _), w in self.worst.items() if n == norm]
        return min(counts) if counts else len(self.y)


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


#: Largest difference between a sample's logits computed in one batch and in another
#: (float round-off of batched kernels), relative to the logits' scale.
BATCH_TOLERANCE = 1e-4


@pre_check
def eval_mode_deterministic(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    """The target as the attacks get it: no module left training (not re-set here, so a wrapper
    whose ``eval()`` does not reach its children is caught), the same outputs twice, and a
    sample's outputs independent of the rest of its batch (batch statistics at test time)."""
    name = "eval_mode_deterministic"
    training = [module_name or type(m).__name__ for module_name, m in target.named_modules() if m.training]
    if training:
        return CheckResult(name, False, f"modules still in training mode after eval(): {', '.join(training[:3])}")
    sample = x[:32]
    with torch.no_grad():
        first, second = target.logits(sample), target.logits(sample)
        if target.is_stochastic:
            return CheckResult(name, True, "declared stochastic: attacks must average over randomness (EOT; see eot_for_stochastic_targets)")
        if not torch.equal(first, second):
            diff = (first - second).abs().max().item()
            return CheckResult(name, False, f"two forward passes on the same inputs differ by up to {diff:.3g}: the model is randomised but not declared stochastic")
        halves = torch.cat([target.logits(sample[: len(sample) // 2]), target.logits(sample[len(sample) // 2 :])])
    scale = max(1.0, float(first.abs().max()))
    diff = float((halves - first).abs().max()) if len(first) else 0.0
    if diff > BATCH_TOLERANCE * scale:
        return CheckResult(name, False, f"a sample's outputs change with the other samples in its batch (by up to {diff:.3g}): "
                           "batch statistics at test time (e.g. BatchNorm without running statistics) let an attack move other samples")
    return CheckResult(name, True, "eval mode; repeated forward passes identical; outputs independent of the batch")


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
    """Reads what the base class counted: inputs still outside the threat model after its
    projection (a projection bug), which it scored as the clean inputs instead."""
    bad = [(r.name, r.eps[i], v) for r in ctx.results for i, v in enumerate(r.invalid) if any(v.values())]
    if bad:
        return CheckResult("returned_inputs_valid", False, f"{len(bad)} attack outputs outside the threat model or [0,1] after projection (scored as clean inputs): {bad[:2]}")
    count = sum(len(r.eps) for r in ctx.results)
    return CheckResult("returned_inputs_valid", True, f"all {count} attack outputs within eps + 1e-6, in [0,1] and finite")


def _reference(norm: str, seed: int, effort: Effort) -> Attack:
    """The checks' own white-box attack at ``effort``: built by the registered attack that
    declares :attr:`~.attack.Attack.check_reference` (the first by name if several do)."""
    for entry in ATTACKS:
        if getattr(entry.factory, "check_reference", False):
            return entry.factory.with_effort(norm, seed, effort)
    raise RuntimeError("no registered attack declares check_reference: the checks have no white-box attack to run")


def _subset(ctx: RunContext, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(CHECK_SUBSET, ctx.covered(norm))
    return ctx.x[:k], ctx.y[:k]


def _norms(ctx: RunContext) -> list[str]:
    return sorted({r.threat_model for r in ctx.results if r.adaptive})


#: How far (accuracy) a from-scratch attack at a larger eps may leave more samples robust than at a smaller one.
EPS_SLACK = 0.05


@post_check
def accuracy_non_increasing_in_eps(ctx: RunContext) -> CheckResult | None:
    """Attacks carry broken samples from small to large eps, so their own curves are monotone by
    construction. This check attacks each eps from scratch (margin PGD-10 on the check subset): a
    larger eps that leaves clearly more samples robust means the attack fails where it has more room."""
    details, problems = [], []
    for norm in _norms(ctx):
        values = sorted(ctx.eps.get(norm) or [])
        if len(values) < 2:
            continue
        x, y = _subset(ctx, norm)
        accs = [ctx.attack(_reference(norm, ctx.seed, Effort(steps=10, loss="cw")), x, y, [e]).robust_accuracy[0] for e in values]
        details.append(f"{norm}: " + ", ".join(f"eps={e:g} {100 * a:.1f}%" for e, a in zip(values, accs)))
        problems += [f"{norm} {100 * a2:.1f}% at eps={e2:g} > {100 * a1:.1f}% at eps={e1:g}"
                     for (e1, a1), (e2, a2) in zip(zip(values, accs), zip(values[1:], accs[1:])) if a2 > a1 + EPS_SLACK]
    if not details:
        return None
    if problems:
        return CheckResult("accuracy_non_increasing_in_eps", False, "attacked from scratch at each eps, robust accuracy rises with eps: " + "; ".join(problems[:2]) + " (gradients vanish away from the data?)")
    return CheckResult("accuracy_non_increasing_in_eps", True, "from scratch per eps (margin PGD-10): " + "; ".join(details))


LARGE_EPS = {"Linf": 1.0, "L2": None}  # None: the diameter of the [0,1] box


@post_check
def large_eps_breaks_everything(ctx: RunContext) -> CheckResult | None:
    norms = _norms(ctx) or ["Linf"]
    details = []
    for norm in norms:
        x, y = _subset(ctx, norm)
        eps = LARGE_EPS[norm] or float(x[0].numel() ** 0.5)
        acc = ctx.attack(_reference(norm, ctx.seed, Effort(steps=50, restarts=2)), x, y, [eps]).robust_accuracy[0]
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
#: How far (accuracy) the run's own attacks may stay above the check's 50-step attack before
#: the evaluation counts as too weak (the reported number is lowered to the check's either way).
WEAKER_THAN_CHECK_SLACK = 0.10


def _step_sequence(ctx: RunContext, norm: str, eps: float, loss: str) -> tuple[float, float, float]:
    """Accuracy after a single step, 10 steps, and 50 steps x 2 restarts of PGD with ``loss``."""
    x, y = _subset(ctx, norm)
    single = ctx.attack(_reference(norm, ctx.seed, Effort(steps=1, loss=loss, single_step=True)), x, y, [eps]).robust_accuracy[0]
    short = ctx.attack(_reference(norm, ctx.seed, Effort(steps=10, loss=loss)), x, y, [eps]).robust_accuracy[0]
    long = ctx.attack(_reference(norm, ctx.seed, Effort(steps=50, restarts=2, loss=loss)), x, y, [eps]).robust_accuracy[0]
    return single, short, long


@post_check
def more_steps_never_raise_accuracy(ctx: RunContext) -> CheckResult | None:
    """Single step >= 10 steps >= 50 steps x 2 under the margin loss, and the run's own attacks
    not far above that 50-step attack (their worst case is lowered to it either way)."""
    norms = _norms(ctx)
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
            k = min(CHECK_SUBSET, ctx.covered(norm))
            reported = float(worst.correct[:k].float().mean())
            strongest = min(long for _, _, long in sequences.values())
            if reported > strongest + WEAKER_THAN_CHECK_SLACK:
                failed = True
                details.append(f"{norm} eps={eps:g}: the run's attacks leave {100 * reported:.1f}% of the first {k} samples robust, a 50-step PGD only {100 * strongest:.1f}%: add stronger attacks")
    text = "; ".join(details)
    if failed:
        return CheckResult("more_steps_never_raise_accuracy", False, f"more attack effort changes the verdict ({text}): a sign of gradient masking or too weak an evaluation")
    return CheckResult("more_steps_never_raise_accuracy", True, text)


def _not_stronger_than_white_box(ctx: RunContext, name: str, weaker: list[AttackResult], what: str) -> CheckResult | None:
    """Per sample, on the samples both covered: ``weaker`` attacks must not break samples that
    every white-box attack left standing (beyond one sample or SLACK)."""
    white = [r for r in ctx.results if r.adaptive and r.kind == "white-box"]
    if not weaker or not white:
        return None
    problems, compared = [], 0
    for t in weaker:
        for i, eps in enumerate(t.eps):
            rows = [w.correct[w.eps.index(eps)] for w in white if w.threat_model == t.threat_model and eps in w.eps]
            if not rows:
                continue
            k = min(len(t.correct[i]), *(len(r) for r in rows))
            white_correct = torch.stack([r[:k] for r in rows]).all(0)
            beats = int((white_correct & ~t.correct[i][:k]).sum())
            compared += 1
            if beats > max(1, SLACK * k):
                problems.append(f"{t.name} {t.threat_model} eps={eps:g}: {beats} of {k} samples fooled by it but by no white-box attack")
    if problems:
        return CheckResult(name, False, f"{what} beats the white-box attacks: " + "; ".join(problems[:2]) + " (gradients are masked or the white-box attacks are broken)")
    if not compared:
        return None
    return CheckResult(name, True, f"white-box at least as strong per sample in {compared} comparisons on the samples both covered")


@post_check
def transfer_not_stronger_than_white_box(ctx: RunContext) -> CheckResult | None:
    weaker = [r for r in ctx.results if r.kind == "transfer" or (not r.adaptive and r.kind == "white-box")]
    return _not_stronger_than_white_box(ctx, "transfer_not_stronger_than_white_box", weaker, "a transfer or non-adaptive attack")


@post_check
def query_not_stronger_than_white_box(ctx: RunContext) -> CheckResult | None:
    """A gradient-free attack (Square) that beats gradient attacks per sample is the tell of
    obfuscated gradients (Athalye et al. 2018; AutoAttack's own flag)."""
    weaker = [r for r in ctx.results if r.kind == "query"]
    return _not_stronger_than_white_box(ctx, "query_not_stronger_than_white_box", weaker, "a gradient-free (query) attack")


#: The check fails when the attack breaks less than this fraction of the samples the undefended
#: base model classifies correctly, at the run's largest eps: it would not break anything. (A
#: relative bar: at a small eps even an undefended model keeps part of its accuracy.)
BASE_MIN_BROKEN = 0.1


@post_check
def base_model_falls_to_the_attack(ctx: RunContext) -> CheckResult | None:
    """Carlini et al. 2019: an attack that cannot break the undefended base model says nothing
    about the defense. Runs the run's first white-box attack per threat model on the base model,
    seeded as the run seeded the first chunk (the check's samples)."""
    if ctx.base is None or not ctx.white_box:
        return None
    details, failed = [], False
    for norm in sorted({a.norm for a in ctx.white_box}):
        attack = next(a for a in ctx.white_box if a.norm == norm)
        eps = max(ctx.eps.get(norm) or [_main_eps(ctx, norm)])
        x, y = _subset(ctx, norm)
        clean = float((ctx.base.predict(x) == y).float().mean())
        robust = attack(ctx.base, x, y, [eps], seed=chunk_seed(attack.seed, 0)).robust_accuracy[0]  # seeded as on these samples' chunk
        fails = robust > (1 - BASE_MIN_BROKEN) * clean
        failed |= fails
        details.append(f"{attack.describe()} {norm} eps={eps:g} leaves the undefended base {100 * robust:.1f}% (clean {100 * clean:.1f}%)")
    text = "; ".join(details)
    if failed:
        return CheckResult("base_model_falls_to_the_attack", False, f"the attack does not break the undefended base model ({text}): it is too weak or misconfigured, so the defense's number says nothing")
    return CheckResult("base_model_falls_to_the_attack", True, text)


@post_check
def eot_for_stochastic_targets(ctx: RunContext) -> CheckResult | None:
    """A randomised target attacked with one forward pass per gradient is under-attacked."""
    if not ctx.target.is_stochastic:
        return None
    plain = sorted({r.name for r in ctx.results if r.adaptive and r.kind == "white-box" and int(r.config.get("eot", 1) or 1) <= 1})
    if plain:
        return CheckResult("eot_for_stochastic_targets", False, f"the target is declared stochastic but {', '.join(plain[:3])} ran without EOT: pass eot=K to pgd (or autoattack version=rand)")
    return CheckResult("eot_for_stochastic_targets", True, "every white-box attack averages gradients over the target's randomness (EOT)")


def nothing_to_attack(clean_correct: torch.Tensor) -> CheckResult | None:
    """A failed check when no sample is classified correctly (None otherwise). Attacks only work
    on correctly classified samples, so robust accuracy is then 0% without a single attack:
    the number says nothing about robustness, and the run must not be called reliable. The
    runner adds it to every run, with or without the other checks."""
    if bool(clean_correct.any()):
        return None
    return CheckResult("samples_to_attack", False, f"nothing was attacked: no sample of {len(clean_correct)} is classified correctly (clean accuracy 0%), "
                       "so robust accuracy is 0% without any attack; check the model's preprocessing, label order and number of classes")


def run_pre_checks(target: ClassifierTarget, x: torch.Tensor, y: torch.Tensor) -> list[CheckResult]:
    return [check(target, x, y) for check in PRE_CHECKS]


def run_post_checks(ctx: RunContext) -> list[CheckResult]:
    return [result for check in POST_CHECKS if (result := check(ctx)) is not None]
