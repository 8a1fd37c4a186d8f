"""Benchmark: the local job backend's latency and idle cost.

- time from ``submit`` to the first epoch line in metrics.jsonl on an idle worker (sample:digits, its preset);
- the worker's own CPU use while idle (10 s, from /proc), its heartbeat writes included.

Usage: ``python bench/bench_jobs.py``. Not a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    home = tempfile.mkdtemp(prefix="bench-jobs-")
    os.environ["TRANSFER_STUDIO_HOME"] = home
    sys.path.insert(0, str(ROOT))
    from pipeline.__main__ import build_config
    from pipeline.jobs.backends import LocalBackend
    from pipeline.runfolder import RunFolder

    backend = LocalBackend()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "pipeline", "worker"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not backend.worker_alive():
            time.sleep(0.05)
        time.sleep(2)
        c0, t0 = cpu_seconds(worker.pid), time.monotonic()
        time.sleep(10)
        idle = (cpu_seconds(worker.pid) - c0) / (time.monotonic() - t0)

        from pipeline.data import materialize_sample

        materialize_sample("digits")  # written once per home; not part of the latency
        t_submit = time.monotonic()
        job_id = backend.submit("sample:digits", build_config("sample:digits", None, []))
        run = RunFolder(backend.store.run_dir(job_id))
        while not run.epochs():
            time.sleep(0.02)
        first_epoch = time.monotonic() - t_submit
        while backend.status(job_id).state == "running" or backend.status(job_id).state == "queued":
            time.sleep(0.2)
        total = time.monotonic() - t_submit
        result = {"idle_worker_cpu_percent": round(idle * 100, 3), "submit_to_first_epoch_s": round(first_epoch, 2),
                  "first_epoch_own_seconds": run.epochs()[0]["seconds"], "submit_to_done_s": round(total, 2),
                  "state": backend.status(job_id).state}
        print(json.dumps(result, indent=2))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
