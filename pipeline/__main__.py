"""Command line: ``python -m pipeline COMMAND`` (``python -m pipeline --help`` lists every command).

Failures print one line starting with ``error:`` and exit non-zero (the codes: pipeline.host.exitcodes); no
tracebacks for user errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.host.exitcodes import EXIT_CANCELLED, EXIT_INTERRUPTED

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _progress_printer():
    """Prints training's records on stderr: each as its line (pipeline.runs.events.describe); counts on one
    changing line on a terminal (only the finished count otherwise)."""
    from pipeline.runs import events

    def show(rec: dict) -> None:
        count = events.progress(rec)
        if count is not None:
            text, finished = count
            if sys.stderr.isatty() or (finished and rec.get("event") != events.PROGRESS):
                print(text, end="\n" if finished else "\r", file=sys.stderr, flush=True)
            return
        line = events.describe(rec)
        if line is not None and rec.get("event") != events.DONE:  # the summary follows the run
            print(("  " if rec.get("event") == events.EPOCH else "") + line, file=sys.stderr, flush=True)

    return show


def cmd_scan(args) -> int:
    from pipeline.data import revision
    from pipeline.jobs import quota

    folder = quota.resolve(args.data)
    report, rev = revision.scan(folder)
    if args.json:
        print(json.dumps({**report.to_dict(), "revision": rev.number}, indent=2))
    else:
        print(
            report.summary()
            + (
                f"\nrevision {rev.number}: corrections applied (`python -m pipeline revision {args.data}` lists them)"
                if rev.number
                else ""
            )
        )
    return 0


def _preset_argument(parser) -> None:
    from pipeline.training.presets import PRESETS

    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a named set of settings (keras_guide: the Keras transfer-learning guide's recipe)",
    )


def _run_config(args):
    """train and submit: the run's config from the data, --config, --set, --from and --head-only (warnings said)."""
    from pipeline.jobs import quota
    from pipeline.training import presets

    quota.resolve(args.data)  # a zip is unpacked once, within the disk quota
    cfg = presets.config_for(
        args.data,
        config_file=args.config,
        overrides=args.set or [],
        parent=getattr(args, "from_run", None),
        head_only=getattr(args, "head_only", False),
        preset=getattr(args, "preset", None),
    )
    for w in cfg.warnings():
        print(f"warning: {w}", file=sys.stderr)
    return cfg


def cmd_train(args) -> int:
    from pipeline.training import evaluate as eval_mod
    from pipeline.training import train as train_mod

    cfg = _run_config(args)
    run = train_mod.train(
        args.data,
        args.run_dir,
        cfg,
        on_event=_progress_printer(),
        evaluate_after=True,
        launched_at=train_mod.process_started(),
    )
    result = json.loads(run.eval.read_text())
    print(eval_mod.summary(result))
    print(f"run folder: {run.root}")
    return 0


def cmd_evaluate(args) -> int:
    from pipeline.training import evaluate as eval_mod

    result = eval_mod.evaluate(args.run_dir)
    print(json.dumps(result, indent=2) if args.json else eval_mod.summary(result))
    return 0


def cmd_label_issues(args) -> int:
    from pipeline.quality import label_issues

    result = label_issues.find_for_run(
        args.run_dir, progress=lambda msg: print(f"{msg} ...", file=sys.stderr, flush=True)
    )
    print(json.dumps(result, indent=2) if args.json else label_issues.table(result, args.limit))
    return 0


def cmd_map(args) -> int:
    from pipeline.quality import dataset_map
    from pipeline.runs.folder import RunFolder

    def progress(msg: str) -> None:
        print(f"{msg} ...", file=sys.stderr, flush=True)

    target = Path(args.source).expanduser()
    if target.is_dir() and not RunFolder(target).not_a_run():  # a run: its images through its own model
        result = dataset_map.for_run(target, progress=progress, fresh=args.fresh)
    else:  # a dataset, before any run: the pretrained base of the config's backbone
        from pipeline.training import presets

        cfg = presets.config_for(args.source, config_file=args.config, overrides=args.set or [])
        result = dataset_map.for_data(args.source, cfg, progress=progress, fresh=args.fresh)
    if args.out:
        dataset_map.write_html(result, args.out)
    print(
        f"{result['images']} images mapped ({result['features']}): {result['issues']} suspected label error(s), "
        f"{result['near_duplicates']} near-copies marked" + (f": {args.out}" if args.out else "")
    )
    return 0


