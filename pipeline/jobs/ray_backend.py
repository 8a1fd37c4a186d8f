"""The Ray backend: the same contract on a Ray cluster, through the Ray Jobs API.

Selected by ``TRANSFER_STUDIO_RAY_ADDRESS`` (the Jobs API address of the head, e.g.
``http://127.0.0.1:8265``). Each job's run folder lives under ``TRANSFER_STUDIO_RUNS``
(default ``TRANSFER_STUDIO_HOME/runs``), a path that the app host and every cluster node must see
(a shared mount); the app reads progress from its ``metrics.jsonl`` exactly as with the local backend.
The cluster's Python environment must have Transfer Studio installed (``pip install -r requirements.txt``
plus this checkout on ``PYTHONPATH``, which the job's runtime_env sets for a same-host cluster).

Ray is an optional extra (``requirements-ray.txt``); it is imported only here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.data import absolute_source
from pipeline.host.atomic import atomic_write_json
from pipeline.host.launch import ROOT, child_env
from pipeline.jobs.store import NAME_MAX, Job, JobError, dataset_name, validate_job_id, validate_run_name

PREFIX = "ts-"


def submission_id(job_id: str, attempt: int = 1) -> str:
    """The Ray submission id of one attempt of a job: ``ts-<id>``, then ``ts-<id>-2``, ``ts-<id>-3``, ..."""
    return PREFIX + validate_job_id(job_id) + (f"-{attempt}" if attempt > 1 else "")


def parse_submission_id(sid: str) -> tuple[str, int] | None:
    """(job id, attempt) of one of our submission ids; None for anyone else's Ray job."""
    m = re.fullmatch(PREFIX + r"([0-9a-f]{32})(?:-([2-9]|[1-9][0-9]+))?", sid)  # what submission_id() makes
    return (m.group(1), int(m.group(2) or 1)) if m else None


def child_env_vars() -> dict[str, str]:
    """What the training child needs on a node, as ``launch.child_env`` gives a local one, without this host's own
    environment: this checkout (alone) on ``PYTHONPATH``, TensorFlow quiet, malloc arenas capped, the home."""
    env = child_env(TRANSFER_STUDIO_HOME=os.environ.get("TRANSFER_STUDIO_HOME", ""))
    return {
        "PYTHONPATH": str(ROOT),
        **{k: env[k] for k in ("TF_CPP_MIN_LOG_LEVEL", "MALLOC_ARENA_MAX", "TRANSFER_STUDIO_HOME")},
    }


_STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "done", "FAILED": "failed", "STOPPED": "cancelled"}


