import io
import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.config import DataConfig
from pipeline.data import DataError, sources
from tests.conftest import open_files_in, write_shapes_dataset


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


# === Decoding ===


def test_every_colour_mode_becomes_rgb_uint8(tmp_path):
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 128)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    Image.fromarray(np.dstack([gray] * 3)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("gray.png", "palette.png", "rgba.png", "sixteen.png", "cmyk.jpg"):
        arr = data.load_image(tmp_path / name)
        assert arr.dtype == np.uint8 and arr.shape == (16, 16, 3), name
        # the left column is dark and the right column bright in every mode, 16-bit included
        assert arr[:, 0].mean() < 40 and arr[:, -1].mean() > 200, name


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 tall; left half white
    img[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    arr = data.load_image(tmp_path / "rot.jpg")
    assert arr.shape == (20, 10, 3)  # displayed portrait
    assert arr[:8].mean() > 200 and arr[12:].mean() < 50  # the white half is now on top


def test_a_large_photo_comes_back_at_the_model_size(tmp_path):
    Image.fromarray(np.full((1200, 1600, 3), 90, np.uint8)).save(tmp_path / "big.jpg")
    arr = data.load_image(tmp_path / "big.jpg", 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert abs(float(arr.mean()) - 90) < 3  # the photo's pixels, not a blank array of the right shape
    # (memory is measured by bench/bench_train.py into BENCHMARKS.md, not asserted here)


# === Scan ===


def test_scan_names_every_skipped_file_and_why(tmp_path):
    root = write_shapes_dataset(tmp_path / "ds", per_class=4)
    (root / "bar" / "notes.txt").write_text("not a picture")
    (root / "disc" / "broken.jpg").write_bytes(os.urandom(300))
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    (root / "disc" / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "square" / "copy.png").write_bytes((root / "square" / "square_00.png").read_bytes())
    (root / "bar" / "twin.png").write_bytes((root / "disc" / "disc_00.png").read_bytes())
    (root / "stray.png").write_bytes((root / "bar" / "bar_01.png").read_bytes())
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(root / "square" / "huge.png")

    report = data.scan(root, DataConfig(max_image_pixels=200 * 200))
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert "not an image" in reasons["bar/notes.txt"]
    assert "not an image" in reasons["disc/broken.jpg"]
    assert "truncated" in reasons["disc/truncated.jpg"]
    assert "decompression bomb" in reasons["square/huge.png"]
    assert "exact duplicate of square/copy.png" in reasons["square/square_00.png"]  # first by name is kept
    assert "classes bar and disc" in reasons["bar/twin.png"] and "classes bar and disc" in reasons["disc/disc_00.png"]
    # callers tell duplicates and conflicts apart by their kind, never by the reason's wording
    assert [(s["path"], s["of"]) for s in report.duplicates()] == [("square/square_00.png", "square/copy.png")]
    assert {s["path"] for s in report.conflicts()} == {"bar/twin.png", "disc/disc_00.png"}
    assert {s["kind"] for s in report.skipped if "kind" in s} == {data.DUPLICATE, data.CONFLICT}
    assert "not inside a class folder" in reasons["stray.png"]
    assert report.counts() == {"bar": {"all": 4}, "disc": {"all": 3}, "square": {"all": 4}}
    assert report.classes == ["bar", "disc", "square"]
    assert report.sizes["bar"]["max"] == [40, 40]
    assert any("more than one class" in w for w in report.warnings)
    used = {rel for rel, _ in report.items["all"]}
    assert not used & set(reasons)


def test_scan_skips_pipes_and_links_by_name_without_opening_them(tmp_path):
    """A named pipe in a class folder hung the scan (opening it waits for a writer); a class folder that is a
    link was followed (one to /etc listed the system) while file links were refused. One rule: no link is
    followed, and nothing but a regular file is opened; each is listed as skipped, with why."""
    import subprocess
    import sys

    root = write_shapes_dataset(tmp_path / "ds", per_class=4)
    os.mkfifo(root / "bar" / "x.jpg")
    outside = write_shapes_dataset(tmp_path / "elsewhere", per_class=3)
    (root / "linked").symlink_to(outside / "disc", target_is_directory=True)
    (root / "square" / "nested").symlink_to(outside / "bar", target_is_directory=True)
    (root / "disc" / "link.png").symlink_to(outside / "disc" / "disc_00.png")
    (root / "square" / "loop").symlink_to(root, target_is_directory=True)  # a link back up: walked for ever
    odd = root / os.fsdecode(b"caf\xe9")  # a class folder whose name is not UTF-8: its name would be a label
    shutil.copytree(root / "disc", odd, ignore=shutil.ignore_patterns("link.png"))
    from pipeline.host import paths

    paths.tree_stamp(root)  # the app's scan-cache key walks the tree too: it must not follow the links
    # in a child process with a deadline: on the old code the scan blocks in open() forever
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "scan", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads(done.stdout)
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "named pipe" in reasons["bar/x.jpg"]
    assert "symbolic link" in reasons["linked"] and "symbolic link" in reasons["square/nested"]
    assert "symbolic link" in reasons["disc/link.png"] and "symbolic link" in reasons["square/loop"]
    assert "not UTF-8 text" in reasons[os.fsdecode(b"caf\xe9")]
    assert report["classes"] == ["bar", "disc", "square"]
    assert {cls: n["all"] for cls, n in data.ScanReport.from_dict(report).counts().items()} == {
        "bar": 4,
        "disc": 4,
        "square": 4,
    }


def test_one_class_is_an_error_naming_it(tmp_path):
    _png(tmp_path / "only" / "cats" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "only" / "cats" / "b.png", np.ones((8, 8, 3), np.uint8))
    report = data.scan(tmp_path / "only")
    with pytest.raises(DataError, match=r"1 usable class folder.*'cats'.*at least 2"):
        data.make_splits(report, DataConfig(), 0)


def test_class_with_one_image_is_an_error_naming_it(tmp_path):
    root = write_shapes_dataset(tmp_path / "ds", per_class=5)
    _png(root / "lonely" / "x.png", np.full((8, 8, 3), 77, np.uint8))
    report = data.scan(root)
    with pytest.raises(DataError, match=r"class 'lonely' has 1 usable image.*Add images to 'lonely'"):
        data.make_splits(report, DataConfig(val_fraction=0.2, test_fraction=0.0), 0)


def test_splits_are_stratified_seeded_and_disjoint(tmp_path):
    root = write_shapes_dataset(tmp_path / "ds", per_class=20)
    report = data.scan(root)
    cfg = DataConfig(val_fraction=0.2, test_fraction=0.1)
    a, b, c = (data.make_splits(report, cfg, s) for s in (1, 1, 2))
    assert a == b and a != c
    for split, per_class in (("train", 14), ("val", 4), ("test", 2)):
        labels = a.labels(split)
        assert np.bincount(labels, minlength=3).tolist() == [per_class] * 3
    names = [set(a.paths(s)) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert data.Splits.from_dict(a.to_dict()) == a


def test_a_test_split_is_carved_from_train_or_val_folders_only_where_asked(tmp_path):
    """With train/ and val/ folders a test fraction changed nothing (the test column stayed 0): now
    ``data.test_from`` says where it is carved from, and ``none`` says there is none."""
    root = tmp_path / "given"
    write_shapes_dataset(root / "train", per_class=10)
    write_shapes_dataset(root / "val", per_class=5, seed=3)
    report = data.scan(root)
    counts = {}
    for source in ("none", "train", "val"):
        s = data.make_splits(report, DataConfig(test_fraction=0.2, test_from=source), 0)
        counts[source] = [np.bincount(s.labels(x), minlength=3).tolist() for x in ("train", "val", "test")]
        names = [set(s.paths(x)) for x in ("train", "val", "test")]
        assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
        assert (
            data.test_from(report, DataConfig(test_fraction=0.2, test_from=source))
            == {"none": None, "train": "train", "val": "val"}[source]
        )
    assert counts["none"] == [[10] * 3, [5] * 3, [0] * 3]
    assert counts["train"] == [[8] * 3, [5] * 3, [2] * 3]  # 20% of train/ per class
    assert counts["val"] == [[10] * 3, [4] * 3, [1] * 3]  # 20% of val/ per class
    assert all(
        p.startswith(str(root / "val"))
        for p in data.make_splits(report, DataConfig(test_fraction=0.2, test_from="val"), 0).paths("test")
    )


def test_given_split_folders_are_used_and_missing_val_is_carved(tmp_path):
    root = tmp_path / "given"
    write_shapes_dataset(root / "train", per_class=10)
    write_shapes_dataset(root / "test", per_class=3, seed=5)
    report = data.scan(root)
    assert report.layout == "splits"
    splits = data.make_splits(report, DataConfig(val_fraction=0.2, test_fraction=0.3), 0)
    assert len(splits.test) == 9  # the given test split as it is; test_fraction does not apply
    assert all(p.startswith("test/") for p, _ in splits.test)
    assert len(splits.val) == 6 and all(p.startswith("train/") for p, _ in splits.val)
    assert len(splits.train) == 24

    write_shapes_dataset(root / "validation", per_class=2, seed=7)
    splits = data.make_splits(data.scan(root), DataConfig(), 0)
    assert len(splits.train) == 30 and len(splits.val) == 6
    assert all(p.startswith("validation/") for p, _ in splits.val)


# === Zip safety ===


def _zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in entries:
            if isinstance(payload, zipfile.ZipInfo):
                zf.writestr(payload, name)
            else:
                zf.writestr(name, payload)
    return path


@pytest.mark.parametrize("bad_name", ["../escape.png", "/etc/evil.png", "ok/../../escape.png", "C:/win.png"])
def test_zip_entries_escaping_the_folder_are_refused(tmp_path, bad_name):
    z = _zip(tmp_path / "bad.zip", [("a/x.png", b"1"), (bad_name, b"2")])
    with pytest.raises(DataError, match="points outside the archive"):
        data.safe_extract_zip(z, tmp_path / "out", max_bytes=10**6, max_files=100)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.png").exists()


def test_zip_symlinks_are_refused(tmp_path):
    link = zipfile.ZipInfo("a/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        data.safe_extract_zip(tmp_path / "link.zip", tmp_path / "out", max_bytes=10**6, max_files=100)


def test_zip_bombs_are_refused_by_size_and_count(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", b"\0" * 20_000_000)
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000
    with pytest.raises(DataError, match="zip bomb"):
        data.safe_extract_zip(tmp_path / "bomb.zip", tmp_path / "out", max_bytes=5_000_000, max_files=100)
    many = _zip(tmp_path / "many.zip", [(f"a/{i}.png", b"x") for i in range(50)])
    with pytest.raises(DataError, match="50 entries.*data.max_zip_files"):
        data.safe_extract_zip(many, tmp_path / "out2", max_bytes=10**6, max_files=20)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_a_zip_of_a_wrapped_dataset_resolves_and_scans(tmp_path):
    src = write_shapes_dataset(tmp_path / "mydata", per_class=3)
    z = tmp_path / "upload.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(src.rglob("*.png")):
            zf.write(f, f"mydata/{f.relative_to(src).as_posix()}")
        zf.writestr("__MACOSX/mydata/._bar", b"junk")
    folder = data.resolve_source(str(z))
    assert folder.name == "mydata"
    assert data.scan(folder).classes == ["bar", "disc", "square"]
    assert data.resolve_source(str(z)) == folder  # cached by content hash


def test_two_tabs_extracting_the_same_zip_at_once_both_get_the_folder(tmp_path):
    """A page and its rerun (or two tabs) unpack the same upload at once: the second rename lands on a full
    folder (ENOTEMPTY on Linux). The loser must hand back the winner's identical copy, not an error."""
    src = write_shapes_dataset(tmp_path / "mydata", per_class=3)
    z = tmp_path / "upload.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(src.rglob("*.png")):
            zf.write(f, f"mydata/{f.relative_to(src).as_posix()}")
    dest = tmp_path / "datasets" / "zip-same"
    limits = dict(max_bytes=10**8, max_files=1000)
    raced = []

    def the_other_tab_finishes_first(done, total):
        if not raced:
            raced.append(True)
            data.safe_extract_zip(z, dest, **limits)  # the rival extraction, complete, renamed into place

    data.safe_extract_zip(z, dest, progress=the_other_tab_finishes_first, **limits)
    assert raced and data.scan(dest / "mydata").total() == 9
    assert [p.name for p in dest.parent.iterdir()] == ["zip-same"]  # the loser's temporary copy is gone


def test_publish_dir_reports_who_won_and_keeps_real_errors(tmp_path):
    from pipeline.host import atomic

    dest = tmp_path / "dest"
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        (d / "f").write_text(d.name)
    assert atomic.publish_dir(first, dest) is True
    assert atomic.publish_dir(second, dest) is False
    assert (dest / "f").read_text() == "a" and not second.exists()
    with pytest.raises(FileNotFoundError):
        atomic.publish_dir(tmp_path / "missing", tmp_path / "elsewhere")


def test_unusable_sources_get_a_message(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.resolve_source(str(tmp_path / "nope"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="not a zip archive"):
        data.resolve_source(str(tmp_path / "x.txt"))
    with pytest.raises(DataError, match="unknown sample set"):
        data.resolve_source("sample:cifar")


# === Cache and pipeline ===


@pytest.mark.parametrize("budget_mb", [64, 0])
def test_cache_is_uint8_at_model_size_in_memory_or_on_disk(tmp_path, budget_mb):
    for i in range(6):
        Image.fromarray(np.full((900, 1200, 3), i * 40, np.uint8)).save(tmp_path / f"{i}.jpg", quality=90)
    files = [str(tmp_path / f"{i}.jpg") for i in range(6)]
    cache = data.ImageCache(files, 24, memory_budget_mb=budget_mb, disk_dir=tmp_path / "cache")
    try:
        assert cache.on_disk == (budget_mb == 0)
        assert cache.array.dtype == np.uint8 and cache.array.nbytes == 6 * 24 * 24 * 3
        ds = data.make_dataset(cache, np.array([0, 1, 0, 1, 0, 1]), 2, 4, shuffle=True, seed=3)
        batches = list(ds.as_numpy_iterator())
        assert [len(x) for x, _ in batches] == [4, 2]
        x, y = batches[0]
        assert x.dtype == np.uint8 and x.min() >= 0 and x.max() <= 255 and y.shape == (4, 2)
        seen = sorted(round(float(v)) for x, _ in batches for v in x[:, 0, 0, 0])
        assert seen == [0, 40, 80, 120, 160, 200]  # every image once per epoch
    finally:
        cache.close()
    assert open_files_in(tmp_path / "cache") == [] if (tmp_path / "cache").exists() else True  # closed: nothing held


def test_sample_set_materialises_offline():
    folder = data.resolve_source("sample:digits")
    report = data.scan(folder)
    assert report.classes == [str(d) for d in range(10)] and report.total() == 1797
    assert data.load_image(folder / "3" / os.listdir(folder / "3")[0]).shape == (8, 8, 3)


def test_embedded_digits_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    images, targets = sources._load_digits()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(targets, reference.target)


def test_zip_extraction_reports_progress(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(5):
            zf.writestr(f"cls{i % 2}/img{i}.bin", bytes(1000 * (i + 1)))
    calls = []
    data.safe_extract_zip(
        archive,
        tmp_path / "out",
        max_bytes=10**6,
        max_files=100,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert len(calls) == 5 and calls[-1] == (15000, 15000)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_store_upload_keeps_uploads_by_content_under_a_safe_name(ts_home):
    from pipeline.host import paths

    first = paths.store_upload(b"PK-bytes", "../../My Flowers (v2).ZIP", "uploads")
    again = paths.store_upload(b"PK-bytes", "other name.zip", "uploads")
    other = paths.store_upload(b"different", "../../My Flowers (v2).ZIP", "uploads")
    assert first.name == "My_Flowers_v2.zip" and first.read_bytes() == b"PK-bytes"
    assert first.is_relative_to(ts_home / "uploads") and other.is_relative_to(ts_home / "uploads")
    assert again.parent == first.parent and other.parent != first.parent
    assert not list((ts_home / "uploads").rglob("*.part"))


def _class_weights_before_scikit_learn(labels, num_classes, mode):
    """The hand-written formula pipeline.data used before scikit-learn's compute_class_weight (kept as a reference)."""
    from collections import Counter

    counts = Counter(int(x) for x in labels)
    if mode == "none" or not counts:
        return None
    present = [counts.get(i, 0) for i in range(num_classes)]
    if mode == "auto" and max(present) < 1.5 * max(1, min(c for c in present if c)):
        return None
    total = sum(present)
    return {i: (total / (num_classes * c) if c else 0.0) for i, c in enumerate(present)}


def test_class_weights_are_the_balanced_formula_with_zero_for_an_absent_class():
    labels = [0] * 30 + [1] * 10 + [3] * 5  # class 2 has no training image
    weights = data.class_weights(labels, 4, "balanced")
    assert weights[2] == 0.0 and set(weights) == {0, 1, 2, 3}
    assert weights == pytest.approx({0: 45 / (4 * 30), 1: 45 / (4 * 10), 2: 0.0, 3: 45 / (4 * 5)}, rel=1e-12)
    assert weights == pytest.approx(_class_weights_before_scikit_learn(labels, 4, "balanced"), rel=1e-12)
    assert data.class_weights(labels, 4, "auto") == weights  # 30 vs 5: imbalanced, so auto weighs too
    assert data.class_weights(labels, 4, "none") is None and data.class_weights([], 4, "balanced") is None
    # with every class present, exactly scikit-learn's own balanced weights
    from sklearn.utils.class_weight import compute_class_weight

    full = [0] * 7 + [1] * 3 + [2] * 11
    assert list(data.class_weights(full, 3, "balanced").values()) == list(
        compute_class_weight("balanced", classes=np.arange(3), y=np.array(full))
    )


def test_class_weights_auto_only_from_a_1_5x_difference_and_as_before_on_random_sets():
    assert data.class_weights([0] * 10 + [1] * 14, 2, "auto") is None  # 1.4x: left alone
    assert data.class_weights([0] * 10 + [1] * 15, 2, "auto") == pytest.approx({0: 25 / 20, 1: 25 / 30})
    rng = np.random.default_rng(7)
    for _ in range(50):
        k = int(rng.integers(2, 7))
        labels = rng.choice(k, size=int(rng.integers(1, 60)), p=rng.dirichlet(np.ones(k) * 0.7)).tolist()
        for mode in ("none", "auto", "balanced"):
            got, want = data.class_weights(labels, k, mode), _class_weights_before_scikit_learn(labels, k, mode)
            assert (got is None) == (want is None), (labels, k, mode)
            if want is not None:
                assert got == pytest.approx(want, rel=1e-12), (labels, k, mode)


def test_a_killed_run_leaves_no_image_cache_file_behind(tmp_path):
    """The on-disk cache has no name: while its process lives it holds a deleted file in the folder, and once
    that process is SIGKILLed nothing is left, neither a file nor its space."""
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    for i in range(4):
        Image.fromarray(np.full((40, 40, 3), i * 50, np.uint8)).save(tmp_path / f"{i}.png")
    cache_dir = tmp_path / "cache"
    script = (
        "import sys, time; from pipeline import data\n"
        f"c = data.ImageCache([{', '.join(repr(str(tmp_path / f'{i}.png')) for i in range(4))}], 24, "
        f"memory_budget_mb=0, disk_dir=__import__('pathlib').Path({str(cache_dir)!r}))\n"
        "assert c.on_disk and c.take(__import__('numpy').array([3]))[0, 0, 0, 0] == 150\n"
        "print('filled', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout.readline().strip() == "filled"
        held = open_files_in(cache_dir, proc.pid)
        assert len(held) == 1 and held[0].endswith("(deleted)"), held  # the cache is there, but nameless
        assert list(cache_dir.iterdir()) == []
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(cache_dir.iterdir()) == []
