"""Where Transfer Studio keeps its state: ``TRANSFER_STUDIO_HOME`` (default ``~/.transfer_studio``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The folder holding the job store, runs, extracted uploads and the sample set."""
    root = os.environ.get("TRANSFER_STUDIO_HOME") or os.path.join(os.path.expanduser("~"), ".transfer_studio")
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    """Extracted zips (by content hash) and the materialised sample sets."""
    path = home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path
