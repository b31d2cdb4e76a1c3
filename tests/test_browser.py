"""The HTML pages in a real headless Chromium: no console errors, sortable tables, working filters.

Needs the ``playwright`` Python package and a system Chromium (Debian's
``chromium``; no browser download). Skips with the reason when either is
missing. ``RBP_SCREENSHOT=PATH`` also saves a screenshot of the leaderboard.

The report page test builds a small real report (bare model and a visual prompt, n=32,
a few PGD steps, AutoAttack on 16 images, the checks) and screenshots it. To screenshot
a report already written instead (the README's ``reports/screenshots/report.png`` is of
the default suite, ``python -m robustbench_peft eval --out /tmp/default_report``)::

    RBP_REPORT_HTML=/tmp/default_report/report.html RBP_REPORT_SCREENSHOT=reports/screenshots/report.png \\
        python -m pytest tests/test_browser.py -k leads_with_the_summary
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
    table = "#summary table.sortable"
    header = page.locator(f"{table} >> thead th").all_text_contents()
    robust = header.index("worst Linf 0.1 %")
    before = page.locator(f"{table} >> tbody tr").evaluate_all(f"rows => rows.map(r => parseFloat(r.cells[{robust}].textContent))")
    page.locator(f"{table} >> thead th").nth(robust).click()
    after = page.locator(f"{table} >> tbody tr").evaluate_all(f"rows => rows.map(r => parseFloat(r.cells[{robust}].textContent))")
    assert after == sorted(after) and after != before
    assert page.locator("img").count() >= 1 and errors == []


def small_report(out: Path) -> Path:
    """A real report shaped like the default suite's, in seconds: the bare model and a visual prompt,
    Linf and L2 PGD, AutoAttack on 16 images, the sanity checks (their own attacks included)."""
    from robustbench_peft import evaluate

    attacks = ["pgd:steps=3,loss=cw", "pgd:steps=3,loss=cw,mode=nonadaptive", "pgd:norm=L2,steps=3", "autoattack:version=custom,attacks=apgd-ce,n=16,eps=0.1"]
    evaluate("digits:cnn", suite="quick", defenses=["none", "vp:epochs=1"], attacks=attacks, eps={"Linf": [0.05, 0.1], "L2": [0.5]}, n=32, checks=True, out=out)
    return out / "report.html"


def test_report_page_leads_with_the_summary(browser, tmp_path, one_thread):
    """Summary table, then the plots, then the details, collapsed; a screenshot of the page."""
    existing = os.environ.get("RBP_REPORT_HTML")
    path = Path(existing) if existing else small_report(tmp_path / "report")
    page, errors = open_page(browser, path)
    assert errors == []
    runs = page.locator("#summary table tbody tr").count()
    assert runs >= 2
    header = page.locator("#summary table thead th").all_text_contents()
    assert header[:4] == ["model", "defense", "n", "clean %"] and "AutoAttack Linf 0.1 %" in header and "reliable" in header
    assert any(h.startswith("worst Linf") for h in header) and any(h.startswith("worst L2") for h in header)
    top = lambda selector: page.locator(selector).first.bounding_box()["y"]  # noqa: E731
    assert top("#summary table") < top("#plots img") < top("#details details")
    images = page.locator("#plots img")
    assert images.count() >= 2 and all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(images.count()))
    details = page.locator("#details details")
    assert details.count() >= 2 and not any(details.evaluate_all("ds => ds.map(d => d.open)"))
    per_attack = details.nth(0).locator("table")
    assert not per_attack.is_visible()
    screenshot = Path(os.environ.get("RBP_REPORT_SCREENSHOT") or tmp_path / "report.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)  # collapsed, as a reader first sees the page
    assert screenshot.read_bytes()[:4] == b"\x89PNG"
    details.nth(0).locator("summary").click()
    assert per_attack.is_visible() and "over n" in per_attack.locator("thead th").all_text_contents()
    assert per_attack.locator("tbody tr").count() > runs and errors == []
