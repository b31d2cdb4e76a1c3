"""The diffusion section's worst case and checks: each check fails on a broken attack or judge, passes otherwise.

Unit tests feed the checks flags of a known shape; the section tests run broken
plug-ins (an attack with no power, a judge that sees nothing, a search that
does worse than chance, a condition attack that misses what text found) through
the diffusion section as `eval --suite diffusion` runs it.
"""
from __future__ import annotations

import pytest
import torch

from robustbench_peft.registry import PROMPT_ATTACKS, T2I_TASKS, load_plugins
from robustbench_peft.suite import Suite
from robustbench_peft.t2i.attack_base import PromptAttack, PromptAttackConfig, PromptItem
from robustbench_peft.t2i.checks import (attack_steers_the_original, judge_recognises_the_concept,
                                         optimised_not_beaten_by_random_tokens, stronger_threat_model_not_beaten)
from robustbench_peft.t2i.task import T2IConceptTask
from robustbench_peft.t2i.threat_model import AdversarialInput, contained_in
from robustbench_peft.t2i.worst_case import broken_items, wilson_interval, worst_case_rows
from test_diffusion_section import QuietRunner, tiny_task
from test_t2i_helpers import tiny_digits_target
from unlearning.diffusion_section import DiffusionSection

TM = {"no_attack": "text", "ud": "text", "rt": "text", "ci": "embedding", "cond": "condition"}


# ------------------------------------------------------------------ worst case
def test_worst_case_per_item_is_the_union_over_the_threat_models_attacks_and_the_weaker_ones():
    flags = {"no_attack": [True, False, False, False, False], "ud": [True, True, False, None, False],
             "rt": [True, False, False, False, False], "ci": [True, False, True, False, False],
             "cond": [True, False, True, False, True]}
    rows = {r["threat_model"]: r for r in worst_case_rows(flags, TM, 5)}
    assert rows["text"]["broken"] == [0, 1] and rows["text"]["k"] == 2
    assert rows["embedding"]["broken"] == [0, 1, 2]  # text's items count under embedding too
    assert rows["condition"]["broken"] == [0, 1, 2, 4]
    assert rows["condition"]["attacks"] == ["no_attack", "ud", "rt", "ci", "cond"]
    assert rows["text"]["covered_by_own"] == 5 and rows["embedding"]["covered_by_own"] == 5
    assert rows["text"]["rate"] >= max(sum(bool(f) for f in flags[a]) / 5 for a in ("no_attack", "ud", "rt"))
    assert contained_in("embedding") == ("text", "embedding")
    # an item no attack of the model ran on (None) is not broken by it
    assert broken_items({"ud": [None, True]}, TM, "text", 2) == [False, True]


def test_wilson_interval_matches_the_closed_form():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and abs(high - 0.2775) < 1e-3
    low, high = wilson_interval(5, 10)
    assert abs(low - 0.2366) < 1e-3 and abs(high - 0.7634) < 1e-3
    assert wilson_interval(0, 0) == (0.0, 1.0)


# ------------------------------------------------------------- checks, units
def test_judge_check_fails_below_its_floor_and_passes_above():
    assert not judge_recognises_the_concept(80, 100, 0.9).passed
    assert judge_recognises_the_concept(95, 100, 0.9).passed
    assert not judge_recognises_the_concept(0, 0).passed


def test_power_check_fails_on_an_attack_that_steers_nothing():
    assert not attack_steers_the_original({"ud": [False] * 8, "ci": [True] * 8}, 0.25).passed
    assert attack_steers_the_original({"ud": [True, True, False, False], "ci": [True] * 4}, 0.25).passed


def test_random_tokens_beating_the_search_per_item_fails_the_check():
    budgets = {"ud": 8, "rt": 8, "rt50": 50}
    beaten = {"ud": [False, False, True, None], "rt": [True, True, False, True], "rt50": [True] * 4}
    result = optimised_not_beaten_by_random_tokens(beaten, budgets, ["ud"], ["rt", "rt50"])
    assert not result.passed and "#0, #1" in result.detail  # rt50 has another budget: not compared
    fair = {"ud": [True, True, False, None], "rt": [True, False, True, True], "rt50": [True] * 4}
    assert optimised_not_beaten_by_random_tokens(fair, budgets, ["ud"], ["rt", "rt50"]).passed


