"""Benchmark: every export format of MobileNetV2 (alpha 0.35, 224, real ImageNet weights) fine-tuned on hymenoptera.

Reports, per format: size relative to the float32 TFLite file, accuracy on the val split (all 153
images), top-1 agreement with Keras, and latency per image at batch 1 relative to Keras ``predict``.
Usage: ``python bench/bench_export.py [--out bench/results_export.json]``. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from _common import ROOT, SHARED, seeded_keras_home

DATA = SHARED / "data" / "hymenoptera"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_export.json"))
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent", file=sys.stderr)
        return 0
    keras_home = seeded_keras_home()
    os.environ["KERAS_HOME"] = str(keras_home)  # before keras is imported
    os.environ["TRANSFER_STUDIO_HOME"] = tempfile.mkdtemp(prefix="bench-home-")
    sys.path.insert(0, str(ROOT))

    from export import bundle
    from pipeline import config as config_mod
    from pipeline import train as train_mod

    cfg = config_mod.apply_overrides(config_mod.RunConfig(), ["train.head_epochs=3", "train.fine_tune_epochs=2"])
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        run = train_mod.train(str(DATA), work / "run", cfg)
        formats = list(bundle.FORMATS) + ["tfjs-uint8"]
        _dest, result = bundle.export_run(run.root, formats, verify_limit=1000,
                                          progress=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = result["formats"]
    base_size = rows["tflite-float32"]["size_bytes"]
    keras_ms = rows["keras"]["latency_ms"]
    table = []
    print(f"held-out images: {result['images']} (hymenoptera val)")
    print("| format | size (bytes) | size vs tflite-float32 | accuracy | top-1 agreement | max abs dp | ms/image | latency vs Keras predict | gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, r in rows.items():
        size = r["size_bytes"]
        rel = f"{size / base_size:.2f}x" if size else "-"
        line = (f"| {fmt} | {size or '-'} | {rel} | {r['accuracy']:.4f} | {r['agreement']:.2%} | {r['max_abs_diff']:.2e} | "
                f"{r['latency_ms']:.2f} | {r['latency_ms'] / keras_ms:.3f}x | {'ok' if r['passed'] else 'FAIL'} {r['note']} |")
        print(line)
        table.append({"format": fmt, **r})
    Path(args.out).write_text(json.dumps({"images": result["images"], "rows": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
