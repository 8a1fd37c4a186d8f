"""Command line: ``python -m export RUN_DIR [--formats LIST|all] [--out DIR] [--verify] [--no-verify]
[--verify-images N] [--status-file FILE] [--score]`` (the status file is how the app follows an export it started:
export.task). Exit codes: pipeline.host.exitcodes (0 done, 2 bad input, 4 a verification gate failed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.host.exitcodes import EXIT_FAILED, EXIT_GATE_FAILED, EXIT_OK, EXIT_USER_ERROR, UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description="Export a trained run for web and mobile.")
    p.add_argument("run_dir")
    p.add_argument("--formats", default="all", help="comma-separated formats or all (default)")
    p.add_argument("--out", help="bundle folder (default RUN_DIR/exports)")
    p.add_argument("--verify", action="store_true", help="only verify an existing bundle (no export)")
    p.add_argument("--no-verify", action="store_true", help="export without verification")
    p.add_argument("--verify-images", type=int, default=200, help="at most this many held-out images")
    p.add_argument("--status-file", help="keep a JSON status (step, done/total, outcome) in this file")
    p.add_argument(
        "--score",
        action="store_true",
        help="after verifying, time each LiteRT file on one thread and write score.json (what a study ranks)",
    )
    args = p.parse_args(argv)
    if args.score and args.no_verify:
        p.error("--score needs the verification (its accuracy is the held-out one): drop --no-verify")
    if not args.status_file:
        return _run(args, lambda msg: None)[0]

    from export import bundle, task

    try:
        formats = bundle.parse_formats(args.formats)
    except bundle.ExportError:
        formats = []  # _run reports the error (and the status file gets it)
    state = {"done": 0, "total": task.steps_total(formats, not args.no_verify)}
    common = {"formats": formats, "started": round(time.time(), 3)}

    def report(msg: str) -> None:
        task.write_status(
            args.status_file, state="running", step=msg, done=state["done"], total=state["total"], **common
        )
        state["done"] += 1

    task.write_status(args.status_file, state="running", step="starting", done=0, total=state["total"], **common)
    code, error = EXIT_FAILED, "the export stopped unexpectedly (see export.log in the run folder)"
    try:
        code, error = _run(args, report)
    finally:
        outcome = {EXIT_OK: "done", EXIT_GATE_FAILED: "gate_failed"}.get(code, "failed")
        task.write_status(
            args.status_file,
            state=outcome,
            step=outcome,
            done=state["total"],
            total=state["total"],
            error=error,
            finished=round(time.time(), 3),
            **common,
        )
    return code


def _run(args, on_step) -> tuple[int, str | None]:
    """The export or verification; returns (exit code, one-line reason when it is not 0)."""
    from export import bundle, verify
    from pipeline.runs.folder import load_model, load_run

    def say(msg: str) -> None:
        on_step(msg)
        print(f"{msg} ...", file=sys.stderr, flush=True)

    try:
        if args.verify:
            run, _cfg, _splits = load_run(args.run_dir)
            dest = Path(args.out).resolve() if args.out else run.exports
            manifest = dest / "manifest.json"
            if not manifest.exists():
                raise bundle.ExportError(
                    f"{dest} holds no complete bundle; run `python -m export {args.run_dir}` first."
                )
            formats = list(json.loads(manifest.read_text())["formats"])
            with (
                bundle.export_lock(run.root, dest, say),
                tempfile.TemporaryDirectory(prefix="verify-cache-") as scratch,
                bundle.held_out(run.root, args.verify_images, scratch=Path(scratch)) as (images, labels, _),
            ):
                result = verify.verify(dest, formats, load_model(run), images, labels, progress=say)
            from pipeline.host.atomic import atomic_write_json

            atomic_write_json(dest / "verify.json", result)
        else:
            formats = bundle.parse_formats(args.formats)
            dest, result = bundle.export_run(
                args.run_dir,
                formats,
                args.out,
                run_verify=not args.no_verify,
                verify_limit=args.verify_images,
                progress=say,
            )
            print(f"bundle: {dest}")
        if args.score and result is not None:
            from export import score
            from pipeline.host.atomic import atomic_write_json

            say("timing the LiteRT files on one thread")
            # in the run folder, not the bundle: the bundle holds what its manifest lists (a later export replaces it)
            atomic_write_json(Path(args.run_dir).resolve() / score.SCORE_NAME, score.score(dest, result))
    except (UserError, PermissionError) as exc:  # UserError: pipeline.host.exitcodes' family (export's errors too)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR, str(exc).splitlines()[0]
    except Exception as exc:
        from pipeline.host.disk import full_disk_error, is_full

        if not is_full(exc):
            raise
        error = full_disk_error(exc, Path(args.out or args.run_dir))
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR, str(error)
    if result is not None:
        print(verify.table(result))
        if not result["passed"]:
            print("error: a verification gate failed (see the table above and verify.json)", file=sys.stderr)
            return EXIT_GATE_FAILED, "a verification gate failed: do not ship the failing format (see the table)"
    return EXIT_OK, None


if __name__ == "__main__":
    from pipeline.host.launch import die_with_parent
    from pipeline.host.quiet import filter_stderr

    die_with_parent()  # started by a study's driver: it ends with it (a no-op otherwise)
    filter_stderr()  # TensorFlow's start-up noise is not the user's business
    sys.exit(main())
