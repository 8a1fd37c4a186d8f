"""Command line: ``python -m pipeline scan|train|evaluate|backbones|config``.

Failures print one line starting with ``error:`` and exit non-zero; no tracebacks for user errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 3


def build_config(source: str, config_file: str | None, overrides: list[str]):
    """The run config: the sample's preset for ``sample:*`` sources, then the file, then ``--set``."""
    from pipeline import config as config_mod
    from pipeline import data as data_mod

    cfg = config_mod.RunConfig()
    if data_mod.is_sample(source):
        cfg = config_mod.from_dict(data_mod.sample_preset())
    if config_file:
        cfg = config_mod.load(config_file, base=cfg)
    return config_mod.apply_overrides(cfg, overrides)


def _progress_printer():
    last = {}

    def show(rec: dict) -> None:
        ev = rec.get("event")
        if ev in ("scan", "cache") and (sys.stderr.isatty() or rec["done"] == rec["total"]):
            what = "scanning" if ev == "scan" else f"decoding {rec['split']}"
            end = "\n" if rec["done"] == rec["total"] else "\r"
            print(f"{what}: {rec['done']}/{rec['total']}", end=end, file=sys.stderr, flush=True)
        elif ev == "phase":
            mode = ", cached features" if rec["cached_features"] else ""
            print(f"phase {rec['phase']}: {rec['epochs']} epochs at lr {rec['learning_rate']:g}, "
                  f"{rec['trainable_params']:,} trainable parameters{mode}", file=sys.stderr)
        elif ev == "features":
            print(f"features computed once: {rec['images']} images in {rec['seconds']:.1f}s", file=sys.stderr)
        elif ev == "progress" and sys.stderr.isatty():
            print(f"  {rec['phase']} epoch {rec['epoch']} batch {rec['batch']}/{rec['steps']} "
                  f"loss {rec['loss']:.4f}", end="\r", file=sys.stderr, flush=True)
        elif ev == "epoch":
            print(f"  {rec['phase']} epoch {rec['epoch']}/{rec['epochs']}: loss {rec['loss']:.4f} "
                  f"acc {rec['accuracy']:.4f} val_loss {rec['val_loss']:.4f} val_acc {rec['val_accuracy']:.4f} "
                  f"lr {rec['lr']:.2g} {rec['seconds']:.1f}s ({rec['images_per_second']:.0f} img/s)",
                  file=sys.stderr, flush=True)
        elif ev in ("start", "resumed"):
            print(f"{'resuming' if ev == 'resumed' else 'training'}: phases {', '.join(rec['phases'])}", file=sys.stderr)
        last.update(rec)

    return show


def cmd_scan(args) -> int:
    from pipeline import data as data_mod

    folder = data_mod.resolve_source(args.data)
    report = data_mod.scan(folder)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def cmd_train(args) -> int:
    from pipeline import evaluate as eval_mod
    from pipeline import train as train_mod

    cfg = build_config(args.data, args.config, args.set or [])
    for w in cfg.warnings():
        print(f"warning: {w}", file=sys.stderr)
    run = train_mod.train(args.data, args.run_dir, cfg, on_event=_progress_printer(), evaluate_after=True)
    result = json.loads(run.eval.read_text())
    print(eval_mod.summary(result))
    print(f"run folder: {run.root}")
    return 0


def cmd_evaluate(args) -> int:
    from pipeline import evaluate as eval_mod

    result = eval_mod.evaluate(args.run_dir)
    print(json.dumps(result, indent=2) if args.json else eval_mod.summary(result))
    return 0


def cmd_backbones(args) -> int:
    from pipeline import backbones

    for name in backbones.names():
        s = backbones.get(name)
        alphas = f" alpha {', '.join(map(str, s.alphas))}" if s.alphas else ""
        print(f"{name:<20} {s.title:<26} default {s.default_size}px{alphas}; input {s.preprocessing}")
    return 0


def cmd_config(args) -> int:
    from pipeline import config as config_mod

    cfg = build_config(args.data or "", args.config, args.set or [])
    if args.help_fields:
        for key, text in config_mod.field_help().items():
            section, name = key.split(".")
            print(f"{key:<32} {getattr(getattr(cfg, section), name)!r:<14} {text}")
    else:
        print(cfg.to_json(), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description="Transfer Studio training pipeline.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="report classes, counts, sizes and skipped files of a dataset")
    s.add_argument("data", help="folder, .zip, or sample:digits")
    s.add_argument("--json", action="store_true", help="print the full report as JSON")
    s.set_defaults(func=cmd_scan)

    t = sub.add_parser("train", help="train a classifier into a run folder (re-run to resume)")
    t.add_argument("data", help="folder, .zip, or sample:digits")
    t.add_argument("--run-dir", required=True, help="run folder to create or resume")
    t.add_argument("--config", help="TOML or JSON config file")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting, e.g. train.seed=1")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a trained run and write eval.json")
    e.add_argument("run_dir")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("backbones", help="list the supported backbones")
    b.set_defaults(func=cmd_backbones)

    c = sub.add_parser("config", help="print the resolved config (or every field with its meaning)")
    c.add_argument("data", nargs="?", help="a sample:* source uses its preset")
    c.add_argument("--config")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.add_argument("--fields", dest="help_fields", action="store_true", help="list every field with its meaning")
    c.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.backbones import WeightsUnavailableError
    from pipeline.config import ConfigError
    from pipeline.data import DataError
    from pipeline.evaluate import RunNotReadyError
    from pipeline.train import RunFolderError, TrainingCancelled

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingCancelled:
        print(f"\ncancelled: the last finished epoch is kept; run the same command to resume ({args.run_dir}).",
              file=sys.stderr)
        return EXIT_CANCELLED
    except (ConfigError, DataError, WeightsUnavailableError, RunNotReadyError, RunFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())



