"""What a running job is doing now, in words, from the last records of its metrics.jsonl (the Runs page)."""

from __future__ import annotations

_PHASES = {"head": "head", "fine_tune": "fine-tune", "scratch": "training"}


def stage(state: str, lines: list[dict], cfg) -> tuple[str, float | None]:
    """What the run is doing now, from its last records: the text and a fraction done (None: no count to show).

    Stages: waiting for a worker, loading TensorFlow, scanning, decoding each split, building the model (and the
    base's features once), compiling the first step of a phase, epoch k of n with batch i of m, validating,
    evaluating. A finished count is never shown as a full bar: the stage after it is named instead.
    """
    if state == "queued":
        return "Queued: waiting for the worker to start it.", None
    stages = ("scan", "start", "resumed", "cache", "features", "phase", "progress", "epoch", "evaluate")
    last = next((m for m in reversed(lines) if m.get("event") in stages), None)
    if last is None:
        return "Starting: loading TensorFlow.", None
    ev = last["event"]
    planned = {}
    if cfg is not None:
        from pipeline.train import phases_for

        planned = {p.name: p.epochs for p in phases_for(cfg)}
    if ev == "scan" and last["done"] < last["total"]:
        return f"Scanning the dataset: {last['done']}/{last['total']} images", last["done"] / max(1, last["total"])
    if ev in ("scan", "start", "resumed"):
        return "Loading the images.", None
    if ev == "cache" and last["done"] < last["total"]:
        return (f"Decoding and resizing the {last['split']} images: {last['done']}/{last['total']}",
                last["done"] / max(1, last["total"]))
    if ev == "cache":
        if last["split"] == "train":
            return "Decoding the validation images.", None
        cached = cfg is not None and not cfg.augment.active and cfg.train.strategy != "from_scratch"
        return ("Building the model" + (" and computing the base's features once" if cached else "")
                + " (loading the pretrained weights).", None)
    if ev == "features":
        return "Features computed; starting the head phase.", None
    if ev == "phase":
        name = _PHASES.get(last["phase"], last["phase"])
        return (f"{name.capitalize()} phase, epoch {last.get('first_epoch', 1)} of {last['epochs']}: compiling the "
                "first step (tracing the model; the first epoch is the slowest).", None)
    if ev == "progress":
        n = planned.get(last["phase"], "?")
        name = _PHASES.get(last["phase"], last["phase"])
        if last["batch"] >= last["steps"]:
            return f"{name.capitalize()} epoch {last['epoch']} of {n}: validating.", None
        return (f"{name.capitalize()} epoch {last['epoch']} of {n}: batch {last['batch']} of {last['steps']}",
                last["batch"] / max(1, last["steps"]))
    if ev == "epoch":
        n = last.get("epochs") or planned.get(last["phase"], 0)
        name = _PHASES.get(last["phase"], last["phase"])
        if last["epoch"] < n:
            return f"{name.capitalize()} epoch {last['epoch'] + 1} of {n}: starting.", None
        names = list(planned)
        if last["phase"] in names and names.index(last["phase"]) + 1 < len(names):
            return "Head phase done: unfreezing the base for fine-tuning.", None
        return "Training done: saving the model and evaluating it.", None
    return "Evaluating the model on the held-out split.", None
