"""Batch prediction: a finished run's model on many new images, streamed from disk into a CSV or JSON-lines file.

Images are found under folders (recursively, hidden names and links skipped) or given as files, decoded on threads
a batch at a time and predicted in batches, so memory stays flat in the number of images. Every file gets a row:
its top-k classes and probabilities, the margin (top-1 minus top-2 probability), ``near_tie`` (margin below
:data:`NEAR_TIE_MARGIN`) and ``uncertain`` (top-1 below the run's "none of these" threshold, calibrated on its
held-out images: the model only knows its classes), or the reason it could not be read. The output is written to a
temporary name and renamed when whole: a killed run leaves no half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data as data_mod
from pipeline.data.sources import is_hidden
from pipeline.host.atomic import atomic_write, atomic_write_json
from pipeline.host.background import Background
from pipeline.host.exitcodes import UserError

NEAR_TIE_MARGIN = 0.1  # top-1 minus top-2 below this: the model hesitates between the two
BATCH = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ProgressFn = Callable[[int, int], None]
# The app's predictions for a run (one at a time, the newest kept): the CSV, its counts, the status and the log.
APP_OUT = "predictions.csv"
APP_SUMMARY = "predictions.json"
APP = Background(status_name="predict.status.json", log_name="predict.log")


class PredictError(UserError, ValueError):
    """The prediction cannot start as asked (no images, an unknown output type); the message says why."""


@dataclass(frozen=True)
class Item:
    """One file to classify: where it is on disk and how the output names it."""

    path: Path
    name: str


def find_images(sources: Iterable[str | os.PathLike], shown: dict[Path, str] | None = None) -> list[Item]:
    """The files to classify: every image file under each folder (recursively, sorted; hidden names and links
    skipped), and each file given as it is (a file that is not an image then gets its row with the reason).

    Args:
        sources: Folders and files.
        shown: The name a folder's rows start with, or a file's row has, where it is not its own (a zip's
            extraction: the zip; an upload: the name it was given).

    Raises:
        PredictError: a source does not exist, or nothing to classify was found.
    """
    items: list[Item] = []
    shown = shown or {}
    for source in sources:
        root = Path(source).expanduser()
        if root.is_symlink() or not root.exists():
            raise PredictError(f"{root} does not exist (or is a link); give folders, a .zip or image files.")
        if root.is_file():
            items.append(Item(root, str(shown.get(root, root.name))))
            continue
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if any(is_hidden(part) for part in rel.parts) or path.is_symlink() or not path.is_file():
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append(Item(path, str(Path(shown.get(root, root.name)) / rel)))
    if not items:
        raise PredictError("no image files found in " + ", ".join(str(s) for s in sources) + ".")
    return items


def decode_items(items: list[Item], size: int, max_pixels: int) -> Iterator[tuple[Item, np.ndarray | None, str | None]]:
    """(item, pixels or None, error) in order, decoded on threads a batch ahead."""

    def one(item: Item):
        try:
            return item, data_mod.load_image(item.path, size, max_pixels=max_pixels), None
        except (data_mod.DataError, OSError) as exc:
            return item, None, str(exc).replace(str(item.path), item.name)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in range(0, len(items), BATCH):
            yield from pool.map(one, items[start : start + BATCH])


def rows(
    predict_batch: Callable[[np.ndarray], np.ndarray],
    classes: list[str],
    items: list[Item],
    size: int,
    *,
    top_k: int = 3,
    batch: int = BATCH,
    max_pixels: int = 89_478_485,
    threshold: float | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[dict[str, Any]]:
    """One row per item, in order: ``path``, ``top`` [(class, probability)...], ``margin``, ``near_tie``,
    ``uncertain`` (top-1 below ``threshold``; None without one), ``error``.

    ``predict_batch`` maps raw pixels [N, S, S, 3] (float32) to probabilities; it is called ``batch`` images at a
    time.
    """
    k = max(1, min(top_k, len(classes)))
    pending: list[tuple[Item, np.ndarray]] = []
    done = 0

    def flush() -> Iterator[dict[str, Any]]:
        nonlocal done
        if not pending:
            return
        probs = np.asarray(predict_batch(np.stack([p for _, p in pending]).astype("float32")))
        for (item, _), p in zip(pending, probs, strict=True):
            order = np.argsort(p)[::-1]
            margin = float(p[order[0]] - (p[order[1]] if len(order) > 1 else 0.0))
            yield {
                "path": item.name,
                "top": [(classes[i], float(p[i])) for i in order[:k]],
                "margin": margin,
                "near_tie": margin < NEAR_TIE_MARGIN,
                "uncertain": None if threshold is None else bool(p[order[0]] < threshold),
                "error": None,
            }
        done += len(pending)
        pending.clear()
        if progress:
            progress(done, len(items))

    for item, pixels, error in decode_items(items, size, max_pixels):
        if error is not None:
            yield from flush()  # rows stay in the order of the files
            done += 1
            if progress:
                progress(done, len(items))
            yield {"path": item.name, "top": [], "margin": None, "near_tie": None, "uncertain": None, "error": error}
            continue
        pending.append((item, pixels))
        if len(pending) == batch:
            yield from flush()
    yield from flush()


def write(out: Path, produced: Iterable[dict[str, Any]], top_k: int) -> dict[str, int]:
    """Streams the rows into ``out`` (.csv or .jsonl) under a temporary name renamed when whole; returns counts
    (images, classified, unreadable, uncertain)."""
    out = Path(out)
    if out.suffix not in (".csv", ".jsonl"):
        raise PredictError(f"--out {out}: give a .csv or .jsonl file name.")
    counts = {"images": 0, "classified": 0, "unreadable": 0, "uncertain": 0}

    def stream(fh) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        writer = csv.writer(text)
        if out.suffix == ".csv":
            writer.writerow(
                [
                    "path",
                    *[f"{w}_{i}" for i in range(1, top_k + 1) for w in ("class", "probability")],
                    "margin",
                    "near_tie",
                    "uncertain",
                    "error",
                ]
            )
        for row in produced:
            counts["images"] += 1
            counts["classified" if row["error"] is None else "unreadable"] += 1
            counts["uncertain"] += bool(row.get("uncertain"))
            if out.suffix == ".jsonl":
                text.write(json.dumps(row) + "\n")
                continue
            cells = [c for pair in row["top"] for c in (pair[0], f"{pair[1]:.6f}")]
            cells += [""] * (2 * top_k - len(cells))
            margin = "" if row["margin"] is None else f"{row['margin']:.6f}"
            flags = ["" if row[f] is None else str(row[f]).lower() for f in ("near_tie", "uncertain")]
            writer.writerow([row["path"], *cells, margin, *flags, row["error"] or ""])
        text.flush()
        text.detach()  # the file is atomic_write's to close

    atomic_write(out, stream)
    return counts


def predict_run(
    run_dir: str | Path,
    sources: Iterable[str | os.PathLike],
    out: str | Path,
    *,
    top_k: int = 3,
    shown: dict[Path, str] | None = None,
    runtime: Callable[[np.ndarray], np.ndarray] | None = None,
    batch: int = BATCH,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Classifies every image of ``sources`` into ``out`` with the run's Keras model, or with ``runtime`` (an
    exported file in its own runtime: ``export.runtimes``) at ``batch`` images a call; returns counts and seconds.

    Raises:
        PredictError, RunNotReadyError, DamagedFileError: said in one sentence each.
    """
    from pipeline.host.devices import select_backend
    from pipeline.runs.confidence import threshold_of_run
    from pipeline.runs.folder import load_model, load_run

    if Path(out).suffix not in (".csv", ".jsonl"):
        raise PredictError(f"--out {out}: give a .csv or .jsonl file name.")
    run, cfg, splits = load_run(run_dir)
    items = find_images(list(sources), shown)
    if runtime is None:
        select_backend(cfg.train.backend, strict=False)  # the run's backend where Keras is not loaded yet
        model = load_model(run)

        def runtime(x: np.ndarray) -> np.ndarray:
            return model.predict_on_batch(x)  # one traced call a batch (predict() sets up a loop each time)

    t0 = time.perf_counter()
    k = max(1, min(top_k, len(splits.classes)))
    counts = write(
        Path(out),
        rows(
            runtime,
            list(splits.classes),
            items,
            cfg.model.image_size,
            top_k=k,
            batch=batch,
            max_pixels=cfg.data.max_image_pixels,
            threshold=(threshold := threshold_of_run(run)),
            progress=progress,
        ),
        k,
    )
    seconds = time.perf_counter() - t0
    return {
        **counts,
        "seconds": round(seconds, 2),
        "images_per_second": round(counts["images"] / max(seconds, 1e-9), 1),
        "threshold": threshold,
        "out": str(out),
    }


# === In the background (the app) ===


def start_background(run_dir: str | Path, sources: dict[str, str]) -> None:
    """Starts ``python -m pipeline predict RUN_DIR SOURCES --out RUN_DIR/predictions.csv`` as its own process;
    ``sources``: each source's path and the name the CSV gives it (an upload's own name, not the server's)."""
    run = Path(run_dir)
    names = [arg for path, name in sources.items() for arg in ("--name", path, name)]
    APP.start(run, "pipeline", "predict", str(run), *sources, "--out", str(run / APP_OUT), "--summary",
              str(run / APP_SUMMARY), *names, sources=list(sources))  # fmt: skip


def background_status(run_dir: str | Path) -> dict[str, Any]:
    """``state``: none, running (``step``: "classified N/M"), done (``result``: the counts) or failed (``error``)."""
    return APP.outcome(run_dir, APP_SUMMARY, "the prediction")


def write_summary(path: str | Path, result: dict[str, Any]) -> None:
    """The counts the app shows beside the table (written when the CSV is whole)."""
    atomic_write_json(Path(path), {k: v for k, v in result.items() if k != "out"})
