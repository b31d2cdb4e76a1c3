"""Submissions: every reason for rejection listed; accepted reports written with their card."""

from __future__ import annotations

import json

import pytest

from robustbench_peft.cli import main
from robustbench_peft.errors import UserError
from robustbench_peft.submission import rejection_reasons
from test_leaderboard import fake_report, fake_run, write_report


def test_a_complete_report_is_accepted_and_written(tmp_path, capsys):
    folder = write_report(tmp_path / "run", fake_report(fake_run(robust=0.42)))
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "C-AVP", "venue": "ICASSP 2023", "reported": 0.5}))
    out = tmp_path / "subs"
    assert main(["submit", str(folder), "--out", str(out), "--card", str(card)]) == 0
    assert "ACCEPTED: 1 leaderboard entries" in capsys.readouterr().out
    (written,) = out.glob("submission-*.json")
    doc = json.loads(written.read_text())
    assert doc["card"]["venue"] == "ICASSP 2023" and len(doc["report_sha256"]) == 64
    assert doc["entries"][0]["measured"] == 0.42 and doc["entries"][0]["reported"] == 0.5
    # The submission feeds the leaderboard directly, card included.
    assert main(["leaderboard", str(written), "--out", str(tmp_path / "board")]) == 0
    board = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "| C-AVP | digits:cnn | cavp |" in board and "| ICASSP 2023 |" in board and "| 50.0 |" in board


def test_a_report_without_autoattack_is_rejected_naming_the_reason(tmp_path, capsys):
    folder = write_report(tmp_path / "run", fake_report(fake_run(attacks=("pgd",))))
    out = tmp_path / "subs"
    assert main(["submit", str(folder), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert text.startswith("REJECTED") and "no AutoAttack evaluation" in text
    assert not out.exists() or not any(out.iterdir())


def test_every_reason_is_listed_at_once():
    run = fake_run(attacks=("transfer",), n=50, reliable=False)
    for attack in run["attacks"]:
        attack["adaptive"] = False
    run["model"]["sha256"] = ""
    del run["defense"]["sha256"]
    reasons = rejection_reasons(fake_report(run), min_n=100)
    joined = "\n".join(reasons)
    for needle in ("sanity check more_steps_never_raise_accuracy failed", "n=50 is below the minimum of 100", "no AutoAttack", "no adaptive attack", "model weights SHA-256 missing", "defense weights SHA-256 missing", "schema: runs/0/model/sha256"):
        assert needle in joined, needle


def test_min_n_is_an_option():
    doc = fake_report(fake_run(n=60))
    assert any("n=60" in r for r in rejection_reasons(doc, min_n=100))
    assert rejection_reasons(doc, min_n=50) == []


def test_autoattack_on_a_subset_below_min_n_is_rejected():
    run = fake_run(n=200)
    run["attacks"][1]["n"] = 50  # autoattack on the first 50 only
    assert rejection_reasons(fake_report(run), min_n=100) == ["run 0 (digits:cnn / cavp): AutoAttack ran on 50 examples, below the minimum of 100"]
    assert rejection_reasons(fake_report(run), min_n=50) == []


def test_a_report_with_no_runs_or_broken_schema_is_rejected():
    assert any("no classifier runs" in r for r in rejection_reasons({**fake_report(), "runs": []}))
    assert rejection_reasons([1, 2])[0].startswith("schema:")


def test_unreadable_input_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    assert main(["submit", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable JSON report" in capsys.readouterr().err
    good = write_report(tmp_path / "ok", fake_report())
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"reported": 7}))
    assert main(["submit", str(good), "--out", str(tmp_path / "o"), "--card", str(card)]) == 2
    assert "card" in capsys.readouterr().err


def test_card_can_come_from_a_claim_file(tmp_path):
    from robustbench_peft.submission import load_card

    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"claims": [{"id": "a"}, {"id": "b", "card": {"name": "LoRA AT", "external": 0.7}}]}))
    assert load_card(str(claims)) == {"name": "LoRA AT", "external": 0.7}
    claims.write_text(json.dumps({"card": {"name": "x", "nosuch": 1}}))
    with pytest.raises(UserError, match="invalid"):
        load_card(str(claims))
