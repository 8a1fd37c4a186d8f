"""A command the app runs in the background on a run folder (an export, the label-issue search).

The app never runs TensorFlow in its own process: it starts the CLI as a child process and any session (a
refresh, a second tab, a shared link) reads the same status file in the run folder. A :class:`Background`
names the status file, the log and the lock; :meth:`Background.start` starts the command once (two clicks at
once start one), and :meth:`Background.read` reads a "running" status whose process is gone as "interrupted".
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.host.atomic import atomic_write_json
from pipeline.host.launch import start_python


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, finished but not yet reaped by the app that started it, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@dataclass(frozen=True)
class Background:
    """One kind of background command on a run folder.

    Attributes:
        status_name: Its status file in the run folder (JSON: ``state``, ``pid``, ``started`` and its own fields).
        log_name: Its output (stdout and stderr) in the run folder, one run's worth.
        interrupted: What a "running" status whose process is gone says (its ``error``).
    """

    status_name: str
    log_name: str
    interrupted: str = "the process stopped before finishing (server restart or out of memory); start it again"

    def status_path(self, run_dir: str | Path) -> Path:
        return Path(run_dir) / self.status_name

    def log_path(self, run_dir: str | Path) -> Path:
        return Path(run_dir) / self.log_name

    def read(self, run_dir: str | Path) -> dict[str, Any] | None:
        """The last status, or None when it never started here; "interrupted" when its process is gone."""
        try:
            status = json.loads(self.status_path(run_dir).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(status, dict):
            return None
        if status.get("state", "running") == "running" and not alive(int(status.get("pid", 0))):
            status = {**status, "state": "interrupted", "error": self.interrupted}
        return status

    def write(self, path: str | Path, **fields: Any) -> None:
        """Writes a status (``path``: the status file); ``pid`` defaults to this process (the working one)."""
        atomic_write_json(Path(path), {"pid": os.getpid(), "updated": round(time.time(), 3), **fields})

    def start(self, run_dir: str | Path, *argv: str, **fields: Any) -> dict[str, Any]:
        """Starts ``python -m *argv`` on ``run_dir`` unless one is running; returns the status it wrote (or the
        running one's). ``fields`` go into the first status."""
        run_dir = Path(run_dir)
        with open(run_dir / f".{self.status_name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions clicking at once start one
            current = self.read(run_dir)
            if current and current.get("state", "running") == "running":
                return current
            self.log_path(run_dir).unlink(missing_ok=True)  # one run's log
            proc = start_python(*argv, log=self.log_path(run_dir))
            status = {"state": "running", **fields, "started": round(time.time(), 3), "pid": proc.pid}
            self.write(self.status_path(run_dir), **status)
            return status

    def last_error(self, run_dir: str | Path) -> str | None:
        """The last ``error: ...`` line of its log (what the CLI printed before it exited), or None."""
        path = self.log_path(run_dir)
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        errors = [line.removeprefix("error: ") for line in text.splitlines() if line.startswith("error: ")]
        return errors[-1] if errors else None

    def outcome(self, run_dir: str | Path, result_name: str, what: str = "it") -> dict[str, Any]:
        """Where a command that writes ``result_name`` (JSON) in the run folder stands, for the pages:
        ``state`` none (never started), running (``seconds``, ``step``: its log's last line), done (``result``)
        or failed (``error``: its last ``error:`` line, or where its log is)."""
        run = Path(run_dir)
        status = self.read(run)
        result_file = run / result_name
        fresh = result_file.exists() and (status is None or result_file.stat().st_mtime >= status.get("started", 0))
        if fresh:
            try:
                return {"state": "done", "result": json.loads(result_file.read_text(encoding="utf-8"))}
            except ValueError:
                pass  # being replaced right now
        if status is None:
            return {"state": "none"}
        if status.get("state", "running") == "running":
            return {"state": "running", "seconds": time.time() - status["started"], "step": self.last_line(run)}
        return {
            "state": "failed",
            "error": self.last_error(run) or f"{what} stopped unexpectedly ({self.log_name} in its folder says why)",
        }

    def last_line(self, run_dir: str | Path) -> str | None:
        """The last line its log holds (its latest progress message), or None."""
        path = self.log_path(run_dir)
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
        return lines[-1] if lines else None
