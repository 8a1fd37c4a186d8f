"""Export in the background: the app starts ``python -m export`` as its own process and reads its status.

Exporting converts and verifies up to seven formats (about a minute on 2 cores), too long to run
inside a Streamlit session: the page would be blocked and a refresh would lose it. Instead
:func:`start` launches the CLI with ``--status-file``, and any session (a refresh, a second tab, the
shared link) shows the same progress by reading ``RUN_DIR/export_status.json``:

    {"state": "running" | "done" | "gate_failed" | "failed", "step": "converting tfjs", "done": 3,
     "total": 7, "pid": 1234, "formats": [...], "started": 1700000000.0, "error": "..."}

The status file sits beside ``exports/`` (which is replaced atomically when an export completes).
A "running" status whose process is gone reads as "interrupted".
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline.host.atomic import atomic_write_json
from pipeline.host.launch import start_python

STATUS_NAME = "export_status.json"
LOG_NAME = "export.log"


def status_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STATUS_NAME


def steps_total(formats: list[str], verify: bool = True) -> int:
    """How many progress messages ``bundle.export_run`` says for these formats (see its ``say`` calls).

    Loading, SavedModel, one per converted format, zipping; with verification, the Keras reference, one per
    format and one per TFLite file in MediaPipe.
    """
    converted = sum(1 for f in formats if f != "savedmodel")
    checks = 1 + len(formats) + sum(1 for f in formats if f.startswith("tflite")) if verify else 0
    return 2 + converted + checks + 1


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, finished but not yet reaped by the app that started it, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The last export's status, or None when this run was never exported from the app."""
    path = status_path(run_dir)
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if status.get("state") == "running" and not _alive(int(status.get("pid", 0))):
        status = {**status, "state": "interrupted",
                  "error": "the export process stopped before finishing (server restart or out of memory); "
                           "start it again"}
    return status


def write_status(path: str | Path, **fields: Any) -> None:
    """Writes a status; ``pid`` defaults to this process (the exporting one)."""
    atomic_write_json(Path(path), {"pid": os.getpid(), "updated": round(time.time(), 3), **fields})


def start(run_dir: str | Path, formats: list[str], verify_images: int = 200) -> dict[str, Any]:
    """Starts exporting ``run_dir`` to ``formats`` unless an export of it is already running.

    ``verify_images``: at most this many held-out images are verified in every runtime (``--verify-images``).

    Returns:
        The status as written (or the running export's status).
    """
    run_dir = Path(run_dir)
    lock_path = run_dir / ".export.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions clicking at once start one export
        current = read_status(run_dir)
        if current and current.get("state") == "running":
            return current
        (run_dir / LOG_NAME).unlink(missing_ok=True)  # one export's log
        proc = start_python("export", str(run_dir), "--formats", ",".join(formats),
                            "--verify-images", str(int(verify_images)), "--status-file", str(status_path(run_dir)),
                            log=run_dir / LOG_NAME)
        status = {"state": "running", "step": "starting", "done": 0, "total": steps_total(formats),
                  "formats": formats, "started": round(time.time(), 3), "pid": proc.pid}
        write_status(status_path(run_dir), **status)
        return status
