"""Export a finished run folder to a verified bundle: models, labels.txt, manifest.json, README.md, a zip.

The bundle is built in a hidden temporary folder beside its destination and renamed into place
only when every file (and verify.json) is written: an interrupted or failed export never leaves a
bundle that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export import formats as formats_mod
from export import mediapipe_tasks, model_card, onnx_export, savedmodel, tfjs, tflite, verify, web
from export.tflite import ConversionError
from pipeline import data as data_mod
from pipeline.host import paths
from pipeline.host.atomic import atomic_write_json
from pipeline.host.disk import full_disk_is_a_message
from pipeline.host.exitcodes import UserError
from pipeline.runs.confidence import threshold_of
from pipeline.runs.folder import load_model, load_run

FORMATS = formats_mod.DEFAULT  # what ``all`` writes (export.formats.REGISTRY has every format)
OPTIONAL_FORMATS = formats_mod.OPTIONAL
ZIP_NAME = "model_bundle.zip"
TIMES_NAME = "export.log"  # seconds per step of the export that wrote the bundle (not in the manifest or the zip)
ProgressFn = Callable[[str], None]
README_TEMPLATE = Path(__file__).with_name("templates") / "bundle_readme.md"


class ExportError(UserError, ValueError):
    """The export cannot be done as asked; the message says why and what to do."""


def parse_formats(text: str | None) -> list[str]:
    """``all`` or a comma-separated list; savedmodel is always included (every other format derives from it)."""
    if not text or text == "all":
        return list(FORMATS)
    wanted = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in formats_mod.REGISTRY]
    if unknown:
        raise ExportError(
            f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS + OPTIONAL_FORMATS)} or all."
        )
    return ["savedmodel"] + [f for f in wanted if f != "savedmodel"]


def _balanced_sample(splits: data_mod.Splits, split: str, count: int, seed: int) -> list[int]:
    """Indices of up to ``count`` images of ``split``, taking classes in turn."""
    labels = splits.labels(split)
    rng = np.random.default_rng(seed)
    per_class = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(len(splits.classes))]
    out: list[int] = []
    while len(out) < count and any(per_class):
        for bucket in per_class:
            if bucket and len(out) < count:
                out.append(int(bucket.pop()))
    return out


@contextlib.contextmanager
def held_out(run_dir: Path, limit: int = 200, *, scratch: Path | None = None) -> Iterator[tuple[Any, np.ndarray, str]]:
    """The verification images: the test split (val when there is none), class-balanced up to ``limit``.

    Yields (uint8 images [N, S, S, 3], labels, split name). The images are the run's uint8 cache (in memory
    within ``data.cache_memory_mb``, else a read-only map of a nameless file in ``scratch``); verification
    reads them a batch at a time, never the whole split as float32. The cache is closed on exit (a map still
    held by the caller keeps its file until dropped).
    """
    run, cfg, splits = load_run(run_dir)
    split = splits.eval_split
    idx = list(range(len(getattr(splits, split))))
    if len(idx) > limit:
        idx = sorted(_balanced_sample(splits, split, limit, cfg.train.seed))
    files = splits.paths(split)
    cache = data_mod.ImageCache(
        [files[i] for i in idx],
        cfg.model.image_size,
        memory_budget_mb=cfg.data.cache_memory_mb,
        disk_dir=scratch,
        max_pixels=cfg.data.max_image_pixels,
    )
    try:
        yield cache.array, splits.labels(split)[idx], split
    finally:
        cache.close()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in (
        "transfer-studio",
        "tensorflow",
        "keras",
        "tensorflowjs",
        "ai-edge-litert",
        "mediapipe",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def export_run(
    run_dir: str | Path,
    formats: list[str] | None = None,
    out: str | Path | None = None,
    *,
    run_verify: bool = True,
    verify_limit: int = 200,
    calibration_images: int = 100,
    progress: ProgressFn | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Exports a finished run folder.

    Args:
        run_dir: The run folder (needs model.keras, config.json, dataset.json).
        formats: Formats to write (default: all of FORMATS).
        out: Destination folder (default ``RUN_DIR/exports``): absent, empty, or a bundle an earlier export
            wrote (it is replaced atomically); never the run folder or a folder that contains it.
        run_verify: Verify every artifact in its runtime and write verify.json.
        verify_limit: At most this many held-out images for verification.
        calibration_images: Class-balanced training images used to calibrate the int8 model.
        progress: Called with a short sentence before each step.

    Returns:
        (bundle folder, verify.json content or None).

    Raises:
        RunNotReadyError, ExportError, ConversionError.
    """
    say = progress or (lambda _msg: None)
    run, cfg, splits = load_run(run_dir)
    formats = list(formats or FORMATS)
    dest = Path(out).expanduser().resolve() if out else run.exports
    check_destination(dest, run.root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with export_lock(run.root, dest, say):
        check_destination(dest, run.root)  # again: another export may have finished meanwhile
        clean_stale(dest)
        # about what the formats take: each at most the model's size, and the zip of them all
        needed = run.model.stat().st_size * (len(formats) + 1)
        with full_disk_is_a_message(dest.parent, needed, then="export again"):
            tmp = paths.make_temp_dir(dest.parent, f".{dest.name}.tmp-")  # not mkdtemp's 0700: the umask's mode
            timer = _Timer(tmp / TIMES_NAME)
            try:
                with _second_process() as elsewhere:
                    result = _build(
                        run,
                        cfg,
                        splits,
                        formats,
                        tmp,
                        timer,
                        say,
                        elsewhere,
                        run_verify=run_verify,
                        verify_limit=verify_limit,
                        calibration_images=calibration_images,
                    )
                _replace_dir(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return dest, result


class _Timer:
    """Seconds per step, appended to the bundle's export.log and echoed on stderr."""

    def __init__(self, path: Path):
        self.path = path
        self.steps: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def step(self, name: str):
        t0 = time.perf_counter()
        yield
        self.record(name, time.perf_counter() - t0)

    def record(self, name: str, seconds: float) -> None:
        self.steps[name] = round(self.steps.get(name, 0.0) + seconds, 2)
        line = f"{name}: {seconds:.2f} s"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        print(line, file=sys.stderr, flush=True)

    def total(self) -> None:
        self.record("total", time.perf_counter() - self.t0)


@contextlib.contextmanager
def _second_process():
    """A pool of one spawned process that imports TensorFlow while this one loads the model; ended (terminated,
    if it is still busy) when the export ends or fails."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(1, initializer=_warm_up)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def _warm_up() -> None:
    import tensorflow  # noqa: F401  (what every converter and runtime there needs first)


def _keras_reference_of(run_dir: Path, limit: int) -> tuple[np.ndarray, float, float]:
    """``verify.keras_reference`` of the run's model.keras on its held-out images (:func:`held_out`: the same images
    in the same order as the export verifies), in the second process: (probabilities, ms per image, seconds)."""
    t0 = time.perf_counter()
    model = load_model(load_run(run_dir)[0])
    with held_out(run_dir, limit) as (images, _labels, _split):
        probs, latency = verify.keras_reference(model, images)
    return probs, latency, time.perf_counter() - t0


def _convert_elsewhere(fmt: str, job: _Conversion) -> tuple[dict | None, dict, float]:
    """One conversion in the second process: what it leaves for the manifest, and its seconds."""
    t0 = time.perf_counter()
    CONVERTERS[formats_mod.get(fmt).family](fmt, job)
    return job.int8_params, job.metadata, time.perf_counter() - t0


def _build(
    run,
    cfg,
    splits,
    formats,
    tmp: Path,
    timer: _Timer,
    say: ProgressFn,
    elsewhere,
    *,
    run_verify: bool,
    verify_limit: int,
    calibration_images: int,
) -> dict[str, Any] | None:
    """Writes every file of the bundle into ``tmp``; returns the verification result.

    The second process ``elsewhere`` (:func:`_second_process`) converts the formats of
    ``formats.CONVERTED_ELSEWHERE`` and checks those of ``formats.CHECKED_ELSEWHERE`` while this one does the rest:
    two cores instead of one.
    """
    # The second process computes the Keras reference first, while this one loads the model and writes the SavedModel
    reference = elsewhere.apply_async(_keras_reference_of, (run.root, verify_limit)) if run_verify else None
    say("loading the trained model")
    with timer.step("load model"):
        model = load_model(run)
    size = cfg.model.image_size
    say("writing SavedModel")
    with timer.step("convert savedmodel"):
        savedmodel.export_savedmodel(model, tmp / "savedmodel", size)
    (tmp / "labels.txt").write_text("\n".join(splits.classes) + "\n", encoding="utf-8")
    info = mediapipe_tasks.ModelInfo(
        name=f"Transfer Studio image classifier ({cfg.model.backbone})",
        version=f"{run.root.name} exported {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        description=(
            f"Classifies a photo into {len(splits.classes)} classes ({', '.join(splits.classes)}). "
            f"{cfg.model.backbone} at {size}x{size} px, fine-tuned with Transfer Studio."
        ),
        image_size=size,
        labels=tuple(splits.classes),
    )
    job = _Conversion(tmp, cfg, splits, info, calibration_images)
    there = {
        fmt: elsewhere.apply_async(_convert_elsewhere, (fmt, job))
        for fmt in formats
        if fmt in formats_mod.CONVERTED_ELSEWHERE
    }
    for fmt in (f for f in formats if f != "savedmodel" and f not in there):
        say(f"converting {fmt}")
        with timer.step(f"convert {fmt}"):
            CONVERTERS[formats_mod.get(fmt).family](fmt, job)
    for fmt, pending in there.items():
        say(f"converting {fmt} (second process)")
        params, metadata, seconds = pending.get()
        job.int8_params = params or job.int8_params
        job.metadata.update(metadata)
        timer.record(f"convert {fmt}", seconds)  # (its seconds there: the two processes overlap)
    int8_params, written_metadata = job.int8_params, {f: job.metadata[f] for f in formats if f in job.metadata}
    if tfjs_formats := formats_mod.of_family(formats, "tfjs"):
        web.write_demo(tmp, "tfjs" if "tfjs" in tfjs_formats else tfjs_formats[0])
    eval_result = run.evaluation()
    threshold = threshold_of(eval_result)
    (tmp / "README.md").write_text(bundle_readme(cfg, splits, formats, int8_params, threshold), encoding="utf-8")
    result = None
    if run_verify:
        with held_out(run.root, verify_limit, scratch=tmp / ".verify-cache") as (images, labels, _split):
            result = verify.verify(
                tmp,
                formats,
                model,
                images,
                labels,
                classes=list(splits.classes),
                progress=say,
                elsewhere=elsewhere,
                reference=reference,
            )
        shutil.rmtree(tmp / ".verify-cache", ignore_errors=True)
        for fmt, row in result["formats"].items():
            timer.record(f"verify {fmt} ({result['images']} images)", row.get("seconds", 0.0))
        atomic_write_json(tmp / "verify.json", result)
    card = model_card.fields(run, cfg, splits, result)
    if eval_result is not None:
        model_card.write_confusion_png(eval_result, tmp / model_card.MATRIX_NAME)
    (tmp / model_card.CARD_NAME).write_text(model_card.render(card), encoding="utf-8")
    manifest = build_manifest(run, cfg, splits, formats, int8_params, tmp, written_metadata, card)
    atomic_write_json(tmp / "manifest.json", manifest)
    say("zipping the bundle")
    with timer.step("zip"):
        _zip_bundle(tmp)
    timer.total()
    return result


@dataclasses.dataclass
class _Conversion:
    """What every converter reads (the bundle's folder holding savedmodel/, the run's settings and splits) and
    what the TFLite one leaves for the manifest (the 8-bit file's input/output quantization, each file's metadata)."""

    tmp: Path
    cfg: Any
    splits: data_mod.Splits
    info: mediapipe_tasks.ModelInfo
    calibration_images: int
    int8_params: dict[str, Any] | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def _to_tflite(fmt: str, job: _Conversion) -> None:
    """LiteRT flatbuffer with ``tflite.PRESETS[fmt]``'s quantization, builtin ops only, MediaPipe metadata inside."""
    q = tflite.PRESETS[fmt]
    rep = _representative(job.splits, job.cfg, job.calibration_images) if q.full_integer else None
    path = verify.artifact_path(job.tmp, fmt)
    path.write_bytes(tflite.convert(job.tmp / "savedmodel", q, rep))
    flex = sorted(op for op in tflite.op_names(path) if op.startswith("Flex"))
    if flex:
        raise ConversionError(f"{fmt} needs TensorFlow Select ops ({', '.join(flex)}), which mobile apps cannot load.")
    params = tflite.io_details(path) if q.full_integer else None
    job.int8_params = params or job.int8_params
    with_meta, job.metadata[fmt] = mediapipe_tasks.write_metadata(path.read_bytes(), job.info, params)
    path.write_bytes(with_meta)


def _to_tfjs(fmt: str, job: _Conversion) -> None:
    tfjs.convert(job.tmp / "savedmodel", verify.artifact_path(job.tmp, fmt), fmt)


def _to_onnx(fmt: str, job: _Conversion) -> None:
    try:
        onnx_export.convert(job.tmp / "savedmodel", verify.artifact_path(job.tmp, fmt), job.cfg.model.image_size)
    except RuntimeError as exc:
        raise ConversionError(str(exc)) from exc


# Each family's converter, from the SavedModel (written first); the registry's ``family`` picks one.
CONVERTERS: dict[formats_mod.Family, Callable[[str, _Conversion], None]] = {
    "tflite": _to_tflite,
    "tfjs": _to_tfjs,
    "onnx": _to_onnx,
}


def _representative(splits: data_mod.Splits, cfg, count: int):
    """Calibration images for the int8 model: class-balanced training images, kept as uint8, fed one at a time."""
    idx = _balanced_sample(splits, "train", count, cfg.train.seed)
    files = splits.paths("train")
    images = [data_mod.load_image(files[i], cfg.model.image_size) for i in idx]

    def gen():
        for img in images:
            yield [img[None].astype(np.float32)]

    return gen


def build_manifest(
    run,
    cfg,
    splits,
    formats,
    int8_params,
    bundle: Path,
    tflite_metadata: dict[str, dict] | None = None,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from pipeline import backbones

    spec = backbones.get(cfg.model.backbone)
    eval_result = run.evaluation()
    files = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.json"):
        rel = path.relative_to(bundle).as_posix()
        if rel not in (ZIP_NAME, TIMES_NAME):
            files[rel] = {"sha256": data_mod.file_sha256(path), "bytes": path.stat().st_size}
    size = cfg.model.image_size
    return {
        "format_version": 1,
        "labels": list(splits.classes),
        "input": {
            "name": savedmodel.INPUT_NAME,
            "shape": [1, size, size, 3],
            "dtype": "float32",
            "layout": "NHWC",
            "color": "RGB",
            "value_range": [0, 255],
            "resize": f"bilinear to {size}x{size}, aspect ratio not kept (no crop), EXIF orientation applied first",
            "preprocessing": f"inside the model ({spec.preprocessing}); feed raw pixels",
        },
        "output": {
            "name": savedmodel.OUTPUT_NAME,
            "shape": [1, len(splits.classes)],
            "dtype": "float32",
            "meaning": "softmax probabilities in label order",
        },
        # below it, "none of these": the model only knows its classes (model_card.results has how it was chosen)
        "confidence_threshold": threshold_of(eval_result),
        "tflite_int8": int8_params,
        "tflite_metadata": tflite_metadata or {},
        "web_demo": "web/index.html" if (bundle / "web" / "index.html").exists() else None,
        "backbone": {
            "name": cfg.model.backbone,
            "alpha": cfg.model.alpha if spec.alphas else None,
            "weights": cfg.model.weights,
            "strategy": cfg.train.strategy,
        },
        "formats": {f: verify.artifact_path(bundle, f).relative_to(bundle).as_posix() for f in formats},
        "training": {
            "best": None if (best := run.read_state().best) is None else best.to_dict(),
            "eval": {k: eval_result[k] for k in ("split", "images", "accuracy")} if eval_result else None,
        },
        "model_card": card,
        "files": files,
        "versions": _versions(),
    }


def _zip_bundle(bundle: Path) -> None:
    target = bundle / ZIP_NAME
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in bundle.rglob("*") if p.is_file() and p != target and p.name != TIMES_NAME):
            zf.write(path, path.relative_to(bundle).as_posix())


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a bundle an export wrote: a manifest listing every file in it."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        listed = set(manifest["files"])
        manifest["format_version"], manifest["formats"]  # noqa: B018 (keys every manifest has)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    own = {"manifest.json", ZIP_NAME, TIMES_NAME}
    return all(p.relative_to(folder).as_posix() in listed | own for p in folder.rglob("*") if not p.is_dir())


def check_destination(dest: Path, run_root: Path) -> None:
    """Refuses a destination whose replacement would delete something an export did not write.

    Raises:
        ExportError: ``dest`` is the run folder, contains it, is a file, or is a non-empty folder that is
            not a bundle (or holds files its manifest does not list).
    """
    run_root = run_root.resolve()
    if dest == run_root or dest in run_root.parents:
        raise ExportError(
            f"--out {dest} is the run folder or contains it: choose a new or empty folder "
            f"(default: {run_root / 'exports'})."
        )
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"--out {dest} is a file: choose a new or empty folder.")
    if dest.is_dir() and any(dest.iterdir()) and not is_bundle(dest):
        raise ExportError(
            f"--out {dest} is not empty and is not a bundle written by `python -m export` (or holds "
            "files its manifest does not list): nothing was changed; choose a new or empty folder."
        )