def _read_spec(path: Path) -> dict:
    """A run folder's job.json ({} when it is missing or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class RayBackend:
    """Jobs as Ray jobs: one Ray job per attempt, ``ts-<job id>`` then ``ts-<job id>-2``, ...
    (:func:`submission_id`)."""

    def __init__(self, address: str, runs: Path | None = None):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as exc:
            raise JobError("the Ray backend needs the optional extra: pip install -r requirements-ray.txt") from exc
        from pipeline.host import paths

        self.address = address
        self.runs = Path(runs or os.environ.get("TRANSFER_STUDIO_RUNS") or paths.home() / "runs")
        self.runs.mkdir(parents=True, exist_ok=True)
        try:
            self.client = JobSubmissionClient(address)
        except Exception as exc:
            raise JobError(
                f"cannot reach the Ray cluster at {address} ({exc}); is `ray start --head` running?"
            ) from exc

    def run_dir(self, job_id: str) -> Path:
        return self.runs / validate_job_id(job_id)

    def submit(self, source: str, config: RunConfig, owner: str | None = None, name: str | None = None) -> str:
        source = absolute_source(source)
        if name is None:
            same = sum(1 for p in self.runs.glob("*/job.json") if _read_spec(p).get("source") == source)
            name = f"{dataset_name(source)[: NAME_MAX - 8]} #{same + 1}"
        name = validate_run_name(name)
        job_id = secrets.token_hex(16)
        run_dir = self.run_dir(job_id)
        run_dir.mkdir(parents=True)
        atomic_write_json(
            run_dir / "job.json",
            {"source": source, "config": config.to_dict(), "owner": owner, "created": time.time(), "name": name},
        )
        try:
            self._ray("submit the job", self._start, job_id, 1, config.train.gpus)
        except JobError:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)  # no job: no folder left behind for it
            raise
        return job_id

    def _start(self, job_id: str, attempt: int, gpus: int) -> None:
        """Submits the training child of ``job_id`` (it trains its run folder, or continues it) as a Ray job."""
        run_dir = self.run_dir(job_id)
        self.client.submit_job(
            entrypoint=f"{sys.executable} -m pipeline.jobs.child --run-dir {run_dir}",
            submission_id=submission_id(job_id, attempt),
            entrypoint_num_gpus=gpus or None,
            runtime_env={"env_vars": child_env_vars()},
            metadata={"transfer_studio_run_dir": str(run_dir)},
        )

    def _spec(self, job_id: str) -> dict:
        return _read_spec(self.run_dir(job_id) / "job.json")

    def rename(self, job_id: str, name: str) -> Job:
        """Gives a job another name (kept in its run folder's job.json)."""
        name = validate_run_name(name)
        job = self.status(job_id)
        atomic_write_json(self.run_dir(job_id) / "job.json", {**self._spec(job_id), "name": name})
        return dataclasses.replace(job, name=name)

    def _ray(self, what: str, call, *args):
        """One call to the cluster; its failures become a :class:`JobError` saying what could not be done."""
        try:
            return call(*args)
        except Exception as exc:
            raise JobError(f"could not {what} on the Ray cluster at {self.address} ({exc}).") from exc

    def _attempts(self, job_id: str) -> list[tuple[int, Any]]:
        """(attempt, Ray job info) of every attempt of ``job_id`` the cluster lists, oldest first: the one source
        of truth for which attempt is current (a run folder's files could be stale after a crash)."""
        found = self._listed(job_id)
        if not found:
            raise JobError(f"no job {job_id} on the Ray cluster at {self.address}.")
        return found

    def _listed(self, job_id: str) -> list[tuple[int, Any]]:
        """:meth:`_attempts`, empty when the cluster lists none."""
        validate_job_id(job_id)
        found = [
            (parsed[1], info)
            for info in self._ray("list the jobs", self.client.list_jobs)
            if (parsed := parse_submission_id(info.submission_id or "")) and parsed[0] == job_id
        ]
        return sorted(found, key=lambda pair: pair[0])

    def status(self, job_id: str) -> Job:
        attempt, info = self._attempts(job_id)[-1]
        return self._job(job_id, attempt, info)

    def _job(self, job_id: str, attempt: int, info) -> Job:
        run_dir = self.run_dir(job_id)
        state = _STATES.get(str(info.status).split(".")[-1], "failed")
        error = None
        if state == "failed":
            error_file = run_dir / "error.txt"
            error = error_file.read_text().strip() if error_file.exists() else (info.message or "the Ray job failed")
        spec = self._spec(job_id)
        cancel = (run_dir / "CANCEL").exists()
        return Job(
            id=job_id,
            state=state,
            source=spec.get("source", ""),
            config=spec.get("config", {}),
            run_dir=str(run_dir),
            created=spec.get("created", (info.start_time or 0) / 1000),
            started=(info.start_time or 0) / 1000 if state != "queued" else None,
            finished=(info.end_time / 1000) if info.end_time else None,
            error=error,
            worker=f"ray:{self.address}",
            attempts=attempt,
            cancel_requested=cancel,
            owner=spec.get("owner"),
            name=spec.get("name"),
        )

    def cancel(self, job_id: str) -> Job:
        job = self.status(job_id)
        if not job.active:
            raise JobError(f"job {job_id} is already {job.state}; nothing to cancel.")
        (Path(job.run_dir) / "CANCEL").touch()  # stops at the next batch, checkpoint kept
        self._ray("stop the job", self.client.stop_job, submission_id(job_id, job.attempts))  # Ray's SIGTERM too
        return self.status(job_id)

    def resume(self, job_id: str) -> Job:
        """Starts a failed or cancelled job again on the cluster; it continues from its last finished epoch.

        Each attempt is a Ray job of its own (``ts-<id>-2``, ``-3``, ...: a submission id cannot be reused while
        Ray still tears down the stopped one); the run folder is the same, and that is what it continues. Two
        resumes at once ask for the same next id: Ray takes one and refuses the other, which is reported.

        Raises:
            JobError: the job is queued, running or done, or is being resumed already.
        """
        job = self.status(job_id)
        if job.state not in ("failed", "cancelled"):
            raise JobError(f"job {job_id} is {job.state}; only a failed or cancelled job can be resumed.")
        (Path(job.run_dir) / "CANCEL").unlink(missing_ok=True)
        gpus = int(job.config.get("train", {}).get("gpus", 0) or 0)
        self._ray("start the job again (is it being resumed already?)", self._start, job_id, job.attempts + 1, gpus)
        return self.status(job_id)

    def delete(self, job_id: str) -> Job:
        """Removes a stopped job, every attempt of it, from the cluster's job list, then its run folder."""
        from pipeline.host.atomic import remove_folder

        job = self.status(job_id)
        if job.active:
            raise JobError(f"job {job_id} is {job.state}; cancel it first, then delete it once it has stopped.")
        # Ray's job monitor (a 1 s loop) that has not yet seen its job end writes a record again when it finds
        # the record gone ("failed to get job supervisor"), which puts the job back in the list: delete until
        # the cluster has listed no attempt for longer than that loop.
        deadline = time.monotonic() + 30
        while attempts := self._listed(job_id):
            if time.monotonic() > deadline:
                raise JobError(f"job {job_id} keeps coming back on the Ray cluster at {self.address}; try again.")
            for attempt, _ in attempts:
                self._ray("delete the job", self.client.delete_job, submission_id(job_id, attempt))
            time.sleep(2.5)
        remove_folder(Path(job.run_dir))
        return job

    def list(self) -> list[Job]:
        latest: dict[str, tuple[int, Any]] = {}
        for info in self._ray("list the jobs", self.client.list_jobs):
            parsed = parse_submission_id(info.submission_id or "")
            if parsed and parsed[1] >= latest.get(parsed[0], (0, None))[0]:
                latest[parsed[0]] = (parsed[1], info)
        jobs = [self._job(job_id, attempt, info) for job_id, (attempt, info) in latest.items()]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def logs(self, job_id: str) -> str:
        """Every attempt's log, oldest first."""
        attempts = self._attempts(job_id)
        parts = [
            self._ray("read the job's log", self.client.get_job_logs, submission_id(job_id, attempt))
            for attempt, _ in attempts
        ]
        if len(parts) == 1:
            return parts[0]
        return "\n".join(
            f"--- attempt {attempt} ---\n{text}" for (attempt, _), text in zip(attempts, parts, strict=True)
        )
