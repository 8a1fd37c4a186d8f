"""The Tune page in a real browser (Playwright + Debian's chromium): a small study started from the page on the
sample set, its table filled as trials finish, a point of the chart picked and "Use this one" landing on the
trial's run. Screenshot: test-output/screens/tune-1-study.png. Marked slow."""

import re

import pytest

from pipeline.jobs.store import JobStore
from pipeline.tuning import study as study_mod
from tests.test_e2e_browser import SCREENS, app_url, open_page  # noqa: F401 - app_url is a fixture

pytestmark = pytest.mark.slow


def _number(page, label: str, value: str) -> None:
    box = page.get_by_role("spinbutton", name=label, exact=True)
    box.fill(value)
    box.press("Tab")


def test_start_a_study_watch_it_and_use_a_trial(app_url, ts_home, keras_home_with_weights):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    SCREENS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser, page = open_page(pw, height=1300)
        page.goto(f"{app_url}/tune")
        expect(page.get_by_role("heading", name="Tune")).to_be_visible()
        expect(page.get_by_text("New study on")).to_be_visible()
        _number(page, "Trials", "2")
        _number(page, "At once", "1")
        _number(page, "Head epochs", "1")
        _number(page, "Fine-tune epochs", "0")
        page.get_by_role("combobox", name=re.compile("Image size")).click()
        page.get_by_role("option", name="96", exact=True).click()
        page.get_by_role("button", name="Start the study").click()

        # the table fills while the study runs in the background (2 trials, one at a time)
        expect(page.get_by_text(re.compile(r"running: [01] of 2 trials finished"))).to_be_visible()
        table = page.get_by_test_id("stDataFrame").first
        expect(table).to_be_visible()
        expect(page.get_by_text(re.compile(r"finished: 2 of 2 trials finished"))).to_be_visible(timeout=600_000)
        page.screenshot(path=SCREENS / "tune-1-study.png", full_page=True)

        name = study_mod.names()[0]
        _, status, rows = study_mod.rows(name)
        assert status == "finished" and len(rows) == 2, rows
        scored = [r for r in rows if r["accuracy"] is not None]
        assert scored, rows

        # pick a point of the chart: the trial picker follows it; "Use this one" opens its run
        chart = page.get_by_test_id("stPlotlyChart").last
        point = chart.locator(".scatterlayer .point").first
        expect(point).to_be_attached()
        chart.scroll_into_view_if_needed()
        label = chart.locator(".scatterlayer .textpoint").first.text_content().strip()  # the point's "#N"
        box = point.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        picker = page.get_by_role("combobox", name="Trial (or click a point)")
        page.wait_for_function(
            "([sel, label]) => (document.querySelector(sel)?.value || '').startsWith(label + ':')",
            arg=['input[aria-label="Trial (or click a point)"]', label],
        )  # the picker follows the clicked point
        expect(picker).to_be_visible()
        trial = int(label.lstrip("#"))
        page.get_by_role("button", name="Use this one").click()
        job = next(r["job"] for r in rows if r["trial"] == trial)
        expect(page).to_have_url(re.compile(rf"/runs\?.*run={job}"))
        expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
        title = JobStore(ts_home).get(job).title
        expect(page.get_by_role("combobox", name="Run")).to_have_value(re.compile("^" + re.escape(title)))
        page.screenshot(path=SCREENS / "tune-2-run.png", full_page=True)
        browser.close()
