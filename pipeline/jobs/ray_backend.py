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

import json
import os
import secrets
import sys
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.data import absolute_source
from pipeline.jobs.store import Job, JobError, validate_job_id
from pipeline.launch import ROOT
from pipeline.runfolder import atomic_write_json

PREFIX = "ts-"
_STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "done", "FAILED": "failed", "STOPPED": "cancelled"}


class RayBackend:
    """Jobs as Ray jobs: ``submission_id`` is ``ts-<job id>``."""

    def __init__(self, address: str, runs: Path | None = None):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as exc:
            raise JobError("the Ray backend needs the optional extra: pip install -r requirements-ray.txt") from exc
        from pipeline import paths

        self.address = address
        self.runs = Path(runs or os.environ.get("TRANSFER_STUDIO_RUNS") or paths.home() / "runs")
        self.runs.mkdir(parents=True, exist_ok=True)
        try:
            self.client = JobSubmissionClient(address)
        except Exception as exc:
            raise JobError(f"cannot reach the Ray cluster at {address} ({exc}); is `ray start --head` running?") from exc

    def run_dir(self, job_id: str) -> Path:
        return self.runs / validate_job_id(job_id)

    def submit(self, source: str, config: RunConfig, owner: str | None = None) -> str:
        job_id = secrets.token_hex(16)
        run_dir = self.run_dir(job_id)
        run_dir.mkdir(parents=True)
        atomic_write_json(run_dir / "job.json", {"source": absolute_source(source), "config": config.to_dict(),
                                                   "owner": owner})
        gpus = config.train.gpus
        self.client.submit_job(
            entrypoint=f"{sys.executable} -m pipeline.jobs.child --run-dir {run_dir}",
            submission_id=PREFIX + job_id,
            entrypoint_num_gpus=gpus or None,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                                      "TRANSFER_STUDIO_HOME": os.environ.get("TRANSFER_STUDIO_HOME", "")}},
            metadata={"transfer_studio_run_dir": str(run_dir)},
        )
        return job_id

    def status(self, job_id: str) -> Job:
        run_dir = self.run_dir(job_id)
        try:
            info = self.client.get_job_info(PREFIX + job_id)
        except Exception as exc:
            raise JobError(f"no job {job_id} on the Ray cluster at {self.address}.") from exc
        return self._job(job_id, run_dir, info)

    def _job(self, job_id: str, run_dir: Path, info) -> Job:
        state = _STATES.get(str(info.status).split(".")[-1], "failed")
        error = None
        if state == "failed":
            error_file = run_dir / "error.txt"
            error = error_file.read_text().strip() if error_file.exists() else (info.message or "the Ray job failed")
        spec = json.loads((run_dir / "job.json").read_text()) if (run_dir / "job.json").exists() else {}
        cancel = (run_dir / "CANCEL").exists()
        return Job(
            id=job_id, state=state, source=spec.get("source", ""), config=spec.get("config", {}),
            run_dir=str(run_dir), created=(info.start_time or 0) / 1000,
            started=(info.start_time or 0) / 1000 if state != "queued" else None,
            finished=(info.end_time / 1000) if info.end_time else None, error=error,
            worker=f"ray:{self.address}", attempts=1, cancel_requested=cancel, owner=spec.get("owner"),
        )

    def cancel(self, job_id: str) -> Job:
        job = self.status(job_id)
        if job.state not in ("queued", "running"):
            raise JobError(f"job {job_id} is already {job.state}; nothing to cancel.")
        (Path(job.run_dir) / "CANCEL").touch()  # stops at the next batch, checkpoint kept
        self.client.stop_job(PREFIX + job_id)  # and Ray's SIGTERM does the same
        return self.status(job_id)

    def resume(self, job_id: str) -> Job:
        raise JobError(f"the Ray backend cannot resume job {job_id} yet; resume its run folder with "
                       f"`python -m pipeline train SOURCE --run-dir {self.run_dir(job_id)}`.")

    def delete(self, job_id: str) -> Job:
        """Removes a stopped job from the cluster's job list, and its run folder."""
        import shutil

        job = self.status(job_id)
        if job.state in ("queued", "running"):
            raise JobError(f"job {job_id} is {job.state}; cancel it first, then delete it once it has stopped.")
        self.client.delete_job(PREFIX + job_id)
        shutil.rmtree(job.run_dir, ignore_errors=True)
        return job

    def list(self) -> list[Job]:
        jobs = []
        for info in self.client.list_jobs():
            sid = info.submission_id or ""
            if sid.startswith(PREFIX):
                job_id = sid[len(PREFIX):]
                jobs.append(self._job(job_id, self.run_dir(job_id), info))
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def logs(self, job_id: str) -> str:
        return self.client.get_job_logs(PREFIX + validate_job_id(job_id))

