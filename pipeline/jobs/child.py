"""One job's training process: ``python -m pipeline.jobs.child JOB_ID`` (local worker, job from the
store) or ``python -m pipeline.jobs.child --run-dir DIR`` (Ray, job from ``DIR/job.json``).

Exit codes (pipeline.host.exitcodes): 0 done, 3 cancelled (the checkpoint is kept), 2 a user-caused failure,
1 anything else. A failure writes one readable sentence to ``error.txt`` in the run folder; the
traceback of an unexpected error goes to ``train.log`` beside it.

Started by the local worker in a session of its own (``start_new_session``), the child asks the kernel
to SIGKILL it when the worker dies (``pipeline.host.launch.die_with_parent``: ``PR_SET_PDEATHSIG``, set here
rather than in a ``preexec_fn``, which is unsafe in a threaded parent) and dies at once if the worker is
already gone.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from pipeline.host.disk import DiskFullError, full_disk_error, is_full
from pipeline.host.exitcodes import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR


def main(argv: list[str]) -> int:
    from pipeline import config as config_mod
    from pipeline.backbones import WeightsUnavailableError
    from pipeline.data import DataError
    from pipeline.host.exitcodes import UserError
    from pipeline.jobs import quota
    from pipeline.jobs.store import JobStore
    from pipeline.runs import events
    from pipeline.runs.folder import RunFolder, RunFolderError, TrainingCancelled
    from pipeline.training.train import process_started, train

    if argv[0] == "--run-dir":
        run_dir = Path(argv[1])
        spec = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
        source, raw_config, label = spec["source"], spec["config"], run_dir.name
    else:
        job = JobStore().get(argv[0])
        run_dir, source, raw_config = Path(job.run_dir), job.source, job.config
        label = f"{job.id} attempt {job.attempts}"
    resume = (
        f"`python -m pipeline resume {argv[0]}`" if argv[0] != "--run-dir" else "the Resume button on the Runs page"
    )
    (run_dir / "error.txt").unlink(missing_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} job {label}: {source}", flush=True)
    if RunFolder(run_dir).finished():  # its worker died after the run finished, before recording it
        print(f"{time.strftime('%H:%M:%S')} The run had already finished: nothing to train.", flush=True)
        return EXIT_OK

    def show(rec: dict) -> None:
        line = events.log_line(rec)
        if line:
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    try:
        cfg = config_mod.from_dict(raw_config)
        if not RunFolder(run_dir).config.exists():  # a new run: a zip is unpacked once, within the disk quota
            quota.resolve(source, cfg.data)  # (a resume reads its prepared folder, never the source)
        train(source, run_dir, cfg, on_event=show, launched_at=process_started())
    except TrainingCancelled:
        print("cancelled", flush=True)
        return EXIT_CANCELLED
    except DiskFullError as exc:  # the job goes on from its last finished epoch once there is room
        _say_why(run_dir, str(DiskFullError(exc.folder, exc.needed, then=f"resume the job ({resume})")))
        return EXIT_USER_ERROR
    except (config_mod.ConfigError, DataError, WeightsUnavailableError, RunFolderError, UserError) as exc:
        _say_why(run_dir, str(exc))
        return EXIT_USER_ERROR
    except Exception as exc:
        if is_full(exc):
            _say_why(
                run_dir, str(DiskFullError(full_disk_error(exc, run_dir).folder, then=f"resume the job ({resume})"))
            )
            return EXIT_USER_ERROR
        traceback.print_exc()
        _say_why(run_dir, f"unexpected error: {type(exc).__name__}: {exc} (details in train.log)", quiet=True)
        return EXIT_FAILED
    return EXIT_OK


def _say_why(run_dir: Path, message: str, *, quiet: bool = False) -> None:
    """The failure's sentence in error.txt (the job's error) and train.log; on a full disk, where it fits."""
    from pipeline.host.atomic import atomic_write_text

    if not quiet:
        print(f"error: {message}", flush=True)
    try:
        atomic_write_text(run_dir / "error.txt", message + "\n")
    except DiskFullError:  # not even the sentence fits: the worker tells a full disk by itself
        pass


if __name__ == "__main__":
    from pipeline.host.launch import die_with_parent

    die_with_parent()
    from pipeline.host.quiet import filter_stderr

    filter_stderr()  # train.log without TensorFlow's start-up noise
    sys.exit(main(sys.argv[1:]))
