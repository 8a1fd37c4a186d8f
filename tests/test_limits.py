"""Bounded resources on a shared host: zip bombs, pixel bombs and huge files with bounded memory, unreadable zips
refused naming the entry, the disk quota, job ids, and folders readable under the umask."""

import io
import os
import stat
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from pipeline import data
from pipeline.data import DataError
from pipeline.host import paths
from pipeline.jobs import quota
from pipeline.jobs.store import JobError, JobStore, validate_job_id

MB = 1024 * 1024


def peak_rss_growth(fn) -> tuple[object, int]:
    """Runs ``fn()`` and returns (its result, the growth of this process's peak RSS while it ran, in bytes).

    Linux resets the peak (VmHWM) through /proc/self/clear_refs; elsewhere a thread samples the RSS.
    """

    def status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = status("VmRSS")
        result = fn()
        return result, status("VmHWM") - base
    except OSError:
        proc = psutil.Process()
        base, peak, done = proc.memory_info().rss, [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = fn()
        finally:
            done.set()
            sampler.join()
        return result, max(peak[0], proc.memory_info().rss) - base


def _zip_of_zeros(path: Path, entries: dict[str, int]) -> Path:
    """A deflate zip whose entries are runs of zero bytes, written in 1 MB pieces (no big buffer here)."""
    chunk = bytes(MB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, size in entries.items():
            with zf.open(name, "w", force_zip64=True) as out:
                for start in range(0, size, MB):
                    out.write(chunk[: min(MB, size - start)])
    return path


def test_a_zip_ratio_bomb_is_refused_with_bounded_memory(tmp_path):
    bomb = _zip_of_zeros(tmp_path / "bomb.zip", {"a/zeros.png": 1024 * MB, "b/x.png": 10})  # ~1 MB: 1 GiB inside
    assert bomb.stat().st_size < 2 * MB

    def refused() -> str:
        with pytest.raises(DataError) as caught:
            data.resolve_source(bomb)
        return str(caught.value)

    message, growth = peak_rss_growth(refused)
    assert "the entry 'a/zeros.png' would expand" in message and "zip bomb" in message
    print(f"zip ratio bomb: peak RSS growth {growth / MB:.1f} MB")
    assert growth < 300 * MB
    assert not list(paths.datasets_dir().glob("zip-*"))  # nothing extracted, nothing half-written


def test_many_small_entries_past_the_total_ratio_are_refused(tmp_path):
    bomb = _zip_of_zeros(tmp_path / "many.zip", {f"c{i % 2}/{i}.png": MB // 2 for i in range(400)})  # 200 MB
    with pytest.raises(DataError, match=r"many\.zip would expand .* times its size.*zip bomb"):
        data.resolve_source(bomb)


def _scan_folder(root: Path):
    return data.scan(root)


def _png_of_zeros(path: Path, width: int, height: int) -> None:
    """A valid RGB PNG of width x height black pixels, compressed row by row (tiny on disk, huge decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    squeeze = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    idat = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def test_a_pixel_bomb_and_a_huge_file_are_scanned_with_bounded_memory(tmp_path):
    root = tmp_path / "bombs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    _png_of_zeros(root / "a" / "bomb00.png", 9400, 9400)  # just under Pillow's pixel limit
    for i in range(1, 16):
        (root / "a" / f"bomb{i:02d}.png").write_bytes((root / "a" / "bomb00.png").read_bytes())
    with open(root / "b" / "huge.jpg", "wb") as fh:  # 1 GiB (sparse): the old scan read it whole
        fh.truncate(1024 * MB)
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(root / "b" / "ok.png")
    assert sum(f.stat().st_blocks * 512 for f in (root / "a").iterdir()) < 16 * MB

    report, growth = peak_rss_growth(lambda: _scan_folder(root))
    print(f"pixel bomb (16 PNGs of 9400x9400) + 1 GiB file: peak RSS growth {growth / MB:.1f} MB")
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert len([r for p, r in reasons.items() if p.startswith("a/")]) == 16
    assert "decode budget" in reasons["a/bomb00.png"] and "TRANSFER_STUDIO_DECODE_MEMORY_MB" in reasons["a/bomb00.png"]
    assert "not an image" in reasons["b/huge.jpg"]
    assert report.counts() == {"b": {"all": 1}}
    assert growth < 300 * MB


def test_the_decode_budget_is_a_setting(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(tmp_path / "big.png")  # ~2.9 MB to decode
    assert data.load_image(tmp_path / "big.png", 32).shape == (32, 32, 3)
    monkeypatch.setenv("TRANSFER_STUDIO_DECODE_MEMORY_MB", "1")
    with pytest.raises(DataError, match=r"big\.png: 600x600 pixels need about 3 MB.*budget of 1 MB"):
        data.load_image(tmp_path / "big.png", 32)


def _with_compress_type(path: Path, method: int) -> None:
    """Rewrites every header of a stored zip to claim compression ``method`` (as a Deflate64 zip would)."""
    raw = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = raw.find(sig)
        while at != -1:
            raw[at + offset : at + offset + 2] = struct.pack("<H", method)
            at = raw.find(sig, at + 4)
    path.write_bytes(bytes(raw))


def test_a_deflate64_zip_is_refused_naming_the_entry(tmp_path):
    zpath = tmp_path / "d64.zip"
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("cats/a.png", png.getvalue())
        zf.writestr("dogs/b.png", png.getvalue())
    _with_compress_type(zpath, 9)
    assert zipfile.ZipFile(zpath).infolist()[0].compress_type == 9
    with pytest.raises(DataError, match=r"d64\.zip: the entry 'cats/a\.png' uses Deflate64 compression.*re-create"):
        data.resolve_source(zpath)


def test_a_file_and_a_folder_of_the_same_name_are_refused_naming_the_entry(tmp_path):
    zpath = tmp_path / "clash.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("cats/a", b"a file")
        zf.writestr("cats/a/b.png", b"needs cats/a to be a folder")
    with pytest.raises(
        DataError, match=r"clash\.zip: the entry 'cats/a' is a file, and 'cats/a/b\.png' needs a folder"
    ):
        data.resolve_source(zpath)
    zpath = tmp_path / "twice.zip"
    with zipfile.ZipFile(zpath, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("cats/a.png", b"1")
        zf.writestr("cats/a.png", b"2")
    with pytest.raises(DataError, match=r"twice\.zip holds two entries named 'cats/a\.png'"):
        data.resolve_source(zpath)


def test_job_ids_must_match_in_full():
    job_id = "0a" * 16
    assert validate_job_id(job_id) == job_id
    for bad in (job_id + "\n", job_id + "0", " " + job_id, job_id.upper()):
        with pytest.raises(JobError):
            validate_job_id(bad)


def test_created_folders_and_files_follow_the_umask(tmp_path):
    from tests.conftest import write_shapes_dataset

    old = os.umask(0o022)
    try:
        shapes = write_shapes_dataset(tmp_path / "shapes", per_class=2)
        zpath = tmp_path / "shapes.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            for f in shapes.rglob("*.png"):
                zf.write(f, f.relative_to(tmp_path).as_posix())
        folder = data.resolve_source(zpath)
        extracted = folder.parent
        assert stat.S_IMODE(extracted.stat().st_mode) == 0o755, oct(extracted.stat().st_mode)
        assert stat.S_IMODE(data.resolve_source("sample:digits").stat().st_mode) == 0o755
        kept = paths.store_upload(io.BytesIO(zpath.read_bytes()), "shapes.zip", "uploads")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o644 and kept.read_bytes() == zpath.read_bytes()
        assert paths.store_upload(zpath.read_bytes(), "shapes.zip", "uploads") == kept  # one copy per content
        from pipeline.host.atomic import atomic_write_text

        atomic_write_text(tmp_path / "state.json", "{}")  # every run-folder file goes through it
        assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o644
        os.umask(0o027)
        atomic_write_text(tmp_path / "private.json", "{}")
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_the_disk_quota_removes_least_recently_used_unreferenced_uploads_and_datasets(tmp_path):
    from pipeline import config

    def upload(name: str, size_mb: int, age: float) -> Path:
        kept = paths.store_upload(os.urandom(size_mb * MB), name, "uploads")
        os.utime(kept.parent, (time.time() - age, time.time() - age))
        return kept

    oldest_used = upload("used.zip", 2, 400)  # a run refers to it: never removed
    old = upload("old.zip", 2, 300)
    middle = upload("middle.zip", 2, 200)
    fresh = upload("fresh.zip", 2, 100)
    dataset = paths.datasets_dir() / "zip-0123456789abcdef"
    dataset.mkdir()
    (dataset / "x.bin").write_bytes(os.urandom(2 * MB))
    os.utime(dataset, (time.time() - 250, time.time() - 250))
    JobStore().add(str(oldest_used), config.RunConfig().to_dict())

    assert quota.enforce(quota_mb=100) == []  # under the quota: nothing goes
    removed = quota.enforce(quota_mb=7, keep=(fresh,))  # 10 MB kept: the oldest unreferenced go until 6 MB
    assert removed == [old.parent, dataset]
    assert oldest_used.exists() and fresh.exists() and middle.exists()
    assert quota.enforce(quota_mb=1, keep=(fresh,)) == [middle.parent]
    assert oldest_used.exists() and fresh.exists()


def test_every_limit_setting_is_documented_where_it_is_read_and_in_the_readme():
    """The settings table in pipeline/host/limits.py's docstring and the README's list the variables the code reads."""
    import inspect
    import re

    from pipeline.host import limits
    from tests.conftest import ROOT

    read = set(re.findall(r"TRANSFER_STUDIO_[A-Z_]+", inspect.getsource(limits.Limits.from_env)))
    assert read and read <= set(re.findall(r"TRANSFER_STUDIO_[A-Z_]+", limits.__doc__))
    readme = (ROOT / "README.md").read_text()
    assert not read - set(re.findall(r"TRANSFER_STUDIO_[A-Z_]+", readme)), read - set(
        re.findall(r"TRANSFER_STUDIO_[A-Z_]+", readme)
    )