def cmd_lr_find(args) -> int:
    from pipeline.training import lr_find

    cfg = _run_config(args)
    result = lr_find.find(args.data, cfg, progress=lambda msg: print(f"{msg} ...", file=sys.stderr, flush=True))
    if args.out:
        from pipeline.host.atomic import atomic_write_json

        atomic_write_json(Path(args.out), result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    diverged = f"; the loss diverged at {result['diverged_at']:.2g}" if result["diverged_at"] is not None else ""
    print(
        f"swept {len(result['learning_rates'])} steps from {result['start']:.0e} on {result['images']} training "
        f"images: lowest loss at {result['lowest_loss_at']:.2g}{diverged}"
    )
    print(f"suggested train.learning_rate={result['suggestion']:.2g}  (--set train.learning_rate=...)")
    return 0


def cmd_tune(args) -> int:
    """A study: create and drive one (DATA), --resume one, print one's table (--status), or --list them."""
    from pipeline.tuning import study as study_mod

    if args.list:
        for name in study_mod.names():
            spec, status, table = study_mod.rows(name)
            print(f"{name}  {status:<8}  {len(table)}/{spec.trials} trials  {spec.data}")
        return 0
    if args.status:
        spec, status, table = study_mod.rows(args.status)
        if args.json:
            print(json.dumps({"study": spec.to_dict(), "status": status, "trials": table}, indent=2))
        else:
            print(study_mod.format_table(spec, status, table))
        return 0
    if args.resume:
        name = args.resume
    elif args.data:
        from pipeline.jobs import quota

        quota.resolve(args.data)  # a zip is unpacked once, within the disk quota
        lr = None
        if args.lr_find:
            from pipeline.training import lr_find, presets

            cfg = presets.config_for(args.data, overrides=args.set or [])
            lr = lr_find.find(args.data, cfg, progress=lambda m: print(f"{m} ...", file=sys.stderr))["suggestion"]
            print(f"learning-rate finder: {lr:.2g}; the head's range is a decade either side", file=sys.stderr)
        spec = study_mod.create(
            args.data,
            args.trials,
            name=args.study,
            parallel=args.parallel,
            budget=study_mod.Budget(args.max_mb, args.max_ms, args.min_accuracy),
            time_budget_s=study_mod.parse_duration(args.time_budget),
            overrides=args.set or [],
            lr_suggestion=lr,
        )
        name = spec.name
        for note in spec.space_notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"study {name}: {spec.trials} trials, {spec.parallel} at a time, budget {spec.budget.words()}")
    else:
        print("error: give a dataset to start a study, or --resume/--status STUDY, or --list", file=sys.stderr)
        return 2
    study_mod.Driver(name).run()
    spec, status, table = study_mod.rows(name)
    print(study_mod.format_table(spec, status, table))
    return 0


def cmd_correct(args) -> int:
    """relabel / exclude / add / undo / revision: the dataset's corrections (its originals stay as they are)."""
    from pipeline import data as data_mod
    from pipeline.data import revision
    from pipeline.jobs import quota

    folder = quota.resolve(args.data)
    rev = revision.Revision(folder)
    if args.command in ("relabel", "exclude", "add"):
        report = data_mod.scan(folder)
        if args.command == "relabel":
            rev.relabel(report, args.file, args.cls)
        elif args.command == "exclude":
            rev.exclude_all(report, args.files)
        else:
            rev.add_all(report, args.cls, [(file, file) for file in args.files], force=args.force)
    elif args.command == "undo":
        rev.undo()
    print(revision.summary(rev))
    return 0


def cmd_compare(args) -> int:
    from pipeline.quality import compare

    result = compare.compare(args.run_dirs)
    print(json.dumps(result, indent=2) if args.json else compare.table(result))
    return 0


