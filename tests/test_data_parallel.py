"""Several devices for one run: data-parallel on two logical CPU devices (TensorFlow and JAX), killed and
resumed, against a one-device run over the same global batches."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.runs.folder import RunFolder, read_variables
from tests.conftest import ROOT, write_shapes_dataset

# A base that really trains in the fine-tune phase; no dropout (its random mask differs per device) and no
# augmentation, so two devices over the same global batches compute the same steps as one device.
CONFIG = {
    "model": {"backbone": "mobilenet_v2", "alpha": 0.35, "image_size": 32, "weights": "none", "dropout": 0.0},
    "train": {
        "head_epochs": 2,
        "fine_tune_epochs": 1,
        "early_stopping_patience": 0,
        "fine_tune_learning_rate": 1e-3,
        "class_weight": "none",
    },
    "augment": {"enabled": False},
    "data": {"val_fraction": 0.25, "test_fraction": 0.0},
}


def _train(data, run_dir, backend, *, devices, batch_size, fault=None):
    config = run_dir.parent / f"{run_dir.name}.json"
    config.write_text(
        json.dumps({**CONFIG, "train": {**CONFIG["train"], "devices": devices, "batch_size": batch_size}})
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TRANSFER_STUDIO_FAULT", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(ROOT), KERAS_BACKEND=backend, **({"TRANSFER_STUDIO_FAULT": fault} if fault else {}))
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "train", str(data), "--run-dir", str(run_dir), "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_train_resume_after_a_kill_and_match_one_device(tmp_path, backend):
    data = write_shapes_dataset(tmp_path / "shapes", per_class=16)  # 36 training images: 4 steps of 8 + one of 4
    one = _train(data, tmp_path / "one", backend, devices=1, batch_size=8)
    assert one.returncode == 0, one.stderr[-3000:]

    two_dir = tmp_path / "two"
    killed = _train(data, two_dir, backend, devices=2, batch_size=4, fault="epoch-committed")
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILLed after head epoch 1 was committed
    resumed = _train(data, two_dir, backend, devices=2, batch_size=4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    two = RunFolder(two_dir)
    events = [json.loads(line) for line in two.metrics.read_text().splitlines()]
    starts = [e for e in events if e["event"] in ("start", "resumed")]
    assert [e["event"] for e in starts] == ["start", "resumed"]
    for start in starts:
        assert start["backend"] == backend and start["devices"]["replicas"] == 2, start
        assert start["global_batch_size"] == 8 and "4 x 2 = 8 images" in start["notes"][0]
    assert [(e["phase"], e["epoch"]) for e in events if e["event"] == "epoch"] == [
        ("head", 1),
        ("head", 2),
        ("fine_tune", 1),
    ]  # every epoch exactly once
    assert all(e["steps"] == 5 * e["epoch"] for e in events if e["event"] == "epoch")
    assert two.model.exists() and two.eval.exists()

    for phase in ("head", "fine_tune"):
        a, _ = read_variables(RunFolder(tmp_path / "one").phase_done_weights(phase))
        b, _ = read_variables(two.phase_done_weights(phase))
        assert a.keys() == b.keys()
        moved = 0
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-3, atol=2e-5, err_msg=f"{phase}: {key}")
            moved += not key.startswith("optimizer") and a[key].dtype.kind == "f" and a[key].size > 1
        assert moved
