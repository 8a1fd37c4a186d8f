"""Labelled images in: sources, safe unzipping, the scan, stratified splits, and the tf.data pipeline.

A *source* is a folder of class sub-folders, a folder of split folders (``train/`` plus ``val/`` or
``validation/`` and/or ``test/``, each holding class sub-folders), a ``.zip`` of either, or an
embedded sample (``sample:digits``). Everything is resolved to a folder, scanned once (every file
hashed and decoded, every skip named with its reason), split, and gathered at the model's input size
into a uint8 cache that the tf.data pipeline shuffles and batches. Each file is decoded once per
(content, size): the scan, given the model's size, leaves it in the decoded-image cache
(:mod:`pipeline.decoded`), where the training cache, a retrain, evaluation and the label-error search find
it (photos; a thumbnail is decoded again, which is cheaper). Many files are decoded on every core
(:func:`decode_many`).

TensorFlow is imported only by :func:`make_dataset`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import stat
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from pipeline import atomic, paths
from pipeline.config import DataConfig
from pipeline.exitcodes import UserError
from pipeline.limits import MB, Limits

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode half-grey

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SAMPLES = ("digits",)
ProgressFn = Callable[[int, int], None]


class DataError(UserError, ValueError):
    """The data cannot be used as given; the message says which file, folder or class, and what to do."""


# === Sources ===


def resolve_source(source: str | os.PathLike, data_cfg: DataConfig | None = None,
                   progress: ProgressFn | None = None) -> Path:
    """Turns a source string into a folder on disk.

    Args:
        source: A folder, a ``.zip`` file, or ``sample:NAME`` (``sample`` alone is ``sample:digits``).
        data_cfg: Zip limits.
        progress: Called with (bytes extracted, bytes in total) while a zip is unpacked.

    Raises:
        DataError: the source does not exist, or the zip is unsafe or broken.
    """
    data_cfg = data_cfg or DataConfig()
    text = str(source)
    if is_sample(text):
        name = text.partition(":")[2] or "digits"
        return materialize_sample(name)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist; give a folder of class sub-folders, a .zip of one, or sample:digits.")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path} is a file but not a zip archive; give a folder or a .zip of class folders.")
        dest = paths.datasets_dir() / f"zip-{_zip_digest(path)[:16]}"
        if dest.exists():
            os.utime(dest)  # used now: the disk quota removes the least recently used first
        else:
            limits = Limits.from_env()
            safe_extract_zip(path, dest, max_bytes=data_cfg.max_zip_bytes, max_files=data_cfg.max_zip_files,
                             max_ratio=limits.zip_max_ratio, max_total_ratio=limits.zip_max_total_ratio,
                             progress=progress)
            from pipeline import quota

            quota.enforce(keep=(dest, path))
        return unwrap_single_folder(dest)
    return unwrap_single_folder(path.resolve())


_ZIP_DIGESTS: dict[tuple[str, int, int], str] = {}


def _zip_digest(path: Path) -> str:
    """sha256 of a zip, remembered per (path, size, mtime): the app resolves the same upload on every rerun."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _ZIP_DIGESTS:
        _ZIP_DIGESTS[key] = file_sha256(path)
    return _ZIP_DIGESTS[key]


def unwrap_single_folder(path: Path) -> Path:
    """Descends into a lone wrapper folder (``data.zip`` holding ``data/ants, data/bees``)."""
    while True:
        entries = [p for p in path.iterdir() if not _is_hidden(p.name)]
        if len(entries) == 1 and entries[0].is_dir():
            inner = [p for p in entries[0].iterdir() if not _is_hidden(p.name)]
            if inner and all(p.is_dir() for p in inner):
                path = entries[0]
                continue
        return path


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
                         zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
RATIO_FLOOR = 1 << 20  # entries (and archives) expanding to less than this are never ratio bombs


