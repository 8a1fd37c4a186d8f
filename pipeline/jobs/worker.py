"""The local worker: claims queued jobs and runs each training in its own child process.

One worker per TRANSFER_STUDIO_HOME (an exclusive lock on ``worker.lock``), so two jobs never fight over
one device: each child gets GPUs of its own (``CUDA_VISIBLE_DEVICES`` set per child from the worker's visible
list, ``train.gpus`` of them, default one; the oldest queued job waits while fewer are free), and without a GPU
one job runs at a time. On start it puts every
job left ``running`` by a dead worker back in the queue; the child then resumes it from its last
finished epoch (state.json in its run folder). Children die with the worker (PR_SET_PDEATHSIG, set by
the child itself: pipeline.host.launch.die_with_parent). A child that dies alone (the OOM killer) leaves
its job failed with a message naming ``python -m pipeline resume JOB``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pipeline.host.devices import DeviceError, DevicePool, child_device_env, jobs_at_once, visible_gpu_ids
from pipeline.host.disk import DiskFullError, free_bytes
from pipeline.host.exitcodes import EXIT_CANCELLED, EXIT_USER_ERROR
from pipeline.host.launch import start_python
from pipeline.jobs.store import FULL_BELOW, HEARTBEAT_SECONDS, JobError, JobStore
from pipeline.runs.folder import RunFolder


def default_concurrency() -> int:
    """One job per visible GPU, 1 without a GPU: two jobs never fight over one device."""
    return jobs_at_once(visible_gpu_ids())


class WorkerLock:
    """Exclusive, process-lifetime lock: at most one worker per home (``name``: another lock file in ``home``, for
    another one-process-only role, such as a study's driver)."""

    def __init__(self, home: Path, name: str = "worker.lock"):
        self.path = home / name
        self._fh = None

    def acquire(self) -> bool:
        self._fh = open(self.path, "a+")  # noqa: SIM115 - held for the worker's lifetime
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            return False
        return True

    def held_elsewhere(self) -> bool:
        """True when another process holds the lock (a worker is alive)."""
        with open(self.path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False


class Worker:
    def __init__(self, store: JobStore, concurrency: int | None = None, *, once: bool = False, poll: float = 0.3):
        self.store = store
        self.concurrency = concurrency or default_concurrency()
        self.once = once
        self.poll = poll
        self.children: dict[str, subprocess.Popen] = {}
        self.devices = DevicePool(visible_gpu_ids())
        self.given: dict[str, list[str]] = {}
        self.outcomes: dict[str, tuple[str, str | None]] = {}  # a gone child's result, until the store has it
        self.unrecorded: set[str] = set()
        self.stopping = threading.Event()
        self.id = ""

    def run(self) -> int:
        lock = WorkerLock(self.store.home)
        if not lock.acquire():
            print(
                f"error: a worker is already running for this TRANSFER_STUDIO_HOME ({self.store.home}); it runs "
                "every queued job: stop it first to start another (one worker per home).",
                file=sys.stderr,
            )
            return EXIT_USER_ERROR
        self.id = self.store.register_worker(self.concurrency)
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        resumed = self.store.requeue_orphans(owner_alive=lambda w: w == self.id)
        for job_id in resumed:
            (self.store.run_dir(job_id) / "CANCEL").unlink(missing_ok=True)
        print(
            f"worker {self.id} (pid {os.getpid()}, concurrency {self.concurrency}); "
            f"{len(resumed)} interrupted job(s) requeued",
            file=sys.stderr,
            flush=True,
        )
        try:
            while not self.stopping.is_set():
                self._reap()
                try:
                    while len(self.children) < self.concurrency and not self.stopping.is_set():
                        job = self.store.claim(self.id, fits=lambda j: self.devices.fits(j.config.get("train", {})))
                        if job is None:
                            break
                        self._spawn(job)
                    if self.once and not self.children and not any(j.state == "queued" for j in self.store.list()):
                        break
                except JobError as exc:  # the database cannot be used for now (a full disk): the worker waits
                    print(f"waiting: {exc}", file=sys.stderr, flush=True)
                    self.stopping.wait(max(self.poll, 5.0))
                self.stopping.wait(self.poll)
        finally:
            self._shutdown()
            try:
                self.store.stop_worker(self.id)
            except JobError as exc:  # its heartbeat goes stale instead: the next worker knows it is gone
                print(f"the worker's stop could not be recorded: {exc}", file=sys.stderr, flush=True)
        return 0

    def _heartbeat(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.store.heartbeat(self.id)
            except Exception as exc:  # a locked database for a moment must not kill the heartbeat
                print(f"heartbeat failed: {exc}", file=sys.stderr)

    def _spawn(self, job) -> None:
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            ids = self.devices.take(job.config.get("train", {}))
        except DeviceError as exc:
            print(f"job {job.id} failed: {exc}", file=sys.stderr, flush=True)
            self.store.finish(job.id, "failed", str(exc))  # a JobError here: the loop waits, requeued on restart
            return
        try:
            self.children[job.id] = start_python(
                "pipeline.jobs.child",
                job.id,
                log=run_dir / "train.log",
                env={"TRANSFER_STUDIO_HOME": str(self.store.home), **child_device_env(ids)},
                die_with_parent=True,
            )
        except OSError as exc:  # no process to run it (fork failed, the log cannot be opened): its GPUs stay free
            self.devices.give_back(ids)
            self.store.finish(
                job.id,
                "failed",
                f"the training process could not start ({exc}); resume it with `python -m pipeline resume {job.id}`",
            )
            print(f"job {job.id} failed to start: {exc}", file=sys.stderr, flush=True)
            return
        self.given[job.id] = ids
        where = f"on GPU {','.join(ids)}" if ids else "on the CPU"
        print(f"job {job.id} started {where} (attempt {job.attempts})", file=sys.stderr, flush=True)

    def _reap(self) -> None:
        for job_id, proc in list(self.children.items()):
            rc = proc.poll()
            if rc is None:
                continue
            try:
                if job_id not in self.outcomes:  # decided once, when the child is seen gone
                    self.outcomes[job_id] = self._outcome(job_id, rc)
                self.store.finish(job_id, *self.outcomes[job_id])
            except JobError as exc:  # the job database cannot be written now (a full disk): again at the next poll
                if job_id not in self.unrecorded:
                    print(f"job {job_id} ended; recording it waits: {exc}", file=sys.stderr, flush=True)
                self.unrecorded.add(job_id)
                continue
            self.unrecorded.discard(job_id)
            del self.children[job_id]
            self.devices.give_back(self.given.pop(job_id, []))
            print(f"job {job_id} {self.outcomes.pop(job_id)[0]}", file=sys.stderr, flush=True)

    def _outcome(self, job_id: str, rc: int) -> tuple[str, str | None]:
        """The state (and error) a child that exited with ``rc`` leaves its job in."""
        job = self.store.get(job_id)
        error_file = Path(job.run_dir) / "error.txt"
        if rc == 0 or RunFolder(Path(job.run_dir)).finished():  # killed after the run was done: it is done
            return "done", None
        if rc == EXIT_CANCELLED and job.cancel_requested:
            return "cancelled", None
        if error_file.exists():
            return "failed", error_file.read_text(encoding="utf-8").strip()
        if rc < 0:
            return "failed", (
                f"the training process was killed by signal {-rc} (out of memory?); resume it from its "
                f"last finished epoch with `python -m pipeline resume {job_id}` or the Resume button on "
                "the Runs page"
            )
        if (free := free_bytes(job.run_dir)) is not None and free < FULL_BELOW:  # not even error.txt fitted
            return "failed", str(
                DiskFullError(job.run_dir, then=f"resume it with `python -m pipeline resume {job_id}`")
            )
        return "failed", (
            f"the training process exited with code {rc} (see train.log in the run folder); resume it "
            f"with `python -m pipeline resume {job_id}`"
        )

    def _shutdown(self) -> None:
        """Stopping the worker stops its children at their next batch; their jobs wait in the queue."""
        for proc in self.children.values():
            proc.send_signal(signal.SIGTERM)
        for job_id, proc in self.children.items():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:
                if job_id in self.outcomes:  # it had ended before the stop: its outcome, not a retry
                    self.store.finish(job_id, *self.outcomes.pop(job_id))
                elif RunFolder(Path(self.store.get(job_id).run_dir)).finished():
                    self.store.finish(job_id, "done")
                elif not self.store.get(job_id).cancel_requested:
                    self.store.requeue(job_id)
                else:
                    self.store.finish(job_id, "cancelled")
            except JobError as exc:  # the database cannot be written (a full disk): the next worker requeues it
                print(
                    f"job {job_id}: its state could not be recorded ({exc}); the next worker takes it up",
                    file=sys.stderr,
                    flush=True,
                )
        self.children.clear()
        for ids in self.given.values():
            self.devices.give_back(ids)
        self.given.clear()
