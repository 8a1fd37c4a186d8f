"""Decode once per (content, size), on every core: the decoded-image cache and the process pool."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.data import decode, decoded
from tests.conftest import open_files_in


@pytest.fixture(autouse=True)
def cache_every_decode(monkeypatch):
    """These tiny images decode in well under the 1 ms below which nothing is cached by default."""
    monkeypatch.setenv(decoded.MIN_MS_ENV, "0")


def _mixed_images(folder: Path, n_per_class: int = 4) -> list[str]:
    """JPEGs (one EXIF-rotated, one large enough to be drafted), RGBA and palette PNGs, grayscale, 16-bit."""
    rng = np.random.default_rng(0)
    files = []
    for cls in ("a", "b"):
        d = folder / cls
        d.mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 255, (37 + 11 * i, 53 + 7 * i, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.jpg", quality=85)
            files.append(str(d / f"{i}.jpg"))
        rotated = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
        exif = rotated.getexif()
        exif[0x0112] = 6
        rotated.save(d / "rot.jpg", exif=exif)
        Image.fromarray(rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)).save(d / "big.jpg", quality=80)
        Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
        Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)).convert("P").save(d / "pal.png")
        Image.fromarray(rng.integers(0, 255, (25, 35), dtype=np.uint8), "L").save(d / "gray.png")
        Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(d / "deep.png")
        files += [str(d / n) for n in ("rot.jpg", "big.jpg", "rgba.png", "pal.png", "gray.png", "deep.png")]
    return files


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_cache_gives_load_images_pixels_cold_and_warm(tmp_path, monkeypatch, pool):
    monkeypatch.setenv("TRANSFER_STUDIO_DECODE_POOL", pool)
    files = _mixed_images(tmp_path / "src")
    expected = np.stack([data.load_image(f, 48) for f in files])
    for _ in ("cold", "warm"):
        cache = data.ImageCache(files, 48, memory_budget_mb=64)
        try:
            np.testing.assert_array_equal(cache.array, expected)
        finally:
            cache.close()
    store = decoded.store()
    assert len(store.entries()) == len({data.file_sha256(Path(f)) for f in files})
    for f, want in zip(files, expected, strict=True):
        np.testing.assert_array_equal(data.load_image_cached(f, 48), want)


def test_the_scan_leaves_every_file_decoded_so_the_training_cache_decodes_none(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_DECODE_POOL", "thread")  # counted in this process
    files = _mixed_images(tmp_path / "src")
    (tmp_path / "src" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    plain = data.scan(tmp_path / "src")
    calls = []
    real = decode._load
    monkeypatch.setattr(decode, "_load", lambda img, name: calls.append(name) or real(img, name))
    sized = data.scan(tmp_path / "src", size=48)
    assert (sized.items, sized.skipped, sized.sizes) == (plain.items, plain.skipped, plain.sizes)
    assert len(calls) == len(files)
    calls.clear()
    cache = data.ImageCache(files, 48, memory_budget_mb=64)
    cache.close()
    again = data.scan(tmp_path / "src", size=48)
    assert calls == [] and (again.items, again.sizes) == (
        plain.items,
        plain.sizes,
    )  # a second run (or a retrain) decodes nothing either
    assert [s["path"] for s in again.skipped] == ["a/broken.jpg"]


def test_the_process_pool_skips_what_the_thread_pool_skips(tmp_path, monkeypatch):
    files = _mixed_images(tmp_path / "src", n_per_class=110)
    (tmp_path / "src" / "b" / "cut.jpg").write_bytes(Path(files[0]).read_bytes()[:300])
    (tmp_path / "src" / "b" / "text.jpg").write_text("hello")
    reports = {}
    for pool in ("thread", "process"):
        monkeypatch.setenv("TRANSFER_STUDIO_DECODE_POOL", pool)
        reports[pool] = data.scan(tmp_path / "src", size=40 if pool == "process" else None).to_dict()
    assert reports["thread"] == reports["process"]
    assert {s["path"] for s in reports["process"]["skipped"]} == {"b/cut.jpg", "b/text.jpg"}
    monkeypatch.setenv("TRANSFER_STUDIO_DECODE_POOL", "process")
    with pytest.raises(data.DataError, match=r"cut\.jpg: truncated"):
        data.ImageCache([*files, str(tmp_path / "src" / "b" / "cut.jpg")], 40, memory_budget_mb=64)


def test_an_image_too_big_for_a_workers_share_of_the_budget_is_decoded_under_the_whole_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_DECODE_POOL", "process")
    monkeypatch.setenv("TRANSFER_STUDIO_DECODE_MEMORY_MB", "2")
    monkeypatch.setattr(decode, "decode_workers", lambda: 2)
    folder = tmp_path / "src" / "x"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((420, 420, 3), 90, np.uint8)).save(folder / "big.png")  # ~1.4 MB to decode
    Image.fromarray(np.full((20, 20, 3), 30, np.uint8)).save(folder / "small.png")
    cache = data.ImageCache([str(folder / "big.png"), str(folder / "small.png")], 16, memory_budget_mb=8)
    try:
        assert cache.array[0, 0, 0, 0] == 90 and cache.array[1, 0, 0, 0] == 30
    finally:
        cache.close()


def test_a_changed_file_is_decoded_again(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((10, 10, 3), 10, np.uint8)).save(path)
    assert data.load_image_cached(path, 8)[0, 0, 0] == 10
    Image.fromarray(np.full((10, 10, 3), 200, np.uint8)).save(path)
    assert data.load_image_cached(path, 8)[0, 0, 0] == 200
    assert data.load_image_cached(path, 16).shape == (16, 16, 3)  # another size, another entry


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_damaged_entry_is_ignored_and_rebuilt(tmp_path, damage):
    path = tmp_path / "img.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(path)
    want = data.load_image(path, 24)
    data.load_image_cached(path, 24)
    store = decoded.store()
    entry = store.path(data.file_sha256(path), 24)
    raw = entry.read_bytes()
    entry.write_bytes(
        {"truncate": raw[:-5], "flip": raw[:-1] + bytes([raw[-1] ^ 1]), "garbage": b"x" * len(raw), "empty": b""}[
            damage
        ]
    )
    assert store.get(data.file_sha256(path), 24) is None and not entry.exists()
    np.testing.assert_array_equal(data.load_image_cached(path, 24), want)
    assert entry.read_bytes() == raw  # rebuilt


def test_concurrent_writers_and_readers_never_see_half_an_entry(tmp_path):
    store = decoded.DecodedStore(tmp_path / "d", 1 << 30)
    pixels = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    bad = []

    def write():
        for _ in range(150):
            store.put("ab" * 32, 64, pixels, (64, 64))

    def read():
        for _ in range(600):
            got = store.get("ab" * 32, 64)
            if got is not None and not (np.array_equal(got[0], pixels) and got[1] == (64, 64)):
                bad.append(got)

    threads = [threading.Thread(target=f) for f in (write, write, write, read, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    np.testing.assert_array_equal(store.get("ab" * 32, 64)[0], pixels)
    assert [p.name for p in (tmp_path / "d").rglob("*") if p.is_file()] == ["ab" * 32 + ".u8"]  # no .part left


def test_the_store_is_bounded_least_recently_used_first(tmp_path, monkeypatch):
    import os

    entry_bytes = decoded.HEADER.size + 8 * 8 * 3
    store = decoded.DecodedStore(tmp_path / "d", 3 * entry_bytes)
    for i in range(5):
        store.put(f"{i:02d}" * 32, 8, np.full((8, 8, 3), i, np.uint8), (8, 8))
        p = store.path(f"{i:02d}" * 32, 8)
        os.utime(p, (1000 + i, 1000 + i))
    store.get("00" * 32, 8)  # used now: kept
    assert store.prune() == 2
    left = sorted(p.name[:2] for _, _, p in store.entries())
    assert left == ["00", "03", "04"]
    monkeypatch.setenv(decoded.ENV, "0")
    assert decoded.store() is None
    monkeypatch.setenv(decoded.ENV, "lots")
    with pytest.raises(ValueError, match="TRANSFER_STUDIO_DECODED_CACHE_MB"):
        decoded.store()


def test_training_from_the_disk_cache_matches_training_from_memory(shapes_dir, tmp_path):
    from pipeline.training import train as train_mod
    from tests.conftest import tiny_config

    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    curves = []
    for budget in (512, 0):  # 0: every split past the budget, read from the disk file a batch at a time
        cfg = tiny_config(
            train={"strategy": "fine_tune", "head_epochs": 1, "fine_tune_epochs": 1}, data={"cache_memory_mb": budget}
        )
        run = train_mod.train(str(shapes_dir), tmp_path / f"run{budget}", cfg, evaluate_after=False)
        curves.append([[e[k] for k in keys] for e in run.epochs()])
        assert not (run.root / "cache").exists()  # the disk cache is removed with the run's end
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-5)


def test_a_disk_cache_reads_the_images_it_was_filled_with(tmp_path):
    files = _mixed_images(tmp_path / "src", n_per_class=2)
    expected = np.stack([data.load_image(f, 20) for f in files])
    cache = data.ImageCache(files, 20, memory_budget_mb=0, disk_dir=tmp_path / "c")
    try:
        assert cache.on_disk and len(cache) == len(files)
        idx = np.array([3, 0, len(files) - 1, 3])
        np.testing.assert_array_equal(cache.take(idx), expected[idx])
        np.testing.assert_array_equal(cache.array, expected)
        with pytest.raises(IndexError, match="outside this cache"):
            cache.take(np.array([len(files)]))
    finally:
        cache.close()
    assert list((tmp_path / "c").iterdir()) == [] and open_files_in(tmp_path / "c") == []  # nameless, and closed
    with pytest.raises(ValueError, match="closed"):  # a late prefetch read is refused, not served from another fd
        cache.take(np.array([0]))


def test_a_large_scan_reports_progress_as_it_goes_on_the_process_pool(tmp_path, monkeypatch):
    """The Data page's progress bar (app_pages/sources.resolve_and_scan) is driven by these calls."""
    for offset, cls in ((0, "a"), (128, "b")):
        (tmp_path / cls).mkdir()
        for i in range(120):
            Image.fromarray(np.full((12, 12, 3), offset + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    monkeypatch.setenv("TRANSFER_STUDIO_DECODE_POOL", "process")
    calls = []
    report = data.scan(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert report.total() == 240 and not report.skipped
    assert len(calls) >= 5 and calls[-1] == (240, 240)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and {t for _, t in calls} == {240}


def test_the_stores_default_bound_is_a_share_of_the_disk_quota(monkeypatch):
    monkeypatch.delenv(decoded.ENV, raising=False)
    monkeypatch.setenv("TRANSFER_STUDIO_DISK_QUOTA_MB", "1000")
    assert decoded.limit_mb() == 300 and decoded.store().limit_bytes == 300 * 1024 * 1024


def test_a_decode_faster_than_the_threshold_is_not_cached(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((10, 10, 3), 10, np.uint8)).save(path)
    monkeypatch.setenv(decoded.MIN_MS_ENV, "60000")
    np.testing.assert_array_equal(data.load_image_cached(path, 8), data.load_image(path, 8))
    assert decoded.store().entries() == []
    monkeypatch.setenv(decoded.MIN_MS_ENV, "soon")
    with pytest.raises(ValueError, match="TRANSFER_STUDIO_DECODED_CACHE_MIN_MS"):
        decoded.min_decode_seconds()
