"""TF.js graph model (float32 and a quantized variant), converted with the tensorflowjs converter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from export.savedmodel import SIGNATURE

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("tfjs_runner.mjs")
QUANTIZE = {"tfjs": None, "tfjs-uint8": "uint8", "tfjs-float16": "float16"}


class TfjsRuntimeMissing(RuntimeError):
    """Node.js or @tensorflow/tfjs is not installed, so TF.js files cannot be verified."""


def convert(saved_model_dir: Path, out_dir: Path, fmt: str) -> Path:
    """Converts the SavedModel's serving signature to a TF.js graph model in ``out_dir``."""
    # tensorflowjs imports tensorflow_decision_forests, whose welcome banner imports IPython whenever
    # stdout is not a terminal (pytest, the app, a worker): switch the banner off.
    os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")
    from tensorflowjs.converters import tf_saved_model_conversion_v2 as conv

    dtype = QUANTIZE[fmt]
    conv.convert_tf_saved_model(
        str(saved_model_dir), str(out_dir), signature_def=SIGNATURE, saved_model_tags="serve",
        quantization_dtype_map={dtype: True} if dtype else None,
    )
    return out_dir


def node_available() -> str | None:
    """Why the Node runtime cannot run, or None when it can."""
    if shutil.which("node") is None:
        return "Node.js is not installed (apt-get install nodejs)"
    if not (ROOT / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        return f"@tensorflow/tfjs is not installed; run `npm ci` in {ROOT}"
    return None


def predict(model_dir: Path, images: np.ndarray, *, timeout: float = 1800) -> tuple[np.ndarray, list[float]]:
    """Runs the graph model in Node with @tensorflow/tfjs, one image at a time.

    Returns:
        (probabilities, per-image latency in milliseconds).
    """
    problem = node_available()
    if problem:
        raise TfjsRuntimeMissing(problem)
    n, size = len(images), images.shape[1]
    with tempfile.TemporaryDirectory(prefix="tfjs-verify-") as tmp:
        inp, out = Path(tmp) / "input.f32", Path(tmp) / "out.json"
        np.ascontiguousarray(images, dtype="<f4").tofile(inp)
        proc = subprocess.run(["node", str(RUNNER), str(model_dir), str(inp), str(n), str(size), str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"TF.js runtime failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
        result = json.loads(out.read_text())
    return np.array(result["probs"], dtype=np.float32), result["latency_ms"]
