"""The job store: SQLite in WAL mode under TRANSFER_STUDIO_HOME, shared by the app, the CLI and workers.

Every state change is one short transaction, so several processes (app sessions, CLI calls, workers)
can use it at once; claiming a queued job is atomic (``BEGIN IMMEDIATE``), so each job runs once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline import config as config_mod
from pipeline.config import RunConfig
from pipeline.host import paths
from pipeline.host.atomic import remove_folder
from pipeline.host.disk import free_bytes, is_full, size_text
from pipeline.host.exitcodes import UserError

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")  # a job in these states may still train; it is cancelled, not deleted
JOB_ID = re.compile(r"[0-9a-f]{32}")  # used with fullmatch: "$" would let a trailing newline through
HEARTBEAT_SECONDS = 2.0
STALE_AFTER = 10.0
FULL_BELOW = 1 << 20  # a database error on a disk with less than this free is read as a full disk

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    config TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    concurrency INTEGER NOT NULL,
    stopped REAL
);
"""


class JobError(UserError, ValueError):
    """A job request cannot be served (unknown or malformed id, wrong state)."""


NAME_MAX = 80


def dataset_name(source: str) -> str:
    """What a run's data is called in its default name: the folder's or zip's name, or the sample's."""
    source = str(source)
    if source.startswith("sample:"):
        return source.split(":", 1)[1]
    path = Path(source)
    return path.stem if path.suffix.lower() == ".zip" else path.name or source


