"""The improvement loop in a real browser (Playwright + Debian's chromium) on the sample set: train, click
a confusion-matrix cell, relabel one of its images, retrain from the run, and see both runs compared.
Screenshots go to test-output/screens/loop-*.png. Marked slow."""

import json
import re
from pathlib import Path

import pytest

from pipeline.data import revision
from pipeline.jobs.store import JobStore
from tests.test_e2e_browser import SCREENS, app_url, open_page  # noqa: F401 - app_url is a fixture

pytestmark = pytest.mark.slow


def _train(page, expect) -> None:
    page.get_by_role("link", name="Train").first.click()
    epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
    epochs.fill("3")
    epochs.press("Enter")
    page.wait_for_timeout(800)
    page.get_by_role("button", name="Launch training").click()
    _wait_done(page, expect)


def _wait_done(page, expect) -> None:
    expect(page.get_by_text("Share this run")).to_be_visible()
    state = page.get_by_test_id("stMetricValue").filter(has_text=re.compile(r"^done$"))
    expect(state).to_be_visible(timeout=300_000)


def test_train_click_a_cell_relabel_retrain_compare(app_url, ts_home, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    SCREENS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser, page = open_page(pw, height=1100)
        page.goto(app_url)
        expect(page.get_by_text("Images per class")).to_be_visible()
        _train(page, expect)
        parent = JobStore(ts_home).list()[0]
        result = json.loads((JobStore(ts_home).runs / parent.id / "eval.json").read_text())
        pair = result["confused_pairs"][0]

        # Evaluate: click a cell of the confusion matrix (the first class's correct ones), then a row of "Most
        # confused pairs": the row's images replace the cell's (one selection model: the newest wins, issue 22)
        page.get_by_role("link", name="Evaluate").first.click()
        expect(page.get_by_text("Confusion matrix (click a cell")).to_be_visible()
        first = result["labels"][0]
        point = page.locator(".js-plotly-plot .scatterlayer .point").nth(0)  # row 0, column 0: true = predicted
        expect(point).to_be_attached()
        box = point.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        cell_heading = page.get_by_role(
            "heading",
            name=re.compile(rf"True {re.escape(first)}, predicted {re.escape(first)}: \d+ image\(s\), correct"),
        )
        expect(cell_heading).to_be_visible()
        expect(page.get_by_text("Selected in the confusion matrix")).to_be_visible()
        page.screenshot(path=SCREENS / "loop-1-cell.png", full_page=True)
        dim = "points => points.filter(p => parseFloat(getComputedStyle(p).opacity) < 1).length"
        cells = page.locator(".js-plotly-plot .scatterlayer .point")
        assert cells.evaluate_all(dim) > 0  # the clicked cell is highlighted: the others are dimmed
        grid = page.get_by_test_id("stDataFrame").nth(1)  # per-class metrics first, then the confused pairs
        gbox = grid.bounding_box()
        page.mouse.click(gbox["x"] + 18, gbox["y"] + 35 + 35 // 2)  # the first row's selection box
        heading = page.get_by_role(
            "heading",
            name=re.compile(
                rf"True {re.escape(pair['true'])}, predicted {re.escape(pair['predicted'])}: {pair['images']} image"
            ),
        )
        expect(heading).to_be_visible()
        expect(cell_heading).to_have_count(0)
        expect(page.get_by_text("Selected in Most confused pairs")).to_be_visible()
        # and the chart shows no selected cell beside the row's images (Plotly dims the unselected points)
        page.wait_for_timeout(1000)
        dimmed = cells.evaluate_all(dim)
        assert dimmed == 0, f"{dimmed} cells still dimmed by the cell selection"
        page.screenshot(path=SCREENS / "loop-1-row.png", full_page=True)

        # relabel its first image to the predicted class
        page.get_by_role("button", name="Fix this label").first.click()
        page.get_by_role("button", name="Relabel", exact=True).first.click()
        expect(page.get_by_text(re.compile(r"^Recorded: "))).to_be_visible()
        folder = json.loads((JobStore(ts_home).runs / parent.id / "dataset.json").read_text())["scan"]["root"]
        active = revision.Revision(folder).active()
        assert [(e["op"], e["class"]) for e in active] == [("relabel", pair["predicted"])]

        # add an example to a class on the Data page (kept in the revision, not in the dataset's folder)
        page.keyboard.press("Escape")
        page.get_by_role("link", name="Data").first.click()
        expect(page.get_by_role("heading", name="Corrections")).to_be_visible()
        extra = tmp_path / "another-three.png"  # a new example (a copy of a dataset image is refused as a leak)
        from PIL import Image, ImageOps

        ImageOps.mirror(Image.open(sorted((Path(folder) / "3").iterdir())[0])).save(extra)
        # first a truncated photo: refused, named as the user named it; no server path reaches the page
        import io

        whole = io.BytesIO()
        Image.open(extra).convert("RGB").resize((64, 64)).save(whole, "JPEG")
        broken = tmp_path / "truncated_bee.jpg"
        broken.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
        picker = page.locator("[data-testid=stFileUploader] input[type=file]").last
        picker.set_input_files(str(broken))
        page.get_by_role("button", name=re.compile(r"^Add 1 image\(s\) to ")).click()
        alert = page.get_by_role("alert").filter(has_text="truncated_bee.jpg")
        expect(alert).to_be_visible()
        said = alert.inner_text()
        assert str(ts_home) not in said and "/uploads/" not in said and "truncated" in said, said
        assert [e["op"] for e in revision.Revision(folder).active()] == ["relabel"]  # nothing recorded
        page.get_by_test_id("stFileChipDeleteBtn").last.locator("button").click()  # the user takes the bad file out
        expect(page.get_by_role("button", name=re.compile(r"^Add \d+ image\(s\) to "))).to_have_count(0)
        page.locator("[data-testid=stFileUploader] input[type=file]").last.set_input_files(str(extra))
        page.get_by_role("button", name=re.compile(r"^Add 1 image\(s\) to ")).click()
        expect(page.get_by_text(re.compile(r"^Added 1 image"))).to_be_visible()
        assert [e["op"] for e in revision.Revision(folder).active()] == ["relabel", "add"]
        assert not (Path(folder) / result["labels"][0] / "another-three.png").exists()

        # retrain from the run (Evaluate): the new run opens on the Runs page and finishes
        page.get_by_role("link", name="Evaluate").first.click()
        page.get_by_role("button", name="Retrain with these fixes").click()
        _wait_done(page, expect)
        jobs = JobStore(ts_home).list()
        child = next(j for j in jobs if j.id != parent.id)
        assert child.config["train"]["init_from"] == str(JobStore(ts_home).runs / parent.id)

        # compare the two runs (a reload: the page lists finished runs when it is drawn)
        page.reload()
        page.get_by_text("Compare runs", exact=True).click()
        picker = page.get_by_test_id("stMultiSelect").locator("input")
        expect(picker).to_be_visible()
        page.wait_for_timeout(700)  # the expander's opening animation: a click during it opens no list
        for job in (parent, child):
            picker.click()
            picker.press_sequentially(job.title, delay=50)  # typing opens the list, filtered to this run
            option = page.get_by_role("option").filter(has_text=job.title)
            try:
                expect(option).to_be_visible(timeout=20_000)
            except AssertionError:
                page.screenshot(path=SCREENS / "loop-debug.png", full_page=True)
                raise
            option.click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)
        expect(page.get_by_text(re.compile("was retrained from"))).to_be_visible()
        expect(page.get_by_text("Settings that differ")).to_be_visible()
        page.wait_for_timeout(1000)
        page.screenshot(path=SCREENS / "loop-2-compare.png", full_page=True)
        browser.close()
