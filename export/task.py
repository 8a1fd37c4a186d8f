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

from pathlib import Path
from typing import Any

from export import formats as formats_mod
from pipeline.host.background import Background

EXPORT = Background(
    status_name="export_status.json",
    log_name="export.log",
    interrupted="the export process stopped before finishing (server restart or out of memory); start it again",
)
STATUS_NAME = EXPORT.status_name


def status_path(run_dir: str | Path) -> Path:
    return EXPORT.status_path(run_dir)


def steps_total(formats: list[str], verify: bool = True) -> int:
    """How many progress messages ``bundle.export_run`` says for these formats (export.formats.progress_steps;
    tests/test_export.py checks a real export says exactly those)."""
    return len(formats_mod.progress_steps(formats, verify))


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The last export's status, or None when this run was never exported from the app."""
    return EXPORT.read(run_dir)


def write_status(path: str | Path, **fields: Any) -> None:
    """Writes a status; ``pid`` defaults to this process (the exporting one)."""
    EXPORT.write(path, **fields)


def start(run_dir: str | Path, formats: list[str], verify_images: int = 200) -> dict[str, Any]:
    """Starts exporting ``run_dir`` to ``formats`` unless an export of it is already running.

    ``verify_images``: at most this many held-out images are verified in every runtime (``--verify-images``).

    Returns:
        The status as written (or the running export's status).
    """
    return EXPORT.start(
        run_dir,
        "export",
        str(run_dir),
        "--formats",
        ",".join(formats),
        "--verify-images",
        str(int(verify_images)),
        "--status-file",
        str(status_path(run_dir)),
        step="starting",
        done=0,
        total=steps_total(formats),
        formats=formats,
    )
