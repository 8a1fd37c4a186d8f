"""Splits: the exact, seeded, stratified train/val/test file lists of a run, and class weights for training."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.errors import DataError
from pipeline.data.scanning import ScanReport


@dataclass(frozen=True)
class Splits:
    """The exact file lists of a run, in label order ``classes``.

    Attributes:
        root: Folder the relative paths are under.
        classes: Class names; a label is an index into this list.
        train, val, test: Lists of (relative path, label index); ``test`` may be empty.
    """

    root: str
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]

    def paths(self, split: str) -> list[str]:
        return [str(Path(self.root) / rel) for rel, _ in getattr(self, split)]

    def labels(self, split: str) -> np.ndarray:
        return np.array([label for _, label in getattr(self, split)], dtype=np.int64)

    @property
    def eval_split(self) -> str:
        """The split evaluation uses: test when there is one, else val."""
        return "test" if self.test else "val"

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "classes": list(self.classes),
            "train": [list(x) for x in self.train],
            "val": [list(x) for x in self.val],
            "test": [list(x) for x in self.test],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Splits:
        return cls(
            data["root"],
            tuple(data["classes"]),
            *(tuple((rel, int(label)) for rel, label in data[s]) for s in ("train", "val", "test")),
        )


def make_splits(report: ScanReport, data_cfg: DataConfig, seed: int) -> Splits:
    """Stratified, seeded train/val/test lists; given split folders are used as they are.

    Raises:
        DataError: fewer than 2 classes, or a class with too few images for the split (naming it).
    """
    if len(report.classes) < 2:
        found = f"only {report.classes[0]!r}" if report.classes else "none"
        raise DataError(
            f"{report.root} has {len(report.classes)} usable class folder(s) ({found}); a classifier needs at "
            "least 2. Put each class's images in its own sub-folder."
        )
    index = {c: i for i, c in enumerate(report.classes)}
    rng = np.random.default_rng(seed)
    given_val = report.items.get("val") or []
    carve = test_from(report, data_cfg)
    if report.layout == "classes":
        val_f, test_f = data_cfg.val_fraction, data_cfg.test_fraction
        pool = report.items["all"]
    else:
        val_f = 0.0 if given_val else data_cfg.val_fraction
        test_f = data_cfg.test_fraction if carve == "train" else 0.0
        pool = report.items["train"]
    per_class: dict[str, list[str]] = defaultdict(list)
    for rel, cls in pool:
        per_class[cls].append(rel)
    train, val, test = [], [], []
    for cls in report.classes:
        files = sorted(per_class.get(cls, []))
        n_val = max(1, round(len(files) * val_f)) if val_f > 0 else 0
        n_test = max(1, round(len(files) * test_f)) if test_f > 0 else 0
        if len(files) - n_val - n_test < 1:
            need = 1 + (n_val > 0) + (n_test > 0)
            where = "" if report.layout == "classes" else " in train/"
            parts = (
                ["one to train on"] + (["one for validation"] if n_val else []) + (["one for test"] if n_test else [])
            )
            raise DataError(
                f"class {cls!r} has {len(files)} usable image(s){where}; each class needs at least {need} "
                f"({', '.join(parts)}). Add images to {cls!r}"
                + (" or set data.test_fraction=0." if n_test else " or remove the class.")
            )
        order = rng.permutation(len(files))
        shuffled = [files[i] for i in order]
        val += [(f, index[cls]) for f in shuffled[:n_val]]
        test += [(f, index[cls]) for f in shuffled[n_val : n_val + n_test]]
        train += [(f, index[cls]) for f in shuffled[n_val + n_test :]]
    if report.layout == "splits":
        if carve == "val":  # test_fraction of each class of val/ becomes the test split
            by_class: dict[str, list[str]] = defaultdict(list)
            for rel, cls in given_val:
                by_class[cls].append(rel)
            for cls in report.classes:
                files = sorted(by_class.get(cls, []))
                n_test = max(1, round(len(files) * data_cfg.test_fraction)) if files else 0
                if files and len(files) - n_test < 1:
                    raise DataError(
                        f"class {cls!r} has {len(files)} image(s) in val/: too few to carve a test split "
                        "from; carve it from train/ (data.test_from=train) or add images to val/."
                    )
                shuffled = [files[i] for i in rng.permutation(len(files))]
                test += [(f, index[cls]) for f in shuffled[:n_test]]
                val += [(f, index[cls]) for f in shuffled[n_test:]]
        else:
            val += [(rel, index[cls]) for rel, cls in given_val if cls in index]
        test += [(rel, index[cls]) for rel, cls in report.items.get("test", []) if cls in index]
    if not val:
        raise DataError(f"{report.root} leaves no validation images; add a val/ folder or images to train/.")
    return Splits(report.root, tuple(report.classes), tuple(train), tuple(val), tuple(test))


def test_from(report: ScanReport, data_cfg: DataConfig) -> str | None:
    """Where this dataset's test split comes from: "all" (carved from class folders), "folder" (its test/),
    "train" or "val" (carved from that folder, ``data.test_from``), or None (no test split)."""
    if report.layout == "classes":
        return "all" if data_cfg.test_fraction > 0 else None
    if report.items.get("test"):
        return "folder"
    if data_cfg.test_from == "none" or data_cfg.test_fraction <= 0:
        return None
    if data_cfg.test_from == "val" and not report.items.get("val"):
        return "train"  # no val/ folder: validation is carved from train/ too
    return data_cfg.test_from


def class_weights(labels: Sequence[int], num_classes: int, mode: str) -> dict[int, float] | None:
    """Keras ``class_weight`` for the training labels: scikit-learn's ``balanced`` weights.

    Each class present gets n / (k * count), k = ``num_classes``; a class with no label gets 0.0. scikit-learn
    computes over the classes present (k = their number), so its weights are scaled by present / ``num_classes``:
    the same values whether or not a class is absent, and exactly scikit-learn's when none is.

    Args:
        labels: Label indices (``0 <= label < num_classes``; others are ignored).
        num_classes: Number of classes of the model.
        mode: ``none`` (no weights), ``balanced`` (always), or ``auto`` (only when the largest class has 1.5x
            or more the images of the smallest present one).

    Returns:
        Class index -> weight for every class, or None when no weighting applies.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    y = y[(y >= 0) & (y < num_classes)]
    if mode == "none" or not y.size:
        return None
    counts = np.bincount(y, minlength=num_classes)
    if mode == "auto" and counts.max() < 1.5 * counts[counts > 0].min():
        return None
    from sklearn.utils.class_weight import compute_class_weight  # ~1 s to import: only when weights are used

    present = np.flatnonzero(counts)
    weights = compute_class_weight("balanced", classes=present, y=y) * (len(present) / num_classes)
    out = dict.fromkeys(range(num_classes), 0.0)
    out.update({int(c): float(w) for c, w in zip(present, weights, strict=True)})
    return out
