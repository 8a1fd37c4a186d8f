"""Safe to share, in a real browser: Markdown-named classes render as text and contact no other host; a visitor
with a run's share link sees it read-only. Same server fixture as test_e2e_browser.py. Marked slow."""

import re
from urllib.parse import urlparse

import pytest

from tests.test_e2e_browser import app_url, launch_chromium  # noqa: F401 - the fixture
from tests.test_sharing import IMAGE_NAME, LINK_NAME, NAMES, finished_job_with_eval, write_markdown_named_dataset

pytestmark = pytest.mark.slow
LOCAL = {"127.0.0.1", "localhost"}
DATASET_NAME = "![d](https:evil.example.d.png)"  # the dataset folder too: Train's caption and Runs quote its path


@pytest.fixture
def tricky_root(tmp_path, monkeypatch):
    """A server data root holding a dataset whose class folders are named with Markdown (set before app_url)."""
    root = tmp_path / "root"
    write_markdown_named_dataset(root / DATASET_NAME)
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(root))
    return root


def _browser(pw):
    return launch_chromium(pw)


def _offline_context(browser, leaks: list[str]):
    """A browser context in which every request for another host is recorded and refused."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})

    def route(r):
        if urlparse(r.request.url).hostname in LOCAL or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            leaks.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return context


def test_markdown_class_names_render_as_text_and_contact_no_other_host(tricky_root, app_url):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from pipeline import config
    from pipeline.jobs.store import JobStore
    from tests.test_sharing import KEY_A, owner_of

    store = JobStore()
    job_id = finished_job_with_eval(store, list(NAMES))
    failed = store.add(str(tricky_root / DATASET_NAME), config.RunConfig().to_dict(), owner=owner_of(KEY_A))
    worker = store.register_worker(1)
    store.claim(worker)
    store.finish(failed, "failed", f"class {IMAGE_NAME!r} has 1 usable image(s); add images to {IMAGE_NAME!r}")
    store.stop_worker(worker)
    leaks: list[str] = []
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = _offline_context(browser, leaks).new_page()
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)
        page.goto(app_url)
        expect(page.get_by_text("Images per class")).to_be_visible()
        page.get_by_text("Server folder").click()
        for name in NAMES:
            expect(page.get_by_text(f"{name} (3 images)", exact=True)).to_be_visible()  # image captions, literal
        warning = page.locator("[data-testid=stAlertContentWarning]").filter(has_text="few images")
        expect(warning).to_be_visible()
        shown = warning.inner_text().replace("\u2060", "")
        assert IMAGE_NAME in shown and LINK_NAME in shown
        page.get_by_role("link", name="Train").first.click()
        expect(page.get_by_text(re.compile(r"^Data: .*" + re.escape(DATASET_NAME) + r" \(2 classes"))).to_be_visible()
        page.goto(f"{app_url}/runs?run={failed}")
        failure = page.locator("[data-testid=stAlertContentError]").filter(has_text="Training failed")
        expect(failure).to_be_visible()
        assert f"add images to '{IMAGE_NAME}'" in failure.inner_text().replace("\u2060", "")
        picker = page.get_by_role("combobox", name="Run").aria_snapshot()  # the picker names the run literally
        assert f"{DATASET_NAME} #1 ({failed[:8]}, " in picker
        page.goto(f"{app_url}/evaluate?run={job_id}")
        expect(page.get_by_text("Confusion matrix")).to_be_visible()
        caption = page.locator("[data-testid=stCaptionContainer]").filter(has_text="looks like")
        assert IMAGE_NAME in caption.inner_text().replace("\u2060", "")
        expect(page.get_by_text(f"{IMAGE_NAME}.png", exact=True)).to_be_visible()
        page.wait_for_timeout(1500)  # let late images and fonts ask for what they would
        assert page.locator("a[href*='evil'], img[src*='evil']").count() == 0
        browser.close()
    assert not leaks, leaks


def _launch_sample_run(page, app_url: str) -> str:  # noqa: F811
    from playwright.sync_api import expect

    page.goto(f"{app_url}/train")
    epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
    epochs.fill("2")
    epochs.press("Enter")
    page.wait_for_timeout(800)
    page.get_by_role("button", name="Launch training").click()
    expect(page.get_by_text("Share this run")).to_be_visible()
    return re.search(r"run=([0-9a-f]{32})", page.url).group(1)


def test_two_visitors_a_share_link_is_read_only(app_url):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from pipeline.jobs.store import JobStore

    leaks: list[str] = []
    with sync_playwright() as pw:
        browser = _browser(pw)
        context_a, context_b = _offline_context(browser, leaks), _offline_context(browser, leaks)
        a, b = context_a.new_page(), context_b.new_page()
        for page in (a, b):
            page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)

        job_id = _launch_sample_run(a, app_url)  # A launches a run on the sample set
        expect(a.get_by_role("button", name="Cancel")).to_be_visible()  # A owns it: Cancel while it runs

        b.goto(f"{app_url}/runs?run={job_id}")  # B opens A's share link
        expect(b.get_by_text("A run shared with you: you can follow its curves")).to_be_visible()
        assert b.get_by_text("only you can").count() == 0  # the owner's wording is not shown to a visitor
        expect(b.locator(".js-plotly-plot").first).to_be_visible(timeout=240_000)  # B sees the curves
        for _ in range(3):  # while it runs, B has no widget that changes it
            assert b.get_by_role("button", name=re.compile("Cancel|Resume|Delete")).count() == 0
            assert b.get_by_text("Delete this run...").count() == 0
            b.wait_for_timeout(500)

        state = a.get_by_test_id("stMetricValue").filter(has_text=re.compile(r"^done$"))
        expect(state).to_be_visible(timeout=240_000)
        b.goto(f"{app_url}/runs")  # B's own Runs list: A's run is not in it (B has none: no list at all)
        expect(b.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
        b.wait_for_timeout(2500)  # the list refreshes every 2 s
        assert b.get_by_role("heading", name="Your runs").count() == 0
        b.goto(f"{app_url}/export_page?run={job_id}")
        expect(b.get_by_role("button", name="Export and verify")).to_be_disabled()
        expect(b.get_by_text("Only this run's owner can export it")).to_be_visible()

        a2 = context_a.new_page()  # a new tab of A's browser: still the owner (the cookie)
        a2.goto(f"{app_url}/runs")
        expect(a2.get_by_role("heading", name="Your runs")).to_be_visible()  # A's list holds A's run
        expect(a2.get_by_text("Delete this run...")).to_be_visible()
        a2.goto(f"{app_url}/export_page?run={job_id}")
        expect(a2.get_by_role("button", name="Export and verify")).to_be_enabled()
        browser.close()
    assert JobStore().get(job_id).state == "done" and JobStore().get(job_id).owner
    assert not leaks, leaks
