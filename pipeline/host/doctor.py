"""``python -m pipeline doctor``: what a training job here will run on, so a CPU-only "GPU backend" shows at once.

Reports the Keras backend a run trains on (``$KERAS_BACKEND``, else tensorflow; ``--backend`` asks about the
other), the framework versions, for TensorFlow whether it was built with CUDA and which CUDA and cuDNN it
expects, the devices the framework sees, the NVIDIA GPUs the system shows (driver), the precision a run
trains in unless told otherwise, the GPUs the local worker hands out (one job each), thread settings, the job
backend, and one verdict sentence.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.host.devices import jobs_at_once, select_backend, visible_gpu_ids

PRECISION_NOTE = (
    "float32 on every device unless train.precision says mixed_float16 or mixed_bfloat16 "
    "(model.keras and exports are float32 either way)"
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def report(backend: str = "") -> dict[str, Any]:
    """The facts, as a dict (the CLI prints it as lines or JSON).

    Raises:
        DeviceError: ``backend`` differs from the one Keras already runs on in this process.
    """
    backend = select_backend(backend)
    import keras

    gpu_ids = visible_gpu_ids()
    driver = Path("/proc/driver/nvidia/version")
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "keras_backend": backend,
        "keras": keras.__version__,
        "tensorflow": _version("tensorflow"),
        "jax": _version("jax"),
        "nvidia_driver": driver.read_text().splitlines()[0].strip() if driver.exists() else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "system_gpus": len(gpu_ids),
        "cpu_cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "backend": "ray at " + os.environ["TRANSFER_STUDIO_RAY_ADDRESS"]
        if os.environ.get("TRANSFER_STUDIO_RAY_ADDRESS")
        else "local worker",
        "local_worker_jobs_at_once": jobs_at_once(gpu_ids),
        "worker_hands_out": [f"GPU {i}" for i in gpu_ids] or ["the CPU (one job at a time)"],
        "precision": PRECISION_NOTE,
    }
    out.update(_tensorflow_facts() if backend == "tensorflow" else _jax_facts())
    out["verdict"] = verdict(out)
    return out


def _tensorflow_facts() -> dict[str, Any]:
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    return {
        "built_with_cuda": bool(tf.test.is_built_with_cuda()),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "devices": [{"name": d.name, "type": d.device_type} for d in tf.config.list_physical_devices()],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "all cores (TensorFlow default)",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "TensorFlow default",
    }


def _jax_facts() -> dict[str, Any]:
    import jax

    devices = [
        {
            "name": f"{d.platform}:{d.id} ({d.device_kind})",
            "type": "GPU" if d.platform in ("gpu", "cuda") else d.platform.upper(),
        }
        for d in jax.devices()
    ]
    backends = {d.platform for d in jax.devices()}
    return {
        "built_with_cuda": any(p in ("gpu", "cuda") for p in backends) or _version("jax-cuda12-plugin") is not None,
        "cuda_version": _version("jax-cuda12-plugin"),
        "cudnn_version": None,
        "devices": devices,
        "intra_op_threads": "XLA default",
        "inter_op_threads": "XLA default",
    }


def verdict(facts: dict[str, Any]) -> str:
    """One sentence: where training will run, and what to check when a GPU was expected."""
    gpus = [d for d in facts["devices"] if d["type"] == "GPU"]
    framework = facts.get("keras_backend", "tensorflow")
    if gpus:
        return f"training runs on {len(gpus)} GPU(s): {', '.join(d['name'] for d in gpus)}."
    if not facts["built_with_cuda"]:
        how = (
            "install tensorflow[and-cuda] at the pinned version"
            if framework == "tensorflow"
            else "install jax[cuda12] at the pinned version"
        )
        return (
            f"training runs on the CPU: this {framework} build has no CUDA support "
            f"(on Linux with an NVIDIA GPU, {how})."
        )
    if facts["system_gpus"] and not facts["nvidia_driver"]:
        return "training runs on the CPU: CUDA_VISIBLE_DEVICES names GPUs but no NVIDIA driver is loaded."
    if facts["nvidia_driver"]:
        return (
            f"training runs on the CPU although an NVIDIA driver is loaded: {framework} found no usable GPU "
            f"(CUDA {facts['cuda_version']} / cuDNN {facts['cudnn_version']} libraries missing, or "
            "CUDA_VISIBLE_DEVICES hides them); run with TF_CPP_MIN_LOG_LEVEL=0 to see why."
        )
    return "training runs on the CPU: no NVIDIA GPU or driver is visible on this machine."


def format_report(facts: dict[str, Any]) -> str:
    """Plain-text lines for the terminal."""
    devices = ", ".join(f"{d['name']} ({d['type']})" for d in facts["devices"])
    framework = facts["keras_backend"]
    lines = [
        f"python {facts['python']} on {platform.system()} {platform.machine()} ({sys.executable})",
        f"keras {facts['keras']} on {framework}; tensorflow {facts['tensorflow'] or 'not installed'}, "
        f"jax {facts['jax'] or 'not installed'}",
        f"{framework} built with CUDA: {'yes' if facts['built_with_cuda'] else 'no'}"
        + (f" (CUDA {facts['cuda_version']}, cuDNN {facts['cudnn_version']})" if facts["built_with_cuda"] else ""),
        f"NVIDIA driver: {facts['nvidia_driver'] or 'not found'}; GPUs the system shows: {facts['system_gpus']}"
        + (
            f"; CUDA_VISIBLE_DEVICES={facts['cuda_visible_devices']}"
            if facts["cuda_visible_devices"] is not None
            else ""
        ),
        f"devices {framework} sees: {devices}",
        f"threads: {facts['cpu_cores']} cores; intra-op {facts['intra_op_threads']}, inter-op "
        f"{facts['inter_op_threads']}"
        + (f"; OMP_NUM_THREADS={facts['omp_num_threads']}" if facts["omp_num_threads"] else ""),
        f"job backend: {facts['backend']}; the local worker runs {facts['local_worker_jobs_at_once']} job(s) at once, "
        f"handing out {', '.join(facts['worker_hands_out'])}",
        f"precision: {facts['precision']}",
        f"verdict: {facts['verdict']}",
    ]
    return "\n".join(lines)
