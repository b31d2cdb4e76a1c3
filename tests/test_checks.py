"""Sanity checks flag a gradient-masking model and pass on the reference CNN."""

from __future__ import annotations

import torch
from torch import nn

from robustbench_peft.options import PluginSpec
from robustbench_peft.runner import Runner
from robustbench_peft.suite import Suite
from robustbench_peft.targets import ClassifierTarget


class QuantisedInput(nn.Module):
    """Rounds pixels to 4 levels before the real network: zero input gradients everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 3) / 3)


class Probabilities(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).softmax(1)


SUITE = Suite(
    name="checks-test",
    task="digits",
    models=("digits:cnn",),
    attacks=(PluginSpec("pgd", {"steps": "10"}),),
    eps={"Linf": [0.1, 0.2]},
    n=128,
)


def run_with(model) -> dict:
    return Runner(SUITE.with_overrides(models=(model,)), progress=False).run().runs[0]


def by_name(run: dict) -> dict[str, dict]:
    return {c["name"]: c for c in run["checks"]}


def test_checks_pass_on_reference_cnn():
    run = run_with("digits:cnn")
    assert run["reliable"], run["unreliable_reasons"]
    names = set(by_name(run))
    assert {"eval_mode_deterministic", "outputs_are_logits", "input_gradients_informative", "returned_inputs_valid",
            "accuracy_non_increasing_in_eps", "large_eps_breaks_everything", "more_steps_never_raise_accuracy"} <= names


def test_checks_flag_gradient_masking(cnn):
    masked = ClassifierTarget(QuantisedInput(cnn.model), 10, (1, 8, 8), name="quantised")
    run = run_with(masked)
    checks = by_name(run)
    assert not run["reliable"]
    assert not checks["input_gradients_informative"]["passed"]
    assert not checks["large_eps_breaks_everything"]["passed"]
    assert any("input_gradients_informative" in reason for reason in run["unreliable_reasons"])


def test_probability_outputs_are_refused_and_flagged(cnn, digits):
    import pytest

    from robustbench_peft.checks import outputs_are_logits
    from robustbench_peft.errors import UserError

    softmaxed = ClassifierTarget(Probabilities(cnn.model), 10, (1, 8, 8), name="softmaxed")
    with pytest.raises(UserError, match="probabilities"):
        run_with(softmaxed)
    assert not outputs_are_logits(softmaxed, digits.x_test, digits.y_test).passed
    assert outputs_are_logits(cnn, digits.x_test, digits.y_test).passed


class AlwaysDropout(nn.Module):
    """Applies dropout even in eval mode: a randomised model that is not declared stochastic."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(nn.functional.dropout(x, 0.5, training=True))


def test_checks_flag_undeclared_randomness(cnn, digits):
    from robustbench_peft.checks import eval_mode_deterministic

    result = eval_mode_deterministic(ClassifierTarget(AlwaysDropout(cnn.model), 10, (1, 8, 8), name="random"), digits.x_test, digits.y_test)
    assert not result.passed and "differ" in result.detail
    assert eval_mode_deterministic(cnn, digits.x_test, digits.y_test).passed
