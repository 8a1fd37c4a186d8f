"""Decoded images kept on disk, one per (file content, size), so a file is decoded once per size.

An entry is ``<home>/decoded/v1/<size>/<sha256[:2]>/<sha256>.u8``: a 20-byte header (magic, size, CRC-32 of the
pixels, the original's width and height as displayed, which the scan reports) followed by the ``size x size x 3``
uint8 pixels exactly as :func:`pipeline.data.load_image` returns them. Keyed by the file's content hash, an entry can
never be stale: a changed file has another hash.

- **Corrupt entries** (wrong length, magic, size or CRC) are deleted and decoded again.
- **Concurrent writers** each write a temporary file in the entry's folder and rename it into place; a reader
  sees a whole entry or none, and two writers of one entry write the same bytes.
- **Only where it pays**: creating an entry costs a file creation (0.2-1 ms measured on these machines' shared
  disks) and reading one back ~0.02-0.1 ms, while a 128 px thumbnail decodes and resizes in ~0.4 ms. A file whose
  decode took less than ``TRANSFER_STUDIO_DECODED_CACHE_MIN_MS`` (default 1) is decoded again next time rather
  than cached; photos (~2 ms for a 500x375 JPEG at 224 px, far more for a phone photo) are cached.
- **Bounded**: ``TRANSFER_STUDIO_DECODED_CACHE_MB`` (default 30% of ``TRANSFER_STUDIO_DISK_QUOTA_MB``, so 3,072 MB
  beside the default 10,240 MB quota; 0 turns the cache off). After each batch of
  writes :meth:`DecodedStore.prune` removes the least recently used entries (a hit touches its mtime) until the
  total fits, the same model as :mod:`pipeline.jobs.quota`. Entries are derived data that no run refers to, so any of
  them can go at any time; the cost is one decode.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.host import paths

VERSION = "v1"  # bump when decoding changes what pixels a file gives
MAGIC = b"TSDI"
HEADER = struct.Struct("<4sIIII")  # magic, size, crc32 of the pixels, displayed width, height
DEFAULT_SHARE_OF_QUOTA = 0.3
ENV = "TRANSFER_STUDIO_DECODED_CACHE_MB"
MIN_MS_ENV = "TRANSFER_STUDIO_DECODED_CACHE_MIN_MS"


class DecodedStore:
    """The on-disk cache of decoded, resized images under ``root``, bounded to ``limit_bytes``."""

    def __init__(self, root: Path, limit_bytes: int):
        self.root = Path(root)
        self.limit_bytes = limit_bytes

    def path(self, digest: str, size: int) -> Path:
        return self.root / str(size) / digest[:2] / f"{digest}.u8"

    def get(self, digest: str, size: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        """(The cached pixels, the original's displayed width and height), or None when absent; a damaged entry is
        deleted (and None returned)."""
        path = self.path(digest, size)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        found = _parse(raw, size)
        if found is None:
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # used now: pruning removes the least recently used first
        except OSError:
            pass
        return found

    def put(self, digest: str, size: int, pixels: np.ndarray, shown: tuple[int, int]) -> None:
        """Writes an entry atomically (temporary file, then rename); a full or read-only disk is not an error:
        the image is simply decoded again next time."""
        if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"a decoded entry must be uint8 {size}x{size}x3, not {pixels.dtype} {pixels.shape}")
        path = self.path(digest, size)
        body = np.ascontiguousarray(pixels).tobytes()
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=path.parent)
            with os.fdopen(fd, "wb") as out:
                out.write(HEADER.pack(MAGIC, size, zlib.crc32(body), *shown))
                out.write(body)
            os.replace(tmp, path)
            tmp = None
        except OSError:
            pass
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, path) of every entry."""
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, p))
        return out

    def prune(self) -> int:
        """Removes the least recently used entries until the total fits the limit; returns how many went."""
        found = sorted(self.entries())
        total = sum(size for _, size, _ in found)
        removed = 0
        for _mtime, size, p in found:
            if total <= self.limit_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed


def _parse(raw: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    n = size * size * 3
    if len(raw) != HEADER.size + n:
        return None
    magic, stored_size, crc, width, height = HEADER.unpack_from(raw)
    body = memoryview(raw)[HEADER.size :]
    if magic != MAGIC or stored_size != size or zlib.crc32(body) != crc:
        return None
    return np.frombuffer(raw, dtype=np.uint8, offset=HEADER.size).reshape(size, size, 3), (width, height)


def limit_mb() -> int:
    """``TRANSFER_STUDIO_DECODED_CACHE_MB`` (default 30% of the disk quota; 0 turns the cache off).

    Raises:
        ValueError: the setting is not a whole number of at least 0, naming it.
    """
    text = os.environ.get(ENV, "").strip()
    if not text:
        from pipeline.host.limits import Limits

        return int(Limits.from_env().disk_quota_mb * DEFAULT_SHARE_OF_QUOTA)
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"{ENV}={text!r} is not a whole number; set it to megabytes, or 0 to turn the cache off."
        ) from None
    if value < 0:
        raise ValueError(f"{ENV}={value} is below 0; set it to megabytes, or 0 to turn the cache off.")
    return value


def min_decode_seconds() -> float:
    """Decodes faster than this are not cached (``TRANSFER_STUDIO_DECODED_CACHE_MIN_MS``, default 1 ms).

    Raises:
        ValueError: the setting is not a number of at least 0, naming it.
    """
    text = os.environ.get(MIN_MS_ENV, "").strip()
    try:
        value = float(text) if text else 1.0
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{MIN_MS_ENV}={text!r} is not a number of milliseconds of at least 0.")
    return value / 1000


_STORES: dict[tuple[str, int], DecodedStore] = {}


def store() -> DecodedStore | None:
    """The store of this ``TRANSFER_STUDIO_HOME``, or None when the cache is turned off (one object per home and
    limit: it is asked once per file)."""
    mb = limit_mb()
    if mb == 0:
        return None
    key = (os.environ.get("TRANSFER_STUDIO_HOME", ""), mb)
    if key not in _STORES:
        _STORES[key] = DecodedStore(paths.home() / "decoded" / VERSION, mb * 1024 * 1024)
    return _STORES[key]
