"""GPU check in one command: the project's own training on this machine's accelerator, as JSON lines.

``python bench/bench_gpu.py [--out FILE]`` trains MobileNetV2 alpha 0.35 at 224 (the real ImageNet weights from
../shared/weights) on a few thousand images made from ../shared/data/hymenoptera (random crops and flips of
the real photos, written as JPEGs), through ``pipeline.training.train`` itself: the head on cached features, then
fine-tuning, for each of batch 32 and 256 in float32 and mixed_bfloat16. Each configuration runs in its own
process (its own compile, its own peak device memory) and prints one JSON line:

- ``phases.<phase>.images_per_second``: steady epochs (after the first), training steps only;
- ``phases.<phase>.compile_seconds``: the first epoch's extra time over a steady one (tracing + XLA compile);
- ``phases.<phase>.input_wait_seconds`` / ``input_wait_fraction``: time the training loop waited for the next
  batch (the device idle on input; JAX feed only);
- ``features_images_per_second``: the frozen base's forward pass (the cached-feature step);
- ``peak_device_memory_mb``: the device's peak bytes in use (None on a CPU);
- ``target``: the H100 figures this should come within 1.5x of (fine-tune ~4,000 images/s at batch 32,
  ~10,000 at 256, float32), and whether it did.

Backend: JAX when installed (the GPU machines this project borrows have JAX and no TensorFlow), else
TensorFlow; ``--backend`` chooses. Imports nothing beyond numpy, Pillow, keras, jax (or tensorflow on that
backend) and the standard library. ``--budget`` (default 270 s) keeps the whole check under 5 minutes: a
configuration that would not fit is reported as skipped. ``--smoke``: a tiny CPU version (32 px, random
weights, batch 8, 48 images; a test runs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "data" / "hymenoptera"
TARGET = {32: 4000 / 1.5, 256: 10000 / 1.5}  # within 1.5x of the H100 ceiling, float32 fine-tune
FULL = {
    "images": 4096,
    "size": 224,
    "weights": "imagenet",
    "head_epochs": 2,
    "fine_tune_epochs": 3,
    "configs": [("float32", 32), ("float32", 256), ("mixed_bfloat16", 32), ("mixed_bfloat16", 256)],
}
SMOKE = {
    "images": 48,
    "size": 32,
    "weights": "none",
    "head_epochs": 2,
    "fine_tune_epochs": 2,
    "configs": [("float32", 8), ("mixed_bfloat16", 8)],
}


def make_images(dest: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` JPEGs in class folders, each a random crop (60-100% of the side), maybe mirrored, of a real
    photo, resized to ``size`` + 12% (so the pipeline still resizes, as it does for users' photos)."""
    from PIL import Image

    sources = sorted(p for p in PHOTOS.rglob("*.jpg"))
    if not sources:
        raise SystemExit(f"no photos under {PHOTOS}: this check needs ../shared beside the checkout")
    rng = random.Random(seed)
    side = int(size * 1.12)
    plan = [
        (i, rng.choice(sources), rng.random(), rng.random(), rng.random(), rng.random() < 0.5) for i in range(count)
    ]

    def one(item) -> None:
        i, src, scale, fx, fy, flip = item
        with Image.open(src) as im:
            im = im.convert("RGB")
            w, h = im.size
            crop = max(8, int(min(w, h) * (0.6 + 0.4 * scale)))
            x, y = int((w - crop) * fx), int((h - crop) * fy)
            out = im.crop((x, y, x + crop, y + crop)).resize((side, side), Image.BILINEAR)
            if flip:
                out = out.transpose(Image.FLIP_LEFT_RIGHT)
            label = src.parent.name
            (dest / label).mkdir(parents=True, exist_ok=True)
            out.save(dest / label / f"{i:05d}.jpg", quality=90)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, plan))
    return dest


def seeded_keras_home(where: Path) -> Path:
    models = where / "models"
    models.mkdir(parents=True, exist_ok=True)
    for f in (SHARED / "weights").glob("*.h5"):
        shutil.copy(f, models / f.name)
    return where


def summarise(events: list[dict], n_train: int) -> dict:
    """Per phase: steady images/s, compile seconds, input wait, from the run's own epoch records."""
    phases: dict[str, dict] = {}
    for name in dict.fromkeys(e["phase"] for e in events if e["event"] == "epoch"):
        epochs = [e for e in events if e["event"] == "epoch" and e["phase"] == name]
        speeds = [e["images_per_second"] for e in epochs]
        steady = statistics.median(speeds[1:]) if len(speeds) > 1 else speeds[0]
        train_s = [n_train / s for s in speeds]
        waits = [e.get("input_wait_seconds") for e in epochs[1:]]
        wait = sum(waits) if waits and None not in waits else None
        phases[name] = {
            "epochs": len(epochs),
            "images_per_second": round(steady, 1),
            "first_epoch_seconds": round(train_s[0], 2),
            "compile_seconds": round(max(0.0, train_s[0] - n_train / steady), 2),
            "input_wait_seconds": None if wait is None else round(wait, 3),
            "input_wait_fraction": None if wait is None else round(wait / max(sum(train_s[1:]), 1e-9), 4),
        }
    return phases


def peak_device_memory_mb(backend: str) -> float | None:
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats()
        return round(stats["peak_bytes_in_use"] / 2**20, 1) if stats and "peak_bytes_in_use" in stats else None
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return None
    return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)


