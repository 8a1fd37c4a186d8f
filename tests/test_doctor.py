"""`python -m pipeline doctor`: what training runs on, read from the real TensorFlow of this machine."""

import json
import os
import subprocess
import sys
from importlib import metadata

from pipeline.host import doctor
from tests.conftest import ROOT


def test_doctor_reports_this_machine_and_a_verdict():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "doctor", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["tensorflow"] == metadata.version("tensorflow")
    assert facts["cpu_cores"] == os.cpu_count()
    assert any(d["type"] == "CPU" for d in facts["devices"])
    gpus = [d for d in facts["devices"] if d["type"] == "GPU"]
    assert ("GPU(s)" in facts["verdict"]) == bool(gpus)
    assert facts["verdict"].startswith("training runs on")
    assert facts["verdict"] == doctor.verdict(facts)

    text = subprocess.run(
        [sys.executable, "-m", "pipeline", "doctor"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    ).stdout
    assert f"tensorflow {facts['tensorflow']}" in text and f"verdict: {facts['verdict']}" in text
    assert facts["keras_backend"] == "tensorflow" and facts["precision"].startswith("float32")
    assert facts["worker_hands_out"] == ["the CPU (one job at a time)"] or facts["system_gpus"]


def test_doctor_on_jax_names_its_devices_and_the_gpus_the_worker_hands_out():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "3,5"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "doctor", "--json", "--backend", "jax"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["keras_backend"] == "jax" and facts["jax"] == metadata.version("jax")
    assert facts["worker_hands_out"] == ["GPU 3", "GPU 5"] and facts["local_worker_jobs_at_once"] == 2
    assert facts["devices"] and facts["verdict"].startswith("training runs on")


def test_verdict_names_why_a_gpu_is_not_used():
    cpu = [{"name": "/physical_device:CPU:0", "type": "CPU"}]
    base = {
        "devices": cpu,
        "built_with_cuda": True,
        "system_gpus": 0,
        "nvidia_driver": None,
        "cuda_version": "12.5.1",
        "cudnn_version": "9",
    }
    assert "no NVIDIA GPU or driver" in doctor.verdict(base)
    assert "no CUDA support" in doctor.verdict({**base, "built_with_cuda": False})
    loaded = doctor.verdict({**base, "nvidia_driver": "NVRM version: 550", "system_gpus": 1})
    assert "although an NVIDIA driver is loaded" in loaded and "CUDA 12.5.1" in loaded
    gpu = doctor.verdict({**base, "devices": [*cpu, {"name": "/physical_device:GPU:0", "type": "GPU"}]})
    assert gpu == "training runs on 1 GPU(s): /physical_device:GPU:0."
