"""Label-issue finding on planted flips: precision and recall of the flagged set, and the seconds it took.

A copy of ../shared/data/hymenoptera (train + val, as class folders) with the labels of a seeded 10% of its
images flipped to the other class (the file is copied into the other class's folder; the originals are
untouched), scanned and split as a run would be (no test split), then ``pipeline.quality.label_issues.find_in_splits``
with MobileNetV2 0.35 at 224 and real ImageNet weights.

Usage: ``python bench/bench_label_issues.py [--fraction 0.1] [--seed 0] [--out bench/results_label_issues.json]``.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, seeded_keras_home

sys.path.insert(0, str(ROOT))


def planted_copy(dest: Path, fraction: float, seed: int) -> set[str]:
    """Hymenoptera's images as class folders under ``dest``, ``fraction`` of them under the wrong class.

    Returns the relative paths (as the scan names them) of the flipped files.
    """
    import numpy as np

    src = SHARED / "data" / "hymenoptera"
    files = sorted((p, p.parent.name) for split in ("train", "val") for p in (src / split).glob("*/*") if p.is_file())
    rng = np.random.default_rng(seed)
    flip = set(rng.choice(len(files), size=round(len(files) * fraction), replace=False).tolist())
    classes = sorted({cls for _, cls in files})
    flipped = set()
    for i, (path, cls) in enumerate(files):
        target = classes[1 - classes.index(cls)] if i in flip else cls
        name = f"{path.parent.parent.name}-{path.name}"
        (dest / target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / target / name)
        if i in flip:
            flipped.add(f"{target}/{name}")
    return flipped


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_label_issues.json"))
    args = parser.parse_args()
    os.environ["KERAS_HOME"] = str(seeded_keras_home())
    os.environ.setdefault("TRANSFER_STUDIO_HOME", tempfile.mkdtemp(prefix="bench-ts-"))

    from pipeline import config as config_mod
    from pipeline import data as data_mod
    from pipeline.quality import label_issues

    folder = Path(tempfile.mkdtemp(prefix="bench-flipped-"))
    flipped = planted_copy(folder, args.fraction, args.seed)
    cfg = config_mod.apply_overrides(
        config_mod.RunConfig(),
        ["data.test_fraction=0", "model.backbone=mobilenet_v2", "model.alpha=0.35", "model.image_size=224"],
    )
    report = data_mod.scan(folder, cfg.data)
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
    t0 = time.perf_counter()
    result = label_issues.find_in_splits(splits, cfg)
    seconds = time.perf_counter() - t0
    flagged = {r["path"] for r in result["issues"]}
    hits = len(flagged & flipped)
    out = {
        "images": result["images"],
        "flipped": len(flipped),
        "flagged": len(flagged),
        "correctly_flagged": hits,
        "precision": hits / len(flagged) if flagged else 0.0,
        "recall": hits / len(flipped),
        "seconds": round(seconds, 1),
        "folds": result["folds"],
        "out_of_sample_accuracy": result["out_of_sample_accuracy"],
        "cores": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
