"""After a run, in a real browser (Playwright + Debian's chromium) on the sample set: a mistake's Grad-CAM heatmap
on Evaluate, the dataset map drawn and a point clicked, and a small zip classified on the Predict page, filtered
and its CSV downloaded. Screenshots: test-output/screens/insight-*.png. Marked slow."""

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from pipeline.jobs.store import JobStore
from tests.test_e2e_browser import SCREENS, app_url, open_page  # noqa: F401 - app_url is a fixture
from tests.test_e2e_loop import _train

pytestmark = pytest.mark.slow


def test_heatmap_map_click_and_predict_a_zip(app_url, ts_home, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    SCREENS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser, page = open_page(pw, height=1100)
        page.goto(app_url)
        expect(page.get_by_text("Images per class")).to_be_visible()
        _train(page, expect)
        job = JobStore(ts_home).list()[0]
        run_dir = JobStore(ts_home).runs / job.id
        result = json.loads((run_dir / "eval.json").read_text())
        assert result["mistakes"], "the 3-epoch digits run makes mistakes to explain"

        # Evaluate: the most confident mistakes, then with their Grad-CAM heatmaps
        page.get_by_role("link", name="Evaluate").first.click()
        expect(page.get_by_role("heading", name="Most confident mistakes")).to_be_visible()
        page.get_by_text("Show why (Grad-CAM heatmaps)").click()
        images = page.get_by_test_id("stImage").locator("img")
        expect(images.first).to_be_visible()
        page.wait_for_function(
            "n => [...document.querySelectorAll('[data-testid=stImage] img')]"
            ".filter(i => i.complete && i.naturalWidth >= 224).length >= n",
            arg=min(len(result["mistakes"]), 24),
        )  # heatmap overlays are drawn at 224 px or more; the plain thumbnails are 160
        page.screenshot(path=SCREENS / "insight-1-heatmaps.png", full_page=True)
        page.get_by_text("Show why (Grad-CAM heatmaps)").click()  # off again: the map below is the next step

        # the dataset map: drawn in the background, then one point clicked opens its image with the actions
        page.get_by_role("button", name="Draw the dataset map").click()
        caption = page.get_by_text(re.compile(r"^\d+ images: \d+ suspected label error"))
        expect(caption).to_be_visible(timeout=300_000)
        chart = page.get_by_test_id("stPlotlyChart").last
        point = chart.locator(".scatterlayer .point").first
        expect(point).to_be_attached()
        chart.scroll_into_view_if_needed()
        box = point.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.get_by_text(re.compile(r"^labelled .+, looks like"))).not_to_have_count(0)
        expect(page.get_by_role("button", name="Fix this label").last).to_be_visible()
        page.screenshot(path=SCREENS / "insight-2-map.png", full_page=True)

        # Predict: a zip of new photos (mirrored digits) and a file that is no image, classified in the background
        folder = Path(json.loads((run_dir / "dataset.json").read_text())["scan"]["root"])
        archive = tmp_path / "new photos.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for i, path in enumerate(sorted((folder / "3").iterdir())[:5] + sorted((folder / "7").iterdir())[:5]):
                buf = io.BytesIO()
                ImageOps.mirror(Image.open(path).convert("RGB")).save(buf, "PNG")
                zf.writestr(f"batch/{i:02d}.png", buf.getvalue())
            zf.writestr("batch/notes.png", b"not an image")
        page.get_by_role("link", name="Predict").first.click()
        expect(page.get_by_role("heading", name="Predict")).to_be_visible()
        page.locator("input[type=file]").first.set_input_files(str(archive))
        classify = page.get_by_role("button", name="Classify")
        expect(classify).to_be_enabled()
        classify.click()
        expect(page.get_by_text("10 of 11 images classified, 1 unreadable")).to_be_visible(timeout=300_000)
        table = page.get_by_test_id("stDataFrame").first
        expect(table).to_be_visible()
        expect(page.get_by_text(re.compile(r"^10 of 10 images match"))).to_be_visible()
        page.screenshot(path=SCREENS / "insight-3-predict.png", full_page=True)

        # filter: confidence at most 0 leaves nothing (the slider's Home key)
        slider = page.get_by_role("slider", name="Confidence at most")
        slider.focus()
        slider.press("Home")
        expect(page.get_by_text(re.compile(r"^0 of 10 images match"))).to_be_visible()

        with page.expect_download() as download:
            page.get_by_role("button", name="Download the CSV").click()
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert len(rows) == 11 and sum(bool(r["error"]) for r in rows) == 1
        assert all(r["path"].startswith("new photos.zip/batch/") for r in rows), [r["path"] for r in rows]
        browser.close()
