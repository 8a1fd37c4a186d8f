"""Command line: ``python -m export RUN_DIR [--formats LIST|all] [--out DIR] [--verify] [--no-verify]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_USER_ERROR = 2
EXIT_GATE_FAILED = 4


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description="Export a trained run for web and mobile.")
    p.add_argument("run_dir")
    p.add_argument("--formats", default="all", help="comma-separated formats or all (default)")
    p.add_argument("--out", help="bundle folder (default RUN_DIR/exports)")
    p.add_argument("--verify", action="store_true", help="only verify an existing bundle (no export)")
    p.add_argument("--no-verify", action="store_true", help="export without verification")
    p.add_argument("--verify-images", type=int, default=200, help="at most this many held-out images")
    args = p.parse_args(argv)

    from export import bundle, verify
    from export.tflite import ConversionError
    from pipeline.evaluate import RunNotReadyError, load_model, load_run

    try:
        if args.verify:
            run, _cfg, _splits = load_run(args.run_dir)
            dest = Path(args.out).resolve() if args.out else run.exports
            manifest = dest / "manifest.json"
            if not manifest.exists():
                raise bundle.ExportError(f"{dest} holds no complete bundle; run `python -m export {args.run_dir}` first.")
            formats = list(json.loads(manifest.read_text())["formats"])
            images, labels, _ = bundle.held_out(run.root, args.verify_images)
            result = verify.verify(dest, formats, load_model(run), images, labels)
            from pipeline.runfolder import atomic_write_json

            atomic_write_json(dest / "verify.json", result)
        else:
            formats = bundle.parse_formats(args.formats)
            dest, result = bundle.export_run(args.run_dir, formats, args.out, run_verify=not args.no_verify,
                                             verify_limit=args.verify_images,
                                             progress=lambda msg: print(f"{msg} ...", file=sys.stderr, flush=True))
            print(f"bundle: {dest}")
    except (RunNotReadyError, bundle.ExportError, ConversionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if result is not None:
        print(verify.table(result))
        if not result["passed"]:
            print("error: a verification gate failed (see the table above and verify.json)", file=sys.stderr)
            return EXIT_GATE_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
