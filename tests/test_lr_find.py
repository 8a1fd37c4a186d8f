"""The learning-rate finder: a real sweep of the head on a tiny set's features; the suggestion lies inside the sweep
and below the rate where the loss diverged."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline import config as config_mod
from pipeline.training import lr_find
from tests.conftest import ROOT, write_shapes_dataset


@pytest.mark.slow
def test_the_suggestion_is_inside_the_sweep_and_below_divergence(shared_dir, keras_home_with_weights):
    """Hymenoptera (244 train, 153 val images) through MobileNetV2 0.35 with its real weights (random-init bases
    give features too weak for a head to learn from at any rate: no curve to read)."""
    result = lr_find.find(str(shared_dir / "data" / "hymenoptera"), config_mod.RunConfig())
    assert result["images"] == 244 and result["curve"] == "held-out loss"
    rates, smoothed = np.array(result["learning_rates"]), np.array(result["smoothed"])
    assert len(rates) == len(smoothed) == len(result["losses"]) > 10
    assert np.all(np.diff(rates) > 0) and rates[0] == result["start"]  # exponential, increasing
    assert result["diverged_at"] is not None, "a sweep up to 10 diverges"
    assert rates[0] <= result["suggestion"] < result["lowest_loss_at"] < result["diverged_at"] <= rates[-1]
    low = int(np.argmin(smoothed))
    assert smoothed[low] < 0.8 * smoothed[0]  # the loss went down before it went up
    assert not np.isfinite(smoothed[-1]) or smoothed[-1] > lr_find.DIVERGED * smoothed[:-1].min()


@pytest.mark.slow
def test_cli_prints_the_suggestion_to_apply(keras_home_with_weights, tmp_path):
    data_dir = write_shapes_dataset(tmp_path / "shapes", per_class=8)
    refused = subprocess.run(
        [sys.executable, "-m", "pipeline", "lr-find", str(data_dir), "--set", "model.weights=none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "from random values" in refused.stderr and "Traceback" not in refused.stderr
    args = ["--set", "model.image_size=32", "--set", "model.alpha=0.35"]  # imagenet weights (the 224 file)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "lr-find", str(data_dir), *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["start"] <= result["suggestion"] <= result["lowest_loss_at"] <= result["end"]
    assert len(result["learning_rates"]) == len(result["smoothed"]) > 10 and result["curve"] == "held-out loss"
    said = subprocess.run(
        [sys.executable, "-m", "pipeline", "lr-find", str(data_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert said.returncode == 0 and "suggested train.learning_rate=" in said.stdout, said.stdout + said.stderr


@pytest.mark.slow
def test_the_train_page_sweeps_in_the_background_and_applies_the_suggestion(keras_home_with_weights):
    from pipeline.host import paths
    from tests.test_app import _no_exception, _page, shown

    at = _page("train.py")  # the digits sample: a small CNN from scratch, which the finder cannot help
    _no_exception(at)
    assert not any(b.label == "Sweep the learning rate" for b in at.button)
    assert any("pretrained base's features" in shown(c.value) for c in at.caption)
    at.selectbox(key="train:backbone").set_value("mobilenet_v2").run()
    at.selectbox(key="train:weights").set_value("imagenet").run()
    at.selectbox(key="train:strategy").set_value("fine_tune").run()
    _no_exception(at)
    next(b for b in at.button if b.label == "Sweep the learning rate").click().run()
    _no_exception(at)
    t0 = time.monotonic()
    while not list((paths.home() / "lr_find").glob("*/lr_find.json")):
        assert time.monotonic() - t0 < 300, list((paths.home() / "lr_find").rglob("*.log"))
        time.sleep(0.5)
    found = json.loads(next((paths.home() / "lr_find").glob("*/lr_find.json")).read_text())
    time.sleep(1.0)  # the sweep's process exits after writing its result
    at.run()
    _no_exception(at)
    use = next(b for b in at.button if b.label.startswith("Use ") and b.label.endswith(" as the learning rate"))
    assert use.label == f"Use {found['suggestion']:.2g} as the learning rate"
    use.click().run()
    _no_exception(at)
    field = next(n for n in at.number_input if n.label == "Learning rate")
    assert field.value == float(f"{found['suggestion']:.2g}")
    assert any(b.label == use.label for b in at.button)  # the sweep is still shown: applying it keeps it
