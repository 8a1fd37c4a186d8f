"""End to end in a real browser: Playwright for Python driving Debian's chromium (headless).

Starts the app on a free port with its own TRANSFER_STUDIO_HOME, picks the sample set, launches a short
training, sees the curve update, exports TF.js, and classifies an image in the page with TF.js, checking
the same top-1 as the server model. Screenshots of each page go to test-output/screens/. Marked slow.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENS = ROOT / "test-output" / "screens"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(ts_home):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    pytest.importorskip("playwright")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFER_STUDIO_HOME": str(ts_home)}
    log = open(ts_home / "streamlit.log", "w")  # noqa: SIM115 - a file, not a pipe: a full pipe blocks the server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app_server.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    crashes = _script_crashes(ts_home / "streamlit.log")
    from pipeline.jobs.store import JobStore

    for w in JobStore(ts_home).workers():
        if w.stopped is None:
            try:
                os.kill(w.pid, 15)
            except ProcessLookupError:
                pass
    assert not crashes, "the app crashed on a page (the visitor saw 'This app has encountered an error'):\n" + crashes


def _script_crashes(log: Path) -> str:
    """The tracebacks Streamlit printed for a page script that raised: what the visitor saw as a redacted error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    return "\n".join(block for block in text.split("Traceback")[1:] if "exec_func_with_error_handling" in block)


def launch_chromium(pw, camera: bool = False):
    """Debian's chromium, headless, without the background connections this closed network refuses; with
    ``camera``, a test-pattern camera that needs no permission prompt."""
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ]
    if camera:
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


def open_page(pw, height: int = 1000):
    """Debian's chromium, headless, without the background connections this closed network refuses; one page
    with generous timeouts (a busy 2-core machine trains while the page waits). Returns (browser, page)."""
    from playwright.sync_api import expect

    browser = launch_chromium(pw, camera=True)
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(120_000)
    expect.set_options(timeout=120_000)
    return browser, page


