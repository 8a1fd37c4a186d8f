"""Benchmark: `python -m export RUN` wall time, seconds per step, the format table, and TF.js wasm vs CPU.

The run: MobileNetV2 alpha 0.35 at 224 with real ImageNet weights, 1,000 images of ../shared/data/flowers5
(200 per class, copied into a temporary folder), 20% test split (200 verification images), 2 head + 1
fine-tune epochs. ``--run RUN_DIR`` reuses a trained run instead (e.g. to time an older checkout's export on
the same run: ``--export-src DIR`` runs ``python -m export`` from DIR's ``export`` package).

Usage: ``python bench/bench_export.py [--run RUN_DIR] [--export-src DIR] [--out bench/results_export.json]``.
Not a test: the figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, seeded_keras_home

FLOWERS = SHARED / "data" / "flowers5"
PER_CLASS = 200
TFJS_IMAGES = 50


def make_subset(dest: Path) -> Path:
    """The first PER_CLASS files (by name) of each flowers5 class, copied (symlinks are not followed by the scan)."""
    for cls in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:PER_CLASS]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


def train_run(work: Path, env: dict) -> Path:
    data = make_subset(work / "flowers1000")
    run = work / "run"
    sets = [
        "model.backbone=mobilenet_v2",
        "model.alpha=0.35",
        "model.image_size=224",
        "model.weights=imagenet",
        "train.head_epochs=2",
        "train.fine_tune_epochs=1",
        "data.test_fraction=0.2",
    ]
    cmd = [sys.executable, "-m", "pipeline", "train", str(data), "--run-dir", str(run)]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="a trained run folder (default: train the flowers 1,000-image run)")
    parser.add_argument(
        "--export-src", help="run `python -m export` from this folder's export package (an older checkout)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_export.json"))
    args = parser.parse_args()
    if not FLOWERS.is_dir() and not args.run:
        print(f"skipped: {FLOWERS} is absent", file=sys.stderr)
        return 0
    env = {
        **os.environ,
        "KERAS_HOME": str(seeded_keras_home()),
        "TRANSFER_STUDIO_HOME": tempfile.mkdtemp(prefix="bench-home-"),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        run = Path(args.run) if args.run else train_run(work, env)
        src = Path(args.export_src).resolve() if args.export_src else ROOT
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(src), str(ROOT)]))
        out = work / "bundle"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "export", str(run), "--out", str(out), "--verify-images", "200"],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        print(proc.stdout)
        log = out / "export.log"
        steps = dict(line.rsplit(": ", 1) for line in log.read_text().splitlines()) if log.exists() else {}
        result = json.loads((out / "verify.json").read_text())
        tfjs_backends = compare_tfjs_backends(out, run) if src == ROOT else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "run": str(run),
        "export_src": str(src),
        "exit_code": proc.returncode,
        "wall_seconds": round(wall, 1),
        "steps_seconds": {k: float(v.split()[0]) for k, v in steps.items()},
        "images": result["images"],
        "formats": result["formats"],
        "tfjs_backends": tfjs_backends,
    }
    print(f"python -m export: exit {proc.returncode}, {wall:.1f} s wall")
    for name, seconds in report["steps_seconds"].items():
        print(f"  {name}: {seconds:.2f} s")
    if tfjs_backends:
        print(
            f"TF.js in Node on {TFJS_IMAGES} images: "
            + ", ".join(f"{b} {r['ms_per_image']:.1f} ms/img" for b, r in tfjs_backends.items() if b != "max_abs_diff")
            + f"; max |dp| between them {tfjs_backends['max_abs_diff']:.1e}"
        )
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def compare_tfjs_backends(bundle: Path, run: Path) -> dict:
    """The same TF.js graph model and images on the wasm and the pure-JS CPU backend in Node."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from export import bundle as bundle_mod
    from export import tfjs

    with bundle_mod.held_out(run, TFJS_IMAGES) as (images, _labels, _split):
        results = {b: tfjs.predict(bundle / "tfjs", np.asarray(images), backend=b) for b in ("wasm", "cpu")}
    out = {
        b: {"backend": r.backend, "ms_per_image": float(np.mean(r.latency_ms)), "note": r.note}
        for b, r in results.items()
    }
    out["max_abs_diff"] = float(np.abs(results["wasm"].probs - results["cpu"].probs).max())
    return out


if __name__ == "__main__":
    sys.exit(main())
