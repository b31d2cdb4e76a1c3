"""Plug-in options are frozen config dataclasses: every plug-in declares one, every option has a
help line, text converts by the field's type, ``None`` means the default, bad options are one
clear error, and ``list NAME`` / ``eval --help-plugin NAME`` print them."""

from __future__ import annotations

import dataclasses

import pytest

from robustbench_peft.cli import main
from robustbench_peft.config import PluginConfig, config_class_of
from robustbench_peft.errors import UserError
from robustbench_peft.options import build
from robustbench_peft.registry import ATTACKS, DEFENSES, PROMPT_ATTACKS, T2I_UNLEARNERS, UNLEARNERS

CONFIGURED = (ATTACKS, DEFENSES, UNLEARNERS, PROMPT_ATTACKS, T2I_UNLEARNERS)


@pytest.mark.parametrize("registry", CONFIGURED, ids=lambda r: r.kind)
def test_every_plugin_has_a_frozen_config_with_a_help_per_option(registry):
    entries = list(registry)
    assert entries
    for entry in entries:
        config_class = config_class_of(entry.factory)
        assert config_class is not None, f"{registry.kind} {entry.name} declares no config_class"
        assert config_class.__dataclass_params__.frozen, entry.name
        for name, _, _, text in config_class.fields_help():
            assert text.strip(), f"{registry.kind} {entry.name}: option {name} has no help"


def test_text_options_convert_by_type_and_none_is_the_default():
    pgd = build(ATTACKS.get("pgd").factory, {"steps": "7", "step_size": "none", "early_stop": "false", "norm": "L2"}, owner="attack pgd")
    assert pgd.config.steps == 7 and pgd.config.step_size is None and pgd.config.early_stop is False and pgd.norm == "L2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        pgd.config.steps = 8  # type: ignore[misc]
    assert pgd.config.to_json()["steps"] == 7


def test_unknown_or_invalid_options_are_clear_errors():
    with pytest.raises(UserError, match="unknown option 'stepz'.*valid options: .*steps"):
        build(ATTACKS.get("pgd").factory, {"stepz": "3"}, owner="attack pgd")
    with pytest.raises(UserError, match="steps=.*not a valid int"):
        build(ATTACKS.get("pgd").factory, {"steps": "many"}, owner="attack pgd")
    with pytest.raises(UserError, match="unlearndiff"):
        build(PROMPT_ATTACKS.get("unlearndiff").factory, {"timesteps": "0"}, owner="prompt attack unlearndiff")
    with pytest.raises(UserError, match="esd: params"):
        build(T2I_UNLEARNERS.get("esd").factory, {"params": "everything"}, owner="text-to-image unlearner esd")


def test_a_plugin_takes_options_or_one_config():
    factory = T2I_UNLEARNERS.get("esd").factory
    by_options = factory(steps=5, seed=1)
    by_config = factory(factory.config_class(steps=5, seed=1))
    assert by_options.config == by_config.config and isinstance(by_config.config, PluginConfig)
    assert "threads" not in by_config.recipe_config()  # speed only: not in the cache key


@pytest.mark.parametrize("command", [["list", "pgd"], ["eval", "--help-plugin", "unlearndiff"]])
def test_list_name_and_help_plugin_print_every_option(command, capsys):
    assert main(command) == 0
    out = capsys.readouterr().out
    registry = ATTACKS if command[-1] == "pgd" else PROMPT_ATTACKS
    for name, _, _, text in config_class_of(registry.get(command[-1]).factory).fields_help():
        assert f"  {name} (" in out and text in out, name


def test_help_of_an_unknown_plugin_is_one_error_line(capsys):
    assert main(["list", "no_such_plugin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no_such_plugin" in err[0]
