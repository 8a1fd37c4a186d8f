"""Fault injection: real training on tiny data, a real SIGKILL of the training process at chosen points, then a
resume; every planned (phase, epoch) is trained exactly once, each phase's optimizer made epochs x steps
steps, eval.json is complete or absent, and the result equals an uninterrupted run's, bit for bit.

Two ways to kill at a chosen point, both a real SIGKILL of the process (group):

- watching metrics.jsonl from the test and killing the child's process group when a line appears (during
  an epoch: its first progress line; right after an epoch: its epoch line);
- for moments too short to hit from outside (between a complete temporary file and its rename, between
  the state.json commit and the epoch's line, in the middle of evaluation), the documented test hook
  ``TRANSFER_STUDIO_FAULT=<point>`` (pipeline.host.atomic.fault_point): the child SIGKILLs itself there.

The runs use ``train.deterministic=true`` (TensorFlow op determinism) and the same seed, so a killed and
resumed run must end with exactly the weights of the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.runs.folder import RunFolder, read_variables
from tests.conftest import ROOT, write_shapes_dataset

pytestmark = pytest.mark.slow  # about 2-3 minutes on 2 cores (14 training processes)

HEAD, FINE = 3, 3
CONFIG = {
    "model": {"backbone": "mobilenet_v2", "alpha": 0.35, "image_size": 32, "weights": "none"},
    "train": {
        "strategy": "fine_tune",
        "head_epochs": HEAD,
        "fine_tune_epochs": FINE,
        "batch_size": 8,
        "early_stopping_patience": 0,
        "fine_tune_learning_rate": 1e-3,
        "progress_every": 1,
        "deterministic": True,
        "seed": 7,
    },
    "augment": {"enabled": True, "flip": "horizontal", "rotation": 0.0},
    "data": {"val_fraction": 0.25, "test_fraction": 0.2},
}
PLANNED = [("head", e) for e in range(1, HEAD + 1)] + [("fine_tune", e) for e in range(1, FINE + 1)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The data, the config file and one uninterrupted reference run."""
    root = tmp_path_factory.mktemp("faults")
    data = write_shapes_dataset(root / "shapes", per_class=12, size=32)
    config = root / "config.json"
    config.write_text(json.dumps(CONFIG))
    reference = RunFolder(root / "reference")
    proc = _start(data, config, reference)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return data, config, reference


