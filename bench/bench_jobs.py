"""Benchmark: the job backends' latency and idle cost.

- local: time from ``submit`` to the first epoch line in metrics.jsonl on an idle worker, and to done
  (sample:digits, its preset); the worker's own CPU use while idle (10 s from /proc, heartbeats included);
- ray: the same short job through a Ray head started here on 127.0.0.1, for the overhead against local.

Usage: ``python bench/bench_jobs.py``. Not a test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_job(backend, cfg) -> dict:
    from pipeline.runs.folder import RunFolder

    t0 = time.monotonic()
    job_id = backend.submit("sample:digits", cfg)
    t_submitted = time.monotonic() - t0
    run = RunFolder(Path(backend.status(job_id).run_dir))
    while not run.epochs():
        time.sleep(0.02)
    first = time.monotonic() - t0
    while backend.status(job_id).state in ("queued", "running"):
        time.sleep(0.1)
    return {
        "submit_call_s": round(t_submitted, 2),
        "submit_to_first_epoch_s": round(first, 2),
        "submit_to_done_s": round(time.monotonic() - t0, 2),
        "state": backend.status(job_id).state,
        "epochs": len(run.epochs()),
    }


def main() -> int:
    os.environ["TRANSFER_STUDIO_HOME"] = tempfile.mkdtemp(prefix="bench-jobs-")
    sys.path.insert(0, str(ROOT))
    from pipeline.data import materialize_sample
    from pipeline.jobs.backends import LocalBackend
    from pipeline.jobs.store import JobStore
    from pipeline.training.presets import config_for

    materialize_sample("digits")  # written once per home; not part of the latency
    cfg = config_for("sample:digits", overrides=["train.head_epochs=3"])
    results = {}
    local = LocalBackend(JobStore(), autostart=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not local.worker_alive():
            time.sleep(0.05)
        time.sleep(2)
        c0, t0 = cpu_seconds(worker.pid), time.monotonic()
        time.sleep(10)
        results["idle_worker_cpu_percent"] = round((cpu_seconds(worker.pid) - c0) / (time.monotonic() - t0) * 100, 3)
        results["local"] = time_job(local, cfg)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

    ray = Path(sys.executable).with_name("ray")
    if ray.exists():
        dash = free_port()
        subprocess.run(
            [
                str(ray),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={free_port()}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                "--num-cpus=2",
                "--disable-usage-stats",
            ],
            capture_output=True,
            check=True,
            timeout=300,
        )
        try:
            from pipeline.jobs.ray_backend import RayBackend

            results["ray"] = time_job(RayBackend(f"http://127.0.0.1:{dash}"), cfg)
        finally:
            subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=120)
        results["ray_overhead_s"] = round(results["ray"]["submit_to_done_s"] - results["local"]["submit_to_done_s"], 2)
    print(json.dumps(results, indent=2))
    (ROOT / "bench" / "results_jobs.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
