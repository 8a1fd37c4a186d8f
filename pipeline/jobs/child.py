"""One job's training process: ``python -m pipeline.jobs.child JOB_ID`` (local worker, job from the
store) or ``python -m pipeline.jobs.child --run-dir DIR`` (Ray, job from ``DIR/job.json``).

Exit codes (pipeline.exitcodes): 0 done, 3 cancelled (the checkpoint is kept), 2 a user-caused failure,
1 anything else. A failure writes one readable sentence to ``error.txt`` in the run folder; the
traceback of an unexpected error goes to ``train.log`` beside it.

Started by the local worker in a session of its own (``start_new_session``), the child asks the kernel
to SIGKILL it when the worker dies (``PR_SET_PDEATHSIG``, set here rather than in a ``preexec_fn``,
which is unsafe in a threaded parent) and exits at once if the worker is already gone.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from pipeline.exitcodes import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR

PARENT_ENV = "TRANSFER_STUDIO_WORKER_PID"


def die_with_parent() -> None:
    """SIGKILL this process when the worker that started it dies (Linux), so no training outlives it."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != int(parent):  # the worker died before the line above: nothing to train for
        os._exit(EXIT_FAILED)


def main(argv: list[str]) -> int:
    from pipeline import config as config_mod
    from pipeline.backbones import WeightsUnavailableError
    from pipeline.data import DataError
    from pipeline.jobs.store import JobStore
    from pipeline.runfolder import RunFolderError, TrainingCancelled, atomic_write_text
    from pipeline.train import train

    if argv[0] == "--run-dir":
        run_dir = Path(argv[1])
        spec = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
        source, raw_config, label = spec["source"], spec["config"], run_dir.name
    else:
        job = JobStore().get(argv[0])
        run_dir, source, raw_config = Path(job.run_dir), job.source, job.config
        label = f"{job.id} attempt {job.attempts}"
    (run_dir / "error.txt").unlink(missing_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} job {label}: {source}", flush=True)

    def show(rec: dict) -> None:
        if rec.get("event") in ("epoch", "phase", "start", "resumed", "done", "cancelled"):
            print({k: v for k, v in rec.items() if k != "time"}, flush=True)

    try:
        cfg = config_mod.from_dict(raw_config)
        train(source, run_dir, cfg, on_event=show)
    except TrainingCancelled:
        print("cancelled", flush=True)
        return EXIT_CANCELLED
    except (config_mod.ConfigError, DataError, WeightsUnavailableError, RunFolderError) as exc:
        atomic_write_text(run_dir / "error.txt", str(exc) + "\n")
        print(f"error: {exc}", flush=True)
        return EXIT_USER_ERROR
    except Exception as exc:
        traceback.print_exc()
        atomic_write_text(run_dir / "error.txt",
                          f"unexpected error: {type(exc).__name__}: {exc} (details in train.log)\n")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    die_with_parent()
    from pipeline.quiet import filter_stderr

    filter_stderr()  # train.log without TensorFlow's start-up noise
    sys.exit(main(sys.argv[1:]))
