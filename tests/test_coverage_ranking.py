"""Ranking by the samples AutoAttack covered: a worst case never counts a sample no attack ran on.

Reports are built by hand (no attacks run): AutoAttack covered the first 50 of 200 samples,
PGD all 200, and the worst-case bits are chosen so that the order over all 200 samples and
over the first 50 differ.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from robustbench_peft.cli import main
from robustbench_peft.leaderboard import entries_from_report, markdown, rank, write_leaderboard
from robustbench_peft.validation import schema_errors
from test_leaderboard import fake_report, fake_run, write_report

N = 200
AA_N = 50
#: Robust on the first 50 only: 25% over 200 samples, 100% over the 50 AutoAttack covered.
STRONG_ON_AA = "1" * 50 + "0" * 150
#: 20 of the first 50 robust, all the rest too: 85% over 200 samples, 40% over the first 50.
STRONG_ELSEWHERE = "1" * 20 + "0" * 30 + "1" * 150


def _frac(bits: str) -> float:
    return bits.count("1") / len(bits)


def coverage_run(
    defense: str,
    worst: str,
    *,
    pgd_n: int = N,
    aa_n: int | None = AA_N,
    amp: bool = False,
    new_format: bool = True,
    sha: str = "a" * 64,
) -> dict[str, Any]:
    """A run of ``N`` samples: PGD on the first ``pgd_n``, AutoAttack on the first ``aa_n`` (None: no AutoAttack).

    ``worst`` gives the worst-case bits over the covered samples. The new format ('1.x' with
    ``n`` / ``covered``) has '0' for uncovered samples; the old (1.0) keeps their clean bit ('1').
    """
    run = fake_run(defense=defense, n=N, attacks=("pgd", "autoattack") if aa_n else ("pgd",), sha=sha)
    covered = max(pgd_n, aa_n or 0)
    pgd = run["attacks"][0]
    pgd.update(n=pgd_n, correct=worst[:pgd_n], robust_accuracy=_frac(worst[:pgd_n]))
    if aa_n:
        aa = run["attacks"][1]
        aa.update(n=aa_n, correct=worst[:aa_n], robust_accuracy=_frac(worst[:aa_n]))
        if amp:
            aa["config"]["amp"] = "bf16"
    row = run["worst_case"][0]
    if new_format:
        bits = worst[:covered] + "0" * (N - covered)
        row.update(correct=bits, robust_accuracy=bits.count("1") / covered, n=covered, covered="1" * covered + "0" * (N - covered))
    else:
        bits = worst[:covered] + "1" * (N - covered)  # uncovered samples kept their clean bit
        row.update(correct=bits, robust_accuracy=_frac(bits))
    return run


def two_defenses(**options: Any) -> dict[str, Any]:
    return fake_report(coverage_run("strong-on-aa", STRONG_ON_AA, **options), coverage_run("strong-elsewhere", STRONG_ELSEWHERE, sha="c" * 64, **options))


def _table(md: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first Markdown table."""
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return split[0], split[1:]


def _column(text: str, name: str) -> str:
    """The first row's value in column ``name`` of verify's plain-text table (columns are aligned)."""
    header, first = text.splitlines()[:2]
    start = header.index(f"  {name}  ") + 2
    return first[start:].split()[0]


def test_leaderboard_ranks_by_the_worst_case_over_the_autoattack_samples():
    assert schema_errors(two_defenses()) == [] and schema_errors(two_defenses(new_format=False)) == []
    ranked = rank(entries_from_report(two_defenses(), "r.json"))
    # Over all 200 samples strong-elsewhere (85%) beats strong-on-aa (25%); over the 50 AutoAttack covered it is 40% vs 100%.
    assert [e.defense for e in ranked] == ["strong-on-aa", "strong-elsewhere"]
    assert [e.measured for e in ranked] == [pytest.approx(1.0), pytest.approx(0.4)]
    assert [e.lowest for e in ranked] == [pytest.approx(1.0), pytest.approx(0.4)]
    assert [e.n for e in ranked] == [AA_N, AA_N]
    assert all(e.over_autoattack for e in ranked)
    # The report's own worst case over everything covered stays on the entry.
    assert [e.worst_case for e in ranked] == [pytest.approx(0.25), pytest.approx(0.85)] and {e.worst_case_n for e in ranked} == {N}


def test_leaderboard_tables_and_json_show_n(tmp_path):
    paths = write_leaderboard(entries_from_report(two_defenses(), "r.json"), tmp_path)
    header, rows = _table(paths["leaderboard.md"].read_text())
    assert "n" in header
    assert [r[header.index("n")] for r in rows] == ["50", "50"]
    assert [r[header.index("defense")] for r in rows] == ["strong-on-aa", "strong-elsewhere"]
    assert [r[header.index("measured %")] for r in rows] == ["100.0", "40.0"]
    page = paths["leaderboard.html"].read_text()
    assert "<th>n</th>" in page and page.count("<td>50</td>") == 2
    board = json.loads(paths["leaderboard.json"].read_text())
    assert [(e["defense"], e["n"], e["measured"]) for e in board["entries"]] == [("strong-on-aa", 50, 1.0), ("strong-elsewhere", 50, 0.4)]


