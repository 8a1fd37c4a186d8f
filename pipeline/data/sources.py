"""Sources: what a source is (a folder, a ``.zip``, ``sample:NAME``), its absolute form, safe unzipping, and the
embedded sample sets.

Everything is resolved to a folder on disk: a zip is unpacked once per content (refusing path escapes, links,
bombs and the like) under ``TRANSFER_STUDIO_HOME/datasets/``, a sample is written there once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data.errors import DataError, ProgressFn
from pipeline.host import atomic, paths
from pipeline.host.disk import FULL_ERRNOS, DiskFullError, full_disk_is_a_message
from pipeline.host.limits import Limits

SAMPLES = ("digits",)


def resolve_source(
    source: str | os.PathLike, data_cfg: DataConfig | None = None, progress: ProgressFn | None = None
) -> Path:
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
        dest = zip_folder(path)
        if dest.exists():
            os.utime(dest)  # used now: the disk quota removes the least recently used first
        else:
            limits = Limits.from_env()
            safe_extract_zip(
                path,
                dest,
                max_bytes=data_cfg.max_zip_bytes,
                max_files=data_cfg.max_zip_files,
                max_ratio=limits.zip_max_ratio,
                max_total_ratio=limits.zip_max_total_ratio,
                progress=progress,
            )
        return unwrap_single_folder(dest)
    return unwrap_single_folder(path.resolve())


def zip_folder(path: Path) -> Path:
    """Where a zip's images are extracted to (one folder per zip content, shared by every run of it)."""
    return paths.datasets_dir() / f"zip-{_zip_digest(path)[:16]}"


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
        entries = [p for p in path.iterdir() if not is_hidden(p.name)]
        if len(entries) == 1 and entries[0].is_dir():
            inner = [p for p in entries[0].iterdir() if not is_hidden(p.name)]
            if inner and all(p.is_dir() for p in inner):
                path = entries[0]
                continue
        return path


def is_hidden(name: str) -> bool:
    """A name the scan and unzip skip: dot files and the folders/files operating systems add on their own."""
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SUPPORTED_COMPRESSION = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
RATIO_FLOOR = 1 << 20  # entries (and archives) expanding to less than this are never ratio bombs


def safe_extract_zip(
    zip_path: Path,
    dest: Path,
    *,
    max_bytes: int,
    max_files: int,
    max_ratio: int = 200,
    max_total_ratio: int = 100,
    progress: ProgressFn | None = None,
) -> None:
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
            if exc.errno in FULL_ERRNOS:
                raise DiskFullError(dest.parent, declared, then="open the zip again") from exc
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
        raise DataError(f"{zip_name} contains a symbolic link {raw!r}; links are refused. Zip the real files instead.")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        method = {9: "Deflate64", 6: "Implode", 98: "PPMd", 93: "Zstandard", 99: "AES"}.get(
            info.compress_type, f"method {info.compress_type}"
        )
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
            raise DataError(f"{zip_name} holds two entries named {info.filename!r}; keep one and re-create the zip.")
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
    with full_disk_is_a_message(dest.parent, needed=len(images) * 4096):  # one file (a block or a page) an image
        tmp = paths.make_temp_dir(dest.parent, f".{dest.name}.")
        _write_sample(tmp, dest, images, targets)
    return dest


def _write_sample(tmp: Path, dest: Path, images: np.ndarray, targets: np.ndarray) -> None:
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
        "augment": {"enabled": False, "flip": "none"},  # a mirrored 2 or 7 is not a digit: never flip these
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
