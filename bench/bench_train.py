"""Benchmark: Transfer Studio's training pipeline against the Keras guide's recipe as written.

Same data (../shared/data/hymenoptera), backbone (MobileNetV2 alpha 0.35, real ImageNet weights),
size (224), epochs (3 head + 2 fine-tune) and batch size (32), each variant in its own process so
that peak memory (ru_maxrss) is its own. Variants:

- ``recipe``: image_dataset_from_directory, map(resize), .cache() of float32 images, batch 32,
  prefetch(10), augmentation layers in the model, base called with training=False.
- ``studio``: ``pipeline.training.train`` with augmentation on (flip + rotation, like the recipe).
- ``studio_cached``: ``pipeline.training.train`` with augmentation off, so the head phase runs on cached features.
- ``floor`` / ``floor_8``: import TensorFlow, build the model, run one fine-tune step on a batch of 32 (or 8) zeros
  (base trainable, BatchNorm frozen as in ``pipeline``): the least peak memory any pipeline can have.
- ``data_recipe`` / ``data_studio``: only the image cache of each (the recipe's ``.cache()`` filled by
  one pass; ``pipeline.data.ImageCache``): peak RSS above the process's RSS once TensorFlow's runtime
  and tf.data are started.

Whole-run memory (``--memory``): peak RSS of a whole run (training, then evaluation of the test split) for
1,000 train / 200 val images of ../shared/data/flowers5 and test splits of 200, 1,000 and 2,000 images,
against the recipe on the 1,000-image test split (the Keras guide's pipeline: float32 ``.cache()`` of
train, val and test, then ``model.evaluate(test_ds)``). One head and one fine-tune epoch each (the peak
does not grow with epochs). ``python bench/bench_train.py --memory --out bench/results_memory.json``.
``--cache-pairs N``: the same studio run (1,000 test images), the image cache in memory vs in a file, N
alternating pairs: what the file cache costs in time (added to results_memory.json as ``cache_pairs``).

Whole runs against the recipe (``--whole N``, issue 26): N alternating pairs per data set of whole runs, each its
own process timed from outside (start, imports, data, training, evaluation of the test split; peak RSS from
``wait4``): the Keras guide's recipe (trains on all of train/, 3 head + 2 fine-tune epochs, then ``evaluate``)
and ``python -m pipeline train`` with the same epochs (``--studio-set KEY=VALUE`` for other settings, e.g. the
keras_guide preset's keys to time the recipe in our pipeline). Data sets: ``flowers2`` (500
dandelion + 500 tulip to train on, the next 1,000 of the two to test on) and ``hymenoptera`` (train/, val/ as
test). ``python bench/bench_train.py --whole 2 --out bench/results_whole.json``.

Usage: ``python bench/bench_train.py [--out bench/results_train.json]``: prints a Markdown table.
``python bench/bench_train.py --pairs N --out FILE``: N back-to-back recipe/studio pairs (alternating
which goes first) and the median speed-up, since the machine's speed drifts between minutes.
Not a test: figures go to BENCHMARKS.md and the closing note.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, seeded_keras_home

DATA = SHARED / "data" / "hymenoptera"
FLOWERS = SHARED / "data" / "flowers5"
MEMORY_TRAIN, MEMORY_VAL, MEMORY_TESTS = 1000, 200, (200, 1000, 2000)
HEAD_EPOCHS, FT_EPOCHS, BATCH, SIZE, ALPHA = 3, 2, 32, 224, 0.35


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1024 / 1024


def recipe_datasets():
    import keras
    from keras import layers

    train_ds = keras.utils.image_dataset_from_directory(
        DATA / "train", image_size=(SIZE, SIZE), batch_size=None, label_mode="categorical", seed=42
    )
    val_ds = keras.utils.image_dataset_from_directory(
        DATA / "val", image_size=(SIZE, SIZE), batch_size=None, label_mode="categorical", shuffle=False
    )
    resize = layers.Resizing(SIZE, SIZE)
    train_ds = train_ds.map(lambda x, y: (resize(x), y)).cache().batch(BATCH).prefetch(10)
    val_ds = val_ds.map(lambda x, y: (resize(x), y)).cache().batch(BATCH).prefetch(10)
    return train_ds, val_ds


def run_data(variant: str) -> dict:
    import tensorflow as tf

    # Start TensorFlow's runtime and tf.data first, so the figure is the cache and its pipeline only.
    for _ in tf.data.Dataset.range(64).map(lambda i: tf.cast(i, tf.float32) / 2).batch(8).prefetch(2):
        pass
    before = current_rss_mb()
    if variant == "data_recipe":
        for ds in recipe_datasets():
            for _ in ds:
                pass
    else:
        from pipeline import data as data_mod
        from pipeline.config import DataConfig

        splits = data_mod.make_splits(data_mod.scan(data_mod.resolve_source(str(DATA))), DataConfig(), seed=42)
        caches = [data_mod.ImageCache(splits.paths(s), SIZE, memory_budget_mb=1024) for s in ("train", "val")]
        for s, c in zip(("train", "val"), caches, strict=True):
            for _ in data_mod.make_dataset(c, splits.labels(s), 2, BATCH, shuffle=True, seed=42):
                pass
    return {
        "variant": variant,
        "rss_after_imports_mb": round(before),
        "peak_rss_mb": round(peak_rss_mb()),
        "data_peak_above_imports_mb": round(peak_rss_mb() - before),
    }


def run_floor(batch: int = BATCH) -> dict:
    import keras
    import numpy as np
    from keras import layers

    base = keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3), include_top=False, alpha=ALPHA)
    for layer in base.layers:
        layer.trainable = not isinstance(layer, layers.BatchNormalization)
    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    x = base(layers.Rescaling(1 / 127.5, offset=-1)(inputs), training=False)
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(x)))
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="categorical_crossentropy")
    model.train_on_batch(np.zeros((batch, SIZE, SIZE, 3), "float32"), np.eye(2, dtype="float32")[[0] * batch])
    return {"variant": "floor" if batch == BATCH else f"floor_{batch}", "peak_rss_mb": round(peak_rss_mb())}


def run_recipe() -> dict:
    import keras
    import tensorflow as tf
    from keras import layers

    t0 = time.perf_counter()
    keras.utils.set_random_seed(42)
    train_ds, val_ds = recipe_datasets()
    augmentation = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)])
    base = keras.applications.MobileNetV2(
        weights="imagenet", input_shape=(SIZE, SIZE, 3), include_top=False, alpha=ALPHA
    )
    base.trainable = False
    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    x = augmentation(inputs)
    x = layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    n_train = 244

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append({"seconds": time.perf_counter() - self.t, "val_accuracy": logs["val_accuracy"]})

    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"])
    head = Timer()
    model.fit(train_ds, epochs=HEAD_EPOCHS, validation_data=val_ds, callbacks=[head], verbose=0)
    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="categorical_crossentropy", metrics=["accuracy"])
    ft = Timer()
    model.fit(train_ds, epochs=FT_EPOCHS, validation_data=val_ds, callbacks=[ft], verbose=0)
    del tf
    return _result("recipe", t0, head.epochs, ft.epochs, n_train)


def run_studio(augment: bool) -> dict:
    from pipeline.host.devices import select_backend

    select_backend()  # $KERAS_BACKEND (bench_backends.py runs the studio on jax too)
    import keras  # (imported before the clock starts, as in run_recipe)

    if keras.backend.backend() == "tensorflow":
        import tensorflow  # noqa: F401

    from pipeline import config as config_mod
    from pipeline.training import train as train_mod

    t0 = time.perf_counter()
    cfg = config_mod.apply_overrides(
        config_mod.RunConfig(),
        [
            f"train.head_epochs={HEAD_EPOCHS}",
            f"train.fine_tune_epochs={FT_EPOCHS}",
            f"train.batch_size={BATCH}",
            f"augment.enabled={str(augment).lower()}",
            "train.early_stopping_patience=0",
        ],
    )
    run_dir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    try:
        run = train_mod.train(str(DATA), run_dir / "run", cfg, evaluate_after=False)
        epochs = run.epochs()
        features = [x for x in run.metrics_lines() if x["event"] == "features"]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    head = [{"seconds": e["seconds"], "val_accuracy": e["val_accuracy"]} for e in epochs if e["phase"] == "head"]
    ft = [{"seconds": e["seconds"], "val_accuracy": e["val_accuracy"]} for e in epochs if e["phase"] == "fine_tune"]
    out = _result("studio_cached" if not augment else "studio", t0, head, ft, 244)
    if features:
        out["feature_pass_seconds"] = features[0]["seconds"]
    return out


def _result(name: str, t0: float, head: list, ft: list, n_train: int) -> dict:
    def ips(epochs, skip_first):
        chosen = epochs[1:] if skip_first and len(epochs) > 1 else epochs
        return round(n_train * len(chosen) / sum(e["seconds"] for e in chosen), 1)

    return {
        "variant": name,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "head_epoch_seconds": [round(e["seconds"], 2) for e in head],
        "fine_tune_epoch_seconds": [round(e["seconds"], 2) for e in ft],
        "head_images_per_second_steady": ips(head, True),
        "fine_tune_images_per_second": ips(ft, False),
        "final_val_accuracy": round((ft or head)[-1]["val_accuracy"], 4),
        "peak_rss_mb": round(peak_rss_mb(), 0),
    }


def memory_dataset(root: Path, n_test: int) -> Path:
    """train/val/test folders of flowers5 images: the same train and val images for every test size."""
    classes = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
    out = root / f"flowers_test{n_test}"
    for i, cls in enumerate(classes):
        files = sorted((FLOWERS / cls).iterdir())
        n_tr, n_va = MEMORY_TRAIN // len(classes), MEMORY_VAL // len(classes)
        n_te = n_test // len(classes) + (1 if i < n_test % len(classes) else 0)
        chosen = {
            "train": files[:n_tr],
            "val": files[n_tr : n_tr + n_va],
            "test": files[n_tr + n_va : n_tr + n_va + n_te],
        }
        for split, group in chosen.items():
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            for f in group:  # hard links (or copies): the scan does not follow symlinked files
                try:
                    os.link(f, out / split / cls / f.name)
                except OSError:
                    shutil.copy(f, out / split / cls / f.name)
    return out


def _guide_recipe(data: Path, validation: str, head_epochs: int, fine_tune_epochs: int) -> float:
    """The Keras guide's recipe on ``data``'s train/ (float32 ``.cache()`` of each split, augmentation layers in the
    model, the base called with training=False, recompiled at 1e-5 to fine-tune), validated on ``validation``;
    returns ``evaluate``'s accuracy on test/."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(42)

    def split(name, shuffle):
        ds = keras.utils.image_dataset_from_directory(
            data / name, image_size=(SIZE, SIZE), batch_size=BATCH, label_mode="categorical", shuffle=shuffle, seed=42
        )
        return ds.prefetch(10).cache()  # the guide's pipeline: float32 images cached in memory

    train_ds, test_ds = split("train", True), split("test", False)
    val_ds = test_ds if validation == "test" else split(validation, False)
    classes = len([p for p in (data / "train").iterdir() if p.is_dir()])
    augmentation = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)])
    base = keras.applications.MobileNetV2(
        weights="imagenet", input_shape=(SIZE, SIZE, 3), include_top=False, alpha=ALPHA
    )
    base.trainable = False
    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    x = base(layers.Rescaling(1 / 127.5, offset=-1)(augmentation(inputs)), training=False)
    outputs = layers.Dense(classes, activation="softmax")(layers.Dropout(0.2)(layers.GlobalAveragePooling2D()(x)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_ds, epochs=head_epochs, validation_data=val_ds, verbose=0)
    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_ds, epochs=fine_tune_epochs, validation_data=val_ds, verbose=0)
    return model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"]


