"""The dataset map: UMAP against scikit-learn's t-SNE on the same features, and the whole map's time at 1k and 4k.

The flowers set (../shared/data/flowers5, 4,317 photos at 128 px) through MobileNetV2 0.35 at 224 with real ImageNet
weights (the default run's pretrained base): its pooled features once, then for the first 1,000 and all 4,317
images each layout, each in a fresh process (UMAP's first call in a process compiles its numba code: reported on
its own, as ``compile``, from a 50-point call before the timed one). Then ``pipeline.quality.dataset_map.for_data``
end to end (scan, decode, features, layout, label-error search, near-copies) on a 1,000-image and the whole set.

The comparison needs umap-learn, which the project does not install (t-SNE won: BENCHMARKS.md):
``pip install umap-learn==0.5.12`` first, or ``--maps-only`` for the end-to-end times alone.

Usage: ``python bench/bench_map.py [--maps-only] [--out bench/results_map.json]``. Not a test.
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

sys.path.insert(0, str(ROOT))

LAYOUT = r"""
import json, sys, time
import numpy as np
features = np.load(sys.argv[2])[: int(sys.argv[3])]
out = {}
if sys.argv[1] == "umap":
    import umap
    t0 = time.perf_counter()
    umap.UMAP(n_neighbors=15, metric="cosine", random_state=0, init="random").fit_transform(features[:50])
    out["compile"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    umap.UMAP(n_neighbors=15, metric="cosine", random_state=0, init="random").fit_transform(features)
else:
    from sklearn.manifold import TSNE
    t0 = time.perf_counter()
    TSNE(n_components=2, init="pca", metric="cosine", random_state=0).fit_transform(features)
out["seconds"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def subset(src: Path, dest: Path, per_class: int | None) -> Path:
    """The flowers set's first ``per_class`` files of each class (all with None), as class folders."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, dest / cls.name / f.name)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_map.json"))
    parser.add_argument("--maps-only", action="store_true", help="the end-to-end map times, no layout comparison")
    args = parser.parse_args()
    os.environ["KERAS_HOME"] = str(seeded_keras_home())
    os.environ["TRANSFER_STUDIO_HOME"] = tempfile.mkdtemp(prefix="bench-ts-")
    import numpy as np

    from pipeline import config as config_mod
    from pipeline.quality import dataset_map

    cfg = config_mod.apply_overrides(
        config_mod.RunConfig(),
        ["model.backbone=mobilenet_v2", "model.alpha=0.35", "model.image_size=224", "model.weights=imagenet"],
    )
    work = Path(tempfile.mkdtemp(prefix="bench-map-"))
    flowers = SHARED / "data" / "flowers5"
    results: dict = {"cores": os.cpu_count(), "maps": {}, "layouts": {}}
    for label, per_class in (("1k", 200), ("4k", None)):
        folder = subset(flowers, work / label, per_class)
        t0 = time.perf_counter()
        result = dataset_map.for_data(str(folder), cfg)
        results["maps"][label] = {
            "images": result["images"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "stages": result["seconds"],
            "issues": result["issues"],
            "near_duplicates": result["near_duplicates"],
        }
        print(label, json.dumps(results["maps"][label]), flush=True)
    if args.maps_only:
        previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        results["layouts"] = previous.get("layouts", {})
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        return 0
    # the layouts alone, on the whole set's features (computed again here, once, through the same base)
    from pipeline import data as data_mod
    from pipeline.training import model as model_mod

    report = data_mod.scan(work / "4k", cfg.data)
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
    files = [str(Path(splits.root) / rel) for s in ("train", "val", "test") for rel, _ in getattr(splits, s)]
    extractor = model_mod.build_models(cfg, len(splits.classes)).features
    features = model_mod.pooled_features(cfg, files, extractor)
    np.save(work / "features.npy", features)
    for n in (1000, len(features)):
        for method in ("umap", "tsne"):
            proc = subprocess.run(
                [sys.executable, "-c", LAYOUT, method, str(work / "features.npy"), str(n)],
                capture_output=True,
                text=True,
                check=True,
            )
            timing = json.loads(proc.stdout.strip().splitlines()[-1])
            results["layouts"][f"{method}-{n}"] = {k: round(v, 1) for k, v in timing.items()}
            print(method, n, timing, flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
