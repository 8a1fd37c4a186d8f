"""The disk quota of a shared host: kept uploads and extracted datasets, least recently used removed first.

What counts: ``<home>/uploads/<hash>/``, ``<home>/weights/<hash>/`` (files visitors uploaded) and
``<home>/datasets/zip-*`` (extracted zips). A folder that any run refers to is never removed: a job's source,
a run's ``job.json`` source, its ``config.json`` weights file, or its ``dataset.json`` root (evaluation reads
the images from there). Using an entry marks it used (its folder's mtime: ``paths.store_upload`` and
``data.resolve_source`` touch it). The sample sets are never removed. A zip is unpacked through :func:`resolve`,
which keeps the quota after unpacking one.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path

from pipeline import data
from pipeline.config import DataConfig
from pipeline.data import ProgressFn
from pipeline.host import paths
from pipeline.host.limits import MB, Limits

KINDS = ("uploads", "weights")


def entries() -> list[Path]:
    """Every removable folder, least recently used first."""
    home = paths.home()
    found = [
        p
        for kind in KINDS
        if (home / kind).is_dir()
        for p in (home / kind).iterdir()
        if p.is_dir() and not p.name.startswith(".")
    ]
    found += [p for p in paths.datasets_dir().glob("zip-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def size_of(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += (Path(dirpath) / f).lstat().st_size
            except OSError:
                pass
    return total


def referenced() -> set[Path]:
    """Resolved paths that runs refer to (sources, weights files, dataset roots)."""
    home = paths.home()
    refs: set[str] = set()
    runs = home / "runs"
    for run in runs.iterdir() if runs.is_dir() else ():
        for name, keys in (
            ("job.json", (("source",), ("config", "model", "weights"))),
            ("config.json", (("model", "weights"),)),
            ("dataset.json", (("splits", "root"),)),
        ):
            try:
                doc = json.loads((run / name).read_text())
            except (OSError, ValueError):
                continue
            for key in keys:
                value = doc
                for k in key:
                    value = value.get(k) if isinstance(value, dict) else None
                if isinstance(value, str):
                    refs.add(value)
    if (home / "jobs.sqlite3").exists():
        from pipeline.jobs.store import JobStore

        for job in JobStore(home).list(limit=100_000):
            refs.add(job.source)
            weights = job.config.get("model", {}).get("weights")
            if isinstance(weights, str):
                refs.add(weights)
    return {Path(r).resolve() for r in refs if r and not r.startswith("sample")}


def enforce(keep: Iterable[Path] = (), quota_mb: int | None = None) -> list[Path]:
    """Removes unreferenced entries, least recently used first, until the total fits ``quota_mb``.

    Args:
        keep: Paths in use right now (the upload or dataset just made); entries holding them stay.
        quota_mb: Default ``TRANSFER_STUDIO_DISK_QUOTA_MB``.

    Returns:
        The removed folders.
    """
    limit = (quota_mb if quota_mb is not None else Limits.from_env().disk_quota_mb) * MB
    current = entries()
    sizes = {e: size_of(e) for e in current}
    total = sum(sizes.values())
    if total <= limit:
        return []
    protected = referenced() | {Path(k).resolve() for k in keep}
    removed = []
    for entry in current:
        if total <= limit:
            break
        root = entry.resolve()
        if any(p == root or root in p.parents or p in root.parents for p in protected):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= sizes[entry]
        removed.append(entry)
    return removed


def resolve(source: str | os.PathLike, data_cfg: DataConfig | None = None, progress: ProgressFn | None = None) -> Path:
    """``data.resolve_source``, then the quota kept when it unpacked a zip (the new folder and the zip stay)."""
    path = Path(str(source)).expanduser()
    fresh = (
        not data.is_sample(str(source))
        and path.is_file()
        and zipfile.is_zipfile(path)
        and not data.zip_folder(path).exists()
    )
    folder = data.resolve_source(source, data_cfg, progress=progress)
    if fresh:
        enforce(keep=(data.zip_folder(path), path))
    return folder
