"""TF.js graph model (float32 and a quantized variant), converted with the tensorflowjs converter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
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
        str(saved_model_dir),
        str(out_dir),
        signature_def=SIGNATURE,
        saved_model_tags="serve",
        quantization_dtype_map={dtype: True} if dtype else None,
    )
    return out_dir


def node_available(backend: str = "wasm") -> str | None:
    """Why the Node runtime cannot run, or None when it can."""
    if shutil.which("node") is None:
        return "Node.js is not installed (apt-get install nodejs)"
    for pkg in ("tfjs",) + (("tfjs-backend-wasm",) if backend == "wasm" else ()):
        if not (ROOT / "node_modules" / "@tensorflow" / pkg).is_dir():
            return f"@tensorflow/{pkg} is not installed; run `npm ci` in {ROOT}"
    return None


@dataclass(frozen=True)
class TfjsResult:
    """One model's TF.js run in Node.

    Attributes:
        probs: Probabilities, one row per image (computed a batch at a time).
        latency_ms: Per-image forward-pass time in milliseconds at batch 1, on the first few images.
        backend: The TF.js backend that ran ("wasm" or "cpu").
        note: Why the CPU backend ran instead of wasm ("" when wasm ran as asked).
        seconds: The model's time in the runner: loading, warm-up, latency calls and probabilities.
    """

    probs: np.ndarray
    latency_ms: list[float]
    backend: str
    note: str
    seconds: float = 0.0


LATENCY_IMAGES = 20  # batch-1 calls timed per model (what a page makes); the probabilities go a batch at a time
BATCH = 32


def predict_many(
    model_dirs: list[Path],
    images,
    *,
    backend: str = "wasm",
    timeout: float = 1800,
    latency_images: int = LATENCY_IMAGES,
) -> list[TfjsResult]:
    """Runs graph models in one Node process with @tensorflow/tfjs (Node, the library and its backend start once).

    Args:
        model_dirs: Graph-model folders (model.json and shards).
        images: Raw RGB pixels, [N, S, S, 3], 0..255 (uint8 or float; a memmap is read a batch at a time).
        backend: "wasm" (falls back to "cpu" with a note when wasm cannot start) or "cpu".
        latency_images: How many of the first images each model is timed on at batch 1.

    Raises:
        TfjsRuntimeMissing: Node or the npm packages are absent.
        RuntimeError: the runner failed.
    """
    problem = node_available("cpu")
    if problem:
        raise TfjsRuntimeMissing(problem)
    note = ""
    if backend == "wasm" and (wasm_problem := node_available("wasm")):
        backend, note = "cpu", f"CPU backend: {wasm_problem}"
    n, size = len(images), images.shape[1]
    with tempfile.TemporaryDirectory(prefix="tfjs-verify-") as tmp:
        inp, out = Path(tmp) / "input.u8", Path(tmp) / "out.json"
        with open(inp, "wb") as f:
            for i in range(0, n, BATCH):
                f.write(
                    np.ascontiguousarray(np.clip(np.round(images[i : i + BATCH]), 0, 255), dtype=np.uint8).tobytes()
                )
        args = [str(inp), str(n), str(size), str(out), backend, str(latency_images), str(BATCH)]
        proc = subprocess.run(
            ["node", str(RUNNER), *args, *map(str, model_dirs)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"TF.js runtime failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}"
            )
        result = json.loads(out.read_text())
    if result.get("fallback"):
        note = f"CPU backend: {result['fallback']}"
    return [
        TfjsResult(
            np.array(m["probs"], dtype=np.float32).reshape(n, -1),
            m["latency_ms"],
            result["backend"],
            note,
            m["seconds"],
        )
        for m in result["models"]
    ]


def predict(model_dir: Path, images, *, backend: str = "wasm", timeout: float = 1800) -> TfjsResult:
    """:func:`predict_many` of one graph model."""
    return predict_many([model_dir], images, backend=backend, timeout=timeout)[0]