@contextlib.contextmanager
def export_lock(run_root: Path, dest: Path, say: ProgressFn):
    """Serialises exports: one at a time per run folder and per destination (the CLI and the app alike).

    Waits for a running export to finish (saying so); the locks are released when the process ends,
    however it ends.
    """
    with contextlib.ExitStack() as stack:
        # The run's lock file, then the destination's parent folder itself (flock on a directory: nothing is
        # left behind in the user's folder). Always in this order, so two exports cannot wait on each other.
        for path in (run_root / ".export-run.lock", dest.parent):
            fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say("waiting for another export of this run (or into the same folder) to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield


def clean_stale(dest: Path) -> None:
    """Clears what a killed export left beside ``dest`` (call with the export lock held).

    A half-built ``.NAME.tmp-*`` folder is deleted. A kill between the two renames of :func:`_replace_dir`
    leaves the previous bundle as ``.NAME.old-*`` and no ``dest``: it is put back first.
    """
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not dest.exists() and olds and is_bundle(olds[-1]):
        os.replace(olds.pop(), dest)
    for stale in [*olds, *dest.parent.glob(f".{dest.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _replace_dir(src: Path, dest: Path) -> None:
    """Moves the finished bundle into place (with the export lock held); an older bundle is moved aside, then
    deleted."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def bundle_readme(cfg, splits, formats, int8_params, threshold: float | None = None) -> str:
    """The bundle's README.md from ``export/templates/bundle_readme.md`` (``@NAME@`` placeholders)."""
    int8 = ""
    if int8_params:
        q = int8_params["input"]["quantization"]
        o = int8_params["output"]["quantization"]
        int8 = (
            f"\n`model-int8.tflite` takes **uint8** pixels (scale {q['scale']:g}, zero point {q['zero_point']}) "
            f"and returns uint8 scores: probability = (value - {o['zero_point']}) * {o['scale']:g}.\n"
        )
    text = README_TEMPLATE.read_text(encoding="utf-8")
    for key, value in {
        "LABELS": ", ".join(splits.classes),
        "SIZE": str(cfg.model.image_size),
        "FORMATS": ", ".join(formats),
        "INT8": int8,
        "CLASSES": str(len(splits.classes)),
        "THRESHOLD": "none (the run has no evaluation)" if threshold is None else f"{threshold:.3f}",
        "THRESHOLD_VALUE": "0" if threshold is None else f"{threshold:.3f}",
    }.items():
        text = text.replace(f"@{key}@", value)
    return text


def read_verify(bundle: str | Path) -> dict[str, Any] | None:
    """A bundle's verify.json (None when it was exported without verification, or it cannot be read)."""
    try:
        doc = json.loads((Path(bundle) / "verify.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("formats"), dict) else None


def read_manifest(bundle: str | Path) -> dict[str, Any] | None:
    """A bundle's manifest.json (None when there is no bundle, or it cannot be read)."""
    try:
        doc = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