def _start(data: Path, config: Path, run: RunFolder, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TRANSFER_STUDIO_FAULT", None)
    if fault:
        env["TRANSFER_STUDIO_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", str(data), "--run-dir", str(run.root), "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen, run: RunFolder, seen, timeout: float = 300) -> None:
    """SIGKILLs the training process group as soon as a line satisfying ``seen`` is in metrics.jsonl."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if any(seen(line) for line in run.metrics_lines()):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the kill point: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError("the kill point never came")


def _epoch_line(phase, epoch):
    return lambda m: m.get("event") == "epoch" and (m["phase"], m["epoch"]) == (phase, epoch)


def _progress_line(phase, epoch):
    return lambda m: m.get("event") == "progress" and (m["phase"], m["epoch"]) == (phase, epoch)


def _assert_eval_complete_or_absent(run: RunFolder) -> None:
    if run.eval.exists():
        result = json.loads(run.eval.read_text())
        assert {"accuracy", "confusion_matrix", "per_class", "mistakes"} <= set(result)


def _final_variables(run: RunFolder) -> dict[str, np.ndarray]:
    return read_variables(run.phase_done_weights("fine_tune"))[0]


def _resume_and_check(setup, run: RunFolder) -> str:
    """Resumes ``run`` and checks the invariants against the reference run; returns the resume's stderr."""
    data, config, reference = setup
    _assert_eval_complete_or_absent(run)
    proc = _start(data, config, run)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in err

    trained = [(e["phase"], e["epoch"]) for e in run.epochs()]
    assert trained == PLANNED  # every planned epoch exactly once, in order
    n_train = len(json.loads(run.dataset.read_text())["splits"]["train"])
    steps = -(-n_train // CONFIG["train"]["batch_size"])
    state = json.loads(run.state.read_text())
    assert state["status"] == "done"
    assert {p: s["steps_done"] for p, s in state["phases"].items()} == {"head": HEAD * steps, "fine_tune": FINE * steps}
    assert [e["steps"] for e in run.epochs()] == [e * steps for _, e in PLANNED]
    result = json.loads(run.eval.read_text())
    assert result == {**json.loads(reference.eval.read_text()), "seconds": result["seconds"]}
    assert not [p.name for p in run.root.rglob(".*") if p.is_file()]  # no temporary file left behind

    # Op determinism and the same seed: the resumed run equals the uninterrupted one, bit for bit.
    ours, theirs = _final_variables(run), _final_variables(reference)
    assert ours.keys() == theirs.keys()
    diff = max(float(np.max(np.abs(ours[k].astype(np.float64) - theirs[k]))) if ours[k].size else 0.0 for k in ours)
    assert diff == 0.0, f"largest difference from the uninterrupted run: {diff}"
    ref_epochs = [(e["loss"], e["val_loss"]) for e in reference.epochs()]
    assert [(e["loss"], e["val_loss"]) for e in run.epochs()] == ref_epochs
    return err


def _kill(setup, run: RunFolder, seen=None, fault: str | None = None) -> str:
    """Starts (or resumes) ``run`` and SIGKILLs it: when a metrics line satisfies ``seen``, or at the test hook
    point ``fault``. Returns the killed process's stderr."""
    data, config, _ = setup
    proc = _start(data, config, run, fault)
    if fault:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"the fault point {fault} was not reached: {err[-2000:]}"
        return err
    _kill_when(proc, run, seen)
    return proc.stderr.read()


def _trained(run: RunFolder) -> list[tuple[str, int]]:
    return [(e["phase"], e["epoch"]) for e in run.epochs()]


def test_kills_during_training_resume_every_epoch_exactly_once(setup, tmp_path):
    """Killed during the last head epoch, then right after it (the two reported bugs: fine-tune epochs 1..N
    must all be trained), right after the first fine-tune epoch (plus a torn metrics line), while a checkpoint
    is written, and between the state.json commit and the epoch's line; each time resumed."""
    run = RunFolder(tmp_path / "run")
    _kill(setup, run, _progress_line("head", HEAD))
    assert _trained(run) == PLANNED[: HEAD - 1]

    err = _kill(setup, run, _epoch_line("head", HEAD))
    assert f"phase head: {HEAD} epochs" in err and f"going on from epoch {HEAD}" in err  # resumed inside the phase
    assert _trained(run) == PLANNED[:HEAD]  # no fine-tune epoch yet (its first step traces for seconds)

    _kill(setup, run, _epoch_line("fine_tune", 1))
    assert _trained(run)[: HEAD + 1] == PLANNED[: HEAD + 1] and len(_trained(run)) < len(PLANNED)
    _assert_eval_complete_or_absent(run)
    with open(run.metrics, "a") as fh:
        fh.write('{"time": 1, "event": "epo')  # what a kill in the middle of a write leaves

    # Fewer than FINE fine-tune epochs are done here, so the next epoch's checkpoint is always written (this kill
    # ran only when an epoch was left after the next one, so a slow kill above could skip it).
    _kill(setup, run, fault="checkpoint-write")
    assert list(run.backup_dir("fine_tune").glob(".epoch-*.npz.*.tmp"))  # complete, never renamed

    before = len(_trained(run))  # the epoch whose checkpoint write was killed is trained again, then committed
    _kill(setup, run, fault="epoch-committed")  # state.json has the epoch, metrics.jsonl not yet
    state = json.loads(run.state.read_text())
    assert state["phases"]["fine_tune"]["epochs_done"] == before - HEAD + 1 and len(_trained(run)) == before

    _resume_and_check(setup, run)
    assert '{"time": 1, "event": "epo\n{' in run.metrics.read_text()  # the next record started a new line


def test_kills_while_finishing_and_damaged_files_resume_to_the_same_result(setup, tmp_path):
    """Killed while model.keras is written (then state.json and the latest checkpoint damaged), during
    evaluation (the run must not claim to be finished), and while eval.json is written; each time resumed."""
    run = RunFolder(tmp_path / "run")
    _kill(setup, run, fault="model-write")
    assert _trained(run) == PLANNED and not run.model.exists() and not run.eval.exists()

    run.state.write_text('{"status": "runn')  # damaged: falls back to state.prev.json (fine-tune not yet marked done)
    latest = run.epoch_checkpoint("fine_tune", FINE)
    latest.write_bytes(latest.read_bytes()[:1000])  # cut short: falls back to the checkpoint before it
    err = _kill(setup, run, fault="evaluate")
    assert "state.json is damaged" in err and "resumed from state.prev.json" in err
    assert f"{latest} is damaged" in err and f"going on from epoch {FINE - 1} of the fine_tune phase" in err
    assert (run.root / "state.json.damaged").read_text() == '{"status": "runn'  # kept, not deleted
    assert any(m.get("event") == "rollback" for m in run.metrics_lines())
    assert json.loads(run.state.read_text())["status"] == "evaluating"
    assert run.model.exists() and not run.eval.exists()

    _kill(setup, run, fault="eval-write")
    assert not run.eval.exists() and list(run.root.glob(".eval.json.*.tmp"))

    err = _resume_and_check(setup, run)
    assert "holds a finished run" not in err


@pytest.mark.parametrize(
    "augment",
    [
        {"enabled": False},  # one view: the images as they are
        {**CONFIG["augment"], "rotation": 0.1, "head_views": 2},  # epoch 2 reads the augmented view
        {**CONFIG["augment"], "head_views": 0},  # no cache: the base augments every head epoch
    ],
    ids=["augmentation-off", "two-views", "through-the-base"],
)
def test_a_head_phase_resumes_to_the_same_weights(setup, tmp_path, augment):
    """The head trains on features computed once (augmentation off, or augment.head_views views), or through the
    base every epoch; killed right after head epoch 1 and resumed, it ends where an uninterrupted run does."""
    data, _, _ = setup
    config = tmp_path / "cached.json"
    config.write_text(json.dumps({**CONFIG, "augment": augment}))
    runs = {name: RunFolder(tmp_path / name) for name in ("reference", "killed")}
    proc = _start(data, config, runs["reference"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    phase = next(m for m in runs["reference"].metrics_lines() if m.get("event") == "phase")
    assert phase["cached_features"] is (augment.get("head_views") != 0)

    _kill((data, config, None), runs["killed"], _epoch_line("head", 1))
    proc = _start(data, config, runs["killed"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert [(e["phase"], e["epoch"]) for e in runs["killed"].epochs()] == PLANNED
    ours, theirs = (_final_variables(r) for r in (runs["killed"], runs["reference"]))
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