def test_sample_to_training_to_export_to_in_browser_classification(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from pipeline import data

    SCREENS.mkdir(parents=True, exist_ok=True)
    digit = sorted((data.resolve_source("sample:digits") / "7").iterdir())[0]
    photo = tmp_path / "seven.png"
    shutil.copy(digit, photo)
    second = tmp_path / "three.png"
    shutil.copy(sorted((data.resolve_source("sample:digits") / "3").iterdir())[0], second)

    with sync_playwright() as pw:
        browser, page = open_page(pw, height=1000)

        # Data: the sample set is the default source
        page.goto(app_url)
        expect(page.get_by_text("Images per class")).to_be_visible()
        expect(page.get_by_text("1797")).to_be_visible()
        # one strip of examples per class, then the class browser's first page (24 of the first class's images)
        expect(page.locator("[data-testid=stImage] img")).to_have_count(10 + 24)
        expect(page.get_by_text(re.compile(r"^Images 1-24 of 178\.$"))).to_be_visible()
        expect(
            page.locator("[data-testid=stVegaLiteChart] canvas, [data-testid=stVegaLiteChart] svg").first
        ).to_be_visible()
        page.screenshot(path=SCREENS / "1-data.png", full_page=True)

        page.get_by_role("link", name="Augment").first.click()
        expect(page.get_by_role("button", name="Re-roll")).to_be_visible()
        page.wait_for_timeout(1500)
        page.screenshot(path=SCREENS / "2-augment.png", full_page=True)

        # Train: a short run (3 epochs) launched from the page
        page.get_by_role("link", name="Train").first.click()
        epochs = page.get_by_role("spinbutton", name="Epochs", exact=True)
        epochs.fill("3")
        epochs.press("Enter")
        page.wait_for_timeout(800)
        page.screenshot(path=SCREENS / "3-train.png", full_page=True)
        page.get_by_role("button", name="Launch training").click()

        # Runs: the curves appear and update while the job runs, then it is done
        expect(page.get_by_text("Share this run")).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=180_000)
        state = page.get_by_test_id("stMetricValue").filter(has_text=re.compile(r"^done$"))  # the State metric
        expect(state).to_be_visible(timeout=240_000)
        assert "run=" in page.url
        page.wait_for_timeout(1500)
        page.screenshot(path=SCREENS / "4-runs.png", full_page=True)

        page.get_by_role("link", name="Evaluate").first.click()
        expect(page.get_by_text("Confusion matrix")).to_be_visible()
        page.screenshot(path=SCREENS / "5-evaluate.png", full_page=True)

        # Export: TF.js (SavedModel always comes with it), verified
        page.get_by_role("link", name="Export").first.click()
        page.get_by_role("button", name="Export and verify").click()
        expect(page.get_by_text(re.compile(r"^Exporting .*\(\d+ s\)"))).to_be_visible()  # background progress
        expect(page.get_by_text(re.compile("Verification on"))).to_be_visible(timeout=300_000)
        page.screenshot(path=SCREENS / "6-export.png", full_page=True)

        # Try: the same image classified by the server and by TF.js in the page
        page.get_by_role("link", name="Try").first.click()
        page.locator("input[type=file]").set_input_files(str(photo))
        server = page.get_by_text(re.compile(r"^Server: "))
        expect(server).to_be_visible()
        server_top1 = re.match(r"Server: (\S+)", server.inner_text()).group(1)
        frame = page.frame_locator("iframe").first
        result = frame.locator("#out[data-top1]:not([data-top1=''])")
        expect(result).to_be_visible(timeout=120_000)
        browser_top1 = result.get_attribute("data-top1")
        page.screenshot(path=SCREENS / "7-try.png", full_page=True)
        assert browser_top1 == server_top1

        # A second photo in a row: the browser's result is the second photo's (it showed the first one's, on every
        # other photo), its probabilities within 1e-4 of the server model's on the same pixels.
        first_probs = frame.locator("#out").get_attribute("data-probs")
        expected = _server_probabilities(second)
        page.locator("input[type=file]").set_input_files(str(second))
        labels = json.loads(Path(_only_run().dataset).read_text())["splits"]["classes"]
        top = labels[int(expected.argmax())]
        expect(page.get_by_text(re.compile(rf"^Server: {re.escape(top)} "))).to_be_visible(timeout=120_000)
        result = frame.locator("#out")
        expect(result).not_to_have_attribute("data-probs", first_probs, timeout=120_000)  # the new photo's
        expect(result).to_have_attribute("data-top1", top)
        probs = np.array(json.loads(result.get_attribute("data-probs")), dtype=np.float32)
        assert np.abs(probs - expected).max() <= 1e-4, (probs, expected)
        page.screenshot(path=SCREENS / "7-try-second.png", full_page=True)

        # Live webcam: the bundle's demo classifies the (fake) camera's frames one after another, in the browser
        page.get_by_text("Live webcam", exact=True).click()
        live = page.frame_locator("iframe").first
        out = live.locator("#out[data-top1]:not([data-top1=''])")
        expect(out).to_be_visible(timeout=120_000)
        assert out.get_attribute("data-top1") in labels
        expect(live.locator("#video")).to_be_visible()
        expect(live.locator("#snap")).to_have_text("Pause")
        first = out.get_attribute("data-probs")  # the test pattern moves: each frame, a new result
        expect(live.locator("#out")).not_to_have_attribute("data-probs", first, timeout=60_000)
        page.screenshot(path=SCREENS / "7-try-webcam.png", full_page=True)
        browser.close()


def _only_run():
    from pipeline.jobs.store import JobStore
    from pipeline.runs.folder import RunFolder

    (job,) = JobStore().list()
    return RunFolder(Path(job.run_dir))


def _server_probabilities(photo: Path) -> np.ndarray:
    """What the Try page's server column computes for ``photo``: the run's model on the same pixels."""
    from pipeline import data
    from pipeline.runs.folder import load_model

    run = _only_run()
    size = json.loads(run.config.read_text())["model"]["image_size"]
    pixels = data.decode_image_bytes(photo.read_bytes(), size)
    return load_model(run).predict(pixels[None].astype("float32"), verbose=0)[0]
