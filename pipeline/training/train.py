"""Training: the Keras transfer-learning recipe, run into a run folder, resumable and cancellable.

Phases by strategy:

- ``feature_extraction``: ``head`` only, base frozen.
- ``fine_tune``: ``head`` (base frozen) then ``fine_tune`` (top ``unfreeze_top`` layers or all of the
  base unfrozen, recompiled at ``fine_tune_learning_rate``; BatchNorm stays in inference mode).
- ``freeze_first_k``: ``head`` then ``fine_tune`` with the first k base layers still frozen.
- ``from_scratch``: one ``scratch`` phase in which every layer trains from random values.

When the base is frozen and augmentation is off, the head phase runs on pooled features computed
once (the cached-feature path of the Keras guide) instead of running the base every epoch.

Where training continues is read from ``state.json`` (epochs and optimizer steps done per phase; see
:mod:`pipeline.runs.folder`) and given to ``fit`` as ``initial_epoch``; each epoch is committed there by
:class:`pipeline.training.callbacks.EpochCommit`. Shuffling is a pure function of (seed, epoch), so a resumed phase
sees the batches an uninterrupted one would.

Where and how it trains (backend, devices, precision, data parallelism) is :mod:`pipeline.training.placement`'s
choice. On TensorFlow batches come from tf.data; on JAX from :mod:`pipeline.training.feed`, and TensorFlow is
never imported. Whatever the training precision or device count, ``model.keras`` is a float32 model on one
device (:func:`_saved_model`).
"""

from __future__ import annotations

import functools
import gc
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import config as config_mod
from pipeline import data as data_mod
from pipeline.config import Phase, RunConfig, phases_for
from pipeline.host.atomic import fault_point, remove_stale_temporaries
from pipeline.runs import events
from pipeline.runs.folder import (
    DamagedFileError,
    MetricsWriter,
    RunFolder,
    RunFolderError,
    TrainingCancelled,
    atomic_write_json,
    load_variables,
    read_variables,
    save_variables,
)
from pipeline.runs.ledger import Ledger, PhaseProgress
from pipeline.training import feed
from pipeline.training import model as model_mod
from pipeline.training.optimizer import adam
from pipeline.training.placement import Placement, place, prepare_process, release

EventFn = Callable[[dict[str, Any]], None]
MODEL_TMP = ".model.tmp.keras"

# === Preparing the run folder ===


def prepare_run(
    source: str, run_dir: str | Path, cfg: RunConfig, on_event: EventFn | None = None
) -> tuple[RunFolder, RunConfig, data_mod.Splits]:
    """Creates (or reopens, to resume) a run folder: config.json and dataset.json with the exact splits.

    Raises:
        RunFolderError: the folder holds a different run, or a finished one.
        data_mod.DataError: the data cannot be used.
    """
    run = RunFolder(Path(run_dir).expanduser().resolve())
    if run.root.exists() and not run.root.is_dir():
        raise RunFolderError(
            f"--run-dir {run.root} is a file, not a folder; give the name of a new folder (or of "
            "a run folder to resume)."
        )
    if run.config.exists():
        try:
            saved = config_mod.load(run.config)
        except config_mod.ConfigError as exc:
            raise RunFolderError(
                f"{run.root} holds a config.json that is not a Transfer Studio run's ({exc}); give "
                "--run-dir a new folder."
            ) from exc
        if saved != cfg:
            raise RunFolderError(
                f"{run.root} already holds a run with a different configuration; "
                "use a new --run-dir, or resume it without changing its settings."
            )
        try:
            status = run.read_state().status
        except DamagedFileError:
            status = None  # train() falls back to state.prev.json
        if status == "done":
            raise RunFolderError(f"{run.root} holds a finished run; use a new --run-dir to train again.")
        return run, saved, run.splits()

    def scan_progress(done: int, total: int) -> None:
        if on_event:
            on_event({"event": events.SCAN, "done": done, "total": total})

    from pipeline.data import revision

    folder = data_mod.resolve_source(source, cfg.data)
    report, rev = revision.scan(folder, cfg.data, progress=scan_progress, size=cfg.model.image_size)
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
    parent = _parent_run(cfg, splits) if cfg.train.init_from else None
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        run.dataset,
        {
            "source": str(source),
            "revision": {"number": rev.number, "file": str(rev.file)},
            "scan": report.to_dict(),
            "splits": splits.to_dict(),
            **({"parent": str(parent.root)} if parent else {}),
        },
    )
    config_mod.save(cfg, run.config)  # written last: its presence means the folder is a prepared run
    return run, cfg, splits


