"""Keras's Adam against our fused Adam (public Keras API only, pipeline/training/optimizer.py) on one fine-tune step.

MobileNetV2 alpha 0.35 at 224 (every layer trainable but BatchNorm, as fine-tuning trains it), batch 32 of uint8
pixels fed as float32, on TensorFlow, no XLA. Each measurement in its own process, the two optimizers alternated
``--pairs`` times: the first ``train_on_batch`` (tracing and the first step) and the median of ``--steps`` steady
steps. Prints one JSON line per process and a summary; ``--out`` writes them as JSON.

    python bench/bench_optimizer.py --pairs 3 --out bench/results_optimizer.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(kind: str, steps: int) -> dict:
    import keras
    import numpy as np

    from pipeline.training.optimizer import adam

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    for layer in base.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(base(x, training=False))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=adam(1e-5, fused=kind == "fused"), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 224, 224, 3), dtype=np.uint8).astype("float32")
    y = rng.integers(0, 2, 32)
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    return {
        "optimizer": kind,
        "first_step_s": round(first, 3),
        "steady_step_s": round(statistics.median(times), 4),
        "steps": steps,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", choices=("keras", "fused"), help=argparse.SUPPRESS)  # the child's measurement
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)), flush=True)
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    rows = []
    for pair in range(args.pairs):
        for kind in ("keras", "fused") if pair % 2 == 0 else ("fused", "keras"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", kind, "--steps", str(args.steps)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            row = {**json.loads(out.strip().splitlines()[-1]), "pair": pair + 1}
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = {}
    for key in ("first_step_s", "steady_step_s"):
        ratios = []
        for pair in range(1, args.pairs + 1):
            by = {r["optimizer"]: r[key] for r in rows if r["pair"] == pair}
            ratios.append(round(by["fused"] / by["keras"], 3))
        summary[f"{key} fused/keras"] = {"per_pair": ratios, "median": statistics.median(ratios)}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
