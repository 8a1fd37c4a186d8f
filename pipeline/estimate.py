"""How long an epoch and a run will take, from epochs measured on the machine that trains, and time left.

Every finished epoch of every run in the backend's runs folder is a measurement: its seconds per image
(train + validation images) for one phase of one model shape (backbone, alpha, input size, strategy,
augmentation on or off, batch size). An estimate for a new run uses the closest measured shape, scaled by
image count; the first epoch of a phase (tracing, first execution) is measured apart from the steady ones.
Before any run of a similar shape has finished, the estimate is a first guess from a reference measured on
2 CPU cores, scaled by model size, and says so.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import backbones
from pipeline.config import RunConfig
from pipeline.runfolder import read_jsonl

MAX_RUNS_READ = 100  # the newest run folders are enough to know this machine

# The first guess: MobileNetV2 alpha 0.35 at 224 on 2 idle CPU cores (bench/bench_train.py, hymenoptera:
# 244 train + 153 val images; steady head epochs with augmentation 1.2 s, fine-tune 2.5 s; first epochs 3.7 s
# and 8.2 s; head epochs on cached features about 90x faster after a 2 s feature pass); other backbones and
# sizes scale with parameters x pixels.
_REFERENCE_SECONDS_PER_IMAGE = {"head": 0.0030, "fine_tune": 0.0063, "scratch": 0.0063, "cached": 0.00004}
_REFERENCE_FIRST_EPOCH_EXTRA = {"head": 2.5, "fine_tune": 5.7, "scratch": 5.7, "cached": 2.0}
_REFERENCE_PARAMS = 0.4
_REFERENCE_PIXELS = 224 * 224


@dataclass(frozen=True)
class PhaseEstimate:
    name: str
    epochs: int
    first_epoch_seconds: float
    epoch_seconds: float  # a steady epoch after the first

    @property
    def seconds(self) -> float:
        return self.first_epoch_seconds + max(self.epochs - 1, 0) * self.epoch_seconds if self.epochs else 0.0


@dataclass(frozen=True)
class Estimate:
    phases: tuple[PhaseEstimate, ...]
    measured: bool
    basis: str  # one sentence: which runs the figures come from, or that it is a first guess

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)


def shape_key(cfg: RunConfig, phase: str) -> tuple[Any, ...]:
    """What makes epochs of one phase comparable: the model's shape and what runs through it."""
    m, t = cfg.model, cfg.train
    return (m.backbone, m.alpha, m.image_size, t.strategy, cfg.augment.enabled, t.batch_size, phase)


def measurements(runs_dir: Path) -> dict[tuple[Any, ...], list[tuple[float, float]]]:
    """Shape key -> (first-epoch seconds per image, steady-epoch seconds per image) of each measured phase."""
    from pipeline import config as config_mod

    out: dict[tuple[Any, ...], list[tuple[float, float]]] = {}
    if not runs_dir.is_dir():
        return out
    folders = sorted((p for p in runs_dir.iterdir() if (p / "metrics.jsonl").exists()),
                     key=lambda p: (p / "metrics.jsonl").stat().st_mtime, reverse=True)[:MAX_RUNS_READ]
    for folder in folders:
        try:
            cfg = config_mod.load(folder / "config.json")
            splits = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError):
            continue  # a run still being prepared, or from another version
        images = len(splits["train"]) + len(splits["val"])
        by_phase: dict[str, list[float]] = {}
        for rec in read_jsonl(folder / "metrics.jsonl"):
            if rec.get("event") == "epoch" and rec.get("seconds"):
                by_phase.setdefault(rec["phase"], []).append(float(rec["seconds"]))
        for phase, seconds in by_phase.items():
            steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
            out.setdefault(shape_key(cfg, phase), []).append((seconds[0] / images, steady / images))
    return out


def _first_guess(cfg: RunConfig, phase: str, images: int) -> tuple[float, float]:
    spec = backbones.get(cfg.model.backbone)
    params = spec.params_millions * (cfg.model.alpha ** 2 if spec.alphas else 1.0)
    scale = max(params, 0.05) / _REFERENCE_PARAMS * cfg.model.image_size ** 2 / _REFERENCE_PIXELS
    kind = "cached" if phase == "head" and not cfg.augment.enabled and cfg.train.strategy != "from_scratch" else phase
    steady = _REFERENCE_SECONDS_PER_IMAGE[kind] * scale * images
    return steady + _REFERENCE_FIRST_EPOCH_EXTRA[kind], steady


def estimate(cfg: RunConfig, train_images: int, val_images: int, runs_dir: Path) -> Estimate:
    """The time of each phase and of the whole run for ``cfg`` on this many images.

    Args:
        runs_dir: The folder of the backend's run folders (the measurements).
    """
    from pipeline.train import phases_for

    images = train_images + val_images
    known = measurements(runs_dir)
    phases, measured_runs, guessed = [], 0, False
    for phase in phases_for(cfg):
        samples = known.get(shape_key(cfg, phase.name))
        if samples:
            first = statistics.median(s[0] for s in samples) * images
            steady = statistics.median(s[1] for s in samples) * images
            measured_runs = max(measured_runs, len(samples))
        else:
            first, steady = _first_guess(cfg, phase.name, images)
            guessed = True
        phases.append(PhaseEstimate(phase.name, phase.epochs, round(first, 2), round(steady, 2)))
    if guessed:
        basis = ("a first guess (no run of this backbone, size, strategy and batch size has finished on this "
                 "machine yet); it is replaced by measured figures after the first run")
    else:
        basis = f"measured on {measured_runs} earlier run(s) of the same shape on this machine"
    return Estimate(tuple(phases), not guessed, basis)


def progress(records: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """Epochs done of the planned total, and seconds left, from a run's own ``metrics.jsonl`` records.

    Seconds left: each remaining epoch at the median of this run's steady epochs of its phase (or, before a
    phase has a steady epoch, at the last epoch measured in the run); ``None`` before the first epoch.
    """
    from pipeline.train import phases_for

    planned = phases_for(cfg)
    done: dict[str, list[float]] = {}
    for rec in records:
        if rec.get("event") == "epoch":
            done.setdefault(rec["phase"], []).append(float(rec.get("seconds") or 0.0))
    total = sum(p.epochs for p in planned)
    finished = sum(min(len(done.get(p.name, [])), p.epochs) for p in planned)
    measured = [s for seconds in done.values() for s in seconds]
    if not measured:
        return {"epochs_done": finished, "epochs_total": total, "seconds_left": None}
    left = 0.0
    for p in planned:
        seconds = done.get(p.name, [])
        per_epoch = statistics.median(seconds[1:] or seconds) if seconds else measured[-1]
        left += max(p.epochs - len(seconds), 0) * per_epoch
    return {"epochs_done": finished, "epochs_total": total, "seconds_left": round(left, 1)}


def describe(seconds: float) -> str:
    """``seconds`` as a person says it: "40 s", "3 min", "1 h 20 min"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
