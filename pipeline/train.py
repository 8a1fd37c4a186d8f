"""Training: the Keras transfer-learning recipe, run into a run folder, resumable and cancellable.

Phases by strategy:

- ``feature_extraction``: ``head`` only, base frozen.
- ``fine_tune``: ``head`` (base frozen) then ``fine_tune`` (top ``unfreeze_top`` layers or all of the
  base unfrozen, recompiled at ``fine_tune_learning_rate``; BatchNorm stays in inference mode).
- ``freeze_first_k``: ``head`` then ``fine_tune`` with the first k base layers still frozen.
- ``from_scratch``: one ``scratch`` phase in which every layer trains from random values.

When the base is frozen and augmentation is off, the head phase runs on pooled features computed
once (the cached-feature path of the Keras guide) instead of running the base every epoch.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from pipeline import config as config_mod
from pipeline import data as data_mod
from pipeline import model as model_mod
from pipeline.config import RunConfig
from pipeline.runfolder import (
    CheckpointMismatchError,
    MetricsWriter,
    RunFolder,
    atomic_write_json,
    load_variables,
    save_variables,
)

EventFn = Callable[[dict[str, Any]], None]


class TrainingCancelled(Exception):
    """A cancel was requested (CANCEL file or SIGTERM); the last finished epoch's checkpoint is kept."""


class RunFolderError(ValueError):
    """The run folder cannot be used for this request; the message says why and what to do."""


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    learning_rate: float


def phases_for(cfg: RunConfig) -> list[Phase]:
    """The phases a strategy trains, in order."""
    t = cfg.train
    if t.strategy == "from_scratch":
        return [Phase("scratch", t.head_epochs, t.learning_rate)]
    out = [Phase("head", t.head_epochs, t.learning_rate)]
    if t.two_phase:
        out.append(Phase("fine_tune", t.fine_tune_epochs, t.fine_tune_learning_rate))
    return out


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


# === Preparing the run folder ===


def prepare_run(source: str, run_dir: str | Path, cfg: RunConfig, on_event: EventFn | None = None) -> tuple[RunFolder, RunConfig, data_mod.Splits]:
    """Creates (or reopens, to resume) a run folder: config.json and dataset.json with the exact splits.

    Raises:
        RunFolderError: the folder holds a different run, or a finished one.
        data_mod.DataError: the data cannot be used.
    """
    run = RunFolder(Path(run_dir).expanduser().resolve())
    if run.config.exists():
        saved = config_mod.load(run.config)
        if saved != cfg:
            raise RunFolderError(
                f"{run.root} already holds a run with a different configuration; "
                "use a new --run-dir, or resume it without changing its settings."
            )
        if run.read_state().get("status") == "done":
            raise RunFolderError(f"{run.root} holds a finished run; use a new --run-dir to train again.")
        dataset = json.loads(run.dataset.read_text(encoding="utf-8"))
        return run, saved, data_mod.Splits.from_dict(dataset["splits"])

    def scan_progress(done: int, total: int) -> None:
        if on_event:
            on_event({"event": "scan", "done": done, "total": total})

    folder = data_mod.resolve_source(source, cfg.data)
    report = data_mod.scan(folder, cfg.data, progress=scan_progress)
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.dataset, {"source": str(source), "scan": report.to_dict(), "splits": splits.to_dict()})
    config_mod.save(cfg, run.config)  # written last: its presence means the folder is a prepared run
    return run, cfg, splits


# === Callbacks ===


