"""A full disk (ENOSPC, EDQUOT) is a message naming the folder and the space needed, never a traceback.

Every writer keeps its own "nothing half-written" rule (atomic renames, temporary folders removed on
failure); this module only turns the failure into one sentence a user can act on::

    with full_disk_is_a_message(run.root, needed=nbytes):
        write_the_file()

and :func:`is_full` recognises the failure where it arrives from elsewhere (TensorFlow and the converters
raise their own errors that carry the OS's "No space left on device").
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.host.exitcodes import UserError

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_WORDS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "database or disk is full")


class DiskFullError(UserError):
    """No space (or no quota) is left where a file had to be written; nothing half-written was kept."""

    def __init__(self, folder: str | Path, needed: int | None = None, then: str = "run the same command again"):
        self.folder = Path(folder)
        self.needed = needed
        free = free_bytes(self.folder)
        have = f"{size_text(free)} free" if free is not None else "no space left"
        want = f", about {size_text(needed)} needed" if needed else ""
        super().__init__(
            f"the disk holding {self.folder} is full ({have}{want}); nothing half-written was kept: "
            f"free some space there and {then}."
        )


def is_full(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a full disk or an exhausted quota."""
    return any(
        (isinstance(e, OSError) and e.errno in FULL_ERRNOS) or any(w in str(e) for w in _FULL_WORDS)
        for e in _chain(exc)
    )


@contextmanager
def full_disk_is_a_message(
    folder: str | Path, needed: int | None = None, then: str = "run the same command again"
) -> Iterator[None]:
    """Raises :class:`DiskFullError` naming ``folder`` for a full disk inside the block; other errors pass."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if is_full(exc):
            raise DiskFullError(folder, needed, then) from exc
        raise


def full_disk_error(exc: BaseException, fallback: str | Path) -> DiskFullError:
    """The message for a full disk that reached a command's top level: the folder of the file named, if any."""
    filename = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename), None)
    return DiskFullError(Path(os.fsdecode(filename)).parent if filename else fallback)


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the disk holding ``folder`` (its nearest existing parent); None if it cannot be told."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def size_text(n: int) -> str:
    """A byte count as people read it: 512 bytes, 12 KB, 3.4 MB, 1.2 GB."""
    if n < 1000:
        return f"{n} bytes"
    for unit, scale in (("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)):
        if n < scale * 1000 or unit == "TB":
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = 0
    while exc is not None and seen < 8:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
