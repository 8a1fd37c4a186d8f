"""Corrections to a dataset as a revision beside it: relabel, exclude and add, never touching the originals.

A dataset folder (the scanned root of a folder, an extracted .zip or a sample set) gets one revision log,
``TRANSFER_STUDIO_HOME/revisions/<key>/corrections.json``: an append-only list of entries ::

    {"id": 3, "op": "relabel", "path": "ants/x.jpg", "class": "bees", "time": ...}
    {"id": 4, "op": "exclude", "path": "bees/blurry.jpg", "time": ...}
    {"id": 5, "op": "add", "path": "<home>/revisions/<key>/added/<hash>/new.jpg", "class": "ants", "time": ...}
    {"id": 6, "op": "undo", "undoes": 5, "time": ...}

The revision number is the number of entries. Originals are only ever read; added images are copied into the
revision's own ``added/`` folder. :func:`apply` turns a scan report into what training sees; the run folder's
``dataset.json`` records the revision number it used. The log lives under the app's home rather than inside
the dataset, so a read-only folder or a shared server folder can be corrected too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.config import DataConfig
from pipeline.data import CONFLICT, DataError, ProgressFn, ScanReport, file_sha256, load_image
from pipeline.data import scan as data_scan
from pipeline.data.scanning import not_a_regular_file
from pipeline.host import paths
from pipeline.host.atomic import atomic_write_json
from pipeline.host.disk import full_disk_is_a_message

OPS = ("relabel", "exclude", "add", "undo")


class Revision:
    """The correction log of one dataset folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        key = hashlib.sha256(str(self.folder).encode()).hexdigest()[:16]
        self.dir = paths.home() / "revisions" / f"{_safe(self.folder.name)}-{key}"
        self.file = self.dir / "corrections.json"

    # === Reading ===

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (an empty list when nothing was corrected).

        Raises:
            DataError: the log is not valid JSON (naming it and the way forward).
        """
        if not self.file.exists():
            return []
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            entries = data["entries"]
            assert isinstance(entries, list)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise DataError(
                f"the corrections file {self.file} is damaged ({exc}); restore it from a backup or "
                "delete it to start the dataset's corrections again (the images are unchanged)."
            ) from exc
        return entries

    @property
    def number(self) -> int:
        """The revision number: how many entries the log holds (0: the dataset as it is on disk)."""
        return len(self.entries())

    def active(self) -> list[dict[str, Any]]:
        """The relabel/exclude/add entries in effect (undone ones and the undo entries left out)."""
        entries = self.entries()
        undone = {e["undoes"] for e in entries if e["op"] == "undo"}
        return [e for e in entries if e["op"] != "undo" and e["id"] not in undone]

    # === Writing (append-only) ===

    def relabel(self, report: ScanReport, path: str, cls: str) -> dict[str, Any]:
        """Records that the dataset file ``path`` (relative to the folder) belongs to class ``cls``.

        Raises:
            DataError: the file is not in the dataset, or the class does not exist.
        """
        rel = self._dataset_file(report, path)
        return self._append({"op": "relabel", "path": rel, "class": _known_class(report, cls)})

    def exclude(self, report: ScanReport, path: str) -> dict[str, Any]:
        """Records that the dataset file ``path`` is left out of training and evaluation."""
        return self.exclude_all(report, [path])[0]

    def exclude_all(self, report: ScanReport, paths_: list[str]) -> list[dict[str, Any]]:
        """Leaves every file of ``paths_`` out, or none of them: all are checked before any is recorded.

        Raises:
            DataError: naming every path that is not a file of the dataset; nothing was recorded.
        """
        checked, problems = [], []
        for path in paths_:
            try:
                checked.append(self._dataset_file(report, path))
            except DataError as exc:
                problems.append(str(exc).rstrip("."))
        if problems:
            raise DataError(f"nothing was excluded: {'; '.join(problems)}.")
        return self._append_all([{"op": "exclude", "path": rel} for rel in checked])

    def add(
        self, report: ScanReport, cls: str, image: str | Path, name: str | None = None, *, force: bool = False
    ) -> dict[str, Any]:
        """Copies the image file ``image`` into the revision and records it as an example of ``cls``."""
        return self.add_all(report, cls, [(image, name)], force=force)[0]

    def add_all(
        self, report: ScanReport, cls: str, images: list[tuple[str | Path, str | None]], *, force: bool = False
    ) -> list[dict[str, Any]]:
        """Copies every image of ``images`` ((file, the name the user knows it by)) into the revision as an
        example of ``cls``, or none: all are checked before any is recorded (one write records them all).

        An image whose bytes are already in the dataset (any split: a copy of a validation image trained on
        is a leak), already added, or given twice is refused unless ``force``.

        Raises:
            DataError: the class does not exist, or naming every file that is not a readable image or is a
                copy; nothing was recorded.
        """
        cls = _known_class(report, cls)
        problems, ready = [], []
        for image, name in images:
            src = Path(image)
            shown = name or src.name
            if not src.exists() and not src.is_symlink():
                problems.append(f"{shown} does not exist")
                continue
            if why := not_a_regular_file(src):
                problems.append(f"{shown} cannot be added ({why.split(';')[0]})")
                continue
            try:
                load_image(src, 32)  # refuses what is not a readable image
            except DataError as exc:
                problems.append(str(exc).rstrip(".").replace(str(src), shown))
                continue
            ready.append((src, shown, file_sha256(src)))
        if problems:
            raise DataError(f"nothing was added: {'; '.join(problems)}.")
        copies = [] if force else self._copies(report, ready)
        if copies:
            raise DataError(
                f"nothing was added: {'; '.join(copies)}. Add only new images, or add them anyway "
                '(`--force`; on the page, tick "Add copies anyway").'
            )
        entries = []
        for src, shown, digest in ready:
            stored = self.dir / "added" / digest[:16] / _safe(PurePosixPath(shown).name)
            if not stored.exists():
                part = stored.with_name(stored.name + ".part")
                try:
                    with full_disk_is_a_message(self.dir, src.stat().st_size, then="add them again"):
                        stored.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src, part)
                        part.replace(stored)
                finally:
                    part.unlink(missing_ok=True)
            entries.append({"op": "add", "path": str(stored), "class": cls})
        return self._append_all(entries)

    def _copies(self, report: ScanReport, ready: list[tuple[Path, str, str]]) -> list[str]:
        """Why each image of ``ready`` is a copy: of a dataset file, of an image added before, of another one given."""
        out, seen = [], {}
        added = {Path(e["path"]).parent.name: Path(e["path"]).name for e in self.active() if e["op"] == "add"}
        by_size: dict[int, list[tuple[str, str]]] = {}
        for split, items in report.items.items():
            for rel, _ in items:
                with contextlib.suppress(OSError):
                    by_size.setdefault(os.stat(Path(report.root) / rel).st_size, []).append((split, rel))
        for src, shown, digest in ready:
            if digest in seen:
                out.append(f"{shown} is the same image as {seen[digest]}, given twice")
                continue
            seen[digest] = shown
            if digest[:16] in added:
                out.append(f"{shown} was added before (as {added[digest[:16]]})")
                continue
            for split, rel in by_size.get(src.stat().st_size, []):
                if file_sha256(Path(report.root) / rel) == digest:
                    where = {"val": "validation", "test": "test", "train": "training"}.get(split, "the dataset")
                    leak = (
                        f": trained on, it would leak {where} into training"
                        if split in ("val", "test")
                        else ": it could land in training and validation at once"
                    )
                    out.append(f"{shown} is a copy of {rel} (in {where}){leak}")
                    break
        return out

    def undo(self, entry_id: int | None = None) -> dict[str, Any]:
        """Undoes correction ``entry_id`` (default: the latest still in effect), recorded as an ``undo`` entry;
        nothing is erased.

        Raises:
            DataError: there is nothing to undo, or ``entry_id`` is not a correction in effect.
        """
        with self._locked():  # checked and recorded under one lock: two tabs cannot undo the same one twice
            active = self.active()
            if not active:
                raise DataError(f"the dataset {self.folder} has no correction to undo.")
            if entry_id is not None and entry_id not in {e["id"] for e in active}:
                raise DataError(
                    f"correction #{entry_id} of the dataset {self.folder} is not in effect (undone "
                    "already, or not one of its corrections)."
                )
            return self._append_all([{"op": "undo", "undoes": entry_id or active[-1]["id"]}], locked=True)[0]

    def _append(self, entry: dict[str, Any]) -> dict[str, Any]:
        return self._append_all([entry])[0]

    def _append_all(self, new: list[dict[str, Any]], *, locked: bool = False) -> list[dict[str, Any]]:
        """Records ``new`` in one atomic write of the log (all or none), numbered after what is there."""
        with contextlib.nullcontext() if locked else self._locked():
            entries = self.entries()
            now = round(time.time(), 3)
            new = [{"id": len(entries) + i + 1, **entry, "time": now} for i, entry in enumerate(new)]
            atomic_write_json(self.file, {"folder": str(self.folder), "entries": [*entries, *new]})
        return new

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _dataset_file(self, report: ScanReport, path: str) -> str:
        """``path`` as the scan names it (relative, forward slashes), checked to be a file of this dataset."""
        pure = PurePosixPath(str(path).replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise DataError(
                f"{path!r} is not a path inside the dataset; give it relative to {self.folder}, without '..'."
            )
        rel = str(pure)
        known = {r for items in report.items.values() for r, _ in items} | {s["path"] for s in report.conflicts()}
        if rel not in known:
            raise DataError(f"{rel!r} is not an image of the dataset {self.folder} (see `python -m pipeline scan`).")
        return rel


def scan(
    folder: str | Path,
    data_cfg: DataConfig | None = None,
    progress: ProgressFn | None = None,
    *,
    size: int | None = None,
) -> tuple[ScanReport, Revision]:
    """The dataset folder as training sees it: its scan with its revision's corrections applied (``size``: the
    model's input size, when known, leaves every file decoded at it; see :func:`pipeline.data.scan`)."""
    rev = Revision(folder)
    report = data_scan(folder, data_cfg, progress=progress, size=size)
    return apply(report, rev.active()), rev


