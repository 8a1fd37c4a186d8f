"""Evaluation of a finished run: accuracy, per-class metrics, confusion matrix, confident mistakes.

The held-out split is read once, so it is not cached: it is decoded a batch ahead on a thread pool
(uint8, the same decoder as training's cache) and streamed through the model a batch at a time. Memory
holds two uint8 batches and one float32 batch, whatever the split's size (whole-run peak RSS for 200 and
2,000 test images: BENCHMARKS.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data as data_mod
from pipeline.host.atomic import atomic_write_json, fault_point
from pipeline.runs import events
from pipeline.runs.confidence import confidence_threshold
from pipeline.runs.folder import DamagedFileError, RunFolder, load_model, load_run
from pipeline.training.feed import PREDICT_BATCH

EventFn = Callable[[dict[str, Any]], None]


def predict_split(
    run_dir: str | Path,
    split: str | None = None,
    *,
    limit: int | None = None,
    on_event: EventFn | None = None,
    model=None,
) -> dict[str, Any]:
    """Runs the inference model over a split in batches: returns paths, labels and probabilities.

    Args:
        run_dir: A run folder holding model.keras.
        split: train, val or test (default: the evaluation split, test or val when there is none).
        limit: Only the first ``limit`` images.
        on_event: Called with ``{"event": "evaluate", "done": n, "total": N}`` after each batch.
        model: The run's model.keras already loaded (training evaluates the model it has just written).
    """
    run, cfg, splits = load_run(run_dir)
    from pipeline.host.devices import select_backend

    select_backend(cfg.train.backend, strict=False)  # the run's backend where Keras is not loaded yet
    split = split or splits.eval_split
    files = splits.paths(split)[:limit]
    relpaths = [rel for rel, _ in getattr(splits, split)][:limit]
    labels = splits.labels(split)[:limit]
    model = model if model is not None else load_model(run)
    probs = np.zeros((len(files), len(splits.classes)), dtype=np.float32)
    done = 0
    for batch in decoded_batches(files, cfg.model.image_size, PREDICT_BATCH, cfg.data.max_image_pixels):
        whole = np.concatenate([batch, np.repeat(batch[-1:], PREDICT_BATCH - len(batch), axis=0)])  # one shape
        probs[done : done + len(batch)] = np.asarray(model.predict_on_batch(whole))[: len(batch)]  # uint8, as trained
        done += len(batch)
        fault_point("evaluate")
        if on_event:
            on_event({"event": events.EVALUATE, "done": done, "total": len(files)})
    return {
        "split": split,
        "files": files,
        "relpaths": relpaths,
        "labels": labels,
        "probs": probs,
        "classes": list(splits.classes),
    }


def decoded_batches(files: Sequence[str], size: int, batch_size: int, max_pixels: int) -> Iterator[np.ndarray]:
    """uint8 batches of ``files`` resized to ``size``, the next batch decoding while the caller uses this one.

    Raises:
        data_mod.DataError: a file can no longer be decoded (changed since the scan).
    """
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:

        def submit(start: int) -> list:
            return [
                pool.submit(data_mod.load_image_cached, f, size, max_pixels=max_pixels)
                for f in files[start : start + batch_size]
            ]

        pending = submit(0)
        for start in range(0, len(files), batch_size):
            current, pending = pending, submit(start + batch_size)
            yield np.stack([f.result() for f in current])


def evaluate(run_dir: str | Path, *, mistakes: int = 24, on_event: EventFn | None = None, model=None) -> dict[str, Any]:
    """Evaluates the trained model on the test split (val when there is none) and writes eval.json (``model``: the
    run's model.keras already loaded)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    t0 = time.perf_counter()
    out = predict_split(run_dir, on_event=on_event, model=model)
    run = RunFolder(Path(run_dir).expanduser().resolve())
    classes, labels, probs = out["classes"], out["labels"], out["probs"]
    pred = probs.argmax(axis=1)
    k = len(classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=list(range(k)), zero_division=0
    )
    wrong = np.flatnonzero(pred != labels)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]])][:mistakes]
    matrix = confusion_matrix(labels, pred, labels=list(range(k)))

    def row(i: int) -> dict[str, Any]:
        return {
            "path": out["relpaths"][i],
            "file": out["files"][i],
            "true": classes[labels[i]],
            "predicted": classes[pred[i]],
            "probability": float(probs[i, pred[i]]),
            "true_probability": float(probs[i, labels[i]]),
        }

    result = {
        "split": out["split"],
        "images": int(len(labels)),
        "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
        "labels": classes,
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        # the validation split also chose the best checkpoint: its accuracy is optimistic
        "split_chose_checkpoint": out["split"] == "val",
        "confusion_matrix": matrix.tolist(),
        "confused_pairs": sorted(
            (
                {"true": classes[t], "predicted": classes[p], "images": int(matrix[t, p])}
                for t in range(k)
                for p in range(k)
                if t != p and matrix[t, p]
            ),
            key=lambda x: -x["images"],
        ),
        "mistakes": [row(i) for i in order],
        "predictions": [row(i) for i in range(len(labels))],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    result["confidence_threshold"] = confidence_threshold(result)
    atomic_write_json(run.eval, result, fault="eval-write")
    try:
        state = run.read_state()
    except DamagedFileError:
        return result  # training's resume repairs it
    if state.status == "evaluating":  # training finished and its evaluation was interrupted: now complete
        state.evaluated()
        run.write_state(state)
    return result


def cell(result: dict[str, Any], true: str, predicted: str) -> list[dict[str, Any]]:
    """The images of one confusion-matrix cell (true class, predicted class), most confident first."""
    rows = [p for p in result.get("predictions", []) if p["true"] == true and p["predicted"] == predicted]
    return sorted(rows, key=lambda p: -p["probability"])


def summary(result: dict[str, Any]) -> str:
    """Plain-text table of an eval.json."""
    lines = [
        f"accuracy on {result['split']} ({result['images']} images): {result['accuracy']:.4f}",
        f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>5}",
    ]
    for c, m in result["per_class"].items():
        lines.append(f"{c:<20} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>5}")
    if result.get("split_chose_checkpoint"):
        lines.append(
            "note: there is no test split; the validation split also chose the best checkpoint, so this "
            "accuracy is optimistic (add a test/ folder, or carve a test split: data.test_fraction, and "
            "with train/ and val/ folders data.test_from=train or val)"
        )
    for pair in result.get("confused_pairs", [])[:3]:
        lines.append(f"most confused: {pair['true']} taken for {pair['predicted']} ({pair['images']} images)")
    if result["mistakes"]:
        lines.append("most confident mistakes:")
        for m in result["mistakes"][:5]:
            lines.append(f"  {m['path']}: {m['true']} predicted {m['predicted']} ({m['probability']:.2f})")
    return "\n".join(lines)