def run_memory_recipe(data: Path) -> dict:
    t0 = time.perf_counter()
    accuracy = _guide_recipe(data, "val", 1, 1)
    return {
        "variant": "recipe",
        "test_images": sum(1 for p in (data / "test").rglob("*") if p.is_file()),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "test_accuracy": round(accuracy, 4),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def whole_dataset(root: Path, name: str) -> Path:
    """train/ and test/ folders (hard links) for ``--whole``: ``flowers2`` is 500 dandelion + 500 tulip images to
    train on and the next 1,000 of the two (516 + 484) to test on; ``hymenoptera``: train/ (244) and val/ (153) as test.
    """
    out = root / name
    if name == "hymenoptera":
        chosen = {("train", c): sorted((DATA / "train" / c).iterdir()) for c in ("ants", "bees")}
        chosen |= {("test", c): sorted((DATA / "val" / c).iterdir()) for c in ("ants", "bees")}
    else:
        files = {c: sorted((FLOWERS / c).iterdir()) for c in ("dandelion", "tulip")}
        n_tulip_test = min(len(files["tulip"]) - 500, 500)
        chosen = {("train", c): f[:500] for c, f in files.items()}
        chosen[("test", "tulip")] = files["tulip"][500 : 500 + n_tulip_test]
        chosen[("test", "dandelion")] = files["dandelion"][500 : 500 + 1000 - n_tulip_test]
    for (split, cls), group in chosen.items():
        (out / split / cls).mkdir(parents=True, exist_ok=True)
        for f in group:
            try:
                os.link(f, out / split / cls / f.name)
            except OSError:
                shutil.copy(f, out / split / cls / f.name)
    return out


def run_whole_recipe(data: Path) -> dict:
    """The recipe on ``data`` (train/ and test/): trains on all of train/ (test/ as its validation data, as the
    guide's notebook does), 3 head + 2 fine-tune epochs, then ``evaluate`` on test/."""
    return {"variant": "recipe", "test_accuracy": round(_guide_recipe(data, "test", HEAD_EPOCHS, FT_EPOCHS), 4)}


# ``KEY=VALUE,...`` overrides for the studio runs of ``--memory`` (e.g. data.cache_memory_mb=2048: the image cache
# in memory, the default before issue 13)
MEMORY_OVERRIDES = [x for x in os.environ.get("BENCH_MEMORY_SET", "").split(",") if x]


def run_memory_studio(data: Path) -> dict:
    from pipeline import config as config_mod
    from pipeline.training import train as train_mod

    t0 = time.perf_counter()
    cfg = config_mod.apply_overrides(
        config_mod.RunConfig(),
        [
            "train.head_epochs=1",
            "train.fine_tune_epochs=1",
            f"train.batch_size={BATCH}",
            "train.early_stopping_patience=0",
            *MEMORY_OVERRIDES,
        ],
    )
    run_dir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    try:
        run = train_mod.train(str(data), run_dir / "run", cfg, evaluate_after=True)
        result = json.loads(run.eval.read_text())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "variant": "studio",
        "test_images": result["images"],
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "test_accuracy": round(result["accuracy"], 4),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def memory_main(out: Path, run_child) -> int:
    if not FLOWERS.is_dir():
        print(f"skipped: {FLOWERS} is absent", file=sys.stderr)
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        sets = {n: memory_dataset(root, n) for n in MEMORY_TESTS}
        recipe = run_child(f"memory_recipe:{sets[1000]}")
        studio = [run_child(f"memory_studio:{sets[n]}") for n in MEMORY_TESTS]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if recipe is None or None in studio:
        return 1
    out.write_text(
        json.dumps({"machine": f"{os.cpu_count()} cores", "recipe": recipe, "studio": studio}, indent=2) + "\n"
    )
    print("| run | test images | peak RSS MB | ratio to the recipe | wall s | test accuracy |")
    print("|---|---|---|---|---|---|")
    print(
        f"| recipe | {recipe['test_images']} | {recipe['peak_rss_mb']} | 1.00 | {recipe['wall_seconds']} | "
        f"{recipe['test_accuracy']} |"
    )
    for r in studio:
        print(
            f"| studio | {r['test_images']} | {r['peak_rss_mb']} | {r['peak_rss_mb'] / recipe['peak_rss_mb']:.2f} | "
            f"{r['wall_seconds']} | {r['test_accuracy']} |"
        )
    peaks = [r["peak_rss_mb"] for r in studio]
    print(
        f"\nstudio peak from 200 to 2,000 test images: {min(peaks)}-{max(peaks)} MB "
        f"(spread {(max(peaks) - min(peaks)) / min(peaks):.1%})"
    )
    return 0


def cache_pairs_main(out: Path, run_child, n: int) -> int:
    """Whole studio runs (the --memory workload, 1,000 test images), alternating the image cache in memory
    (``data.cache_memory_mb=2048``) and in a file (the default): wall time and peak RSS of each; the pairs are
    added to ``out`` under ``cache_pairs`` (the --memory figures there are kept)."""
    if not FLOWERS.is_dir():
        print(f"skipped: {FLOWERS} is absent", file=sys.stderr)
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    pairs = []
    try:
        data = memory_dataset(root, 1000)
        for i in range(n):
            order = ("memory", "file") if i % 2 == 0 else ("file", "memory")
            got = {
                kind: run_child(
                    f"memory_studio:{data}", BENCH_MEMORY_SET="data.cache_memory_mb=2048" if kind == "memory" else ""
                )
                for kind in order
            }
            if None in got.values():
                return 1
            pairs.append(
                {kind: {"wall_seconds": r["wall_seconds"], "peak_rss_mb": r["peak_rss_mb"]} for kind, r in got.items()}
            )
            m, f = pairs[-1]["memory"], pairs[-1]["file"]
            print(
                f"pair {i + 1}: memory {m['wall_seconds']} s {m['peak_rss_mb']} MB, file {f['wall_seconds']} s "
                f"{f['peak_rss_mb']} MB: file/memory time {f['wall_seconds'] / m['wall_seconds']:.3f}",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**results, "cache_pairs": pairs}, indent=2) + "\n")
    return 0


