"""Benchmark: how much a 400 MiB zip upload adds to the app server's memory (peak and after), before and after
the streaming upload route, in one run.

- before: ``streamlit run streamlit_app.py`` (no route): the Data page's zip goes through ``st.file_uploader``,
  which Streamlit holds in memory, then ``uploads.saved_upload`` copies it to disk;
- after: ``streamlit run app_server.py`` (``make run``): the page's widget sends the file to the upload route,
  which writes it to disk as it arrives;
- control: the same as after with the same 8 images and no 400 MiB file: what the page's own work (unpacking,
  scanning, drawing the set) adds, whatever the upload's size.

Each: a fresh server and TRANSFER_STUDIO_HOME, headless chromium opens the Data page, picks "Upload a zip" and
gives it the same zip (4 small PNGs in each of 2 classes plus a 400 MiB incompressible file, stored); the
server process's RSS (children included) is sampled every 10 ms from just before the file is given until the
page shows the unpacked set ("Images per class"), then 3 s later. Usage: ``python bench/bench_upload.py``
(needs Debian's chromium and playwright). Not a test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import psutil
from _common import CHROMIUM, CHROMIUM_ARGS, ROOT

MiB = 1024 * 1024
SIZE_MIB = 400


def make_zip(target: Path, blob_mib: int = SIZE_MIB) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
        for cls in ("cats", "dogs"):
            for i in range(4):
                png = target.parent / f"{cls}{i}.png"
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(png)
                zf.write(png, f"{cls}/{i}.png")
        if blob_mib:
            with zf.open("cats/recording.bin", "w", force_zip64=True) as out:
                for _ in range(blob_mib):
                    out.write(os.urandom(MiB))
    return target


def rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(entry: str, archive: Path, pw) -> dict:
    home = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(home / "streamlit.log", "w")  # noqa: SIM115
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFER_STUDIO_HOME": str(home)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            entry,
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=log,
        env=env,
    )
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(600_000)
        deadline = time.monotonic() + 60
        while True:
            try:
                page.goto(f"http://127.0.0.1:{port}", timeout=2000)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        page.get_by_text("Upload a zip").click()
        chooser = page.locator("input[type=file]")
        chooser.wait_for(state="attached")
        time.sleep(3)  # the page settled
        proc = psutil.Process(server.pid)
        baseline = rss(proc)
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss(proc))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        chooser.set_input_files(str(archive))
        page.get_by_text("Images per class").wait_for()
        shown = time.monotonic() - t0
        time.sleep(3)
        stop.set()
        sampler.join()
        after = rss(proc)
        kept = [p for p in (home / "uploads").rglob("*.zip")]
        return {
            "entry": entry,
            "baseline_mb": round(baseline / 1e6, 1),
            "peak_mb": round(max(samples) / 1e6, 1),
            "after_mb": round(after / 1e6, 1),
            "peak_growth_mb": round((max(samples) - baseline) / 1e6, 1),
            "retained_growth_mb": round((after - baseline) / 1e6, 1),
            "upload_to_unpacked_s": round(shown, 1),
            "samples": len(samples),
            "kept": [p.stat().st_size for p in kept],
        }
    finally:
        browser.close()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-upload-zip-"))
    try:
        archive = make_zip(work / "big set.zip")
        size = archive.stat().st_size
        small = make_zip(work / "small" / "same images.zip", blob_mib=0)
        with sync_playwright() as pw:
            before = measure("streamlit_app.py", archive, pw)  # st.file_uploader: the file in memory
            after = measure("app_server.py", archive, pw)  # the upload route: straight to disk
            control = measure("app_server.py", small, pw)  # the same page work without the 400 MiB
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "upload_bytes": size,
        "upload_mib": SIZE_MIB,
        "before_st_file_uploader": before,
        "after_upload_route": after,
        "control_same_images_without_the_400_mib": control,
    }
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results_upload.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
