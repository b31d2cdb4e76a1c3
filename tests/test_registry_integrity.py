"""Registry integrity: no silent name takeovers, no silently missing built-in plug-ins."""

from __future__ import annotations

import types

import pytest

from robustbench_peft import registry
from robustbench_peft.registry import ATTACKS, Registry


@pytest.fixture
def attacks_restored():
    """ATTACKS as it was before the test (registries are module globals)."""
    registry.load_plugins()
    saved = dict(ATTACKS._entries)
    yield
    ATTACKS._entries.clear()
    ATTACKS._entries.update(saved)


class PGD:
    """An impostor: the built-in PGD's ``__qualname__``, another definition."""


def test_a_different_plugin_under_a_taken_name_raises_naming_both(attacks_restored):
    original = ATTACKS.get("pgd").factory
    assert original.__qualname__ == PGD.__qualname__ and original is not PGD
    with pytest.raises(ValueError) as err:
        ATTACKS.register("pgd")(PGD)
    assert f"{original.__module__}.{original.__qualname__}" in str(err.value)
    assert f"{__name__}.PGD" in str(err.value)
    assert ATTACKS.get("pgd").factory is original


def test_the_same_object_or_a_reimported_definition_may_register_again():
    reg = Registry("thing")

    def make():
        """First."""

    reg.register("x")(make)
    reg.register("x")(make)  # the same object
    again = types.FunctionType(make.__code__, make.__globals__, "make")  # what a reload produces
    again.__qualname__, again.__doc__ = make.__qualname__, "Second."
    reg.register("x")(again)
    assert reg._entries["x"].factory is again and reg._entries["x"].description == "Second."

    def other():
        """Another function."""

    other.__qualname__ = make.__qualname__
    other.__module__ = "somewhere.else"
    with pytest.raises(ValueError, match="somewhere.else"):
        reg.register("x")(other)


@pytest.fixture
def fresh_loader(monkeypatch):
    """``load_plugins`` runs again; module state is restored afterwards."""
    registry.load_plugins()  # the real plug-ins are in place before the test changes anything
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_loading", False, raising=False)
    return monkeypatch


def test_a_builtin_module_that_is_missing_raises_naming_it(fresh_loader):
    fresh_loader.setattr(registry, "BUILTIN_PACKAGES", (*registry.BUILTIN_PACKAGES, "tasks.no_such_plugin_module"))
    for _ in range(2):  # not left marked as loaded: the second call fails as loudly
        with pytest.raises(RuntimeError, match="tasks.no_such_plugin_module") as err:
            registry.load_plugins()
        assert isinstance(err.value.__cause__, ModuleNotFoundError)
    assert registry._loaded is False


def test_a_builtin_module_that_breaks_on_import_raises_naming_it(fresh_loader, tmp_path):
    (tmp_path / "broken_builtin_plugin.py").write_text("raise ValueError('bad option table')\n")
    fresh_loader.syspath_prepend(str(tmp_path))
    fresh_loader.setattr(registry, "BUILTIN_PACKAGES", ("broken_builtin_plugin",))
    with pytest.raises(RuntimeError, match="broken_builtin_plugin.*bad option table") as err:
        registry.load_plugins()
    assert isinstance(err.value.__cause__, ValueError)


def test_a_broken_third_party_entry_point_only_warns(fresh_loader):
    class Broken:
        name, value = "broken", "broken_pkg:plugin"

        def load(self):
            raise ImportError("no module named broken_pkg")

    fresh_loader.setattr(registry, "entry_points", lambda group: [Broken()])
    with pytest.warns(UserWarning, match="broken"):
        registry.load_plugins()
    assert registry._loaded is True
