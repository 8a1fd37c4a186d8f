"""The records of a run's ``metrics.jsonl``: each kind defined once, with the one sentence that says it.

Training emits these records (``pipeline.training``); they are appended to metrics.jsonl, printed by the CLI
(:func:`describe`, and :func:`progress` for a terminal's changing line), written to a job's ``train.log`` (the
app's log panel: :func:`log_line`) and read back by the estimate and by the Runs page's stage line
(:func:`stage`). Every record has ``time`` (seconds since the epoch, added by the writer) and ``event``.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from pipeline.config import RunConfig, phases_for

SCAN: Literal["scan"] = "scan"
START: Literal["start"] = "start"
RESUMED: Literal["resumed"] = "resumed"
CACHE: Literal["cache"] = "cache"
PARENT: Literal["parent"] = "parent"
FEATURES: Literal["features"] = "features"
PHASE: Literal["phase"] = "phase"
PROGRESS: Literal["progress"] = "progress"
EPOCH: Literal["epoch"] = "epoch"
EVALUATE: Literal["evaluate"] = "evaluate"
WARNING: Literal["warning"] = "warning"
ROLLBACK: Literal["rollback"] = "rollback"
DONE: Literal["done"] = "done"
CANCELLED: Literal["cancelled"] = "cancelled"


class Scan(TypedDict):
    """Images of the dataset decoded while it is scanned."""

    event: Literal["scan"]
    done: int
    total: int


class Start(TypedDict):
    """Training starts (``start``) or goes on (``resumed``) in this process, placed on its devices."""

    event: Literal["start", "resumed"]
    phases: list[str]
    backend: str
    devices: dict[str, Any]  # given (CUDA_VISIBLE_DEVICES), framework (what it sees), replicas
    precision: str
    batch_size: int
    global_batch_size: int
    notes: list[str]
    process_started: NotRequired[float]  # when the process began (a first start only): the estimate's start-up


class Cache(TypedDict):
    """Images of a split decoded and resized into the training cache."""

    event: Literal["cache"]
    split: str
    done: int
    total: int


class Parent(TypedDict):
    """A retrain starts from its parent run's best weights."""

    event: Literal["parent"]
    run: str
    weights: str


class Features(TypedDict):
    """The frozen base's pooled features computed once."""

    event: Literal["features"]
    images: int
    splits: list[str]
    seconds: float


class Phase(TypedDict):
    """A phase starts (or goes on from ``first_epoch``)."""

    event: Literal["phase"]
    phase: str
    epochs: int
    learning_rate: float
    cached_features: bool
    trainable_params: int
    first_epoch: int


class Progress(TypedDict):
    """Batches done within an epoch (every ``train.progress_every`` batches)."""

    event: Literal["progress"]
    phase: str
    epoch: int
    batch: int
    steps: int
    loss: float


class Epoch(TypedDict):
    """An epoch committed (its checkpoint and state.json written first)."""

    event: Literal["epoch"]
    phase: str
    epoch: int
    epochs: int
    global_epoch: int
    steps: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_second: float
    input_wait_seconds: NotRequired[float]  # the JAX feed: seconds the step waited for batches


class Evaluate(TypedDict):
    """Evaluation starts (no counts), then its batches (``done`` of ``total`` images)."""

    event: Literal["evaluate"]
    done: NotRequired[int]
    total: NotRequired[int]


class Warning_(TypedDict):
    """Something the user should know, training goes on (a damaged file fallen back from, ...)."""

    event: Literal["warning"]
    message: str


class Rollback(TypedDict):
    """Epochs of a phase after ``epoch`` are void (trained again): metrics.jsonl lines before this one."""

    event: Literal["rollback"]
    phase: str
    epoch: int
    reason: str


class Done(TypedDict):
    """Training (and its evaluation) finished; ``best`` is the ledger's best epoch."""

    event: Literal["done"]
    best: dict[str, Any] | None


class Cancelled(TypedDict):
    """A cancel was requested; the last committed epoch is kept."""

    event: Literal["cancelled"]


Record = (
    Scan
    | Start
    | Cache
    | Parent
    | Features
    | Phase
    | Progress
    | Epoch
    | Evaluate
    | Warning_
    | Rollback
    | Done
    | Cancelled
)


def where(rec: dict[str, Any]) -> str:
    """What a start/resumed record says of its placement: ", on jax (cpu:0, cpu:1; given all), float32. Data-..."."""
    devices = rec.get("devices")
    if not devices:
        return ""
    line = (
        f", on {rec.get('backend')} ({', '.join(devices.get('framework', []))}; given {devices.get('given')}), "
        f"{rec.get('precision')}"
    )
    return ". ".join([line, *(n[0].upper() + n[1:] for n in rec.get("notes", []))])


