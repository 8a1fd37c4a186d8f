"""The training callbacks: progress and cancel, cached-feature validation, and the epoch commit.

The epoch commit is what makes a run resumable to the epoch: at each epoch end it writes the model's and
the optimizer's variables (keyed by each variable's ``path``), the best weights when they improved, then
``state.json`` (epochs and optimizer steps done per phase: the commit point), then the epoch's line in
``metrics.jsonl``. Nothing here sets a private Keras attribute: where a phase resumes is read from
``state.json`` by :mod:`pipeline.training.train` and given to ``fit`` as ``initial_epoch``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from pipeline.host.atomic import fault_point
from pipeline.runs import events
from pipeline.runs.folder import RunFolder, TrainingCancelled, save_variables
from pipeline.runs.ledger import Ledger

EventFn = Callable[[dict[str, Any]], None]


# === What a checkpoint holds ===


def _leaf_layers(layer):
    children = getattr(layer, "layers", None)
    if not children:
        yield layer
        return
    for child in children:
        yield from _leaf_layers(child)


def checkpoint_variables(model, optimizer=None) -> dict[str, Any]:
    """The variables a checkpoint saves, keyed by name (never by position).

    Weights are keyed by their ``path`` (``Conv1/kernel``); a layer's random-seed state by its layer's
    name (``head_dropout/seed_generator_state``: the seed generator's own path changes with every model built in
    one process); the optimizer's by their path below the optimizer (``optimizer/iteration``,
    ``optimizer/predictions_kernel_momentum``), since each phase compiles a new optimizer (a mixed-precision
    LossScaleOptimizer's own variables under ``optimizer/loss_scale/``).

    Raises:
        ValueError: two variables would share a name (the model names two layers alike).
    """
    owned = {}
    for layer in _leaf_layers(model):
        weights = {id(w) for w in layer.weights}
        for v in layer.variables:
            if id(v) not in weights:
                owned[id(v)] = f"{layer.name}/{v.name}"
    out: dict[str, Any] = {}

    def add(key: str, variable) -> None:
        if key in out and out[key] is not variable:
            raise ValueError(f"two variables of {model.name} are both named {key}; name the layers apart")
        out[key] = variable

    for v in model.variables:
        add(owned.get(id(v), v.path), v)
    if optimizer is not None:
        # A LossScaleOptimizer (mixed precision on a GPU) wraps the real one: its own counters go apart.
        inner = getattr(optimizer, "inner_optimizer", None)
        inner_ids = {id(v) for v in inner.variables} if inner is not None else set()
        for v in optimizer.variables:
            scope = "optimizer/" if inner is None or id(v) in inner_ids else "optimizer/loss_scale/"
            add(scope + v.path.split("/", 1)[-1], v)
    return out


# === Callbacks ===


class Progress(keras.callbacks.Callback):
    """Writes a progress line every ``every`` batches and raises :class:`TrainingCancelled` on request."""

    def __init__(self, emit: EventFn, phase: str, steps: int, every: int, cancelled: Callable[[], bool]):
        super().__init__()
        self.emit, self.phase, self.steps, self.every, self.cancelled = emit, phase, steps, every, cancelled
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.cancelled():
            raise TrainingCancelled()
        logs = logs or {}
        if (batch + 1) % self.every == 0 and batch + 1 < self.steps:
            self.emit(
                {
                    "event": events.PROGRESS,
                    "phase": self.phase,
                    "epoch": self.epoch + 1,
                    "batch": batch + 1,
                    "steps": self.steps,
                    "loss": float(logs.get("loss", float("nan"))),
                    "accuracy": float(logs.get("accuracy", float("nan"))),
                }
            )


class Validation(keras.callbacks.Callback):
    """``val_loss`` and ``val_accuracy`` from ``predict()`` (the validation split's probabilities, in order).

    Used where fit's own ``validation_data`` does not fit: the cached-feature head (:class:`FeatureValidation`)
    and, on JAX, the whole model (a data-parallel step cannot take a last batch of odd size; the prediction
    pads it and drops the padding).
    """

    def __init__(self, predict: Callable[[], Any], onehot: np.ndarray, label_smoothing: float):
        super().__init__()
        self.predict, self.onehot = predict, onehot
        self.loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)

    def on_epoch_end(self, epoch, logs=None):
        probs = np.asarray(self.predict(), dtype=np.float32)
        logs["val_loss"] = float(self.loss(self.onehot, probs))
        logs["val_accuracy"] = float(np.mean(np.argmax(probs, axis=1) == np.argmax(self.onehot, axis=1)))


class FeatureValidation(Validation):
    """``val_loss`` and ``val_accuracy`` from validation features computed once (head phase).

    Equal to ``validation_data`` through the whole model (augmentation and dropout are the identity
    at inference, the frozen base gives the same features every epoch) without running the base on
    the validation images every epoch or tracing a test function.
    """

    def __init__(self, head, features: np.ndarray, onehot: np.ndarray, label_smoothing: float):
        super().__init__(lambda: head(features, training=False), onehot, label_smoothing)


class EpochCommit(keras.callbacks.Callback):
    """Commits each finished epoch to the run folder, in an order a kill at any moment cannot break.

    1. ``checkpoints/backup_<phase>/epoch-NNNN.npz``: the fitted model's and its optimizer's variables
       (weights, Adam moments, the step counter, random-seed states);
    2. ``checkpoints/best-<phase>-<epoch>.npz`` when val_accuracy (then val_loss) improved on the run's best;
    3. ``state.json``: epochs and optimizer steps done in the phase, early-stopping counters, the best, and
       the epoch's record (the commit: from here on the epoch counts as trained);
    4. the epoch's line in metrics.jsonl (re-appended from state.json on resume if a kill cut it off);
    5. older checkpoints removed: the last two epochs of the phase are kept.

    Early stopping (``patience`` > 0) follows Keras's ``EarlyStopping(monitor="val_loss")`` but keeps its
    counters in state.json, so a resumed phase stops where an uninterrupted one would.
    """

    def __init__(
        self,
        run: RunFolder,
        state: Ledger,
        phase: str,
        epochs: int,
        *,
        inference,
        n_images: int,
        epoch_offset: int,
        patience: int,
        emit: EventFn,
        keep: int = 2,
        input_wait=None,
    ):
        super().__init__()
        self.run, self.state, self.phase, self.epochs = run, state, phase, epochs
        self.inference, self.n_images, self.epoch_offset = inference, n_images, epoch_offset
        self.patience, self.emit, self.keep = patience, emit, keep
        self.input_wait, self.wait0 = input_wait, 0.0  # a feed's WaitClock: seconds spent waiting for batches
        self.t0 = self.t_train_end = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = self.t_train_end = time.perf_counter()
        self.wait0 = self.input_wait.seconds if self.input_wait is not None else 0.0

    def on_train_batch_end(self, batch, logs=None):
        self.t_train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        done = epoch + 1
        optimizer = self.model.optimizer
        steps = int(keras.ops.convert_to_numpy(optimizer.iterations))
        record = {
            "time": round(time.time(), 3),
            "event": events.EPOCH,
            "phase": self.phase,
            "epoch": done,
            "epochs": self.epochs,
            "global_epoch": self.epoch_offset + done,
            "steps": steps,
            "loss": float(logs["loss"]),
            "accuracy": float(logs["accuracy"]),
            "val_loss": float(logs["val_loss"]),
            "val_accuracy": float(logs["val_accuracy"]),
            "lr": float(np.asarray(optimizer.learning_rate)),
            "seconds": round(time.perf_counter() - self.t0, 3),
            "images_per_second": round(self.n_images / max(self.t_train_end - self.t0, 1e-9), 2),
        }
        if self.input_wait is not None:
            record["input_wait_seconds"] = round(self.input_wait.seconds - self.wait0, 3)
        save_variables(
            self.run.epoch_checkpoint(self.phase, done),
            checkpoint_variables(self.model, optimizer),
            epoch=done,
            steps=steps,
            fault="checkpoint-write",
        )

        if self.state.is_best(record["val_accuracy"], record["val_loss"]):
            path = self.run.best_file(self.phase, done)
            save_variables(path, checkpoint_variables(self.inference))
            self.state.set_best(self.phase, done, record["val_accuracy"], record["val_loss"], file=path.name)
        if self.state.commit_epoch(self.phase, record, patience=self.patience):
            self.model.stop_training = True
        self.run.write_state(self.state)  # the commit
        fault_point("epoch-committed")
        self.emit(record)
        self._prune(done)

    def _prune(self, done: int) -> None:
        for path in self.run.backup_dir(self.phase).glob("epoch-*.npz"):
            if int(path.stem.split("-")[1]) <= done - self.keep:
                path.unlink(missing_ok=True)
        keep = self.state.best.file if self.state.best else None
        for path in self.run.checkpoints.glob("best-*.npz"):
            if path.name != keep:
                path.unlink(missing_ok=True)
