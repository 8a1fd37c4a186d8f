"""How long a run will take, launch to done, from whole runs measured on the machine that trains; time left.

A run's time is its stages: **start-up** (the process starting, imports, the scan, decoding into the cache,
building the model: up to the first phase), each **phase** (its first epoch with tracing and compiling and
whatever precedes it, then steady epochs), and the **finish** (evaluation, writing the model). Every
finished run in the backend's runs folder measures them all, from the times in its ``metrics.jsonl`` and
its process's start time. An estimate for a new run uses the closest measured shape (backbone, alpha,
input size, strategy, augmentation, batch size), scaled by image count. Without a run of that shape, it is
a first guess from a reference measured on 2 CPU cores, scaled by model size and corrected by how fast the
runs of other shapes measured here went against their own first guess; it says so.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import backbones
from pipeline.config import RunConfig, phases_for
from pipeline.runs import events
from pipeline.runs.folder import read_jsonl

MAX_RUNS_READ = 100  # the newest run folders are enough to know this machine

# The first guess: MobileNetV2 alpha 0.35 at 224 on 2 CPU cores (hymenoptera: 244 train + 153 val images;
# measured launch to done 75 s: start-up 26 s, head epochs 12.0 / 3.1 / 2.9 s, fine-tune 15.4 / 8.7 s, finish
# 6.7 s; head epochs on cached features about 90x faster after a feature pass); other backbones and sizes scale
# with parameters x pixels.
_REFERENCE_SECONDS_PER_IMAGE = {"head": 0.0075, "fine_tune": 0.022, "scratch": 0.022, "cached": 0.00004}
_REFERENCE_FIRST_EPOCH_EXTRA = {"head": 9.0, "fine_tune": 6.5, "scratch": 6.5, "cached": 6.0}
_REFERENCE_PARAMS = 0.4
_REFERENCE_PIXELS = 224 * 224
_STARTUP_FIXED = 15.0  # Python, TensorFlow and the model, whatever the data
_STARTUP_PER_IMAGE = 0.027  # hashing, decoding and caching each image
_FINISH_FIXED = 5.0  # writing model.keras, loading it to evaluate
_FINISH_PER_IMAGE = 0.008  # one evaluated image at the reference scale


@dataclass(frozen=True)
class PhaseEstimate:
    name: str
    epochs: int
    first_epoch_seconds: float  # the first epoch, with what precedes it (model rebuilt, tracing, compiling)
    epoch_seconds: float  # a steady epoch after the first

    @property
    def seconds(self) -> float:
        return self.first_epoch_seconds + max(self.epochs - 1, 0) * self.epoch_seconds if self.epochs else 0.0


@dataclass(frozen=True)
class Estimate:
    phases: tuple[PhaseEstimate, ...]
    measured: bool
    basis: str  # one sentence: which runs the figures come from, or that it is a first guess
    startup_seconds: float = 0.0  # process start to the first phase: imports, scan, cache, model
    finish_seconds: float = 0.0  # after the last epoch: evaluation, the model written

    @property
    def seconds(self) -> float:
        """Launch to done: start-up, every phase, finish."""
        return self.startup_seconds + sum(p.seconds for p in self.phases) + self.finish_seconds


@dataclass
class RunTiming:
    """The stages of one finished run, as measured (seconds)."""

    cfg: RunConfig
    images: int  # train + val
    evaluated: int  # the images evaluation predicted (test, else val)
    startup: float | None  # None: the run was resumed, or its process start was not recorded
    finish: float | None
    phases: dict[str, tuple[float, list[float]]] = field(default_factory=dict)  # first epoch (all in), steady ones

    @property
    def whole(self) -> float | None:
        if self.startup is None or self.finish is None:
            return None
        return self.startup + sum(first + sum(rest) for first, rest in self.phases.values()) + self.finish


def shape_key(cfg: RunConfig, phase: str) -> tuple[Any, ...]:
    """What makes epochs of one phase comparable: the model's shape and what runs through it."""
    m, t = cfg.model, cfg.train
    return (
        m.backbone,
        m.alpha,
        m.image_size,
        t.strategy,
        cfg.augment.enabled,
        cfg.augment.cached_views,
        t.batch_size,
        phase,
    )