def _parent_run(cfg: RunConfig, splits: data_mod.Splits) -> RunFolder:
    """The finished run ``train.init_from`` names, checked to fit this run (same model shape and classes).

    Raises:
        RunFolderError: it is not a finished run, or its model or classes differ (naming what differs).
    """
    parent = RunFolder(Path(cfg.train.init_from).expanduser().resolve())
    if not parent.config.exists() or not parent.dataset.exists():
        raise RunFolderError(f"--from {parent.root}: not a run folder (no config.json or dataset.json).")
    if not parent.finished():
        status = (parent.read_state().status if parent.state.exists() else None) or "not started"
        raise RunFolderError(
            f"--from {parent.root}: the run has not finished ({status}); a retrain starts from a "
            "finished run's best weights: let it finish (or resume it) first."
        )
    best = parent.best_weights
    if best is None or not best.exists():
        raise RunFolderError(f"--from {parent.root}: the run has no best weights file; train into a new run folder.")
    theirs = config_mod.load(parent.config).model
    for key in ("backbone", "alpha", "image_size"):
        if getattr(theirs, key) != getattr(cfg.model, key):
            raise RunFolderError(
                f"--from {parent.root}: its model.{key} is {getattr(theirs, key)!r}, this run's is "
                f"{getattr(cfg.model, key)!r}; a retrain keeps the parent's model settings."
            )
    classes = parent.splits().classes
    if list(classes) != list(splits.classes):
        raise RunFolderError(
            f"--from {parent.root}: its classes ({', '.join(classes)}) differ from this data's "
            f"({', '.join(splits.classes)}); a retrain needs the same classes."
        )
    return parent


def _start_from_parent(cfg: RunConfig, models: model_mod.Models, emit: EventFn) -> None:
    """A fresh ``--from`` run: the parent's best inference weights (base and head), matched by variable path."""
    parent = RunFolder(Path(cfg.train.init_from).expanduser().resolve())
    best = parent.best_weights
    load_variables(best, _variables(models.inference))
    emit({"event": events.PARENT, "run": str(parent.root), "weights": best.name})


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


def _compile(model, phase: Phase, cfg: RunConfig, steps_per_epoch: int, placement: Placement) -> None:
    import keras

    fused = placement.backend == "tensorflow" and placement.strategy is None
    model.compile(
        optimizer=adam(_schedule(phase, cfg, steps_per_epoch), fused=fused),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing),
        metrics=["accuracy"],
        jit_compile=placement.jit,
    )


# === Training ===


