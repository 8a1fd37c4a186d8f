"""The local training backend, and the choice of backend (``get_backend``).

The contract every backend meets is :class:`pipeline.jobs.contract.Backend`; this module is the only one that
knows the implementations (local here, Ray in ``ray_backend``), and none of them imports it back.

The run folder's ``metrics.jsonl`` is the progress feed for every backend. ``LocalBackend`` (the default) queues
jobs in the SQLite store and starts a background worker when none is alive, so a new user needs no second
terminal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.data import absolute_source
from pipeline.host.launch import start_python
from pipeline.jobs.contract import Backend
from pipeline.jobs.store import Job, JobStore
from pipeline.jobs.worker import WorkerLock
from pipeline.runs.folder import RunFolder


class LocalBackend:
    """Jobs run by the local worker process (``python -m pipeline worker``)."""

    def __init__(self, store: JobStore | None = None, *, autostart: bool = True):
        self.store = store or JobStore()
        self.autostart = autostart

    def submit(self, source: str, config: RunConfig, owner: str | None = None, name: str | None = None) -> str:
        """Queues a training job for ``owner`` (the config is validated already: it is a RunConfig)."""
        job_id = self.store.add(absolute_source(source), config.to_dict(), owner=owner, name=name)
        if self.autostart:
            self.ensure_worker()
        return job_id

    @property
    def runs(self) -> Path:
        """The folder holding its jobs' run folders."""
        return self.store.runs

    def status(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> Job:
        return self.store.cancel(job_id)

    def rename(self, job_id: str, name: str) -> Job:
        return self.store.rename(job_id, name)

    def resume(self, job_id: str) -> Job:
        """Queues a failed or cancelled job again (it continues from its last finished epoch); a job left
        running by a dead worker is put back in the queue by the worker this starts. A job whose run folder
        holds a finished run is done: it becomes so (its worker died before recording it)."""
        job = self.store.get(job_id)
        if job.state == "running" and not self.worker_alive():
            self.ensure_worker()
            return self.store.get(job_id)
        if job.state in ("failed", "cancelled") and RunFolder(Path(job.run_dir)).finished():
            self.store.finish(job_id, "done")  # its run finished; what failed was recording it (a dead worker)
            return self.store.get(job_id)
        job = self.store.resume(job_id)
        if self.autostart:
            self.ensure_worker()
        return job

    def list(self) -> list[Job]:
        return self.store.list()

    def delete(self, job_id: str) -> Job:
        """Removes a finished, failed or cancelled job: its row, its run folder (model, exports: every file the
        Try page serves from it) and a copy an older version served from the repository's static/ folder."""
        import shutil

        from pipeline.host.launch import ROOT

        job = self.store.delete(job_id)
        shutil.rmtree(ROOT / "static" / "models" / job.id, ignore_errors=True)
        return job

    def worker_alive(self) -> bool:
        return WorkerLock(self.store.home).held_elsewhere()

    def ensure_worker(self) -> bool:
        """Starts a background worker when none holds the lock; returns True if it started one."""
        if self.worker_alive():
            return False
        start_python(
            "pipeline", "worker", log=self.store.home / "worker.log", env={"TRANSFER_STUDIO_HOME": str(self.store.home)}
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.worker_alive():
            time.sleep(0.1)
        return True


def get_backend() -> Backend:
    """The configured backend: Ray when ``TRANSFER_STUDIO_RAY_ADDRESS`` is set, else local (the default)."""
    address = os.environ.get("TRANSFER_STUDIO_RAY_ADDRESS")
    if address:
        from pipeline.jobs.ray_backend import RayBackend

        return RayBackend(address)
    return LocalBackend()
