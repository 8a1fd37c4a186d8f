"""Shared by the benchmark scripts (run as ``python bench/NAME.py``, so this folder is on sys.path)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CHROMIUM = "/usr/bin/chromium"
# headless Debian chromium without the background connections this closed network refuses (as the browser tests)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def seeded_keras_home() -> Path:
    """A fresh KERAS_HOME whose models/ holds ../shared/weights (no machine here can download them)."""
    keras_home = Path(tempfile.mkdtemp(prefix="bench-keras-"))
    (keras_home / "models").mkdir()
    for f in (SHARED / "weights").glob("*.h5"):
        shutil.copy(f, keras_home / "models" / f.name)
    return keras_home