def train(
    source: str,
    run_dir: str | Path,
    cfg: RunConfig | None = None,
    *,
    on_event: EventFn | None = None,
    evaluate_after: bool = True,
    launched_at: float | None = None,
) -> RunFolder:
    """Trains ``source`` into ``run_dir``, resuming a run folder that was interrupted at any point.

    Args:
        source: Folder, zip or ``sample:digits``.
        run_dir: The run folder; created if missing.
        cfg: The configuration (defaults if None).
        on_event: Called with every record written to metrics.jsonl (for terminal or UI progress).
        evaluate_after: Write eval.json when training finishes (the run is "done" only after it).
        launched_at: When the process that trains started, for a process started to train this run (the CLI,
            a job's child: :func:`process_started`); the estimate measures start-up from it. None in-process.

    Raises:
        TrainingCancelled: a cancel was requested; re-running the same call resumes.
        data_mod.DataError, config_mod.ConfigError, backbones.WeightsUnavailableError, RunFolderError.
    """
    cfg = cfg or RunConfig()
    prepare_process(cfg)  # before anything imports Keras
    run, cfg, splits = prepare_run(source, run_dir, cfg, on_event)
    for folder in (run.root, run.checkpoints, *run.checkpoints.glob("backup_*")):
        remove_stale_temporaries(folder)  # what a kill during an atomic write left behind
    (run.root / MODEL_TMP).unlink(missing_ok=True)
    state, note = run.recover_state()
    if state.legacy:
        raise RunFolderError(
            f"{run.state} was written by an older version of Transfer Studio and cannot be resumed; "
            "train into a new run folder."
        )
    writer = MetricsWriter(run.metrics)
    emit = functools.partial(_record, writer, on_event)
    if note:
        emit({"event": events.WARNING, "message": note})
    cancel = threading.Event()
    restore = _install_sigterm(cancel)
    try:
        if state.status == "evaluating" and not evaluate_after:
            return run
        model = None
        if state.status != "evaluating":
            model = _train_phases(run, cfg, splits, state, emit, cancel, launched_at)
            state.trained(evaluate_after=evaluate_after)
            run.write_state(state)
        if evaluate_after:
            from pipeline.training.evaluate import evaluate

            gc.collect()  # the training models and their traced steps are garbage now: free them before evaluating
            emit({"event": events.EVALUATE})
            evaluate(run.root, model=model)  # the model just saved, still in memory (else model.keras is read)
            state.evaluated()
            run.write_state(state)
            fault_point("run-done")
        del model
        emit({"event": events.DONE, "best": None if state.best is None else state.best.to_dict()})
    except TrainingCancelled:
        emit({"event": events.CANCELLED})
        run.write_state(state.cancelled())
        raise
    finally:
        writer.close()
        restore()
    return run


def process_started() -> float:
    """When this process started (the estimate counts a run from there: imports, scan and cache are part of it)."""
    import psutil

    return round(psutil.Process().create_time(), 3)


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


def _reconcile_metrics(run: RunFolder, state: Ledger, emit: EventFn) -> None:
    """Makes metrics.jsonl agree with state.json (the source of truth) before training goes on.

    A committed epoch whose line a kill cut off gets its line (kept in state.json); epoch lines past what
    state.json records (their checkpoint was lost) are voided by a ``rollback`` line and trained again.
    """
    lines = run.epochs()
    for name in sorted({e.get("phase") for e in lines} | set(state.phases)):
        ph = state.phases.get(name, PhaseProgress())
        done = ph.epochs_done
        seen = [e["epoch"] for e in lines if e.get("phase") == name]
        if any(epoch > done for epoch in seen):
            emit(
                {
                    "event": events.ROLLBACK,
                    "phase": name,
                    "epoch": done,
                    "reason": "state.json records fewer finished epochs than metrics.jsonl; they are trained again",
                }
            )
        if done and done not in seen and ph.last_epoch:
            emit(ph.last_epoch)


