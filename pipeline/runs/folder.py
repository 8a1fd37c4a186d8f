"""The run folder: one place per training run, readable by the app, the CLI and the export step.

Layout::

    config.json        the RunConfig (pipeline.config)
    dataset.json       the data source, labels, scan summary and the exact train/val/test file lists
    metrics.jsonl      one JSON line per finished epoch, plus progress lines, flushed as written
    state.json         where training stands: the one source of truth for resuming (see below)
    state.prev.json    the state.json before the last write (a damaged state.json falls back to it)
    checkpoints/       backup_<phase>/epoch-NNNN.npz (the last two epochs of each phase: model and optimizer),
                       best-<phase>-<epoch>.npz (the best inference weights), <phase>.done.npz (a finished phase)
    model.keras        the trained inference model (raw pixels in, probabilities out)
    eval.json          test-split evaluation
    CANCEL             present when a cancel was requested
    exports/           written by `python -m export`
    export_status.json, export.log   an export the app started in the background (export.task)

``state.json`` is the run's ledger, read and written as a :class:`pipeline.runs.ledger.Ledger` (its module
shows the document and owns every change to it).

An epoch counts as trained once state.json says so: its checkpoint (and best weights) are written first,
then state.json (the commit), then its line in metrics.jsonl. A resumed run re-appends a committed
epoch's line that a kill cut off, and writes a ``rollback`` line when it has to retrain epochs whose
lines exist (a damaged checkpoint); :meth:`RunFolder.epochs` honours it.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.host.atomic import atomic_write, atomic_write_json
from pipeline.host.disk import full_disk_is_a_message, is_full
from pipeline.host.exitcodes import UserError
from pipeline.runs import events
from pipeline.runs.ledger import Ledger


class TrainingCancelled(Exception):
    """A cancel was requested (CANCEL file or SIGTERM); the last finished epoch's checkpoint is kept."""


class RunFolderError(UserError, ValueError):
    """The run folder cannot be used for this request; the message says why and what to do."""


class RunNotReadyError(RunFolderError):
    """The run folder lacks what the step needs (no trained model yet, missing files)."""


class CheckpointMismatchError(RunFolderError):
    """A checkpoint's variables do not fit the model they are loaded into."""


class DamagedFileError(RunFolderError):
    """A file of the run folder cannot be read (cut short, overwritten, disk trouble).

    The message (for the CLIs and logs) names the file by its path and says the way on. The app, which shows no
    server path, says :meth:`in_words` instead, built from the two attributes.

    Attributes:
        file: The file's name inside the run folder (``model.keras``, ``checkpoints/head/last.npz``).
        problem: What is wrong with it, in words that hold no path (``is damaged``, ``cannot be read (...)``).
    """

    def __init__(self, message: str, *, file: str, problem: str):
        super().__init__(message)
        self.file, self.problem = file, problem

    def in_words(self) -> str:
        """The problem said without a path: ``This run's model.keras cannot be read (...).``"""
        return f"This run's {self.file} {self.problem}."


# === Checkpoints: variables keyed by name ===


def save_variables(path: Path, variables: dict[str, Any], *, fault: str | None = None, **meta: int) -> None:
    """Writes variable values keyed by name (plus small integer ``meta``) to one ``.npz``, atomically.

    About 20 ms for MobileNetV2 with its Adam state, where Keras's ``save_weights`` to HDF5 takes
    about 0.45 s; a kill during the write leaves the previous file whole.

    Args:
        path: The ``.npz`` file.
        variables: Name (a variable's ``path``, see :func:`pipeline.training.callbacks.checkpoint_variables`) ->
            variable.
        fault: The test hook's name for the moment before the rename (:func:`pipeline.host.atomic.fault_point`).
        meta: Small integers stored beside the values (epoch, steps).
    """
    names = list(variables)
    arrays = {f"v{i}": np.asarray(variables[name]) for i, name in enumerate(names)}
    keys = np.array(names, dtype=np.str_)

    def write(fh) -> None:  # np.savez's layout, with the zip closed here: a failed write leaves no open ZipFile
        members = {"keys": keys, **{f"meta_{k}": np.asarray(v) for k, v in meta.items()}, **arrays}
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in members.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)

    atomic_write(path, write, fault=fault, size=sum(a.nbytes for a in arrays.values()))


