"""Atomic file writes: readers see the old file or the new one, never half of one; plus the fault hook.

Every file a run folder holds is written here: into a hidden temporary file in the same folder, flushed,
fsynced, then renamed over the target. A kill at any moment leaves the previous version whole and, at
worst, a hidden ``.NAME.*`` temporary file that :func:`remove_stale_temporaries` clears on the next run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pipeline.host import paths
from pipeline.host.disk import full_disk_is_a_message

FAULT_ENV = "TRANSFER_STUDIO_FAULT"


def fault_point(name: str) -> None:
    """Test hook: SIGKILLs this process when ``TRANSFER_STUDIO_FAULT`` names this point.

    The fault-injection suite (tests/test_faults.py) sets it to kill a training child at a moment it cannot
    hit from outside reliably (between writing a temporary file and renaming it into place). The kill is a
    real SIGKILL: nothing runs after it, exactly as when the kernel's OOM killer strikes. Unset, it costs one
    dictionary lookup. The points: ``checkpoint-write``, ``state-write``, ``phase-done-write``, ``model-write``
    and ``eval-write`` (a complete temporary file, not yet renamed), ``epoch-committed`` (state.json has the
    epoch, metrics.jsonl not yet), ``evaluate`` (after the first evaluated batch), ``run-done`` (state.json says
    done, the process has not exited: its job must still end done).
    """
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(
    path: Path, write: Callable[[IO[bytes]], None], *, fault: str | None = None, size: int | None = None
) -> None:
    """Writes ``path`` through ``write(binary file)`` into a temporary file renamed into place.

    Args:
        path: The target file.
        write: Writes the whole content to the open file.
        fault: The name of the :func:`fault_point` between the complete temporary file and the rename.
        size: About how many bytes it takes (the message of a full disk says so).

    Raises:
        DiskFullError: no space left in the folder (the temporary file is removed, the previous file kept).
    """
    path = Path(path)
    with full_disk_is_a_message(path.parent, size):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~paths.umask())  # mkstemp makes 0600: open()'s mode, shared with the app
            if fault:
                fault_point(fault)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def publish_dir(tmp: Path, dest: Path) -> bool:
    """Renames the complete folder ``tmp`` to ``dest``; False (and ``tmp`` removed) when ``dest`` already exists.

    Two processes (two browser tabs, a page and its rerun) may build the same content-keyed folder at once:
    the first rename wins, the loser's identical copy is dropped. Renaming onto a non-empty folder fails with
    ENOTEMPTY on Linux (EEXIST elsewhere), not FileExistsError, so both are read as "someone else won".
    """
    try:
        os.replace(tmp, dest)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not Path(dest).is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def atomic_write_text(path: Path, text: str, *, fault: str | None = None) -> None:
    """Writes ``text`` (UTF-8) to ``path`` so that readers see the old or the new file, never half of one.

    A file name that is not UTF-8 (its bytes kept as lone surrogates) is written as ``\\udcff``: the file
    reads back as UTF-8, and a message quoting such a name cannot fail to be written."""
    data = text.encode("utf-8", "backslashreplace")
    atomic_write(path, lambda fh: fh.write(data), fault=fault, size=len(data))


def atomic_write_json(path: Path, data: Any, *, fault: str | None = None) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n", fault=fault)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Removes the hidden temporary files a killed :func:`atomic_write` left in ``folder``; returns them."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def remove_folder(folder: Path) -> None:
    """Deletes ``folder`` and everything in it, renamed to a hidden name first so that a half-deleted folder
    never looks like a run (a kill during the removal leaves ``.deleting-NAME-*``, which nothing lists)."""
    import secrets

    folder = Path(folder)
    for left in folder.parent.glob(f".deleting-{folder.name}-*"):  # what an earlier, killed removal left
        shutil.rmtree(left, ignore_errors=True)
    if folder.exists():
        trash = folder.with_name(f".deleting-{folder.name}-{secrets.token_hex(4)}")
        folder.replace(trash)
        shutil.rmtree(trash, ignore_errors=True)