def cmd_predict(args) -> int:
    import zipfile

    from pipeline.jobs import quota
    from pipeline.quality import predict

    named = dict(args.name or [])
    sources, shown = [], {}
    for source in args.sources:
        path = Path(source).expanduser()
        if path.is_file() and zipfile.is_zipfile(path):  # unpacked once (safely, within the disk quota)
            folder = quota.resolve(path)
            shown[folder] = named.get(source, path.name)
            sources.append(folder)
        else:
            if source in named:
                shown[path] = named[source]
            sources.append(path)

    def progress(done: int, total: int) -> None:
        end = "\n" if done == total else "\r"
        if sys.stderr.isatty() or done == total or args.summary:  # the app reads the log's last line
            print(f"classified {done}/{total}", end=end if not args.summary else "\n", file=sys.stderr, flush=True)

    runtime = None
    if args.model:  # the shipped file in its own runtime (the CLI is the top layer: it may use export's runtimes)
        from export import runtimes

        model_file = Path(args.model).expanduser()
        if not model_file.exists() and (Path(args.run_dir) / model_file).exists():
            model_file = Path(args.run_dir) / model_file  # exports/model-int8.tflite: in the run folder
        runtime = runtimes.load(model_file)
        print(f"classifying with {args.model} ({runtime.name})", file=sys.stderr)
    result = predict.predict_run(
        args.run_dir,
        sources,
        args.out,
        top_k=args.top_k,
        shown=shown,
        runtime=None if runtime is None else runtime.predict,
        batch=predict.BATCH if runtime is None else runtime.batch,
        progress=progress,
    )
    if args.summary:
        predict.write_summary(args.summary, result)
    unreadable = (
        f", {result['unreadable']} unreadable (named in the file with the reason)" if result["unreadable"] else ""
    )
    uncertain = (
        f"; {result['uncertain']} below the run's confidence threshold {result['threshold']:.2f}, marked uncertain "
        "(the model only knows its classes: a photo of anything else still gets one of them)"
        if result["threshold"] is not None
        else ""
    )
    print(
        f"{result['classified']} of {result['images']} images classified{unreadable}, "
        f"{result['images_per_second']} images/s: {result['out']}{uncertain}"
    )
    return 0


def cmd_explain(args) -> int:
    from pipeline.quality import explain

    rows = explain.explain_run(args.run_dir, args.images, args.out, class_name=args.class_name)
    for row in rows:
        if row["error"]:
            print(f"{row['path']}: not explained: {row['error']}")
        else:
            print(f"{row['path']}: {row['class']} ({row['probability']:.1%}) -> {row['overlay']}")
    bad = sum(1 for r in rows if r["error"])
    print(
        f"{len(rows) - bad} of {len(rows)} images explained" + (f", {bad} unreadable" if bad else ""), file=sys.stderr
    )
    return 0


def cmd_submit(args) -> int:
    from pipeline.jobs.backends import get_backend

    cfg = _run_config(args)
    job_id = get_backend().submit(args.data, cfg, name=args.name)
    print(job_id)
    return 0


def cmd_rename(args) -> int:
    from pipeline.jobs.backends import get_backend

    job = get_backend().rename(args.job, args.name)
    print(f"{job.id} is now called {job.title!r}")
    return 0


def _job_line(job) -> str:
    import time

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created))
    extra = f"  {job.error}" if job.error else ""
    return f"{job.id}  {job.state:<9}  {when}  {job.title}  {job.source}{extra}"


def cmd_status(args) -> int:
    from pipeline.jobs.backends import get_backend
    from pipeline.runs.folder import RunFolder

    job = get_backend().status(args.job)
    epochs = RunFolder(Path(job.run_dir)).epochs()
    if args.json:
        print(json.dumps({**job.to_dict(), "epochs": epochs}, indent=2))
        return 0
    print(_job_line(job))
    print(f"run folder: {job.run_dir}")
    if epochs:
        e = epochs[-1]
        print(f"last epoch: {e['phase']} {e['epoch']}/{e['epochs']} val_accuracy {e['val_accuracy']:.4f}")
    return 0


def cmd_cancel(args) -> int:
    from pipeline.jobs.backends import get_backend

    job = get_backend().cancel(args.job)
    print(f"{job.id} {'cancelled' if job.state == 'cancelled' else 'stopping at its next batch'}")
    return 0


