"""The improvement loop end to end in the library and CLI: corrections recorded as a revision, training on
the revision, a retrain that starts from the parent's weights, and the two runs compared."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import data as data_mod
from pipeline.__main__ import main as cli
from pipeline.data import revision
from pipeline.quality import compare
from pipeline.runs.folder import RunFolderError
from pipeline.training import train as train_mod
from pipeline.training.presets import config_for
from tests.conftest import tiny_config


def _first_val_accuracy(run) -> float:
    return next(e["val_accuracy"] for e in run.epochs())


def test_retrain_from_a_run_on_corrected_data(shapes_dir, tmp_path):
    cfg = tiny_config(train={"head_epochs": 3, "fine_tune_epochs": 1})
    parent = train_mod.train(str(shapes_dir), tmp_path / "parent", cfg)
    assert json.loads(parent.dataset.read_text())["revision"]["number"] == 0

    # corrections: relabel one image, exclude one, add one (recorded beside the data, originals untouched)
    report = data_mod.scan(shapes_dir)
    rev = revision.Revision(shapes_dir)
    rev.relabel(report, "bar/bar_00.png", "disc")
    rev.exclude(report, "square/square_01.png")
    extra = tmp_path / "more.png"
    Image.fromarray(np.full((40, 40, 3), 220, np.uint8)).save(extra)
    rev.add(report, "square", extra)

    child_cfg = config_for(str(shapes_dir), parent=parent.root)
    assert child_cfg.train.init_from == str(parent.root) and child_cfg.model == cfg.model
    assert [p.name for p in train_mod.phases_for(child_cfg)] == ["fine_tune"]
    child = train_mod.train(str(shapes_dir), tmp_path / "child", child_cfg)
    dataset = json.loads(child.dataset.read_text())
    assert dataset["revision"]["number"] == 3 and dataset["parent"] == str(parent.root)
    seen = {
        rel: dataset["splits"]["classes"][label]
        for s in ("train", "val", "test")
        for rel, label in dataset["splits"][s]
    }
    assert seen["bar/bar_00.png"] == "disc" and "square/square_01.png" not in seen
    assert any(rel.endswith("more.png") and cls == "square" for rel, cls in seen.items())
    assert [e["phase"] for e in child.epochs()] == ["fine_tune"]

    assert any(r.get("event") == "parent" and r["run"] == str(parent.root) for r in child.metrics_lines())

    result = compare.compare([parent.root, child.root])
    assert result["runs"][1]["parent"] == str(parent.root) and result["runs"][1]["parent_in_view"]
    assert "train.init_from" in result["differences"]


@pytest.mark.slow
def test_retrain_starts_from_the_parents_weights(shared_dir, keras_home_with_weights, tmp_path):
    """Real photos and weights: the child's first epoch at the fine-tune rate is far above a fresh head's
    first epoch at that rate (which barely moves from chance), and close to where the parent ended."""
    hym = shared_dir / "data" / "hymenoptera"
    overrides = [
        "train.head_epochs=2",
        "train.fine_tune_epochs=1",
        "augment.enabled=false",
        "train.early_stopping_patience=0",
    ]
    parent = train_mod.train(str(hym), tmp_path / "parent", config_for(str(hym), overrides=overrides))
    parent_best = max(e["val_accuracy"] for e in parent.epochs())
    child_cfg = config_for(str(hym), parent=parent.root)
    child = train_mod.train(str(hym), tmp_path / "child", child_cfg)
    lr = child_cfg.train.fine_tune_learning_rate
    fresh = train_mod.train(
        str(hym),
        tmp_path / "fresh",
        config_for(
            str(hym),
            overrides=[*overrides, "train.head_epochs=1", "train.fine_tune_epochs=0", f"train.learning_rate={lr}"],
        ),
    )
    assert parent_best >= 0.85
    assert _first_val_accuracy(child) >= parent_best - 0.05, (child.epochs(), parent_best)
    assert _first_val_accuracy(child) >= _first_val_accuracy(fresh) + 0.2, (child.epochs(), fresh.epochs())


def test_retrain_refuses_a_parent_that_does_not_fit(shapes_dir, tmp_path, capsys):
    with pytest.raises(RunFolderError, match="not a run folder"):
        config_for(str(shapes_dir), parent=tmp_path / "nowhere")
    parent = train_mod.train(
        str(shapes_dir), tmp_path / "parent", tiny_config(train={"head_epochs": 1, "fine_tune_epochs": 0})
    )
    other = config_for(str(shapes_dir), parent=parent.root, overrides=["model.image_size=48"])
    with pytest.raises(RunFolderError, match="model.image_size"):
        train_mod.train(str(shapes_dir), tmp_path / "child", other)
    assert cli(["train", str(shapes_dir), "--run-dir", str(tmp_path / "c2"), "--from", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
