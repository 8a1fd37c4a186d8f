"""A full disk, for real: a small tmpfs mounted for the test (root only), filled to the last block.

Each case: the command exits 2 with one line naming the folder and the space (never a traceback), nothing
half-written is left, and the same command works once space is freed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_config, write_shapes_dataset

QUICK = {
    "model": {"backbone": "small_cnn"},
    "train": {"strategy": "from_scratch", "head_epochs": 2},
    "data": {"test_fraction": 0.25},
}


class Disk:
    """A tmpfs of ``mb`` megabytes at ``path``; :meth:`fill` leaves only ``leave`` bytes free."""

    def __init__(self, path: Path, mb: int):
        self.path = path
        self.ballast = path / "ballast"
        path.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the full-disk cases need one")

    def fill(self, leave: int = 0) -> None:
        with open(self.ballast, "ab") as fh:
            while (room := shutil.disk_usage(self.path).free - leave) >= 4096:  # tmpfs counts whole pages
                try:
                    fh.write(b"\0" * min(room, 1 << 20))
                    fh.flush()
                except OSError:
                    break

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root); skipped here")
    d = Disk(tmp_path / "disk", 16)
    yield d
    d.umount()


def _cli(module: str, *args, home: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if home:
        env["TRANSFER_STUDIO_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _refused(done: subprocess.CompletedProcess, folder: Path) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("error: "))
    assert f"the disk holding {folder}" in line and "free" in line and "free some space there" in line, line
    return line


def _leftovers(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith(".")
        and (p.name.endswith(".tmp") or ".tmp-" in p.name or p.name.endswith(".part") or p.name.startswith(".sample-"))
    )


def test_sample_set_up_on_a_full_disk(disk):
    home = disk.path / "home"
    disk.fill(leave=200_000)
    line = _refused(_cli("pipeline", "scan", "sample:digits", home=home), home / "datasets")
    assert "needed" in line
    assert not list((home / "datasets").iterdir())  # no half-written sample folder
    disk.free()
    done = _cli("pipeline", "scan", "sample:digits", home=home)
    assert done.returncode == 0 and "1797" in done.stdout.replace(",", ""), done.stderr


def test_training_on_a_full_disk_stops_with_a_message_and_resumes_once_there_is_room(disk, tmp_path):
    data = write_shapes_dataset(tmp_path / "shapes", per_class=10)
    config = tmp_path / "config.json"
    config.write_text(tiny_config(**QUICK).to_json())
    run = disk.path / "run"
    disk.fill(leave=120_000)  # config, dataset and metrics fit; the first checkpoint does not
    line = _refused(_cli("pipeline", "train", data, "--run-dir", run, "--config", config), run)
    assert "needed" in line
    assert not _leftovers(run)
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {"phases": {}}
    assert all(p.get("epochs_done", 0) == 0 for p in state["phases"].values())  # nothing claimed that was not kept
    disk.free()
    done = _cli("pipeline", "train", data, "--run-dir", run, "--config", config)
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event": "epoch"' in x]
    assert [(e["phase"], e["epoch"]) for e in epochs] == [("scratch", 1), ("scratch", 2)]
    assert (run / "eval.json").exists()


def test_export_and_its_zip_on_a_full_disk(disk, tmp_path):
    from pipeline.training import train as train_mod

    data = write_shapes_dataset(tmp_path / "shapes", per_class=10)
    run = train_mod.train(str(data), tmp_path / "run", tiny_config(**QUICK))
    out = disk.path / "bundle"
    disk.fill(leave=300_000)
    _refused(_cli("export", run.root, "--out", out, "--formats", "tflite-float32", "--no-verify"), disk.path)
    assert not out.exists() and not _leftovers(disk.path), list(disk.path.iterdir())
    disk.free()
    done = _cli("export", run.root, "--out", out, "--formats", "tflite-float32", "--no-verify")
    assert done.returncode == 0, done.stderr
    assert (out / "model_bundle.zip").exists()


def test_corrections_on_a_full_disk_record_nothing(disk, tmp_path):
    data = write_shapes_dataset(tmp_path / "shapes", per_class=4)
    home = disk.path / "home"
    assert _cli("pipeline", "relabel", data, "bar/bar_00.png", "disc", home=home).returncode == 0
    revision = next((home / "revisions").rglob("corrections.json"))
    before = revision.read_text()
    disk.fill()
    _refused(_cli("pipeline", "relabel", data, "bar/bar_01.png", "disc", home=home), revision.parent)
    fresh = write_shapes_dataset(tmp_path / "more", per_class=1, seed=9) / "disc" / "disc_00.png"  # a new image
    _refused(_cli("pipeline", "add", data, "disc", fresh, home=home), revision.parent)
    assert revision.read_text() == before and not _leftovers(home)
    disk.free()
    done = _cli("pipeline", "relabel", data, "bar/bar_01.png", "disc", home=home)
    assert done.returncode == 0 and "revision 2" in done.stdout, done.stdout + done.stderr


def test_a_healthy_job_database_on_a_full_disk_is_not_called_damaged(disk):
    from pipeline.jobs.store import JobStore

    home = disk.path / "home"
    store = JobStore(home)
    ids = [store.add("sample:digits", {}) for _ in range(20)]
    disk.fill()
    done = _cli("pipeline", "jobs", home=home)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "is damaged" not in done.stderr and "Move it aside" not in done.stderr, done.stderr
    assert "not damaged" in done.stderr and f"the disk holding {home}" in done.stderr
    disk.free()
    done = _cli("pipeline", "jobs", home=home)
    assert done.returncode == 0 and {line.split()[0] for line in done.stdout.splitlines()} == set(ids)


def test_a_job_on_a_full_disk_fails_with_the_message_and_resumes_once_there_is_room(disk, tmp_path):
    """The whole home full (the job database too): the worker waits instead of dying, records the failure once
    it can, and `resume` finishes the run with every epoch trained once."""
    import time

    from pipeline.jobs.store import JobStore

    home = disk.path / "home"
    data = write_shapes_dataset(tmp_path / "shapes", per_class=10)
    store = JobStore(home)
    job_id = store.add(str(data), tiny_config(**QUICK).to_dict())
    disk.fill(leave=150_000)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFER_STUDIO_HOME": str(home)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "worker"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:

        def child_gone() -> bool:
            import psutil

            return not psutil.Process(worker.pid).children()

        deadline = time.monotonic() + 300
        started = False
        while time.monotonic() < deadline and not (started and child_gone()):
            started = started or not child_gone()
            time.sleep(0.2)
        assert started, "the child never started"
        disk.free()
        while time.monotonic() < deadline and store.get(job_id).state == "running":
            time.sleep(0.2)
        job = store.get(job_id)
        assert job.state == "failed" and "the disk holding" in job.error and "resume" in job.error, job.error
        assert worker.poll() is None  # still serving
        store.resume(job_id)
        while time.monotonic() < deadline and store.get(job_id).state in ("queued", "running"):
            time.sleep(0.2)
        assert store.get(job_id).state == "done", store.get(job_id).error
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=120)
    assert "Traceback" not in err, err
    run = home / "runs" / job_id
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event": "epoch"' in x]
    assert [(e["phase"], e["epoch"]) for e in epochs] == [("scratch", 1), ("scratch", 2)]


def test_the_data_page_on_a_full_disk_shows_the_message(disk, monkeypatch):
    """The pages caught only DataError: a full disk while setting up the sample set was a traceback there."""
    from streamlit.testing.v1 import AppTest

    home = disk.path / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(home))
    home.mkdir()
    disk.fill(leave=200_000)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("the disk holding" in e.value and "free some space there" in e.value for e in at.error), [
        e.value for e in at.error
    ]