def cmd_delete(args) -> int:
    """Deletes a job (by id, or by its run folder) with its run folder; or a run folder ``train`` made under the
    runs folder. Nothing else: a path is removed only when its own layout proves it is a run (``RunFolder.not_a_run``)
    and it lies in ``TRANSFER_STUDIO_HOME/runs``; a run folder elsewhere is the user's to remove."""
    import re

    from pipeline.host import paths
    from pipeline.host.atomic import remove_folder
    from pipeline.jobs.backends import get_backend
    from pipeline.jobs.store import JobError
    from pipeline.runs.folder import RunFolder

    target = args.target
    backend = get_backend()
    if not re.fullmatch(r"[0-9a-f]{32}", target):
        given = Path(target).expanduser().absolute()
        folder = given.parent.resolve() / given.name  # a link itself is not followed (not_a_run refuses it)
        job = _job_of_folder(backend, given)
        if job is None:
            runs = paths.home() / "runs"
            if folder.parent != runs:
                raise JobError(
                    f"{target} is neither a job id nor a run folder in {runs}; `delete` removes only "
                    "the runs it keeps there (a folder elsewhere is yours: remove it yourself)."
                )
            if why := RunFolder(folder).not_a_run():
                raise JobError(f"{target} is not deleted: {why}.")
            remove_folder(folder)
            print(f"deleted run folder {folder}")
            return 0
        target = job.id
    job = backend.delete(target)
    print(f"deleted job {job.id} and its run folder {job.run_dir}")
    return 0


def _job_of_folder(backend, folder: Path):
    """The job whose run folder ``folder`` is (looked up by its name, a job id, then in the whole list), or None."""
    import re

    from pipeline.jobs.store import JobError

    if re.fullmatch(r"[0-9a-f]{32}", folder.name):
        try:
            job = backend.status(folder.name)
        except JobError:
            job = None
        if job is not None and Path(job.run_dir).resolve() == folder.resolve():
            return job
    return next((j for j in backend.list() if Path(j.run_dir).resolve() == folder.resolve()), None)


def cmd_resume(args) -> int:
    from pipeline.jobs.backends import get_backend

    job = get_backend().resume(args.job)
    print(
        f"{job.id} done: its run had finished (eval.json is in {job.run_dir})"
        if job.state == "done"
        else f"{job.id} {job.state}: it continues from its last finished epoch"
    )
    return 0


def cmd_jobs(args) -> int:
    from pipeline.jobs.backends import get_backend

    for job in get_backend().list():
        print(_job_line(job))
    return 0


def cmd_worker(args) -> int:
    from pipeline.jobs.store import JobStore
    from pipeline.jobs.worker import Worker

    return Worker(JobStore(), args.concurrency, once=args.once).run()


