"""Parity: the same held-out images through the trained Keras model and through every artifact in its own runtime.

Runtimes: TensorFlow (SavedModel), onnxruntime (ONNX), LiteRT (TFLite), MediaPipe Tasks' ImageClassifier (every TFLite
file, with its metadata), and TF.js in Node (wasm backend; the pure-JS CPU backend as fallback).
Images come from the run's uint8 cache, a batch at a time: never the whole split as float32.

Gates (each format's ``gate`` in :mod:`export.formats`):
- float32 formats (SavedModel, TFLite float32, TF.js, ONNX): 100% top-1 agreement with Keras and max |dp| <= 1e-4.
- Reduced formats: a top-1 disagreement counts only on an image whose Keras top-1 margin (top-1 minus
  top-2 probability) is larger than ``2 * tolerance``, the most the format's numeric error
  (``tolerance`` on each probability, fixed per format, not measured) can move it; disagreements on
  the other images are near-ties, reported separately. The gate needs the counted agreement and the
  accuracy change on the decided images within the format's bounds; int8 warns past 2 points lost
  and fails past 5 or below 90%.
- Order: a format never passes where a less lossy format of the same runtime family failed
  (each spec's ``level``: float32 < float16 < dynamic < 8-bit).
- MediaPipe rows: the top-1 category name equals LiteRT's on 100% (float32 file) or >= 99% (the
  others) of the images LiteRT itself decides, and the category names equal labels.txt. An image whose two
  best LiteRT scores are within ``MEDIAPIPE_TIE_STEPS`` output quantization steps (the int8 file: its uint8
  output can tie exactly, and MediaPipe's int8 kernels round differently from LiteRT's by up to 3 steps, one
  1/256 step each, measured) is a near-tie, reported and not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export import formats, savedmodel, tfjs, tflite

BATCH = 32
MEDIAPIPE_TIE_STEPS = 4  # LiteRT-vs-MediaPipe rounding on an int8 file: at most 3 output steps measured
RUNTIME_LATENCY_IMAGES = 20  # a runtime whose batch-1 calls are slow (the SavedModel): latency on this many images
LATENCY_IMAGES = 5  # Keras reference latency: eager batch-1 calls on this many images (~0.1-0.2 s each here)
ProgressFn = Callable[[str], None]


def artifact_path(bundle: Path, fmt: str) -> Path:
    """Where a format lives inside a bundle (its spec's file)."""
    return formats.get(fmt).path(bundle)


def size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _batches(images, batch: int = BATCH):
    """float32 batches of ``images`` (uint8 cache or float array), one at a time."""
    for start in range(0, len(images), batch):
        yield np.asarray(images[start : start + batch], dtype=np.float32)


def _timed(predict, images, *, one_at_a_time: bool) -> tuple[np.ndarray, float]:
    """Probabilities of ``images`` and ms per image: after a warm-up call, timed a batch at a time, or one image
    at a time (the runtimes whose batch-1 call is what an app makes)."""
    predict(np.zeros((1, *images.shape[1:]), np.float32))  # warm-up
    out, elapsed = [], 0.0
    for x in _batches(images):
        for part in [x[i : i + 1] for i in range(len(x))] if one_at_a_time else [x]:
            t0 = time.perf_counter()
            out.append(predict(part))
            elapsed += time.perf_counter() - t0
    return np.concatenate(out), elapsed * 1000 / len(images)


def run_format(bundle: Path, fmt: str, images) -> tuple[np.ndarray, float, str]:
    """Probabilities, mean latency (ms per image at batch 1) and a runtime note for one artifact."""
    spec = formats.get(fmt)
    path = spec.path(bundle)
    if spec.family == "savedmodel":  # probabilities a batch at a time; the batch-1 latency on the first few images
        _, fn = savedmodel.load_signature(path)
        probs, _ = _timed(fn, images, one_at_a_time=False)
        _, ms = _timed(fn, images[:RUNTIME_LATENCY_IMAGES], one_at_a_time=True)
        return probs, ms, spec.runtime
    if spec.family == "tflite":
        interp = tflite.interpreter(path)
        probs, ms = _timed(lambda x: tflite.predict(interp, x), images, one_at_a_time=False)
        return probs, ms, spec.runtime
    if spec.family == "onnx":
        from export import onnx_export

        sess = onnx_export.session(path)
        probs, ms = _timed(lambda x: onnx_export.predict(sess, x), images, one_at_a_time=True)
        return probs, ms, spec.runtime
    return _tfjs_outcome(tfjs.predict(path, images))


def _tfjs_outcome(result: tfjs.TfjsResult) -> tuple[np.ndarray, float, str]:
    note = f"TF.js {result.backend} backend in Node" + (f" ({result.note})" if result.note else "")
    return result.probs, float(np.mean(result.latency_ms)), note


def run_formats_timed(bundle: Path, names: list[str], images) -> dict[str, tuple[tuple | BaseException, float]]:
    """Each format's outcome (probabilities, latency, runtime note; or the runtime's error, as its row says it) and
    seconds; the TF.js models share one Node process (Node and its backend start once)."""
    out: dict[str, tuple[tuple | BaseException, float]] = {}
    graph_models = [f for f in names if formats.get(f).family == "tfjs"]
    if graph_models:
        t0 = time.perf_counter()
        try:
            results = tfjs.predict_many([artifact_path(bundle, f) for f in graph_models], images)
            out.update({f: (_tfjs_outcome(r), r.seconds) for f, r in zip(graph_models, results, strict=True)})
        except (tfjs.TfjsRuntimeMissing, RuntimeError) as exc:
            seconds = (time.perf_counter() - t0) / len(graph_models)
            out.update({f: (exc, seconds) for f in graph_models})
    for fmt in names:
        if fmt in out:
            continue
        t0 = time.perf_counter()
        try:
            outcome: tuple | BaseException = run_format(bundle, fmt, images)
        except (tfjs.TfjsRuntimeMissing, RuntimeError) as exc:
            outcome = exc
        out[fmt] = (outcome, time.perf_counter() - t0)
    return out


def keras_reference(model, images) -> tuple[np.ndarray, float]:
    """Keras probabilities (in batches) and its latency per image at batch 1 (on the first few images)."""
    probs = np.concatenate([np.asarray(model.predict_on_batch(x)) for x in _batches(images)])
    first = np.asarray(images[:LATENCY_IMAGES], dtype=np.float32)
    model(first[:1], training=False)
    t0 = time.perf_counter()
    for i in range(len(first)):
        model(first[i : i + 1], training=False)
    return probs, (time.perf_counter() - t0) * 1000 / max(len(first), 1)


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row."""
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.concatenate([np.zeros_like(probs), probs], 1)
    return top2[:, 1] - top2[:, 0]


def compare(fmt: str, probs: np.ndarray, keras_probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The comparison figures of one format against Keras, and its gate."""
    n = len(labels)
    ref_top, top = keras_probs.argmax(1), probs.argmax(1)
    agree = top == ref_top
    keras_acc = float((ref_top == labels).mean())
    accuracy = float((top == labels).mean())
    row: dict[str, Any] = {
        "agreement": float(agree.mean()),
        "accuracy": accuracy,
        "accuracy_change": round((accuracy - keras_acc) * 100, 4),
        "max_abs_diff": float(np.abs(probs - keras_probs).max()),
    }
    gate = formats.get(fmt).gate
    if gate is None:  # float32: must agree exactly
        ok = row["agreement"] == 1.0 and row["max_abs_diff"] <= 1e-4
        row.update(
            passed=ok,
            note=""
            if ok
            else (
                f"needs 100% top-1 agreement and max |dp| <= 1e-4 (got "
                f"{row['agreement']:.2%}, {row['max_abs_diff']:.2e})"
            ),
        )
        return row
    decided = margins(keras_probs) > 2 * gate.tolerance
    near_ties = int((~agree & ~decided).sum())
    counted = float(agree[decided].mean()) if decided.any() else 1.0
    loss = (
        ((ref_top[decided] == labels[decided]).mean() - (top[decided] == labels[decided]).mean()) * 100
        if decided.any()
        else 0.0
    )
    row.update(
        decided_images=int(decided.sum()),
        near_tie_flips=near_ties,
        counted_agreement=counted,
        decided_loss_points=round(float(loss), 4),
        tolerance=gate.tolerance,
    )
    problems = []
    if counted < gate.min_agreement:
        problems.append(
            f"needs >= {gate.min_agreement:.0%} top-1 agreement on images with a Keras margin above "
            f"{2 * gate.tolerance:g} (got {counted:.2%} of {int(decided.sum())})"
        )
    if loss > gate.max_loss_points:
        problems.append(f"loses {loss:.1f} accuracy points on those images (at most {gate.max_loss_points:g})")
    notes = problems[:]
    if near_ties:
        notes.append(
            f"{near_ties} near-tie flip{'s' if near_ties > 1 else ''} of {n} (Keras margin <= "
            f"{2 * gate.tolerance:g}), not counted"
        )
    if not problems and gate.warn_loss_points is not None and -row["accuracy_change"] > gate.warn_loss_points:
        notes.append(f"warning: loses {-row['accuracy_change']:.1f} accuracy points")
    row.update(passed=not problems, note="; ".join(notes))
    return row


def enforce_order(rows: dict[str, dict[str, Any]]) -> None:
    """A format never passes where a less lossy one of its runtime family (or the SavedModel) failed."""
    specs = {f: formats.get(f) for f in rows if f in formats.REGISTRY}
    for fmt, row in rows.items():
        if fmt not in specs or not row.get("passed"):
            continue
        worse = [
            f
            for f, s in specs.items()
            if not rows[f].get("passed")
            and s.level < specs[fmt].level
            and (s.family == specs[fmt].family or s.family == "savedmodel")
        ]
        if worse:
            row["passed"] = False
            row["note"] = "; ".join(
                filter(None, [f"fails because {', '.join(worse)} (less lossy) failed", row.get("note")])
            )


def mediapipe_row(
    bundle: Path, fmt: str, images, litert_probs: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """MediaPipe's ImageClassifier on one TFLite file, compared with LiteRT on the same file and pixels."""
    from export import mediapipe_tasks

    path = artifact_path(bundle, fmt)
    try:
        result = mediapipe_tasks.classify(path, images)
    except RuntimeError as exc:
        return {
            "runtime": "MediaPipe ImageClassifier",
            "passed": False,
            "note": str(exc),
            "size_bytes": size_bytes(path),
        }
    expected = [classes[i] for i in litert_probs.argmax(1)]
    agree = np.array([a == b for a, b in zip(result.top1, expected, strict=True)], dtype=bool)
    accuracy = float(np.mean([name == classes[y] for name, y in zip(result.top1, labels, strict=True)]))
    decided = margins(litert_probs) > mediapipe_tie(path, fmt)
    counted = float(agree[decided].mean()) if decided.any() else 1.0
    near_ties = int((~agree & ~decided).sum())
    need = 1.0 if fmt == "tflite-float32" else 0.99
    problems = []
    if result.names != list(classes):
        problems.append(f"category names {result.names} differ from labels.txt")
    if counted < need:
        problems.append(f"needs top-1 category name equal to LiteRT's on >= {need:.0%} (got {counted:.2%})")
    probs = result.probs if result.probs.shape == litert_probs.shape else None
    notes = problems or [f"same top-1 as LiteRT ({fmt}); category names = labels.txt"]
    if near_ties:
        notes.append(
            f"{near_ties} LiteRT near-tie{'s' if near_ties > 1 else ''} (top two within "
            f"{MEDIAPIPE_TIE_STEPS} output steps) decided the other way, not counted"
        )
    return {
        "runtime": "MediaPipe ImageClassifier",
        "agreement": float(agree.mean()),
        "counted_agreement": counted,
        "near_tie_flips": near_ties,
        "accuracy": accuracy,
        "max_abs_diff": float(np.abs(probs - litert_probs).max()) if probs is not None else None,
        "latency_ms": result.latency_ms,
        "size_bytes": size_bytes(path),
        "passed": not problems,
        "note": "; ".join(notes),
    }


def mediapipe_tie(path: Path, fmt: str) -> float:
    """How close LiteRT's two best scores may be for MediaPipe to decide either way: on a file with a quantized
    output, :data:`MEDIAPIPE_TIE_STEPS` of its quantization steps; on float outputs, an exact tie only."""
    if not formats.get(fmt).integer_output:
        return 0.0
    scale = tflite.io_details(path)["output"]["quantization"]["scale"]
    return MEDIAPIPE_TIE_STEPS * scale


def verify(
    bundle: Path,
    names: list[str],
    keras_model,
    images,
    labels: np.ndarray,
    *,
    classes: list[str] | None = None,
    progress: ProgressFn | None = None,
    elsewhere=None,
    reference=None,
) -> dict[str, Any]:
    """Verifies each format against the Keras model on ``images``; returns the verify.json content.

    Args:
        bundle: The bundle folder.
        names: Formats in the bundle to verify.
        keras_model: The trained inference model (the reference).
        images: Raw RGB pixels [N, S, S, 3] (the uint8 cache, read a batch at a time).
        labels: True class index of each image.
        classes: Class names (default: labels.txt of the bundle); MediaPipe's category names must equal them.
        progress: Called with "verifying FORMAT on N images" before each format.
        elsewhere: The export's second process (a ``multiprocessing`` pool of one): the formats of
            ``formats.CHECKED_ELSEWHERE`` run there while this process runs the rest.
        reference: The Keras reference computed elsewhere on the same images (an ``AsyncResult`` of
            (probabilities, ms per image, seconds) of :func:`keras_reference`); None: computed here.
    """
    say = progress or (lambda _msg: None)
    n = len(images)
    classes = classes or (bundle / "labels.txt").read_text(encoding="utf-8").splitlines()
    there = {}  # format -> (its job in the second process, its key there): they run while this process works
    if elsewhere is not None:
        shipped = np.asarray(images)  # the pixels themselves (a map of a nameless file cannot be opened there)
        families: dict[str, list[str]] = {}  # one job a family: both TF.js models in one Node run
        for fmt in names:
            if formats.get(fmt).family in formats.CHECKED_ELSEWHERE:
                families.setdefault(formats.get(fmt).family, []).append(fmt)
        for fmts in families.values():
            job = elsewhere.apply_async(run_formats_timed, (bundle, fmts, shipped))
            there.update({fmt: (job, fmt) for fmt in fmts})
    say(f"verifying keras (reference) on {n} images")
    t0 = time.perf_counter()
    if reference is not None:
        keras_probs, keras_latency, seconds = reference.get()
    else:
        keras_probs, keras_latency = keras_reference(keras_model, images)
        seconds = time.perf_counter() - t0
    keras_acc = float((keras_probs.argmax(1) == labels).mean())
    rows: dict[str, dict[str, Any]] = {
        "keras": {
            "runtime": "Keras",
            "agreement": 1.0,
            "accuracy": keras_acc,
            "accuracy_change": 0.0,
            "max_abs_diff": 0.0,
            "latency_ms": keras_latency,
            "size_bytes": None,
            "passed": True,
            "seconds": round(seconds, 2),
            "note": "reference (Keras, batch 1)",
        }
    }
    litert: dict[str, np.ndarray] = {}

    def row(fmt: str, outcome: tuple | BaseException, seconds: float) -> dict[str, Any]:
        if isinstance(outcome, BaseException):
            return {
                "passed": False,
                "note": f"not verified: {outcome}",
                "size_bytes": size_bytes(artifact_path(bundle, fmt)),
                "seconds": round(seconds, 2),
            }
        probs, latency, runtime = outcome
        if formats.get(fmt).mediapipe:
            litert[fmt] = probs
        return {
            "runtime": runtime,
            **compare(fmt, probs, keras_probs, labels),
            "latency_ms": latency,
            "size_bytes": size_bytes(artifact_path(bundle, fmt)),
            "seconds": round(seconds, 2),
        }

    local = [f for f in names if f not in there]
    graph_models = [f for f in local if formats.get(f).family == "tfjs"]
    for fmt in graph_models:
        say(f"verifying {fmt} on {n} images")
    done = run_formats_timed(bundle, graph_models, images)  # one Node run for all of them
    for fmt in local:
        if fmt not in done:
            say(f"verifying {fmt} on {n} images")
            done.update(run_formats_timed(bundle, [fmt], images))
        rows[fmt] = row(fmt, *done[fmt])
    mediapipe_rows = {}  # checked before the second process's rows are awaited: meanwhile, it still runs
    for fmt, probs in litert.items():
        say(f"verifying {fmt} in MediaPipe on {n} images")
        t0 = time.perf_counter()
        mp = mediapipe_row(bundle, fmt, images, probs, labels, classes)
        if "accuracy" in mp:
            mp["accuracy_change"] = round((mp["accuracy"] - keras_acc) * 100, 4)
        mediapipe_rows[formats.get(fmt).mediapipe_row] = {**mp, "seconds": round(time.perf_counter() - t0, 2)}
    for fmt, (pending, key) in there.items():
        say(f"verifying {fmt} on {n} images (second process)")
        rows[fmt] = row(fmt, *pending.get()[key])
    rows = {"keras": rows["keras"], **{fmt: rows[fmt] for fmt in names}}
    enforce_order(rows)
    rows.update(mediapipe_rows)
    return {"images": int(n), "passed": all(r["passed"] for r in rows.values()), "formats": rows}


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(result: dict[str, Any]) -> str:
    """The verification result as a plain-text table (the format table users choose from)."""
    lines = [
        f"verified on {result['images']} held-out images",
        f"{'format':<18} {'size':>11} {'ms/img':>8} {'agree':>8} {'acc chg':>8} {'max|dp|':>9} {'near-ties':>9}"
        f"  result",
    ]
    for fmt, r in result["formats"].items():
        verdict = "ok" if r["passed"] else "FAIL"
        size = f"{r['size_bytes']:,}" if r.get("size_bytes") else "-"
        lines.append(
            f"{fmt:<18} {size:>11} {_fmt(r.get('latency_ms'), '.2f'):>8} {_fmt(r.get('agreement'), '.2%'):>8} "
            f"{_fmt(r.get('accuracy_change'), '+.2f'):>8} {_fmt(r.get('max_abs_diff'), '.2e'):>9} "
            f"{_fmt(r.get('near_tie_flips'), 'd'):>9}  {verdict} {r.get('note', '')}".rstrip()
        )
    return "\n".join(lines)
