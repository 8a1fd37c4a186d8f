"""The uint8 image cache: a split's images at the model's input size, in memory or in a flat file on disk."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.decode import Decoded, decode_many
from pipeline.data.errors import DataError, ProgressFn
from pipeline.host import paths


def _nameless_file(folder: Path, nbytes: int) -> int:
    """A file of ``nbytes`` in ``folder`` with no name (the kernel frees it when the process ends, killed or not),
    its blocks reserved up front, so a full disk is a message now rather than an error halfway through.

    Raises:
        DataError: not enough free space, naming the folder, the size and the way out.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="images-", suffix=".u8", dir=folder)
    os.unlink(name)
    try:
        if nbytes:
            os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(folder).free
        raise DataError(
            f"the image cache needs {nbytes / 2**20:,.0f} MB in {folder} and only {free / 2**20:,.0f} MB are free; "
            "free some space there, or raise data.cache_memory_mb to keep the images in memory instead."
        ) from exc
    return fd


def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    """``pwrite`` until every byte is written (a write may stop short)."""
    view = memoryview(buf).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"image cache: nothing written at byte {offset}")
        view, offset = view[written:], offset + written


class ImageCache:
    """The split's images resized to ``size``, as uint8: one array in memory, or past ``memory_budget_mb`` a flat
    file on disk read a batch at a time (:meth:`take`).

    Filled by :func:`decode_many`: from the decoded-image cache where the scan (or an earlier run, a retrain,
    evaluation) already decoded a file at this size, else decoded on every core and cached for next time.
    The disk file is written and read with ``pwrite``/``preadv`` rather than memory-mapped: its pages then
    sit in the kernel's page cache, not in this process's RSS, so a 20,000-image run's memory stays near a
    1,000-image run's. The file lives in ``disk_dir`` (default: :func:`pipeline.host.paths.scratch_dir`, this
    machine's disk, never a run folder that may be a shared mount) and has no name (unlinked once open): a
    killed run leaves nothing behind. :attr:`array` maps it read-only for callers that want the whole split.

    Raises:
        DataError: a file can no longer be decoded (changed since the scan), naming it; or the disk holding
            the cache has too little free space, naming the folder and the size.
    """

    def __init__(
        self,
        files: Sequence[str],
        size: int,
        *,
        memory_budget_mb: int,
        disk_dir: Path | None = None,
        max_pixels: int = 89_478_485,
        progress: ProgressFn | None = None,
    ):
        self.size = size
        self.n = n = len(files)
        self.item_bytes = size * size * 3
        self.on_disk = n * self.item_bytes > memory_budget_mb * 1024 * 1024
        self._fd: int | None = None
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()
        if self.on_disk:
            self._fd = _nameless_file(
                Path(disk_dir) if disk_dir is not None else paths.scratch_dir(), n * self.item_bytes
            )
        else:
            self._array = np.empty((n, size, size, 3), dtype=np.uint8)

        errors: list[str] = []

        def fill(i: int, out: Decoded) -> None:
            if out.error:
                errors.append(f"{files[i]}: {out.error}")
            elif self._fd is not None:
                _pwrite_all(self._fd, np.ascontiguousarray(out.pixels).data, i * self.item_bytes)
            else:
                self._array[i] = out.pixels

        try:
            decode_many(files, size, max_pixels, want_pixels=True, on_result=fill, progress=progress)
            if errors:
                raise DataError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
        except BaseException:
            self.close()
            raise
        from pipeline.data import decoded

        if (store := decoded.store()) is not None:
            store.prune()

    @property
    def array(self) -> np.ndarray:
        """Every image as one (n, size, size, 3) array (read-only and memory-mapped when on disk)."""
        if self._array is None:
            if self._fd is None:
                raise ValueError("this image cache is closed")
            mapped = mmap.mmap(self._fd, self.n * self.item_bytes, prot=mmap.PROT_READ)  # on disk: n > 0
            self._array = np.frombuffer(mapped, dtype=np.uint8).reshape(self.n, self.size, self.size, 3)
        return self._array

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The images at ``idx`` as a new contiguous (len(idx), size, size, 3) array."""
        if not self.on_disk:
            return np.ascontiguousarray(self.array[idx])
        out = np.empty((len(idx), self.size, self.size, 3), dtype=np.uint8)
        with self._lock:  # close() waits: a prefetch thread never reads a closed (or reused) descriptor
            if self._fd is None:
                raise ValueError("this image cache is closed")
            for k, i in enumerate(np.asarray(idx).reshape(-1)):
                if not 0 <= i < self.n:
                    raise IndexError(f"image {i} is outside this cache of {self.n}")
                got = os.preadv(self._fd, [out[k].data], int(i) * self.item_bytes)
                if got != self.item_bytes:
                    raise OSError(f"image cache: short read of image {i} ({got} of {self.item_bytes} bytes)")
        return out

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        with self._lock:
            self._array = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