def safe_extract_zip(zip_path: Path, dest: Path, *, max_bytes: int, max_files: int, max_ratio: int = 200,
                     max_total_ratio: int = 100, progress: ProgressFn | None = None) -> None:
    """Extracts ``zip_path`` into ``dest`` (which must not exist), refusing anything unsafe.

    Refused, naming the entry: absolute paths or ``..`` (they would escape ``dest``), symbolic links,
    encrypted entries, compression methods Python cannot read (Deflate64, ...), a file and a folder (or two
    files) of the same name, and an entry expanding more than ``max_ratio`` times its compressed size.
    Refused for the archive: more than ``max_files`` entries, more than ``max_bytes`` declared or written
    bytes, and more than ``max_total_ratio`` times the archive's size. A zip bomb can lie about its sizes, so
    the written bytes are counted against every limit as they are copied (1 MB at a time). Nothing is left
    behind when extraction fails: it happens in a temporary folder renamed into place at the end.
    ``progress(bytes written, bytes declared)`` is called after each entry.

    Raises:
        DataError: naming the offending entry or limit.
    """
    name = Path(zip_path).name
    archive_size = Path(zip_path).stat().st_size
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError) as exc:
        raise DataError(f"{name} is not a readable zip archive ({exc}); re-create it and upload again.") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise DataError(
                f"{name} holds {len(infos)} entries, more than the limit of {max_files} "
                "(data.max_zip_files); split the archive or raise the limit."
            )
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise DataError(
                f"{name} would expand to {declared:,} bytes, more than the limit of {max_bytes:,} "
                "(data.max_zip_bytes); this looks like a zip bomb, or raise the limit for a genuinely large set."
            )
        for info in infos:
            _check_zip_entry(name, info, max_ratio)
        total_budget = max(archive_size * max_total_ratio, RATIO_FLOOR)
        if declared > total_budget:
            raise DataError(
                f"{name} would expand {declared / max(archive_size, 1):,.0f} times its size, more than the limit of "
                f"{max_total_ratio} (TRANSFER_STUDIO_ZIP_MAX_RATIO): a zip bomb. It was not extracted."
            )
        _check_zip_names(name, infos)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = paths.make_temp_dir(dest.parent, f".{dest.name}.")
        entry = None
        try:
            written = 0
            for entry in infos:
                target = tmp.joinpath(*PurePosixPath(entry.filename).parts)
                if entry.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                entry_budget = max(entry.compress_size * max_ratio, RATIO_FLOOR)
                entry_written = 0
                with archive.open(entry) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        entry_written += len(chunk)
                        if entry_written > entry_budget:
                            raise DataError(
                                f"{name}: the entry {entry.filename!r} expands more than {max_ratio} times its "
                                "compressed size although it declares less: a zip bomb. It was not extracted."
                            )
                        if written > min(max_bytes, total_budget):
                            raise DataError(
                                f"{name} expands past {min(max_bytes, total_budget):,} bytes (data.max_zip_bytes, "
                                "TRANSFER_STUDIO_ZIP_MAX_RATIO) although it declares less: a zip bomb. "
                                "It was not extracted."
                            )
                        out.write(chunk)
                if progress:
                    progress(min(written, declared), declared)
            atomic.publish_dir(tmp, dest)  # an identical extraction by another tab may have landed first
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            where = f" at the entry {entry.filename!r}" if entry is not None else ""
            raise DataError(f"{name} is damaged or unreadable{where} ({exc}); re-create it and upload again.") from exc
        except OSError as exc:
            where = f"the entry {entry.filename!r}" if entry is not None else "an entry"
            raise DataError(
                f"{name}: {where} could not be written ({exc.strerror or exc}); re-create the zip from the "
                "dataset folder itself."
            ) from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _check_zip_entry(zip_name: str, info: zipfile.ZipInfo, max_ratio: int) -> None:
    raw = info.filename
    pure = PurePosixPath(raw.replace("\\", "/"))
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":") or ".." in pure.parts:
        raise DataError(
            f"{zip_name} contains the entry {raw!r}, which points outside the archive's folder; "
            "such archives are refused. Re-create the zip from the dataset folder itself."
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DataError(
            f"{zip_name} contains a symbolic link {raw!r}; links are refused. Zip the real files instead."
        )
    if info.compress_type not in SUPPORTED_COMPRESSION:
        method = {9: "Deflate64", 6: "Implode", 98: "PPMd", 93: "Zstandard", 99: "AES"}.get(
            info.compress_type, f"method {info.compress_type}")
        raise DataError(
            f"{zip_name}: the entry {raw!r} uses {method} compression, which cannot be read here; re-create "
            "the zip with ordinary (deflate) compression, e.g. `zip -r data.zip data/` or your system's "
            "Compress/Send to zip."
        )
    if info.flag_bits & 0x1:
        raise DataError(f"{zip_name}: the entry {raw!r} is encrypted; zip the dataset without a password.")
    if info.file_size > max(info.compress_size * max_ratio, RATIO_FLOOR):
        raise DataError(
            f"{zip_name}: the entry {raw!r} would expand {info.file_size / max(info.compress_size, 1):,.0f} times "
            f"its compressed size, more than the limit of {max_ratio} (TRANSFER_STUDIO_ZIP_MAX_RATIO): "
            "a zip bomb. It was not extracted."
        )


def _check_zip_names(zip_name: str, infos: list[zipfile.ZipInfo]) -> None:
    """Refuses a file and a folder of the same name, and two files of the same name (naming the entry)."""
    files: dict[tuple[str, ...], str] = {}
    folders: dict[tuple[str, ...], str] = {}
    for info in infos:
        parts = tuple(p for p in PurePosixPath(info.filename).parts if p not in ("", "."))
        for i in range(1, len(parts)):
            folders.setdefault(parts[:i], info.filename)
        if info.is_dir():
            folders.setdefault(parts, info.filename)
        elif parts in files:
            raise DataError(
                f"{zip_name} holds two entries named {info.filename!r}; keep one and re-create the zip."
            )
        else:
            files[parts] = info.filename
    for parts, raw in files.items():
        if parts in folders:
            raise DataError(
                f"{zip_name}: the entry {raw!r} is a file, and {folders[parts]!r} needs a folder of the same "
                "name; rename one of them and re-create the zip."
            )


def materialize_sample(name: str) -> Path:
    """Writes an embedded sample set to ``TRANSFER_STUDIO_HOME/datasets/sample-NAME`` once and returns it.

    ``digits`` is scikit-learn's handwritten digits (1,797 8x8 grayscale images, 10 classes),
    shipped inside the scikit-learn package, so it needs no network.
    """
    if name not in SAMPLES:
        raise DataError(f"unknown sample set {name!r}; available: {', '.join(SAMPLES)}.")
    dest = paths.datasets_dir() / f"sample-{name}"
    if dest.exists():
        return dest
    images, targets = _load_digits()
    tmp = paths.make_temp_dir(dest.parent, f".{dest.name}.")
    try:
        pixels = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        for i, (img, target) in enumerate(zip(pixels, targets, strict=True)):
            folder = tmp / str(int(target))
            folder.mkdir(exist_ok=True)
            Image.fromarray(img).save(folder / f"digit_{i:04d}.png")
        atomic.publish_dir(tmp, dest)  # another process (a second tab, a rerun) may have won: identical copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def sample_preset() -> dict[str, dict[str, Any]]:
    """Default settings for the digits sample: the small CNN trained from scratch (the MNIST codelab recipe)."""
    return {
        "model": {"backbone": "small_cnn", "weights": "none", "image_size": 32, "dropout": 0.3},
        "train": {
            "strategy": "from_scratch",
            "head_epochs": 12,
            "fine_tune_epochs": 0,
            "batch_size": 64,
            "learning_rate": 0.003,
            "lr_schedule": "exponential",
            "lr_decay_rate": 0.75,
            "early_stopping_patience": 4,
        },
        "augment": {"enabled": False},
        "data": {"val_fraction": 0.2, "test_fraction": 0.1},
    }


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (images 0..16, targets), read from the file the package ships.

    Equal to ``sklearn.datasets.load_digits()`` (a test checks) without importing scikit-learn, which
    takes 1.5 s, on the app's first start.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is None or not csv.exists():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def is_sample(source: str | os.PathLike) -> bool:
    """Whether ``source`` names an embedded sample set (``sample`` or ``sample:NAME``) rather than a path."""
    return str(source) == "sample" or str(source).startswith("sample:")


def absolute_source(source: str | os.PathLike) -> str:
    """The source as a job records it: a sample name as it is, a path made absolute (jobs run elsewhere)."""
    if is_sample(source):
        return str(source)
    return str(Path(source).expanduser().resolve())


# === Decoding ===


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


def decode_image_bytes(data: bytes, size: int | None = None, *, max_pixels: int = 89_478_485, name: str = "image") -> np.ndarray:
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


class DecodeBudgetError(DataError):
    """One image needs more memory to decode than the decode budget allows."""


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
    available (an eighth, 128 to 512 MB; see pipeline.limits) rather than Pillow's global pixel limit."""
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


# === Decoding many files: once per (content, size), on every core ===


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
    """:func:`load_image` at ``size`` through the decoded-image cache (:mod:`pipeline.decoded`): the same pixels,
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
    from pipeline import decoded

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


def _decode_chunk(files: list[str], names: list[str], size: int | None, max_pixels: int,
                  want_pixels: bool) -> list[Decoded]:
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


def decode_many(files: Sequence[str], size: int | None, max_pixels: int, *, names: Sequence[str] | None = None,
                want_pixels: bool, on_result: Callable[[int, Decoded], None],
                progress: ProgressFn | None = None) -> None:
    """Decodes ``files`` on every core, calling ``on_result(index, Decoded)`` in this thread as they finish.

    Threads by default; Pillow's decode and resize hold the GIL for part of the work, so on 4+ cores large
    sets go to a pool of processes (:func:`pool_kind`; started with ``spawn``: the caller may run TensorFlow's threads, which ``fork`` would copy mid-lock), each
    with ``1/workers`` of the decode budget; an image too big for that share is decoded here afterwards under
    the whole budget. Pixels come back by pickling (a 224 px image is 150 KB); with ``size``, each
    (content, size) is decoded once ever, through :mod:`pipeline.decoded`.
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
            results = pool.map(lambda i: decode_file(str(files[i]), size, max_pixels, names[i],
                                                     want_pixels=want_pixels), indices)
            for k, (i, out) in enumerate(zip(indices, results, strict=True)):
                on_result(i, out)
                if (k + 1) % 25 == 0 or k + 1 == len(indices):
                    report(k + 1 - (done - start_done))

    start_done = 0
    if pool_kind(n) == "thread":
        threads(list(range(n)))
        return

    todo = list(range(n))
    from pipeline import decoded

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
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(share,)) as pool:
            pending: dict = {}
            next_chunk = 0
            while next_chunk < len(starts) or pending:
                while next_chunk < len(starts) and len(pending) < workers * 3:  # a few chunks in flight
                    chunk = todo[starts[next_chunk]:starts[next_chunk] + CHUNK_FILES]
                    pending[pool.submit(_decode_chunk, [str(files[i]) for i in chunk], [names[i] for i in chunk],
                                        size, max_pixels, want_pixels)] = chunk
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


# === Scan ===

CONFLICT = "conflict"  # ``kind`` of a skipped file whose exact bytes sit in more than one class


@dataclass
class ScanReport:
    """What a folder holds: classes, counts, sizes, and every skipped file with its reason.

    Attributes:
        root: The scanned folder.
        layout: "classes" (class sub-folders) or "splits" (train/val/test folders of class sub-folders).
        classes: Class names in label order (sorted).
        items: Split name ("all" for the classes layout) -> list of [relative path, class name].
        skipped: Files not used, as {"path", "reason"}.
        sizes: Class -> {"min": [w, h], "max": [w, h], "median": [w, h]} of the original images.
        warnings: Things worth fixing that do not stop training.
    """

    root: str
    layout: str
    classes: list[str]
    items: dict[str, list[list[str]]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    sizes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """Class -> split -> number of usable images."""
        out: dict[str, dict[str, int]] = {c: {} for c in self.classes}
        for split, items in self.items.items():
            for _, cls in items:
                out.setdefault(cls, {})
                out[cls][split] = out[cls].get(split, 0) + 1
        return out

    def total(self) -> int:
        return sum(len(v) for v in self.items.values())

    def conflicts(self) -> list[dict[str, str]]:
        """Skipped files whose exact bytes also sit in another class (``path``, ``class``, ``split``, ``digest``)."""
        return [s for s in self.skipped if s.get("kind") == CONFLICT]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = self.counts()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanReport:
        """The report :meth:`to_dict` wrote (the app's scan cache and dataset.json keep it as a dict)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def summary(self) -> str:
        """Plain-text report for the terminal."""
        lines = [f"{self.root}: {len(self.classes)} classes, {self.total()} images ({self.layout} layout)"]
        counts = self.counts()
        for c in self.classes:
            per = ", ".join(f"{s} {n}" for s, n in counts.get(c, {}).items())
            size = self.sizes.get(c)
            size_txt = f"; sizes {size['min'][0]}x{size['min'][1]} to {size['max'][0]}x{size['max'][1]}" if size else ""
            lines.append(f"  {c}: {per}{size_txt}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class _Probe:
    rel: str
    cls: str
    split: str
    digest: str = ""
    size: tuple[int, int] = (0, 0)
    error: str = ""


def scan(source_dir: str | Path, data_cfg: DataConfig | None = None, progress: ProgressFn | None = None,
         *, size: int | None = None) -> ScanReport:
    """Scans a folder of class sub-folders or split folders; decodes every file to find the bad ones.

    With ``size`` (the model's input size, when known) every good file is also left decoded at that size in
    the decoded-image cache (:mod:`pipeline.decoded`): the scan and the training cache decode each file once.

    Raises:
        DataError: the folder holds no class folders.
    """
    data_cfg = data_cfg or DataConfig()
    root = Path(source_dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.")
    skipped: list[dict[str, str]] = []
    probes: list[_Probe] = []
    top = sorted(root.iterdir(), key=lambda p: p.name)
    split_dirs = {p: SPLIT_NAMES[p.name.lower()] for p in top if p.is_dir() and p.name.lower() in SPLIT_NAMES}
    layout = "splits" if any(v == "train" for v in split_dirs.values()) else "classes"
    if layout == "splits":
        for p in top:
            if p in split_dirs:
                _collect_classes(root, p, split_dirs[p], probes, skipped)
            elif not _is_hidden(p.name):
                skipped.append({"path": _rel(root, p), "reason": "not a train/val/test split folder"})
    else:
        _collect_classes(root, root, "all", probes, skipped)

    _probe_all(root, probes, data_cfg.max_image_pixels, progress, size)
    good = _drop_bad_and_duplicates(probes, skipped)

    split_order = ("all",) if layout == "classes" else ("train", "val", "test")
    items = {s: [[p.rel, p.cls] for p in good if p.split == s] for s in split_order}
    items = {s: v for s, v in items.items() if v or s in ("all", "train")}
    class_source = items.get("all") or items.get("train") or []
    classes = sorted({cls for _, cls in class_source})
    report = ScanReport(str(root), layout, classes, items, skipped, _size_stats(good))
    report.warnings = _warnings(report)
    return report


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _collect_classes(root: Path, folder: Path, split: str, probes: list[_Probe], skipped: list[dict[str, str]]) -> None:
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.is_dir():
            if _is_hidden(entry.name):
                continue
            for dirpath, dirnames, filenames in os.walk(entry):
                dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
                for fname in sorted(filenames):
                    full = Path(dirpath) / fname
                    if _is_hidden(fname):
                        skipped.append({"path": _rel(root, full), "reason": "hidden or system file"})
                    elif full.is_symlink():
                        skipped.append({"path": _rel(root, full), "reason": "a symbolic link; copy the real file"})
                    else:
                        probes.append(_Probe(_rel(root, full), entry.name, split))
        elif not _is_hidden(entry.name):
            skipped.append({"path": _rel(root, entry), "reason": "not inside a class folder"})


def _probe_all(root: Path, probes: list[_Probe], max_pixels: int, progress: ProgressFn | None,
               size: int | None = None) -> None:
    """Hashes and decodes every file from its path on every core (:func:`decode_many`): 1 MB reads for the
    hash, every decode inside the decode budget, no file read whole into memory. With ``size`` (the model's),
    each file is decoded at that size into the decoded-image cache, so building the training cache afterwards
    decodes nothing; without it, JPEGs are drafted to 128 px for the check."""

    def keep(i: int, out: Decoded) -> None:
        p = probes[i]
        p.digest, p.size, p.error = out.digest, out.shown, out.error

    decode_many([str(root / p.rel) for p in probes], size, max_pixels, names=[p.rel for p in probes],
                want_pixels=False, on_result=keep, progress=progress)
    if size is not None:
        from pipeline import decoded

        if (store := decoded.store()) is not None:
            store.prune()


def _shown(img: Image.Image, width: int, height: int) -> tuple[int, int]:
    """(width, height) as displayed: swapped by an EXIF rotation. Call after decoding (a PNG's EXIF may follow
    its pixels)."""
    return (height, width) if _has_rotation(img) else (width, height)


def _has_rotation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def _drop_bad_and_duplicates(probes: list[_Probe], skipped: list[dict[str, str]]) -> list[_Probe]:
    ok = []
    for p in probes:
        if p.error:
            skipped.append({"path": p.rel, "reason": p.error})
        else:
            ok.append(p)
    by_digest: dict[str, list[_Probe]] = defaultdict(list)
    for p in ok:
        by_digest[p.digest].append(p)
    good = []
    for p in ok:
        group = by_digest[p.digest]
        classes = sorted({g.cls for g in group})
        if len(classes) > 1:
            others = ", ".join(g.rel for g in group if g is not p)
            skipped.append({
                "path": p.rel,
                "reason": f"the same bytes sit in classes {' and '.join(classes)} ({others}); "
                "its label is ambiguous, so every copy is skipped: keep it in one class",
                "kind": CONFLICT, "class": p.cls, "split": p.split, "digest": p.digest,
            })
        elif group[0] is not p:
            skipped.append({"path": p.rel, "reason": f"an exact duplicate of {group[0].rel}; one copy is used"})
        else:
            good.append(p)
    return good


def _size_stats(good: list[_Probe]) -> dict[str, dict[str, list[int]]]:
    by_class: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p in good:
        by_class[p.cls].append(p.size)
    out = {}
    for cls, sizes in by_class.items():
        arr = np.array(sizes)
        out[cls] = {
            "min": [int(arr[:, 0].min()), int(arr[:, 1].min())],
            "max": [int(arr[:, 0].max()), int(arr[:, 1].max())],
            "median": [int(np.median(arr[:, 0])), int(np.median(arr[:, 1]))],
        }
    return out


def _warnings(report: ScanReport) -> list[str]:
    out = []
    totals = {c: sum(n.values()) for c, n in report.counts().items()}
    if totals:
        small = [c for c, n in totals.items() if n < 10]
        if small:
            out.append(
                "few images in " + ", ".join(f"{c!r} ({totals[c]})" for c in small)
                + ": aim for at least 10, better 50+, per class"
            )
        lo, hi = min(totals.values()), max(totals.values())
        if lo and hi / lo >= 3:
            out.append(f"classes are imbalanced ({lo} to {hi} images); train.class_weight=auto compensates")
    dup = len(report.conflicts())
    if dup:
        out.append(f"{dup} file(s) appear in more than one class and were skipped")
    extra = set()
    for _split, items in report.items.items():
        extra |= {cls for _, cls in items} - set(report.classes)
    if extra:
        out.append("classes only in val/test (not in train) are ignored: " + ", ".join(sorted(extra)))
    return out


# === Splits ===


@dataclass(frozen=True)
class Splits:
    """The exact file lists of a run, in label order ``classes``.

    Attributes:
        root: Folder the relative paths are under.
        classes: Class names; a label is an index into this list.
        train, val, test: Lists of (relative path, label index); ``test`` may be empty.
    """

    root: str
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]

    def paths(self, split: str) -> list[str]:
        return [str(Path(self.root) / rel) for rel, _ in getattr(self, split)]

    def labels(self, split: str) -> np.ndarray:
        return np.array([label for _, label in getattr(self, split)], dtype=np.int64)

    @property
    def eval_split(self) -> str:
        """The split evaluation uses: test when there is one, else val."""
        return "test" if self.test else "val"

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "classes": list(self.classes),
            "train": [list(x) for x in self.train],
            "val": [list(x) for x in self.val],
            "test": [list(x) for x in self.test],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Splits:
        return cls(
            data["root"],
            tuple(data["classes"]),
            *(tuple((rel, int(label)) for rel, label in data[s]) for s in ("train", "val", "test")),
        )


def make_splits(report: ScanReport, data_cfg: DataConfig, seed: int) -> Splits:
    """Stratified, seeded train/val/test lists; given split folders are used as they are.

    Raises:
        DataError: fewer than 2 classes, or a class with too few images for the split (naming it).
    """
    if len(report.classes) < 2:
        found = f"only {report.classes[0]!r}" if report.classes else "none"
        raise DataError(
            f"{report.root} has {len(report.classes)} usable class folder(s) ({found}); a classifier needs at "
            "least 2. Put each class's images in its own sub-folder."
        )
    index = {c: i for i, c in enumerate(report.classes)}
    rng = np.random.default_rng(seed)
    if report.layout == "classes":
        val_f, test_f = data_cfg.val_fraction, data_cfg.test_fraction
        pool = report.items["all"]
    else:
        val_f = 0.0 if report.items.get("val") else data_cfg.val_fraction
        test_f = 0.0
        pool = report.items["train"]
    per_class: dict[str, list[str]] = defaultdict(list)
    for rel, cls in pool:
        per_class[cls].append(rel)
    train, val, test = [], [], []
    for cls in report.classes:
        files = sorted(per_class.get(cls, []))
        n_val = max(1, round(len(files) * val_f)) if val_f > 0 else 0
        n_test = max(1, round(len(files) * test_f)) if test_f > 0 else 0
        if len(files) - n_val - n_test < 1:
            need = 1 + (n_val > 0) + (n_test > 0)
            where = "" if report.layout == "classes" else " in train/"
            parts = ["one to train on"] + (["one for validation"] if n_val else []) + (["one for test"] if n_test else [])
            raise DataError(
                f"class {cls!r} has {len(files)} usable image(s){where}; each class needs at least {need} "
                f"({', '.join(parts)}). Add images to {cls!r}"
                + (" or set data.test_fraction=0." if n_test else " or remove the class.")
            )
        order = rng.permutation(len(files))
        shuffled = [files[i] for i in order]
        val += [(f, index[cls]) for f in shuffled[:n_val]]
        test += [(f, index[cls]) for f in shuffled[n_val : n_val + n_test]]
        train += [(f, index[cls]) for f in shuffled[n_val + n_test :]]
    if report.layout == "splits":
        for split, target in (("val", val), ("test", test)):
            target += [(rel, index[cls]) for rel, cls in report.items.get(split, []) if cls in index]
    if not val:
        raise DataError(f"{report.root} leaves no validation images; add a val/ folder or images to train/.")
    return Splits(report.root, tuple(report.classes), tuple(train), tuple(val), tuple(test))


def class_weights(labels: Sequence[int], num_classes: int, mode: str) -> dict[int, float] | None:
    """``balanced`` weights (n / (k * count)); ``auto`` applies them only when classes differ by 1.5x or more."""
    counts = Counter(int(x) for x in labels)
    if mode == "none" or not counts:
        return None
    present = [counts.get(i, 0) for i in range(num_classes)]
    if mode == "auto" and max(present) < 1.5 * max(1, min(c for c in present if c)):
        return None
    total = sum(present)
    return {i: (total / (num_classes * c) if c else 0.0) for i, c in enumerate(present)}


# === Cache and tf.data pipeline ===


class ImageCache:
    """The split's images resized to ``size``, as uint8: one array in memory, or past ``memory_budget_mb`` a flat
    file on disk read a batch at a time (:meth:`take`).

    Filled by :func:`decode_many`: from the decoded-image cache where the scan (or an earlier run, a retrain,
    evaluation) already decoded a file at this size, else decoded on every core and cached for next time.
    The disk file is written and read with ``pwrite``/``preadv`` rather than memory-mapped: its pages then
    sit in the kernel's page cache, not in this process's RSS, so a 20,000-image run's memory stays near a
    1,000-image run's. :attr:`array` maps it read-only for callers that want the whole split as an array.

    Raises:
        DataError: a file can no longer be decoded (changed since the scan), naming it.
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
        self.on_disk = n * self.item_bytes > memory_budget_mb * 1024 * 1024 and disk_dir is not None
        self.path: Path | None = None
        self._fd: int | None = None
        self._array: np.ndarray | None = None
        if self.on_disk:
            disk_dir.mkdir(parents=True, exist_ok=True)
            self._fd, name = tempfile.mkstemp(prefix="images-", suffix=".u8", dir=disk_dir)
            self.path = Path(name)
            os.ftruncate(self._fd, n * self.item_bytes)
        else:
            self._array = np.empty((n, size, size, 3), dtype=np.uint8)

        errors: list[str] = []

        def fill(i: int, out: Decoded) -> None:
            if out.error:
                errors.append(f"{files[i]}: {out.error}")
            elif self._fd is not None:
                os.pwrite(self._fd, np.ascontiguousarray(out.pixels).data, i * self.item_bytes)
            else:
                self._array[i] = out.pixels

        try:
            decode_many(files, size, max_pixels, want_pixels=True, on_result=fill, progress=progress)
            if errors:
                raise DataError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
        except BaseException:
            self.close()
            raise
        from pipeline import decoded

        if (store := decoded.store()) is not None:
            store.prune()

    @property
    def array(self) -> np.ndarray:
        """Every image as one (n, size, size, 3) array (read-only and memory-mapped when on disk)."""
        if self._array is None:
            if self.path is None:
                raise ValueError("this image cache is closed")
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.n, self.size, self.size, 3))
        return self._array

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The images at ``idx`` as a new contiguous (len(idx), size, size, 3) array."""
        if self._fd is None:
            return np.ascontiguousarray(self.array[idx])
        out = np.empty((len(idx), self.size, self.size, 3), dtype=np.uint8)
        for k, i in enumerate(np.asarray(idx).reshape(-1)):
            if not 0 <= i < self.n:
                raise IndexError(f"image {i} is outside this cache of {self.n}")
            got = os.preadv(self._fd, [out[k].data], int(i) * self.item_bytes)
            if got != self.item_bytes:
                raise OSError(f"{self.path}: short read of image {i} ({got} of {self.item_bytes} bytes)")
        return out

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        self._array = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def make_dataset(
    cache: ImageCache,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
):
    """A tf.data pipeline over the cache: shuffle indices (seeded), gather a batch, one-hot, prefetch.

    Images come out as uint8 (raw pixels; the model's float32 input casts them, and preprocessing is
    inside the model): a quarter of the memory of float32 batches in flight. Shuffling indices rather
    than images keeps memory at one copy of the cache. Gathering a batch is one memcpy, so one map
    call and two prefetched batches keep the model fed; AUTOTUNE buffers cost ~140 MB more here.
    """
    import tensorflow as tf

    n = len(cache)
    size = cache.size

    def gather(idx: np.ndarray) -> np.ndarray:
        return cache.take(idx)

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    onehot = tf.one_hot(tf.constant(labels, dtype=tf.int32), num_classes)

    def load(idx):
        images = tf.numpy_function(gather, [idx], tf.uint8, stateful=False)
        images = tf.ensure_shape(images, [None, size, size, 3])
        return images, tf.gather(onehot, idx)

    return ds.map(load).prefetch(2)
