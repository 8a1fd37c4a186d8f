"""Deploy-ready exports: TFLite metadata MediaPipe accepts, gates that can fail, a bundle folder export never
over-reaches, exports serialised and crash-clean. One really-trained small run, exported once for the module."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from export import bundle, mediapipe_tasks, tflite, verify
from pipeline import data as data_mod
from pipeline.runs.folder import load_model
from pipeline.training import train as train_mod
from tests.conftest import ROOT, tiny_config, write_shapes_dataset

TFLITE = ("tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small CNN trained until it is right and confident on its test split (so damage shows)."""
    root = tmp_path_factory.mktemp("deploy")
    data_dir = write_shapes_dataset(root / "shapes", per_class=40)
    cfg = tiny_config(
        model={"backbone": "small_cnn"},
        train={"strategy": "from_scratch", "head_epochs": 30, "learning_rate": 3e-3},
        data={"test_fraction": 0.25},
    )
    return train_mod.train(str(data_dir), root / "run", cfg)


@pytest.fixture(scope="module")
def exported(trained_run):
    return bundle.export_run(trained_run.root, list(bundle.FORMATS))


def _test_images(run, limit=None):
    splits = json.loads(run.dataset.read_text())["splits"]
    files = [f"{splits['root']}/{rel}" for rel, _ in splits["test"]][:limit]
    return np.stack([data_mod.load_image(f, 32) for f in files]), np.array([y for _, y in splits["test"]][:limit])


