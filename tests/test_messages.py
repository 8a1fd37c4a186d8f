"""Bad input is one line naming the file or field and what to do (exit 2), never a traceback (issue 21: 9, 10)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from pipeline import config
from pipeline.__main__ import main
from pipeline.runs.folder import RunFolder
from pipeline.training import train as train_mod
from tests.conftest import ROOT, tiny_config, write_shapes_dataset

QUICK = {
    "model": {"backbone": "small_cnn"},
    "train": {"strategy": "from_scratch", "head_epochs": 1},
    "data": {"test_fraction": 0.25},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    data = write_shapes_dataset(root / "shapes", per_class=8)
    return data, train_mod.train(str(data), root / "run", tiny_config(**QUICK))


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return next(line for line in err.splitlines() if line.startswith("error: "))


def test_a_truncated_model_is_a_message_on_evaluate_and_export(finished, tmp_path, capsys):
    from export.__main__ import main as export_main

    run = RunFolder(tmp_path / "run")
    shutil.copytree(finished[1].root, run.root)
    whole = run.model.read_bytes()
    run.model.write_bytes(whole[: len(whole) // 2])
    assert main(["evaluate", str(run.root)]) == 2
    line = _error(capsys)
    assert f"{run.model} cannot be read (it is not a whole .keras file" in line and "--from" in line, line
    assert export_main([str(run.root), "--formats", "tflite-float32", "--no-verify"]) == 2
    assert f"{run.model} cannot be read" in _error(capsys)
    assert not run.exports.exists()


def test_config_fields_lists_every_setting(capsys):
    assert main(["config", "--fields"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(config.field_help())


def test_a_run_dir_that_is_a_file_or_someone_elses_folder_is_a_message(tmp_path, capsys):
    data = write_shapes_dataset(tmp_path / "shapes", per_class=4)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["train", str(data), "--run-dir", str(a_file)]) == 2
    assert "is a file, not a folder" in _error(capsys) and a_file.read_text() == "mine"
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my project", "version": 3}')
    assert main(["train", str(data), "--run-dir", str(project)]) == 2
    line = _error(capsys)
    assert "holds a config.json that is not a Transfer Studio run's" in line and "new folder" in line, line
    assert (project / "config.json").read_text() == '{"name": "my project", "version": 3}'


def test_fractions_that_leave_nothing_to_train_say_their_sum(capsys):
    assert main(["config", "--set", "data.test_fraction=0.9"]) == 2
    line = _error(capsys)
    assert "0.2 + 0.9 = 1.1" in line and "data.test_fraction" in line, line


def test_a_retrain_from_an_unfinished_run_is_refused(finished, tmp_path, capsys):
    data, parent = finished
    unfinished = RunFolder(tmp_path / "parent")
    shutil.copytree(parent.root, unfinished.root)
    unfinished.write_state(unfinished.read_state().copy(status="cancelled"))
    assert main(["train", str(data), "--run-dir", str(tmp_path / "child"), "--from", str(unfinished.root)]) == 2
    line = _error(capsys)
    assert "has not finished (cancelled)" in line, line
    assert not (tmp_path / "child" / "config.json").exists()


def test_a_second_worker_on_the_same_home_is_refused_with_an_error_code(ts_home):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "worker"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        from pipeline.jobs.store import JobStore

        deadline = time.monotonic() + 60
        while not any(w.alive for w in JobStore(ts_home).workers()) and time.monotonic() < deadline:
            time.sleep(0.1)  # registered once it holds the lock
        second = subprocess.run(
            [sys.executable, "-m", "pipeline", "worker", "--once"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        assert "error: a worker is already running" in second.stderr
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 0
