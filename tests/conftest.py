"""Shared fixtures: an isolated TRANSFER_STUDIO_HOME, tiny generated datasets, and ../shared material."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Keras reads KERAS_HOME once, at import: point it at an empty folder before anything imports keras,
# so the suite is offline like a user's fresh machine; keras_home_with_weights seeds it for one test.
KERAS_HOME = Path(tempfile.mkdtemp(prefix="ts-keras-home-"))
os.environ["KERAS_HOME"] = str(KERAS_HOME)


@pytest.fixture(autouse=True)
def ts_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own TRANSFER_STUDIO_HOME."""
    home = tmp_path_factory.mktemp("ts_home")
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(home))
    return home


def write_shapes_dataset(root: Path, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """Three easily learnable classes of noisy images: a bright square, a bright disc, a horizontal bar."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for cls in ("bar", "disc", "square"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            c = rng.integers(size // 3, 2 * size // 3, 2)
            r = size // 5
            if cls == "square":
                mask = (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r)
            elif cls == "disc":
                mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r
            else:
                mask = abs(yy - c[0]) < r // 3
            img[mask] = rng.integers(180, 255, 3)
            Image.fromarray(img).save(root / cls / f"{cls}_{i:02d}.png")
    return root


@pytest.fixture
def shapes_dir(tmp_path) -> Path:
    return write_shapes_dataset(tmp_path / "shapes")


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (real photos and weights live there on CI and developer machines)")
    return SHARED


@pytest.fixture
def keras_home_with_weights(shared_dir) -> Path:
    """KERAS_HOME/models seeded with ../shared/weights for one test, so weights='imagenet' loads offline."""
    models = KERAS_HOME / "models"
    models.mkdir(parents=True, exist_ok=True)
    for f in (shared_dir / "weights").glob("*.h5"):
        shutil.copy(f, models / f.name)
    yield KERAS_HOME
    shutil.rmtree(models, ignore_errors=True)


def tiny_config(**sections):
    """A RunConfig for seconds-long real training on the shapes set (random-init MobileNetV2 at 32 px)."""
    from pipeline import config

    base = {
        "model": {"backbone": "mobilenet_v2", "alpha": 0.35, "image_size": 32, "weights": "none"},
        "train": {
            "head_epochs": 2,
            "fine_tune_epochs": 1,
            "batch_size": 8,
            "early_stopping_patience": 0,
            "fine_tune_learning_rate": 1e-3,
        },
        "augment": {"enabled": False},
        "data": {"val_fraction": 0.25, "test_fraction": 0.0},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return config.from_dict(base)


def open_files_in(folder: Path, pid: int | str = "self") -> list[str]:
    """What process ``pid`` holds open in ``folder`` (its /proc fd links; a nameless file reads "... (deleted)")."""
    prefix = str(Path(folder).resolve()) + os.sep
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(prefix):
            out.append(target)
    return out


def pipeline_cli(*args, env: dict | None = None, **kw) -> subprocess.Popen:
    """``python -m pipeline ARGS`` as a user runs it (text pipes; this checkout on PYTHONPATH unless ``env``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env=env if env is not None else {**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def plant_flips(src: Path, dest: Path, fraction: float, seed: int) -> set[str]:
    """Hymenoptera's train+val as class folders under ``dest`` with ``fraction`` of the files in the wrong class."""
    files = sorted(p for split in ("train", "val") for p in (src / split).glob("*/*") if p.is_file())
    flip = set(np.random.default_rng(seed).choice(len(files), round(len(files) * fraction), replace=False).tolist())
    flipped = set()
    for i, path in enumerate(files):
        cls = path.parent.name
        target = {"ants": "bees", "bees": "ants"}[cls] if i in flip else cls
        name = f"{path.parent.parent.name}-{path.name}"
        (dest / target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / target / name)
        if i in flip:
            flipped.add(f"{target}/{name}")
    return flipped
