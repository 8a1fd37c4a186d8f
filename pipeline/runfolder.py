"""The run folder: one place per training run, readable by the app, the CLI and the export step.

Layout::

    config.json        the RunConfig (pipeline.config)
    dataset.json       the data source, labels, scan summary and the exact train/val/test file lists
    metrics.jsonl      one JSON line per finished epoch, plus progress lines, flushed as written
    state.json         which phases finished (so a resumed run skips them)
    checkpoints/       backup_<phase>/latest.npz (resume point), best.npz, <phase>.done.npz (variables)
    model.keras        the trained inference model (raw pixels in, probabilities out)
    eval.json          test-split evaluation
    CANCEL             present when a cancel was requested
    exports/           written by `python -m export`
    export_status.json, export.log   an export the app started in the background (export.task)
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` so that readers see the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run folders are shared with the app and workers
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


class CheckpointMismatchError(ValueError):
    """A checkpoint's variables do not fit the model they are loaded into."""


def save_variables(path: Path, variables: list, **meta: int) -> None:
    """Writes variable values (and small integer ``meta``) to one ``.npz``, atomically.

    About 20 ms for MobileNetV2 with its Adam state, where Keras's ``save_weights`` to HDF5 takes
    about 0.45 s; a kill during the write leaves the previous file whole.
    """
    arrays = {f"v{i}": np.asarray(v) for i, v in enumerate(variables)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, count=len(arrays), **{f"meta_{k}": v for k, v in meta.items()}, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_variables(path: Path, variables: list) -> dict[str, int]:
    """Assigns the values saved by :func:`save_variables` to ``variables``; returns the saved ``meta``.

    Raises:
        CheckpointMismatchError: the file holds a different number or shape of variables.
    """
    with np.load(path) as saved:
        arrays = [saved[f"v{i}"] for i in range(int(saved["count"]))]
        meta = {k[5:]: int(saved[k]) for k in saved.files if k.startswith("meta_")}
    if len(arrays) != len(variables) or any(a.shape != tuple(v.shape) for a, v in zip(arrays, variables, strict=True)):
        raise CheckpointMismatchError(f"{path} holds {len(arrays)} variables that do not fit this model's {len(variables)}")
    for v, a in zip(variables, arrays, strict=True):
        v.assign(a)
    return meta


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Reads a JSON-lines file, ignoring a last line that is still being written."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


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
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best_weights(self) -> Path:
        return self.checkpoints / "best.npz"

    def phase_done_weights(self, phase: str) -> Path:
        return self.checkpoints / f"{phase}.done.npz"

    def backup_dir(self, phase: str) -> Path:
        return self.checkpoints / f"backup_{phase}"

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

    def read_state(self) -> dict[str, Any]:
        if not self.state.exists():
            return {"phases_done": []}
        return json.loads(self.state.read_text(encoding="utf-8"))

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state, state)

    def metrics_lines(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics)

    def epochs(self) -> list[dict[str, Any]]:
        """The finished-epoch lines of metrics.jsonl, in order."""
        return [m for m in self.metrics_lines() if m.get("event") == "epoch"]


class MetricsWriter:
    """Appends JSON lines to metrics.jsonl, flushed and fsynced as written."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()  # decoding progress is written from a worker thread

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