def whole_main(out: Path, env: dict, pairs: int, sets: list[str], studio_set: list[str]) -> int:
    """``--whole N``: N alternating pairs per data set of whole runs, each a process timed from outside (start,
    imports, data, training, test evaluation): the recipe (``--child whole_recipe:DATA``) and ours
    (``python -m pipeline train``, 3 + 2 epochs, early stopping off, as a job's child is started); peak RSS from
    ``wait4``."""
    from pipeline.host import launch

    root = Path(tempfile.mkdtemp(prefix="bench-whole-"))
    results = json.loads(out.read_text()) if out.exists() else {}
    try:
        for name in sets:
            data = whole_dataset(root, name)
            rows = []
            for i in range(pairs):
                order = ("recipe", "studio") if i % 2 == 0 else ("studio", "recipe")
                got = {}
                for kind in order:
                    run_dir = root / f"run-{name}-{i}"
                    if kind == "recipe":
                        argv, child_env = [sys.executable, __file__, "--child", f"whole_recipe:{data}"], env
                    else:
                        argv = [sys.executable, "-m", "pipeline", "train", str(data), "--run-dir", str(run_dir)]
                        argv += [
                            "--set",
                            f"train.head_epochs={HEAD_EPOCHS}",
                            "--set",
                            f"train.fine_tune_epochs={FT_EPOCHS}",
                            "--set",
                            "train.early_stopping_patience=0",
                        ]
                        for kv in studio_set:
                            argv += ["--set", kv]
                        child_env = launch.child_env(**env)
                    t0 = time.perf_counter()
                    with open(root / "out.txt", "w") as so, open(root / "err.txt", "w") as se:
                        proc = subprocess.Popen(argv, env=child_env, stdout=so, stderr=se)
                        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS (and its children's)
                    wall = time.perf_counter() - t0
                    stdout = (root / "out.txt").read_text()
                    if os.waitstatus_to_exitcode(status):
                        print((root / "err.txt").read_text()[-3000:], file=sys.stderr)
                        return 1
                    row = {"wall_seconds": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
                    if kind == "recipe":
                        line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
                        row |= {"test_accuracy": json.loads(line[7:])["test_accuracy"]}
                    else:
                        result = json.loads((run_dir / "eval.json").read_text())
                        row |= {"test_accuracy": round(result["accuracy"], 4), "eval_seconds": result["seconds"]}
                        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                        row["epoch_seconds"] = [round(m["seconds"], 2) for m in metrics if m.get("event") == "epoch"]
                        start = next(m for m in metrics if m.get("event") in ("start", "resumed"))
                        first_epoch = next(m for m in metrics if m.get("event") == "phase")
                        row["before_first_epoch_seconds"] = round(
                            first_epoch["time"] - start.get("process_started", start["time"]), 1
                        )
                        shutil.rmtree(run_dir, ignore_errors=True)
                    got[kind] = row
                    print(f"{name} pair {i + 1} {kind}: {row}", file=sys.stderr, flush=True)
                r, s_ = got["recipe"], got["studio"]
                rows.append(
                    {
                        **got,
                        "time_ratio": round(s_["wall_seconds"] / r["wall_seconds"], 3),
                        "rss_ratio": round(s_["peak_rss_mb"] / r["peak_rss_mb"], 3),
                        "accuracy_points": round(100 * (s_["test_accuracy"] - r["test_accuracy"]), 2),
                    }
                )
                last = rows[-1]
                print(
                    f"{name} pair {i + 1}: time {last['time_ratio']}x, RSS {last['rss_ratio']}x, "
                    f"accuracy {last['accuracy_points']:+} points",
                    flush=True,
                )
            results[name] = {"studio_set": studio_set, "pairs": rows}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out.write_text(json.dumps({"machine": f"{os.cpu_count()} cores", **results}, indent=2) + "\n")
    return 0


def child(variant: str) -> None:
    if variant.startswith("whole_recipe:"):
        result = run_whole_recipe(Path(variant.partition(":")[2]))
    elif variant.startswith("memory_"):
        kind, _, data = variant.partition(":")
        result = run_memory_recipe(Path(data)) if kind == "memory_recipe" else run_memory_studio(Path(data))
    elif variant == "recipe":
        result = run_recipe()
    elif variant == "floor":
        result = run_floor()
    elif variant.startswith("floor_"):  # floor_8, floor_16: the same step at that batch size
        result = run_floor(int(variant.split("_")[1]))
    elif variant.startswith("data_"):
        result = run_data(variant)
    else:
        result = run_studio(augment=variant == "studio")
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_train.json"))
    parser.add_argument("--child")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="instead: whole-run peak RSS for 200/1,000/2,000 test images against the recipe",
    )
    parser.add_argument(
        "--cache-pairs",
        type=int,
        default=0,
        help="instead: N alternating whole studio runs with the image cache in memory and in a file",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="instead: N interleaved recipe/studio pairs, printing each pair's and the median speed-up",
    )
    parser.add_argument("--whole", type=int, default=0, help="instead: N alternating whole-run pairs per data set")
    parser.add_argument("--sets", default="flowers2,hymenoptera", help="--whole: data sets (flowers2, hymenoptera)")
    parser.add_argument("--studio-set", action="append", default=[], help="--whole: KEY=VALUE for our runs")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent", file=sys.stderr)
        return 0
    keras_home = seeded_keras_home()
    env = {
        **os.environ,
        "KERAS_HOME": str(keras_home),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TRANSFER_STUDIO_HOME": tempfile.mkdtemp(prefix="bench-home-"),
        "PYTHONPATH": str(ROOT),
    }

    sys.path.insert(0, str(ROOT))
    from pipeline.host import launch

    def run_child(variant: str, **extra: str) -> dict | None:
        # Our runs get the environment the product gives its training child (launch.child_env: malloc arenas
        # capped); the recipe and the floor run as a notebook would, with the environment as it is.
        ours = not variant.startswith(("recipe", "memory_recipe", "floor"))
        child_env = {**(launch.child_env(**env) if ours else env), **extra}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", variant], env=child_env, capture_output=True, text=True
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            return None
        print(line[7:], file=sys.stderr)
        return json.loads(line[7:])

    if args.whole:
        out = Path(args.out) if args.out != parser.get_default("out") else ROOT / "bench" / "results_whole.json"
        return whole_main(out, env, args.whole, args.sets.split(","), args.studio_set)
    if args.memory:
        out = Path(args.out) if args.out != parser.get_default("out") else ROOT / "bench" / "results_memory.json"
        return memory_main(out, run_child)
    if args.cache_pairs:
        out = Path(args.out) if args.out != parser.get_default("out") else ROOT / "bench" / "results_memory.json"
        return cache_pairs_main(out, run_child, args.cache_pairs)

    if args.pairs:
        # The machine's speed drifts between minutes; back-to-back pairs share the drift.
        pairs = []
        for i in range(args.pairs):
            order = ("recipe", "studio") if i % 2 == 0 else ("studio", "recipe")
            got = {v: run_child(v) for v in order}
            if None in got.values():
                return 1
            pairs.append(
                {
                    "recipe_s": got["recipe"]["wall_seconds"],
                    "studio_s": got["studio"]["wall_seconds"],
                    "speed_up": round(got["recipe"]["wall_seconds"] / got["studio"]["wall_seconds"], 2),
                }
            )
            print(
                f"pair {i + 1}: recipe {pairs[-1]['recipe_s']} s, studio {pairs[-1]['studio_s']} s: "
                f"{pairs[-1]['speed_up']}x",
                flush=True,
            )
        ups = sorted(x["speed_up"] for x in pairs)
        median = ups[len(ups) // 2] if len(ups) % 2 else round((ups[len(ups) // 2 - 1] + ups[len(ups) // 2]) / 2, 2)
        print(f"median end-to-end speed-up over {len(ups)} pairs: {median}x")
        Path(args.out).write_text(
            json.dumps({"machine": f"{os.cpu_count()} cores", "pairs": pairs, "median_speed_up": median}, indent=2)
            + "\n"
        )
        return 0

    results = []
    for variant in ("recipe", "studio", "studio_cached", "floor", "floor_8", "data_recipe", "data_studio"):
        result = run_child(variant)
        if result is None:
            return 1
        results.append(result)
    Path(args.out).write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "results": results}, indent=2) + "\n")
    by = {r["variant"]: r for r in results}
    rec, st, sc = by["recipe"], by["studio"], by["studio_cached"]
    print("| variant | wall s | head img/s (steady) | fine-tune img/s | peak RSS MB | final val acc |")
    print("|---|---|---|---|---|---|")
    for r in (rec, st, sc):
        print(
            f"| {r['variant']} | {r['wall_seconds']} | {r['head_images_per_second_steady']} | "
            f"{r['fine_tune_images_per_second']} | {r['peak_rss_mb']:.0f} | {r['final_val_accuracy']} |"
        )
    print()
    print(f"end to end, augmentation on: {rec['wall_seconds'] / st['wall_seconds']:.2f}x faster than the recipe")
    print(
        f"head epochs on cached features: "
        f"{sc['head_images_per_second_steady'] / rec['head_images_per_second_steady']:.1f}x the recipe's"
    )
    print(
        f"peak memory: {st['peak_rss_mb'] / rec['peak_rss_mb']:.2f} of the recipe's; one fine-tune step alone "
        f"peaks at {by['floor']['peak_rss_mb']} MB "
        f"({by['floor']['peak_rss_mb'] / rec['peak_rss_mb']:.2f} of the recipe's), "
        f"at batch 8 {by['floor_8']['peak_rss_mb']} MB ({by['floor_8']['peak_rss_mb'] / rec['peak_rss_mb']:.2f})"
    )
    dr, ds = by["data_recipe"]["data_peak_above_imports_mb"], by["data_studio"]["data_peak_above_imports_mb"]
    print(f"image cache memory (peak above imports): recipe {dr} MB, studio {ds} MB: {ds / dr:.2f} of the recipe's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
