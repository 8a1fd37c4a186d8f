"""Image decoding: one image from a file or bytes to RGB uint8 pixels, within the process's decode budget; and
many files at once, on every core, each (content, size) decoded once through the decoded-image cache
(:mod:`pipeline.data.decoded`).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from pipeline.data.errors import DataError, DecodeBudgetError, ProgressFn
from pipeline.data.sources import file_sha256
from pipeline.host.limits import MB, Limits

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode half-grey


# === One image ===


def load_image(path: str | Path, size: int | None = None, *, max_pixels: int = 89_478_485) -> np.ndarray:
    """Decodes one image to an RGB uint8 array, optionally resized to ``size`` x ``size``.

    Grayscale, palette, RGBA, 16-bit and CMYK images become RGB; EXIF orientation is applied.
    Decoded from the file (never read whole into memory first), JPEGs at a reduced size when ``size`` allows
    (Pillow's ``draft``), within the process's decode budget (:func:`decode_budget`); only the resized copy is
    kept, so memory does not grow with the original photo size.

    Raises:
        DataError: the file is not an image, is truncated or unreadable, is a decompression bomb, or needs
            more memory to decode than the decode budget.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after decoding
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from exc
    with fh:
        return _decode(fh, size, max_pixels, str(path))


def decode_image_bytes(
    data: bytes, size: int | None = None, *, max_pixels: int = 89_478_485, name: str = "image"
) -> np.ndarray:
    """Like :func:`load_image`, from bytes already in memory (uploads in the app)."""
    return _decode(io.BytesIO(data), size, max_pixels, name)


def _decode(fh, size: int | None, max_pixels: int, name: str) -> np.ndarray:
    img, _ = _open_checked(fh, max_pixels, name, draft_to=size)
    return _decode_opened(img, size, name)


def _decode_opened(img: Image.Image, size: int | None, name: str) -> np.ndarray:
    """Decodes an image :func:`_open_checked` opened (drafted for ``size``) to RGB uint8, resized to ``size``."""
    with decode_budget().reserve(_decode_cost(img, name)):
        _load(img, name)
        return _finish(img, size, name)


def _finish(img: Image.Image, size: int | None, name: str) -> np.ndarray:
    """A decoded (loaded) image turned upright, RGB and resized: the pixels :func:`load_image` returns."""
    try:
        img = _to_rgb(ImageOps.exif_transpose(img))
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: {_describe_decode_error(exc)}") from exc


class DecodeBudget:
    """Bytes of images being decoded at once in this process, shared by every decoding thread.

    A thread reserves an image's decode cost before decoding it and waits while others hold the budget, so
    eight threads decoding large photos use the budget, not eight times a photo. One image costing more than
    the whole budget is refused (:func:`_decode_cost`).
    """

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int):
        with self._cond:
            while self.used and self.used + nbytes > self.limit:
                self._cond.wait()
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


