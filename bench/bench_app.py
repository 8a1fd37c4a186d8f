"""Benchmark: the app's cold start and how fast a finished epoch reaches the Runs page.

- cold start: `streamlit run` launched -> the Data page (sample set) is interactive (its source picker is
  drawn), shows its chart, and shows the first example images, in headless chromium;
- epoch latency: for each epoch line written to metrics.jsonl, the delay until the Runs page shows it.

Usage: ``python bench/bench_app.py`` (needs Debian's chromium and playwright). Not a test.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CHROMIUM, CHROMIUM_ARGS, ROOT


def main() -> int:
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="bench-app-"))
    os.environ["TRANSFER_STUDIO_HOME"] = str(home)
    sys.path.insert(0, str(ROOT))
    from pipeline.data import materialize_sample
    from pipeline.jobs.backends import LocalBackend
    from pipeline.runs.folder import RunFolder
    from pipeline.training.presets import config_for

    materialize_sample("digits")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(home / "streamlit.log", "w")  # noqa: SIM115
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        t0 = time.monotonic()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "streamlit_app.py",
                "--server.port",
                str(port),
                "--server.headless",
                "true",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}", timeout=2000)
                    break
                except Exception:
                    time.sleep(0.05)
            served = time.monotonic() - t0
            page.get_by_text("Sample set (handwritten digits)").wait_for(timeout=60_000)
            interactive = time.monotonic() - t0
            page.get_by_text("Images per class").wait_for(timeout=60_000)
            cold = time.monotonic() - t0
            page.locator("[data-testid=stImage]").first.wait_for(timeout=60_000)
            examples = time.monotonic() - t0

            backend = LocalBackend()
            job_id = backend.submit("sample:digits", config_for("sample:digits", overrides=["train.head_epochs=6"]))
            page.goto(f"http://127.0.0.1:{port}/runs?run={job_id}")
            run = RunFolder(backend.store.run_dir(job_id))
            seen: dict[int, float] = {}
            deadline = time.time() + 300
            while time.time() < deadline and len(seen) < 6:
                text = page.inner_text("body")
                m = re.search(r"Epochs\s*\n\s*(\d+)", text)
                if m:
                    n = int(m.group(1))
                    for k in range(1, n + 1):
                        seen.setdefault(k, time.time())
                time.sleep(0.05)
            written = {e["global_epoch"]: e["time"] for e in run.epochs()}
            delays = [round(seen[k] - written[k], 2) for k in sorted(seen) if k in written]
        finally:
            server.terminate()
            server.wait(timeout=30)
            for w in backend.store.workers():
                if w.stopped is None:
                    os.kill(w.pid, 15)
            browser.close()
    result = {
        "cold_start_to_http_s": round(served, 2),
        "cold_start_to_interactive_s": round(interactive, 2),
        "cold_start_to_data_page_s": round(cold, 2),
        "cold_start_to_examples_s": round(examples, 2),
        "epoch_line_to_runs_page_s": delays,
        "max_epoch_delay_s": max(delays) if delays else None,
    }
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results_app.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
