"""The learning-rate finder (fastai's ``lr_find``, after Leslie Smith's LR range test) for the head phase.

The train and val splits go once through the frozen base (the pooled features the head phase trains on when the
base is frozen); then the head (dropout + dense, Adam, the run's loss) trains one batch a step while the learning
rate grows exponentially from ``start`` to ``end``, and the loss on the val images is read after each step (the
training batches' own loss never turns up on a few hundred images: a linear head separates them at any rate). The
curve is smoothed (an exponential moving average, bias-corrected, as fastai does) and the sweep stops once it
exceeds :data:`DIVERGED` times its lowest value. The suggestion is fastai's ``lr_min``: a tenth of the rate at the
lowest smoothed loss, below the rate where the loss diverges. Nothing is written to a run: seconds on cached
features, then the person (or the tuner) applies the value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config as config_mod
from pipeline import data as data_mod
from pipeline.config import RunConfig
from pipeline.host import paths
from pipeline.host.background import Background
from pipeline.host.exitcodes import UserError

RESULT_NAME = "lr_find.json"
SWEEP = Background(status_name="lr_find.status.json", log_name="lr_find.log")
DIVERGED = 4.0  # the smoothed loss this many times its minimum: the sweep has gone past usable rates
SMOOTHING = 0.9  # about 10 steps of memory: over a 100-step sweep 0.98 (fastai's) lags the turn by half the sweep


def sweep(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cfg: RunConfig,
    *,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
) -> dict[str, Any]:
    """The LR range test of a fresh head on ``features``: rates, raw and smoothed losses, the suggestion.

    With ``held_out`` (features, labels) the curve is the loss on those images after each step (Smith's range test
    watched validation figures): on a few hundred images a linear head separates its training batches at any rate,
    so their loss never turns up, while the held-out loss does once the steps are too large.
    """
    import keras

    from pipeline.training.optimizer import adam

    keras.utils.set_random_seed(cfg.train.seed)
    inputs = keras.Input(shape=(features.shape[1],))
    x = keras.layers.Dropout(cfg.model.dropout, seed=cfg.train.seed)(inputs)
    head = keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x))
    head.compile(
        optimizer=adam(start, fused=False),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
    )
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    rng = np.random.default_rng(cfg.train.seed)
    batch = min(cfg.train.batch_size, len(features))
    order = rng.permutation(len(features))
    rates, losses, smoothed = [], [], []
    average, best, position = 0.0, np.inf, 0
    for step in range(steps):
        lr = start * (end / start) ** (step / (steps - 1))
        head.optimizer.learning_rate = lr
        if position + batch > len(order):
            order, position = rng.permutation(len(features)), 0
        idx = order[position : position + batch]
        position += batch
        loss = float(np.asarray(head.train_on_batch(features[idx], onehot[idx])).reshape(-1)[0])
        if held_out is not None:
            probs = np.asarray(head.predict_on_batch(held_out[0]), dtype=np.float64)
            loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(held_out[1])), held_out[1]], 1e-12, 1.0))))
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        value = average / (1 - SMOOTHING ** (step + 1))
        rates.append(lr)
        losses.append(loss)
        smoothed.append(value)
        if not np.isfinite(value) or value > DIVERGED * best:
            break
        best = min(best, value)
    low = int(np.nanargmin(smoothed))
    diverged = len(rates) < steps
    return {
        "learning_rates": rates,
        "losses": losses,
        "smoothed": smoothed,
        "lowest_loss_at": rates[low],
        "diverged_at": rates[-1] if diverged else None,
        "suggestion": max(rates[low] / 10, start),
        "start": start,
        "end": end,
        "batch_size": batch,
        "curve": "held-out loss" if held_out is not None else "training loss",
    }


class LrFindError(UserError, ValueError):
    """The sweep cannot say anything for these settings; the message says why."""


def usable(cfg: RunConfig) -> str | None:
    """Why the sweep cannot help these settings, or None: it reads a head on a pretrained base's features, and a
    base with random values gives features no head learns from (and a from-scratch run trains every layer)."""
    if cfg.train.strategy == "from_scratch" or cfg.model.weights == "none" or cfg.model.backbone == "small_cnn":
        return (
            "the learning-rate finder sweeps the head on a pretrained base's features; these settings train "
            f"{cfg.model.backbone} from random values (train.strategy={cfg.train.strategy}, "
            f"model.weights={cfg.model.weights}). Choose a pretrained backbone and a transfer strategy"
        )
    return None


def find(source: str, cfg: RunConfig, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The LR range test on ``source``'s train split (scanned and split as a run with ``cfg`` would be).

    Raises:
        LrFindError: the settings train from random values; DataError: the data cannot be used;
        WeightsUnavailableError: the base's weights are not here.
    """
    if (why := usable(cfg)) is not None:
        raise LrFindError(why + ".")
    from pipeline.data import revision
    from pipeline.training import model as model_mod

    t0 = time.perf_counter()
    folder = data_mod.resolve_source(source, cfg.data)
    report, _ = revision.scan(folder, cfg.data, size=cfg.model.image_size)
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
    models = model_mod.build_models(cfg, len(splits.classes))
    features, labels = {}, {}
    for split in ("train", "val"):
        files = [str(Path(splits.root) / rel) for rel, _ in getattr(splits, split)]
        labels[split] = np.array([label for _, label in getattr(splits, split)], dtype=np.int64)
        features[split] = model_mod.pooled_features(cfg, files, models.features, progress=progress)
    if progress:
        progress(f"sweeping the learning rate over {len(labels['train'])} images")
    held_out = (features["val"], labels["val"]) if len(labels["val"]) else None
    result = sweep(features["train"], labels["train"], len(splits.classes), cfg, held_out=held_out)
    result["images"] = len(labels["train"])
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


# === In the background (the Train page) ===


def folder_for(source: str, cfg: RunConfig, revision: int = 0) -> Path:
    """Where the sweep of ``source`` (at its dataset ``revision``) with these settings keeps its config, status,
    log and result."""
    import hashlib

    settings = cfg.to_dict()
    for name in ("learning_rate", "fine_tune_learning_rate", "head_epochs", "fine_tune_epochs", "lr_schedule"):
        settings["train"].pop(name, None)  # what the sweep does not depend on: applying its suggestion keeps it
    key = hashlib.sha256(json.dumps([str(source), revision, settings], sort_keys=True).encode()).hexdigest()[:20]
    return paths.home() / "lr_find" / key


def running() -> bool:
    """Whether a sweep runs on this server now (one at a time: each is a TensorFlow process)."""
    root = paths.home() / "lr_find"
    return root.is_dir() and any(
        (SWEEP.read(folder) or {}).get("state") == "running" for folder in root.iterdir() if folder.is_dir()
    )


def start_background(source: str, cfg: RunConfig, revision: int = 0) -> Path:
    """Starts ``python -m pipeline lr-find SOURCE --config CONFIG --out lr_find.json`` as its own process."""
    folder = folder_for(source, cfg, revision)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT_NAME).unlink(missing_ok=True)  # "sweep again": the old result is not the new one
    config_mod.save(cfg, folder / "config.json")
    SWEEP.start(folder, "pipeline", "lr-find", str(source), "--config", str(folder / "config.json"), "--out",
                str(folder / RESULT_NAME))  # fmt: skip
    return folder


def background_status(source: str, cfg: RunConfig, revision: int = 0) -> dict[str, Any]:
    """``state``: none, running (``step``), done (``result``) or failed (``error``) for these settings."""
    return SWEEP.outcome(folder_for(source, cfg, revision), RESULT_NAME, "the learning-rate sweep")
