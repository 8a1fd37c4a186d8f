"""One contract, two backends: the local worker and a real Ray head started on 127.0.0.1 (slow)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.jobs.backends import LocalBackend
from pipeline.jobs.store import JobError, JobStore
from pipeline.runs.folder import RunFolder
from tests.conftest import tiny_config, write_shapes_dataset

QUICK = {"model": {"backbone": "small_cnn"}, "train": {"strategy": "from_scratch", "head_epochs": 2}}
LONG = {
    "model": {"backbone": "small_cnn", "image_size": 64},
    "train": {"strategy": "from_scratch", "head_epochs": 30, "batch_size": 4},
    "augment": {"enabled": True},
    "data": {"test_fraction": 0.0},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray", reason="the Ray extra (requirements-ray.txt) is not installed")
    ray = Path(sys.executable).with_name("ray")
    port, dash = _free_port(), _free_port()
    subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=120)
    proc = subprocess.run(
        [
            str(ray),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--disable-usage-stats",
            "--include-dashboard=true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    yield f"http://127.0.0.1:{dash}"
    subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def backend(request, ts_home):
    if request.param == "ray":
        from pipeline.jobs.ray_backend import RayBackend

        yield RayBackend(request.getfixturevalue("ray_head"))
        return
    local = LocalBackend(JobStore())
    yield local
    for w in local.store.workers():
        if w.stopped is None:
            try:
                os.kill(w.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    t0 = time.monotonic()
    while local.worker_alive() and time.monotonic() - t0 < 120:
        time.sleep(0.1)


def _wait_state(backend, job_id, states, timeout=600):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = backend.status(job_id)
        if job.state in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {backend.status(job_id).state}")


def _cancel_after_first_epoch(backend, job_id) -> RunFolder:
    """Waits for the job's first finished epoch, cancels it, and waits until it has stopped as cancelled."""
    run = RunFolder(Path(backend.status(job_id).run_dir))
    t0 = time.monotonic()
    while not run.epochs():
        assert time.monotonic() - t0 < 300, "no epoch in time"
        time.sleep(0.1)
    backend.cancel(job_id)
    job = _wait_state(backend, job_id, ("cancelled", "failed", "done"))
    assert job.state == "cancelled", job.error
    return run


def test_submit_runs_to_done_with_metrics_in_the_run_folder(backend, tmp_path):
    data_dir = write_shapes_dataset(tmp_path / "shapes", per_class=10)
    job_id = backend.submit(str(data_dir), tiny_config(**QUICK))
    assert backend.status(job_id).state in ("queued", "running")
    job = _wait_state(backend, job_id, ("done", "failed"))
    assert job.state == "done", job.error
    run = RunFolder(Path(job.run_dir))
    assert [e["epoch"] for e in run.epochs()] == [1, 2] and run.model.exists() and run.eval.exists()
    assert job_id in {j.id for j in backend.list()}
    assert job.finished and job.finished >= job.created
    assert job.name == "shapes #1"  # named after its dataset, numbered
    assert backend.rename(job_id, " the first shapes ").name == "the first shapes"
    assert backend.status(job_id).title == "the first shapes" and backend.status(job_id).state == "done"
    with pytest.raises(ValueError, match="one line"):
        backend.rename(job_id, "a\nb")


def test_cancel_while_running_keeps_the_checkpoint(backend, tmp_path):
    data_dir = write_shapes_dataset(tmp_path / "shapes", per_class=12, size=64)
    job_id = backend.submit(str(data_dir), tiny_config(**LONG))
    run = _cancel_after_first_epoch(backend, job_id)
    assert len(run.epochs()) < 30 and run.backup_dir("scratch").exists()


def test_a_cancelled_job_resumes_and_trains_every_epoch_once(backend, tmp_path):
    data_dir = write_shapes_dataset(tmp_path / "shapes", per_class=12, size=64)
    epochs = 8  # enough that the cancel lands before the end
    job_id = backend.submit(str(data_dir), tiny_config(**{**LONG, "train": {**LONG["train"], "head_epochs": epochs}}))
    run = _cancel_after_first_epoch(backend, job_id)
    stopped_at = len(run.epochs())
    assert 1 <= stopped_at < epochs
    resumed = backend.resume(job_id)
    assert resumed.state in ("queued", "running")
    job = _wait_state(backend, job_id, ("done", "failed", "cancelled"))
    assert job.state == "done" and job.attempts == 2, job.error
    assert [e["epoch"] for e in run.epochs()] == list(range(1, epochs + 1))  # none skipped, none twice
    assert run.eval.exists()
    with pytest.raises(JobError, match="only a failed or cancelled job"):
        backend.resume(job_id)
    listed = [j for j in backend.list() if j.id == job_id]
    assert [(j.state, j.attempts) for j in listed] == [("done", 2)]  # one job, however many attempts
    if hasattr(backend, "logs"):  # Ray: every attempt's log
        logs = backend.logs(job_id)
        assert logs.index("--- attempt 1 ---") < logs.index("--- attempt 2 ---") < logs.index("Resuming")
    backend.delete(job_id)
    assert job_id not in {j.id for j in backend.list()} and not run.root.exists()


def test_a_failing_job_ends_failed_with_a_readable_reason(backend, tmp_path):
    one = write_shapes_dataset(tmp_path / "one", per_class=3)
    for extra in ("bar", "disc"):
        shutil.rmtree(one / extra)
    job_id = backend.submit(str(one), tiny_config(**QUICK))
    job = _wait_state(backend, job_id, ("done", "failed"))
    assert job.state == "failed"
    assert "at least 2" in job.error and "'square'" in job.error and "Traceback" not in job.error


def test_crafted_ids_are_refused(backend):
    for bad in ("../../etc", "ts-" + "0" * 29, "0" * 31):
        with pytest.raises(JobError, match="is not a job id"):
            backend.status(bad)
        with pytest.raises(JobError, match="is not a job id"):
            backend.cancel(bad)


def test_ray_submission_ids_name_each_attempt_and_nobody_elses_job():
    from pipeline.jobs.ray_backend import parse_submission_id, submission_id

    job_id = "ab" * 16
    assert [submission_id(job_id, a) for a in (1, 2, 10)] == [f"ts-{job_id}", f"ts-{job_id}-2", f"ts-{job_id}-10"]
    assert [parse_submission_id(submission_id(job_id, a)) for a in (1, 2, 10)] == [
        (job_id, 1),
        (job_id, 2),
        (job_id, 10),
    ]
    for other in ("raysubmit_123", f"ts-{job_id}-", f"ts-{job_id}x", "ts-" + "AB" * 16, f"xts-{job_id}"):
        assert parse_submission_id(other) is None
    with pytest.raises(JobError, match="is not a job id"):
        submission_id("../etc")
