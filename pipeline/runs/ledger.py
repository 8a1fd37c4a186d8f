"""The run's ledger (``state.json``): where training stands, typed, and every change to it made here.

``state.json`` is the one source of truth for resuming::

    {"status": "running" | "cancelled" | "evaluating" | "done",
     "placement": {"backend": "tensorflow", "replicas": 1},
     "phases": {"head": {"epochs_done": 2, "steps_done": 8, "done": true, "stopped_early": false, "wait": 0,
                         "best_val_loss": 0.3, "last_epoch": {...the epoch's metrics line...}}, ...},
     "best": {"phase": "head", "epoch": 2, "val_accuracy": 0.9, "val_loss": 0.3, "file": "best-head-2.npz"}}

The JSON is the same document earlier versions wrote (keys they did not write are left out), so a run folder
written by them resumes, and one written now is read by them. :class:`Ledger` is read and written by
:class:`pipeline.runs.folder.RunFolder` (``read_state``/``write_state``); training changes it only through the
methods below, and writes it at its commit points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Status = Literal["running", "cancelled", "evaluating", "done"]
STATUSES = ("running", "cancelled", "evaluating", "done")


class LedgerFormatError(ValueError):
    """state.json is JSON but not a ledger (a field of the wrong type)."""


@dataclass
class PhaseProgress:
    """One phase's progress.

    Attributes:
        epochs_done: Epochs committed (``fit``'s ``initial_epoch`` on resume).
        steps_done: Optimizer steps after the last committed epoch (its checkpoint must hold as many).
        done: The phase finished (its ``<phase>.done.npz`` is written).
        stopped_early: Early stopping ended the phase.
        wait: Epochs since the validation loss last improved (early stopping's counter).
        best_val_loss: The lowest validation loss so far (None before the first epoch).
        last_epoch: The last committed epoch's metrics line (re-appended when a kill cut it off).
    """

    epochs_done: int = 0
    steps_done: int = 0
    done: bool = False
    stopped_early: bool = False
    wait: int = 0
    best_val_loss: float | None = None
    last_epoch: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PhaseProgress:
        return cls(
            epochs_done=_int(doc, "epochs_done"),
            steps_done=_int(doc, "steps_done"),
            done=bool(doc.get("done", False)),
            stopped_early=bool(doc.get("stopped_early", False)),
            wait=_int(doc, "wait"),
            best_val_loss=_float_or_none(doc, "best_val_loss"),
            last_epoch=_dict_or_none(doc, "last_epoch"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs_done": self.epochs_done, "steps_done": self.steps_done, "done": self.done}
        if self.stopped_early:
            out["stopped_early"] = True
        if self.epochs_done or self.wait:
            out["wait"] = self.wait
        if self.best_val_loss is not None:
            out["best_val_loss"] = self.best_val_loss
        if self.epochs_done or self.last_epoch is not None:
            out["last_epoch"] = self.last_epoch
        return out


@dataclass(frozen=True)
class Best:
    """The best epoch so far (highest validation accuracy, then lowest loss) and its inference weights' file."""

    phase: str
    epoch: int
    val_accuracy: float
    val_loss: float
    file: str | None  # None: the file could not be read, model.keras holds the last epoch's weights

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Best:
        try:
            return cls(
                phase=str(doc["phase"]),
                epoch=int(doc["epoch"]),
                val_accuracy=float(doc["val_accuracy"]),
                val_loss=float(doc["val_loss"]),
                file=None if doc.get("file") is None else str(doc["file"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerFormatError(f"its best epoch is not one ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "epoch": self.epoch,
            "val_accuracy": self.val_accuracy,
            "val_loss": self.val_loss,
            "file": self.file,
        }

    def beaten_by(self, val_accuracy: float, val_loss: float) -> bool:
        return (val_accuracy, -val_loss) > (self.val_accuracy, -self.val_loss)


@dataclass
class Ledger:
    """Where a run stands: its status, each phase's progress, the best epoch, the placement it trained on.

    Attributes:
        status: None before training started.
        phases: By phase name, in the order they trained.
        best: The best epoch so far (None before the first).
        placement: ``{"backend", "replicas"}`` it trains on (a resume elsewhere would train other batches).
        legacy: Read from a state.json without phases (an older version's, kept as ``raw`` and written back as
            it was): it cannot be resumed, but it can be read (a finished one is finished).
    """

    status: Status | None = None
    phases: dict[str, PhaseProgress] = field(default_factory=dict)
    best: Best | None = None
    placement: dict[str, Any] | None = None
    legacy: bool = False
    raw: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    # --- reading and writing (RunFolder's) ---

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Ledger:
        """The ledger a state.json document holds.

        Raises:
            LedgerFormatError: a field has the wrong type.
        """
        status = doc.get("status")
        if doc.get("phases") is None:  # the version before phases: read what it says, keep the rest as it is
            best = None
            try:
                best = Best.from_dict(doc["best"]) if isinstance(doc.get("best"), dict) else None
            except LedgerFormatError:
                pass  # its best was only the figures (no phase, epoch or file)
            return cls(status=status if status in STATUSES else None, best=best, legacy=True, raw=dict(doc))
        if status is not None and status not in STATUSES:
            raise LedgerFormatError(f"its status {status!r} is not one of {', '.join(STATUSES)}")
        phases = doc.get("phases")
        if phases is not None and not isinstance(phases, dict):
            raise LedgerFormatError("its phases are not an object")
        try:
            parsed = {str(k): PhaseProgress.from_dict(v) for k, v in (phases or {}).items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise LedgerFormatError(f"a phase's progress is not one ({exc})") from exc
        best = doc.get("best")
        placement = doc.get("placement")
        return cls(
            status=status,
            phases=parsed,
            best=None if best is None else Best.from_dict(best),
            placement=placement if isinstance(placement, dict) else None,
            legacy=phases is None,
        )

    def to_dict(self) -> dict[str, Any]:
        if self.legacy and self.raw is not None:  # an older version's document, as it was (its status kept)
            return {**self.raw, **({"status": self.status} if self.status is not None else {})}
        out: dict[str, Any] = {}
        if self.status is not None:
            out["status"] = self.status
        out["phases"] = {name: p.to_dict() for name, p in self.phases.items()}
        out["best"] = None if self.best is None else self.best.to_dict()
        if self.placement is not None:
            out["placement"] = dict(self.placement)
        return out

    def copy(self, **changes: Any) -> Ledger:
        """A deep copy (the next commit's document), with ``changes`` applied."""
        return Ledger.from_dict(self.to_dict()).with_(**changes)

    def with_(self, **changes: Any) -> Ledger:
        names = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise TypeError(f"Ledger has no field {key!r}")
            setattr(self, key, value)
        return self

    # --- questions ---

    @property
    def resumed(self) -> bool:
        """Some phase has trained an epoch or finished: training goes on rather than starts."""
        return any(p.epochs_done or p.done for p in self.phases.values())

    def epochs_before(self, phase: str) -> int:
        """Epochs committed in the other phases (an epoch's number across the whole run starts after them)."""
        return sum(p.epochs_done for name, p in self.phases.items() if name != phase)

    # --- the changes training makes ---

    def start(self, placement: dict[str, Any]) -> None:
        """Training (re)starts on ``placement``."""
        self.status, self.placement = "running", dict(placement)

    def trained(self, *, evaluate_after: bool) -> None:
        """Every phase has finished: the run is evaluated next (``evaluating``), or it is done."""
        self.status = "evaluating" if evaluate_after else "done"

    def evaluated(self) -> None:
        """The evaluation is written: the run is done."""
        self.status = "done"

    def cancelled(self) -> Ledger:
        """The document a cancelled run commits (a copy: this one stays as training left it)."""
        return self.copy(status="cancelled")

    def phase(self, name: str) -> PhaseProgress:
        """The phase's progress, added (nothing done) when it has not started."""
        return self.phases.setdefault(name, PhaseProgress())

    def is_best(self, val_accuracy: float, val_loss: float) -> bool:
        """An epoch with these figures beats the best so far (higher accuracy, then lower loss)."""
        return self.best is None or self.best.beaten_by(val_accuracy, val_loss)

    def set_best(self, phase: str, epoch: int, val_accuracy: float, val_loss: float, file: str) -> None:
        """The epoch is the best so far; its weights are in ``file`` (written before this is committed)."""
        self.best = Best(phase=phase, epoch=epoch, val_accuracy=val_accuracy, val_loss=val_loss, file=file)

    def commit_epoch(self, phase: str, record: dict[str, Any], patience: int) -> bool:
        """Records a finished epoch (``record`` is its metrics line) and the early-stopping counters.

        Returns:
            True when early stopping ends the phase here (never after its first epoch).
        """
        ph = self.phase(phase)
        ph.wait += 1
        stop = False
        if record["val_loss"] < (math.inf if ph.best_val_loss is None else ph.best_val_loss):  # NaN never improves
            ph.best_val_loss, ph.wait = record["val_loss"], 0
        elif patience and ph.wait >= patience and record["epoch"] > 1:
            ph.stopped_early = stop = True
        ph.epochs_done, ph.steps_done, ph.last_epoch = record["epoch"], record["steps"], record
        return stop

    def roll_back(self, phase: str, epoch: int, steps: int) -> None:
        """The phase goes on from ``epoch`` (a damaged checkpoint): later epochs are trained again."""
        ph = self.phase(phase)
        ph.epochs_done, ph.steps_done, ph.last_epoch, ph.wait, ph.best_val_loss = epoch, steps, None, 0, None

    def finish_phase(self, phase: str) -> None:
        self.phase(phase).done = True

    def best_from_last_epoch(self) -> None:
        """The best weights cannot be read: the last committed epoch (whose weights the model holds) is the best."""
        name, last = next(((n, p) for n, p in reversed(list(self.phases.items())) if p.last_epoch), (None, None))
        self.best = (
            None
            if last is None or name is None
            else Best(
                phase=name,
                epoch=last.epochs_done,
                val_accuracy=last.last_epoch["val_accuracy"],
                val_loss=last.last_epoch["val_loss"],
                file=None,
            )
        )


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerFormatError(f"{key} is {value!r}, not a whole number")
    return value


def _float_or_none(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LedgerFormatError(f"{key} is {value!r}, not a number")
    return float(value)


def _dict_or_none(doc: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, dict):
        raise LedgerFormatError(f"{key} is {value!r}, not an object")
    return value
