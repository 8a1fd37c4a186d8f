"""Benchmark: the run-time estimate (pipeline.quality.estimate) against whole runs measured on this machine.

For each backbone/width/size pair, on ../shared/data/hymenoptera with real ImageNet weights: the estimate
before any run (the first guess), run A (``python -m pipeline train``, its own process, as a job's child),
the estimate from run A, then run B (another seed) measured launch to done (the wall time of its process).
The table compares both estimates with B's wall time, and per phase the estimate from A with B's epochs.
Also times ``python -m pipeline train sample:digits`` end to end (the README's figure).

Usage: ``python bench/bench_estimate.py [--out bench/results_estimate.json] [--skip-digits]``.
Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, seeded_keras_home

DATA = SHARED / "data" / "hymenoptera"
PAIRS = (("mobilenet_v2", 0.35, 224), ("mobilenet_v2", 0.5, 224), ("mobilenet", 0.25, 224))
HEAD_EPOCHS, FT_EPOCHS, BATCH = 3, 3, 32


def _train(env: dict, source: str, run_dir: Path, sets: list[str]) -> float:
    args = [sys.executable, "-m", "pipeline", "train", source, "--run-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    t0 = time.monotonic()
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def _epochs(run_dir: Path) -> dict[str, list[float]]:
    from pipeline.runs.folder import read_jsonl

    out: dict[str, list[float]] = {}
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        if rec.get("event") == "epoch":
            out.setdefault(rec["phase"], []).append(float(rec["seconds"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_estimate.json"))
    ap.add_argument("--skip-digits", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline import config as config_mod
    from pipeline import data as data_mod
    from pipeline.quality import estimate

    env = {**os.environ, "KERAS_HOME": str(seeded_keras_home()), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    work = Path(tempfile.mkdtemp(prefix="bench-estimate-"))
    results: dict = {"pairs": []}
    if not args.skip_digits:
        seconds = _train(env, "sample:digits", work / "digits", [])
        results["digits_cli_seconds"] = round(seconds, 1)
        print(f"python -m pipeline train sample:digits: {seconds:.1f} s", flush=True)
    runs = work / "runs"
    for backbone, alpha, size in PAIRS:
        sets = [
            f"model.backbone={backbone}",
            f"model.alpha={alpha}",
            f"model.image_size={size}",
            "model.weights=imagenet",
            f"train.head_epochs={HEAD_EPOCHS}",
            f"train.fine_tune_epochs={FT_EPOCHS}",
            f"train.batch_size={BATCH}",
            "train.early_stopping_patience=0",
            "augment.enabled=true",
        ]
        cfg = config_mod.apply_overrides(config_mod.RunConfig(), sets)
        report = data_mod.scan(DATA, cfg.data)
        splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
        n_train, n_val, n_test = len(splits.train), len(splits.val), len(splits.test)
        guess = estimate.estimate(cfg, n_train, n_val, runs, test_images=n_test)
        name = f"{backbone} {alpha}@{size}"
        a_seconds = _train(env, str(DATA), runs / f"{backbone}-{alpha}-{size}-a", sets)
        est = estimate.estimate(cfg, n_train, n_val, runs, test_images=n_test)
        b_dir = runs / f"{backbone}-{alpha}-{size}-b"
        b_seconds = _train(env, str(DATA), b_dir, sets + ["train.seed=7"])
        measured = _epochs(b_dir)
        row = {
            "pair": name,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "train_images": n_train,
            "val_images": n_val,
            "run_a_wall": round(a_seconds, 1),
            "run_b_wall": round(b_seconds, 1),
            "measured_flag": est.measured,
            "guess_run_seconds": round(guess.seconds, 1),
            "estimate_run_seconds": round(est.seconds, 1),
            "guess_over_measured": round(guess.seconds / b_seconds, 2),
            "estimate_over_measured": round(est.seconds / b_seconds, 2),
            "estimate_startup": est.startup_seconds,
            "estimate_finish": est.finish_seconds,
            "measured_run_epoch_seconds": round(sum(sum(v) for v in measured.values()), 1),
            "phases": [],
        }
        for g, p in zip(guess.phases, est.phases, strict=True):
            secs = measured.get(p.name, [])
            row["phases"].append(
                {
                    "phase": p.name,
                    "guess_steady": g.epoch_seconds,
                    "estimate_first": p.first_epoch_seconds,
                    "estimate_steady": p.epoch_seconds,
                    "measured_first": round(secs[0], 2) if secs else None,
                    "measured_steady": round(statistics.median(secs[1:] or secs), 2) if secs else None,
                }
            )
        results["pairs"].append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