def _run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "export", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_every_tflite_file_has_metadata_that_mediapipe_classifies_with(exported, trained_run):
    """MediaPipe's own ImageClassifier (not our wrapper) on each file: names = labels.txt, top-1 = LiteRT's."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    dest, result = exported
    labels = (dest / "labels.txt").read_text().splitlines()
    manifest = json.loads((dest / "manifest.json").read_text())
    images, _ = _test_images(trained_run)
    for fmt in TFLITE:
        path = verify.artifact_path(dest, fmt)
        meta = mediapipe_tasks.read_metadata(path.read_bytes())
        assert manifest["tflite_metadata"][fmt] == json.loads(json.dumps(meta)), fmt
        assert meta["output"]["labels"] == labels and meta["output"]["labels_file"]["type"] == "TENSOR_AXIS_LABELS"
        assert meta["input"]["color_space"] == "RGB" and meta["input"]["normalization"] == {"mean": [0.0], "std": [1.0]}
        assert meta["name"] and meta["version"] and meta["description"], fmt
        interp = tflite.interpreter(path)
        litert = tflite.predict(interp, images.astype(np.float32))
        decided = verify.margins(litert) > verify.mediapipe_tie(path, fmt)  # an exact uint8 tie goes either way
        assert decided.mean() > 0.9, fmt
        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
        with vision.ImageClassifier.create_from_options(options) as classifier:
            for img, expected, sure in zip(images, litert.argmax(1), decided, strict=True):
                cats = (
                    classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=img))
                    .classifications[0]
                    .categories
                )
                assert sorted(c.category_name for c in cats) == sorted(labels), fmt
                assert cats[0].category_name == labels[expected] or not sure, fmt
        row = result["formats"][f"mediapipe-{fmt.removeprefix('tflite-')}"]
        assert row["passed"] and row["counted_agreement"] == 1.0, row
        assert row["agreement"] >= 1 - row["near_tie_flips"] / len(images), row
    assert manifest["tflite_metadata"]["tflite-float32"]["min_parser_version"] == "1.0.0"
    assert "uint8" in manifest["tflite_metadata"]["tflite-int8"]["input"]["description"]


def test_metadata_changes_no_output_value(exported, trained_run):
    """The float32 file with metadata gives bit-identical outputs to a fresh conversion without it."""
    dest, _ = exported
    plain = dest.parent / "plain-float32.tflite"
    plain.write_bytes(tflite.convert(dest / "savedmodel", tflite.PRESETS["tflite-float32"]))
    images, _ = _test_images(trained_run)
    with_meta = tflite.predict(
        tflite.interpreter(verify.artifact_path(dest, "tflite-float32")), images.astype(np.float32)
    )
    without = tflite.predict(tflite.interpreter(plain), images.astype(np.float32))
    assert np.array_equal(with_meta, without)
    assert verify.artifact_path(dest, "tflite-float32").stat().st_size > plain.stat().st_size  # metadata is there


def test_format_table_has_every_figure(exported):
    dest, result = exported
    assert result["passed"], verify.table(result)
    for fmt in bundle.FORMATS:
        row = result["formats"][fmt]
        for key in ("size_bytes", "latency_ms", "agreement", "accuracy_change", "seconds", "runtime"):
            assert row.get(key) is not None, (fmt, key)
    assert "wasm" in result["formats"]["tfjs"]["runtime"]
    text = verify.table(result)
    assert "acc chg" in text and "mediapipe-int8" in text
    log = (dest / bundle.TIMES_NAME).read_text()
    assert "convert tflite-int8:" in log and "verify tfjs (" in log and "total:" in log


def _damage(path, seed=0):
    """Shuffles the bytes of the largest weight buffer of a TFLite file (it still loads, and computes garbage)."""
    import flatbuffers
    from mediapipe.tasks.metadata import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    used = {t.buffer for t in model.subgraphs[0].tensors}
    biggest = max((i for i in used if model.buffers[i].data is not None), key=lambda i: len(model.buffers[i].data))
    data = np.array(model.buffers[biggest].data, dtype=np.uint8)
    model.buffers[biggest].data = np.random.default_rng(seed).permutation(data)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


def test_damaged_int8_file_fails_its_gate_exit_4_and_the_rest_ships(exported, trained_run, tmp_path):
    dest, _ = exported
    copy = tmp_path / "bundle"
    shutil.copytree(dest, copy)
    _damage(verify.artifact_path(copy, "tflite-int8"))
    proc = _run_cli(trained_run.root, "--out", copy, "--verify")
    assert proc.returncode == 4, proc.stderr
    result = json.loads((copy / "verify.json").read_text())
    rows = result["formats"]
    assert not rows["tflite-int8"]["passed"], rows["tflite-int8"]
    assert "FAIL" in next(line for line in proc.stdout.splitlines() if line.startswith("tflite-int8"))
    for fmt in ("savedmodel", "tflite-float32", "tflite-float16", "tflite-dynamic", "tfjs", "tfjs-float16"):
        assert rows[fmt]["passed"], (fmt, rows[fmt])
        assert verify.artifact_path(copy, fmt).exists()


def test_damaged_float16_file_fails_and_lossier_formats_cannot_pass(exported, trained_run, tmp_path):
    dest, _ = exported
    copy = tmp_path / "bundle"
    shutil.copytree(dest, copy)
    _damage(verify.artifact_path(copy, "tflite-float16"))
    images, labels = _test_images(trained_run)
    result = verify.verify(copy, list(bundle.FORMATS), load_model(trained_run), images, labels)
    rows = result["formats"]
    assert not rows["tflite-float16"]["passed"] and not result["passed"]
    for fmt in ("tflite-dynamic", "tflite-int8"):  # lossier, same runtime: cannot pass where float16 failed
        assert not rows[fmt]["passed"] and "tflite-float16" in rows[fmt]["note"], rows[fmt]
    for fmt in ("tflite-float32", "tfjs", "tfjs-float16"):
        assert rows[fmt]["passed"], fmt


def test_near_ties_are_reported_not_counted_and_real_flips_fail():
    rng = np.random.default_rng(0)
    keras = rng.dirichlet([0.3, 0.3, 0.3], 200).astype(np.float32)
    labels = keras.argmax(1)
    margins = verify.margins(keras)
    close = np.flatnonzero(margins < 0.03)[:3]
    assert len(close) == 3
    flipped = keras.copy()
    for i in close:  # swap the top two classes where Keras hardly decided: what float16 noise does
        a, b = np.argsort(keras[i])[-2:]
        flipped[i, [a, b]] = flipped[i, [b, a]]
    row = verify.compare("tflite-float16", flipped, keras, labels)
    assert row["passed"] and row["near_tie_flips"] == 3 and row["agreement"] < 0.99 and "near-tie" in row["note"]
    decided = np.flatnonzero(margins > 0.5)[:3]
    for i in decided:  # confident images flipped: damage
        a, b = np.argsort(keras[i])[-2:]
        flipped[i, [a, b]] = flipped[i, [b, a]]
    row = verify.compare("tflite-float16", flipped, keras, labels)
    assert not row["passed"] and row["near_tie_flips"] == 3
    int8 = verify.compare("tflite-int8", flipped, keras, labels)  # 6 of 200 flips: within int8's 90% / 5 points
    assert int8["passed"]
    rows = {
        "savedmodel": {"passed": True},
        "tflite-float16": row,
        "tflite-int8": int8,
        "tfjs-float16": {"passed": True},
    }
    verify.enforce_order(rows)
    assert not rows["tflite-int8"]["passed"] and rows["tfjs-float16"]["passed"]


def test_verification_images_are_the_test_splits_pixels_class_balanced_as_uint8(trained_run):
    """held_out(limit=10) of a 30-image test split: 10 of its images (uint8 at the model size, each with its own
    label), the classes balanced."""
    all_images, all_labels = _test_images(trained_run)
    by_bytes = {img.tobytes(): int(y) for img, y in zip(all_images, all_labels, strict=True)}
    with bundle.held_out(trained_run.root, 10) as (images, labels, split):
        assert images.dtype == np.uint8 and images.shape == (10, 32, 32, 3) and len(labels) == 10 and split == "test"
        assert [by_bytes.get(img.tobytes()) for img in images] == [int(y) for y in labels]
        assert len({img.tobytes() for img in images}) == 10
        counts = np.bincount(labels, minlength=3)
        assert counts.max() - counts.min() <= 1, counts


def test_out_never_deletes_what_export_did_not_write(trained_run, tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    before = sorted(p.name for p in trained_run.root.iterdir())
    for out, reason in (
        (trained_run.root, "is the run folder or contains it"),
        (trained_run.root.parent, "is the run folder or contains it"),
        (keep, "is not empty and is not a bundle"),
    ):
        with pytest.raises(bundle.ExportError, match=reason):
            bundle.export_run(trained_run.root, ["savedmodel"], out, run_verify=False)
    assert (keep / "notes.txt").read_text() == "mine"
    proc = _run_cli(trained_run.root, "--out", trained_run.root, "--no-verify", timeout=120)
    assert proc.returncode == 2 and "is the run folder or contains it" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in trained_run.root.iterdir()) == before

    out = tmp_path / "bundle"  # a bundle we wrote is replaced; a file a user added to it stops that
    bundle.export_run(trained_run.root, ["savedmodel"], out, run_verify=False)
    bundle.export_run(trained_run.root, ["savedmodel"], out, run_verify=False)
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(bundle.ExportError, match="not a bundle"):
        bundle.export_run(trained_run.root, ["savedmodel"], out, run_verify=False)
    assert (out / "my-notes.txt").exists()


def test_two_cli_exports_of_one_run_at_once_are_serialised(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.root, run_dir, ignore=shutil.ignore_patterns("exports"))
    cmd = [sys.executable, "-m", "export", str(run_dir), "--formats", "tflite-float32", "--no-verify"]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert any("waiting for another export" in err for _, err in outs), outs
    manifest = json.loads((run_dir / "exports" / "manifest.json").read_text())
    for rel in manifest["files"]:
        assert (run_dir / "exports" / rel).exists()
    assert not list(run_dir.glob(".exports.*")), list(run_dir.iterdir())


def test_a_killed_export_leaves_no_half_bundle_and_the_next_one_cleans_up(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.root, run_dir, ignore=shutil.ignore_patterns("exports"))
    bundle.export_run(run_dir, ["savedmodel"], run_verify=False)
    previous = (run_dir / "exports" / "manifest.json").read_text()
    proc = subprocess.Popen(
        [sys.executable, "-m", "export", str(run_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    while not list(run_dir.glob(".exports.tmp-*/model-float32.tflite")):  # mid-export: files being written
        assert proc.poll() is None and time.monotonic() - t0 < 300
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / "exports" / "manifest.json").read_text() == previous  # the old bundle, whole
    assert list(run_dir.glob(".exports.tmp-*"))  # what the kill left
    # A kill between the two renames leaves the previous bundle aside and no exports/: it is put back.
    os.replace(run_dir / "exports", run_dir / ".exports.old-12345")
    bundle.clean_stale(run_dir / "exports")
    assert (run_dir / "exports" / "manifest.json").read_text() == previous
    assert not list(run_dir.glob(".exports.*"))
    proc = _run_cli(run_dir, "--formats", "tflite-float32", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert not list(run_dir.glob(".exports.*"))


@pytest.fixture
def served_bundle(exported, tmp_path):
    """A copy of the bundle served by ``python -m http.server`` (as the bundle README says), and a browser page."""
    from tests.test_e2e_browser import CHROMIUM, _free_port, launch_chromium

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    dest, _ = exported
    root = tmp_path / "exports"
    shutil.copytree(dest, root)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    t0 = time.monotonic()
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() - t0 < 30
            time.sleep(0.1)
    with sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw, camera=True)
        page = browser.new_page()
        page.set_default_timeout(120_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield root, f"http://127.0.0.1:{port}", page, errors
        browser.close()
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_web_demo_in_the_bundle_classifies_a_picked_photo_like_the_savedmodel(served_bundle, trained_run, tmp_path):
    from PIL import Image

    from export import savedmodel

    root, url, page, errors = served_bundle
    images, _ = _test_images(trained_run, limit=1)
    photo = tmp_path / "photo.png"
    Image.fromarray(images[0]).save(photo)  # at the model's input size: the page and TensorFlow see the same pixels
    page.goto(f"{url}/web/")
    page.wait_for_selector("#status:has-text('Model loaded')")
    assert not any("googleapis" in s or "jsdelivr" in s or "unpkg" in s for s in page.content().split('"'))  # no CDN
    page.set_input_files("#file", str(photo))
    out = page.wait_for_selector("#out[data-top1]:not([data-top1=''])")
    probs = np.array(json.loads(out.get_attribute("data-probs")), dtype=np.float32)
    _, fn = savedmodel.load_signature(root / "savedmodel")
    expected = fn(images[:1].astype(np.float32))[0]
    assert np.abs(probs - expected).max() <= 1e-4, (probs, expected)
    labels = (root / "labels.txt").read_text().splitlines()
    assert out.get_attribute("data-top1") == labels[int(expected.argmax())]
    assert page.locator("#bars .bar").count() == len(labels)
    # "none of these": the manifest's confidence threshold marks a result below it, and the page says so
    threshold = json.loads((root / "manifest.json").read_text())["confidence_threshold"]
    unsure = bool(expected.max() < threshold)
    assert out.get_attribute("data-uncertain") == str(unsure).lower(), (expected.max(), threshold)
    assert ("not sure" in page.locator("#top").inner_text()) == unsure
    # The app's Try page: the same page embedded, the photo in the URL fragment (base64 has '+' and '/').
    import base64

    data = base64.b64encode(photo.read_bytes()).decode()
    page.goto(f"{url}/web/index.html?embedded=1#image=data:image/png;base64,{data}")
    out = page.wait_for_selector("#out[data-top1]:not([data-top1=''])")
    embedded = np.array(json.loads(out.get_attribute("data-probs")), dtype=np.float32)
    assert np.abs(embedded - expected).max() <= 1e-4
    assert page.locator("#top").inner_text().startswith("Browser (TF.js, ")
    # The next photo changes only the fragment (as the Try page does): the same page, TF.js loaded once, classifies
    # it, and never shows the previous photo's result meanwhile (it did, on every other photo).
    images, truth = _test_images(trained_run)
    other = next(
        i
        for i in range(len(images))
        if int(fn(images[i : i + 1].astype(np.float32))[0].argmax()) != int(expected.argmax())
    )
    second = tmp_path / "second.png"
    Image.fromarray(images[other]).save(second)
    page.evaluate("window.sameDocument = true")
    page.evaluate(
        "h => { location.hash = h; }", "image=data:image/png;base64," + base64.b64encode(second.read_bytes()).decode()
    )
    expected2 = fn(images[other : other + 1].astype(np.float32))[0]
    out = page.wait_for_selector(f"#out[data-top1='{labels[int(expected2.argmax())]}']")
    assert np.abs(np.array(json.loads(out.get_attribute("data-probs")), dtype=np.float32) - expected2).max() <= 1e-4
    assert page.evaluate("window.sameDocument === true")  # no reload: TF.js and the model stayed loaded
    # The webcam: Chromium's fake camera (a test pattern) through getUserMedia, classified frame by frame.
    page.goto(f"{url}/web/")
    page.wait_for_selector("#status:has-text('Model loaded')")
    page.click("#camera")
    out = page.wait_for_selector("#out[data-top1]:not([data-top1=''])")
    assert out.get_attribute("data-top1") in labels
    assert page.locator("#video").is_visible() and page.locator("#snap").inner_text() == "Pause"
    first = out.get_attribute("data-probs")  # the fake camera's pattern moves: frame after frame, new results
    page.wait_for_function("p => document.getElementById('out').dataset.probs !== p", arg=first, timeout=30_000)
    page.click("#snap")
    assert page.locator("#snap").inner_text() == "Resume"
    assert not errors, errors


@pytest.mark.slow
def test_every_javascript_snippet_in_the_bundle_readme_runs_in_chromium(served_bundle, trained_run):
    import re

    from PIL import Image

    root, url, page, errors = served_bundle
    images, _ = _test_images(trained_run, limit=1)
    Image.fromarray(images[0]).save(root / "photo.jpg", quality=95)
    (root / "tasks-vision").symlink_to(ROOT / "node_modules" / "@mediapipe" / "tasks-vision")
    (root / "ort").symlink_to(ROOT / "node_modules" / "onnxruntime-web" / "dist")
    readme = (root / "README.md").read_text()
    snippets = re.findall(r"```(?:html|js|javascript)\n(.*?)```", readme, flags=re.S)
    assert len(snippets) >= 3 and any("tasks-vision" in s for s in snippets) and any("ort/" in s for s in snippets)
    labels = (root / "labels.txt").read_text().splitlines()
    logs: list[str] = []
    page.on("console", lambda msg: logs.append(msg.text))
    results = []
    for i, code in enumerate(snippets):
        (root / f"snippet-{i}.html").write_text(code)
        logs.clear()
        page.goto(f"{url}/snippet-{i}.html")
        t0 = time.monotonic()
        while not (found := [line for line in logs if line.split(" ")[0] in labels]):
            assert not errors and time.monotonic() - t0 < 120, (i, errors, logs)
            page.wait_for_timeout(200)
        results.append(found[0])
    assert not errors, errors
    expected = labels[
        int(
            tflite.predict(
                tflite.interpreter(verify.artifact_path(root, "tflite-float32")), images.astype(np.float32)
            ).argmax()
        )
    ]
    assert all(line.split(" ")[0] == expected for line in results), (results, expected)  # JPEG: confident shapes
