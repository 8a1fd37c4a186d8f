"""The contract every training backend meets: submit, status, cancel, resume, rename, list, delete, and ``runs``.

Implementations: :class:`pipeline.jobs.backends.LocalBackend` (the default) and
:class:`pipeline.jobs.ray_backend.RayBackend`; :func:`pipeline.jobs.backends.get_backend` chooses one.
This module imports none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pipeline.config import RunConfig
from pipeline.jobs.store import Job


class Backend(Protocol):
    runs: Path  # the folder holding its jobs' run folders (runs/<job id>/)

    def submit(self, source: str, config: RunConfig, owner: str | None = None, name: str | None = None) -> str:
        """Queues a training job on ``source`` (a folder, a .zip or ``sample:NAME``) for ``owner`` (None: the
        host), called ``name`` (default: the dataset's name and a number); returns its id."""
        ...

    def rename(self, job_id: str, name: str) -> Job:
        """Gives a job another name (1 to 80 characters of one line)."""
        ...

    def status(self, job_id: str) -> Job: ...

    def cancel(self, job_id: str) -> Job:
        """Asks a queued or running job to stop (it keeps its last finished epoch)."""
        ...

    def resume(self, job_id: str) -> Job:
        """Queues a failed or cancelled job again: it goes on from its last finished epoch (a job whose run had
        finished becomes done)."""
        ...

    def list(self) -> list[Job]: ...

    def delete(self, job_id: str) -> Job:
        """Removes a job that is not queued or running, with its run folder and the model files it served."""
        ...
