"""In a real browser: a dataset with train/ and val/ folders gets the split fields it allows (issue 22, 3).

Before, Test fraction changed nothing for such a dataset (the test column stayed 0) while the caption said to
set it. No training: seconds. Marked slow."""

import re

import pytest

from tests.conftest import write_shapes_dataset
from tests.test_e2e_browser import app_url, open_page  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow


def test_a_train_val_dataset_offers_where_to_carve_the_test_split(app_url, ts_home):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    given = ts_home / "data" / "given"  # under the data root (TRANSFER_STUDIO_HOME/data by default)
    write_shapes_dataset(given / "train", per_class=10)
    write_shapes_dataset(given / "val", per_class=5, seed=3)
    with sync_playwright() as pw:
        browser, page = open_page(pw)
        page.goto(app_url)
        page.get_by_text("Server folder", exact=True).click()
        expect(page.get_by_text("Images per class")).to_be_visible()
        page.get_by_role("link", name="Train").first.click()
        expect(page.get_by_text("Data split and class balance")).to_be_visible()
        expect(page.get_by_role("spinbutton", name="Test fraction", exact=True)).to_be_disabled()
        expect(page.get_by_role("spinbutton", name="Validation fraction", exact=True)).to_be_disabled()
        expect(page.get_by_text(re.compile(r"Carve one from train/ or val/"))).to_be_visible()
        page.get_by_role("combobox", name=re.compile("Test split from")).click()
        page.get_by_role("option", name="train/ folder").click()
        test_fraction = page.get_by_role("spinbutton", name="Test fraction", exact=True)
        expect(test_fraction).to_be_enabled()
        test_fraction.fill("0.2")
        test_fraction.press("Enter")
        # a test split now: the "No test split" caption is gone (the table is drawn on a canvas)
        expect(page.get_by_text(re.compile(r"^No test split"))).to_have_count(0)
        browser.close()
