"""Transfer attacks: never stronger than white-box, per-pair details, union semantics, CLI path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from attacks.transfer import ENSEMBLE, Transfer
from robustbench_peft.errors import UserError
from robustbench_peft.registry import ATTACKS
from robustbench_peft.targets import ClassifierTarget

N = 128


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def linf_eps(digits):
    return digits.default_eps["Linf"]


@pytest.fixture(scope="module")
def transfer_and_pgd(cnn, digits, linf_eps):
    x, y = digits.x_test[:N], digits.y_test[:N]
    transfer = ATTACKS.create("transfer", progress=False)(cnn, x, y, linf_eps)
    pgd = ATTACKS.create("pgd", steps=20, progress=False)(cnn, x, y, linf_eps)
    return transfer, pgd


def test_transfer_never_below_white_box(transfer_and_pgd):
    transfer, pgd = transfer_and_pgd
    assert transfer.adaptive is False
    for i, eps in enumerate(transfer.eps):
        assert transfer.robust_accuracy[i] >= pgd.robust_accuracy[i], f"eps={eps}"
        transfer_only = int((pgd.correct[i] & ~transfer.correct[i]).sum())
        assert transfer_only <= max(1, 0.02 * N), f"eps={eps}: {transfer_only} samples fooled by transfer but not PGD"
    # and it does something: at the largest eps transfer fools most samples
    assert transfer.robust_accuracy[-1] < 0.5


def test_per_pair_details(transfer_and_pgd, linf_eps):
    transfer, _ = transfer_and_pgd
    details = transfer.details
    json.dumps(details, allow_nan=False)
    expected_pairs = [f"digits:surrogate/{m}" for m in ("pgd", "mifgsm", "di")]
    assert details["pairs"] == expected_pairs  # one surrogate: no separate ensemble source
    assert [e["eps"] for e in details["per_eps"]] == sorted(linf_eps)
    for i, entry in enumerate(details["per_eps"]):
        pairs = entry["pairs"]
        assert list(pairs) == expected_pairs
        assert entry["worst_pair"] in pairs and entry["worst_pair_accuracy"] == min(pairs.values())
        # the per-sample union is at least as strong as its strongest pair ...
        assert entry["union_accuracy"] <= entry["worst_pair_accuracy"] + 1e-12
        # ... and is exactly what the base class re-measured on the returned inputs
        assert entry["union_accuracy"] == pytest.approx(transfer.robust_accuracy[transfer.eps.index(entry["eps"])], abs=1e-6)
    first = details["per_eps"][0]
    assert all(0.0 <= acc <= 1.0 for acc in first["pairs"].values())
    assert first["pairs"] != {p: 1.0 for p in expected_pairs}


def test_ensemble_source_and_determinism(cnn, surrogate, digits):
    x, y = digits.x_test[:32], digits.y_test[:32]
    make = lambda: ATTACKS.create("transfer", surrogates=["digits:surrogate", "digits:cnn"], methods=["pgd", "mifgsm"], steps=5, progress=False)  # noqa: E731
    first, second = make()(cnn, x, y, [0.1]), make()(cnn, x, y, [0.1])
    assert torch.equal(first.x_adv[0], second.x_adv[0])
    pairs = first.details["pairs"]
    assert pairs == [f"{s}/{m}" for s in ("digits:surrogate", "digits:cnn", ENSEMBLE) for m in ("pgd", "mifgsm")]
    assert set(first.details["per_eps"][0]["pairs"]) == set(pairs)
    # the target itself as a "surrogate" is white-box: never weaker than the cross-architecture surrogate
    accs = first.details["per_eps"][0]["pairs"]
    assert accs["digits:cnn/pgd"] <= accs["digits:surrogate/pgd"]


def test_no_ensemble_option(cnn, digits):
    attack = ATTACKS.create("transfer", surrogates=["digits:surrogate", "digits:cnn"], methods=["pgd"], ensemble=False, steps=2, progress=False)
    assert ENSEMBLE not in " ".join(attack.pairs())


class Detector(nn.Module):
    """Predicts the label of the nearest clean image; with ``flip``, a wrong label once it is perturbed."""

    def __init__(self, clean: torch.Tensor, labels: torch.Tensor, flip: bool) -> None:
        super().__init__()
        self.register_buffer("clean", clean.flatten(1))
        self.register_buffer("labels", labels)
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = torch.cdist(x.flatten(1), self.clean)
        nearest = distance.argmin(1)
        moved = distance.gather(1, nearest[:, None]).squeeze(1) > 1e-6
        pred = torch.where(moved & self.flip, (self.labels[nearest] + 1) % 10, self.labels[nearest])
        return nn.functional.one_hot(pred, 10).float() * 10


@pytest.mark.parametrize("flip, expected_accuracy", [(True, 0.0), (False, 1.0)])
def test_union_is_first_fooling_pair_else_last(flip, expected_accuracy, surrogate, digits):
    """MI-FGSM draws no random numbers, so its candidate can be recomputed exactly."""
    from attacks.pgd import PGD

    x, y = digits.x_test[:8], digits.y_test[:8]
    target = ClassifierTarget(Detector(x, y, flip), 10, (1, 8, 8), name="detector")
    methods = ["mifgsm", "pgd"] if flip else ["pgd", "mifgsm"]  # MI-FGSM is the first pair / the last pair
    result = ATTACKS.create("transfer", methods=methods, steps=3, progress=False)(target, x, y, [0.1])
    mifgsm = PGD(steps=3, momentum=1.0, random_start=False, rel_step_size=1 / 3, early_stop=False, progress=False)
    expected = mifgsm.perturb(surrogate, x, y, 0.1, torch.Generator().manual_seed(0))
    assert torch.allclose(result.x_adv[0], expected, atol=1e-6)
    entry = result.details["per_eps"][0]
    assert result.robust_accuracy == [expected_accuracy] and entry["union_accuracy"] == expected_accuracy
    assert all(acc == expected_accuracy for acc in entry["pairs"].values())


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"surrogates": []}, "at least one surrogate"),
        ({"surrogates": ["surrogate"]}, "invalid model spec"),
        ({"methods": ["fgsm"]}, "unknown transfer method"),
        ({"steps": 0}, "steps must be >= 1"),
    ],
)
def test_user_errors(options, fragment):
    with pytest.raises(UserError, match=fragment):
        Transfer(**options)


def test_surrogate_of_another_task_is_a_user_error(digits):
    target = ClassifierTarget(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), 3, (1, 8, 8), name="three-classes")
    x = digits.x_test[:4]
    with pytest.raises(UserError, match="same task"):
        ATTACKS.create("transfer", progress=False)(target, x, target.predict(x), [0.1])


def test_cli_eval_with_autoattack_and_transfer(tmp_path):
    from robustbench_peft.cli import main

    out = tmp_path / "run"
    code = main(["eval", "--suite", "quick", "--attack", "autoattack:version=custom,attacks=apgd-ce,n=32", "--attack", "transfer:n=64", "--eps", "0.1", "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"]
    records = {r["config"]["attack"]: r for r in run["attacks"]}
    assert records["autoattack"]["n"] == 32 and records["transfer"]["n"] == 64
    assert records["transfer"]["adaptive"] is False and records["autoattack"]["adaptive"] is True
    assert records["transfer"]["details"]["per_eps"][0]["pairs"]
    assert records["autoattack"]["details"]["per_eps"][0]["accuracy_after"][-1]["component"] == "apgd-ce"
    bits = {name: [c == "1" for c in r["correct"]] for name, r in records.items()}
    common = min(len(b) for b in bits.values())
    assert sum(bits["transfer"][:common]) >= sum(bits["autoattack"][:common])  # never below white-box on shared samples
    (check,) = [c for c in run["checks"] if c["name"] == "transfer_not_stronger_than_white_box"]
    assert check["passed"], check["detail"]  # compared per sample although transfer ran on 64, white-box on more
