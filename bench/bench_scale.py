"""Benchmark: a whole run at 1k, 5k and 20k images, and decoding before/after "decode once, on every core".

Scale (default): ``../shared/data/flowers5`` (4,317 real 128 px JPEGs, 5 classes) is re-encoded on the fly into
a temporary folder: variant 0 of every photo, then variants 1, 2, ... (a seeded random crop of 80-100% of the
side, mirrored on odd variants, resized back to 128 px, JPEG quality 90), round-robin until the largest size is
reached, so 20,000 distinct JPEGs sit on disk; each size is the first N of that sequence (hard links into its own
class folders). Each size runs in its own process with its own fresh ``TRANSFER_STUDIO_HOME`` (cold decoded-image
cache): ``pipeline.training.train.train`` with MobileNetV2 alpha 0.35 at 160 px, ``model.weights`` set to the path of
``../shared/weights``' 224 file (see BENCHMARKS.md for why), augmentation off (so the head phase is feature
extraction: features computed once), 1 head epoch on those features + 2 fine-tune epochs (the first one's time
includes tracing the train step, a fixed 5-8 s that no per-image figure should carry), batch 32, the default
``data.cache_memory_mb`` (0: every split's image cache is a file read with ``preadv``, its pages in the
kernel's page cache), 10% val / 10% test, evaluation of the test split at the end. Reported per size: scan
images/s, cache build images/s (train + val), features images/s, seconds per training image in each fine-tune epoch,
evaluation
seconds (loading the model included), peak RSS (``ru_maxrss`` of the training process) and the peak of the
training process plus its decoding workers (sampled with psutil every 50 ms).

Decode (``--decode``): on flowers5 at 160 px (4,317 thumbnails of 128 px) and hymenoptera at 224 px (397 real
photos, mostly about 500x375), from the scan to a filled training cache, in one process per variant, alternating,
``--rounds`` times: ``before`` (the code before this change, from git: the scan decodes
every file drafted small, then the cache decodes every file again at 160 px, both on threads), ``thread`` and
``process`` (this code: the scan decodes at 160 px into the decoded-image cache, the training cache reads it;
cold cache; pool forced), and ``warm`` (this code with its default pool, the decoded-image cache already filled
by a first run: a second run, a retrain, evaluation).

Usage: ``nice -n 10 python bench/bench_scale.py [--sizes 1000 5000 20000] [--out bench/results_scale.json]``;
``nice -n 10 python bench/bench_scale.py --decode [--rounds 3] [--out bench/results_decode.json]``.
Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED

FLOWERS = SHARED / "data" / "flowers5"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
SIZE = 160
BEFORE_COMMIT = "c119fe2"  # pipeline/data.py before "decode once, on every core"


def source_files() -> list[Path]:
    """flowers5's JPEGs, classes interleaved (daisy 0, dandelion 0, ..., daisy 1, ...): any prefix is stratified."""
    by_class = [sorted(d.glob("*.jpg")) for d in sorted(p for p in FLOWERS.iterdir() if p.is_dir())]
    order = sorted((i / len(files), c, f) for c, files in enumerate(by_class) for i, f in enumerate(files))
    return [f for _, _, f in order]


def make_pool(dest: Path, n: int) -> list[tuple[str, Path]]:
    """``n`` distinct JPEGs under ``dest/pool`` as (class, path), variants round-robin over flowers5."""
    import numpy as np
    from PIL import Image, ImageOps

    src = source_files()
    out = []
    (dest / "pool").mkdir(parents=True)
    for i in range(n):
        f = src[i % len(src)]
        variant = i // len(src)
        cls = f.parent.name
        target = dest / "pool" / f"{cls}-{variant}-{f.stem}.jpg"
        with Image.open(f) as im:
            im = im.convert("RGB")
            if variant:
                rng = np.random.default_rng(variant * 100_003 + i)
                w, h = im.size
                side = rng.uniform(0.8, 1.0)
                cw, ch = max(8, int(w * side)), max(8, int(h * side))
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BILINEAR)
                if variant % 2:
                    im = ImageOps.mirror(im)
            im.save(target, quality=90)
        out.append((cls, target))
    return out


def make_set(pool: list[tuple[str, Path]], dest: Path, n: int) -> Path:
    for cls, path in pool[:n]:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        os.link(path, dest / cls / path.name)
    return dest