def _train_phases(
    run: RunFolder,
    cfg: RunConfig,
    splits: data_mod.Splits,
    state: Ledger,
    emit: EventFn,
    cancel: threading.Event,
    launched_at: float | None = None,
):
    """Trains every phase not yet done (resuming a started one) and writes model.keras from the best weights;
    returns the model written there."""
    _reconcile_metrics(run, state, emit)
    resumed = state.resumed
    placement = place(cfg)
    here = {"backend": placement.backend, "replicas": placement.replicas}
    before = state.placement
    if before and before != here:  # another backend or device count would train other batches
        release(placement)
        raise RunFolderError(
            f"{run.root} was trained on {before['backend']} with {before['replicas']} device(s) and this process has "
            f"{here['backend']} with {here['replicas']}; resume it as it started (KERAS_BACKEND or train.backend, and "
            "the same GPUs or train.devices), or train into a new run folder."
        )
    state.start(placement=here)
    run.write_state(state)
    try:
        emit(
            {
                "event": events.RESUMED if resumed else events.START,
                "phases": [p.name for p in phases_for(cfg)],
                **({"process_started": launched_at} if launched_at and not resumed else {}),
                **placement.describe(),
                "batch_size": cfg.train.batch_size,
                "global_batch_size": cfg.train.batch_size * placement.replicas,
                "notes": placement.notes,
            }
        )
        with placement.scope():
            models = _fit_phases(run, cfg, splits, state, emit, cancel, placement, resumed)
        _load_best(run, state, models, emit)
        saved = _saved_model(cfg, models, placement)
    finally:
        release(placement)
    tmp = run.root / MODEL_TMP  # Keras insists on the .keras suffix
    saved.save(tmp)
    fault_point("model-write")
    tmp.replace(run.model)
    for phase in phases_for(cfg):
        shutil.rmtree(run.backup_dir(phase.name), ignore_errors=True)
    return saved


def _saved_model(cfg: RunConfig, models: model_mod.Models, placement: Placement):
    """The model model.keras holds: float32, on one device, whatever the run trained with.

    A mixed-precision model computes in float16 or bfloat16 (float16 ops are no builtin TFLite ops, so its
    "float32" export would not convert) and a data-parallel one holds distributed variables: the inference
    model is built again under the float32 policy and outside any distribution, and the trained values are
    copied in (the same builder makes the same layers in the same order; ``set_weights`` checks every shape).
    """
    if cfg.train.precision == "float32" and placement.replicas == 1:
        return models.inference
    release(placement)
    plain = model_mod.build_models(cfg, models.inference.output_shape[-1], weights="none").inference

    def layout(model):  # each weight's own name and shape, in order (layer names may carry a _1 suffix here)
        return [(w.path.rsplit("/", 1)[-1], tuple(w.shape)) for w in model.weights]

    if layout(plain) != layout(models.inference):
        raise AssertionError("the float32 rebuild of the inference model differs from the trained one")
    plain.set_weights(models.inference.get_weights())  # mixed policies keep float32 variables
    return plain


