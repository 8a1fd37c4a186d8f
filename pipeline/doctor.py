"""``python -m pipeline doctor``: what a training job here will run on, so a CPU-only "GPU backend" shows at once.

Reports the TensorFlow and Keras versions, whether this TensorFlow was built with CUDA and which CUDA and
cuDNN it expects, the devices TensorFlow sees, NVIDIA GPUs the system shows (driver), the thread
settings, the job backend and how many jobs the local worker runs at once, and one verdict sentence.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def report() -> dict[str, Any]:
    """The facts, as a dict (the CLI prints it as lines or JSON)."""
    import keras
    import tensorflow as tf

    from pipeline.jobs.worker import default_concurrency, visible_gpus

    build = dict(tf.sysconfig.get_build_info())
    devices = [{"name": d.name, "type": d.device_type} for d in tf.config.list_physical_devices()]
    gpus = [d for d in devices if d["type"] == "GPU"]
    driver = Path("/proc/driver/nvidia/version")
    out = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "built_with_cuda": bool(tf.test.is_built_with_cuda()),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "nvidia_driver": driver.read_text().splitlines()[0].strip() if driver.exists() else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "system_gpus": visible_gpus(),
        "devices": devices,
        "cpu_cores": os.cpu_count(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "all cores (TensorFlow default)",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "TensorFlow default",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "backend": "ray at " + os.environ["TRANSFER_STUDIO_RAY_ADDRESS"]
        if os.environ.get("TRANSFER_STUDIO_RAY_ADDRESS") else "local worker",
        "local_worker_jobs_at_once": default_concurrency(),
        "mixed_precision": "mixed_float16 (a GPU is visible)" if gpus else "off (float32 on CPU)",
    }
    out["verdict"] = verdict(out)
    return out


def verdict(facts: dict[str, Any]) -> str:
    """One sentence: where training will run, and what to check when a GPU was expected."""
    gpus = [d for d in facts["devices"] if d["type"] == "GPU"]
    if gpus:
        return f"training runs on {len(gpus)} GPU(s): {', '.join(d['name'] for d in gpus)}."
    if not facts["built_with_cuda"]:
        return ("training runs on the CPU: this TensorFlow build has no CUDA support "
                "(on Linux with an NVIDIA GPU, install tensorflow[and-cuda] at the pinned version).")
    if facts["system_gpus"] and not facts["nvidia_driver"]:
        return "training runs on the CPU: CUDA_VISIBLE_DEVICES names GPUs but no NVIDIA driver is loaded."
    if facts["nvidia_driver"]:
        return ("training runs on the CPU although an NVIDIA driver is loaded: TensorFlow found no usable GPU "
                f"(CUDA {facts['cuda_version']} / cuDNN {facts['cudnn_version']} libraries missing, or "
                "CUDA_VISIBLE_DEVICES hides them); run with TF_CPP_MIN_LOG_LEVEL=0 to see why.")
    return "training runs on the CPU: no NVIDIA GPU or driver is visible on this machine."


def format_report(facts: dict[str, Any]) -> str:
    """Plain-text lines for the terminal."""
    devices = ", ".join(f"{d['name']} ({d['type']})" for d in facts["devices"])
    lines = [
        f"python {facts['python']} on {platform.system()} {platform.machine()} ({sys.executable})",
        f"tensorflow {facts['tensorflow']}, keras {facts['keras']}",
        f"built with CUDA: {'yes' if facts['built_with_cuda'] else 'no'}"
        + (f" (CUDA {facts['cuda_version']}, cuDNN {facts['cudnn_version']})" if facts["built_with_cuda"] else ""),
        f"NVIDIA driver: {facts['nvidia_driver'] or 'not found'}; GPUs the system shows: {facts['system_gpus']}"
        + (f"; CUDA_VISIBLE_DEVICES={facts['cuda_visible_devices']}" if facts["cuda_visible_devices"] is not None
           else ""),
        f"devices TensorFlow sees: {devices}",
        f"threads: {facts['cpu_cores']} cores; intra-op {facts['intra_op_threads']}, inter-op "
        f"{facts['inter_op_threads']}" + (f"; OMP_NUM_THREADS={facts['omp_num_threads']}" if facts["omp_num_threads"]
                                         else ""),
        f"job backend: {facts['backend']}; the local worker runs {facts['local_worker_jobs_at_once']} job(s) at once",
        f"mixed precision: {facts['mixed_precision']}",
        f"verdict: {facts['verdict']}",
    ]
    return "\n".join(lines)