def read_variables(path: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The values and ``meta`` saved by :func:`save_variables`.

    Raises:
        DamagedFileError: the file is cut short or is not such a checkpoint.
    """
    try:
        with np.load(path, allow_pickle=False) as saved:
            keys = [str(k) for k in saved["keys"]]
            values = {k: saved[f"v{i}"] for i, k in enumerate(keys)}
            meta = {k[5:]: int(saved[k]) for k in saved.files if k.startswith("meta_")}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DamagedFileError(
            f"the checkpoint {path} is damaged ({type(exc).__name__}: {exc})",
            file=f"checkpoint {Path(path).name}",
            problem="is damaged",
        ) from exc
    return values, meta


def load_variables(path: Path, variables: dict[str, Any]) -> dict[str, int]:
    """Assigns the values saved by :func:`save_variables` to the variables of the same name; returns ``meta``.

    Raises:
        CheckpointMismatchError: a name is missing on either side, or a shape differs (the model changed).
        DamagedFileError: the file cannot be read.
    """
    values, meta = read_variables(path)
    missing = [k for k in variables if k not in values]
    extra = [k for k in values if k not in variables]
    wrong = [k for k in variables if k in values and tuple(values[k].shape) != tuple(variables[k].shape)]
    if missing or extra or wrong:
        parts = []
        for what, names in (
            ("missing from the file", missing),
            ("not in this model", extra),
            ("of another shape", wrong),
        ):
            if names:
                parts.append(f"{len(names)} {what} (e.g. {', '.join(names[:3])})")
        raise CheckpointMismatchError(
            f"the checkpoint {path} does not match this model: variables "
            + "; ".join(parts)
            + ". The code or the config changed since it was written; train into a new run folder."
        )
    for name, variable in variables.items():
        variable.assign(values[name])
    return meta


# === metrics.jsonl ===


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Reads a JSON-lines file, skipping a line that a kill cut short (or that is still being written)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


class MetricsWriter:
    """Appends JSON lines to metrics.jsonl, flushed and fsynced as written.

    A file whose last line a kill cut short gets a line break first, so the next record starts on a line
    of its own (readers skip the torn one).
    """

    def __init__(self, path: Path):
        self.folder = path.parent
        with full_disk_is_a_message(self.folder):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a+b")  # noqa: SIM115 - closed in close()
            self._lock = threading.Lock()  # decoding progress is written from a worker thread
            if self._fh.seek(0, io.SEEK_END) > 0:
                self._fh.seek(-1, io.SEEK_END)
                if self._fh.read(1) != b"\n":
                    self._fh.write(b"\n")

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        with self._lock, full_disk_is_a_message(self.folder, len(line)):
            self._fh.write(line)  # a line cut short by a full disk is skipped by readers, like a killed one
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# === The folder ===

# Every top-level name a run folder can hold (this module, the training child, export, the label-issue search,
# the app): the layout `delete` checks before it removes a folder that no job names. Hidden temporary files
# (``.NAME.*.tmp``, ``.*.lock``) are a run's too.
RUN_ENTRIES = frozenset(
    {
        "config.json",
        "dataset.json",
        "metrics.jsonl",
        "state.json",
        "state.prev.json",
        "state.json.damaged",
        "checkpoints",
        "model.keras",
        "eval.json",
        "CANCEL",
        "exports",
        "export_status.json",
        "export.log",
        "train.log",
        "error.txt",
        "job.json",
        "label_issues.json",
        "label_issues.status.json",
        "label_issues.log",
        "dataset_map.json",
        "dataset_map.status.json",
        "dataset_map.log",
        "predictions.csv",
        "predictions.json",
        "score.json",
        "tune-export.log",
        "predict.status.json",
        "predict.log",
    }
)


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def previous_state(self) -> Path:
        return self.root / "state.prev.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def best_file(self, phase: str, epoch: int) -> Path:
        return self.checkpoints / f"best-{phase}-{epoch}.npz"

    @property
    def best_weights(self) -> Path | None:
        """The best inference weights state.json names (None before the first epoch)."""
        best = self.read_state().best
        return self.checkpoints / best.file if best and best.file else None

    def phase_done_weights(self, phase: str) -> Path:
        return self.checkpoints / f"{phase}.done.npz"

    def backup_dir(self, phase: str) -> Path:
        return self.checkpoints / f"backup_{phase}"

    def epoch_checkpoint(self, phase: str, epoch: int) -> Path:
        """Model and optimizer variables after ``epoch`` of ``phase`` (the last two are kept)."""
        return self.backup_dir(phase) / f"epoch-{epoch:04d}.npz"

    @property
    def model(self) -> Path:
        return self.root / "model.keras"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    @property
    def cancel_file(self) -> Path:
        return self.root / "CANCEL"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def not_a_run(self) -> str | None:
        """Why this folder is not a run folder, or None when its own layout proves it is one.

        A run folder holds a config.json that reads as a RunConfig, a dataset.json with the splits, and
        nothing but the names a run writes (:data:`RUN_ENTRIES`, hidden temporary and lock files).
        """
        if self.root.is_symlink() or not self.root.is_dir():
            return f"{self.root} is not a folder"
        from pipeline import config as config_mod

        try:
            config_mod.load(self.config)
            splits = _read_json_object(self.dataset)["splits"]
            if not isinstance(splits, dict):
                raise ValueError("no splits")
        except (OSError, ValueError, KeyError, config_mod.ConfigError) as exc:
            return f"{self.root} holds no run's config.json and dataset.json ({type(exc).__name__}: {exc})"
        foreign = sorted(
            p.name
            for p in self.root.iterdir()
            if p.name not in RUN_ENTRIES
            and not (p.name.startswith(".") and p.name.endswith((".tmp", ".lock", ".tmp.keras")))
        )
        if foreign:
            return f"{self.root} holds what a run does not write ({', '.join(foreign[:5])})"
        return None

    def finished(self) -> bool:
        """True when state.json says the run is done (trained and evaluated): a job with such a run succeeded."""
        try:
            return self.read_state().status == "done"
        except DamagedFileError:
            return False

    # === state.json ===

    def read_state(self) -> Ledger:
        """The run's ledger (an empty one before training started).

        Raises:
            DamagedFileError: state.json cannot be read; the message says how to go on.
        """
        try:
            return Ledger.from_dict(_read_json_object(self.state))
        except FileNotFoundError:
            return Ledger()
        except (ValueError, OSError) as exc:  # LedgerFormatError is a ValueError
            way = (
                "resume the run (`python -m pipeline resume JOB`, or the same `python -m pipeline train` command): "
                "it goes on from state.prev.json, the copy before the last epoch"
                if self.previous_state.exists()
                else "train into a new run folder"
            )
            raise DamagedFileError(
                f"{self.state} is damaged ({exc}); {way}.", file=self.state.name, problem="is damaged"
            ) from exc

    def recover_state(self) -> tuple[Ledger, str | None]:
        """The state to resume from, and a sentence when it had to fall back to state.prev.json.

        A damaged state.json is kept beside as ``state.json.damaged`` (nothing is deleted).

        Raises:
            DamagedFileError: state.json and its previous copy are both unreadable.
        """
        try:
            return self.read_state(), None
        except DamagedFileError as exc:
            try:
                previous = Ledger.from_dict(_read_json_object(self.previous_state))
            except (ValueError, OSError):
                raise DamagedFileError(
                    f"{self.state} is damaged and so is (or is missing) its previous copy {self.previous_state.name}; "
                    "train into a new run folder (this one's checkpoints stay where they are).",
                    file=self.state.name,
                    problem=f"is damaged and so is (or is missing) its previous copy {self.previous_state.name}",
                ) from exc
            os.replace(self.state, self.state.with_name("state.json.damaged"))
            atomic_write_json(self.state, previous.to_dict())
            return previous, f"{exc.args[0].split(';')[0]}; resumed from {self.previous_state.name}."

    def write_state(self, state: Ledger) -> None:
        """Writes state.json atomically, keeping the version before it as state.prev.json."""
        if self.state.exists():
            try:
                atomic_write_json(self.previous_state, _read_json_object(self.state))
            except (ValueError, OSError):
                pass  # a damaged state.json is not worth keeping as "previous"
        atomic_write_json(self.state, state.to_dict(), fault="state-write")

    # === readers (the pages and the CLI read a run through these) ===

    def settings(self):
        """Its RunConfig (config.json).

        Raises:
            DamagedFileError: config.json is missing, cut short, or not a RunConfig.
        """
        from pipeline import config as config_mod

        try:
            return config_mod.load(self.config)
        except (OSError, ValueError) as exc:  # ConfigError is a ValueError
            raise DamagedFileError(
                f"{self.config} cannot be read ({exc}); train into a new run folder.",
                file=self.config.name,
                problem="cannot be read (missing, cut short, or not a Transfer Studio run's settings)",
            ) from exc

    def dataset_record(self) -> dict[str, Any]:
        """dataset.json: source, revision, scan and splits.

        Raises:
            DamagedFileError: it is missing or not a JSON object.
        """
        try:
            return _read_json_object(self.dataset)
        except (OSError, ValueError) as exc:
            raise DamagedFileError(
                f"{self.dataset} is damaged or missing ({exc}); train into a new run folder.",
                file=self.dataset.name,
                problem="is damaged or missing",
            ) from exc

    def splits(self):
        """The exact train/val/test file lists (dataset.json's ``splits``), a ``data.Splits``.

        Raises:
            DamagedFileError: dataset.json is missing, damaged, or holds no splits.
        """
        from pipeline import data as data_mod

        try:
            return data_mod.Splits.from_dict(self.dataset_record()["splits"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedFileError(
                f"{self.dataset} holds no usable splits ({exc}); train into a new run folder.",
                file=self.dataset.name,
                problem="holds no usable splits",
            ) from exc

    def evaluation(self) -> dict[str, Any] | None:
        """eval.json (None before the run is evaluated).

        Raises:
            DamagedFileError: it exists but is not a JSON object.
        """
        try:
            return _read_json_object(self.eval)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DamagedFileError(
                f"{self.eval} is damaged ({exc}); run `python -m pipeline evaluate {self.root}`.",
                file=self.eval.name,
                problem="is damaged",
            ) from exc

    # === metrics.jsonl ===

    def metrics_lines(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics)

    def epochs(self) -> list[dict[str, Any]]:
        """The trained-epoch lines of metrics.jsonl, in order; a ``rollback`` line voids later epochs of its phase."""
        out: list[dict[str, Any]] = []
        for m in self.metrics_lines():
            if m.get("event") == events.EPOCH:
                out.append(m)
            elif m.get("event") == events.ROLLBACK:
                out = [e for e in out if e.get("phase") != m["phase"] or e.get("epoch", 0) <= m["epoch"]]
        return out


def _read_json_object(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


# === Loading a finished run ===


def load_run(run_dir: str | Path):
    """Opens a run folder that holds a trained model.

    Returns:
        (RunFolder, RunConfig, Splits).

    Raises:
        RunNotReadyError: in one sentence, what is missing.
    """
    from pipeline import config as config_mod

    run = RunFolder(Path(run_dir).expanduser().resolve())
    if not run.root.is_dir():
        raise RunNotReadyError(f"{run.root} is not a run folder (it does not exist).")
    for path, what in ((run.config, "config.json"), (run.dataset, "dataset.json"), (run.model, "model.keras")):
        if not path.exists():
            hint = "training has not finished" if what == "model.keras" else "it was not written by `pipeline train`"
            raise RunNotReadyError(f"{run.root} has no {what}: {hint}.")
    cfg = config_mod.load(run.config)
    return run, cfg, run.splits()


def load_model(run: RunFolder):
    """The run's inference model (model.keras), uncompiled.

    Raises:
        DamagedFileError: model.keras cannot be read (cut short, overwritten): naming it and the way on.
    """
    import keras

    try:
        return keras.saving.load_model(run.model, compile=False)
    except Exception as exc:
        if is_full(exc):
            raise
        cut = "" if zipfile.is_zipfile(run.model) else " (it is not a whole .keras file: cut short or overwritten)"
        raise DamagedFileError(
            f"{run.model} cannot be read{cut}: {type(exc).__name__}: {exc}. Train into a new run folder "
            f"(`python -m pipeline train SOURCE --run-dir NEW --from {run.root}` starts from this run's best weights).",
            file=run.model.name,
            problem=f"cannot be read{cut}",
        ) from exc