def timing(records: list[dict[str, Any]], cfg: RunConfig, splits: dict[str, Any]) -> RunTiming:
    """A run's stages from its metrics.jsonl records (phases with at least one epoch)."""
    images = len(splits["train"]) + len(splits["val"])
    evaluated = len(splits.get("test") or splits["val"])
    starts = [r for r in records if r.get("event") in (events.START, events.RESUMED)]
    once = len(starts) == 1 and starts[0].get("event") == events.START and starts[0].get("process_started")
    first_phase = next((r for r in records if r.get("event") == events.PHASE), None)
    epochs = [r for r in records if r.get("event") == events.EPOCH and r.get("seconds") is not None]
    done = next((r for r in records if r.get("event") == events.DONE), None)
    out = RunTiming(cfg, images, evaluated, None, None)
    if once and first_phase is not None:
        out.startup = first_phase["time"] - starts[0]["process_started"]
    boundary = first_phase["time"] if first_phase is not None else None
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for rec in epochs:
        by_phase.setdefault(rec["phase"], []).append(rec)
    for phase, recs in by_phase.items():
        rest = [float(r["seconds"]) for r in recs[1:]]
        first = float(recs[0]["seconds"])
        if once and boundary is not None and "time" in recs[-1]:
            first = max(recs[-1]["time"] - boundary - sum(rest), first)  # all that came before its first epoch too
        out.phases[phase] = (first, rest)
        boundary = recs[-1].get("time")
    if once and done is not None and epochs and "time" in epochs[-1]:
        out.finish = done["time"] - epochs[-1]["time"]
    return out


def timings(runs_dir: Path) -> list[RunTiming]:
    """The measured stages of the newest run folders (up to MAX_RUNS_READ) under ``runs_dir``."""
    from pipeline import config as config_mod

    if not runs_dir.is_dir():
        return []
    stamped = []
    for p in runs_dir.iterdir():
        if p.name.startswith("."):  # a folder being deleted (.deleting-*), a temporary one
            continue
        try:
            stamped.append(((p / "metrics.jsonl").stat().st_mtime, p))
        except OSError:  # no metrics yet, or deleted meanwhile
            continue
    folders = [p for _, p in sorted(stamped, key=lambda sp: sp[0], reverse=True)[:MAX_RUNS_READ]]
    out = []
    for folder in folders:
        try:
            cfg = config_mod.load(folder / "config.json")
            splits = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["splits"]
            out.append(timing(read_jsonl(folder / "metrics.jsonl"), cfg, splits))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a run still being prepared, or from another version
    return out


def _scale(cfg: RunConfig) -> float:
    spec = backbones.get(cfg.model.backbone)
    params = spec.params_millions * (cfg.model.alpha**2 if spec.alphas else 1.0)
    return max(params, 0.05) / _REFERENCE_PARAMS * cfg.model.image_size**2 / _REFERENCE_PIXELS


def _first_guess(cfg: RunConfig, phase: str, images: int) -> tuple[float, float]:
    views = cfg.augment.cached_views
    kind = "cached" if phase == "head" and views and cfg.train.strategy != "from_scratch" else phase
    steady = _REFERENCE_SECONDS_PER_IMAGE[kind] * _scale(cfg) * images
    extra = _REFERENCE_FIRST_EPOCH_EXTRA[kind] * (views if kind == "cached" else 1)  # one feature pass a view
    return steady + extra, steady


def _guess(cfg: RunConfig, images: int, evaluated: int) -> Estimate:
    phases = []
    for phase in phases_for(cfg):
        first, steady = _first_guess(cfg, phase.name, images)
        phases.append(PhaseEstimate(phase.name, phase.epochs, first, steady))
    return Estimate(
        tuple(phases),
        False,
        "",
        _STARTUP_FIXED + _STARTUP_PER_IMAGE * images,
        _FINISH_FIXED + _FINISH_PER_IMAGE * _scale(cfg) * evaluated,
    )


def _scaled(measured: float, fixed: float, images: int, measured_images: int) -> float:
    """A stage measured on ``measured_images``: its fixed part as is, the rest in proportion to the images."""
    fixed = min(fixed, measured)
    return fixed + (measured - fixed) * images / max(measured_images, 1)