def cmd_doctor(args) -> int:
    from pipeline.host import doctor

    facts = doctor.report(args.backend or "")
    print(json.dumps(facts, indent=2) if args.json else doctor.format_report(facts))
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
    from pipeline.training import presets

    cfg = presets.config_for(args.data or "", config_file=args.config, overrides=args.set or [])
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
    _preset_argument(t)
    _from_arguments(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a trained run and write eval.json")
    e.add_argument("run_dir")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    li = sub.add_parser("label-issues", help="rank a run's train/val images whose label looks wrong (cleanlab)")
    li.add_argument("run_dir")
    li.add_argument("--limit", type=int, default=30, help="rows to print (all are in label_issues.json)")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_label_issues)

    lf = sub.add_parser("lr-find", help="sweep the head phase's learning rate (fastai's lr_find) and suggest one")
    lf.add_argument("data", help="folder, .zip, or sample:digits")
    lf.add_argument("--config", help="TOML or JSON config file")
    lf.add_argument("--set", action="append", metavar="KEY=VALUE")
    lf.add_argument("--json", action="store_true", help="every step's rate and loss, as JSON")
    lf.add_argument("--out", metavar="FILE.json", help="also write the sweep as JSON (the app reads it)")
    lf.set_defaults(func=cmd_lr_find)

    tu = sub.add_parser(
        "tune", help="search backbones, sizes and settings for the most accurate model within a size/latency budget"
    )
    tu.add_argument("data", nargs="?", help="folder, .zip, or sample:digits (starts a new study)")
    tu.add_argument("--trials", type=int, default=12, help="trials in the study (default 12)")
    tu.add_argument("--parallel", type=int, default=1, help="trials in flight at once (default 1)")
    tu.add_argument("--max-mb", type=float, help="largest file a trial may ship (MB)")
    tu.add_argument("--max-ms", type=float, help="slowest LiteRT latency per image on one thread of this machine")
    tu.add_argument("--min-accuracy", type=float, help="lowest held-out accuracy (0-1) of the shipped file")
    tu.add_argument("--time-budget", help="no trial starts after this (30m, 2h, 600)")
    tu.add_argument("--study", help="the study's name (default: the dataset's name and the time)")
    tu.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a setting for every trial")
    tu.add_argument("--lr-find", action="store_true", help="centre the head's learning-rate range on lr-find's")
    tu.add_argument("--resume", metavar="STUDY", help="go on with a stopped study")
    tu.add_argument("--status", metavar="STUDY", help="print a study's table of trials")
    tu.add_argument("--list", action="store_true", help="list the studies")
    tu.add_argument("--json", action="store_true", help="with --status: the table as JSON")
    tu.set_defaults(func=cmd_tune)

    mp = sub.add_parser("map", help="a 2-D map of the images' features (t-SNE), label issues and copies marked")
    mp.add_argument("source", metavar="DATA|RUN_DIR", help="a run folder (its model), or a dataset (pretrained base)")
    mp.add_argument("--out", metavar="FILE.html", help="a standalone HTML page (Plotly bundled, thumbnails on hover)")
    mp.add_argument("--config", help="for a dataset: TOML or JSON config (the backbone, size and weights used)")
    mp.add_argument("--set", action="append", metavar="KEY=VALUE", help="for a dataset: model.backbone=... and so on")
    mp.add_argument("--fresh", action="store_true", help="compute again instead of reading the kept map")
    mp.set_defaults(func=cmd_map)

    data_help = "folder, .zip, or sample:digits (the dataset whose corrections these are)"
    rl = sub.add_parser("relabel", help="record that one image belongs to another class (the file is not moved)")
    rl.add_argument("data", help=data_help)
    rl.add_argument("file", help="the image, relative to the dataset folder as `scan` lists it")
    rl.add_argument("cls", metavar="CLASS")
    ex = sub.add_parser("exclude", help="leave images out of training and evaluation (the files stay); all or none")
    ex.add_argument("data", help=data_help)
    ex.add_argument("files", nargs="+", metavar="FILE")
    ad = sub.add_parser(
        "add", help="add image files to a class (copied into the revision, not the dataset); all or none"
    )
    ad.add_argument("data", help=data_help)
    ad.add_argument("cls", metavar="CLASS")
    ad.add_argument("files", nargs="+", metavar="IMAGE")
    ad.add_argument(
        "--force",
        action="store_true",
        help="add images whose bytes are already in the dataset (in another split: a leak) or were added before",
    )
    un = sub.add_parser("undo", help="undo the dataset's latest correction still in effect")
    un.add_argument("data", help=data_help)
    rv = sub.add_parser("revision", help="list the dataset's corrections")
    rv.add_argument("data", help=data_help)
    for corr in (rl, ex, ad, un, rv):
        corr.set_defaults(func=cmd_correct)

    cp = sub.add_parser("compare", help="2 to 4 runs side by side: settings that differ, accuracy, F1, sizes")
    cp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compare)

    pr = sub.add_parser("predict", help="classify folders, zips or image files with a run's model into a CSV")
    pr.add_argument("run_dir", metavar="RUN_DIR")
    pr.add_argument("sources", nargs="+", metavar="SOURCE", help="folders (recursive), .zip files or image files")
    pr.add_argument("--out", default="predictions.csv", help="a .csv or .jsonl file (default: predictions.csv)")
    pr.add_argument("--top-k", type=int, default=3, help="classes per image, most likely first (default: 3)")
    pr.add_argument(
        "--model",
        metavar="FILE",
        help="an exported file run in its own runtime instead of the Keras model: a .tflite or .onnx file, or a "
        "savedmodel/ or TF.js folder (RUN_DIR/exports/model-int8.tflite, RUN_DIR/exports/tfjs, ...)",
    )
    pr.add_argument("--summary", metavar="FILE.json", help="also write the counts as JSON (the app reads them)")
    pr.add_argument(
        "--name",
        action="append",
        nargs=2,
        metavar=("SOURCE", "NAME"),
        help="how the output names a folder or zip SOURCE (default: its own name); the app gives an upload's name",
    )
    pr.set_defaults(func=cmd_predict)

    xp = sub.add_parser("explain", help="Grad-CAM overlays: where in each image the model found its class")
    xp.add_argument("run_dir", metavar="RUN_DIR")
    xp.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (recursive)")
    xp.add_argument("--out", required=True, metavar="DIR", help="folder for the overlay PNGs (NAME.gradcam.png)")
    xp.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class (default: the top one)")
    xp.set_defaults(func=cmd_explain)

    j = sub.add_parser("submit", help="queue a training job (starts a background worker if none runs)")
    j.add_argument("data", help="folder, .zip, or sample:digits")
    j.add_argument("--config", help="TOML or JSON config file")
    j.add_argument("--set", action="append", metavar="KEY=VALUE")
    _preset_argument(j)
    j.add_argument("--name", help="what to call the run (default: the dataset's name and a number)")
    _from_arguments(j)
    j.set_defaults(func=cmd_submit)

    rn = sub.add_parser("rename", help="give a job another name")
    rn.add_argument("job")
    rn.add_argument("name")
    rn.set_defaults(func=cmd_rename)

    st = sub.add_parser("status", help="show one job")
    st.add_argument("job")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    cn = sub.add_parser("cancel", help="cancel a queued job, or stop a running one at its next batch")
    cn.add_argument("job")
    cn.set_defaults(func=cmd_cancel)

    dl = sub.add_parser("delete", help="delete a stopped job (id or run folder) with its run folder and served model")
    dl.add_argument("target", metavar="RUN_OR_JOB", help="a job id, or a run folder")
    dl.set_defaults(func=cmd_delete)

    rs = sub.add_parser(
        "resume", help="queue a failed or cancelled job again; it continues from its last finished epoch"
    )
    rs.add_argument("job")
    rs.set_defaults(func=cmd_resume)

    js = sub.add_parser("jobs", help="list jobs, newest first")
    js.set_defaults(func=cmd_jobs)

    w = sub.add_parser("worker", help="run queued jobs (one per GPU, or one on CPU)")
    w.add_argument("--once", action="store_true", help="exit when the queue is empty")
    w.add_argument("--concurrency", type=int, help="jobs at once (default: visible GPUs, 1 without)")
    w.set_defaults(func=cmd_worker)

    dr = sub.add_parser("doctor", help="what training runs on here: backend, devices, CUDA, precision, threads")
    dr.add_argument("--json", action="store_true")
    dr.add_argument(
        "--backend",
        choices=("tensorflow", "jax"),
        help="ask about this Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    dr.set_defaults(func=cmd_doctor)

    b = sub.add_parser("backbones", help="list the supported backbones")
    b.set_defaults(func=cmd_backbones)

    c = sub.add_parser("config", help="print the resolved config (or every field with its meaning)")
    c.add_argument("data", nargs="?", help="a sample:* source uses its preset")
    c.add_argument("--config")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.add_argument("--fields", dest="help_fields", action="store_true", help="list every field with its meaning")
    c.set_defaults(func=cmd_config)
    return p


def _from_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_DIR",
        help="retrain: start from this finished run's best weights and settings (on the data's current "
        "corrections), fine-tune phase only",
    )
    p.add_argument("--head-only", action="store_true", help="with --from: train only the head (base frozen)")


def main(argv: list[str] | None = None) -> int:
    from pipeline.host.exitcodes import UserError
    from pipeline.runs.folder import TrainingCancelled

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingCancelled:
        print(
            f"\ncancelled: the last finished epoch is kept; run the same command to resume ({args.run_dir}).",
            file=sys.stderr,
        )
        return EXIT_CANCELLED
    except UserError as exc:  # every error a user can act on (pipeline.host.exitcodes)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from pipeline.host import paths
        from pipeline.host.disk import full_disk_error, is_full

        if not is_full(exc):
            raise
        error = full_disk_error(exc, getattr(args, "run_dir", None) or paths.home())
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    from pipeline.host.quiet import filter_stderr

    filter_stderr()  # TensorFlow's start-up noise is not the user's business
    sys.exit(main())
