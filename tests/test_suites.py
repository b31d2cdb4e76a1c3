"""Suites as data: the default covers every capability; overrides; runner-level attack options; cost plot."""

from __future__ import annotations

import pytest

from robustbench_peft.errors import UserError
from robustbench_peft.options import PluginSpec
from robustbench_peft.registry import ATTACKS, DEFENSES, SUITES
from robustbench_peft.render import defense_table, efficiency_plot, main_worst_case
from robustbench_peft.report import Report
from robustbench_peft.runner import prepare_attack
from robustbench_peft.section import SECTIONS as SECTION_RUNNERS


def test_default_suite_covers_every_classifier_capability():
    suite = SUITES.get("digits").factory()
    attacks = {spec.name for spec in suite.attacks}
    assert {"pgd", "autoattack", "transfer"} <= attacks
    assert any(spec.options.get("mode") == "nonadaptive" for spec in suite.attacks)
    assert {spec.options.get("norm", "Linf") for spec in suite.attacks} == {"Linf", "L2"}
    defenses = [(spec.name, spec.options.get("scope")) for spec in suite.defenses]
    for name in ("none", "vp", "uavp", "cavp"):
        assert (name, None) in defenses
    for scope in ("full", "linear", "lora"):
        assert ("advft", scope) in defenses
    assert "unlearning" in suite.sections and all(name in SECTION_RUNNERS for name in suite.sections)
    for spec in suite.attacks:
        prepare_attack(spec, seed=0, batch_size=64, progress=False)  # every option is valid
    for spec in suite.defenses:
        if spec.name != "none":
            DEFENSES.get(spec.name)


def test_other_task_or_model_drops_suite_specific_defenses_sections_and_eps():
    suite = SUITES.get("digits").factory()
    other_model = suite.with_overrides(models=("digits:surrogate",))
    assert other_model.defenses == (PluginSpec("none"),) and other_model.sections == ()
    assert other_model.eps == suite.eps
    other_task = suite.with_overrides(task="cifar10")
    assert other_task.eps is None and other_task.defenses == (PluginSpec("none"),)
    chosen = suite.with_overrides(models=("digits:surrogate",), defenses=(PluginSpec("vp"),))
    assert chosen.defenses == (PluginSpec("vp"),)
    same = suite.with_overrides(models=tuple(suite.models), attacks=(PluginSpec("pgd"),))
    assert same.defenses == suite.defenses and same.sections == suite.sections


def test_runner_eps_option_restricts_an_attack():
    prepared = prepare_attack(PluginSpec("pgd", {"eps": "0.2+0.05", "n": "8"}), seed=0, batch_size=64, progress=False)
    assert prepared.eps == [0.2, 0.05] and prepared.n == 8
    assert "eps" not in prepared.attack.config()
    for bad in ("-1", "abc", "0"):
        with pytest.raises(UserError):
            prepare_attack(PluginSpec("pgd", {"eps": bad}), seed=0, batch_size=64, progress=False)
    assert "pgd" in ATTACKS


def _run(label: str | None, params: int, worst: list[tuple[str, float, float]]) -> dict:
    defense = None if label is None else {"label": label, "trainable_parameters": params, "stored_bytes": 4 * params, "fit_seconds": 1.0, "forward_passes": 1}
    return {
        "task": "digits", "model": {"spec": "digits:cnn"}, "defense": defense, "n": 10, "clean_accuracy": 0.9, "reliable": True,
        "worst_case": [{"threat_model": n, "eps": e, "robust_accuracy": a, "n": 10} for n, e, a in worst],
    }


def test_efficiency_plot_and_cost_table():
    curve = [("Linf", 0.05, 0.8), ("Linf", 0.1, 0.5), ("Linf", 0.2, 0.1), ("L2", 1.0, 0.3)]
    runs = [_run(None, 0, curve), _run("cavp", 480, [("Linf", 0.1, 0.6)]), _run("advft-lora-pgd-at", 1234, [("Linf", 0.1, 0.7)])]
    report = Report(runs=runs, environment={}, suite={"name": "t"}, created="now")
    assert main_worst_case(runs[0]) == {"threat_model": "Linf", "eps": 0.1, "robust_accuracy": 0.5, "n": 10}
    header, rows = defense_table(report)
    assert [row[1] for row in rows] == ["none", "cavp", "advft-lora-pgd-at"]
    assert rows[1][2] == 480 and rows[2][-1] == "70.0 (Linf, 0.1, n=10)"
    png = efficiency_plot(report)
    assert png is not None and png.startswith(b"\x89PNG")
    bare = Report(runs=[runs[0]], environment={}, suite={"name": "t"}, created="now")
    assert efficiency_plot(bare) is None and defense_table(bare)[1] == []
