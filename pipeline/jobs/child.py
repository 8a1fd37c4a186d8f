"""One job's training process: ``python -m pipeline.jobs.child JOB_ID`` (local worker, job from the
store) or ``python -m pipeline.jobs.child --run-dir DIR`` (Ray, job from ``DIR/job.json``).

Exit codes (pipeline.exitcodes): 0 done, 3 cancelled (the checkpoint is kept), 2 a user-caused failure,
1 anything else. A failure writes one readable sentence to ``error.txt`` in the run folder; the
traceback of an unexpected error goes to ``train.log`` beside it.

Started by the local worker in a session of its own (``start_new_session``), the child asks the kernel
to SIGKILL it when the worker dies (``pipeline.launch.die_with_parent``: ``PR_SET_PDEATHSIG``, set here
rather than in a ``preexec_fn``, which is unsafe in a threaded parent) and dies at once if the worker is
already gone.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from pipeline.exitcodes import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USER_ERROR
from pipeline.host.disk import DiskFullError, full_disk_error, is_full


def where(rec: dict) -> str:
    """What a start/resumed record says about placement: ", on jax (cpu:0, cpu:1; given all), float32. Data-..."."""
    devices = rec.get("devices")
    if not devices:
        return ""
    line = (f", on {rec.get('backend')} ({', '.join(devices.get('framework', []))}; given {devices.get('given')}), "
            f"{rec.get('precision')}")
    return ". ".join([line, *(n[0].upper() + n[1:] for n in rec.get("notes", []))])


def sentence(rec: dict) -> str | None:
    """A metrics record as the line train.log shows (the app's log panel): a sentence, not a dict."""
    ev = rec.get("event")
    if ev in ("start", "resumed"):
        return f"{'Resuming' if ev == 'resumed' else 'Training'}: phases {', '.join(rec.get('phases', []))}{where(rec)}."
    if ev == "phase":
        start = f", going on from epoch {rec['first_epoch']}" if rec.get("first_epoch", 1) > 1 else ""
        cached = ", on cached features" if rec.get("cached_features") else ""
        return (f"Phase {rec['phase']}: {rec['epochs']} epoch(s) at learning rate {rec['learning_rate']:g}, "
                f"{rec.get('trainable_params', 0):,} trainable parameters{cached}{start}.")
    if ev == "epoch":
        return (f"{rec['phase']} epoch {rec['epoch']}/{rec.get('epochs', '?')}: loss {rec['loss']:.4f}, accuracy "
                f"{rec['accuracy']:.4f}, validation loss {rec['val_loss']:.4f}, validation accuracy "
                f"{rec['val_accuracy']:.4f}, {rec.get('seconds', 0):.1f} s.")
    if ev in ("warning", "rollback"):
        return f"Warning: {rec.get('message') or rec.get('reason')}."
    if ev == "done":
        best = rec.get("best") or {}
        return "Done." + (f" Best weights: {best['phase']} epoch {best['epoch']}, validation accuracy "
                          f"{best['val_accuracy']:.4f}." if {"phase", "epoch", "val_accuracy"} <= best.keys() else "")
    if ev == "cancelled":
        return "Cancelled; the last finished epoch is kept."
    return None


def main(argv: list[str]) -> int:
    from pipeline import config as config_mod
    from pipeline.backbones import WeightsUnavailableError
    from pipeline.data import DataError
    from pipeline.exitcodes import UserError
    from pipeline.jobs.store import JobStore
    from pipeline.runfolder import RunFolder, RunFolderError, TrainingCancelled
    from pipeline.train import process_started, train

    if argv[0] == "--run-dir":
        run_dir = Path(argv[1])
        spec = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
        source, raw_config, label = spec["source"], spec["config"], run_dir.name
    else:
        job = JobStore().get(argv[0])
        run_dir, source, raw_config = Path(job.run_dir), job.source, job.config
        label = f"{job.id} attempt {job.attempts}"
    resume = f"`python -m pipeline resume {argv[0]}`" if argv[0] != "--run-dir" else "the Resume button on the Runs page"
    (run_dir / "error.txt").unlink(missing_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} job {label}: {source}", flush=True)
    if RunFolder(run_dir).finished():  # its worker died after the run finished, before recording it
        print(f"{time.strftime('%H:%M:%S')} The run had already finished: nothing to train.", flush=True)
        return EXIT_OK

    def show(rec: dict) -> None:
        line = sentence(rec)
        if line:
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    try:
        cfg = config_mod.from_dict(raw_config)
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
            _say_why(run_dir, str(DiskFullError(full_disk_error(exc, run_dir).folder, then=f"resume the job ({resume})")))
            return EXIT_USER_ERROR
        traceback.print_exc()
        _say_why(run_dir, f"unexpected error: {type(exc).__name__}: {exc} (details in train.log)", quiet=True)
        return EXIT_FAILED
    return EXIT_OK


def _say_why(run_dir: Path, message: str, *, quiet: bool = False) -> None:
    """The failure's sentence in error.txt (the job's error) and train.log; on a full disk, where it fits."""
    from pipeline.runfolder import atomic_write_text

    if not quiet:
        print(f"error: {message}", flush=True)
    try:
        atomic_write_text(run_dir / "error.txt", message + "\n")
    except DiskFullError:  # not even the sentence fits: the worker tells a full disk by itself
        pass


if __name__ == "__main__":
    from pipeline.launch import die_with_parent

    die_with_parent()
    from pipeline.quiet import filter_stderr

    filter_stderr()  # train.log without TensorFlow's start-up noise
    sys.exit(main(sys.argv[1:]))
