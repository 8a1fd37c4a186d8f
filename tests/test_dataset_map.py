"""The dataset map (pipeline.quality.dataset_map): every image placed, planted label flips and a near-copy marked,
kept once computed, a standalone HTML page, and the app's background build."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pipeline import config as config_mod
from pipeline import data as data_mod
from pipeline.quality import dataset_map
from pipeline.training import train as train_mod
from tests.conftest import ROOT, plant_flips, tiny_config, write_shapes_dataset


def test_near_duplicates_are_found_in_blocks():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 16)).astype(np.float32)
    features[41] = features[7] * 1.5 + 0.001  # the same direction: a near-copy
    found = dataset_map.near_duplicates(features, block=8)  # several blocks, the pair across two of them
    assert found == {7: 41, 41: 7}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("map")
    data_dir = write_shapes_dataset(root / "shapes", per_class=10)
    return train_mod.train(str(data_dir), root / "run", tiny_config(data={"test_fraction": 0.2}))


def test_a_runs_map_places_every_image_once_and_is_kept(tiny_run):
    splits = json.loads(tiny_run.dataset.read_text())["splits"]
    result = dataset_map.for_run(tiny_run.root)
    paths = [p["path"] for p in result["points"]]
    assert sorted(paths) == sorted(rel for s in ("train", "val", "test") for rel, _ in splits[s])
    assert all(np.isfinite([p["x"], p["y"]]).all() for p in result["points"])
    assert {p["split"] for p in result["points"]} == {"train", "val", "test"}
    assert "the run's model" in result["features"]
    kept = tiny_run.root / dataset_map.RUN_MAP_NAME
    stamp = kept.stat().st_mtime_ns
    again = dataset_map.for_run(tiny_run.root)
    assert again == json.loads(kept.read_text()) == result
    assert kept.stat().st_mtime_ns == stamp  # read back, not computed and written again


def test_the_app_builds_the_map_in_the_background(tiny_run):
    (tiny_run.root / dataset_map.RUN_MAP_NAME).unlink(missing_ok=True)
    assert dataset_map.background_status(tiny_run.root)["state"] == "none"
    dataset_map.start_background(tiny_run.root)
    t0 = time.monotonic()
    while (status := dataset_map.background_status(tiny_run.root))["state"] == "running":
        assert time.monotonic() - t0 < 300
        time.sleep(0.5)
    assert status["state"] == "done", status
    assert status["result"]["images"] == 30


@pytest.mark.slow
def test_the_map_marks_planted_label_flips_and_a_near_copy(shared_dir, keras_home_with_weights, tmp_path):
    """Hymenoptera with 10% of labels flipped and one resized, recompressed copy: the pretrained base's map marks
    most flips (the thresholds of the label-issue test: same method, same features) and the copy."""
    folder = tmp_path / "flipped"
    flipped = plant_flips(shared_dir / "data" / "hymenoptera", folder, 0.1, seed=1)
    original = sorted((folder / "ants").iterdir())[0]
    with Image.open(original) as img:
        img.convert("RGB").resize((img.width * 4 // 5, img.height * 4 // 5)).save(
            folder / "ants" / "copy.jpg", quality=80
        )
    cfg = config_mod.apply_overrides(config_mod.RunConfig(), ["data.test_fraction=0"])
    result = dataset_map.for_data(str(folder), cfg)

    report = data_mod.scan(folder, cfg.data)
    assert result["images"] == len(result["points"]) == sum(sum(n.values()) for n in report.counts().values())
    assert all(np.isfinite([p["x"], p["y"]]).all() for p in result["points"])
    marked = {p["path"] for p in result["points"] if p["issue"]}
    recall = len(marked & flipped) / len(flipped)
    precision = len(marked & flipped) / len(marked)
    assert recall >= 0.7 and precision >= 0.5, (recall, precision)
    copy = next(p for p in result["points"] if p["path"] == "ants/copy.jpg")
    assert copy["near_copy_of"] == f"ants/{original.name}", copy

    out = tmp_path / "map.html"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "map", str(folder), "--set", "data.test_fraction=0", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{result['images']} images mapped" in done.stdout
    assert "laying out" not in done.stderr  # the kept map, not computed again
    html = out.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html) and "plotly" in html.lower()  # Plotly inside, no CDN
    assert html.count("data:image/jpeg;base64,") == result["images"]  # a thumbnail per point
