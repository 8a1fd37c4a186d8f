"""The local job backend with real worker and training processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.jobs.backends import LocalBackend
from pipeline.jobs.store import JobError, JobStore
from pipeline.runs.folder import RunFolder
from tests.conftest import ROOT, pipeline_cli, tiny_config, write_shapes_dataset

QUICK = {"model": {"backbone": "small_cnn"}, "train": {"strategy": "from_scratch", "head_epochs": 2}}


def _run_once(*extra, timeout=600, **kw):
    proc = pipeline_cli("worker", "--once", *extra, **kw)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return err


def _wait(predicate, timeout=300, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def backend():
    return LocalBackend(JobStore(), autostart=False)


@pytest.fixture
def shapes(tmp_path):
    return write_shapes_dataset(tmp_path / "shapes", per_class=10)


def test_submit_run_done_with_metrics(backend, shapes):
    job_id = backend.submit(str(shapes), tiny_config(**QUICK))
    assert len(job_id) == 32 and backend.status(job_id).state == "queued"
    _run_once()
    job = backend.status(job_id)
    assert job.state == "done", job.error
    assert job.started and job.finished and job.finished >= job.started and job.attempts == 1
    run = RunFolder(Path(job.run_dir))
    assert Path(job.run_dir).parent == backend.store.runs
    assert [e["epoch"] for e in run.epochs()] == [1, 2] and run.eval.exists()
    assert "job" in (run.root / "train.log").read_text()


def test_cancel_a_queued_job(backend, shapes):
    job_id = backend.submit(str(shapes), tiny_config(**QUICK))
    assert backend.cancel(job_id).state == "cancelled"
    _run_once()
    assert backend.status(job_id).state == "cancelled"
    assert not RunFolder(Path(backend.status(job_id).run_dir)).metrics.exists()  # it never ran
    with pytest.raises(JobError, match="already cancelled"):
        backend.cancel(job_id)


LONG = {
    "model": {"image_size": 64},
    "train": {"head_epochs": 3, "fine_tune_epochs": 4},
    "augment": {"enabled": True},
    "data": {"test_fraction": 0.0},
}


def test_cancel_a_running_job_keeps_its_checkpoint(backend, tmp_path):
    data_dir = write_shapes_dataset(tmp_path / "big", per_class=20, size=64)
    job_id = backend.submit(str(data_dir), tiny_config(**LONG))
    worker = pipeline_cli("worker")
    try:
        run = RunFolder(backend.store.run_dir(job_id))
        _wait(lambda: len(run.epochs()) >= 1, what="the first epoch")
        assert backend.cancel(job_id).cancel_requested
        _wait(lambda: backend.status(job_id).state == "cancelled", what="the cancel")
        assert len(run.epochs()) < 7
        assert run.backup_dir("head").exists() or run.phase_done_weights("head").exists()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=120)
    assert worker.returncode == 0


def test_killed_worker_and_child_resume_without_repeating_epochs(backend, tmp_path):
    data_dir = write_shapes_dataset(tmp_path / "big", per_class=20, size=64)
    job_id = backend.submit(str(data_dir), tiny_config(**LONG))
    worker = pipeline_cli("worker")
    run = RunFolder(backend.store.run_dir(job_id))
    _wait(lambda: len(run.epochs()) >= 4, what="four epochs")
    children = psutil.Process(worker.pid).children()
    assert [c.cmdline()[-1] for c in children] == [job_id]
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    _, alive = psutil.wait_procs(children, timeout=30)  # the child dies with its worker (PR_SET_PDEATHSIG)
    assert not alive
    before = [(e["phase"], e["epoch"]) for e in run.epochs()]
    assert backend.status(job_id).state == "running"  # the dead worker left it so

    _run_once()
    job = backend.status(job_id)
    assert job.state == "done" and job.attempts == 2
    after = [(e["phase"], e["epoch"]) for e in run.epochs()]
    assert after[: len(before)] == before and len(set(after)) == len(after) == 7


def test_five_jobs_with_concurrency_one_run_one_at_a_time(backend, shapes):
    ids = [
        backend.submit(str(shapes), tiny_config(**{**QUICK, "train": {**QUICK["train"], "head_epochs": 1}}))
        for _ in range(5)
    ]
    _run_once("--concurrency", "1", timeout=900)
    jobs = sorted((backend.status(i) for i in ids), key=lambda j: j.started)
    assert [j.state for j in jobs] == ["done"] * 5
    for a, b in zip(jobs, jobs[1:], strict=False):
        assert a.finished <= b.started  # never two at once
    assert all(j.attempts == 1 for j in jobs)  # each ran exactly once


def test_broken_config_and_bad_data_fail_with_a_readable_reason(backend, shapes, tmp_path):
    bad_config = backend.store.add(str(shapes), {"train": {"strategy": "magic"}})
    one_class = tmp_path / "one"
    write_shapes_dataset(one_class, per_class=3)
    for extra in ("bar", "disc"):
        for f in (one_class / extra).iterdir():
            f.unlink()
        (one_class / extra).rmdir()
    bad_data = backend.submit(str(one_class), tiny_config(**QUICK))
    _run_once()
    job = backend.status(bad_config)
    assert job.state == "failed" and job.error.startswith("train.strategy='magic' is not allowed")
    job = backend.status(bad_data)
    assert job.state == "failed" and "at least 2" in job.error and "'square'" in job.error


def test_crafted_job_ids_are_refused(backend):
    for bad in ("../../etc", "a" * 31, "A" * 32, "0" * 32 + "/x", ""):
        with pytest.raises(JobError, match="is not a job id"):
            backend.status(bad)
        with pytest.raises(JobError):
            backend.store.run_dir(bad)
    proc = pipeline_cli("status", "../../etc")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "is not a job id" in err and "Traceback" not in err


def test_cli_submit_starts_a_worker_and_the_job_finishes(shapes):
    proc = pipeline_cli(
        "submit",
        str(shapes),
        "--set",
        "model.backbone=small_cnn",
        "--set",
        "model.weights=none",
        "--set",
        "train.strategy=from_scratch",
        "--set",
        "train.head_epochs=1",
        "--set",
        "model.image_size=32",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    job_id = out.strip().splitlines()[-1]
    store = JobStore()
    try:
        _wait(lambda: store.get(job_id).state in ("done", "failed"), what="the job")
        assert store.get(job_id).state == "done"
        status = pipeline_cli("status", job_id, "--json")
        out, _ = status.communicate(timeout=60)
        assert '"state": "done"' in out and '"epochs"' in out
    finally:
        for w in store.workers():
            if w.stopped is None:
                os.kill(w.pid, signal.SIGTERM)
        _wait(lambda: all(w.stopped for w in store.workers()), timeout=60, what="the worker to stop")


def _steps_per_phase(run):
    state = json.loads(run.state.read_text())
    return {name: p["steps_done"] for name, p in state["phases"].items()}


def test_a_child_killed_alone_fails_with_a_way_forward_and_resumes(backend, tmp_path):
    """The kernel's OOM killer takes the training process only: the job fails naming `resume`; resumed, every
    planned epoch is trained exactly once and the optimizer made exactly epochs x steps steps per phase."""
    data_dir = write_shapes_dataset(tmp_path / "big", per_class=20, size=64)
    job_id = backend.submit(str(data_dir), tiny_config(**LONG))
    worker = pipeline_cli("worker")
    try:
        run = RunFolder(backend.store.run_dir(job_id))
        _wait(lambda: len(run.epochs()) >= 2, what="two epochs")
        (child,) = psutil.Process(worker.pid).children()
        child.send_signal(signal.SIGKILL)
        _wait(lambda: backend.status(job_id).state == "failed", what="the job to fail")
        error = backend.status(job_id).error
        assert "killed by signal 9" in error and f"python -m pipeline resume {job_id}" in error

        proc = pipeline_cli("resume", job_id)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "queued" in out, err
        _wait(lambda: backend.status(job_id).state in ("done", "failed"), what="the resumed job")
        job = backend.status(job_id)
        assert job.state == "done", job.error
        assert job.attempts == 2 and job.error is None
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=120)
    trained = [(e["phase"], e["epoch"]) for e in run.epochs()]
    assert trained == [("head", 1), ("head", 2), ("head", 3), *(("fine_tune", i) for i in range(1, 5))]
    per_epoch = -(-len(json.loads(run.dataset.read_text())["splits"]["train"]) // 8)
    assert _steps_per_phase(run) == {"head": 3 * per_epoch, "fine_tune": 4 * per_epoch}
    assert run.eval.exists()

    with pytest.raises(JobError, match="is done; only a failed or cancelled job can be resumed"):
        backend.resume(job_id)


def test_a_job_whose_run_finished_is_done_however_its_worker_or_child_died(backend, shapes, ts_home):
    """A finished run is the job's result. Before: the worker dying after the run finished but before recording
    it left the job failed for ever ("holds a finished run; use a new --run-dir"), and `resume` failed the same."""
    from pipeline.host.atomic import FAULT_ENV

    # 1. The child is SIGKILLed once state.json says done (before it exits): the worker records done.
    killed = backend.submit(str(shapes), tiny_config(**QUICK))
    _run_once(env={**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: "run-done"})
    assert backend.status(killed).state == "done", backend.status(killed).error

    # 2. The worker died after its child finished the run: the job is left running; the next worker runs the
    # child again, which finds the run done and trains nothing.
    orphan = backend.submit(str(shapes), tiny_config(**QUICK))
    backend.store.claim(backend.store.register_worker(1))  # a worker that never beats: dead at once
    child = subprocess.run(
        [sys.executable, "-m", "pipeline.jobs.child", orphan],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.returncode == 0, child.stdout + child.stderr
    run = RunFolder(backend.store.run_dir(orphan))
    epochs = run.epochs()
    assert backend.status(orphan).state == "running" and run.finished()
    _run_once()
    job = backend.status(orphan)
    assert job.state == "done" and job.attempts == 2, job.error
    assert run.epochs() == epochs  # nothing trained twice
    assert "already finished" in (run.root / "train.log").read_text()

    # 3. A job an older version left failed although its run finished: `resume` makes it done.
    backend.store.finish(orphan, "failed", f"{run.root} holds a finished run; use a new --run-dir to train again.")
    proc = pipeline_cli("resume", orphan)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "done: its run had finished" in out, err
    assert backend.status(orphan).state == "done" and backend.status(orphan).error is None


def test_a_damaged_job_database_is_a_message_not_a_traceback(ts_home):
    (ts_home / "jobs.sqlite3").write_bytes(b"this is not a database" * 100)
    proc = pipeline_cli("jobs")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err
    assert "jobs.sqlite3 is damaged" in err and "jobs.sqlite3.damaged" in err and "run folder" in err


def test_the_runs_page_resume_button_queues_a_failed_job_again_and_shows_warnings(tmp_path):
    from pipeline import config
    from tests.test_sharing import _visitor, owner_of

    key = "a" * 32
    store = JobStore()
    job_id = store.add(str(tmp_path / "gone"), config.RunConfig().to_dict(), owner=owner_of(key))
    store.claim(store.register_worker(1))
    store.finish(
        job_id,
        "failed",
        f"the training process was killed by signal 9 (out of memory?); resume it with "
        f"`python -m pipeline resume {job_id}`",
    )
    run = RunFolder(store.run_dir(job_id))
    run.root.mkdir(parents=True)
    run.metrics.write_text(
        json.dumps({"event": "warning", "message": "state.json is damaged; resumed from state.prev.json."}) + "\n"
    )
    at = _visitor(key, "runs.py", run=job_id)
    assert not at.exception, [e.value for e in at.exception]
    assert any("resumed from state.prev.json" in w.value.replace("\\", "") for w in at.warning)
    try:
        next(b for b in at.button if b.label == "Resume").click().run()
        assert not at.exception, [e.value for e in at.exception]
        job = store.get(job_id)
        assert job.state in ("queued", "running", "failed") and job.attempts in (1, 2)
        assert job.state != "failed" or job.attempts == 2  # queued again (a worker may have tried it already)
    finally:
        for w in store.workers():
            if w.stopped is None and w.pid != os.getpid():
                os.kill(w.pid, signal.SIGTERM)
        _wait(
            lambda: all(w.stopped or w.pid == os.getpid() for w in store.workers()),
            timeout=120,
            what="the worker to stop",
        )
