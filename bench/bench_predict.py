"""Batch prediction's throughput and memory at 1k and 20k images (`python -m pipeline predict`, issue 24).

The images are flowers5 re-encoded as in bench_scale.py (variants: crops and mirrors, so every file is distinct).
Each size runs ``python -m pipeline predict RUN SET --out FILE.csv`` as its own process; reported: wall time,
images/s from the command's own count (after the model is loaded), and the peak RSS of the process (sampled every
50 ms). The reference is the model's forward-pass rate on this machine (``model.predict`` on 512 uint8 images at
batch 32, already decoded), measured in its own process.

    python bench/bench_predict.py --run runs/hymenoptera --sizes 1000 20000 --out bench/results_predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402
from bench_scale import make_pool, make_set  # noqa: E402

FORWARD = """
import json, sys, time
import numpy as np
from pipeline.runs.folder import load_model, load_run
run, cfg, _ = load_run(sys.argv[1])
model = load_model(run)
size = cfg.model.image_size
x = np.random.default_rng(0).integers(0, 256, (512, size, size, 3), dtype=np.uint8).astype("float32")
model.predict(x[:64], batch_size=32, verbose=0)
t0 = time.perf_counter()
model.predict(x, batch_size=32, verbose=0)
print(json.dumps({"forward_images_per_second": round(512 / (time.perf_counter() - t0), 1)}))
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_predict(run: Path, data: Path, out: Path) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "predict", str(run), str(data), "--out", str(out)],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not stop.wait(0.05):
            try:
                peak[0] = max(peak[0], sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20)
            except psutil.Error:
                pass

    t0 = time.perf_counter()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    if proc.returncode != 0:
        raise SystemExit(f"predict failed: {stderr[-2000:]}")
    said = re.search(r"(\d+) of (\d+) images classified.*?([\d.]+) images/s", stdout)
    return {
        "images": int(said.group(2)),
        "classified": int(said.group(1)),
        "wall_s": round(wall, 1),
        "images_per_second": float(said.group(3)),
        "peak_rss_mb": round(peak[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    forward = subprocess.run(
        [sys.executable, "-c", FORWARD, str(args.run)], cwd=ROOT, env=env(), capture_output=True, text=True, check=True
    )
    result = {"run": str(args.run), **json.loads(forward.stdout.strip().splitlines()[-1]), "sizes": []}
    print(json.dumps(result), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        pool = make_pool(Path(tmp), max(args.sizes))
        for n in args.sizes:
            row = {"n": n, **run_predict(args.run, make_set(pool, Path(tmp) / f"set-{n}", n), Path(tmp) / f"{n}.csv")}
            row["of_forward_rate"] = round(row["images_per_second"] / result["forward_images_per_second"], 3)
            print(json.dumps(row), flush=True)
            result["sizes"].append(row)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
