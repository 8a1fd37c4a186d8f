"""Export a finished run folder to a verified bundle: models, labels.txt, manifest.json, README.md, a zip.

The bundle is built in a hidden temporary folder beside its destination and renamed into place
only when every file (and verify.json) is written: an interrupted or failed export never leaves a
bundle that looks complete.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export import savedmodel, tfjs, tflite, verify
from export.tflite import ConversionError
from pipeline import data as data_mod
from pipeline.evaluate import load_model, load_run
from pipeline.runfolder import atomic_write_json

FORMATS = ("savedmodel", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8", "tfjs", "tfjs-float16")
# tfjs-uint8 (affine uint8 weights) is on request only: on MobileNetV2 with real weights it agreed with
# Keras on 57% of top-1 labels (depthwise kernels do not survive 8-bit affine weights), far below the gate.
OPTIONAL_FORMATS = ("tfjs-uint8",)
ZIP_NAME = "model_bundle.zip"
ProgressFn = Callable[[str], None]


class ExportError(ValueError):
    """The export cannot be done as asked; the message says why and what to do."""


def parse_formats(text: str | None) -> list[str]:
    """``all`` or a comma-separated list; savedmodel is always included (every other format derives from it)."""
    if not text or text == "all":
        return list(FORMATS)
    wanted = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FORMATS + OPTIONAL_FORMATS]
    if unknown:
        raise ExportError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS + OPTIONAL_FORMATS)} or all.")
    return ["savedmodel"] + [f for f in wanted if f != "savedmodel"]


def _balanced_sample(splits: data_mod.Splits, split: str, count: int, seed: int) -> list[int]:
    """Indices of up to ``count`` images of ``split``, taking classes in turn."""
    labels = splits.labels(split)
    rng = np.random.default_rng(seed)
    per_class = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(len(splits.classes))]
    out: list[int] = []
    while len(out) < count and any(per_class):
        for bucket in per_class:
            if bucket and len(out) < count:
                out.append(int(bucket.pop()))
    return out


def held_out(run_dir: Path, limit: int = 200) -> tuple[np.ndarray, np.ndarray, str]:
    """The verification images: the test split (val when there is none), all of it up to ``limit``."""
    run, cfg, splits = load_run(run_dir)
    split = splits.eval_split
    idx = list(range(len(getattr(splits, split))))
    if len(idx) > limit:
        idx = sorted(_balanced_sample(splits, split, limit, cfg.train.seed))
    files = splits.paths(split)
    images = np.stack([data_mod.load_image(files[i], cfg.model.image_size) for i in idx]).astype(np.float32)
    return images, splits.labels(split)[idx], split


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("transfer-studio", "tensorflow", "keras", "tensorflowjs", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def export_run(
    run_dir: str | Path,
    formats: list[str] | None = None,
    out: str | Path | None = None,
    *,
    run_verify: bool = True,
    verify_limit: int = 200,
    calibration_images: int = 100,
    progress: ProgressFn | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Exports a finished run folder.

    Args:
        run_dir: The run folder (needs model.keras, config.json, dataset.json).
        formats: Formats to write (default: all of FORMATS).
        out: Destination folder (default ``RUN_DIR/exports``); replaced atomically.
        run_verify: Verify every artifact in its runtime and write verify.json.
        verify_limit: At most this many held-out images for verification.
        calibration_images: Class-balanced training images used to calibrate the int8 model.
        progress: Called with a short sentence before each step.

    Returns:
        (bundle folder, verify.json content or None).

    Raises:
        RunNotReadyError, ExportError, ConversionError.
    """
    say = progress or (lambda _msg: None)
    run, cfg, splits = load_run(run_dir)
    formats = list(formats or FORMATS)
    dest = Path(out).expanduser().resolve() if out else run.exports
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        say("loading the trained model")
        model = load_model(run)
        size = cfg.model.image_size
        say("writing SavedModel")
        savedmodel.export_savedmodel(model, tmp / "savedmodel", size)
        int8_params = None
        for fmt in formats:
            if fmt.startswith("tflite"):
                say(f"converting {fmt}")
                q = tflite.PRESETS[fmt]
                rep = _representative(splits, cfg, calibration_images) if q.full_integer else None
                path = verify.artifact_path(tmp, fmt)
                path.write_bytes(tflite.convert(tmp / "savedmodel", q, rep))
                flex = sorted(op for op in tflite.op_names(path) if op.startswith("Flex"))
                if flex:
                    raise ConversionError(f"{fmt} needs TensorFlow Select ops ({', '.join(flex)}), which mobile apps cannot load.")
                if q.full_integer:
                    int8_params = tflite.io_details(path)
            elif fmt.startswith("tfjs"):
                say(f"converting {fmt}")
                tfjs.convert(tmp / "savedmodel", verify.artifact_path(tmp, fmt), fmt)
        (tmp / "labels.txt").write_text("\n".join(splits.classes) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(bundle_readme(cfg, splits, formats, int8_params), encoding="utf-8")
        result = None
        if run_verify:
            say("verifying every format in its own runtime")
            images, labels, _split = held_out(run.root, verify_limit)
            result = verify.verify(tmp, formats, model, images, labels)
            atomic_write_json(tmp / "verify.json", result)
        manifest = build_manifest(run, cfg, splits, formats, int8_params, tmp)
        atomic_write_json(tmp / "manifest.json", manifest)
        say("zipping the bundle")
        _zip_bundle(tmp)
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, result


def _representative(splits: data_mod.Splits, cfg, count: int):
    idx = _balanced_sample(splits, "train", count, cfg.train.seed)
    files = splits.paths("train")
    images = [data_mod.load_image(files[i], cfg.model.image_size).astype(np.float32) for i in idx]

    def gen():
        for img in images:
            yield [img[None]]

    return gen


def build_manifest(run, cfg, splits, formats, int8_params, bundle: Path) -> dict[str, Any]:
    from pipeline import backbones

    spec = backbones.get(cfg.model.backbone)
    eval_result = json.loads(run.eval.read_text()) if run.eval.exists() else None
    files = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.json"):
        rel = path.relative_to(bundle).as_posix()
        if rel != ZIP_NAME:
            files[rel] = {"sha256": data_mod.file_sha256(path), "bytes": path.stat().st_size}
    size = cfg.model.image_size
    return {
        "format_version": 1,
        "labels": list(splits.classes),
        "input": {
            "name": savedmodel.INPUT_NAME, "shape": [1, size, size, 3], "dtype": "float32", "layout": "NHWC",
            "color": "RGB", "value_range": [0, 255],
            "resize": f"bilinear to {size}x{size}, aspect ratio not kept (no crop), EXIF orientation applied first",
            "preprocessing": f"inside the model ({spec.preprocessing}); feed raw pixels",
        },
        "output": {"name": savedmodel.OUTPUT_NAME, "shape": [1, len(splits.classes)], "dtype": "float32",
                   "meaning": "softmax probabilities in label order"},
        "tflite_int8": int8_params,
        "backbone": {"name": cfg.model.backbone, "alpha": cfg.model.alpha if spec.alphas else None,
                     "weights": cfg.model.weights, "strategy": cfg.train.strategy},
        "formats": {f: verify.artifact_path(bundle, f).relative_to(bundle).as_posix() for f in formats},
        "training": {
            "best": run.read_state().get("best"),
            "eval": {k: eval_result[k] for k in ("split", "images", "accuracy")} if eval_result else None,
        },
        "files": files,
        "versions": _versions(),
    }


def _zip_bundle(bundle: Path) -> None:
    target = bundle / ZIP_NAME
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p != target):
            zf.write(path, path.relative_to(bundle).as_posix())


