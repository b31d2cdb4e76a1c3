"""Every sanity check can fail: each test builds a realistic broken target or attack that the
check must flag (``passed`` False, a plain-words detail, the run marked unreliable with the
check's name among the reasons), and shows the same check passing on the reference
``digits:cnn`` under the same suite. A check that cannot fail is a defect.

One torch thread for the whole module (see ``one_thread`` in conftest.py): the tiny digits
models run many times faster that way on a shared 2-core machine.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from test_checks import QuantisedInput  # zero input gradients everywhere
from torch import nn

from robustbench_peft import checks as checks_module
from robustbench_peft.attack import Attack
from robustbench_peft.options import PluginSpec
from robustbench_peft.registry import ATTACKS, Entry
from robustbench_peft.report import unbits
from robustbench_peft.runner import Runner
from robustbench_peft.suite import Suite
from robustbench_peft.targets import ClassifierTarget

pytestmark = pytest.mark.usefixtures("one_thread")

N = 128
EPS = {"Linf": [0.1, 0.2]}
PGD10 = PluginSpec("pgd", {"steps": "10"})


def run_suite(model, attacks=(PGD10,), eps=EPS, n=N, defenses=None) -> dict:
    kwargs = {"defenses": defenses} if defenses is not None else {}
    suite = Suite(name="checks-can-fail", task="digits", models=(model,), attacks=tuple(attacks), eps=eps, n=n, **kwargs)
    return Runner(suite, progress=False).run().runs[0]


def check_of(run: dict, name: str) -> dict:
    found = [c for c in run["checks"] if c["name"] == name]
    assert found, f"{name} did not run; ran: {[c['name'] for c in run['checks']]}"
    return found[0]


def assert_flagged(run: dict, name: str, phrase: str) -> dict:
    """The check failed with ``phrase`` in its detail, and the run is unreliable because of it."""
    check = check_of(run, name)
    assert check["passed"] is False, check
    assert phrase in check["detail"], check["detail"]
    assert run["reliable"] is False
    assert any(reason.startswith(f"{name}: ") and phrase in reason for reason in run["unreliable_reasons"]), run["unreliable_reasons"]
    return check


def assert_passes(run: dict, name: str) -> dict:
    check = check_of(run, name)
    assert check["passed"] is True, check
    return check


def as_target(module: nn.Module, name: str, **options) -> ClassifierTarget:
    return ClassifierTarget(module, 10, (1, 8, 8), name=name, **options)


# -- eval_mode_deterministic -------------------------------------------------------------------


class NoEvalPropagation(nn.Module):
    """A wrapper whose ``train(mode)`` override forgets to call ``super().train``: ``eval()``
    on the pipeline never reaches the network inside (nor the wrapper's own flag)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def train(self, mode: bool = True) -> "NoEvalPropagation":
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_eval_mode_catches_a_wrapper_that_does_not_propagate_eval(cnn, digits):
    # a new Dropout starts in training mode; the wrapper keeps it there
    broken = as_target(NoEvalPropagation(nn.Sequential(nn.Dropout(0.3), cnn.model)), "no-eval-wrapper")
    broken.eval()
    result = checks_module.eval_mode_deterministic(broken, digits.x_test, digits.y_test)
    assert result.passed is False and "training mode" in result.detail, result.detail
    assert "inner.0" in result.detail  # names the Dropout left training

    run = run_suite(broken)
    assert_flagged(run, "eval_mode_deterministic", "training mode")
    assert_passes(run_suite("digits:cnn"), "eval_mode_deterministic")


def test_eval_mode_catches_batch_statistics_at_test_time(cnn, digits):
    # BatchNorm without running statistics normalises with the batch's own statistics even in eval()
    batch_norm = nn.Sequential(nn.BatchNorm2d(1, affine=False, track_running_stats=False), cnn.model)
    broken = as_target(batch_norm, "batch-statistics")
    result = checks_module.eval_mode_deterministic(broken, digits.x_test, digits.y_test)
    assert result.passed is False, result.detail
    assert "change with the other samples in its batch" in result.detail
    assert not any(m.training for m in broken.modules())  # not a training-mode failure: the batch check caught it

    run = run_suite(broken)
    assert_flagged(run, "eval_mode_deterministic", "batch statistics")
    assert checks_module.eval_mode_deterministic(cnn, digits.x_test, digits.y_test).passed


# -- returned_inputs_valid ---------------------------------------------------------------------


class Overshoot(Attack):
    """Returns candidates three eps away from the input (clipped to [0,1]): only the base
    class's projection brings them back into the threat model."""

    name = "overshoot"

    def perturb(self, model, x, y, eps, generator, referee=None):
        return (x + 3 * eps).clamp(0, 1)


def test_returned_inputs_valid_catches_a_projection_bug(cnn, digits, monkeypatch):
    x, y = digits.x_test[:N], digits.y_test[:N]
    clean = cnn.predict(x) == y
    sound = Overshoot(progress=False)(cnn, x, y, EPS["Linf"])
    assert all(not any(v.values()) for v in sound.invalid)  # the base class projected them
    assert sound.robust_accuracy[-1] < clean.float().mean()  # and they are real attacks after projection

    import robustbench_peft.attack as attack_module

    monkeypatch.setattr(attack_module, "project", lambda x, x_adv, eps, norm: x_adv)  # the bug: nothing projected
    with pytest.warns(RuntimeWarning, match="outside the threat model after projection"):
        result = Overshoot(progress=False)(cnn, x, y, EPS["Linf"])
    # every attacked sample (the clean-correct ones) came back outside the ball and was counted ...
    assert [v["outside_ball"] for v in result.invalid] == [int(clean.sum())] * len(EPS["Linf"])
    # ... and scored as its clean input, not as a fake break
    assert torch.equal(result.correct, clean.expand_as(result.correct))
    ctx = checks_module.RunContext(cnn, x, y, clean, [result], dict(EPS), seed=0)
    check = checks_module.returned_inputs_valid(ctx)
    assert check.passed is False and "outside the threat model" in check.detail, check.detail

    ATTACKS.get("pgd")  # load the built-in plug-ins before adding a temporary one
    monkeypatch.setitem(ATTACKS._entries, "overshoot", Entry("attack", "overshoot", Overshoot, "test attack"))
    with pytest.warns(RuntimeWarning, match="outside the threat model"):
        run = run_suite("digits:cnn", attacks=(PluginSpec("overshoot"),))
    assert_flagged(run, "returned_inputs_valid", "outside the threat model or [0,1] after projection")
    record = run["attacks"]
    assert [r["robust_accuracy"] for r in record] == [run["clean_accuracy"]] * len(EPS["Linf"])
    assert all(r["correct"] == run["clean_correct"] for r in record)

    monkeypatch.undo()
    assert_passes(run_suite("digits:cnn"), "returned_inputs_valid")


# -- accuracy_non_increasing_in_eps -------------------------------------------------------------


class Purifier(nn.Module):
    """Answers like the CNN within Linf ``radius`` of the nearest clean test image, and with that
    image's (constant, gradient-free) CNN logits farther away: gradients vanish off the data."""

    def __init__(self, inner: nn.Module, reference: torch.Tensor, radius: float = 0.12) -> None:
        super().__init__()
        self.inner = inner
        self.radius = radius
        self.register_buffer("reference", reference.flatten(1).clone())
        with torch.no_grad():
            self.register_buffer("reference_logits", inner(reference).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance, nearest = (x.flatten(1)[:, None] - self.reference[None]).abs().amax(-1).min(1)
        near = (distance <= self.radius)[:, None]
        return torch.where(near, self.inner(x), self.reference_logits[nearest])


def test_accuracy_non_increasing_in_eps_catches_gradients_vanishing_away_from_the_data(cnn, digits):
    purifier = as_target(Purifier(cnn.model, digits.x_test), "purifier")
    run = run_suite(purifier)
    check = assert_flagged(run, "accuracy_non_increasing_in_eps", "robust accuracy rises with eps")
    assert "at eps=0.2 >" in check["detail"]
    # the run's own curve is monotone by construction: only attacking each eps from scratch shows it
    own = [r["robust_accuracy"] for r in sorted(run["attacks"], key=lambda r: r["eps"])]
    assert own == sorted(own, reverse=True)
    assert_passes(run_suite("digits:cnn"), "accuracy_non_increasing_in_eps")


# -- large_eps_breaks_everything: tests/test_checks.py::test_checks_flag_gradient_masking ----


# -- more_steps_never_raise_accuracy -------------------------------------------------------------

WEAK_PGD = PluginSpec("pgd", {"steps": "1", "random_start": "false", "rel_step_size": "0.01"})


def test_more_steps_catches_a_too_weak_evaluation_and_lowers_the_worst_case():
    run = run_suite("digits:cnn", attacks=(WEAK_PGD,))
    assert_flagged(run, "more_steps_never_raise_accuracy", "add stronger attacks")
    assert run["lowered_by_checks"], "the checks' stronger attacks must lower the reported number"
    assert all(low["to"] < low["from"] for low in run["lowered_by_checks"])
    worst = {(w["threat_model"], w["eps"]): w for w in run["worst_case"]}
    compared = 0
    for record in run["check_attacks"] + run["attacks"]:
        w = worst.get((record["threat_model"], record["eps"]))
        if w is None:  # e.g. the large-eps check's eps=1, which the suite does not report
            continue
        robust, covered, other = unbits(w["correct"]), unbits(w["covered"]), unbits(record["correct"])
        # per covered sample: robust in the worst case only if this attack left it standing too
        assert all(o for r, c, o in zip(robust, covered, other) if c and r), record["name"]
        compared += 1
    assert compared > len(run["attacks"])  # check attacks were compared, not only the suite's own
    assert_passes(run_suite("digits:cnn"), "more_steps_never_raise_accuracy")


# -- transfer_not_stronger_than_white_box ---------------------------------------------------------


TRANSFER_ATTACKS = (PluginSpec("pgd", {"steps": "10", "n": str(N)}), PluginSpec("transfer", {"n": "64"}))


def test_transfer_not_stronger_catches_masked_gradients_with_different_n(cnn):
    masked = as_target(QuantisedInput(cnn.model), "quantised")
    run = run_suite(masked, attacks=TRANSFER_ATTACKS)
    assert sorted(r["n"] for r in run["attacks"] if r["eps"] == 0.2) == [64, N]  # the two attacks cover different n
    check = assert_flagged(run, "transfer_not_stronger_than_white_box", "beats the white-box attacks")
    assert "of 64 samples fooled by it but by no white-box attack" in check["detail"]
    assert_passes(run_suite("digits:cnn", attacks=TRANSFER_ATTACKS), "transfer_not_stronger_than_white_box")


# -- query_not_stronger_than_white_box ------------------------------------------------------------


class UselessGradient(nn.Module):
    """The CNN's outputs (up to 1e-3) with a finite, non-zero input gradient that points in a
    fixed random direction: informative-looking gradients that lead nowhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("direction", torch.randn(64, 10, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).detach() + 1e-3 * (x.flatten(1) @ self.direction)


QUERY_ATTACKS = (PGD10, PluginSpec("autoattack", {"version": "custom", "attacks": "square", "n_queries": "1000", "n": "32"}))


def test_query_not_stronger_catches_useless_gradients(cnn, digits):
    useless = as_target(UselessGradient(cnn.model), "useless-gradient")
    # the gradients look fine: finite and non-zero, so the gradient check cannot see the problem
    assert checks_module.input_gradients_informative(useless, digits.x_test, digits.y_test).passed
    run = run_suite(useless, attacks=QUERY_ATTACKS, eps={"Linf": [0.1]})
    assert_passes(run, "input_gradients_informative")
    check = assert_flagged(run, "query_not_stronger_than_white_box", "a gradient-free (query) attack beats the white-box attacks")
    assert "of 32 samples fooled by it but by no white-box attack" in check["detail"]
    assert_passes(run_suite("digits:cnn", attacks=QUERY_ATTACKS, eps={"Linf": [0.1]}), "query_not_stronger_than_white_box")


# -- base_model_falls_to_the_attack ---------------------------------------------------------------

VP = (PluginSpec("vp", {"epochs": "1"}),)


def test_base_model_falls_catches_a_misconfigured_attack_on_a_defended_run():
    tiny_steps = PluginSpec("pgd", {"steps": "10", "step_size": "0.00001"})
    run = run_suite("digits:cnn", attacks=(tiny_steps,), defenses=VP)
    assert run["defense"] is not None
    assert_flagged(run, "base_model_falls_to_the_attack", "does not break the undefended base model")
    assert "base_model_falls_to_the_attack" not in {c["name"] for c in run_suite("digits:cnn", attacks=(tiny_steps,))["checks"]}  # bare model: not applicable
    assert_passes(run_suite("digits:cnn", defenses=VP), "base_model_falls_to_the_attack")


# -- eot_for_stochastic_targets -------------------------------------------------------------------


class GaussianInputNoise(nn.Module):
    """Adds N(0, sigma^2) noise to the input on every forward pass (a randomised defense)."""

    def __init__(self, inner: nn.Module, sigma: float = 0.05) -> None:
        super().__init__()
        self.inner = inner
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + self.sigma * torch.randn_like(x))


def test_eot_for_stochastic_targets_catches_attacks_without_eot(cnn):
    noisy = as_target(GaussianInputNoise(cnn.model), "gaussian-noise", is_stochastic=True)
    run = run_suite(noisy, n=64)
    assert_flagged(run, "eot_for_stochastic_targets", "ran without EOT")
    assert "pgd-10" in check_of(run, "eot_for_stochastic_targets")["detail"]
    assert_passes(run_suite(noisy, attacks=(PluginSpec("pgd", {"steps": "10", "eot": "4"}),), n=64), "eot_for_stochastic_targets")
    assert "eot_for_stochastic_targets" not in {c["name"] for c in run_suite("digits:cnn", n=64)["checks"]}  # deterministic: not applicable


# -- every check has a test that makes it fail -----------------------------------------------------

#: Check -> the test that makes it fail (here, or in tests/test_checks.py).
CAN_FAIL = {
    "eval_mode_deterministic": ["test_eval_mode_catches_a_wrapper_that_does_not_propagate_eval",
                                "test_eval_mode_catches_batch_statistics_at_test_time",
                                "test_checks.py::test_checks_flag_undeclared_randomness"],
    "outputs_are_logits": ["test_checks.py::test_probability_outputs_are_refused_and_flagged"],
    "input_gradients_informative": ["test_checks.py::test_checks_flag_gradient_masking"],
    "returned_inputs_valid": ["test_returned_inputs_valid_catches_a_projection_bug"],
    "accuracy_non_increasing_in_eps": ["test_accuracy_non_increasing_in_eps_catches_gradients_vanishing_away_from_the_data"],
    "large_eps_breaks_everything": ["test_checks.py::test_checks_flag_gradient_masking"],
    "more_steps_never_raise_accuracy": ["test_more_steps_catches_a_too_weak_evaluation_and_lowers_the_worst_case"],
    "transfer_not_stronger_than_white_box": ["test_transfer_not_stronger_catches_masked_gradients_with_different_n"],
    "query_not_stronger_than_white_box": ["test_query_not_stronger_catches_useless_gradients"],
    "base_model_falls_to_the_attack": ["test_base_model_falls_catches_a_misconfigured_attack_on_a_defended_run"],
    "eot_for_stochastic_targets": ["test_eot_for_stochastic_targets_catches_attacks_without_eot"],
}


def test_every_check_has_a_test_that_makes_it_fail():
    registered = {fn.__name__ for fn in checks_module.PRE_CHECKS + checks_module.POST_CHECKS}
    assert registered == set(CAN_FAIL), f"checks without a can-fail test: {sorted(registered - set(CAN_FAIL))}"
    here = {name for name, obj in globals().items() if name.startswith("test_") and inspect.isfunction(obj)}
    other = Path(__file__).with_name("test_checks.py").read_text()
    for check, tests in CAN_FAIL.items():
        for test in tests:
            file, _, name = test.rpartition("::")
            assert (f"def {name}(" in other) if file else (name in here), f"{check}: missing test {test}"
