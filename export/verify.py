"""Parity: the same held-out images through the trained Keras model and through every artifact in its own runtime.

Gates: float32 formats agree with Keras on 100% of top-1 labels with max |dp| <= 1e-4; float16
and dynamic-range agree on >= 99%; full-integer int8 reports its accuracy change and warns past 2 points.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from export import savedmodel, tfjs, tflite

FLOAT32_FORMATS = ("savedmodel", "tflite-float32", "tfjs")
REDUCED_FORMATS = ("tflite-float16", "tflite-dynamic", "tfjs-float16", "tfjs-uint8")
INT8_WARN_POINTS = 2.0


def artifact_path(bundle: Path, fmt: str) -> Path:
    """Where a format lives inside a bundle."""
    if fmt == "savedmodel":
        return bundle / "savedmodel"
    if fmt.startswith("tflite"):
        return bundle / f"model-{fmt.removeprefix('tflite-')}.tflite"
    return bundle / fmt  # tfjs, tfjs-uint8, tfjs-float16: graph-model folders


def size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _timed_batch1(fn, images: np.ndarray) -> tuple[np.ndarray, float]:
    fn(images[:1])  # warm-up
    t0 = time.perf_counter()
    out = np.concatenate([fn(images[i : i + 1]) for i in range(len(images))])
    return out, (time.perf_counter() - t0) * 1000 / len(images)


def run_format(bundle: Path, fmt: str, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities and mean latency (ms per image at batch 1) of one artifact in its own runtime."""
    path = artifact_path(bundle, fmt)
    if fmt == "savedmodel":
        _, fn = savedmodel.load_signature(path)
        return _timed_batch1(fn, images)
    if fmt.startswith("tflite"):
        interp = tflite.interpreter(path)
        tflite.predict(interp, images[:1])
        t0 = time.perf_counter()
        probs = tflite.predict(interp, images)
        return probs, (time.perf_counter() - t0) * 1000 / len(images)
    probs, latency = tfjs.predict(path, images)
    return probs, float(np.mean(latency))


def gate(fmt: str, agreement: float, max_dp: float, accuracy_change_points: float) -> tuple[bool, str]:
    """Whether a format passes, and the reason when it does not (or a warning for int8)."""
    if fmt in FLOAT32_FORMATS:
        ok = agreement == 1.0 and max_dp <= 1e-4
        return ok, "" if ok else f"needs 100% top-1 agreement and max |dp| <= 1e-4 (got {agreement:.2%}, {max_dp:.2e})"
    if fmt in REDUCED_FORMATS:
        ok = agreement >= 0.99
        return ok, "" if ok else f"needs >= 99% top-1 agreement (got {agreement:.2%})"
    if fmt == "tflite-int8":
        lost = -accuracy_change_points
        return True, f"warning: loses {lost:.1f} accuracy points" if lost > INT8_WARN_POINTS else ""
    raise AssertionError(fmt)


def verify(bundle: Path, formats: list[str], keras_model, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Verifies each format against the Keras model on ``images``; returns the verify.json content."""
    keras_probs, keras_latency = _timed_batch1(lambda x: keras_model.predict(x, batch_size=1, verbose=0), images)
    keras_acc = float((keras_probs.argmax(1) == labels).mean())
    rows = {"keras": {"agreement": 1.0, "accuracy": keras_acc, "max_abs_diff": 0.0, "latency_ms": keras_latency,
                      "size_bytes": None, "passed": True, "note": "reference (Keras predict, batch 1)"}}
    for fmt in formats:
        try:
            probs, latency = run_format(bundle, fmt, images)
        except tfjs.TfjsRuntimeMissing as exc:
            rows[fmt] = {"passed": False, "note": f"not verified: {exc}", "size_bytes": size_bytes(artifact_path(bundle, fmt))}
            continue
        agreement = float((probs.argmax(1) == keras_probs.argmax(1)).mean())
        accuracy = float((probs.argmax(1) == labels).mean())
        max_dp = float(np.abs(probs - keras_probs).max())
        ok, note = gate(fmt, agreement, max_dp, (accuracy - keras_acc) * 100)
        rows[fmt] = {"agreement": agreement, "accuracy": accuracy, "max_abs_diff": max_dp, "latency_ms": latency,
                     "size_bytes": size_bytes(artifact_path(bundle, fmt)), "passed": ok, "note": note}
    return {"images": int(len(images)), "passed": all(r["passed"] for r in rows.values()), "formats": rows}


def table(result: dict[str, Any]) -> str:
    """The verification result as a plain-text table."""
    lines = [f"verified on {result['images']} held-out images",
             f"{'format':<16} {'agree':>7} {'accuracy':>8} {'max|dp|':>9} {'ms/img':>7} {'size':>10}  result"]
    for fmt, r in result["formats"].items():
        if "agreement" not in r:
            lines.append(f"{fmt:<16} {'':>7} {'':>8} {'':>9} {'':>7} {r['size_bytes'] or 0:>10,}  FAIL {r['note']}")
            continue
        size = f"{r['size_bytes']:,}" if r["size_bytes"] else "-"
        verdict = "ok" if r["passed"] else "FAIL"
        lines.append(f"{fmt:<16} {r['agreement']:>7.2%} {r['accuracy']:>8.4f} {r['max_abs_diff']:>9.2e} "
                     f"{r['latency_ms']:>7.2f} {size:>10}  {verdict} {r['note']}".rstrip())
    return "\n".join(lines)