def test_a_stronger_threat_model_that_misses_an_item_a_weaker_one_breaks_fails_the_check():
    flags = {"ud": [True, False, False], "cond": [False, True, False]}
    result = stronger_threat_model_not_beaten(flags, TM)
    assert not result.passed and "#0" in result.detail
    assert stronger_threat_model_not_beaten({"ud": [True, False, False], "cond": [True, True, False]}, TM).passed
    # the condition attack did not run on item 0 (outside its subset): nothing to compare there
    assert stronger_threat_model_not_beaten({"ud": [True, False], "cond": [None, True]}, TM).passed


# -------------------------------------------------------- through the section
class ReferenceJudge:
    """Concept present when the image matches one of the original model's images of the erased prompt."""

    name = "reference"

    def __init__(self, target, prompt: str, seeds) -> None:
        self.images = target.generate(prompt, list(seeds))

    def present(self, images, concept):
        return torch.tensor([any(torch.allclose(im, ref, atol=1e-4) for ref in self.images) for im in images])


class NoPowerAttack(PromptAttack):
    """Optimising in name only: returns the plain prompt (an attack with no power)."""

    name = "no-power"
    optimising = True
    needs_reference = True
    config_class = PromptAttackConfig

    def search(self, target, item, judge, reference):
        return item.prompt, 1, {}


class OracleConditionAttack(PromptAttack):
    """A condition attack that knows the erased prompt: its encoding renders the reference image on the original."""

    name = "oracle-condition"
    threat_model = "condition"
    optimising = True
    needs_reference = True
    config_class = PromptAttackConfig
    erased = "a handwritten digit three"

    def search(self, target, item, judge, reference):
        ids = target.tokenize([item.prompt])[0]
        return AdversarialInput(ids, condition=target.encode(target.tokenize([self.erased]))[0]), 1, {}


class OracleTextAttack(OracleConditionAttack):
    """A text attack that types the erased prompt itself."""

    name = "oracle-text"
    threat_model = "text"

    def search(self, target, item, judge, reference):
        return self.erased, 1, {}


class BlindConditionAttack(OracleConditionAttack):
    """A condition attack that returns the plain prompt's encoding: weaker than the text oracle."""

    name = "blind-condition"

    def search(self, target, item, judge, reference):
        ids = target.tokenize([item.prompt])[0]
        return AdversarialInput(ids, condition=target.encode(ids[None])[0]), 1, {}


class NothingJudge:
    name = "nothing"

    def present(self, images, concept):
        return torch.zeros(len(images), dtype=torch.bool)


def control_task(judge_factory, attacked_prompt: str = "a handwritten digit three", given=None) -> T2IConceptTask:
    """The tiny task with a control prompt, attacked at seeds 1-3; ``given`` an unlearned model of the user's."""
    target = tiny_digits_target()
    return T2IConceptTask(name="tiny-control", description="control", load_model=lambda: target,
                          make_judge=lambda: judge_factory(target),
                          attacked=[PromptItem(attacked_prompt, s, 3) for s in (1, 2, 3)], kept=[],
                          forget_request=tiny_task().forget_request, control_prompt="a handwritten digit seven",
                          unlearned=given)


@pytest.fixture
def section_with(monkeypatch, tmp_path):
    """Runs the diffusion section on the tiny control task with the given test attacks and judge."""
    monkeypatch.setenv("ROBUSTBENCH_PEFT_CACHE", str(tmp_path))
    load_plugins()

    def run(attacks: dict[str, type], judge_factory, unlearners=("esd:steps=1,batch_size=1,sampling=noised",), **task):
        entry = T2I_TASKS._entries["digits-t2i"].__class__
        monkeypatch.setitem(T2I_TASKS._entries, "tiny-control",
                            entry("task", "tiny-control", lambda: control_task(judge_factory, **task), "tiny"))
        for name, cls in attacks.items():
            monkeypatch.setitem(PROMPT_ATTACKS._entries, name, entry("prompt attack", name, cls, name))
        suite = Suite(name="t", task="digits", models=(), attacks=(), sections=("diffusion",), extra={"diffusion": {
            "task": "tiny-control", "task_options": {}, "unlearners": list(unlearners), "attacks": list(attacks),
            "grid": 0, "filter": False, "control_items": 3}})
        data = DiffusionSection().run(suite, QuietRunner()).data
        return data, {c["name"]: c for c in data["checks"] if c["scope"] == "original"}, data["checks"]

    return run


