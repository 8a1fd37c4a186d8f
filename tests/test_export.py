"""Export from a small really-trained run, verified in each format's own runtime (TF, LiteRT, Node TF.js)."""

import hashlib
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from export import bundle, task, tfjs, tflite, verify
from pipeline.runs.folder import RunFolder, RunNotReadyError, load_model
from pipeline.training import train as train_mod
from tests.conftest import ROOT, tiny_config, write_shapes_dataset


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The small CNN really trained with augmentation on (so the export must leave it out).

    (MobileNetV2 with real weights is exported and verified by the slow test at the end.)
    """
    root = tmp_path_factory.mktemp("export")
    # 48 a class: at 16 the from-scratch CNN stayed at chance on some CPUs, and a model that answers one class
    # agrees with every format whatever the format does
    data_dir = write_shapes_dataset(root / "shapes", per_class=48)
    cfg = tiny_config(
        model={"backbone": "small_cnn"},
        train={"strategy": "from_scratch", "head_epochs": 8, "learning_rate": 3e-3},
        augment={"enabled": True, "flip": "horizontal", "rotation": 0.05},
        data={"test_fraction": 0.25},
    )
    run = train_mod.train(str(data_dir), root / "run", cfg)
    return run


@pytest.fixture(scope="module")
def said() -> list[str]:
    return []


@pytest.fixture(scope="module")
def exported(trained_run, said):
    dest, result = bundle.export_run(trained_run.root, list(bundle.FORMATS), progress=said.append)
    return dest, result


def test_an_export_says_the_steps_its_formats_list_and_the_app_counts(exported, said):
    """export.formats.progress_steps is what the app's progress bar counts (task.steps_total): a real export says
    exactly those steps, in order."""
    from export import formats, task, tflite

    steps = formats.progress_steps(list(bundle.FORMATS))
    assert len(said) == len(steps) == task.steps_total(list(bundle.FORMATS))
    assert all(message.startswith(step) for message, step in zip(said, steps, strict=True)), (said, steps)
    assert set(tflite.PRESETS) == {f for f, s in formats.REGISTRY.items() if s.family == "tflite"}
    assert set(bundle.CONVERTERS) == {s.family for s in formats.REGISTRY.values()} - {"savedmodel"}
    assert [f for f, s in formats.REGISTRY.items() if s.integer_output] == ["tflite-int8"]


def test_every_format_is_exported_and_verified_in_its_runtime(exported, trained_run):
    dest, result = exported
    assert tfjs.node_available() is None, "Node and @tensorflow/tfjs are part of the test set-up (make test)"
    assert result["passed"], verify.table(result)
    rows = result["formats"]
    mediapipe_rows = {f"mediapipe-{f.removeprefix('tflite-')}" for f in bundle.FORMATS if f.startswith("tflite")}
    assert set(rows) == {"keras", *bundle.FORMATS, *mediapipe_rows}
    for fmt in ("savedmodel", "tflite-float32", "tfjs"):
        assert rows[fmt]["agreement"] == 1.0 and rows[fmt]["max_abs_diff"] <= 1e-4, fmt
    for fmt in ("tflite-float16", "tflite-dynamic", "tfjs-float16"):
        assert rows[fmt]["agreement"] >= 0.99, fmt
    assert "accuracy" in rows["tflite-int8"]
    assert result["images"] == 36  # the whole test split (25% of 3 x 48)
    assert json.loads((dest / "verify.json").read_text()) == json.loads(json.dumps(result))


def test_manifest_labels_and_checksums(exported, trained_run):
    dest, _ = exported
    manifest = json.loads((dest / "manifest.json").read_text())
    classes = json.loads(trained_run.dataset.read_text())["splits"]["classes"]
    assert (dest / "labels.txt").read_text().splitlines() == classes == manifest["labels"]
    assert manifest["input"]["value_range"] == [0, 255] and manifest["input"]["shape"] == [1, 32, 32, 3]
    assert manifest["backbone"]["name"] == "small_cnn"
    for rel, info in manifest["files"].items():
        data = (dest / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["bytes"], rel
    for key in ("tensorflow", "keras", "tensorflowjs", "ai-edge-litert"):
        assert manifest["versions"][key]
    import zipfile

    with zipfile.ZipFile(dest / bundle.ZIP_NAME) as zf:
        names = set(zf.namelist())
    assert {
        "manifest.json",
        "labels.txt",
        "README.md",
        "model-int8.tflite",
        "tfjs/model.json",
        "tfjs-float16/model.json",
        "savedmodel/saved_model.pb",
    } <= names


def test_the_model_card_says_what_eval_and_verify_measured(exported, trained_run):
    """MODEL_CARD.md, confusion_matrix.png and manifest.json's model_card: every number from eval.json and
    verify.json as they are, and no server path in what ships."""
    from PIL import Image

    from export import model_card

    dest, result = exported
    evaluation = json.loads(trained_run.eval.read_text())
    verified = json.loads((dest / "verify.json").read_text())
    splits = json.loads(trained_run.dataset.read_text())["splits"]
    manifest = json.loads((dest / "manifest.json").read_text())
    card = manifest["model_card"]
    assert card["data"]["images"] == {name: len(splits[name]) for name in ("train", "val", "test")}
    assert card["data"]["classes"] == evaluation["labels"] and card["data"]["source"] == "shapes"
    got = card["results"]
    assert got["accuracy"] == evaluation["accuracy"] and got["images"] == evaluation["images"]
    assert got["per_class"] == evaluation["per_class"] and got["split"] == evaluation["split"] == "test"
    assert got["confused_pairs"] == evaluation["confused_pairs"][: model_card.WORST_PAIRS]
    assert got["confidence_threshold"] == evaluation["confidence_threshold"] is not None
    assert manifest["confidence_threshold"] == evaluation["confidence_threshold"]["value"]
    assert card["verified_on"] == verified["images"] and set(card["formats"]) == set(verified["formats"])
    for fmt, row in verified["formats"].items():
        for key in ("agreement", "accuracy", "size_bytes", "latency_ms", "passed"):
            assert card["formats"][fmt][key] == row.get(key), (fmt, key)
    assert card["training"]["epochs"] == {"scratch": 8} and card["training"]["precision"] == "float32"
    assert len({p["predicted"] for p in evaluation["predictions"]}) > 1  # agreement compares real decisions

    text = (dest / model_card.CARD_NAME).read_text()
    assert text == model_card.render(card)
    assert f"**{evaluation['accuracy']:.2%}**" in text
    assert f"Confidence threshold: {evaluation['confidence_threshold']['value']:.3f}" in text
    for cls, m in evaluation["per_class"].items():
        assert f"| {cls} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |" in text
    for fmt, row in verified["formats"].items():
        if row.get("agreement") is not None:
            assert f"| {row['agreement']:.2%} |" in text.split(f"| {fmt} |", 1)[1].split("\n", 1)[0], fmt
    assert "anything else still gets one of them" in text
    assert str(trained_run.root.parent) not in text and str(trained_run.root.parent) not in json.dumps(card)
    with Image.open(dest / model_card.MATRIX_NAME) as png:
        assert png.format == "PNG" and min(png.size) >= 200
    import zipfile

    with zipfile.ZipFile(dest / bundle.ZIP_NAME) as zf:
        assert {model_card.CARD_NAME, model_card.MATRIX_NAME} <= set(zf.namelist())
    readme = (dest / "README.md").read_text()
    assert f"The confidence threshold, {manifest['confidence_threshold']:.3f}" in readme


def test_int8_model_takes_and_returns_uint8_with_manifest_parameters(exported):
    dest, _ = exported
    path = verify.artifact_path(dest, "tflite-int8")
    details = tflite.io_details(path)
    assert details["input"]["dtype"] == "uint8" and details["output"]["dtype"] == "uint8"
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["tflite_int8"] == details
    assert details["input"]["quantization"]["scale"] == pytest.approx(1.0, rel=0.02)  # raw 0..255 pixels


def test_no_tflite_file_uses_flex_ops(exported):
    dest, _ = exported
    for fmt in ("tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8"):
        ops = tflite.op_names(verify.artifact_path(dest, fmt))
        assert ops and not any(op.startswith("Flex") for op in ops), (fmt, ops)


def test_a_raw_image_gives_the_keras_top1_in_every_runtime(exported, trained_run):
    from pipeline import data as data_mod

    dest, _ = exported
    model = load_model(trained_run)
    splits = json.loads(trained_run.dataset.read_text())["splits"]
    path = f"{splits['root']}/{splits['test'][0][0]}"
    raw = data_mod.load_image(path, 32).astype(np.float32)[None]  # 0..255, no normalisation by the caller
    assert raw.max() > 1.0
    expected = int(model.predict(raw, verbose=0).argmax())
    for fmt in ("savedmodel", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8", "tfjs"):
        probs, _, _ = verify.run_format(dest, fmt, raw)
        assert int(probs.argmax()) == expected, fmt


def test_interrupted_export_leaves_no_complete_looking_bundle(trained_run, tmp_path):
    def interrupt(msg):
        if msg.startswith("converting tfjs"):
            raise KeyboardInterrupt

    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        bundle.export_run(trained_run.root, ["savedmodel", "tflite-float32", "tfjs"], out, progress=interrupt)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left either

    bundle.export_run(trained_run.root, ["savedmodel", "tflite-float32"], out, run_verify=False)
    before = (out / "manifest.json").read_text()
    with pytest.raises(KeyboardInterrupt):
        bundle.export_run(trained_run.root, ["savedmodel", "tflite-float32", "tfjs"], out, progress=interrupt)
    assert (out / "manifest.json").read_text() == before  # the previous complete bundle is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_missing_or_unfinished_run_folder_is_one_line(tmp_path):
    with pytest.raises(RunNotReadyError):
        bundle.export_run(tmp_path / "nothing")
    half = RunFolder(tmp_path / "half")
    half.root.mkdir()
    (half.root / "config.json").write_text("{}")
    (half.root / "dataset.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "export", str(half.root)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {half.root} has no model.keras: training has not finished."
    assert "Traceback" not in proc.stderr


def test_cli_exports_chosen_formats_and_reverifies(trained_run, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "export", str(trained_run.root), "--formats", "tflite-float32,tfjs", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tflite-float32" in proc.stdout and "tfjs" in proc.stdout
    # Only the export's own lines: none of TensorFlow's C++ log lines ("W0000 00:00:... tf_tfl_flatbuffer_...")
    # nor the converters' prints (issue 22); progress lines ("converting tfjs ...") stay.
    assert "converting tfjs" in proc.stderr
    chatter = [ln for ln in proc.stderr.splitlines() if re.match(r"[IWE]\d{4} |INFO: |fully_quantize", ln)]
    assert not chatter, chatter
    assert set(json.loads((out / "manifest.json").read_text())["formats"]) == {"savedmodel", "tflite-float32", "tfjs"}
    proc = subprocess.run(
        [sys.executable, "-m", "export", str(trained_run.root), "--out", str(out), "--verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "export", str(trained_run.root), "--formats", "coreml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown format(s) coreml" in bad.stderr


def _wait_for_export(run_dir, timeout=600):
    import time

    t0 = time.monotonic()
    while (status := task.read_status(run_dir))["state"] == "running":
        assert time.monotonic() - t0 < timeout, status
        time.sleep(0.5)
    return status


def test_background_export_reports_progress_and_outcome(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.root, run_dir, ignore=shutil.ignore_patterns("exports"))
    started = task.start(run_dir, ["savedmodel", "tflite-float32"])
    assert started["state"] == "running" and started["total"] == task.steps_total(["savedmodel", "tflite-float32"])
    assert task.start(run_dir, ["savedmodel"])["pid"] == started["pid"]  # a second click joins the running export
    steps = set()
    while (status := task.read_status(run_dir))["state"] == "running":
        steps.add(status["step"])
    assert status["state"] == "done" and status["error"] is None and status["done"] == status["total"]
    assert (run_dir / "exports" / "manifest.json").exists() and (run_dir / "exports" / "verify.json").exists()
    assert any(s.startswith("converting") or s.startswith("verifying") for s in steps), steps

    (run_dir / "model.keras").unlink()  # a run that cannot be exported: the reason reaches the status
    task.start(run_dir, ["savedmodel"])
    failed = _wait_for_export(run_dir)
    assert failed["state"] == "failed" and "has no model.keras" in failed["error"]


def test_an_export_whose_process_died_reads_as_interrupted(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    task.write_status(task.status_path(tmp_path), state="running", step="converting tfjs", done=3, total=7)
    status = json.loads(task.status_path(tmp_path).read_text())
    status["pid"] = dead.pid
    task.status_path(tmp_path).write_text(json.dumps(status))
    assert task.read_status(tmp_path)["state"] == "interrupted"
    assert "start it again" in task.read_status(tmp_path)["error"]
    assert task.read_status(tmp_path / "never") is None


@pytest.mark.slow
def test_real_mobilenet_v2_export_passes_every_gate(shared_dir, keras_home_with_weights, tmp_path):
    """MobileNetV2 alpha 0.35 at 224 with ImageNet weights, fine-tuned on hymenoptera: `python -m export` exits 0,
    every format (MediaPipe rows included) passes, and the manifest lists the TFLite metadata written."""
    from pipeline import config as config_mod

    cfg = config_mod.apply_overrides(config_mod.RunConfig(), ["train.head_epochs=2", "train.fine_tune_epochs=1"])
    run = train_mod.train(str(shared_dir / "data" / "hymenoptera"), tmp_path / "run", cfg)
    proc = subprocess.run(
        [sys.executable, "-m", "export", str(run.root), "--verify-images", "120"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    dest = run.exports
    result = json.loads((dest / "verify.json").read_text())
    assert result["passed"] and result["images"] == 120, verify.table(result)
    rows = result["formats"]
    manifest = json.loads((dest / "manifest.json").read_text())
    for fmt in ("tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8"):
        ops = tflite.op_names(verify.artifact_path(dest, fmt))
        assert ops and not any(op.startswith("Flex") for op in ops), (fmt, ops)
        assert rows[f"mediapipe-{fmt.removeprefix('tflite-')}"]["passed"], fmt
        assert manifest["tflite_metadata"][fmt]["output"]["labels"] == ["ants", "bees"], fmt
    assert rows["tflite-int8"]["size_bytes"] < 0.5 * rows["tflite-float32"]["size_bytes"]
    assert rows["tflite-int8"]["accuracy"] >= rows["keras"]["accuracy"] - 0.05
