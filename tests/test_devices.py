"""Each training child gets GPUs of its own: the worker's device pool, and what a run records about its devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.host.devices import DeviceError, DevicePool, child_device_env, visible_gpu_ids
from pipeline.jobs.backends import LocalBackend
from pipeline.jobs.store import JobStore
from pipeline.runs.folder import RunFolder
from tests.conftest import ROOT, tiny_config, write_shapes_dataset


def test_visible_gpu_ids_follow_cuda_visible_devices():
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": " 1 , 0 "}) == ["1", "0"]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "0,-1,2"}) == ["0"]  # CUDA stops at the first -1
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert child_device_env(["3", "5"]) == {"CUDA_VISIBLE_DEVICES": "3,5"} and child_device_env([]) == {}


def test_the_pool_gives_each_job_its_own_gpus_and_the_oldest_waits():
    pool = DevicePool(["3", "5"])
    assert pool.take({}) == ["3"] and pool.take({"gpus": 1}) == ["5"]
    assert not pool.fits({"gpus": 1}) and not pool.fits({"gpus": 2})
    pool.give_back(["5"])
    assert pool.fits({"gpus": 1}) and not pool.fits({"gpus": 2})
    pool.give_back(["3"])
    assert pool.take({"gpus": 2}) == ["3", "5"]
    pool.give_back(["5", "3"])
    assert pool.free == ["3", "5"]
    assert pool.fits({"gpus": 3})  # can never fit: it is taken, and refused with a message
    with pytest.raises(DeviceError, match=r"train.gpus=3 is more than the 2 GPU\(s\) this worker has \(3,5\)"):
        pool.take({"gpus": 3})
    cpu = DevicePool([])
    assert cpu.fits({"gpus": 4}) and cpu.take({"gpus": 4}) == []


def _start_event(run_dir: str) -> dict:
    return next(
        e for e in map(json.loads, RunFolder(Path(run_dir)).metrics.read_text().splitlines()) if e["event"] == "start"
    )


def test_worker_gives_each_child_its_own_gpus_and_a_two_gpu_job_waits_for_both(tmp_path):
    """CUDA_VISIBLE_DEVICES=3,5 in the worker's environment (no GPU needed: the children train on the CPU)."""
    shapes = write_shapes_dataset(tmp_path / "shapes", per_class=8)
    backend = LocalBackend(JobStore(), autostart=False)

    def quick(gpus):
        return tiny_config(
            model={"backbone": "small_cnn"}, train={"strategy": "from_scratch", "head_epochs": 2, "gpus": gpus}
        )

    a, b, c, d = (backend.submit(str(shapes), quick(g)) for g in (0, 1, 2, 3))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "3,5"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "worker", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    ja, jb, jc, jd = (backend.status(i) for i in (a, b, c, d))
    assert [j.state for j in (ja, jb, jc)] == ["done"] * 3, (ja.error, jb.error, jc.error)
    given = {j.id: _start_event(j.run_dir)["devices"]["given"] for j in (ja, jb, jc)}
    assert (given[a], given[b], given[c]) == ("3", "5", "3,5")
    assert ja.started < jb.finished and jb.started < ja.finished  # the one-GPU jobs ran at once
    assert jc.started >= max(ja.finished, jb.finished)  # the two-GPU job waited for both
    assert jd.state == "failed" and "train.gpus=3 is more than the 2 GPU(s)" in jd.error
    assert f"job {a} started on GPU 3" in proc.stderr and f"job {c} started on GPU 3,5" in proc.stderr
    start = _start_event(ja.run_dir)
    assert start["backend"] == "tensorflow" and start["precision"] == "float32"
    assert start["devices"]["framework"] and start["devices"]["replicas"] == 1


def test_a_run_trains_on_one_device_unless_it_asks_for_more():
    from pipeline import config as config_mod
    from pipeline.training.placement import _take

    gpus = ["/gpu:0", "/gpu:1"]

    def take(kind, names, **train):
        return _take(config_mod.from_dict({"train": train}), names, kind)

    assert take("GPU", gpus) == ["/gpu:0"]  # a CLI run on a 2-GPU machine: one GPU, as the worker gives
    assert take("GPU", gpus, gpus=2) == gpus and take("GPU", gpus, devices=2, gpus=1) == gpus
    assert take("GPU", gpus, devices=1, gpus=2) == ["/gpu:0"]
    assert take("CPU", ["/cpu:0"], gpus=2) == ["/cpu:0"]  # asked for GPUs, has none: the CPU
    with pytest.raises(config_mod.ConfigError, match=r"train.gpus=3 is not allowed: this process sees 2 GPU"):
        take("GPU", gpus, gpus=3)
    with pytest.raises(config_mod.ConfigError, match=r"train.devices=2 is not allowed: this process sees 1 CPU"):
        take("CPU", ["/cpu:0"], devices=2)


def test_a_run_resumed_on_another_backend_or_device_count_is_refused(tmp_path):
    from pipeline.runs.folder import RunFolderError
    from pipeline.training import train as train_mod

    shapes = write_shapes_dataset(tmp_path / "shapes", per_class=8)
    cfg = tiny_config(model={"backbone": "small_cnn"}, train={"strategy": "from_scratch", "head_epochs": 3})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFER_STUDIO_FAULT": "epoch-committed"}
    config = tmp_path / "config.json"
    from pipeline import config as config_mod

    config_mod.save(cfg, config)
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            str(shapes),
            "--run-dir",
            str(tmp_path / "run"),
            "--config",
            str(config),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    run = RunFolder(tmp_path / "run")
    state = run.read_state()
    assert state.placement == {"backend": "tensorflow", "replicas": 1}
    run.write_state(state.copy(placement={"backend": "jax", "replicas": 2}))
    with pytest.raises(
        RunFolderError,
        match=r"was trained on jax with 2 device\(s\) and this process has tensorflow "
        r"with 1; resume it as it started",
    ):
        train_mod.train(str(shapes), run.root, cfg)
    run.write_state(state)
    train_mod.train(str(shapes), run.root, cfg)  # as it started: it resumes and finishes
    assert [e["epoch"] for e in run.epochs()] == [1, 2, 3]