def _callbacks_module():
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """Writes epoch and progress lines to metrics.jsonl and raises TrainingCancelled on request."""

        def __init__(self, run: RunFolder, writer: MetricsWriter, phase: str, epochs: int, n_images: int,
                     steps: int, every: int, epoch_offset: int, cancel: threading.Event, on_event: EventFn | None):
            super().__init__()
            self.run, self.writer, self.phase, self.epochs = run, writer, phase, epochs
            self.n_images, self.steps, self.every, self.epoch_offset = n_images, steps, every, epoch_offset
            self.cancel, self.on_event = cancel, on_event

        def _emit(self, record: dict[str, Any]) -> None:
            record = {"time": round(time.time(), 3), **record}
            self.writer.write(record)
            if self.on_event:
                self.on_event(record)

        def _lr(self) -> float:
            return float(np.asarray(self.model.optimizer.learning_rate))

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch
            self.t0 = time.perf_counter()
            self.t_train_end = self.t0

        def on_train_batch_end(self, batch, logs=None):
            self.t_train_end = time.perf_counter()
            if self.cancel.is_set() or self.run.cancel_file.exists():
                raise TrainingCancelled()
            if (batch + 1) % self.every == 0 and batch + 1 < self.steps:
                self._emit({
                    "event": "progress", "phase": self.phase, "epoch": self._epoch + 1,
                    "batch": batch + 1, "steps": self.steps,
                    "loss": float(logs.get("loss", float("nan"))), "accuracy": float(logs.get("accuracy", float("nan"))),
                })

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            train_seconds = max(self.t_train_end - self.t0, 1e-9)
            self._emit({
                "event": "epoch", "phase": self.phase, "epoch": epoch + 1, "epochs": self.epochs,
                "global_epoch": self.epoch_offset + epoch + 1,
                "loss": float(logs["loss"]), "accuracy": float(logs["accuracy"]),
                "val_loss": float(logs["val_loss"]), "val_accuracy": float(logs["val_accuracy"]),
                "lr": self._lr(), "seconds": round(time.perf_counter() - self.t0, 3),
                "images_per_second": round(self.n_images / train_seconds, 2),
            })

    class Backup(keras.callbacks.Callback):
        """Resumes a phase at its last finished epoch: Keras's BackupAndRestore, made atomic and cheap.

        At each epoch end the model's and the optimizer's variables (step counter and Adam moments
        included) are written with :func:`save_variables` (one .npz, renamed into place) where Keras's
        own callback rewrites an HDF5 file in place, slower and not safe against a kill mid-write.
        """

        def __init__(self, backup_dir: Path):
            super().__init__()
            self.path = backup_dir / "latest.npz"

        def _variables(self) -> list:
            return list(self.model.variables) + list(self.model.optimizer.variables)

        def on_train_begin(self, logs=None):
            # Built here, eagerly: built inside the first traced step, Adam's variables cost ~2.5 s.
            if not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            if not self.path.exists():
                return
            self.model._initial_epoch = _load_checkpoint(self.path, self._variables())["epoch"]

        def on_epoch_end(self, epoch, logs=None):
            save_variables(self.path, self._variables(), epoch=epoch + 1)

    class BestCheckpoint(keras.callbacks.Callback):
        """Tracks the inference weights with the best val_accuracy (then val_loss) in memory.

        Writing them takes a moment, so the best weights are written by
        :meth:`flush` when the phase ends or is cancelled, not at every improving epoch; a crash
        loses only the in-memory copy (the Backup callback still resumes the run).
        """

        def __init__(self, run: RunFolder, inference, state: dict[str, Any]):
            super().__init__()
            self.run, self.inference, self.state = run, inference, state
            self.pending = None

        def on_epoch_end(self, epoch, logs=None):
            key = (float(logs["val_accuracy"]), -float(logs["val_loss"]))
            best = self.pending[0] if self.pending else self.state.get("best")
            if best is None or key > (best["val_accuracy"], -best["val_loss"]):
                snapshot = [np.array(w) for w in self.inference.get_weights()]
                self.pending = ({"val_accuracy": key[0], "val_loss": -key[1]}, snapshot)

        def flush(self) -> None:
            if self.pending is None:
                return
            best, snapshot = self.pending
            current = self.inference.get_weights()
            self.inference.set_weights(snapshot)
            save_variables(self.run.best_weights, self.inference.weights)
            self.inference.set_weights(current)
            self.state["best"] = best
            self.run.write_state(self.state)
            self.pending = None

    class FeatureValidation(keras.callbacks.Callback):
        """``val_loss`` and ``val_accuracy`` from validation features computed once (head phase).

        Equal to ``validation_data`` through the whole model (augmentation and dropout are the identity
        at inference, the frozen base gives the same features every epoch) without running the base on
        the validation images every epoch or tracing a test function.
        """

        def __init__(self, head, features: np.ndarray, onehot: np.ndarray, label_smoothing: float):
            super().__init__()
            self.head, self.features, self.onehot = head, features, onehot
            self.loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)

        def on_epoch_end(self, epoch, logs=None):
            probs = self.head(self.features, training=False)
            logs["val_loss"] = float(self.loss(self.onehot, probs))
            logs["val_accuracy"] = float(np.mean(np.argmax(probs, axis=1) == np.argmax(self.onehot, axis=1)))

    return SimpleNamespace(EpochLogger=EpochLogger, Backup=Backup, BestCheckpoint=BestCheckpoint,
                           FeatureValidation=FeatureValidation)