def estimate(cfg: RunConfig, train_images: int, val_images: int, runs_dir: Path, *, test_images: int = 0) -> Estimate:
    """The time of each stage and of the whole run (launch to done) for ``cfg`` on this many images.

    Args:
        runs_dir: The folder of the backend's run folders (the measurements).
        test_images: The test split's size (evaluation predicts it; without one, the validation split).
    """
    images = train_images + val_images
    evaluated = test_images or val_images
    known = timings(runs_dir)
    guess = _guess(cfg, images, evaluated)
    same = [t for t in known if shape_key(t.cfg, "") == shape_key(cfg, "")]
    # how fast this machine is against the reference: measured whole runs over their own first guess
    speed = [t.whole / _guess(t.cfg, t.images, t.evaluated).seconds for t in known if t.whole]
    factor = statistics.median(speed) if speed else 1.0
    phases, guessed, counted = [], False, 0
    for phase, guessed_phase in zip(phases_for(cfg), guess.phases, strict=True):
        samples = [t for t in same if phase.name in t.phases]
        if samples:
            first = statistics.median(t.phases[phase.name][0] / t.images for t in samples) * images
            steadies = [
                statistics.median(t.phases[phase.name][1]) / t.images for t in samples if t.phases[phase.name][1]
            ]
            steady = statistics.median(steadies) * images if steadies else first
            counted = max(counted, len(samples))
        else:
            first, steady = guessed_phase.first_epoch_seconds * factor, guessed_phase.epoch_seconds * factor
            guessed = True
        phases.append(PhaseEstimate(phase.name, phase.epochs, round(first, 2), round(steady, 2)))
    starts = [t for t in same if t.startup is not None]
    startup = (
        statistics.median(_scaled(t.startup, _STARTUP_FIXED, images, t.images) for t in starts)
        if starts
        else guess.startup_seconds * factor
    )
    ends = [t for t in same if t.finish is not None]
    finish = (
        statistics.median(_scaled(t.finish, _FINISH_FIXED, evaluated, t.evaluated) for t in ends)
        if ends
        else guess.finish_seconds * factor
    )
    guessed = guessed or not starts or not ends
    if guessed:
        basis = (
            "a first guess (no run of this backbone, size, strategy and batch size has finished on this "
            "machine yet"
            + (f"; scaled by {len(speed)} finished run(s) of other shapes here" if speed else "")
            + "); it is replaced by measured figures after the first run"
        )
    else:
        basis = f"measured on {counted} earlier run(s) of the same shape on this machine, launch to done"
    return Estimate(tuple(phases), not guessed, basis, round(startup, 1), round(finish, 1))


def progress(records: list[dict[str, Any]], cfg: RunConfig, est: Estimate | None = None) -> dict[str, Any]:
    """Epochs done of the planned total, and seconds left, from a run's own ``metrics.jsonl`` records.

    Seconds left: each remaining epoch at the median of this run's steady epochs of its phase (a phase not
    started yet: ``est``'s first and steady epoch, else the last epoch measured in the run), less the part of
    the current epoch its latest progress line shows done, plus ``est``'s finish (evaluation). It moves with
    every progress line; ``None`` before the first epoch.
    """
    planned = phases_for(cfg)
    done: dict[str, list[float]] = {}
    current = None  # the latest batch line of an epoch not finished yet
    for rec in records:
        if rec.get("event") == events.EPOCH:
            done.setdefault(rec["phase"], []).append(float(rec.get("seconds") or 0.0))
            current = None
        elif rec.get("event") == events.PROGRESS and rec.get("steps"):
            current = rec
    total = sum(p.epochs for p in planned)
    finished = sum(min(len(done.get(p.name, [])), p.epochs) for p in planned)
    measured = [s for seconds in done.values() for s in seconds]
    if not measured:
        return {"epochs_done": finished, "epochs_total": total, "seconds_left": None}
    ahead = {p.name: p for p in est.phases} if est else {}
    left = est.finish_seconds if est else 0.0
    for p in planned:
        seconds = done.get(p.name, [])
        if len(seconds) > 1 or (seconds and p.name not in ahead):  # a steady epoch of its own (the first traces)
            this = per_epoch = statistics.median(seconds[1:] or seconds)
            left += max(p.epochs - len(seconds), 0) * per_epoch
        elif seconds:
            this = ahead[p.name].epoch_seconds
            left += max(p.epochs - len(seconds), 0) * this
        elif p.name in ahead:
            this = ahead[p.name].first_epoch_seconds
            left += ahead[p.name].seconds
        else:
            this = measured[-1]
            left += p.epochs * this
        if current is not None and current.get("phase") == p.name:
            left -= min(current["batch"] / current["steps"], 1.0) * this
    return {"epochs_done": finished, "epochs_total": total, "seconds_left": round(max(left, 0.0), 1)}


def describe(seconds: float) -> str:
    """``seconds`` as a person says it: "40 s", "3 min", "1 h 20 min"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
