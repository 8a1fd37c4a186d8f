"""Benchmark: a whole TensorFlow CPU run before and after a change, in alternating pairs, and the same run on
Keras's JAX backend for the record.

The run is bench_train.py's ``studio`` variant (hymenoptera, MobileNetV2 alpha 0.35 at 224 with the real
weights, 3 head + 2 fine-tune epochs, batch 32, augmentation on), each in its own process with the product's
child environment. ``--before DIR`` is a checkout of the code before the change (``git worktree add DIR REV``);
its own bench_train.py runs its own code. Pairs alternate which goes first, since the machine's speed drifts.

Usage: ``python bench/bench_backends.py --before /tmp/before [--pairs 3] [--jax] [--out FILE]``.
Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, seeded_keras_home


def run(checkout: Path, backend: str = "tensorflow") -> dict:
    sys.path.insert(0, str(ROOT))
    from pipeline.host import launch

    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(
        KERAS_HOME=str(seeded_keras_home()),
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_BACKEND=backend,
        TRANSFER_STUDIO_HOME=tempfile.mkdtemp(prefix="bench-home-"),
        PYTHONPATH=str(checkout),
    )
    proc = subprocess.run(
        [sys.executable, str(checkout / "bench" / "bench_train.py"), "--child", "studio"],
        env=launch.child_env(**env) | {"PYTHONPATH": str(checkout)},
        capture_output=True,
        text=True,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(line[7:])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--jax", action="store_true", help="also one run of this checkout on the JAX backend")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results_backends.json")
    args = parser.parse_args()
    pairs = []
    for i in range(args.pairs):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        got = {which: run(args.before if which == "before" else ROOT) for which in order}
        pairs.append(
            {
                "first": order[0],
                **{
                    k: {
                        f: v[f]
                        for f in (
                            "wall_seconds",
                            "head_images_per_second_steady",
                            "fine_tune_images_per_second",
                            "final_val_accuracy",
                        )
                    }
                    for k, v in got.items()
                },
                "after_over_before": round(got["after"]["wall_seconds"] / got["before"]["wall_seconds"], 3),
            }
        )
        print(json.dumps(pairs[-1]), flush=True)
    total = {w: sum(p[w]["wall_seconds"] for p in pairs) for w in ("before", "after")}
    out = {
        "machine": f"{os.cpu_count()} cores",
        "pairs": pairs,
        "total_after_over_before": round(total["after"] / total["before"], 3) if pairs else None,
    }
    if args.jax:
        out["jax"] = run(ROOT, backend="jax")
        print(json.dumps({"jax": out["jax"]}), flush=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "pairs"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