@functools.cache
def fused_adam_class():
    """Keras's Adam whose TensorFlow step is TensorFlow's own fused kernel, one op per variable.

    Keras 3 writes Adam's update as about a dozen small ops per variable; on TensorFlow ``ResourceApplyAdam``
    computes the same formula (``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``,
    ``var -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``) in one kernel. Measured on MobileNetV2
    alpha 0.35 at 224, fine-tuned at batch 32: the first step (tracing) about 1-2 s shorter, steady steps
    7-15% faster. Anything else (amsgrad, sparse gradients, another backend) takes Keras's own update.
    """
    import keras

    class FusedAdam(keras.optimizers.Adam):
        def update_step(self, gradient, variable, learning_rate):
            import tensorflow as tf

            if self.amsgrad or keras.backend.backend() != "tensorflow" or not isinstance(gradient, tf.Tensor):
                return super().update_step(gradient, variable, learning_rate)
            dtype = variable.dtype
            index = self._get_variable_index(variable)
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
                beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))

    return FusedAdam


def _handle(variable):
    """The resource handle of a tf.Variable, or of the tf.Variable inside a Keras variable."""
    return variable.handle if hasattr(variable, "handle") else variable.value.handle


def _schedule(phase: Phase, cfg: RunConfig, steps_per_epoch: int):
    import keras

    t = cfg.train
    if t.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            phase.learning_rate, decay_steps=steps_per_epoch, decay_rate=t.lr_decay_rate, staircase=True
        )
    if t.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(phase.learning_rate, decay_steps=steps_per_epoch * phase.epochs)
    return phase.learning_rate