def _replace_dir(src: Path, dest: Path) -> None:
    """Moves the finished bundle into place; an older bundle is moved aside first and then deleted."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def bundle_readme(cfg, splits, formats, int8_params) -> str:
    size = cfg.model.image_size
    labels = ", ".join(splits.classes)
    int8 = ""
    if int8_params:
        q = int8_params["input"]["quantization"]
        o = int8_params["output"]["quantization"]
        int8 = (f"\n`model-int8.tflite` takes **uint8** pixels (scale {q['scale']:g}, zero point {q['zero_point']}) "
                f"and returns uint8 scores: probability = (value - {o['zero_point']}) * {o['scale']:g}.\n")
    return f"""# Exported classifier

Labels (output order): {labels}. Input: raw RGB pixels, values 0..255, shape [1, {size}, {size}, 3],
resized bilinearly to {size}x{size} without cropping (apply EXIF orientation first). Preprocessing is inside
the model: do not normalise. Output: softmax probabilities in the order of `labels.txt`.

Formats: {", ".join(formats)}. `manifest.json` has the input contract, sha256 of every file and the tool
versions; `verify.json` shows how each file agreed with the trained Keras model in its own runtime.
{int8}
## Python (TFLite, LiteRT interpreter)

```python
import numpy as np
from PIL import Image, ImageOps
from ai_edge_litert.interpreter import Interpreter

labels = open("labels.txt").read().split("\\n")[:-1]
img = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB").resize(({size}, {size}), Image.BILINEAR)
x = np.asarray(img, dtype=np.float32)[None]          # 0..255, no normalisation
interp = Interpreter(model_path="model-float32.tflite")
interp.allocate_tensors()
interp.set_tensor(interp.get_input_details()[0]["index"], x)
interp.invoke()
probs = interp.get_tensor(interp.get_output_details()[0]["index"])[0]
print(labels[int(probs.argmax())], float(probs.max()))
```

## JavaScript (TF.js in a web page)

```html
<script src="tf.min.js"></script>  <!-- @tensorflow/tfjs, served by your app -->
<script>
  const model = await tf.loadGraphModel("tfjs/model.json");
  const labels = (await (await fetch("labels.txt")).text()).trim().split("\\n");
  const x = tf.tidy(() => tf.image.resizeBilinear(tf.browser.fromPixels(imgElement), [{size}, {size}])
                         .toFloat().expandDims(0));   // 0..255, no normalisation
  const probs = await model.predict(x).data();
</script>
```

## Android / iOS (TFLite)

Feed a `{size}x{size}` RGB bitmap as a float32 buffer of raw 0..255 values (`model-float32.tflite`,
`-float16`, `-dynamic`) or as uint8 bytes (`model-int8.tflite`), NHWC, no mean/std normalisation: with the
TFLite Support library, use no `NormalizeOp` (or `NormalizeOp(0, 1)`). Read one output of
{len(splits.classes)} scores in the order of `labels.txt`.
"""