def run_one(data_dir: Path, run_dir: Path) -> dict:
    """One whole run in this process (a child of the scale benchmark)."""
    import threading

    import psutil

    from pipeline import config as config_mod
    from pipeline.training import train as train_mod

    cfg = config_mod.from_dict(
        {
            "model": {"backbone": "mobilenet_v2", "alpha": 0.35, "image_size": SIZE, "weights": str(WEIGHTS)},
            "train": {
                "strategy": "fine_tune",
                "head_epochs": 1,
                "fine_tune_epochs": 2,
                "batch_size": 32,
                "early_stopping_patience": 0,
            },
            "augment": {"enabled": False},
            "data": {"val_fraction": 0.1, "test_fraction": 0.1},
        }
    )
    marks: dict[str, float] = {}
    events: list[dict] = []
    tree_peak = [0.0]
    stop = threading.Event()

    def sample() -> None:  # the training process and its decoding workers together
        me = psutil.Process()
        while not stop.wait(0.05):
            try:
                procs = [me, *me.children(recursive=True)]
                tree_peak[0] = max(tree_peak[0], sum(p.memory_info().rss for p in procs) / 2**20)
            except psutil.Error:
                pass

    def on_event(rec: dict) -> None:
        now = time.perf_counter()
        ev = rec.get("event")
        if ev in ("scan", "cache", "evaluate"):
            marks.setdefault(f"{ev}_first", now)
            marks[f"{ev}_last"] = now
        elif ev in ("start", "resumed"):
            marks["start"] = now
        elif ev == "epoch":
            marks["last_epoch"] = now
        if ev in ("features", "epoch", "phase"):
            events.append(rec)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    run = train_mod.train(str(data_dir), run_dir, cfg, on_event=on_event, evaluate_after=True)
    wall = time.perf_counter() - t0
    stop.set()
    dataset = json.loads(run.dataset.read_text())
    splits = dataset["splits"]
    n_scanned = sum(len(v) for v in dataset["scan"]["items"].values()) + len(dataset["scan"]["skipped"])
    n_train, n_val, n_test = (len(splits[s]) for s in ("train", "val", "test"))
    feats = next(e for e in events if e.get("event") == "features")
    ft = [e for e in events if e.get("event") == "epoch" and e.get("phase") == "fine_tune"]
    ev = json.loads(run.eval.read_text())
    return {
        "files": n_scanned,
        "train": n_train,
        "val": n_val,
        "test": n_test,
        "scan_images_per_s": n_scanned / (marks["scan_last"] - t0),
        "cache_images_per_s": (n_train + n_val) / (marks["cache_last"] - marks["start"]),
        "features_images_per_s": feats["images_per_second"],
        "fine_tune_epoch_s": [e["seconds"] for e in ft],
        "s_per_train_image_first": ft[0]["seconds"] / n_train,  # includes tracing the train step (~5-8 s)
        "s_per_train_image": ft[-1]["seconds"] / n_train,  # the second epoch: steady state
        "evaluate_s": t0 + wall - marks["evaluate_first"],  # loading the model, decoding and predicting the test split
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tree_peak_rss_mb": tree_peak[0],
        "test_accuracy": ev["accuracy"],
        "wall_s": wall,
    }


