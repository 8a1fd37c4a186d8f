"""One job's training process: ``python -m pipeline.jobs.child JOB_ID`` (local worker, job from the
store) or ``python -m pipeline.jobs.child --run-dir DIR`` (Ray, job from ``DIR/job.json``).

Exit codes: 0 done, 3 cancelled (the checkpoint is kept), 2 a user-caused failure, 1 anything else.
A failure writes one readable sentence to ``error.txt`` in the run folder; the traceback of an
unexpected error goes to ``train.log`` beside it.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    from pipeline import config as config_mod
    from pipeline.backbones import WeightsUnavailableError
    from pipeline.data import DataError
    from pipeline.jobs.store import JobStore
    from pipeline.runfolder import atomic_write_text
    from pipeline.train import RunFolderError, TrainingCancelled, train

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
        return 3
    except (config_mod.ConfigError, DataError, WeightsUnavailableError, RunFolderError) as exc:
        atomic_write_text(run_dir / "error.txt", str(exc) + "\n")
        print(f"error: {exc}", flush=True)
        return 2
    except Exception as exc:
        traceback.print_exc()
        atomic_write_text(run_dir / "error.txt",
                          f"unexpected error: {type(exc).__name__}: {exc} (details in train.log)\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
