"""PGD correctness: threat model, monotonicity in eps, strength vs an independent PGD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attacks.pgd import PGD
from robustbench_peft.threat_model import distance


def reference_pgd(model, x, y, eps, steps=10, alpha=None):
    """A plain 10-step Linf PGD written independently of the suite (Madry et al.)."""
    alpha = alpha or 2.5 * eps / steps
    gen = torch.Generator().manual_seed(123)
    x_adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, x_adv)[0]
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def test_robust_accuracy_falls_with_eps_and_reaches_zero(cnn, digits):
    x, y = digits.test_subset(200)
    eps = [0.02, 0.05, 0.1, 0.2, 1.0]
    result = PGD(steps=20, progress=False)(cnn, x, y, eps)
    acc = result.robust_accuracy
    assert all(a >= b for a, b in zip(acc, acc[1:])), acc
    assert acc[0] > acc[3], acc
    assert acc[-1] == 0.0
    # per sample: broken at small eps implies broken at every larger eps
    for i in range(len(eps) - 1):
        assert not (result.correct[i + 1] & ~result.correct[i]).any()


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 1.0)])
def test_outputs_respect_threat_model(cnn, small_batch, norm, eps):
    x, y = small_batch
    result = PGD(norm=norm, steps=10, progress=False)(cnn, x, y, [eps])
    x_adv = result.x_adv[0]
    assert (distance(x, x_adv, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # re-measured accuracy equals a fresh prediction on the returned inputs
    assert torch.equal(result.correct[0], cnn.predict(x_adv) == y)


def test_pgd50_restarts_never_weaker_than_independent_pgd10(cnn, digits):
    x, y = digits.test_subset(300)
    for eps in (0.05, 0.1):
        reference_correct = reference_pgd(cnn, x, y, eps)
        ours = PGD(steps=50, restarts=5, progress=False)(cnn, x, y, [eps]).correct[0]
        assert ours.float().mean() <= reference_correct.float().mean()


@pytest.mark.parametrize("loss", ["ce", "cw", "dlr"])
def test_losses_and_targeted(cnn, small_batch, loss):
    x, y = small_batch
    untargeted = PGD(loss=loss, steps=20, progress=False)(cnn, x, y, [0.2])
    assert untargeted.robust_accuracy[0] < 0.5
    targeted = PGD(loss=loss, steps=30, targeted=True, target_choice="next", progress=False)(cnn, x, y, [0.3])
    hit = cnn.predict(targeted.x_adv[0]) == (y + 1) % 10
    assert hit.float().mean() > 0.5


def test_same_seed_same_numbers_and_schedules(cnn, small_batch):
    x, y = small_batch
    a = PGD(steps=10, seed=3, schedule="cosine", progress=False)(cnn, x, y, [0.08])
    b = PGD(steps=10, seed=3, schedule="cosine", progress=False)(cnn, x, y, [0.08])
    assert torch.equal(a.x_adv[0], b.x_adv[0])
    step = PGD(steps=10, seed=3, schedule="step", progress=False)(cnn, x, y, [0.08])
    clean = float((cnn.predict(x) == y).float().mean())
    assert step.robust_accuracy[0] < clean - 0.1  # the step schedule still attacks
    assert not torch.equal(step.x_adv[0], a.x_adv[0])  # and takes other steps than cosine


def test_early_stop_spends_no_effort_on_broken_samples(cnn, small_batch):
    x, y = small_batch
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            calls.append(len(z))
            return self.inner(z)

    from robustbench_peft.targets import ClassifierTarget

    counted = ClassifierTarget(Counting(cnn), 10, (1, 8, 8), name="counted")
    PGD(steps=20, progress=False)(counted, x, y, [0.3])
    # forward sizes during the attack shrink as samples break
    attack_calls = calls[1:-1]
    assert attack_calls[-1] < attack_calls[0]


class CountingForward(torch.nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, z):
        self.calls.append(len(z))
        return self.inner(z)


def test_broken_samples_hand_their_slot_to_the_next_sample(cnn, digits):
    from robustbench_peft.targets import ClassifierTarget

    x, y = digits.test_subset(200)
    calls: list[int] = []
    counted = ClassifierTarget(CountingForward(cnn, calls), 10, (1, 8, 8), name="counted")
    result = PGD(steps=20, batch_size=32, progress=False)(counted, x, y, [0.1])
    assert sum(calls[:7]) == sum(calls[-7:]) == len(x)  # clean prediction and re-measurement, 7 batches each
    attack_calls = calls[7:-7]
    # full batches while samples wait; once the last one has entered, the batch only shrinks,
    # for at most as many steps as a sample has
    first_short = next(i for i, size in enumerate(attack_calls) if size < 32)
    tail = attack_calls[first_short:]
    assert set(attack_calls[:first_short]) == {32}
    assert all(a >= b for a, b in zip(tail, tail[1:])) and len(tail) <= 20
    standing = int((cnn.predict(x) == y).sum())
    assert sum(attack_calls) < 0.8 * 20 * standing  # no effort spent on broken samples
    assert result.robust_accuracy[0] < 0.8


@pytest.mark.parametrize("options", [
    dict(norm="Linf", loss="ce"),
    dict(norm="Linf", loss="cw", schedule="cosine", momentum=0.9),
    dict(norm="L2", loss="dlr", schedule="step", targeted=True, target_choice="next"),
])
def test_refilled_batches_equal_one_batch_per_sample(cnn, digits, options):
    """Samples at different steps share a batch: each keeps its own step, schedule and momentum."""
    x, y = digits.test_subset(120)
    eps = 1.0 if options["norm"] == "L2" else 0.1
    small = PGD(steps=15, batch_size=16, random_start=False, progress=False, **options)(cnn, x, y, [eps])
    whole = PGD(steps=15, batch_size=1024, random_start=False, progress=False, **options)(cnn, x, y, [eps])
    assert torch.equal(small.correct, whole.correct)
    assert torch.allclose(small.x_adv[0], whole.x_adv[0], atol=1e-5)


def test_misclassified_samples_count_as_broken_without_attack(cnn, small_batch):
    x, y = small_batch
    wrong = (y + 1) % 10
    result = PGD(steps=5, progress=False)(cnn, x, wrong, [0.05])
    clean_correct = cnn.predict(x) == wrong
    assert not (result.correct[0] & ~clean_correct).any()


def test_l2_large_eps_breaks_everything(cnn, small_batch):
    x, y = small_batch
    assert PGD(norm="L2", steps=30, progress=False)(cnn, x, y, [8.0]).robust_accuracy[0] == 0.0
