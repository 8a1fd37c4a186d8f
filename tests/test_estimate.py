"""pipeline.quality.estimate: epoch and run times from measured epochs, and time left of a running run."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from pipeline import data as data_mod
from pipeline.quality import estimate
from pipeline.runs.folder import read_jsonl
from tests.conftest import ROOT, tiny_config, write_shapes_dataset


def _steady(run_dir, phase: str) -> float:
    seconds = [
        r["seconds"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "epoch" and r["phase"] == phase
    ]
    return statistics.median(seconds[1:])


def _cli_train(data, run_dir, cfg, tmp_path) -> float:
    """Trains as a user does (its own process); returns the wall time, launch to done."""
    config = tmp_path / f"{run_dir.name}.json"
    config.write_text(cfg.to_json())
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", str(data), "--run-dir", str(run_dir), "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return time.time() - t0


def test_estimate_after_one_run_is_within_2x_of_the_next_run_launch_to_done(tmp_path):
    """Run A is the measurement; the estimate it gives is checked against run B (another seed), measured from
    its launch to its end: start-up, every epoch and the evaluation are in the figure (they were left out)."""
    shapes = write_shapes_dataset(tmp_path / "shapes", per_class=40)
    runs = tmp_path / "runs"
    cfg = tiny_config(
        train={"head_epochs": 5, "fine_tune_epochs": 4}, augment={"enabled": True}, data={"test_fraction": 0.2}
    )
    report = data_mod.scan(shapes, cfg.data)
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
    counts = (len(splits.train), len(splits.val))

    first = estimate.estimate(cfg, *counts, runs, test_images=len(splits.test))
    assert not first.measured and "first guess" in first.basis
    assert first.startup_seconds > 0 and first.finish_seconds > 0

    _cli_train(shapes, runs / "a", cfg, tmp_path)
    est = estimate.estimate(cfg, *counts, runs, test_images=len(splits.test))
    assert est.measured and "1 earlier run" in est.basis and "launch to done" in est.basis
    assert [p.name for p in est.phases] == ["head", "fine_tune"]
    assert est.seconds > sum(p.seconds for p in est.phases) + est.startup_seconds  # the finish is in it

    cfg_b = tiny_config(
        train={"head_epochs": 5, "fine_tune_epochs": 4, "seed": 7},
        augment={"enabled": True},
        data={"test_fraction": 0.2},
    )
    wall = _cli_train(shapes, runs / "b", cfg_b, tmp_path)
    b = next(t for t in estimate.timings(runs) if t.cfg.train.seed == 7)
    assert b.whole is not None and b.whole <= wall and b.whole > 0.8 * wall - 2, (b, wall)  # launch to done
    assert wall / 2 <= est.seconds <= wall * 2, (est, wall)
    for p in est.phases:
        measured = _steady(runs / "b", p.name)
        assert measured / 2 <= p.epoch_seconds <= measured * 2, (p, measured)


def test_progress_counts_epochs_and_time_left():
    cfg = tiny_config(train={"head_epochs": 3, "fine_tune_epochs": 2})
    assert estimate.progress([], cfg) == {"epochs_done": 0, "epochs_total": 5, "seconds_left": None}
    recs = [
        {"event": "epoch", "phase": "head", "epoch": 1, "seconds": 5.0},
        {"event": "progress", "phase": "head", "epoch": 2, "batch": 1},
        {"event": "epoch", "phase": "head", "epoch": 2, "seconds": 2.0},
    ]
    # head: one epoch left at the steady 2 s; fine-tune: 2 epochs at the last measured 2 s
    assert estimate.progress(recs, cfg) == {"epochs_done": 2, "epochs_total": 5, "seconds_left": 6.0}
    assert (
        estimate.describe(42) == "42 s"
        and estimate.describe(600) == "10 min"
        and estimate.describe(4800) == "1 h 20 min"
    )


def test_time_left_moves_with_every_progress_line_and_counts_the_phase_ahead_and_the_finish():
    """ "Time left" froze for a minute across the phase switch: a phase not started counted at the last epoch's
    time, and nothing moved between epoch lines."""
    cfg = tiny_config(train={"head_epochs": 2, "fine_tune_epochs": 2})
    est = estimate.Estimate(
        (estimate.PhaseEstimate("head", 2, 10.0, 3.0), estimate.PhaseEstimate("fine_tune", 2, 20.0, 8.0)),
        True,
        "",
        startup_seconds=30.0,
        finish_seconds=6.0,
    )
    recs = [{"event": "epoch", "phase": "head", "epoch": 1, "seconds": 10.0}]
    start = estimate.progress(recs, cfg, est)["seconds_left"]
    assert start == 3.0 + 28.0 + 6.0  # one steady head epoch (this run's own), fine-tune as estimated, the finish
    lefts = [
        estimate.progress(
            [*recs, {"event": "progress", "phase": "head", "epoch": 2, "batch": b, "steps": 4}], cfg, est
        )["seconds_left"]
        for b in (1, 2, 3)
    ]
    assert start > lefts[0] > lefts[1] > lefts[2]