def scale(sizes: list[int], out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict = {
        "sizes": {},
        "image_size": SIZE,
        "weights": WEIGHTS.name,
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        t = time.perf_counter()
        pool = make_pool(tmp, max(sizes))
        print(f"made {len(pool)} distinct JPEGs in {time.perf_counter() - t:.0f} s", flush=True)
        for n in sizes:
            data_dir = make_set(pool, tmp / f"set{n}", n)
            home = tmp / f"home{n}"
            env = {**os.environ, "TRANSFER_STUDIO_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(data_dir), str(tmp / f"run{n}")],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                results["sizes"][str(n)] = {"error": proc.stderr.strip().splitlines()[-1:]}
            else:
                results["sizes"][str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(n, json.dumps(results["sizes"][str(n)]), flush=True)
            out.write_text(json.dumps(results, indent=1) + "\n")  # partial results survive a stopped run
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(tmp / f"run{n}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_scale(results)


def print_scale(results: dict) -> None:
    rows = [(int(n), r) for n, r in results["sizes"].items() if "error" not in r]
    if not rows:
        return
    base = rows[0][1]
    print(
        "| images | train | scan img/s | cache build img/s | features img/s | fine-tune epoch 1 ms/train image "
        "| epoch 2 ms/train image | vs smallest | peak RSS MB | vs smallest | with workers MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, r in rows:
        print(
            f"| {n:,} | {r['train']:,} | {r['scan_images_per_s']:.0f} | {r['cache_images_per_s']:.0f} | "
            f"{r['features_images_per_s']:.0f} | {r['s_per_train_image_first'] * 1000:.2f} | "
            f"{r['s_per_train_image'] * 1000:.2f} | "
            f"{r['s_per_train_image'] / base['s_per_train_image']:.2f}x | "
            f"{r['peak_rss_mb']:,.0f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x | "
            f"{r['tree_peak_rss_mb']:,.0f} |"
        )


# === Decode before/after ===


def decode_one(variant: str, home: Path, src: Path, size: int) -> dict:
    """Scan ``src`` and fill a ``size`` px training cache of every usable file, in this process."""
    import importlib.util

    os.environ["TRANSFER_STUDIO_HOME"] = str(home)
    if variant == "before":
        old = home / "data_before.py"
        old.write_text(
            subprocess.run(
                ["git", "show", f"{BEFORE_COMMIT}:pipeline/data.py"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        spec = importlib.util.spec_from_file_location("data_before", old)
        data = importlib.util.module_from_spec(spec)
        sys.modules["data_before"] = data  # dataclasses look their module up
        spec.loader.exec_module(data)
    else:
        from pipeline import data

        if variant in ("thread", "process"):
            os.environ["TRANSFER_STUDIO_DECODE_POOL"] = variant
    t0 = time.perf_counter()
    report = data.scan(src) if variant == "before" else data.scan(src, size=size)
    t1 = time.perf_counter()
    files = [str(src / rel) for items in report.items.values() for rel, _ in items]
    cache = data.ImageCache(files, size, memory_budget_mb=2048)
    t2 = time.perf_counter()
    cache.close()
    return {"files": len(files), "scan_s": t1 - t0, "cache_s": t2 - t1, "total_s": t2 - t0}


DECODE_SETS = {"flowers5": (FLOWERS, SIZE), "hymenoptera": (SHARED / "data" / "hymenoptera", 224)}


def decode_bench(rounds: int, out: Path) -> None:
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(), "sets": {}}
    for name, (src, size) in DECODE_SETS.items():
        results["sets"][name] = decode_set(rounds, src, size)
        out.write_text(json.dumps(results, indent=1) + "\n")


def decode_set(rounds: int, src: Path, size: int) -> dict:
    for f in src.rglob("*"):  # the source files in the page cache for every variant alike
        if f.is_file():
            f.read_bytes()
    variants = ["before", "thread", "process", "warm"]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[:3] if r % 2 == 0 else variants[2::-1]
        for v in [*order, "warm"]:
            home = Path(tempfile.mkdtemp(prefix="bench-decode-"))
            try:
                if v == "warm":  # a first run fills the decoded-image cache; the second is measured
                    _child_decode("default", home, src, size)
                    res = _child_decode("warm", home, src, size)
                else:
                    res = _child_decode(v, home, src, size)
            finally:
                shutil.rmtree(home, ignore_errors=True)
            runs[v].append(res)
            print(r, v, json.dumps({k: round(x, 3) for k, x in res.items()}), flush=True)
    summary = {
        v: {k: statistics.median(x[k] for x in runs[v]) for k in ("scan_s", "cache_s", "total_s")} for v in variants
    }
    ratios = {v: [b["total_s"] / x["total_s"] for b, x in zip(runs["before"], runs[v], strict=True)] for v in variants}
    results = {
        "source": src.name,
        "image_size": size,
        "files": runs["before"][0]["files"],
        "runs": runs,
        "median": summary,
        "speedup_per_round": ratios,
    }
    n = results["files"]
    print(f"{src.name} at {size} px, {n} files:")
    print("| variant | scan s | cache build s | scan to cache s | images/s | speed-up vs before (per round) |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        m = summary[v]
        per = ", ".join(f"{x:.2f}x" for x in ratios[v])
        print(f"| {v} | {m['scan_s']:.2f} | {m['cache_s']:.2f} | {m['total_s']:.2f} | {n / m['total_s']:.0f} | {per} |")
    return results


def _child_decode(variant: str, home: Path, src: Path, size: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--decode-one", variant, str(home), str(src), str(size)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", nargs=2, metavar=("DATA", "RUN"), help=argparse.SUPPRESS)
    parser.add_argument("--decode-one", nargs=4, metavar=("VARIANT", "HOME", "SRC", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), Path(args.one[1]))))
    elif args.decode_one:
        variant, home, src, size = args.decode_one
        print(json.dumps(decode_one(variant, Path(home), Path(src), int(size))))
    elif args.decode:
        decode_bench(args.rounds, args.out or ROOT / "bench" / "results_decode.json")
    else:
        scale(args.sizes, args.out or ROOT / "bench" / "results_scale.json")


if __name__ == "__main__":
    main()
