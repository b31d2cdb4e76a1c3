"""The report leads with one summary row per run, then the plots, the sections, then the details.

Markdown, HTML and the terminal summary share the order and the numbers: clean accuracy, the
worst case at each (threat model, eps) with its n, AutoAttack's lowest float32 accuracy,
reliability with the first reason, and cost. No model runs here (fake, schema-valid reports).
"""

from __future__ import annotations

import re

import pytest

from robustbench_peft import render
from robustbench_peft.registry import Entry
from robustbench_peft.report import Report, summarize_run
from robustbench_peft.section import SECTIONS, Section
from test_leaderboard import fake_report, fake_run


def _record(name: str, robust: float, n: int, eps: float = 0.1, norm: str = "Linf", **config) -> dict:
    k = round(robust * n)
    return {"name": name, "threat_model": norm, "eps": eps, "robust_accuracy": robust, "seconds": 1.0, "config": config, "adaptive": True, "n": n, "correct": "1" * k + "0" * (n - k)}


def default_like_runs() -> list[dict]:
    """A bare model, a defense the checks' attacks lowered, an unreliable defense at two threat models."""
    bare = fake_run(robust=0.7, defense=None)
    lowered = fake_run(robust=0.5, defense="cavp", trainable=480)
    lowered["attacks"] = [
        _record("pgd-10", 0.6, 200, attack="pgd"),
        _record("autoattack-apgd-ce+apgd-t", 0.5, 32, attack="autoattack"),
        _record("autoattack-square-1000q", 0.4375, 32, attack="autoattack"),  # the lowest float32 AutoAttack record
        _record("autoattack-apgd-ce", 0.125, 32, attack="autoattack", amp="bf16"),  # mixed precision: not AutoAttack's number
    ]
    lowered["check_attacks"] = [_record("pgd-eot-check", 0.45, 200, attack="pgd")]
    lowered["worst_case"] = [{"threat_model": "Linf", "eps": 0.1, "robust_accuracy": 0.45, "attacks": ["pgd-10"], "correct": "1" * 90 + "0" * 110, "n": 200}]
    lowered["lowered_by_checks"] = [{"threat_model": "Linf", "eps": 0.1, "from": 0.5, "to": 0.45, "n": 200}]
    unreliable = fake_run(robust=0.2, defense="vp", reliable=False)
    unreliable["unreliable_reasons"].append("eval_mode: dropout is on")
    l2 = fake_run(robust=0.3, defense="vp", norm="L2", eps=0.5)
    unreliable["attacks"] += l2["attacks"]
    unreliable["worst_case"] += [{**w, "n": 100, "robust_accuracy": 0.25} for w in l2["worst_case"]]
    return [bare, lowered, unreliable]


def toy_section(monkeypatch, tables) -> None:
    """Register a report section "toy" whose tables are ``tables(data)`` and whose HTML is its data's ``html``."""

    class Toy(Section):
        name = "toy"

        def tables(self, data):
            return tables(data)

        def html(self, data, files):
            return data.get("html", "")

    SECTIONS.get("unlearning")  # loads the plug-ins before the test entry is added
    monkeypatch.setitem(SECTIONS._entries, "toy", Entry("report section", "toy", Toy, "toy"))


@pytest.fixture
def report(monkeypatch) -> Report:
    toy_section(monkeypatch, lambda section: [("Toy section", ["method", "score"], [[row, 1] for row in section["rows"]])])
    return Report.from_json(fake_report(*default_like_runs(), toy={"rows": ["a", "b"], "summary": ["toy: a beats b"], "html": "<p id='toy-grid'>grid</p>"}))


def test_summary_row_per_run():
    bare, lowered, unreliable = (summarize_run(run) for run in default_like_runs())
    assert (bare.defense, bare.trainable_parameters, bare.stored_bytes, bare.fit_seconds, bare.forward_passes) == ("none", 0, 0, 0.0, 1)
    assert lowered.worst == {("Linf", 0.1): (200, 0.45)} and lowered.is_lowered(("Linf", 0.1))
    assert lowered.autoattack == {("Linf", 0.1): (32, 0.4375)}  # square is AutoAttack's too; the bf16 record is not
    assert unreliable.worst == {("Linf", 0.1): (200, 0.2), ("L2", 0.5): (100, 0.25)}
    assert unreliable.reliability == "NO: more_steps_never_raise_accuracy: 10 steps beat 50 (+1 more)"
    assert bare.reliability == "yes"


def test_old_worst_case_rows_read_by_coverage():
    run = fake_run(robust=0.5, n=200)
    run["attacks"] = [_record("pgd-10", 0.5, 100, attack="pgd")]
    run["worst_case"][0]["correct"] = "1" * 50 + "0" * 50 + "1" * 100  # schema 1.0: clean bits past the attack
    assert summarize_run(run).worst == {("Linf", 0.1): (100, 0.5)}


def test_summary_table_columns_and_cells(report):
    header, rows = render.summary_table(report)
    assert header[:4] == ["model", "defense", "n", "clean %"]
    assert header.index("worst Linf 0.1 %") < header.index("worst L2 0.5 %") < header.index("AutoAttack Linf 0.1 %") < header.index("reliable")
    assert header[-4:] == ["trainable params", "stored bytes", "fit s", "passes / prediction"]
    assert len(rows) == 3
    by_defense = {(row[1], row[header.index("trainable params")]): dict(zip(header, row)) for row in rows}
    lowered = by_defense[("cavp", 480)]
    assert lowered["worst Linf 0.1 %"] == f"45.0 (n=200) {render.LOWERED_MARK}" and lowered["AutoAttack Linf 0.1 %"] == "43.8 (n=32)"
    unreliable = by_defense[("vp", 640)]
    assert unreliable["worst L2 0.5 %"] == "25.0 (n=100)" and unreliable["reliable"].startswith("NO: more_steps_never_raise_accuracy")
    assert by_defense[("none", 0)]["stored bytes"] == 0 and by_defense[("none", 0)]["worst L2 0.5 %"] == ""
    assert render.lowered_table(report)[1] == [["digits:cnn", "cavp", "Linf", "0.1", "50.0", "45.0", 200]]


