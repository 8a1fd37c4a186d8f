"""The run's ledger (state.json): typed, the same document on disk, and a folder written before it resumes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runs.folder import DamagedFileError, RunFolder
from pipeline.runs.ledger import Ledger
from tests.conftest import ROOT

OLD = Path(__file__).parent / "data" / "run_before_ledger"  # see its README.md
OLD_PREFIX = "/work/fx"


def test_an_old_state_file_reads_and_writes_back_as_the_same_document():
    doc = json.loads((OLD / "run" / "state.json").read_text())
    ledger = Ledger.from_dict(doc)
    assert ledger.status == "running" and ledger.phases["scratch"].epochs_done == 1
    assert ledger.best is not None and ledger.best.file == "best-scratch-1.npz"
    assert ledger.to_dict() == doc
    previous = json.loads((OLD / "run" / "state.prev.json").read_text())  # written before the first epoch
    assert Ledger.from_dict(previous).to_dict() == {**previous, "best": None}


def test_commits_follow_the_early_stopping_rule_and_the_best_is_kept():
    ledger = Ledger()
    ledger.start({"backend": "tensorflow", "replicas": 1})
    losses = [1.0, 0.8, 0.9, 0.95]
    stops = []
    for epoch, loss in enumerate(losses, 1):
        record = {"event": "epoch", "epoch": epoch, "steps": 2 * epoch, "val_loss": loss, "val_accuracy": 0.5}
        if ledger.is_best(0.5, loss):
            ledger.set_best("head", epoch, 0.5, loss, file=f"best-head-{epoch}.npz")
        stops.append(ledger.commit_epoch("head", record, patience=2))
    assert stops == [False, False, False, True]  # two epochs without a lower validation loss
    ph = ledger.phases["head"]
    assert (ph.epochs_done, ph.steps_done, ph.wait, ph.best_val_loss, ph.stopped_early) == (4, 8, 2, 0.8, True)
    assert ledger.best.epoch == 2  # same accuracy, lowest loss
    ledger.roll_back("head", 1, steps=2)
    assert (ph.epochs_done, ph.steps_done, ph.last_epoch, ph.wait, ph.best_val_loss) == (1, 2, None, 0, None)
    copy = ledger.copy(status="cancelled")
    assert copy.status == "cancelled" and ledger.status == "running" and copy.phases["head"] is not ph


@pytest.mark.parametrize(
    "doc",
    [
        {"status": "stuck", "phases": {}},
        {"phases": {"head": {"epochs_done": "2"}}},
        {"phases": [1]},
        {"phases": {}, "best": {"epoch": 1}},
    ],
)
def test_a_state_file_that_is_not_a_ledger_is_damaged(tmp_path, doc):
    run = RunFolder(tmp_path)
    run.state.write_text(json.dumps(doc))
    with pytest.raises(DamagedFileError, match="state.json is damaged"):
        run.read_state()


def test_a_run_folder_written_before_the_ledger_resumes_and_finishes(tmp_path):
    """The old code was killed after committing epoch 1 of 3 (its metrics line unwritten): today's code re-appends
    that line, trains epochs 2 and 3 once each, evaluates, and the folder ends done."""
    shutil.copytree(OLD, tmp_path / "old", ignore=shutil.ignore_patterns("README.md"))
    here = str(tmp_path / "old")
    for name in ("dataset.json",):  # the folder names its data by absolute path: point it at the copy
        path = tmp_path / "old" / "run" / name
        path.write_text(path.read_text().replace(OLD_PREFIX, here))
    run = RunFolder(tmp_path / "old" / "run")
    assert [e["epoch"] for e in run.epochs()] == []
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRANSFER_STUDIO_HOME": str(tmp_path / "home"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("TRANSFER_STUDIO_FAULT", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            f"{here}/shapes",
            "--run-dir",
            str(run.root),
            "--config",
            str(run.config),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    assert [(e["phase"], e["epoch"]) for e in run.epochs()] == [("scratch", 1), ("scratch", 2), ("scratch", 3)]
    state = run.read_state()
    assert state.status == "done" and state.phases["scratch"].done and state.phases["scratch"].epochs_done == 3
    assert state.phases["scratch"].steps_done == 6  # 2 steps an epoch: nothing trained twice
    assert json.loads(run.eval.read_text())["images"] > 0


def test_a_state_file_from_before_phases_is_read_as_it_says_and_written_back_unchanged(tmp_path):
    """The first version wrote ``phases_done`` and a best of figures only: such a run reads as finished (it is),
    cannot be resumed, and its document is never rewritten into a resumable-looking one."""
    doc = {"status": "done", "phases_done": ["head", "fine_tune"], "best": {"val_accuracy": 0.9, "val_loss": 0.3}}
    run = RunFolder(tmp_path)
    run.state.write_text(json.dumps(doc))
    ledger = run.read_state()
    assert ledger.legacy and ledger.status == "done" and ledger.best is None and run.finished()
    assert run.best_weights is None
    run.write_state(ledger.copy(status="done"))
    assert json.loads(run.state.read_text()) == doc