def validate_run_name(name: str) -> str:
    """``name`` without surrounding spaces, if it can name a run (1 to 80 characters of one line), else JobError."""
    text = str(name).strip()
    if not text:
        raise JobError("a run's name cannot be empty; type a few words that say what the run is.")
    if len(text) > NAME_MAX:
        raise JobError(f"a run's name is at most {NAME_MAX} characters; this one has {len(text)}. Shorten it.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        raise JobError("a run's name is one line of text; remove the line breaks and control characters from it.")
    return text


def validate_job_id(job_id: str) -> str:
    """Returns ``job_id`` if it is a well-formed id (32 hex digits), else raises JobError.

    Ids arrive from URLs and the CLI and become folder names, so nothing else may pass.
    """
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise JobError(f"{job_id!r} is not a job id (32 hexadecimal characters).")
    return job_id


@dataclass(frozen=True)
class Job:
    """One row of the store, as ``status`` reports it."""

    id: str
    state: str
    source: str
    config: dict[str, Any]
    run_dir: str
    created: float
    started: float | None
    finished: float | None
    error: str | None
    worker: str | None
    attempts: int
    cancel_requested: bool
    owner: str | None = None  # who launched it (None: the host, e.g. the CLI)
    name: str | None = None  # what people call it ("hymenoptera #3" unless renamed); None for jobs made before names

    @property
    def title(self) -> str:
        """Its name, or (a job made before runs had names) its dataset's name and short id."""
        return self.name or f"{dataset_name(self.source)} {self.id[:8]}"

    @property
    def active(self) -> bool:
        """Queued or running: it may still train."""
        return self.state in ACTIVE

    @cached_property
    def run_config(self) -> RunConfig:
        """Its settings as a RunConfig (``config`` is the document the store keeps).

        Raises:
            ConfigError: the document is not a valid RunConfig (written by another version).
        """
        return config_mod.from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    pid: int
    host: str
    started: float
    heartbeat: float
    concurrency: int
    stopped: float | None

    @property
    def alive(self) -> bool:
        return self.stopped is None and time.time() - self.heartbeat < STALE_AFTER


class JobStore:
    """Jobs and workers in ``TRANSFER_STUDIO_HOME/jobs.sqlite3``; runs in ``TRANSFER_STUDIO_HOME/runs/<id>``."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home else paths.home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.runs = self.home / "runs"
        self.runs.mkdir(exist_ok=True)
        self.path = self.home / "jobs.sqlite3"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            _migrate(db)

    @contextmanager
    def _connect(self):
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._unusable(exc) from exc
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from exc
        finally:
            db.close()

    def _unusable(self, exc: sqlite3.Error) -> JobError:
        """A JobError saying what is wrong with jobs.sqlite3 and how to go on (nothing in runs/ is lost).

        "Damaged" is only ever the verdict of SQLite's own integrity check: a full disk makes a healthy
        database fail with "disk I/O error", and moving that one aside would lose the job list.
        """
        if "locked" in str(exc) or "busy" in str(exc):
            return JobError(
                f"the job database {self.path} stayed locked for 30 s ({exc}); another process holds it: "
                "try again in a moment."
            )
        verdict = self._integrity()
        if verdict == "ok" or verdict is None:
            free = free_bytes(self.home)
            room = f"the disk holding {self.home} has {size_text(free)} free" if free is not None else "check the disk"
            healthy = (
                "it is not damaged (its integrity check passes) and nothing is lost"
                if verdict == "ok"
                else "nothing in it was changed"
            )
            if is_full(exc) or (free is not None and free < FULL_BELOW):
                return JobError(
                    f"the job database {self.path} cannot be used ({exc}): {room}; {healthy}. Free some "
                    "space there and run the command again."
                )
            return JobError(
                f"the job database {self.path} cannot be used ({exc}); {healthy}. Try again; if it goes "
                f"on, check the disk and the permissions of {self.home} ({room})."
            )
        return JobError(
            f"the job database {self.path} is damaged ({exc}). Move it aside (mv {self.path} {self.path}.damaged) "
            f"and run the command again: a new, empty job list is created, and every run folder under {self.runs} "
            "stays where it is (train one on with `python -m pipeline train SOURCE --run-dir RUN_FOLDER`)."
        )

    def _integrity(self) -> str | None:
        """SQLite's integrity check of jobs.sqlite3: "ok", what it found wrong, or None when it cannot be told.

        Read-only with its write-ahead log first (the database as it stands); where that cannot open (a full
        disk cannot create the shared-memory file) and the log is empty, the main file alone, without locks or
        a journal. With a log that cannot be read, the main file alone may be mid-checkpoint: no verdict.
        """
        wal = self.path.with_name(self.path.name + "-wal")
        for query in ("mode=ro", "immutable=1"):
            if query == "immutable=1" and wal.exists() and wal.stat().st_size > 0:
                return None
            try:
                db = sqlite3.connect(f"{self.path.as_uri()}?{query}", uri=True)
                try:
                    rows = db.execute("PRAGMA integrity_check").fetchall()
                finally:
                    db.close()
            except sqlite3.OperationalError:  # cannot open or read it this way
                continue
            except sqlite3.DatabaseError as exc:  # not a database, malformed
                return str(exc)
            return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])
        return None

    @contextmanager
    def _transaction(self):
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # === Jobs ===

    def run_dir(self, job_id: str) -> Path:
        return self.runs / validate_job_id(job_id)

    def add(self, source: str, config: dict[str, Any], owner: str | None = None, name: str | None = None) -> str:
        """Queues a job; returns its id (128 random bits).

        Args:
            owner: Who launched it (the app's visitor or signed-in user); None for the host (CLI).
            name: What to call it; default: the dataset's name and a number (``hymenoptera #3``).
        """
        name = validate_run_name(name) if name is not None else None
        try:
            str(source).encode("utf-8")
        except UnicodeEncodeError:
            raise JobError(
                f"the data's path {os.fsencode(str(source))!r} is not UTF-8 text; rename its folder (or "
                "the zip) to a UTF-8 name and choose it again."
            ) from None
        job_id = secrets.token_hex(16)
        with self._transaction() as db:
            if name is None:  # numbered in the same transaction: two launches at once get two numbers
                same = db.execute("SELECT COUNT(*) FROM jobs WHERE source = ?", (str(source),)).fetchone()[0]
                name = f"{dataset_name(source)[: NAME_MAX - 8]} #{same + 1}"
            db.execute(
                "INSERT INTO jobs (id, state, source, config, run_dir, created, owner, name) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (job_id, str(source), json.dumps(config), str(self.runs / job_id), time.time(), owner, name),
            )
        return job_id

    def rename(self, job_id: str, name: str) -> Job:
        """Gives a job (in any state) another name."""
        name = validate_run_name(name)
        self.get(job_id)  # an unknown id: said
        with self._transaction() as db:
            db.execute("UPDATE jobs SET name = ? WHERE id = ?", (name, job_id))
        return self.get(job_id)

    def delete(self, job_id: str) -> Job:
        """Removes a finished, failed or cancelled job: its row and its run folder (model, exports, logs).

        Raises:
            JobError: the job is queued or running (cancel it first), or unknown.
        """
        job = self.get(job_id)
        if job.active:
            raise JobError(f"job {job_id} is {job.state}; cancel it first, then delete it once it has stopped.")
        remove_folder(Path(job.run_dir))
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return job

    def get(self, job_id: str) -> Job:
        validate_job_id(job_id)
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id}.")
        return _job(row)

    def list(self, limit: int = 500) -> list[Job]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_job(r) for r in rows]

    def claim(self, worker_id: str, fits: Callable[[Job], bool] | None = None) -> Job | None:
        """Atomically moves the oldest queued job to running for ``worker_id``; None when there is none, or
        when ``fits`` says the oldest cannot start yet (it keeps its place: jobs start in the order queued)."""
        with self._connect() as db:  # cheap read first: an idle worker polls without writing
            if db.execute("SELECT 1 FROM jobs WHERE state = 'queued' LIMIT 1").fetchone() is None:
                return None
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            if fits is not None and not fits(_job(row)):
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, started = COALESCE(started, ?), "
                "attempts = attempts + 1 WHERE id = ?",
                (worker_id, time.time(), row["id"]),
            )
        return self.get(row["id"])

    def finish(self, job_id: str, state: str, error: str | None = None) -> None:
        assert state in ("done", "failed", "cancelled")
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ? WHERE id = ?",
                (state, time.time(), error, validate_job_id(job_id)),
            )

    def cancel(self, job_id: str) -> Job:
        """Cancels a queued job at once; asks a running one to stop at its next batch."""
        job = self.get(job_id)
        if job.state == "queued":
            with self._transaction() as db:
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ?, cancel_requested = 1 "
                    "WHERE id = ? AND state = 'queued'",
                    (time.time(), job_id),
                )
        elif job.state == "running":
            Path(job.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(job.run_dir) / "CANCEL").touch()
            with self._transaction() as db:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        else:
            raise JobError(f"job {job_id} is already {job.state}; nothing to cancel.")
        return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        """Queues a failed or cancelled job again; its training continues from its last finished epoch.

        Raises:
            JobError: the job is queued, running or done.
        """
        job = self.get(job_id)
        if job.state not in ("failed", "cancelled"):
            raise JobError(f"job {job_id} is {job.state}; only a failed or cancelled job can be resumed.")
        (Path(job.run_dir) / "CANCEL").unlink(missing_ok=True)
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', worker = NULL, finished = NULL, error = NULL, "
                "cancel_requested = 0 WHERE id = ? AND state IN ('failed', 'cancelled')",
                (job_id,),
            )
        return self.get(job_id)

    def requeue(self, job_id: str) -> None:
        """Puts a running job back in the queue (its worker is stopping); it resumes where it stopped."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', worker = NULL WHERE id = ? AND state = 'running'",
                (validate_job_id(job_id),),
            )

    def requeue_orphans(self, owner_alive: Callable[[str | None], bool] | None = None) -> list[str]:
        """Running jobs whose worker is gone go back to the queue, to resume from their last finished epoch.

        Args:
            owner_alive: Says whether a job's worker still runs (default: its heartbeat is fresh).
        """
        if owner_alive is None:
            alive = {w.id for w in self.workers() if w.alive}
            owner_alive = alive.__contains__
        moved = []
        with self._transaction() as db:
            for row in db.execute("SELECT id, worker, cancel_requested FROM jobs WHERE state = 'running'").fetchall():
                if not owner_alive(row["worker"]):
                    if row["cancel_requested"]:
                        db.execute(
                            "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ?", (time.time(), row["id"])
                        )
                    else:
                        db.execute("UPDATE jobs SET state = 'queued', worker = NULL WHERE id = ?", (row["id"],))
                        moved.append(row["id"])
        return moved

    # === Workers ===

    def register_worker(self, concurrency: int) -> str:
        worker_id = f"w-{secrets.token_hex(6)}"
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO workers (id, pid, host, started, heartbeat, concurrency) VALUES (?, ?, ?, ?, ?, ?)",
                (worker_id, os.getpid(), os.uname().nodename, now, now, concurrency),
            )
        return worker_id

    def heartbeat(self, worker_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE workers SET heartbeat = ? WHERE id = ?", (time.time(), worker_id))

    def stop_worker(self, worker_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE workers SET stopped = ? WHERE id = ?", (time.time(), worker_id))

    def workers(self) -> list[WorkerInfo]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM workers ORDER BY started DESC LIMIT 50").fetchall()
        return [WorkerInfo(**dict(r)) for r in rows]


def _migrate(db: sqlite3.Connection) -> None:
    """Adds the columns later versions brought to a job store made before them: ``owner`` (such jobs belong to the
    host) and ``name`` (such jobs are called by their dataset and id, :attr:`Job.title`)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(jobs)").fetchall()}
    for column in ("owner", "name"):
        if column in columns:
            continue
        try:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["config"] = json.loads(data["config"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    return Job(**data)
