"""The HTML pages in a real headless Chromium: no console errors, sortable tables, working filters.

Needs the ``playwright`` Python package and a system Chromium (Debian's
``chromium``; no browser download). Skips with the reason when either is
missing. ``RBP_SCREENSHOT=PATH`` also saves a screenshot of the leaderboard.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from robustbench_peft.leaderboard import entries_from_report, write_leaderboard
from robustbench_peft.render import write_outputs
from robustbench_peft.report import Report
from test_leaderboard import fake_report, fake_run

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no system Chromium (apt-get install chromium, or set CHROMIUM=PATH)")
    with sync_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def open_page(browser, path: Path):
    """Open ``path`` from disk; return the page and the list it collects console errors into."""
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: errors.append(f"network request {request.url}") if not request.url.startswith(("file:", "data:")) else None)
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, errors


def column(page, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(f"{table} tbody tr", f"rows => rows.filter(r => r.style.display !== 'none').map(r => r.cells[{index}].textContent)")


def test_leaderboard_page_sorts_filters_and_logs_no_errors(browser, tmp_path):
    runs = [
        fake_run(robust=0.31, defense="vp", trainable=640),
        fake_run(robust=0.74, defense="cavp", trainable=6400),
        fake_run(robust=0.52, defense="advft:scope=lora", trainable=9000),
        fake_run(robust=0.45, defense="advft:scope=full", trainable=151306, reliable=False),
        fake_run(robust=0.60, defense="cavp", norm="L2", eps=0.5),
        fake_run(robust=0.20, defense="vp", task="cifar10", eps=8 / 255),
    ]
    paths = write_leaderboard(entries_from_report(fake_report(*runs), "reports.json"), tmp_path)
    page, errors = open_page(browser, paths["leaderboard.html"])
    assert errors == []
    header = page.eval_on_selector_all("#leaderboard thead th", "ths => ths.map(t => t.textContent)")
    measured = header.index("measured %")
    page.click(f"#leaderboard thead th:nth-child({measured + 1})")
    ascending = [float(v) for v in column(page, "#leaderboard", measured)]
    assert ascending == sorted(ascending) and len(ascending) == len(runs)
    page.click(f"#leaderboard thead th:nth-child({measured + 1})")
    descending = [float(v) for v in column(page, "#leaderboard", measured)]
    assert descending == sorted(ascending, reverse=True)
    page.select_option("#filter-threat", "L2")
    assert column(page, "#leaderboard", header.index("threat")) == ["L2"]
    page.select_option("#filter-threat", "")
    page.select_option("#filter-task", "cifar10")
    assert column(page, "#leaderboard", header.index("task")) == ["cifar10"]
    page.select_option("#filter-task", "")
    assert page.locator("tr.unreliable").count() == 1
    assert page.eval_on_selector("img", "img => img.complete && img.naturalWidth > 0")
    shot = os.environ.get("RBP_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=True)
    assert errors == []


def test_report_page_sorts_and_logs_no_errors(browser, tmp_path):
    doc = fake_report(fake_run(robust=0.5, defense="cavp"), fake_run(robust=0.2, defense="vp"), fake_run(robust=0.7, defense="advft"))
    paths = write_outputs(Report.from_json(doc), tmp_path)
    page, errors = open_page(browser, paths["report.html"])
    assert errors == []
    table = "table.sortable >> nth=0"
    header = page.locator(f"{table} >> thead th").all_text_contents()
    robust = header.index("robust %")
    before = page.locator(f"{table} >> tbody tr").evaluate_all(f"rows => rows.map(r => r.cells[{robust}].textContent)")
    page.locator(f"{table} >> thead th").nth(robust).click()
    after = [float(v) for v in page.locator(f"{table} >> tbody tr").evaluate_all(f"rows => rows.map(r => r.cells[{robust}].textContent)")]
    assert after == sorted(after) and after != [float(v) for v in before]
    assert page.locator("img").count() >= 1 and errors == []
