"""Batch prediction (`python -m pipeline predict`): a real tiny run on a nested folder, a zip and a corrupt file."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests.conftest import ROOT, tiny_config, write_shapes_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipeline.training import train as train_mod

    root = tmp_path_factory.mktemp("predict")
    data = write_shapes_dataset(root / "shapes", per_class=10)
    run = train_mod.train(
        str(data),
        root / "run",
        tiny_config(model={"backbone": "small_cnn"}, train={"strategy": "from_scratch", "head_epochs": 3}),
    )
    return root, run


def _cli(*args, home):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFER_STUDIO_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_predict_names_every_file_and_agrees_with_the_runs_model(trained, tmp_path):
    from pipeline.data import load_image
    from pipeline.runs.folder import load_model

    root, run = trained
    new = write_shapes_dataset(tmp_path / "new" / "batch1", per_class=3, seed=5)  # nested: new/batch1/<class>/
    (new / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # cut short
    (new / ".hidden.png").write_bytes(b"x")  # hidden names are skipped
    (new / "notes.txt").write_text("not an image")  # not an image suffix: not a file to classify
    extra = write_shapes_dataset(tmp_path / "extra", per_class=2, seed=9)
    archive = tmp_path / "extra.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(extra.rglob("*.png")):
            zf.write(path, path.relative_to(extra.parent))
    shutil.rmtree(extra)
    out = tmp_path / "predictions.csv"

    done = _cli(
        "predict",
        str(run.root),
        str(tmp_path / "new"),
        str(archive),
        "--out",
        str(out),
        "--top-k",
        "2",
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "15 of 16 images classified, 1 unreadable" in done.stdout, done.stdout
    with out.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 16 and list(table[0])[:5] == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    broken = [r for r in table if r["error"]]
    assert [r["path"] for r in broken] == ["new/batch1/disc/broken.png"]
    assert "broken.png" in broken[0]["error"] and str(tmp_path) not in broken[0]["error"]
    assert sum(r["path"].startswith("extra.zip/") for r in table) == 6  # named by the zip, not its extraction

    # the CSV's top-1 is the run's own model on those pixels
    model = load_model(run)
    classes = json.loads(run.dataset.read_text())["splits"]["classes"]
    threshold = json.loads(run.eval.read_text())["confidence_threshold"]["value"]  # "none of these"
    good = [r for r in table if not r["error"] and not r["path"].startswith("extra.zip/")]
    pixels = np.stack([load_image(tmp_path / r["path"], 32) for r in good]).astype("float32")
    expected = model.predict(pixels, verbose=0)
    for row, probs in zip(good, expected, strict=True):
        assert row["class_1"] == classes[int(probs.argmax())]
        assert abs(float(row["probability_1"]) - float(probs.max())) < 1e-5
        top2 = np.sort(probs)[-2:]
        assert abs(float(row["margin"]) - float(top2[1] - top2[0])) < 1e-5
        assert row["near_tie"] == str(bool(top2[1] - top2[0] < 0.1)).lower()
        assert row["uncertain"] == str(bool(probs.max() < threshold)).lower()
    assert f"below the run's confidence threshold {threshold:.2f}, marked uncertain" in done.stdout, done.stdout


def test_predict_refuses_what_it_cannot_do_in_one_sentence(trained, tmp_path):
    _, run = trained
    (tmp_path / "empty").mkdir()
    for args, said in (
        (["predict", str(run.root), str(tmp_path / "empty")], "no image files found"),
        (["predict", str(run.root), str(tmp_path / "missing")], "does not exist"),
        (
            ["predict", str(run.root), str(ROOT / "tests" / "data"), "--out", str(tmp_path / "p.xlsx")],
            "give a .csv or .jsonl file name",
        ),
        (["predict", str(tmp_path), str(tmp_path)], "has no config.json"),
    ):
        done = _cli(*args, home=tmp_path / "home")
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "p.xlsx").exists()


@pytest.mark.parametrize("fmt", ["tflite-int8", "tfjs"])
def test_predict_with_a_shipped_file_agrees_as_its_verify_row_says(trained, tmp_path, fmt, exported):
    """`--model` runs the exported file in its own runtime: on the held-out images verification used, its top-1
    agrees with the Keras model's exactly as often as the bundle's verify.json says."""
    from export import formats

    root, run = trained
    result, files = exported
    keras_out, shipped_out = tmp_path / "keras.csv", tmp_path / f"{fmt}.csv"
    model = formats.get(fmt).path(run.exports).relative_to(run.root)  # exports/...: found in the run folder
    for out, extra in ((keras_out, []), (shipped_out, ["--model", str(model)])):
        done = _cli("predict", str(run.root), *map(str, files), "--out", str(out), *extra, home=tmp_path / "home")
        assert done.returncode == 0, done.stderr[-3000:]
    keras_top = [r["class_1"] for r in csv.DictReader(keras_out.open(newline=""))]
    shipped_top = [r["class_1"] for r in csv.DictReader(shipped_out.open(newline=""))]
    assert len(keras_top) == len(shipped_top) == result["images"] == len(files)
    agreement = np.mean([a == b for a, b in zip(keras_top, shipped_top, strict=True)])
    assert agreement == pytest.approx(result["formats"][fmt]["agreement"], abs=1e-9), (
        agreement,
        result["formats"][fmt],
    )


@pytest.fixture(scope="module")
def exported(trained):
    """The run exported to SavedModel, int8 TFLite and TF.js, verified; and the held-out files verification used."""
    from export import bundle

    _, run = trained
    _, result = bundle.export_run(run.root, ["savedmodel", "tflite-int8", "tfjs"])
    splits = json.loads(run.dataset.read_text())["splits"]
    split = "test" if splits.get("test") else "val"
    files = [os.path.join(splits["root"], rel) for rel, _ in splits[split]]
    return result, files


def test_a_file_that_is_no_exported_model_is_refused(trained, tmp_path):
    _, run = trained
    (tmp_path / "model.bin").write_bytes(b"x")
    done = _cli("predict", str(run.root), str(tmp_path), "--model", str(tmp_path / "model.bin"), home=tmp_path / "h")
    assert done.returncode == 2 and "not an exported model" in done.stderr and "Traceback" not in done.stderr


def test_the_confidence_threshold_is_the_lowest_that_keeps_95_percent_of_the_correct_answers():
    from pipeline.runs.confidence import confidence_threshold, threshold_of

    rng = np.random.default_rng(0)
    rows = [
        {"true": "a", "predicted": "a" if i % 5 else "b", "probability": float(p)}
        for i, p in enumerate(rng.uniform(0.34, 1.0, 200))
    ]
    found = confidence_threshold({"predictions": rows, "split": "test"})
    correct = np.array([r["probability"] for r in rows if r["true"] == r["predicted"]])
    wrong = np.array([r["probability"] for r in rows if r["true"] != r["predicted"]])
    assert (correct >= found["value"]).mean() >= 0.95 > (correct > found["value"]).mean()  # any higher keeps fewer
    assert found["keeps"] == (correct >= found["value"]).mean() and found["correct"] == len(correct) == 160
    assert found["mistakes_below"] == int((wrong < found["value"]).sum()) and found["mistakes"] == 40
    assert threshold_of({"predictions": rows}) == found["value"]  # an eval.json written before it was stored
    assert threshold_of({"predictions": rows, "confidence_threshold": None}) is None
    assert confidence_threshold({"predictions": [{"true": "a", "predicted": "b", "probability": 0.9}]}) is None
