"""Suspected label errors (pipeline.quality.label_issues) and dataset revisions (pipeline.data.revision)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import data as data_mod
from pipeline.data import DataError, revision
from pipeline.quality import label_issues
from tests.conftest import plant_flips, tiny_config


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_planted_label_flips_are_found(shared_dir, keras_home_with_weights, tmp_path):
    """10% of the labels flipped: most of them flagged, and the flagged set is mostly flips.

    Thresholds from bench/bench_label_issues.py (BENCHMARKS.md): precision 0.67, recall 0.85 there.
    """
    from pipeline import config as config_mod

    flipped = plant_flips(shared_dir / "data" / "hymenoptera", tmp_path / "flipped", 0.1, seed=1)
    cfg = config_mod.apply_overrides(config_mod.RunConfig(), ["data.test_fraction=0"])
    report = data_mod.scan(tmp_path / "flipped", cfg.data)
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
    result = label_issues.find_in_splits(splits, cfg)
    flagged = {r["path"] for r in result["issues"]}
    recall = len(flagged & flipped) / len(flipped)
    precision = len(flagged & flipped) / len(flagged)
    assert recall >= 0.7, (recall, precision)
    assert precision >= 0.5, (recall, precision)
    assert result["folds"] == 5 and result["images"] == len(splits.train) + len(splits.val)
    worst = result["issues"][0]
    assert worst["suggested"] != worst["label"] and 0 <= worst["score"] < 0.5


def test_out_of_sample_probabilities_never_see_the_label():
    """A point whose features match the other class gets that class, though its own label says otherwise."""
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (30, 8)), rng.normal(4, 1, (30, 8))]).astype(np.float32)
    labels = np.array([0] * 30 + [1] * 30)
    labels[3] = 1  # planted: looks like class 0, labelled 1
    probs, folds = label_issues.out_of_sample_probabilities(features, labels, 2, seed=0)
    order, scores = label_issues.rank(labels, probs)
    assert folds == 5 and probs[3].argmax() == 0
    assert order[0] == 3 and scores[3] == scores.min()
    with pytest.raises(DataError, match="at least 2"):
        label_issues.out_of_sample_probabilities(features[:31], np.array([0] * 30 + [1]), 2, seed=0)


def test_revision_changes_what_training_sees_and_never_touches_originals(shapes_dir, tmp_path):
    before = _sha256_tree(shapes_dir)
    cfg = tiny_config()
    report = data_mod.scan(shapes_dir, cfg.data)
    rev = revision.Revision(shapes_dir)
    assert rev.number == 0 and revision.apply(report, rev.active()).items == report.items

    rev.relabel(report, "bar/bar_00.png", "disc")
    rev.exclude(report, "square/square_01.png")
    extra = tmp_path / "extra.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(extra)
    added = rev.add(report, "square", extra)
    assert rev.number == 3

    revised = revision.apply(report, rev.active())
    seen = dict((rel, cls) for rel, cls in revised.items["all"])
    assert seen["bar/bar_00.png"] == "disc"
    assert "square/square_01.png" not in seen
    assert seen[added["path"]] == "square" and Path(added["path"]).is_file()
    splits = data_mod.make_splits(revised, cfg.data, seed=0)
    every = {rel: splits.classes[label] for s in ("train", "val", "test") for rel, label in getattr(splits, s)}
    assert every["bar/bar_00.png"] == "disc" and "square/square_01.png" not in every and added["path"] in every
    assert Path(splits.paths("train")[0]).is_file()
    assert all(Path(p).is_file() for s in ("train", "val") for p in splits.paths(s))  # added files resolve too

    rev.undo()  # the add is undone, relabel and exclude stay
    assert {e["op"] for e in rev.active()} == {"relabel", "exclude"} and rev.number == 4
    assert added["path"] not in dict(map(tuple, revision.apply(report, rev.active()).items["all"]))
    assert _sha256_tree(shapes_dir) == before  # no original file moved, renamed or changed


def test_revision_refuses_bad_input(shapes_dir, tmp_path):
    report = data_mod.scan(shapes_dir)
    rev = revision.Revision(shapes_dir)
    with pytest.raises(DataError, match="no class 'cat'"):
        rev.relabel(report, "bar/bar_00.png", "cat")
    with pytest.raises(DataError, match="without '..'"):
        rev.exclude(report, "../shapes/bar/bar_00.png")
    with pytest.raises(DataError, match="without '..'"):
        rev.exclude(report, str(shapes_dir / "bar" / "bar_00.png"))
    with pytest.raises(DataError, match="not an image of the dataset"):
        rev.exclude(report, "bar/missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        rev.add(report, "bar", text)
    with pytest.raises(DataError, match="no correction to undo"):
        rev.undo()
    assert rev.number == 0


def test_corrections_are_all_or_nothing_and_copies_of_another_splits_image_are_refused(tmp_path, capsys):
    """`add DATA ants good.jpg note.jpg` exited 2 yet recorded the good one (same for `exclude`); adding an image
    twice, or a copy of a validation image, put duplicates in train with no warning (a leak)."""
    from pipeline.__main__ import main
    from tests.conftest import write_shapes_dataset

    data = tmp_path / "ds"
    for split in ("train", "val"):
        write_shapes_dataset(data / split, per_class=3, seed={"train": 0, "val": 1}[split])
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 40, 3), 123, np.uint8)).save(good)
    note = tmp_path / "note.jpg"
    note.write_text("not an image")
    rev = revision.Revision(data)

    assert main(["add", str(data), "bar", str(good), str(note)]) == 2
    err = capsys.readouterr().err
    assert "nothing was added" in err and "note.jpg" in err and rev.number == 0
    assert main(["exclude", str(data), "train/bar/bar_00.png", "train/bar/missing.png"]) == 2
    assert "nothing was excluded" in capsys.readouterr().err and rev.number == 0

    val_copy = tmp_path / "from_val.png"
    shutil.copy(data / "val" / "disc" / "disc_01.png", val_copy)
    assert main(["add", str(data), "disc", str(good), str(val_copy)]) == 2
    err = capsys.readouterr().err
    assert "from_val.png is a copy of val/disc/disc_01.png (in validation)" in err and "--force" in err
    assert rev.number == 0
    twice = tmp_path / "again.png"
    shutil.copy(good, twice)
    assert main(["add", str(data), "bar", str(good), str(twice)]) == 2
    assert "given twice" in capsys.readouterr().err and rev.number == 0

    assert main(["add", str(data), "bar", str(good)]) == 0 and rev.number == 1
    assert main(["add", str(data), "bar", str(twice)]) == 2 and "was added before" in capsys.readouterr().err
    assert main(["exclude", str(data), "train/bar/bar_00.png", "train/bar/bar_01.png"]) == 0 and rev.number == 3
    assert main(["add", str(data), "disc", str(val_copy), "--force"]) == 0 and rev.number == 4  # asked for


def test_excluding_one_copy_brings_back_an_image_found_in_two_classes(shapes_dir):
    shutil.copy(shapes_dir / "bar" / "bar_00.png", shapes_dir / "disc" / "copy.png")
    report = data_mod.scan(shapes_dir)
    assert {c["path"] for c in report.conflicts()} == {"bar/bar_00.png", "disc/copy.png"}
    assert any("more than one class" in w for w in report.warnings)
    rev = revision.Revision(shapes_dir)
    rev.exclude(report, "disc/copy.png")
    revised = revision.apply(report, rev.active())
    assert ["bar/bar_00.png", "bar"] in revised.items["all"]
    assert "disc/copy.png" not in {rel for rel, _ in revised.items["all"]} and not revised.conflicts()