_BUDGETS: dict[int, DecodeBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def decode_budget() -> DecodeBudget:
    """The process's decode budget: ``TRANSFER_STUDIO_DECODE_MEMORY_MB``, by default derived from the memory
    available (an eighth, 128 to 512 MB; see pipeline.host.limits) rather than Pillow's global pixel limit."""
    limit = Limits.from_env().decode_memory_mb * MB
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(limit, DecodeBudget(limit))


def _decode_cost(img: Image.Image, name: str) -> int:
    """Bytes to decode ``img`` at its (drafted) size and convert it once; refuses what exceeds the budget."""
    width, height = img.size
    per_pixel = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4
    cost = width * height * (per_pixel + 4)  # Pillow's own buffer, plus one RGB(X) copy when converting
    limit = decode_budget().limit
    if cost > limit:
        raise DecodeBudgetError(
            f"{name}: {width}x{height} pixels need about {cost / MB:,.0f} MB to decode, more than this server's "
            f"decode budget of {limit / MB:,.0f} MB (TRANSFER_STUDIO_DECODE_MEMORY_MB); it was skipped. "
            "Shrink the image (a few megapixels is plenty for training)"
        )
    return cost


def _open_checked(fh, max_pixels: int, name: str, draft_to: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Opens an image from a file object (reading its header only) and checks its size.

    Returns:
        (the image, not yet decoded, drafted to about ``2 * draft_to`` for JPEGs; its size in the file).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
            width, height = img.size
            if width * height > max_pixels:
                raise DataError(
                    f"{name}: a decompression bomb ({width}x{height} pixels, over the limit of {max_pixels:,}, "
                    "data.max_image_pixels); it was skipped"
                )
            if draft_to is not None and img.format == "JPEG":
                img.draft("RGB", (draft_to * 2, draft_to * 2))  # DCT-domain downscale: fast and still full quality
        return img, (width, height)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{name}: a decompression bomb ({exc}); it was skipped") from exc
    except Image.UnidentifiedImageError as exc:
        raise DataError(f"{name}: not an image (Pillow cannot identify it)") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{name}: {_describe_decode_error(exc)}") from exc


def _load(img: Image.Image, name: str) -> None:
    """Decodes every pixel (a truncated file fails here), mapping Pillow's errors to a DataError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{name}: {_describe_decode_error(exc)}") from exc


def _describe_decode_error(exc: BaseException) -> str:
    text = str(exc)
    if "truncated" in text.lower():
        return "truncated (the file ends early); re-export or re-download it"
    return f"unreadable image ({text or type(exc).__name__})"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        top = 65535 if img.mode.startswith("I;16") or arr.max() > 255 else 255
        img = Image.fromarray((np.clip(arr, 0, top) * (255.0 / top)).round().astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        img = Image.fromarray((np.clip(arr, 0, top) * (255.0 / top)).round().astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _shown(img: Image.Image, width: int, height: int) -> tuple[int, int]:
    """(width, height) as displayed: swapped by an EXIF rotation. Call after decoding (a PNG's EXIF may follow
    its pixels)."""
    return (height, width) if _has_rotation(img) else (width, height)


def _has_rotation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False


# === Many files: once per (content, size), on every core ===


@dataclass(frozen=True)
class Decoded:
    """One file's outcome: its content hash, size as displayed (width, height), pixels (when asked), or an error.

    ``error`` is the DataError's text without the file name; ``over_budget`` means a worker process's share of
    the decode budget was too small and the caller's process decodes it again under the whole budget.
    """

    digest: str = ""
    shown: tuple[int, int] = (0, 0)
    pixels: np.ndarray | None = None
    error: str = ""
    over_budget: bool = False


PROCESS_MIN_FILES = 200  # below this, starting worker processes (~0.5 s) costs more than it saves
CHUNK_FILES = 32


def load_image_cached(path: str | Path, size: int, *, max_pixels: int = 89_478_485) -> np.ndarray:
    """:func:`load_image` at ``size`` through the decoded-image cache (:mod:`pipeline.data.decoded`): the same pixels,
    decoded only when this content has not been decoded at this size before.

    Raises:
        DataError: as :func:`load_image`.
    """
    out = decode_file(str(path), size, max_pixels, str(path), want_pixels=True)
    if out.error:
        raise (DecodeBudgetError if out.over_budget else DataError)(f"{path}: {out.error}")
    return out.pixels


def decode_file(path: str, size: int | None, max_pixels: int, name: str, *, want_pixels: bool) -> Decoded:
    """Hashes ``path`` and checks it decodes; with ``size``, its pixels at ``size`` come from (or go to) the
    decoded-image cache, so each (content, size) is decoded once. Without ``size`` (a scan before the model's
    size is known), JPEGs are decoded drafted small, as a check only."""
    from pipeline.data import decoded

    try:
        digest = file_sha256(Path(path))
    except OSError as exc:
        return Decoded(error=f"unreadable ({exc.strerror or exc})")
    store = decoded.store() if size is not None else None
    found = store.get(digest, size) if store is not None else None
    if want_pixels and found is not None:
        return Decoded(digest, found[1], found[0])  # the scan checked this content already
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        return Decoded(digest, error=f"unreadable ({exc.strerror or exc})")
    try:
        with fh:
            img, (width, height) = _open_checked(fh, max_pixels, name, draft_to=size or 64)
            if size is None:
                with decode_budget().reserve(_decode_cost(img, name)):
                    _load(img, name)
                return Decoded(digest, _shown(img, width, height))
            if found is not None:
                _decode_cost(img, name)  # refused as a fresh decode would be, should the budget have shrunk
                return Decoded(digest, found[1])
            with decode_budget().reserve(_decode_cost(img, name)):
                t0 = time.perf_counter()
                _load(img, name)
                # a thumbnail decodes faster than a cache entry is created: it is decoded again next time
                keep = store is not None and time.perf_counter() - t0 >= decoded.min_decode_seconds()
                pixels = _finish(img, size, name) if want_pixels or keep else None
            shown = _shown(img, width, height)  # after decoding: a PNG's EXIF is read by decoding it
            if keep:
                store.put(digest, size, pixels, shown)
            return Decoded(digest, shown, pixels if want_pixels else None)
    except DataError as exc:
        return Decoded(digest, error=str(exc).split(": ", 1)[-1], over_budget=isinstance(exc, DecodeBudgetError))


def _decode_chunk(
    files: list[str], names: list[str], size: int | None, max_pixels: int, want_pixels: bool
) -> list[Decoded]:
    return [decode_file(f, size, max_pixels, n, want_pixels=want_pixels) for f, n in zip(files, names, strict=True)]


def _init_worker(budget_mb: int) -> None:
    """A decoding process's share of the decode budget (the workers together stay within it), and a watch that
    ends it when its parent dies (a SIGKILLed training process would otherwise leave it waiting forever)."""
    os.environ["TRANSFER_STUDIO_DECODE_MEMORY_MB"] = str(budget_mb)
    parent = os.getppid()

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def decode_workers() -> int:
    """Cores this process may use (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


PROCESS_MIN_CORES = 4


def _thread_count() -> int:
    return min(8, decode_workers() * 2)  # hashing and reading overlap with decoding


def pool_kind(n_files: int) -> str:
    """``thread`` or ``process``; ``TRANSFER_STUDIO_DECODE_POOL=thread|process`` overrides.

    Processes by default only from ``PROCESS_MIN_CORES`` cores and ``PROCESS_MIN_FILES`` files: on 2 cores threads
    measured faster on both thumbnails and photos (bench/bench_scale.py --decode; starting the workers and
    pickling pixels back cost more than the GIL does), while on 16 cores processes reach ~12x one core.
    """
    forced = os.environ.get("TRANSFER_STUDIO_DECODE_POOL", "").strip().lower()
    if forced in ("thread", "process"):
        return forced
    return "process" if n_files >= PROCESS_MIN_FILES and decode_workers() >= PROCESS_MIN_CORES else "thread"


def decode_many(
    files: Sequence[str],
    size: int | None,
    max_pixels: int,
    *,
    names: Sequence[str] | None = None,
    want_pixels: bool,
    on_result: Callable[[int, Decoded], None],
    progress: ProgressFn | None = None,
) -> None:
    """Decodes ``files`` on every core, calling ``on_result(index, Decoded)`` in this thread as they finish.

    Threads by default; Pillow's decode and resize hold the GIL for part of the work, so on 4+ cores large
    sets go to a pool of processes (:func:`pool_kind`; started with ``spawn``: the caller may run TensorFlow's
    threads, which ``fork`` would copy mid-lock), each with ``1/workers`` of the decode budget; an image too big for
    that share is decoded here afterwards under
    the whole budget. Pixels come back by pickling (a 224 px image is 150 KB); with ``size``, each
    (content, size) is decoded once ever, through :mod:`pipeline.data.decoded`.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    n = len(files)
    names = list(names) if names is not None else [str(f) for f in files]
    done = 0

    def report(k: int) -> None:
        nonlocal done
        done += k
        if progress and k:
            progress(done, n)

    def threads(indices: list[int]) -> None:
        with ThreadPoolExecutor(max_workers=_thread_count()) as pool:
            results = pool.map(
                lambda i: decode_file(str(files[i]), size, max_pixels, names[i], want_pixels=want_pixels), indices
            )
            for k, (i, out) in enumerate(zip(indices, results, strict=True)):
                on_result(i, out)
                if (k + 1) % 25 == 0 or k + 1 == len(indices):
                    report(k + 1 - (done - start_done))

    start_done = 0
    if pool_kind(n) == "thread":
        threads(list(range(n)))
        return

    todo = list(range(n))
    from pipeline.data import decoded

    if want_pixels and size is not None and (store := decoded.store()) is not None:
        # Hits are a hash and a read: served here on threads, since pickling pixels back from a worker
        # costs more than reading them; only the misses go to the worker processes.
        def hit(i: int) -> Decoded | None:
            try:
                digest = file_sha256(Path(files[i]))
            except OSError:
                return None
            found = store.get(digest, size)
            return None if found is None else Decoded(digest, found[1], found[0])

        todo = []
        with ThreadPoolExecutor(max_workers=_thread_count()) as pool:
            for i, out in enumerate(pool.map(hit, range(n))):
                if out is None:
                    todo.append(i)
                else:
                    on_result(i, out)
                    if (i + 1 - len(todo) - done) >= 25:
                        report(i + 1 - len(todo) - done)
        report(n - len(todo) - done)
        if not todo:
            return

    workers = decode_workers()
    share = max(1, decode_budget().limit // MB // workers)
    retry: list[int] = []
    delivered = np.zeros(n, dtype=bool)
    delivered[np.setdiff1d(np.arange(n), np.array(todo, dtype=np.int64))] = True
    starts = list(range(0, len(todo), CHUNK_FILES))
    try:
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(share,),
        ) as pool:
            pending: dict = {}
            next_chunk = 0
            while next_chunk < len(starts) or pending:
                while next_chunk < len(starts) and len(pending) < workers * 3:  # a few chunks in flight
                    chunk = todo[starts[next_chunk] : starts[next_chunk] + CHUNK_FILES]
                    pending[
                        pool.submit(
                            _decode_chunk,
                            [str(files[i]) for i in chunk],
                            [names[i] for i in chunk],
                            size,
                            max_pixels,
                            want_pixels,
                        )
                    ] = chunk
                    next_chunk += 1
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    chunk = pending.pop(fut)
                    outs = fut.result()
                    for i, out in zip(chunk, outs, strict=True):
                        delivered[i] = True
                        if out.over_budget:
                            retry.append(i)
                        else:
                            on_result(i, out)
                    report(len(outs) - sum(o.over_budget for o in outs))
    except BrokenProcessPool:
        # A worker died (the OOM killer, or a main script that starts work without an
        # ``if __name__ == "__main__":`` guard, which spawned processes import): finish on threads here.
        start_done = done
        threads([int(i) for i in np.flatnonzero(~delivered)])
    for i in retry:
        on_result(i, decode_file(str(files[i]), size, max_pixels, names[i], want_pixels=want_pixels))
        report(1)
