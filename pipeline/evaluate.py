"""Evaluation of a finished run: accuracy, per-class metrics, confusion matrix, confident mistakes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config as config_mod
from pipeline import data as data_mod
from pipeline.runfolder import RunFolder, atomic_write_json


class RunNotReadyError(ValueError):
    """The run folder lacks what the step needs (no trained model yet, missing files)."""


def load_run(run_dir: str | Path) -> tuple[RunFolder, config_mod.RunConfig, data_mod.Splits]:
    """Opens a run folder that holds a trained model.

    Raises:
        RunNotReadyError: in one sentence, what is missing.
    """
    run = RunFolder(Path(run_dir).expanduser().resolve())
    if not run.root.is_dir():
        raise RunNotReadyError(f"{run.root} is not a run folder (it does not exist).")
    for path, what in ((run.config, "config.json"), (run.dataset, "dataset.json"), (run.model, "model.keras")):
        if not path.exists():
            hint = "training has not finished" if what == "model.keras" else "it was not written by `pipeline train`"
            raise RunNotReadyError(f"{run.root} has no {what}: {hint}.")
    cfg = config_mod.load(run.config)
    dataset = json.loads(run.dataset.read_text(encoding="utf-8"))
    return run, cfg, data_mod.Splits.from_dict(dataset["splits"])


def load_model(run: RunFolder):
    import keras

    return keras.saving.load_model(run.model, compile=False)


def predict_split(run_dir: str | Path, split: str | None = None, *, limit: int | None = None) -> dict[str, Any]:
    """Runs the inference model over a split: returns paths, labels, probabilities and the raw images."""
    run, cfg, splits = load_run(run_dir)
    split = split or splits.eval_split
    files = splits.paths(split)[:limit]
    relpaths = [rel for rel, _ in getattr(splits, split)][:limit]
    labels = splits.labels(split)[:limit]
    cache = data_mod.ImageCache(files, cfg.model.image_size, memory_budget_mb=cfg.data.cache_memory_mb,
                                disk_dir=run.root / "cache-eval", max_pixels=cfg.data.max_image_pixels)
    try:
        model = load_model(run)
        images = np.asarray(cache.array, dtype=np.float32)
        probs = model.predict(images, batch_size=cfg.train.batch_size, verbose=0)
    finally:
        cache.close()
    return {"split": split, "files": files, "relpaths": relpaths, "labels": labels, "probs": probs, "images": images,
            "classes": list(splits.classes), "model": model}


def evaluate(run_dir: str | Path, *, mistakes: int = 24) -> dict[str, Any]:
    """Evaluates the trained model on the test split (val when there is none) and writes eval.json."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    t0 = time.perf_counter()
    out = predict_split(run_dir)
    run = RunFolder(Path(run_dir).expanduser().resolve())
    classes, labels, probs = out["classes"], out["labels"], out["probs"]
    pred = probs.argmax(axis=1)
    k = len(classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=list(range(k)), zero_division=0
    )
    wrong = np.flatnonzero(pred != labels)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]])][:mistakes]
    result = {
        "split": out["split"],
        "images": int(len(labels)),
        "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
        "labels": classes,
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(labels, pred, labels=list(range(k))).tolist(),
        "mistakes": [
            {
                "path": out["relpaths"][i],
                "file": out["files"][i],
                "true": classes[labels[i]],
                "predicted": classes[pred[i]],
                "probability": float(probs[i, pred[i]]),
                "true_probability": float(probs[i, labels[i]]),
            }
            for i in order
        ],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(run.eval, result)
    return result


def summary(result: dict[str, Any]) -> str:
    """Plain-text table of an eval.json."""
    lines = [f"accuracy on {result['split']} ({result['images']} images): {result['accuracy']:.4f}",
             f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>5}"]
    for c, m in result["per_class"].items():
        lines.append(f"{c:<20} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>5}")
    if result["mistakes"]:
        lines.append("most confident mistakes:")
        for m in result["mistakes"][:5]:
            lines.append(f"  {m['path']}: {m['true']} predicted {m['predicted']} ({m['probability']:.2f})")
    return "\n".join(lines)