def apply(report: ScanReport, entries: list[dict[str, Any]]) -> ScanReport:
    """The scan report as training sees it after the corrections ``entries`` (:meth:`Revision.active`).

    Relabels keep each file in its split; excluded files are dropped; added files join ``all`` (class-folder
    layout) or ``train``. A file the scan skipped because its bytes sat in two classes comes back once the
    corrections leave its copies in one class (for example, after excluding the other copy).
    """
    relabel = {e["path"]: e["class"] for e in entries if e["op"] == "relabel"}
    excluded = {e["path"] for e in entries if e["op"] == "exclude"}
    items = {
        split: [[rel, relabel.get(rel, cls)] for rel, cls in lst if rel not in excluded]
        for split, lst in report.items.items()
    }
    skipped = [s for s in report.skipped if s.get("kind") != CONFLICT]
    groups: dict[str, list[dict[str, str]]] = {}
    for s in report.conflicts():
        groups.setdefault(s["digest"], []).append(s)
    for group in groups.values():
        kept = [s for s in group if s["path"] not in excluded]
        classes = {relabel.get(s["path"], s["class"]) for s in kept}
        if len(classes) == 1:
            first = kept[0]
            items.setdefault(first["split"], []).append([first["path"], classes.pop()])
        else:
            skipped += [s for s in group if s["path"] not in excluded]
    target = "all" if report.layout == "classes" else "train"
    items[target] = items.get(target, []) + [[e["path"], e["class"]] for e in entries if e["op"] == "add"]
    return dataclasses.replace(report, items=items, skipped=skipped)


def summary(revision: Revision) -> str:
    """The log as plain text, one line per entry."""
    lines = [f"{revision.folder}: revision {revision.number} ({revision.file})"]
    undone = {e["undoes"] for e in revision.entries() if e["op"] == "undo"}
    for e in revision.entries():
        what = {
            "relabel": lambda e: f"relabel {e['path']} -> {e['class']}",
            "exclude": lambda e: f"exclude {e['path']}",
            "add": lambda e: f"add {Path(e['path']).name} to {e['class']}",
            "undo": lambda e: f"undo #{e['undoes']}",
        }[e["op"]](e)
        lines.append(f"  #{e['id']} {what}{' (undone)' if e['id'] in undone else ''}")
    return "\n".join(lines)


def _known_class(report: ScanReport, cls: str) -> str:
    if cls not in report.classes:
        raise DataError(f"there is no class {cls!r} in this dataset; classes: {', '.join(report.classes)}.")
    return cls


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "image"
