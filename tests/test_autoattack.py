"""The AutoAttack adapter: agreement with the library, worst case, few classes, both backends."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from attacks.autoattack import AutoAttackAdapter, adjust_components
from attacks.autoattack_backends import BACKENDS
from attacks.autoattack_log import parse_messages
from robustbench_peft.errors import UserError
from robustbench_peft.options import PluginSpec
from robustbench_peft.registry import ATTACKS
from robustbench_peft.report import unbits
from robustbench_peft.runner import Runner
from robustbench_peft.suite import Suite
from robustbench_peft.targets import ClassifierTarget

EPS = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")

N = 32
CUSTOM = ["apgd-ce", "apgd-t"]


def library_correct(model, x, y, *, version: str, attacks: list[str] | None, eps: float = EPS, seed: int = 0) -> torch.Tensor:
    """pyautoattack called directly, as its README shows; per-sample correctness on its output."""
    from pyautoattack import AutoAttack

    with torch.random.fork_rng(devices=[]):
        adversary = AutoAttack(model, norm="Linf", eps=eps, version=version, seed=seed, device="cpu", attacks=attacks)
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=250)
    return model.predict(x_adv) == y


def suite_run(attack: PluginSpec, n: int = N, eps: float = EPS):
    suite = Suite(
        name="aa-test",
        task="digits",
        models=("digits:cnn",),
        attacks=(PluginSpec("pgd", {"steps": 20}), attack),
        eps={"Linf": [eps]},
        n=n,
        checks=False,
    )
    return Runner(suite, progress=False).run().runs[0]


@pytest.fixture(scope="module")
def custom_run(cnn):
    return suite_run(PluginSpec("autoattack", {"version": "custom", "attacks": "+".join(CUSTOM)}))


def _record(run, prefix: str):
    return next(a for a in run["attacks"] if a["name"].startswith(prefix))


def test_worst_case_never_above_pgd(custom_run):
    pgd, aa = _record(custom_run, "pgd"), _record(custom_run, "autoattack")
    worst = custom_run["worst_case"][0]
    pgd_correct, aa_correct, worst_correct = (torch.tensor(unbits(r["correct"])) for r in (pgd, aa, worst))
    assert not (worst_correct & ~pgd_correct).any()
    assert torch.equal(worst_correct, pgd_correct & aa_correct)
    assert worst["robust_accuracy"] <= pgd["robust_accuracy"]
    # APGD-CE with restarts + APGD-T is the stronger attack on this undefended model
    assert aa["robust_accuracy"] <= pgd["robust_accuracy"]
    assert aa["robust_accuracy"] < custom_run["clean_accuracy"]


def test_suite_matches_library_called_directly(custom_run, cnn, digits):
    x, y = digits.x_test[:N], digits.y_test[:N]
    direct = library_correct(cnn, x, y, version="custom", attacks=CUSTOM)
    record = _record(custom_run, "autoattack")
    assert torch.equal(torch.tensor(unbits(record["correct"])), direct)
    assert record["robust_accuracy"] == pytest.approx(float(direct.float().mean()))


def test_details_accuracy_after_each_component(custom_run):
    record = _record(custom_run, "autoattack")
    details = record["details"]
    assert details["backend"] in BACKENDS and details["components"] == CUSTOM
    (entry,) = details["per_eps"]
    assert entry["eps"] == EPS
    names = [row["component"] for row in entry["accuracy_after"]]
    assert names == ["start", *CUSTOM]
    accuracies = [row["accuracy"] for row in entry["accuracy_after"]]
    assert accuracies == sorted(accuracies, reverse=True)  # a cascade never raises accuracy
    assert accuracies[0] == pytest.approx(custom_run["clean_accuracy"])
    assert accuracies[-1] == pytest.approx(record["robust_accuracy"])  # agrees with the re-measured number
    assert entry["accuracy_after"][1]["robust"] < entry["accuracy_after"][0]["robust"]


def test_same_seed_same_numbers(cnn, digits):
    x, y = digits.x_test[:8], digits.y_test[:8]
    make = lambda: ATTACKS.create("autoattack", version="custom", attacks=["apgd-ce"], seed=3, progress=False)  # noqa: E731
    first, second = make()(cnn, x, y, [0.1, 0.2]), make()(cnn, x, y, [0.1, 0.2])
    assert torch.equal(first.correct, second.correct)
    assert all(torch.equal(a, b) for a, b in zip(first.x_adv, second.x_adv))
    assert first.details["per_eps"] == second.details["per_eps"] or _same_but_seconds(first.details, second.details)


def _same_but_seconds(a: dict, b: dict) -> bool:
    strip = lambda d: [[{k: v for k, v in row.items() if k != "seconds"} for row in e["accuracy_after"]] for e in d["per_eps"]]  # noqa: E731
    return strip(a) == strip(b)


def few_class_target(n_classes: int, x: torch.Tensor) -> tuple[ClassifierTarget, torch.Tensor]:
    """A seeded linear model; labels are its own predictions, so every sample starts correct."""
    torch.manual_seed(n_classes)
    target = ClassifierTarget(nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes)), n_classes, (1, 8, 8), name=f"linear-{n_classes}")
    return target, target.predict(x)


@pytest.mark.parametrize(
    "n_classes, standard, runnable",
    [(3, ["apgd-ce", "apgd-dlr", "fab", "square"], ["apgd-ce", "apgd-dlr", "fab"]), (2, ["apgd-ce", "fab", "square"], ["apgd-ce", "fab"])],
)
def test_few_classes_do_not_crash(n_classes, standard, runnable, digits):
    x = digits.x_test[:12]
    target, y = few_class_target(n_classes, x)
    plan = ATTACKS.create("autoattack", progress=False).plan(n_classes)
    assert plan["components"] == standard
    assert plan["n_target_classes"] == n_classes - 1
    # every component but Square (5000 queries, class-count agnostic), targeted and DLR ones included
    attack = ATTACKS.create("autoattack", version="custom", attacks=["apgd-ce", "apgd-dlr", "apgd-t", "fab-t"], progress=False)
    result = attack(target, x, y, [0.02, 0.5])
    details = result.details
    assert details["components"] == runnable
    assert details["adjustments"], "the changes made for few classes are reported"
    assert not any("classes" in w for w in details["warnings"]), details["warnings"]  # no class-count complaints left
    ran = [row["component"] for row in details["per_eps"][0]["accuracy_after"]]
    assert ran == ["start", *runnable]
    assert result.robust_accuracy[1] <= result.robust_accuracy[0]
    assert result.robust_accuracy[1] < 1.0


def test_adjust_components_table():
    standard = ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert adjust_components(standard, 10) == (standard, [])
    assert adjust_components(standard, 4)[0] == standard
    assert adjust_components(standard, 3)[0] == ["apgd-ce", "apgd-dlr", "fab", "square"]
    assert adjust_components(standard, 2)[0] == ["apgd-ce", "fab", "square"]
    assert adjust_components(["apgd-t"], 2)[0] == ["apgd-ce"]


def test_parse_messages_reads_counts_and_warnings():
    lines = [
        "apgd-ce - 1/2 - tensor(3) out of 250 successfully perturbed",
        "apgd-ce - 2/2 - 4 out of 10 successfully perturbed",
        "robust accuracy after APGD-CE: 50.00% (total time 1.5 s)",
        "Warning: it seems to be a randomized defense!",
    ]
    parsed = parse_messages(lines)
    assert parsed.fooled == {"apgd-ce": 7}
    assert parsed.seconds == {"apgd-ce": 1.5}
    assert parsed.warnings == ["it seems to be a randomized defense!"]


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"version": "fast"}, "unknown autoattack version"),
        ({"version": "custom"}, "needs attacks"),
        ({"attacks": ["apgd-ce"]}, "only used with version=custom"),
        ({"version": "custom", "attacks": ["apgd-x"]}, "unknown AutoAttack component"),
        ({"n_target_classes": 0}, "n_target_classes"),
        ({"backend": "foolbox"}, "unknown autoattack backend"),
    ],
)
def test_user_errors(options, fragment):
    with pytest.raises(UserError, match=fragment):
        AutoAttackAdapter(**options)


def test_cli_options_convert():
    from robustbench_peft.options import build, parse_plugin_spec

    spec = parse_plugin_spec("autoattack:version=custom,attacks=apgd-ce+fab-t,n_target_classes=3,seed=5")
    attack = build(AutoAttackAdapter, spec.options, owner="attack autoattack")
    assert attack.attacks == ["apgd-ce", "fab-t"] and attack.n_target_classes == 3 and attack.seed == 5


# -- the upstream backend, through a stand-in module with upstream's API ------------------------
def _fake_upstream() -> types.ModuleType:
    """Upstream's interface (keyword names, log_path, bs=, prints) over pyautoattack's code."""
    import pyautoattack

    class UpstreamLogger:
        def __init__(self, log_path):
            self.log_path = log_path

        def log(self, text):
            print(text)
            with open(self.log_path, "a") as fh:
                fh.write(text + "\n")

        def debug(self, text):
            self.log(text)

        info = debug

        def warning(self, text):
            self.log("Warning: " + text)

    class AutoAttack(pyautoattack.AutoAttack):
        def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=[], version="standard", device="cuda", log_path=None):
            super().__init__(model, norm=norm, eps=eps, seed=seed, version=version, device=device, attacks=attacks_to_run or None)
            self.logger = UpstreamLogger(log_path)

        def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False):
            x_adv, y_adv = super().run_standard_evaluation(x_orig, y_orig, batch_size=bs)
            return (x_adv, y_adv) if return_labels else x_adv

    module = types.ModuleType("autoattack")
    module.AutoAttack = AutoAttack
    module.__version__ = "upstream-test"
    return module


def test_upstream_backend_preferred_and_equivalent(monkeypatch, cnn, digits, capsys):
    x, y = digits.x_test[:12], digits.y_test[:12]
    make = lambda backend: ATTACKS.create("autoattack", version="custom", attacks=["apgd-ce"], backend=backend, progress=False)  # noqa: E731
    reference = make("pyautoattack")(cnn, x, y, [EPS])
    monkeypatch.setitem(sys.modules, "autoattack", _fake_upstream())
    attack = make("auto")
    assert attack.backend_name == "autoattack"
    result = attack(cnn, x, y, [EPS])
    assert "successfully perturbed" not in capsys.readouterr().out  # upstream's prints are kept off the terminal
    assert torch.equal(result.correct, reference.correct)
    rows = result.details["per_eps"][0]["accuracy_after"]
    assert [r["robust"] for r in rows] == [r["robust"] for r in reference.details["per_eps"][0]["accuracy_after"]]
    assert result.details["backend"] == "autoattack"


def test_missing_backend_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "autoattack", None)
    with pytest.raises(UserError, match="not installed"):
        AutoAttackAdapter(backend="autoattack")


@pytest.mark.slow
def test_standard_version_matches_library(cnn, digits):
    n = 32
    run = suite_run(PluginSpec("autoattack", {}), n=n)
    record = _record(run, "autoattack")
    assert record["details"]["components"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    direct = library_correct(cnn, digits.x_test[:n], digits.y_test[:n], version="standard", attacks=None)
    assert torch.equal(torch.tensor(unbits(record["correct"])), direct)

