"""The scan: every file of a dataset folder hashed and decoded once, classes and counts, size statistics,
duplicates and cross-class conflicts, and every skipped file with its reason (and, where callers act on it,
its ``kind``).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.decode import Decoded, decode_many
from pipeline.data.errors import DataError, ProgressFn
from pipeline.data.sources import is_hidden

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# ``kind`` of the skipped files callers act on (the ``reason`` is for people and may be reworded)
CONFLICT = "conflict"  # its exact bytes sit in more than one class: every copy is skipped
DUPLICATE = "duplicate"  # its exact bytes sit elsewhere in the same class (``of``): one copy is used


@dataclass
class ScanReport:
    """What a folder holds: classes, counts, sizes, and every skipped file with its reason.

    Attributes:
        root: The scanned folder.
        layout: "classes" (class sub-folders) or "splits" (train/val/test folders of class sub-folders).
        classes: Class names in label order (sorted).
        items: Split name ("all" for the classes layout) -> list of [relative path, class name].
        skipped: Files not used, as {"path", "reason"}; duplicates and conflicts also carry a ``kind``
            (:data:`DUPLICATE`, :data:`CONFLICT`) and the fields :meth:`duplicates`/:meth:`conflicts` name.
        sizes: Class -> {"min": [w, h], "max": [w, h], "median": [w, h]} of the original images.
        warnings: Things worth fixing that do not stop training.
    """

    root: str
    layout: str
    classes: list[str]
    items: dict[str, list[list[str]]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    sizes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """Class -> split -> number of usable images."""
        out: dict[str, dict[str, int]] = {c: {} for c in self.classes}
        for split, items in self.items.items():
            for _, cls in items:
                out.setdefault(cls, {})
                out[cls][split] = out[cls].get(split, 0) + 1
        return out

    def total(self) -> int:
        return sum(len(v) for v in self.items.values())

    def conflicts(self) -> list[dict[str, str]]:
        """Skipped files whose exact bytes also sit in another class (``path``, ``class``, ``split``, ``digest``)."""
        return [s for s in self.skipped if s.get("kind") == CONFLICT]

    def duplicates(self) -> list[dict[str, str]]:
        """Skipped files whose exact bytes sit in the same class under another name (``path``, ``of``: the copy
        used)."""
        return [s for s in self.skipped if s.get("kind") == DUPLICATE]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = self.counts()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanReport:
        """The report :meth:`to_dict` wrote (the app's scan cache and dataset.json keep it as a dict)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def summary(self) -> str:
        """Plain-text report for the terminal."""
        lines = [f"{self.root}: {len(self.classes)} classes, {self.total()} images ({self.layout} layout)"]
        counts = self.counts()
        for c in self.classes:
            per = ", ".join(f"{s} {n}" for s, n in counts.get(c, {}).items())
            size = self.sizes.get(c)
            size_txt = f"; sizes {size['min'][0]}x{size['min'][1]} to {size['max'][0]}x{size['max'][1]}" if size else ""
            lines.append(f"  {c}: {per}{size_txt}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class _Probe:
    rel: str
    cls: str
    split: str
    digest: str = ""
    size: tuple[int, int] = (0, 0)
    error: str = ""


def scan(
    source_dir: str | Path,
    data_cfg: DataConfig | None = None,
    progress: ProgressFn | None = None,
    *,
    size: int | None = None,
) -> ScanReport:
    """Scans a folder of class sub-folders or split folders; decodes every file to find the bad ones.

    With ``size`` (the model's input size, when known) every good file is also left decoded at that size in
    the decoded-image cache (:mod:`pipeline.data.decoded`): the scan and the training cache decode each file once.

    Raises:
        DataError: the folder holds no class folders.
    """
    data_cfg = data_cfg or DataConfig()
    root = Path(source_dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.")
    skipped: list[dict[str, str]] = []
    probes: list[_Probe] = []
    top = sorted(root.iterdir(), key=lambda p: p.name)
    split_dirs = {
        p: SPLIT_NAMES[p.name.lower()]
        for p in top
        if p.is_dir() and not p.is_symlink() and p.name.lower() in SPLIT_NAMES
    }
    layout = "splits" if any(v == "train" for v in split_dirs.values()) else "classes"
    if layout == "splits":
        for p in top:
            if p in split_dirs:
                _collect_classes(root, p, split_dirs[p], probes, skipped)
            elif not is_hidden(p.name):
                skipped.append(
                    {
                        "path": _rel(root, p),
                        "reason": LINK_REASON if p.is_symlink() else "not a train/val/test split folder",
                    }
                )
    else:
        _collect_classes(root, root, "all", probes, skipped)

    _probe_all(root, probes, data_cfg.max_image_pixels, progress, size)
    good = _drop_bad_and_duplicates(probes, skipped)

    split_order = ("all",) if layout == "classes" else ("train", "val", "test")
    items = {s: [[p.rel, p.cls] for p in good if p.split == s] for s in split_order}
    items = {s: v for s, v in items.items() if v or s in ("all", "train")}
    class_source = items.get("all") or items.get("train") or []
    classes = sorted({cls for _, cls in class_source})
    report = ScanReport(str(root), layout, classes, items, skipped, _size_stats(good))
    report.warnings = _warnings(report)
    return report


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _collect_classes(root: Path, folder: Path, split: str, probes: list[_Probe], skipped: list[dict[str, str]]) -> None:
    """Every regular file under ``folder``'s class folders becomes a probe; anything else is skipped by name.

    One rule for links: a symbolic link (to a file or to a folder) is never followed, so a dataset is what
    its folder holds (a class folder linked to ``/etc`` would list the system). Named pipes, sockets and
    devices are skipped without being opened (opening a pipe waits for a writer forever).
    """
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if is_hidden(entry.name):
            continue
        if entry.is_symlink():
            skipped.append({"path": _rel(root, entry), "reason": LINK_REASON})
        elif entry.is_dir() and not _is_text(entry.name):
            skipped.append(
                {
                    "path": _rel(root, entry),
                    "reason": "a class folder whose name is not UTF-8 text: the "
                    "class name goes into the model's labels; rename the folder",
                }
            )
        elif entry.is_dir():
            for dirpath, dirnames, filenames in os.walk(entry):  # os.walk never descends into a linked folder
                here = Path(dirpath)
                for d in sorted(dirnames):
                    if not is_hidden(d) and (here / d).is_symlink():
                        skipped.append({"path": _rel(root, here / d), "reason": LINK_REASON})
                dirnames[:] = sorted(d for d in dirnames if not is_hidden(d) and not (here / d).is_symlink())
                for fname in sorted(filenames):
                    full = here / fname
                    if is_hidden(fname):
                        skipped.append({"path": _rel(root, full), "reason": "hidden or system file"})
                    elif reason := not_a_regular_file(full):
                        skipped.append({"path": _rel(root, full), "reason": reason})
                    else:
                        probes.append(_Probe(_rel(root, full), entry.name, split))
        else:
            skipped.append({"path": _rel(root, entry), "reason": "not inside a class folder"})


def _is_text(name: str) -> bool:
    """Whether a file name is UTF-8 text (a name with other bytes arrives with lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


LINK_REASON = "a symbolic link (links are not followed); copy the real file or folder into the dataset"


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` is not read as an image (a link, a named pipe, a socket, a device), None for a regular file.

    Looks with ``lstat`` only: nothing is opened, so a named pipe cannot block the scan.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return LINK_REASON
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    return f"{kind}, not an image file; it is skipped without being opened"


def _probe_all(
    root: Path, probes: list[_Probe], max_pixels: int, progress: ProgressFn | None, size: int | None = None
) -> None:
    """Hashes and decodes every file from its path on every core (:func:`decode_many`): 1 MB reads for the
    hash, every decode inside the decode budget, no file read whole into memory. With ``size`` (the model's),
    each file is decoded at that size into the decoded-image cache, so building the training cache afterwards
    decodes nothing; without it, JPEGs are drafted to 128 px for the check."""

    def keep(i: int, out: Decoded) -> None:
        p = probes[i]
        p.digest, p.size, p.error = out.digest, out.shown, out.error

    decode_many(
        [str(root / p.rel) for p in probes],
        size,
        max_pixels,
        names=[p.rel for p in probes],
        want_pixels=False,
        on_result=keep,
        progress=progress,
    )
    if size is not None:
        from pipeline.data import decoded

        if (store := decoded.store()) is not None:
            store.prune()


def _drop_bad_and_duplicates(probes: list[_Probe], skipped: list[dict[str, str]]) -> list[_Probe]:
    ok = []
    for p in probes:
        if p.error:
            skipped.append({"path": p.rel, "reason": p.error})
        else:
            ok.append(p)
    by_digest: dict[str, list[_Probe]] = defaultdict(list)
    for p in ok:
        by_digest[p.digest].append(p)
    good = []
    for p in ok:
        group = by_digest[p.digest]
        classes = sorted({g.cls for g in group})
        if len(classes) > 1:
            others = ", ".join(g.rel for g in group if g is not p)
            skipped.append(
                {
                    "path": p.rel,
                    "reason": f"the same bytes sit in classes {' and '.join(classes)} ({others}); "
                    "its label is ambiguous, so every copy is skipped: keep it in one class",
                    "kind": CONFLICT,
                    "class": p.cls,
                    "split": p.split,
                    "digest": p.digest,
                }
            )
        elif group[0] is not p:
            skipped.append(
                {
                    "path": p.rel,
                    "reason": f"an exact duplicate of {group[0].rel}; one copy is used",
                    "kind": DUPLICATE,
                    "of": group[0].rel,
                }
            )
        else:
            good.append(p)
    return good


def _size_stats(good: list[_Probe]) -> dict[str, dict[str, list[int]]]:
    by_class: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p in good:
        by_class[p.cls].append(p.size)
    out = {}
    for cls, sizes in by_class.items():
        arr = np.array(sizes)
        out[cls] = {
            "min": [int(arr[:, 0].min()), int(arr[:, 1].min())],
            "max": [int(arr[:, 0].max()), int(arr[:, 1].max())],
            "median": [int(np.median(arr[:, 0])), int(np.median(arr[:, 1]))],
        }
    return out


def _warnings(report: ScanReport) -> list[str]:
    out = []
    totals = {c: sum(n.values()) for c, n in report.counts().items()}
    if totals:
        small = [c for c, n in totals.items() if n < 10]
        if small:
            out.append(
                "few images in "
                + ", ".join(f"{c!r} ({totals[c]})" for c in small)
                + ": aim for at least 10, better 50+, per class"
            )
        lo, hi = min(totals.values()), max(totals.values())
        if lo and hi / lo >= 3:
            out.append(f"classes are imbalanced ({lo} to {hi} images); train.class_weight=auto compensates")
    dup = len(report.conflicts())
    if dup:
        out.append(f"{dup} file(s) appear in more than one class and were skipped")
    extra = set()
    for _split, items in report.items.items():
        extra |= {cls for _, cls in items} - set(report.classes)
    if extra:
        out.append("classes only in val/test (not in train) are ignored: " + ", ".join(sorted(extra)))
    return out