def test_without_autoattack_an_entry_ranks_over_its_covered_samples_and_says_so(tmp_path, capsys):
    # PGD on the first 120 only, no AutoAttack: the worst case is over those 120 and flagged.
    worst = "1" * 30 + "0" * 90 + "0" * 80
    (entry,) = entries_from_report(fake_report(coverage_run("pgd-only", worst, pgd_n=120, aa_n=None)), "r.json")
    assert (entry.n, entry.over_autoattack) == (120, False) and entry.measured == pytest.approx(0.25)
    md = markdown(rank([entry]))
    header, (row,) = _table(md)
    assert row[header.index("n")] == "120" and "no AutoAttack" in row
    # AutoAttack only under mixed precision is not float32 AutoAttack: same treatment.
    (amp,) = entries_from_report(fake_report(coverage_run("amp", STRONG_ON_AA, amp=True)), "r.json")
    assert (amp.n, amp.over_autoattack) == (N, False) and amp.measured == pytest.approx(0.25)
    # submit keeps refusing both.
    for name, run in (("pgd", coverage_run("pgd-only", worst, pgd_n=120, aa_n=None)), ("amp", coverage_run("amp", STRONG_ON_AA, amp=True))):
        folder = write_report(tmp_path / name, fake_report(run))
        assert main(["submit", str(folder), "--out", str(tmp_path / "subs"), "--min-n", "50"]) == 1
        assert "AutoAttack" in capsys.readouterr().out


def test_old_format_worst_rows_are_read_over_the_longest_attack():
    from robustbench_peft.coverage import worst_case_coverage

    worst = "1" * 30 + "0" * 90 + "1" * 80  # PGD on 120; the last 80 are uncovered (clean bits)
    run = coverage_run("old", worst, pgd_n=120, aa_n=None, new_format=False)
    assert "n" not in run["worst_case"][0] and run["worst_case"][0]["robust_accuracy"] == pytest.approx(0.55)
    assert worst_case_coverage(run, run["worst_case"][0]) == (120, pytest.approx(0.25))
    (entry,) = entries_from_report(fake_report(run), "r.json")
    assert (entry.n, entry.over_autoattack, entry.worst_case_n) == (120, False, 120) and entry.measured == pytest.approx(0.25)
    # With AutoAttack on the first 50: ranked over those 50.
    with_aa = coverage_run("old-aa", worst, pgd_n=120, aa_n=50, new_format=False)
    (entry,) = entries_from_report(fake_report(with_aa), "r.json")
    assert (entry.n, entry.over_autoattack) == (50, True) and entry.measured == pytest.approx(0.6)


def test_new_format_worst_rows_are_read_as_written():
    from robustbench_peft.coverage import worst_case_coverage

    run = coverage_run("new", STRONG_ELSEWHERE, pgd_n=120, aa_n=50)
    assert worst_case_coverage(run, run["worst_case"][0]) == (120, pytest.approx(_frac(STRONG_ELSEWHERE[:120])))


def test_submit_ranks_by_the_autoattack_samples_and_records_n(tmp_path, capsys):
    out = tmp_path / "subs"
    for i, (defense, bits) in enumerate((("strong-elsewhere", STRONG_ELSEWHERE), ("strong-on-aa", STRONG_ON_AA))):
        folder = write_report(tmp_path / f"run{i}", fake_report(coverage_run(defense, bits, sha=f"{i}" * 64)))
        assert main(["submit", str(folder), "--out", str(out / defense), "--min-n", "50"]) == 0
        text = capsys.readouterr().out
        assert "ACCEPTED" in text and "n=50" in text and "AutoAttack" in text
        (written,) = (out / defense).glob("submission-*.json")
        (entry,) = json.loads(written.read_text())["entries"]
        assert entry["n"] == 50 and entry["over_autoattack"] is True
        assert entry["measured"] == pytest.approx(_frac(bits[:50]))
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "board")]) == 0
    header, rows = _table((tmp_path / "board" / "leaderboard.md").read_text())
    assert [(r[header.index("defense")], r[header.index("n")]) for r in rows] == [("strong-on-aa", "50"), ("strong-elsewhere", "50")]


def test_verify_shows_the_n_of_the_measured_worst_case(tmp_path, monkeypatch, capsys):
    from robustbench_peft import claims as claims_module
    from robustbench_peft.claims import Claim, judge, junit_xml, table
    from test_claims import claim_doc, write

    report = fake_report(coverage_run("cavp", STRONG_ELSEWHERE, pgd_n=120, aa_n=50))
    claim = Claim.from_json(claim_doc(claimed=0.4))
    verdict = judge(claim, report)
    assert verdict.measured == pytest.approx(_frac(STRONG_ELSEWHERE[:120])) and verdict.n == 120
    assert _column(table([verdict]), "n") == "120"
    assert "n=120" in junit_xml([verdict])
    # The command prints it too.
    monkeypatch.setattr(claims_module, "run_suite", lambda suite, quiet=True, out=None: report)
    path = write(tmp_path / "claim.json", claim_doc(claimed=0.4))
    assert main(["verify", str(path), "--quiet"]) == 0
    assert _column(capsys.readouterr().out, "n") == "120"


def test_full_suite_has_standard_autoattack_per_threat_model_on_the_whole_split():
    from robustbench_peft.registry import SUITES
    from robustbench_peft.runner import prepare_attack

    suite = SUITES.get("full").factory()
    standard = [spec for spec in suite.attacks if spec.name == "autoattack" and spec.options.get("version") == "standard"]
    assert sorted(spec.options.get("norm", "Linf") for spec in standard) == ["L2", "Linf"]
    assert {spec.options.get("norm", "Linf") for spec in suite.attacks} == {"Linf", "L2"}
    for spec in standard:
        assert "n" not in spec.options and "eps" not in spec.options  # every test sample, every eps of the suite
        prepared = prepare_attack(spec, seed=0, batch_size=64, progress=False)
        assert prepared.n is None and prepared.eps is None
    assert suite.n is None and "AutoAttack" in suite.description
