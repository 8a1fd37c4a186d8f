"""In a real browser (Playwright + Debian's chromium): train settings survive a page switch, a reload and a
new tab; the address carries the data source. No training: seconds, not minutes. Marked slow."""

import re

import pytest

from tests.test_e2e_browser import app_url, launch_chromium  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow


def test_train_settings_survive_page_switch_reload_and_new_tab(app_url):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        page.goto(app_url)
        expect(page.get_by_text("Welcome to Transfer Studio")).to_be_visible()
        expect(page).to_have_url(re.compile(r"source=sample(%3A|:)digits"))
        page.get_by_role("button", name="Start with the sample digits").click()  # one click: onto Train

        epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
        expect(epochs).to_be_visible()
        epochs.fill("2")
        epochs.press("Enter")
        batch = page.get_by_role("spinbutton", name="Batch size", exact=True)
        batch.fill("16")
        batch.press("Enter")
        expect(page.get_by_text(re.compile(r"^Whole run"))).to_be_visible()
        page.wait_for_timeout(1000)

        page.get_by_role("link", name="Augment").first.click()
        expect(page.get_by_role("button", name="Re-roll")).to_be_visible()
        page.get_by_role("link", name="Train").first.click()
        expect(page.get_by_role("spinbutton", name="Epochs", exact=True)).to_have_value("2")
        expect(page.get_by_role("spinbutton", name="Batch size", exact=True)).to_have_value("16")

        page.reload()
        expect(page.get_by_role("spinbutton", name="Epochs", exact=True)).to_have_value("2")
        expect(page.get_by_role("spinbutton", name="Batch size", exact=True)).to_have_value("16")

        tab = context.new_page()  # the same browser (its owner cookie), no address but the app's
        tab.goto(app_url)
        expect(tab.get_by_text("Welcome to Transfer Studio")).to_have_count(0)  # said once per visitor
        tab.get_by_role("link", name="Train").first.click()
        expect(tab.get_by_role("spinbutton", name="Epochs", exact=True)).to_have_value("2")

        epochs = tab.get_by_role("spinbutton", name="Epochs", exact=True)
        epochs.fill("0")
        epochs.press("Enter")
        expect(tab.get_by_role("button", name="Launch training")).to_be_disabled()
        expect(tab.get_by_text("Epochs: must be at least 1")).to_be_visible()
        browser.close()


def test_a_non_zip_and_an_empty_zip_upload_are_named_as_the_user_named_them(app_url, tmp_path):  # noqa: F811
    import zipfile

    from playwright.sync_api import expect, sync_playwright

    fake = tmp_path / "holiday photos.zip"
    fake.write_text("not a zip, whatever the name says")
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        page.goto(app_url)
        page.get_by_text("Upload a zip").click()
        page.locator("input[type=file]").set_input_files(str(fake))
        alert = page.get_by_test_id("stAlertContentError")
        expect(alert).to_contain_text("holiday photos.zip is not a zip archive")
        assert "/uploads/" not in alert.inner_text()  # never the server's path
        page.locator("input[type=file]").set_input_files(str(empty))
        expect(alert).to_contain_text("empty.zip holds no images")
        expect(page.get_by_text("Images per class")).to_have_count(0)  # no empty chart
        browser.close()
