"""Training on Keras's JAX backend, in a process that cannot import TensorFlow; exported by the usual export."""

import json
import os
import subprocess
import sys

from pipeline.runs.folder import RunFolder
from tests.conftest import ROOT

BLOCKER = ROOT / "tests" / "without_tensorflow.py"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def test_the_blocker_really_blocks_tensorflow():
    proc = subprocess.run(
        [sys.executable, str(BLOCKER), "tensorflow"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "blocked: this process has no TensorFlow" in proc.stderr


def test_digits_train_on_jax_without_tensorflow_then_export_passes_every_gate(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(BLOCKER),
            "pipeline",
            "train",
            "sample:digits",
            "--run-dir",
            str(run_dir),
            "--set",
            "train.head_epochs=4",
        ],
        cwd=ROOT,
        env=_env(KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = RunFolder(run_dir)
    events = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["backend"] == "jax" and start["precision"] == "float32", start
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4]
    result = json.loads(run.eval.read_text())
    assert result["accuracy"] > 0.8, result["accuracy"]  # the digits CNN learns in a few epochs

    proc = subprocess.run(
        [sys.executable, "-m", "export", str(run_dir)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verify = json.loads((run_dir / "exports" / "verify.json").read_text())
    assert verify["passed"] and verify["formats"]["tflite-float32"]["passed"]
    assert verify["formats"]["keras"]["accuracy"] == verify["formats"]["tflite-float32"]["accuracy"]
