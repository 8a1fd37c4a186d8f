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


def store_upload(payload: bytes, name: str, kind: str) -> Path:
    """Keeps an uploaded file as ``<home>/<kind>/<content hash>/<its name, made safe>``; returns that path.

    One copy per content, under the name the user gave it (runs list it), written to a temporary name and
    renamed, so a crash never leaves a half-written file under the final name.
    """
    import hashlib
    import re

    original = Path(name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", original.stem).strip("._")[:60] or "upload"
    suffix = re.sub(r"[^A-Za-z0-9.]+", "", original.suffix.lower())[:10]
    target = home() / kind / hashlib.sha256(payload).hexdigest()[:16] / f"{stem}{suffix}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f"{target.name}.{os.getpid()}.part")
        part.write_bytes(payload)
        part.replace(target)
    return target
