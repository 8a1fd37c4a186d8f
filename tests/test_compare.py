"""pipeline.quality.compare: runs side by side from their folders (real config files, metrics and eval records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import config as config_mod
from pipeline.__main__ import main as cli
from pipeline.quality import compare


def _run(
    root: Path,
    name: str,
    overrides: list[str],
    accs: list[float],
    f1: dict[str, float],
    val: list | None = None,
    revision: int = 0,
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "dataset.json").write_text(
        json.dumps(
            {
                "revision": {"number": revision},
                "splits": {
                    "root": "/data",
                    "classes": ["ants", "bees"],
                    "train": [],
                    "val": val or [["v1.jpg", 0], ["v2.jpg", 1]],
                    "test": [],
                },
            }
        )
    )
    config_mod.save(config_mod.apply_overrides(config_mod.RunConfig(), overrides), run / "config.json")
    lines = [
        {"event": "epoch", "phase": "head", "epoch": i + 1, "val_accuracy": a, "loss": 1 - a}
        for i, a in enumerate(accs)
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"event": "epo'
    )  # torn last line
    (run / "eval.json").write_text(
        json.dumps({"split": "test", "accuracy": max(accs), "per_class": {c: {"f1": v} for c, v in f1.items()}})
    )
    return run


def test_compare_shows_only_differences_and_the_parent_link(tmp_path, capsys):
    a = _run(tmp_path, "a", ["train.head_epochs=2"], [0.5, 0.7], {"ants": 0.6, "bees": 0.8})
    b = _run(
        tmp_path,
        "b",
        ["train.head_epochs=3", "train.learning_rate=0.01", f"train.init_from={a}"],
        [0.6, 0.8, 0.9],
        {"ants": 0.9, "bees": 0.85},
    )
    result = compare.compare([a, b])
    assert result["differences"] == {
        "train.head_epochs": [2, 3],
        "train.init_from": ["", "a"],  # no server path
        "train.learning_rate": [0.001, 0.01],
    }
    assert [r["epochs"] for r in result["runs"]] == [2, 3]
    assert [r["best_val_accuracy"] for r in result["runs"]] == [0.7, 0.9]
    assert result["per_class_f1"] == {"ants": [0.6, 0.9], "bees": [0.8, 0.85]}
    assert result["runs"][1]["parent"] == str(a) and result["runs"][1]["parent_in_view"]
    assert [len(c) for c in result["curves"]] == [2, 3]
    assert [[e["x"] for e in c] for c in result["curves"]] == [[1, 2], [3, 4, 5]]  # the retrain after its parent
    assert result["val_differs"] is None
    assert cli(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "train.head_epochs" in out and "train.batch_size" not in out and "0.9000" in out


def test_compare_refuses_what_it_cannot_compare(tmp_path, capsys):
    a = _run(tmp_path, "a", [], [0.5], {})
    with pytest.raises(compare.CompareError, match="2 to 4"):
        compare.compare([a])
    with pytest.raises(compare.CompareError, match="not a run folder"):
        compare.compare([a, tmp_path / "nothing"])
    assert cli(["compare", str(a)]) == 2
    assert "pick 2 to 4 runs" in capsys.readouterr().err


def test_compare_shows_the_data_revision_and_says_when_validation_labels_differ(tmp_path, capsys):
    """A retrain on corrected data listed only `train.init_from <home>/runs/<id>` as the difference: the data's
    revision (the fixes) was not shown, nor that the validation labels the accuracies are measured on changed."""
    a = _run(tmp_path, "a", [], [0.5, 0.7], {}, val=[["v1.jpg", 0], ["v2.jpg", 1]])
    b = _run(tmp_path, "b", [f"train.init_from={a}"], [0.8], {}, val=[["v1.jpg", 1], ["v2.jpg", 1]], revision=1)
    result = compare.compare([a, b])
    assert result["differences"]["data.revision"] == [0, 1]
    assert [r["revision"] for r in result["runs"]] == [0, 1]
    assert "1 of their labels differ" in result["val_differs"]
    assert cli(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "data revision" in out and "labels differ" in out and str(tmp_path) not in out
    c = _run(tmp_path, "c", [], [0.6], {}, val=[["v3.jpg", 0], ["v2.jpg", 1]])
    assert "different images" in compare.compare([a, c])["val_differs"]