def _compile(model, phase: Phase, cfg: RunConfig, steps_per_epoch: int, jit: bool) -> None:
    import keras

    model.compile(
        optimizer=fused_adam_class()(_schedule(phase, cfg, steps_per_epoch)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit,
    )


# === Training ===


def train(
    source: str,
    run_dir: str | Path,
    cfg: RunConfig | None = None,
    *,
    on_event: EventFn | None = None,
    evaluate_after: bool = True,
) -> RunFolder:
    """Trains ``source`` into ``run_dir`` (resuming a run folder that was interrupted).

    Args:
        source: Folder, zip or ``sample:digits``.
        run_dir: The run folder; created if missing.
        cfg: The configuration (defaults if None).
        on_event: Called with every record written to metrics.jsonl (for terminal or UI progress).
        evaluate_after: Write eval.json when training finishes.

    Raises:
        TrainingCancelled: a cancel was requested; re-running the same call resumes.
        data_mod.DataError, config_mod.ConfigError, backbones.WeightsUnavailableError, RunFolderError.
    """
    cfg = cfg or RunConfig()
    run, cfg, splits = prepare_run(source, run_dir, cfg, on_event)
    cancel = threading.Event()
    restore = _install_sigterm(cancel)
    writer = MetricsWriter(run.metrics)
    try:
        _train_phases(run, cfg, splits, writer, cancel, on_event)
    except TrainingCancelled:
        _record(writer, on_event, {"event": "cancelled"})
        state = run.read_state()
        run.write_state({**state, "status": "cancelled"})
        raise
    finally:
        writer.close()
        restore()
    if evaluate_after:
        from pipeline.evaluate import evaluate

        evaluate(run.root)
    return run


def _record(writer: MetricsWriter, on_event: EventFn | None, record: dict[str, Any]) -> None:
    record = {"time": round(time.time(), 3), **record}
    writer.write(record)
    if on_event:
        on_event(record)


def _install_sigterm(cancel: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    return lambda: signal.signal(signal.SIGTERM, previous)


def _train_phases(run: RunFolder, cfg: RunConfig, splits: data_mod.Splits, writer: MetricsWriter,
                  cancel: threading.Event, on_event: EventFn | None) -> None:
    import keras

    state = run.read_state()
    resumed = bool(state.get("phases_done")) or any(run.backup_dir(p.name).exists() for p in phases_for(cfg))
    state = {**state, "status": "running", "phases_done": state.get("phases_done", [])}
    run.write_state(state)
    _record(writer, on_event, {"event": "resumed" if resumed else "start", "phases": [p.name for p in phases_for(cfg)]})

    gpus = gpu_count()
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(cfg.train.seed)
    num_classes = len(splits.classes)
    def cache_progress(split):
        return lambda done, total: _record(writer, on_event, {"event": "cache", "split": split, "done": done, "total": total})

    def build_caches() -> dict[str, data_mod.ImageCache]:
        return {
            split: data_mod.ImageCache(
                splits.paths(split), cfg.model.image_size, memory_budget_mb=cfg.data.cache_memory_mb // 2,
                disk_dir=run.root / "cache", max_pixels=cfg.data.max_image_pixels, progress=cache_progress(split),
            )
            for split in ("train", "val")
        }

    # Decoding (Pillow, GIL released) overlaps with building the model (mostly Python): ~1-2 s saved.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(build_caches)
        try:
            models = model_mod.build_models(cfg, num_classes)
        except BaseException:
            for c in pending.result().values():
                c.close()
            raise
        caches = pending.result()
    try:
        labels = {s: splits.labels(s) for s in ("train", "val")}
        weights = data_mod.class_weights(labels["train"], num_classes, cfg.train.class_weight)
        for phase in phases_for(cfg):
            if phase.name in state["phases_done"]:
                done = run.phase_done_weights(phase.name)
                if not done.exists():
                    raise RunFolderError(f"{run.root} records the {phase.name} phase as finished but {done.name} is "
                                         "missing (written by an older version?); train into a new run folder")
                _load_checkpoint(done, models.inference.weights)
                continue
            earlier = {(e["phase"], e["epoch"]) for e in run.epochs() if e.get("phase") != phase.name}
            _run_phase(run, cfg, phase, models, caches, labels, weights, num_classes, state,
                       writer, cancel, on_event, len(earlier), jit=gpus > 0)
            save_variables(run.phase_done_weights(phase.name), models.inference.weights)
            state["phases_done"].append(phase.name)
            run.write_state(state)
            _remove_tree(run.backup_dir(phase.name))
    finally:
        for c in caches.values():
            c.close()
        _remove_tree(run.root / "cache")

    _load_checkpoint(run.best_weights, models.inference.weights)
    tmp = run.root / ".model.tmp.keras"
    models.inference.save(tmp)
    os.replace(tmp, run.model)
    state["status"] = "done"
    run.write_state(state)
    _record(writer, on_event, {"event": "done", "best": state.get("best")})


def _load_checkpoint(path: Path, variables: list) -> dict[str, int]:
    """Loads a checkpoint this run wrote; one that no longer fits the model is a RunFolderError."""
    try:
        return load_variables(path, variables)
    except CheckpointMismatchError as exc:
        raise RunFolderError(
            f"the checkpoint {path} does not match this model (the code or config changed since it was written); "
            "start a new run folder, or delete the checkpoints folder to retrain this one"
        ) from exc


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _run_phase(run, cfg, phase, models, caches, labels, weights, num_classes, state, writer, cancel, on_event,
               epoch_offset, *, jit) -> None:
    """Runs one phase's ``fit`` (resuming from its Backup checkpoint when there is one)."""
    import keras

    cb = _callbacks_module()
    bs, seed = cfg.train.batch_size, cfg.train.seed
    if phase.name == "head":
        model_mod.freeze_base(models)
    elif phase.name == "fine_tune":
        model_mod.unfreeze_for_phase_two(models, cfg)
    else:
        model_mod.unfreeze_all(models)

    # The base is frozen in the head phase and validation images are never augmented, so validation
    # features are fixed for the whole phase: computed once, like the training features when
    # augmentation is off (the cached-feature path of the Keras guide).
    head = phase.name == "head"
    cached = head and not cfg.augment.active
    feats = {}
    if head:
        t0 = time.perf_counter()
        for split in ("train", "val") if cached else ("val",):
            ds = data_mod.make_dataset(caches[split], labels[split], num_classes, bs, shuffle=False, seed=seed)
            feats[split] = models.features.predict(ds.map(lambda x, y: x), verbose=0)
        seconds = time.perf_counter() - t0
        n = sum(len(f) for f in feats.values())
        _record(writer, on_event, {"event": "features", "images": n, "splits": sorted(feats), "seconds": round(seconds, 3),
                                   "images_per_second": round(n / max(seconds, 1e-9), 2)})
    onehot = {split: np.eye(num_classes, dtype=np.float32)[labels[split]] for split in ("train", "val")}
    val_ds, extra = None, []
    if cached:
        import tensorflow as tf

        shuffled = tf.data.Dataset.from_tensor_slices((feats["train"], onehot["train"])).shuffle(
            len(onehot["train"]), seed=seed, reshuffle_each_iteration=True)
        model, train_ds = models.head, shuffled.batch(bs).prefetch(tf.data.AUTOTUNE)
    else:
        model = models.train
        train_ds = data_mod.make_dataset(caches["train"], labels["train"], num_classes, bs, shuffle=True, seed=seed)
        if not head:
            val_ds = data_mod.make_dataset(caches["val"], labels["val"], num_classes, bs, shuffle=False, seed=seed)
    if head:
        extra.append(cb.FeatureValidation(models.head, feats["val"], onehot["val"], cfg.train.label_smoothing))

    steps = -(-len(labels["train"]) // bs)
    _compile(model, phase, cfg, steps, jit)
    best = cb.BestCheckpoint(run, models.inference, state)
    callbacks = [
        *extra,  # first: it fills in val_loss and val_accuracy for the callbacks after it
        cb.Backup(run.backup_dir(phase.name)),
        cb.EpochLogger(run, writer, phase.name, phase.epochs, len(labels["train"]), steps, cfg.train.progress_every,
                    epoch_offset, cancel, on_event),
        best,
    ]
    if cfg.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.train.early_stopping_patience))
    _record(writer, on_event, {
        "event": "phase", "phase": phase.name, "epochs": phase.epochs, "learning_rate": phase.learning_rate,
        "cached_features": cached, "trainable_params": model_mod.trainable_count(model),
    })
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")
            model.fit(train_ds, validation_data=val_ds, epochs=phase.epochs, class_weight=weights,
                      callbacks=callbacks, verbose=0)
    finally:
        best.flush()
