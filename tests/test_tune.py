"""The model search: a real study of real trainings on a tiny photo set, its pruning, its budget and its resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.jobs.store import JobStore
from pipeline.runs.folder import RunFolder
from pipeline.tuning import space
from pipeline.tuning import study as study_mod
from tests.conftest import ROOT, pipeline_cli
from tests.test_backend_contract import ray_head  # noqa: F401 - a fixture

# Every trial: the frozen base at 160 px, 6 head epochs; the study samples the rest (at 96 px the ImageNet
# features of 48 photos barely separate the classes). An augmented trial's head epochs go through the base
# (head_views=0): on cached views its six epochs of 48 photos end in a blink, before the pruner has a finished
# trial to judge it against
FIXED = [
    "model.image_size=160",
    "augment.head_views=0",
    "train.strategy=feature_extraction",
    "train.head_epochs=6",
    "train.batch_size=16",
    "train.early_stopping_patience=0",
]


def tiny_hymenoptera(shared_dir: Path, dest: Path, train: int = 24, val: int = 12) -> Path:
    """The first ``train``/``val`` photos of each class of hymenoptera (real photos, seconds-long trainings)."""
    for split, n in (("train", train), ("val", val)):
        for cls in ("ants", "bees"):
            (dest / split / cls).mkdir(parents=True)
            for f in sorted((shared_dir / "data" / "hymenoptera" / split / cls).iterdir())[:n]:
                shutil.copy(f, dest / split / cls / f.name)
    return dest


def params(alpha: float, lr: float, augment: str) -> dict:
    """A trial's settings as Optuna's parameters (what study.enqueue_trial takes)."""
    return {
        "backbone": "mobilenet_v2",
        "alpha[mobilenet_v2]": alpha,
        "learning_rate": lr,
        "augment": augment,
        "dropout": 0.1,
    }


def test_the_space_is_what_the_weights_allow_and_a_fixed_field_is_not_sampled(tmp_path):
    (tmp_path / space.weights_file(space.Architecture("mobilenet_v2", 0.35, 224))).write_bytes(b"x")
    archs, notes = space.architectures(tmp_path)
    assert {a.key for a in archs} == {f"mobilenet_v2/0.35/{s}" for s in (96, 128, 160, 192, 224)}
    assert all(a.weights == "imagenet" for a in archs if a.size == 224)
    assert all(a.weights.endswith("_0.35_224_no_top.h5") for a in archs if a.size != 224)
    assert any("MobileNetV3 Small" in n and "left out" in n for n in notes)

    class Fixed:  # a sampler that answers the first choice and the low end (what enqueue_trial would fix)
        def __init__(self):
            self.asked = []

        def suggest_categorical(self, name, choices):
            self.asked.append(name)
            return choices[0]

        def suggest_float(self, name, lo, hi, log=False):
            self.asked.append(name)
            return lo

    sampler = Fixed()
    out = space.sample(sampler, archs, fixed=space.fixed_settings(["model.image_size=64", "train.strategy=fine_tune"]))
    assert out["model.image_size"] == 64 and out["train.strategy"] == "fine_tune" and out["model.weights"] == "imagenet"
    assert "strategy" not in sampler.asked and not any(a.startswith("size[") for a in sampler.asked)
    assert "fine_tune_learning_rate" in sampler.asked
    assert "augment" in sampler.asked
    cost_only = Fixed()  # head_views changes what a trial costs, not its augmentation: still sampled
    space.sample(cost_only, archs, fixed={"augment.head_views": "0"})
    policy = Fixed()  # an augmentation field fixed: the study does not sample one
    space.sample(policy, archs, fixed={"augment.enabled": "false"})
    assert "augment" in cost_only.asked and "augment" not in policy.asked
    with pytest.raises(ValueError, match="empty"):
        space.sample(Fixed(), archs, fixed={"model.backbone": "mobilenet"})


def test_pick_is_the_most_accurate_file_within_the_budget():
    score = {
        "formats": {
            "tflite-float16": {"accuracy": 0.9, "size_bytes": 1_600_000, "latency_ms": 3.0, "passed": True},
            "tflite-int8": {"accuracy": 0.88, "size_bytes": 900_000, "latency_ms": 2.0, "passed": True},
        }
    }
    assert study_mod.pick(score, study_mod.Budget())[0:3:2] == ("tflite-float16", True)
    assert study_mod.pick(score, study_mod.Budget(max_mb=1.0))[0:3:2] == ("tflite-int8", True)
    assert study_mod.pick(score, study_mod.Budget(max_mb=0.5))[0:3:2] == ("tflite-int8", False)
    assert study_mod.pick(score, study_mod.Budget(min_accuracy=0.95))[0:3:2] == ("tflite-int8", False)
    score["formats"]["tflite-int8"]["passed"] = False
    assert study_mod.pick(score, study_mod.Budget(max_mb=1.0))[0:3:2] == ("tflite-float16", False)


@pytest.mark.slow
def test_a_study_prunes_marks_over_budget_and_resumes_after_its_driver_is_killed(
    shared_dir, keras_home_with_weights, tmp_path, ts_home
):
    """4 trials, 2 at a time on the local backend (a worker started for 2 jobs at once): a trial learning at a
    hundredth of the others' rate is pruned by the median pruner; the wider MobileNetV2 is over the size budget
    (infeasible, still listed); the driver is SIGKILLed mid-trial and run again: every trial trains once."""
    data = tiny_hymenoptera(shared_dir, tmp_path / "tiny")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "worker", "--concurrency", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        spec = study_mod.create(
            str(data),
            4,
            name="tiny",
            parallel=2,
            budget=study_mod.Budget(max_mb=0.75),
            overrides=FIXED,
            enqueue=[
                params(0.35, 3e-3, "off"),
                params(0.5, 3e-3, "off"),  # the wider net: its smallest file is over 0.75 MB
                params(0.35, 3e-5, "light"),  # learns at a hundredth of the rate: pruned
                params(0.35, 1e-3, "off"),
            ],
        )
        assert spec.parallel == 2 and spec.trials == 4
        driver = pipeline_cli("tune", "--resume", "tiny", env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # kill it once a trial's job is training
            _, _, table = study_mod.rows("tiny")
            if any(r["state"] == "training" and r["epochs"] >= 1 for r in table):
                break
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        _, status, table = study_mod.rows("tiny")
        assert status == "stopped" and any(r["state"] == "stopped" for r in table)

        again = pipeline_cli("tune", "--resume", "tiny", env=env)
        out, err = again.communicate(timeout=900)
        assert again.returncode == 0, err[-3000:]
        assert "its job goes on" in err and "Traceback" not in err
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

    spec, status, table = study_mod.rows("tiny")
    assert status == "finished" and len(table) == 4, table
    states = {r["trial"]: r["state"] for r in table}
    assert sorted(states.values()).count("pruned") >= 1, states
    over = [r for r in table if r["alpha"] == 0.5]
    assert over and over[0]["state"] == "infeasible" and over[0]["mb"] > 0.75, over
    done = [r for r in table if r["state"] == "done"]
    assert done and all(r["mb"] <= 0.75 and 0 <= r["accuracy"] <= 1 and r["ms"] > 0 for r in done)
    assert study_mod.best(table)["trial"] in {r["trial"] for r in done}
    pruned = [r for r in table if r["state"] == "pruned"]
    assert all(2 <= r["pruned_at"] < 6 for r in pruned), pruned

    # every trial is one job, trained once (the adopted one too): no epoch twice in any run
    jobs = JobStore(ts_home).list()
    assert len(jobs) == 4 and {j.id for j in jobs} == {r["job"] for r in table}
    spans = []
    for r in table:
        epochs = RunFolder(Path(r["run_dir"])).metrics_lines()
        trained = [(e["phase"], e["epoch"]) for e in epochs if e.get("event") == "epoch"]
        assert len(trained) == len(set(trained)), (r["trial"], trained)
        starts = [e["time"] for e in epochs if e.get("event") == "start"]
        assert len(starts) == 1, (r["trial"], "started more than once")
        times = [e["time"] for e in epochs]
        spans.append((min(times), max(times)))
    overlaps = sum(1 for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1])
    assert overlaps >= 1, "two trials trained at once"
    # a scored trial's figures are its score.json's, and --status prints them
    first = next(r for r in done)
    score = json.loads(study_mod.score_file(first["run_dir"]).read_text())
    assert score["threads"] == 1 and score["formats"][first["format"]]["accuracy"] == first["accuracy"]
    for r in table:  # a trial's folder is a run's (delete takes it) and its bundle only what its manifest lists
        assert RunFolder(Path(r["run_dir"])).not_a_run() is None, r
        assert not (Path(r["run_dir"]) / "exports" / "score.json").exists()
    said = subprocess.run(
        [sys.executable, "-m", "pipeline", "tune", "--status", "tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert said.returncode == 0 and "over budget" in said.stdout and "pruned@" in said.stdout, said.stdout
    assert f"best within the budget: trial {study_mod.best(table)['trial']}" in said.stdout


def _spans(table: list[dict]) -> list[tuple[float, float]]:
    """Each trial's training span (first to last metrics.jsonl record)."""
    out = []
    for r in table:
        times = [e["time"] for e in RunFolder(Path(r["run_dir"])).metrics_lines()]
        out.append((min(times), max(times)))
    return out


@pytest.mark.slow
def test_the_same_study_on_a_ray_head_runs_two_trials_at_once(
    ray_head,  # noqa: F811 - the fixture imported above
    shared_dir,
    keras_home_with_weights,
    tmp_path,
):
    """The driver against a real local Ray head (2 CPUs): both trials' jobs train at the same time."""
    from pipeline.jobs.ray_backend import RayBackend

    data = tiny_hymenoptera(shared_dir, tmp_path / "tiny", train=16, val=8)
    study_mod.create(
        str(data), 2, name="on-ray", parallel=2, overrides=FIXED,
        enqueue=[params(0.35, 3e-3, "off"), params(0.35, 1e-3, "off")],
    )  # fmt: skip
    said = []
    study_mod.Driver("on-ray", backend=RayBackend(ray_head), poll=0.3, say=said.append).run()
    _, status, table = study_mod.rows("on-ray")
    assert status == "finished" and [r["state"] for r in table] == ["done", "done"], (table, said)
    (a0, a1), (b0, b1) = _spans(table)
    assert a0 < b1 and b0 < a1, "the two trials trained at the same time on the cluster"
