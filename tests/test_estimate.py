"""pipeline.estimate: epoch and run times from measured epochs, and time left of a running run."""

from __future__ import annotations

import statistics

from pipeline import data as data_mod
from pipeline import estimate
from pipeline.runfolder import read_jsonl
from pipeline.train import train
from tests.conftest import tiny_config, write_shapes_dataset


def _steady(run_dir, phase: str) -> float:
    seconds = [r["seconds"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "epoch"
               and r["phase"] == phase]
    return statistics.median(seconds[1:])


def test_estimate_after_one_run_is_within_2x_of_the_next_runs_epochs(tmp_path):
    """Run A is the measurement; the estimate it gives is checked against run B (another seed), measured."""
    shapes = write_shapes_dataset(tmp_path / "shapes", per_class=40)
    runs = tmp_path / "runs"
    cfg = tiny_config(train={"head_epochs": 5, "fine_tune_epochs": 4}, augment={"enabled": True})
    report = data_mod.scan(shapes, cfg.data)
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)

    first = estimate.estimate(cfg, len(splits.train), len(splits.val), runs)
    assert not first.measured and "first guess" in first.basis

    train(str(shapes), runs / "a", cfg)
    est = estimate.estimate(cfg, len(splits.train), len(splits.val), runs)
    assert est.measured and "1 earlier run" in est.basis
    assert [p.name for p in est.phases] == ["head", "fine_tune"] and est.seconds > 0

    cfg_b = tiny_config(train={"head_epochs": 5, "fine_tune_epochs": 4, "seed": 7}, augment={"enabled": True})
    train(str(shapes), runs / "b", cfg_b)
    for p in est.phases:
        measured = _steady(runs / "b", p.name)
        assert measured / 2 <= p.epoch_seconds <= measured * 2, (p, measured)


def test_progress_counts_epochs_and_time_left():
    cfg = tiny_config(train={"head_epochs": 3, "fine_tune_epochs": 2})
    assert estimate.progress([], cfg) == {"epochs_done": 0, "epochs_total": 5, "seconds_left": None}
    recs = [{"event": "epoch", "phase": "head", "epoch": 1, "seconds": 5.0},
            {"event": "progress", "phase": "head", "epoch": 2, "batch": 1},
            {"event": "epoch", "phase": "head", "epoch": 2, "seconds": 2.0}]
    # head: one epoch left at the steady 2 s; fine-tune: 2 epochs at the last measured 2 s
    assert estimate.progress(recs, cfg) == {"epochs_done": 2, "epochs_total": 5, "seconds_left": 6.0}
    assert estimate.describe(42) == "42 s" and estimate.describe(600) == "10 min" and estimate.describe(4800) == "1 h 20 min"