def describe(rec: dict[str, Any]) -> str | None:
    """The record as one line of a log (the CLI's stderr, a job's train.log); None for counts and progress."""
    ev = rec.get("event")
    if ev in (START, RESUMED):
        return f"{'resuming' if ev == RESUMED else 'training'}: phases {', '.join(rec.get('phases', []))}{where(rec)}"
    if ev == PHASE:
        cached = ", on cached features" if rec.get("cached_features") else ""
        start = f", going on from epoch {rec['first_epoch']}" if rec.get("first_epoch", 1) > 1 else ""
        return (
            f"phase {rec['phase']}: {rec['epochs']} epochs at learning rate {rec['learning_rate']:g}, "
            f"{rec.get('trainable_params', 0):,} trainable parameters{cached}{start}"
        )
    if ev == FEATURES:
        return f"features computed once: {rec['images']} images in {rec['seconds']:.1f} s"
    if ev == PARENT:
        return f"starting from the parent run's best weights ({rec['weights']})"
    if ev == EPOCH:
        return (
            f"{rec['phase']} epoch {rec['epoch']}/{rec.get('epochs', '?')}: loss {rec['loss']:.4f}, accuracy "
            f"{rec['accuracy']:.4f}, validation loss {rec['val_loss']:.4f}, validation accuracy "
            f"{rec['val_accuracy']:.4f}, learning rate {rec.get('lr', 0):.2g}, {rec.get('seconds', 0):.1f} s"
            + (f" ({rec['images_per_second']:.0f} images/s)" if rec.get("images_per_second") else "")
        )
    if ev == WARNING:
        return f"warning: {rec.get('message')}"
    if ev == ROLLBACK:
        return f"warning: {rec.get('reason')} (the {rec.get('phase')} phase goes on from epoch {rec.get('epoch')})"
    if ev == EVALUATE:
        return "evaluating" if "done" not in rec else None
    if ev == DONE:
        best = rec.get("best") or {}
        return "done" + (
            f"; best weights: {best['phase']} epoch {best['epoch']}, validation accuracy {best['val_accuracy']:.4f}"
            if {"phase", "epoch", "val_accuracy"} <= best.keys()
            else ""
        )
    if ev == CANCELLED:
        return "cancelled; the last finished epoch is kept"
    return None


def log_line(rec: dict[str, Any]) -> str | None:
    """:func:`describe` as a sentence for the app's log panel (capitalised, with its full stop)."""
    line = describe(rec)
    return None if line is None else line[0].upper() + line[1:] + ("" if line.endswith(".") else ".")


def progress(rec: dict[str, Any]) -> tuple[str, bool] | None:
    """A count for a terminal's changing line: (text, finished); None for records that are not counts."""
    ev = rec.get("event")
    if ev == SCAN:
        return f"scanning: {rec['done']}/{rec['total']}", rec["done"] == rec["total"]
    if ev == CACHE:
        return f"decoding {rec['split']}: {rec['done']}/{rec['total']}", rec["done"] == rec["total"]
    if ev == PROGRESS:
        return (
            f"  {rec['phase']} epoch {rec['epoch']} batch {rec['batch']}/{rec['steps']} loss {rec['loss']:.4f}",
            False,
        )
    return None


_PHASE_NAMES = {"head": "head", "fine_tune": "fine-tune", "scratch": "training"}
_STAGES = (SCAN, START, RESUMED, CACHE, FEATURES, PHASE, PROGRESS, EPOCH, EVALUATE)


def stage(state: str, lines: list[dict[str, Any]], cfg: RunConfig | None) -> tuple[str, float | None]:
    """What a job's run is doing now, from its last records: the text and a fraction done (None: no count to show).

    Stages: waiting for a worker, loading TensorFlow, scanning, decoding each split, building the model (and the
    base's features once), compiling the first step of a phase, epoch k of n with batch i of m, validating,
    evaluating. A finished count is never shown as a full bar: the stage after it is named instead.
    """
    if state == "queued":
        return "Queued: waiting for the worker to start it.", None
    last = next((m for m in reversed(lines) if m.get("event") in _STAGES), None)
    if last is None:
        return "Starting: loading TensorFlow.", None
    ev = last["event"]
    planned = {p.name: p.epochs for p in phases_for(cfg)} if cfg is not None else {}
    if ev == SCAN and last["done"] < last["total"]:
        return f"Scanning the dataset: {last['done']}/{last['total']} images", last["done"] / max(1, last["total"])
    if ev in (SCAN, START, RESUMED):
        return "Loading the images.", None
    if ev == CACHE and last["done"] < last["total"]:
        return (
            f"Decoding and resizing the {last['split']} images: {last['done']}/{last['total']}",
            last["done"] / max(1, last["total"]),
        )
    if ev == CACHE:
        if last["split"] == "train":
            return "Decoding the validation images.", None
        cached = cfg is not None and cfg.augment.cached_views > 0 and cfg.train.strategy != "from_scratch"
        return (
            "Building the model"
            + (" and computing the base's features once" if cached else "")
            + " (loading the pretrained weights).",
            None,
        )
    if ev == FEATURES:
        return "Features computed; starting the head phase.", None
    if ev == PHASE:
        name = _PHASE_NAMES.get(last["phase"], last["phase"])
        return (
            f"{name.capitalize()} phase, epoch {last.get('first_epoch', 1)} of {last['epochs']}: compiling the "
            "first step (tracing the model; the first epoch is the slowest).",
            None,
        )
    if ev == PROGRESS:
        n = planned.get(last["phase"], "?")
        name = _PHASE_NAMES.get(last["phase"], last["phase"])
        if last["batch"] >= last["steps"]:
            return f"{name.capitalize()} epoch {last['epoch']} of {n}: validating.", None
        return (
            f"{name.capitalize()} epoch {last['epoch']} of {n}: batch {last['batch']} of {last['steps']}",
            last["batch"] / max(1, last["steps"]),
        )
    if ev == EPOCH:
        n = last.get("epochs") or planned.get(last["phase"], 0)
        name = _PHASE_NAMES.get(last["phase"], last["phase"])
        if last["epoch"] < n:
            return f"{name.capitalize()} epoch {last['epoch'] + 1} of {n}: starting.", None
        names = list(planned)
        if last["phase"] in names and names.index(last["phase"]) + 1 < len(names):
            return "Head phase done: unfreezing the base for fine-tuning.", None
        return "Training done: saving the model and evaluating it.", None
    return "Evaluating the model on the held-out split.", None