def _fit_phases(
    run: RunFolder,
    cfg: RunConfig,
    splits: data_mod.Splits,
    state: Ledger,
    emit: EventFn,
    cancel: threading.Event,
    placement: Placement,
    resumed: bool,
) -> model_mod.Models:
    """Builds the models and trains every phase not yet done (in the placement's scope); returns the models."""
    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    num_classes = len(splits.classes)

    def cache_progress(split):
        return lambda done, total: emit({"event": events.CACHE, "split": split, "done": done, "total": total})

    def build_caches() -> dict[str, data_mod.ImageCache]:
        return {
            split: data_mod.ImageCache(
                splits.paths(split),
                cfg.model.image_size,
                memory_budget_mb=cfg.data.cache_memory_mb // 2,
                max_pixels=cfg.data.max_image_pixels,
                progress=cache_progress(split),
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
        if cfg.train.init_from and not resumed:
            _start_from_parent(cfg, models, emit)
        labels = {s: splits.labels(s) for s in ("train", "val")}
        shared = PhaseShared(
            run=run,
            cfg=cfg,
            models=models,
            caches=caches,
            labels=labels,
            num_classes=num_classes,
            class_weight=data_mod.class_weights(labels["train"], num_classes, cfg.train.class_weight),
            state=state,
            emit=emit,
            cancel=cancel,
            placement=placement,
        )
        for phase in phases_for(cfg):
            ph = state.phase(phase.name)
            if ph.done:
                _load_finished_phase(shared, phase.name)
                continue
            gc.collect()  # the previous phase's traced step is garbage once the model is recompiled
            run_phase(shared, _phase_options(shared, phase, first_epoch=ph.epochs_done))
    finally:
        for c in caches.values():
            c.close()
    return models


def _load_best(run: RunFolder, state: Ledger, models: model_mod.Models, emit: EventFn) -> None:
    """Loads the best epoch's weights into the inference model; if that file is missing or damaged, keeps the
    last epoch's weights (the models hold them now) and says so."""
    best = run.best_weights
    try:
        if best is None:
            raise FileNotFoundError("state.json names no best weights")
        load_variables(best, _variables(models.inference))
        return
    except (DamagedFileError, FileNotFoundError) as exc:
        reason = str(exc)
    state.best_from_last_epoch()
    emit(
        {
            "event": events.WARNING,
            "message": f"the best weights cannot be read ({reason}); model.keras holds the last "
            "epoch's weights instead",
        }
    )


# === One phase ===


@dataclass(frozen=True)
class PhaseShared:
    """What every phase of one run shares."""

    run: RunFolder
    cfg: RunConfig
    models: model_mod.Models
    caches: dict[str, data_mod.ImageCache]
    labels: dict[str, np.ndarray]
    num_classes: int
    class_weight: dict[int, float] | None
    state: Ledger  # changed only through its methods; written at the commit points
    emit: EventFn
    cancel: threading.Event
    placement: Placement
    input_wait: feed.WaitClock = field(default_factory=feed.WaitClock)


@dataclass(frozen=True)
class PhaseOptions:
    """How one phase trains: what ``fit`` trains on what, and where it starts.

    Attributes:
        phase: The phase (name, planned epochs, learning rate).
        model: The model ``fit`` trains (the whole training model, or the head on cached features).
        train_data: Batches of (inputs, one-hot labels) for epochs ``first_epoch`` .. ``phase.epochs`` - 1.
        val_data: Validation batches, or None when ``callbacks`` computes validation itself.
        steps_per_epoch: Batches per epoch.
        first_epoch: Epochs of this phase already done (from state.json): ``fit``'s ``initial_epoch``.
        callbacks: Callbacks that run before the epoch commit (cached-feature validation).
        cached_features: True when the head trains on features computed once.
        class_weight: ``fit``'s class_weight (tf.data feeds; the JAX feed weights each image itself).
    """

    phase: Phase
    model: Any
    train_data: Any
    val_data: Any
    steps_per_epoch: int
    first_epoch: int
    callbacks: tuple = ()
    cached_features: bool = False
    class_weight: dict[int, float] | None = None


def _phase_options(shared: PhaseShared, phase: Phase, first_epoch: int) -> PhaseOptions:
    """Freezes or unfreezes the base for ``phase`` and builds its inputs (tf.data on TensorFlow, else
    :mod:`pipeline.training.feed`); ``train.batch_size`` is per device, a step sees that times the replicas."""
    from pipeline.training.callbacks import FeatureValidation, Validation

    cfg, models, labels, caches = shared.cfg, shared.models, shared.labels, shared.caches
    replicas = shared.placement.replicas
    bs, seed = cfg.train.batch_size * replicas, cfg.train.seed
    pbs = feed.PREDICT_BATCH * replicas  # features, validation (and evaluation) predict at this batch
    if phase.name == "head":
        model_mod.freeze_base(models)
    elif phase.name == "fine_tune":
        model_mod.unfreeze_for_phase_two(models, cfg)
    else:
        model_mod.unfreeze_all(models)

    n = len(labels["train"])
    if n < replicas:
        raise config_mod.ConfigError(
            f"train.devices: {replicas} devices need at least {replicas} training images "
            f"and this split has {n}; train on fewer devices or add images."
        )
    onehot = {split: np.eye(shared.num_classes, dtype=np.float32)[labels[split]] for split in ("train", "val")}
    if shared.placement.backend == "tensorflow":
        steps, class_weight = -(-n // bs), shared.class_weight
        batches = _epoch_batches(n, bs, seed, first_epoch, phase.epochs)

        def images():
            return data_mod.image_batches(batches, caches["train"], onehot["train"])

        def feature_feed(features, views):
            feature_batches = _epoch_batches(n, bs, seed, first_epoch, phase.epochs, views=views)
            return _feature_feed(feature_batches, features, np.tile(onehot["train"], (views, 1)))

        def predict(model, split):  # whole batches (the last one padded): one traced shape, not two
            return feed.predict_all(model, len(caches[split]), pbs, caches[split].take, multiple_of=pbs)
    else:
        steps, class_weight = feed.steps_per_epoch(n, bs, replicas), None  # the feed weights each image

        def index_batches():
            return feed.epoch_index_batches(n, bs, seed, first_epoch, phase.epochs, multiple_of=replicas)

        def images():
            return feed.image_batches(
                index_batches(), caches["train"].take, onehot["train"], shared.class_weight, shared.input_wait
            )

        def feature_feed(features, views):
            return feed.feature_batches(
                feed.epoch_index_batches(n, bs, seed, first_epoch, phase.epochs, multiple_of=replicas, views=views),
                features,
                np.tile(onehot["train"], (views, 1)),
                shared.class_weight,
                shared.input_wait,
            )

        def predict(model, split):
            return feed.predict_all(model, len(caches[split]), pbs, caches[split].take, multiple_of=replicas)

    if phase.name != "head":
        # Validated by the inference model in whole batches: fit's validation_data would trace its test step twice
        # (a last batch of another size), and evaluation reuses the inference model's traced step.
        validation = Validation(lambda: predict(models.inference, "val"), onehot["val"], cfg.train.label_smoothing)
        return PhaseOptions(
            phase, models.train, images(), None, steps, first_epoch, (validation,), class_weight=class_weight
        )

    # The base is frozen in the head phase and validation images are never augmented, so validation
    # features are fixed for the whole phase: computed once, like the training features (the cached-feature path
    # of the Keras guide), of head_views views of each image when augmentation is on (augment.head_views).
    views = cfg.augment.cached_views
    t0 = time.perf_counter()
    feats = {"val": predict(models.features, "val")}
    if views:
        feats["train"] = np.concatenate(
            [predict(models.features if v == 0 else _augmented(models, cfg, v), "train") for v in range(views)]
        )
    seconds = time.perf_counter() - t0
    images_done = sum(len(f) for f in feats.values())
    shared.emit(
        {
            "event": events.FEATURES,
            "images": images_done,
            "splits": sorted(feats),
            "views": views,
            "seconds": round(seconds, 3),
            "images_per_second": round(images_done / max(seconds, 1e-9), 2),
        }
    )
    validation = FeatureValidation(models.head, feats["val"], onehot["val"], cfg.train.label_smoothing)
    if views:
        return PhaseOptions(
            phase,
            models.head,
            feature_feed(feats["train"], views),
            None,
            steps,
            first_epoch,
            (validation,),
            cached_features=True,
            class_weight=class_weight,
        )
    return PhaseOptions(
        phase, models.train, images(), None, steps, first_epoch, (validation,), class_weight=class_weight
    )


def _augmented(models: model_mod.Models, cfg: RunConfig, view: int):
    """raw pixels -> one augmented copy -> pooled features: view ``view`` (1, 2, ...) of ``augment.cached_views``.

    Its own augmentation layers, seeded by (seed, view) and made afresh for each call, so a resumed run computes
    the very features an uninterrupted one did (the images go through in the same order).
    """
    import keras

    from pipeline.training.augment import build_augmentation

    augmentation = build_augmentation(cfg.augment, cfg.train.seed + 1009 * view)

    class Augment(keras.layers.Layer):  # random transforms act only in training mode; predict runs in inference
        def call(self, x):
            return augmentation(x, training=True)

    raw = keras.Input(shape=models.features.input_shape[1:], dtype="float32", name="image")
    return keras.Model(raw, models.features(Augment()(raw)), name=f"features_view{view}")


def run_phase(shared: PhaseShared, options: PhaseOptions) -> None:
    """Runs one phase's ``fit`` from ``options.first_epoch`` (restoring that epoch's checkpoint), then marks it done.

    Raises:
        TrainingCancelled: a cancel was requested (the last committed epoch is kept).
        RunFolderError: the checkpoint does not fit the model, or disagrees with state.json.
    """
    from pipeline.training.callbacks import EpochCommit, Progress

    run, cfg, phase, model = shared.run, shared.cfg, options.phase, options.model
    ph = shared.state.phase(phase.name)
    _compile(model, phase, cfg, options.steps_per_epoch, shared.placement)
    # Built eagerly: built inside the first traced step, Adam's variables cost ~2.5 s.
    model.optimizer.build(model.trainable_variables)
    first = _restore_epoch(shared, phase, model) if ph.epochs_done else 0
    if first != options.first_epoch:  # a damaged checkpoint moved the start back: rebuild the inputs
        options = _phase_options(shared, phase, first_epoch=first)
    epoch_offset = shared.state.epochs_before(phase.name)
    shared.emit(
        {
            "event": events.PHASE,
            "phase": phase.name,
            "epochs": phase.epochs,
            "learning_rate": phase.learning_rate,
            "cached_features": options.cached_features,
            "trainable_params": model_mod.trainable_count(model),
            "first_epoch": first + 1,
        }
    )
    if first < phase.epochs and not ph.stopped_early:
        callbacks = [
            *options.callbacks,  # first: they fill in val_loss and val_accuracy for the commit
            Progress(
                shared.emit,
                phase.name,
                options.steps_per_epoch,
                cfg.train.progress_every,
                lambda: shared.cancel.is_set() or run.cancel_file.exists(),
            ),
            EpochCommit(
                run,
                shared.state,
                phase.name,
                phase.epochs,
                inference=shared.models.inference,
                n_images=len(shared.labels["train"]),
                epoch_offset=epoch_offset,
                patience=cfg.train.early_stopping_patience,
                emit=shared.emit,
                input_wait=None if shared.placement.backend == "tensorflow" else shared.input_wait,
            ),
        ]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")
            try:
                options.model.fit(
                    options.train_data,
                    validation_data=options.val_data,
                    epochs=phase.epochs,
                    initial_epoch=first,
                    steps_per_epoch=options.steps_per_epoch,
                    class_weight=options.class_weight,
                    callbacks=callbacks,
                    verbose=0,
                )
            finally:
                if hasattr(options.train_data, "close"):  # the JAX feed's reading thread stops here
                    options.train_data.close()
    save_variables(run.phase_done_weights(phase.name), _variables(shared.models.train), fault="phase-done-write")
    shared.state.finish_phase(phase.name)
    run.write_state(shared.state)


def _restore_epoch(shared: PhaseShared, phase: Phase, model) -> int:
    """Loads the checkpoint of the last committed epoch of ``phase``; returns the epoch training continues from.

    A damaged or missing checkpoint falls back to the one before it (the last two are kept), or to the
    phase's start; the damaged file is kept as ``*.damaged`` and a ``rollback`` line voids the lost epochs.
    """
    run, state = shared.run, shared.state
    ph = state.phase(phase.name)
    variables = _variables(model, model.optimizer)
    epoch = ph.epochs_done
    while epoch > 0:
        path = run.epoch_checkpoint(phase.name, epoch)
        try:
            meta = load_variables(path, variables)
        except (DamagedFileError, FileNotFoundError) as exc:
            why = str(exc) if isinstance(exc, DamagedFileError) else f"the checkpoint {path} is missing"
            if path.exists():
                path.replace(path.with_suffix(".npz.damaged"))
            epoch -= 1
            shared.emit(
                {
                    "event": events.WARNING,
                    "message": f"{why}; going on from "
                    + (f"epoch {epoch} of the {phase.name} phase" if epoch else f"the start of the {phase.name} phase"),
                }
            )
            continue
        if meta.get("steps") != ph.steps_done and epoch == ph.epochs_done:
            raise RunFolderError(
                f"{path} holds {meta.get('steps')} optimizer steps but {run.state} records "
                f"{ph.steps_done}; the run folder was changed by hand: train into a new one."
            )
        break
    if epoch != ph.epochs_done:  # nothing was assigned from a file that failed: epoch 0 is the phase's start
        if epoch == 0 and shared.cfg.train.init_from and phase.name == phases_for(shared.cfg)[0].name:
            _start_from_parent(shared.cfg, shared.models, shared.emit)  # a retrain's first phase starts there
        state.roll_back(phase.name, epoch, steps=_steps(model.optimizer))
        run.write_state(state)
        shared.emit(
            {
                "event": events.ROLLBACK,
                "phase": phase.name,
                "epoch": epoch,
                "reason": "a damaged or missing checkpoint; these epochs are trained again",
            }
        )
    return epoch


def _steps(optimizer) -> int:
    """Optimizer steps taken (the counter may be a mirrored variable: read through Keras, not ``int()``)."""
    import keras

    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def _load_finished_phase(shared: PhaseShared, name: str) -> None:
    """Loads a finished phase's weights: its .done.npz, or its last epoch checkpoint if that file is damaged."""
    run = shared.run
    done = run.phase_done_weights(name)
    variables = _variables(shared.models.train)
    try:
        load_variables(done, variables)
        return
    except (DamagedFileError, FileNotFoundError) as exc:
        last = run.epoch_checkpoint(name, shared.state.phase(name).epochs_done)
        try:
            saved, _ = read_variables(last)
        except (DamagedFileError, FileNotFoundError):
            raise RunFolderError(
                f"{run.root} records the {name} phase as finished but {done.name} is missing or "
                "damaged and so is its last epoch checkpoint; train into a new run folder"
            ) from exc
    # The epoch checkpoint holds the model that phase fitted (the head alone on cached features): the rest
    # of the model did not change in that phase.
    for key, value in saved.items():
        if key in variables:
            variables[key].assign(value)
    shared.emit(
        {
            "event": events.WARNING,
            "message": f"{done} is missing or damaged; the {name} phase's weights come "
            f"from its last epoch checkpoint {last.name}",
        }
    )


def _variables(model, optimizer=None) -> dict[str, Any]:
    from pipeline.training.callbacks import checkpoint_variables

    return checkpoint_variables(model, optimizer)


# === Input pipelines: shuffled as a pure function of (seed, epoch) ===


def _epoch_batches(n: int, batch_size: int, seed: int, first_epoch: int, epochs: int, views: int = 1):
    """Index batches for epochs ``first_epoch`` .. ``epochs`` - 1; epoch e's order depends only on (seed, e).

    ``views``: the data holds that many copies of the ``n`` items one after another; epoch e reads copy e mod views.

    ``Dataset.shuffle(reshuffle_each_iteration=True)`` draws each epoch's order from a sequence that
    restarts with every new ``fit``, so a resumed phase would replay epoch 1's order; a stateless shuffle
    keyed by the epoch gives a resumed phase exactly the batches an uninterrupted one sees.
    """
    import tensorflow as tf

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        if views > 1:
            order += n * (epoch % views)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)


def _feature_feed(batches, features: np.ndarray, onehot: np.ndarray):
    import tensorflow as tf

    features, onehot = tf.constant(features), tf.constant(onehot)
    return batches.map(lambda idx: (tf.gather(features, idx), tf.gather(onehot, idx))).prefetch(2)