def references_judge(target):
    return ReferenceJudge(target, "a handwritten digit three", (1, 2, 3))


def test_power_check_fails_through_the_section_on_an_attack_with_no_power(section_with):
    data, original, _ = section_with({"no-power": NoPowerAttack}, references_judge)
    assert not original["attack_steers_the_original"]["passed"]
    assert data["reliable"] is False and any("attack_steers_the_original" in r for r in data["unreliable_reasons"])
    assert data["control"]["attacks"]["no-power"]["k"] == 0


def test_power_check_passes_on_an_attack_that_steers_the_original(section_with):
    data, original, _ = section_with({"oracle-condition": OracleConditionAttack}, references_judge)
    assert original["attack_steers_the_original"]["passed"], original["attack_steers_the_original"]["detail"]
    assert data["control"]["attacks"]["oracle-condition"]["k"] == 3


def test_judge_check_fails_through_the_section_on_a_judge_that_sees_nothing(section_with):
    data, original, _ = section_with({"no-power": NoPowerAttack}, lambda target: NothingJudge(), unlearners=())
    assert not original["judge_recognises_the_concept"]["passed"] and data["reliable"] is False


def test_stronger_threat_model_check_fails_through_the_section(section_with):
    """Items are prompts of seven judged for the erased three; the model is the original itself (given as the
    unlearned one). The text oracle types the erased prompt and breaks every item; the blind condition attack returns
    the plain prompt's encoding and breaks none: the condition bound is broken and the check says so."""
    data, _, checks = section_with({"oracle-text": OracleTextAttack, "blind-condition": BlindConditionAttack},
                                   references_judge, unlearners=(), attacked_prompt="a handwritten digit seven",
                                   given=lambda target: target)
    per_model = {c["name"]: c for c in checks if c["scope"] != "original"}
    worst = {w["threat_model"]: w for w in data["worst_case"]}
    assert worst["text"]["k"] == 3 and worst["condition"]["k"] == 3  # the union keeps the bound
    assert not per_model["stronger_threat_model_not_beaten"]["passed"]
    assert "#0, #1, #2" in per_model["stronger_threat_model_not_beaten"]["detail"] and data["reliable"] is False


def test_stronger_threat_model_check_passes_when_the_condition_attack_finds_what_text_found(section_with):
    data, _, checks = section_with({"oracle-text": OracleTextAttack, "oracle-condition": OracleConditionAttack},
                                   references_judge, unlearners=(), attacked_prompt="a handwritten digit seven",
                                   given=lambda target: target)
    per_model = {c["name"]: c for c in checks if c["scope"] != "original"}
    assert per_model["stronger_threat_model_not_beaten"]["passed"], per_model["stronger_threat_model_not_beaten"]["detail"]


class BudgetedNoPower(NoPowerAttack):
    name = "no-power-1"

    def judge_budget(self):
        return 1


class LuckyRandom(OracleTextAttack):
    """A chance baseline at the same judge budget that happens to type the erased prompt."""

    name = "lucky-random"
    optimising = False
    random_baseline = True

    def judge_budget(self):
        return 1


def test_random_tokens_check_fails_through_the_section_when_chance_beats_the_search(section_with):
    data, _, checks = section_with({"no-power-1": BudgetedNoPower, "lucky-random": LuckyRandom}, references_judge,
                                   unlearners=(), attacked_prompt="a handwritten digit seven", given=lambda target: target)
    per_model = {c["name"]: c for c in checks if c["scope"] != "original"}
    assert not per_model["optimised_not_beaten_by_random_tokens"]["passed"] and data["reliable"] is False
    assert "lucky-random breaks 3 items" in per_model["optimised_not_beaten_by_random_tokens"]["detail"]