def test_a_long_first_reason_is_cut_in_the_table_not_in_the_checks():
    run = fake_run(reliable=False)
    run["unreliable_reasons"] = ["more_steps_never_raise_accuracy: " + "single-step 75.0%, 10 steps 59.4%; " * 10]
    report = Report.from_json(fake_report(run))
    header, [row] = render.summary_table(report)
    cell = row[header.index("reliable")]
    assert cell.startswith("NO: more_steps_never_raise_accuracy: single-step") and cell.endswith("\u2026") and len(cell) <= 4 + render.REASON_CHARS + 2
    assert run["unreliable_reasons"][0] in report.summary()  # the terminal note keeps it whole
    page = render.html_page(report, [])
    assert "UNRELIABLE: 1 of 1 runs failed a sanity check: digits:cnn / cavp (more_steps_never_raise_accuracy)" in page


def test_markdown_order(report):
    md = render.markdown(report)
    order = ["## Summary", "| model | defense |", render.LOWERED_NOTE, render.PLOT_NAME, render.EFFICIENCY_PLOT_NAME, "## Toy section", "## Details",
             "### Robust accuracy per attack", f"### {render.LOWERED_TITLE}", "### Sanity checks"]
    positions = [md.index(marker) for marker in order]
    assert positions == sorted(positions), order
    details = md[md.index("## Details"):]
    assert "| over n |" in details and "pgd-eot-check (check)" in details and "| worst case |" in details
    assert "| digits:cnn | cavp | Linf | 0.1 | 50.0 | 45.0 | 200 |" in details
    assert "over n" not in md[: md.index("## Details")]


def test_html_order_and_collapsed_details(report):
    page = render.html_page(report, [("Robust accuracy vs eps", b"\x89PNG1"), ("toy", b"\x89PNG2")])
    order = ["<section id='summary'>", "<table class=\"sortable summary\">", "<section id='plots'>", "<img alt='Robust accuracy vs eps'", "id='section-toy'",
             "Toy section", "<img alt='toy'", "id='toy-grid'", "<section id='details'>", "<details>"]
    positions = [page.index(marker) for marker in order]
    assert positions == sorted(positions), order
    assert page.count("<details>") == 3 and "<details open" not in page
    details = page[page.index("<section id='details'>"):]
    assert "Robust accuracy per attack" in details and f"{render.LOWERED_TITLE} (1 rows)" in details.replace("&#x27;", "'")
    assert "Sanity checks (6 rows, 1 failed)" in details and "<th>over n</th>" in details
    assert "<th>over n</th>" not in page[: page.index("<section id='details'>")]
    assert "UNRELIABLE: 1 of 3 runs failed a sanity check: digits:cnn / vp (more_steps_never_raise_accuracy)" in page


def test_terminal_summary_leads_with_a_fixed_width_table(report):
    text = report.summary()
    lines = text.splitlines()
    groups, header, *rows = lines[:5]
    assert groups.split() == ["worst", "Linf", "worst", "L2", "AA", "Linf", "AA", "L2"]
    assert header.split() == ["model", "defense", "n", "clean", "0.1", "0.5", "0.1", "0.5", "reliable", "params", "bytes", "fit", "s", "passes"]
    assert [row.split()[1] for row in rows] == ["none", "cavp", "vp"]
    # fixed width: every number ends where its header does (right-aligned; a worst case may carry a mark after it)
    for name in ("n", "clean", "params", "passes"):
        end = re.search(rf"\b{name}\b", header).end()
        assert all(row[end - 1] != " " and (len(row) == end or row[end] == " ") for row in rows), name
    assert header.index("0.5") - 2 <= groups.index("L2") <= header.index("0.5") + 3  # a label sits over its columns
    assert rows[1].split()[4:6] == ["45.0*", "-"] and "43.8/32" in rows[1] and "25.0/100" in rows[2] and rows[2].split()[-5] == "NO"
    assert text.index("*: lowered by the checks' own attacks") < text.index("toy:")
    assert "UNRELIABLE digits:cnn / vp: more_steps_never_raise_accuracy: 10 steps beat 50 (+1 more)" in text
    assert "details:" not in text and "worst  45.0% of n=200" not in text  # the per-run detail is apart: Report.details
    detail = report.details()
    assert detail.startswith("details:") and "worst  45.0% of n=200" in detail and "lowered Linf eps=0.1 from 50.0% to 45.0% (n=200)" in detail
    assert "UNRELIABLE: more_steps_never_raise_accuracy: 10 steps beat 50; eval_mode: dropout is on" in detail


def test_a_report_of_sections_only_leads_with_its_sections(monkeypatch):
    toy_section(monkeypatch, lambda section: [("Toy section", ["method"], [["a"]])])
    doc = fake_report(toy={"rows": ["a"]})
    doc["runs"] = []
    report = Report.from_json(doc)
    md = render.markdown(report)
    assert "## Summary" not in md and md.index("## Toy section") < md.index(render.PLOT_NAME) < md.index("## Details")
    page = render.html_page(report, [("Robust accuracy vs eps", b"\x89PNG")])
    assert "<section id='summary'>" not in page and page.index("id='section-toy'") < page.index("<section id='plots'>") < page.index("<section id='details'>")
    assert report.summary() == "" and report.details() == ""
