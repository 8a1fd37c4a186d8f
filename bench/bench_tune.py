"""A model search on hymenoptera against the default run: ``python bench/bench_tune.py [--trials 12]``.

1. The default run (MobileNetV2 0.35 @ 224, real weights, 3 head + 2 fine-tune epochs), exported and scored as a
   trial is (tflite-float16 and -int8, verified, one-thread LiteRT latency).
2. A study of ``--trials`` trials (one at a time on this 2-core machine, the same epochs) under a 5 ms / 2 MB
   budget: its wall time, its best feasible trial, and the decode time the shared decoded-image cache saved
   (each trial's decode seconds against the first trial at its image size).
Writes bench/results_tune.json; BENCHMARKS.md's "Model search" section quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, seeded_keras_home

DATA = SHARED / "data" / "hymenoptera"
EPOCHS = ["train.head_epochs=3", "train.fine_tune_epochs=2"]


def cli(module: str, *args: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def decode_seconds(run_dir: Path) -> float | None:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    start = next((m["time"] for m in lines if m.get("event") == "start"), None)
    caches = [m["time"] for m in lines if m.get("event") == "cache"]
    return round(caches[-1] - start, 2) if start and caches else None


def feature_seconds(run_dir: Path) -> float:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return sum(m.get("seconds", 0.0) for m in lines if m.get("event") == "features")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=12)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-tune-home-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRANSFER_STUDIO_HOME": str(home),
        "KERAS_HOME": str(seeded_keras_home()),
    }
    sets = [a for e in EPOCHS for a in ("--set", e)]

    default = home / "default-run"
    train_s = cli("pipeline", "train", str(DATA), "--run-dir", str(default), *sets, env=env)
    export_s = cli("export", str(default), "--formats", "tflite-float16,tflite-int8", "--score", env=env)
    score = json.loads((default / "exports" / "score.json").read_text())

    t0 = time.perf_counter()
    budget = ["--max-ms", "5", "--max-mb", "2"]
    cli("pipeline", "tune", str(DATA), "--trials", str(args.trials), "--study", "bench", *budget, *sets, env=env)
    study_s = time.perf_counter() - t0
    status = subprocess.run(
        [sys.executable, "-m", "pipeline", "tune", "--status", "bench", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    trials = json.loads(status.stdout)["trials"]
    first_at_size: dict[int, float] = {}
    saved = 0.0
    features_seen: set[tuple] = set()
    features_repeated = 0.0
    for r in sorted(trials, key=lambda r: r["trial"]):
        if not r["run_dir"] or not Path(r["run_dir"], "metrics.jsonl").exists():
            continue
        r["feature_seconds"] = f = feature_seconds(Path(r["run_dir"]))
        arch = (r["backbone"], r["alpha"], r["size"])
        if f and arch in features_seen:
            features_repeated += f  # the same frozen base on the same images: a cross-trial cache would skip it
        features_seen.add(arch)
        r["decode_seconds"] = d = decode_seconds(Path(r["run_dir"]))
        if d is None:
            continue
        if r["size"] not in first_at_size:
            first_at_size[r["size"]] = d
        else:
            saved += max(0.0, first_at_size[r["size"]] - d)
    feasible = [r for r in trials if r["state"] == "done"]
    best = max(feasible, key=lambda r: (r["accuracy"], -r["ms"])) if feasible else None
    result = {
        "machine": f"{os.cpu_count()} cores",
        "budget": {"max_ms": 5, "max_mb": 2},
        "default_run": {
            "train_seconds": round(train_s, 1),
            "export_seconds": round(export_s, 1),
            "formats": score["formats"],
        },
        "study": {
            "trials": len(trials),
            "wall_seconds": round(study_s, 1),
            "states": {s: sum(r["state"] == s for r in trials) for s in {r["state"] for r in trials}},
            "decode_seconds_saved_by_the_cache": round(saved, 1),
            "feature_seconds_computed_again": round(features_repeated, 1),
            "train_seconds": round(sum(r["train_seconds"] or 0 for r in trials), 1),
            "export_seconds": round(sum(r["export_seconds"] or 0 for r in trials), 1),
            "best_feasible": best,
            "rows": trials,
        },
    }
    out = Path(__file__).with_name("results_tune.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result["study"].items() if k != "rows"}, indent=2))
    print(json.dumps(result["default_run"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