def child(spec: dict) -> dict:
    """One configuration, in this process: ``pipeline.training.train`` on the prepared images."""
    sys.path.insert(0, str(ROOT))
    from pipeline import config as config_mod
    from pipeline.training import train as train_mod

    cfg = config_mod.from_dict(
        {
            "model": {
                "backbone": "mobilenet_v2",
                "alpha": 0.35,
                "image_size": spec["size"],
                "weights": spec["weights"],
            },
            "train": {
                "strategy": "fine_tune",
                "head_epochs": spec["head_epochs"],
                "fine_tune_epochs": spec["fine_tune_epochs"],
                "batch_size": spec["batch_size"],
                "precision": spec["precision"],
                "backend": spec["backend"],
                "early_stopping_patience": 0,
                "class_weight": "none",
            },
            "augment": {"enabled": False},
            "data": {"val_fraction": 0.1, "test_fraction": 0.0},
        }
    )
    events: list[dict] = []
    t0 = time.perf_counter()
    train_mod.train(spec["data"], spec["run_dir"], cfg, on_event=events.append, evaluate_after=False)
    wall = time.perf_counter() - t0
    import keras

    start = next(e for e in events if e["event"] == "start")
    n_train = len(json.loads((Path(spec["run_dir"]) / "dataset.json").read_text())["splits"]["train"])
    features = next((e for e in events if e["event"] == "features"), {})
    caches = [e["time"] for e in events if e["event"] == "cache"]
    phases = summarise(events, n_train)
    device = start["devices"]["framework"]
    out = {
        "precision": spec["precision"],
        "batch_size": spec["batch_size"],
        "backend": keras.backend.backend(),
        "devices": device,
        "device_kind": _device_kind(keras.backend.backend()),
        "images": n_train,
        "image_size": spec["size"],
        "phases": phases,
        "features_images_per_second": features.get("images_per_second"),
        "image_cache_seconds": round(caches[-1] - caches[0], 2) if caches else None,
        "peak_device_memory_mb": peak_device_memory_mb(keras.backend.backend()),
        "run_seconds": round(wall, 1),
        "keras": keras.__version__,
        "third_party_imports": third_party_imports(),
    }
    goal = TARGET.get(spec["batch_size"])
    if goal and spec["precision"] == "float32" and not spec.get("smoke") and "fine_tune" in phases:
        out["target"] = {
            "fine_tune_images_per_second_at_least": round(goal),
            "met": phases["fine_tune"]["images_per_second"] >= goal,
        }
    return out


def third_party_imports() -> list[str]:
    """Top-level modules this process imported that are neither the standard library nor this project."""
    project = {"pipeline", "export", "app_pages", "bench_gpu", "_common"}
    names = {name.split(".")[0] for name in list(sys.modules)}
    return sorted(n for n in names if n not in sys.stdlib_module_names and n not in project and not n.startswith("_"))


def _device_kind(backend: str) -> str:
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "cpu"


def default_backend() -> str:
    return "jax" if importlib.util.find_spec("jax") else "tensorflow"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU version (a test runs it)")
    parser.add_argument("--backend", choices=("jax", "tensorflow"), default=None)
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds for the whole check (default 270)")
    parser.add_argument("--images", type=int, help="how many images to make (default 4096; smoke 48)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0

    t_start = time.perf_counter()
    plan = SMOKE if args.smoke else FULL
    backend = args.backend or default_backend()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    lines: list[dict] = []

    def emit(record: dict) -> None:
        lines.append(record)
        print(json.dumps(record), flush=True)
        if args.out:
            args.out.write_text("".join(json.dumps(r) + "\n" for r in lines))

    try:
        t0 = time.perf_counter()
        data = make_images(work / "images", args.images or plan["images"], plan["size"])
        emit(
            {
                "check": "bench_gpu",
                "smoke": args.smoke,
                "backend": backend,
                "images": args.images or plan["images"],
                "make_images_seconds": round(time.perf_counter() - t0, 1),
            }
        )
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            "KERAS_HOME": str(seeded_keras_home(work / "keras")),
            "TRANSFER_STUDIO_HOME": str(work / "home"),
            "PYTHONPATH": str(ROOT),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        }
        durations: list[float] = []
        for precision, batch in plan["configs"]:
            elapsed = time.perf_counter() - t_start
            expected = statistics.mean(durations) if durations else 0.0
            if durations and elapsed + expected > args.budget:
                emit(
                    {
                        "precision": precision,
                        "batch_size": batch,
                        "skipped": f"over the {args.budget:.0f} s budget "
                        f"({elapsed:.0f} s used, a configuration takes ~{expected:.0f} s)",
                    }
                )
                continue
            spec = {
                **plan,
                "precision": precision,
                "batch_size": batch,
                "backend": backend,
                "smoke": args.smoke,
                "data": str(data),
                "run_dir": str(work / f"run-{precision}-{batch}"),
            }
            spec.pop("configs")
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=max(60.0, args.budget - elapsed + 60),
                )
            except subprocess.TimeoutExpired as exc:
                durations.append(time.perf_counter() - t0)
                emit(
                    {
                        "precision": precision,
                        "batch_size": batch,
                        "failed": "timeout",
                        "seconds": round(durations[-1], 1),
                        "stderr": (exc.stderr or b"")[-2000:].decode(errors="replace")
                        if isinstance(exc.stderr, bytes)
                        else (exc.stderr or "")[-2000:],
                    }
                )
                continue
            durations.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                emit(
                    {
                        "precision": precision,
                        "batch_size": batch,
                        "failed": proc.returncode,
                        "stderr": proc.stderr[-2000:],
                    }
                )
                continue
            emit({**json.loads(proc.stdout.strip().splitlines()[-1]), "process_seconds": round(durations[-1], 1)})
        emit({"total_seconds": round(time.perf_counter() - t_start, 1)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any("failed" in r for r in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
