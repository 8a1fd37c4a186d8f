"""A study: trials of the search space run as ordinary training jobs, scored on the files that ship.

``python -m pipeline tune DATA --trials N`` creates a study and drives it (:class:`Driver`); the Tune page
starts the same command in the background and reads :func:`table`.

- **Storage**: Optuna's SQLite storage, ``TRANSFER_STUDIO_HOME/studies/studies.db``; the study's settings are its
  ``spec`` attribute, so ``tune --resume NAME`` needs nothing else. One driver per study (``NAME.lock``).
- **Sampling**: TPE (:mod:`pipeline.tuning.space`), with the budget as Optuna constraints
  (``Trial.set_constraint``: a trial over it is *infeasible*: kept in the table, greyed on the chart, never the
  best).
- **Trials are runs**: each is a job on the configured backend (its own run folder, on the Runs page,
  resumable, cancellable), ``--parallel`` of them in flight at once. The local worker runs as many at once as it
  was started for (one per GPU, one on a CPU; ``python -m pipeline worker --concurrency N``); Ray schedules
  them across the cluster.
- **Pruning**: each finished epoch's validation loss is reported to Optuna's median pruner as the driver reads it
  from the run's ``metrics.jsonl``; a pruned trial's job is cancelled (its run keeps its epochs).
- **Scoring**: a finished trial is exported in its own process (``python -m export RUN --formats
  tflite-float16,tflite-int8 --score``: converted, verified as always, then timed on one LiteRT thread). The
  trial's file is the most accurate verified format within the budget (the smaller on a tie); the value Optuna
  minimises is its held-out error (1 - accuracy).
- **A killed driver**: its trials' jobs go on (they belong to the backend). The next driver marks each trial the
  dead one left running as failed and enqueues its settings with its job, and the new trial adopts that job: no
  trial is trained twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.host import paths
from pipeline.host.exitcodes import UserError
from pipeline.host.launch import start_python
from pipeline.jobs.store import JobError
from pipeline.jobs.worker import WorkerLock
from pipeline.runs.folder import RunFolder

EXPORT_FORMATS = ("tflite-float16", "tflite-int8")
SCORE_NAME = "score.json"  # in the run folder: what the export with --score measured
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


class TuneError(UserError, ValueError):
    """A study cannot be created, found or driven as asked."""


def studies_dir(home: Path | None = None) -> Path:
    folder = (home or paths.home()) / "studies"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def storage_url(home: Path | None = None) -> str:
    return f"sqlite:///{studies_dir(home) / 'studies.db'}"


def parse_duration(text: str | None) -> float | None:
    """Seconds of ``30m``, ``2h``, ``90s`` or ``600`` (None for none)."""
    if text in (None, "", "0"):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise TuneError(f"--time-budget {text!r}: give a duration such as 30m, 2h or 600 (seconds).")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@dataclass(frozen=True)
class Budget:
    """What a trial's shipped file must meet (None: no limit)."""

    max_mb: float | None = None
    max_ms: float | None = None
    min_accuracy: float | None = None

    def constraints(self, accuracy: float, mb: float, ms: float) -> dict[str, float]:
        """Optuna's constraint values (``Trial.set_constraint``): each <= 0 when met."""
        return {
            "mb": mb - self.max_mb if self.max_mb else 0.0,
            "ms": ms - self.max_ms if self.max_ms else 0.0,
            "accuracy": self.min_accuracy - accuracy if self.min_accuracy else 0.0,
        }

    def fits(self, accuracy: float, mb: float, ms: float) -> bool:
        return all(c <= 0 for c in self.constraints(accuracy, mb, ms).values())

    def words(self) -> str:
        parts = []
        if self.max_mb:
            parts.append(f"<= {self.max_mb:g} MB")
        if self.max_ms:
            parts.append(f"<= {self.max_ms:g} ms")
        if self.min_accuracy:
            parts.append(f">= {self.min_accuracy:.0%} accuracy")
        return ", ".join(parts) or "no budget"


@dataclass(frozen=True)
class Spec:
    """A study's settings, kept in the study (``spec``) so a resumed driver needs nothing else."""

    name: str
    data: str
    trials: int
    parallel: int = 1
    budget: Budget = field(default_factory=Budget)
    time_budget_s: float | None = None
    overrides: tuple[str, ...] = ()
    archs: tuple[tuple[str, float, int, str], ...] = ()  # (backbone, alpha, size, weights)
    space_notes: tuple[str, ...] = ()
    lr_suggestion: float | None = None
    seed: int = 42
    created: float = 0.0
    owner: str | None = None  # the visitor whose trials these are (None: the host's)
    first: tuple[dict[str, Any], ...] = ()  # settings (Optuna parameters) to try before sampling, in order

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["budget"] = vars(self.budget).copy()
        d["overrides"], d["archs"], d["space_notes"] = (
            list(self.overrides),
            [list(a) for a in self.archs],
            list(self.space_notes),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spec:
        d = dict(d)
        d["budget"] = Budget(**d.get("budget", {}))
        d["overrides"] = tuple(d.get("overrides", ()))
        d["archs"] = tuple(tuple(a) for a in d.get("archs", ()))
        d["first"] = tuple(d.get("first", ()))
        d["space_notes"] = tuple(d.get("space_notes", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _sampler(spec: Spec):
    optuna = _optuna()
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=max(2, spec.trials // 3))


def _pruner(spec: Spec):
    optuna = _optuna()
    return optuna.pruners.MedianPruner(n_startup_trials=min(3, max(1, spec.trials // 4)), n_warmup_steps=2)


def load(name: str, home: Path | None = None):
    """(study, spec) of a study by name."""
    optuna = _optuna()
    try:
        summary = optuna.load_study(study_name=name, storage=storage_url(home))
    except KeyError:
        known = names(home)
        raise TuneError(
            f"no study called {name!r}" + (f"; the studies here: {', '.join(known)}." if known else ".")
        ) from None
    spec = Spec.from_dict(summary.user_attrs["spec"])
    study = optuna.load_study(study_name=name, storage=storage_url(home), sampler=_sampler(spec), pruner=_pruner(spec))
    return study, spec


def names(home: Path | None = None) -> list[str]:
    """The studies kept here, newest first."""
    optuna = _optuna()
    if not (studies_dir(home) / "studies.db").exists():
        return []
    summaries = optuna.get_all_study_summaries(storage_url(home))
    summaries.sort(key=lambda s: s.datetime_start.timestamp() if s.datetime_start else 0, reverse=True)
    return [s.study_name for s in summaries]


def create(
    data: str,
    trials: int,
    *,
    name: str | None = None,
    parallel: int = 1,
    budget: Budget | None = None,
    time_budget_s: float | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    lr_suggestion: float | None = None,
    enqueue: list[dict[str, Any]] | None = None,
    home: Path | None = None,
    seed: int = 42,
    owner: str | None = None,
) -> Spec:
    """Creates a study (its settings checked now, before any trial); ``enqueue``: settings to try first."""
    from pipeline.data import absolute_source
    from pipeline.jobs.store import dataset_name
    from pipeline.training import presets
    from pipeline.tuning import space

    if trials < 1 or trials > 500:
        raise TuneError(f"--trials {trials}: give 1 to 500 trials.")
    if parallel < 1 or parallel > 64:
        raise TuneError(f"--parallel {parallel}: give 1 to 64.")
    source = absolute_source(data)
    presets.config_for(source, overrides=list(overrides))  # a bad --set is refused now, not at the first trial
    archs, notes = space.architectures()
    if not archs:
        raise TuneError(
            "no mobile backbone has its ImageNet weights here (no network): " + "; ".join(notes) + ". Copy a "
            "weights file into the Keras cache, or connect this machine to the internet."
        )
    name = name or f"{dataset_name(source)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not NAME_RE.fullmatch(name):
        raise TuneError(f"study name {name!r}: use 1 to 80 letters, digits, '.', '_' or '-'.")
    if name in names(home):
        raise TuneError(f"a study called {name!r} exists; resume it with `python -m pipeline tune --resume {name}`.")
    spec = Spec(
        name=name,
        data=source,
        trials=trials,
        parallel=parallel,
        budget=budget or Budget(),
        time_budget_s=time_budget_s,
        overrides=tuple(overrides),
        archs=tuple((a.backbone, a.alpha, a.size, a.weights) for a in archs),
        space_notes=tuple(notes),
        lr_suggestion=lr_suggestion,
        seed=seed,
        created=time.time(),
        owner=owner,
        first=tuple(enqueue or ()),
    )
    optuna = _optuna()
    study = optuna.create_study(
        study_name=name, storage=storage_url(home), direction="minimize", sampler=_sampler(spec), pruner=_pruner(spec)
    )
    study.set_user_attr("spec", spec.to_dict())
    return spec


class StudyLock(WorkerLock):
    """One driver per study: an exclusive lock on ``studies/NAME.lock`` for the driver's lifetime, holding its pid
    (what :func:`stop` signals)."""

    def __init__(self, name: str, home: Path | None = None):
        super().__init__(studies_dir(home), f"{name}.lock")

    def acquire(self) -> bool:
        if not super().acquire():
            return False
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return True

    def held_elsewhere(self) -> bool:
        return self.path.exists() and super().held_elsewhere()

    def release(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


def _archs(spec: Spec):
    from pipeline.tuning import space

    return [space.Architecture(b, float(a), int(s), w) for b, a, s, w in spec.archs]


def score_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / SCORE_NAME


def pick(score: dict[str, Any], budget: Budget) -> tuple[str, dict[str, Any], bool]:
    """The trial's file: the most accurate verified format within the budget (the smaller on a tie); when none
    is within it, the smallest verified one (infeasible). Returns (format, its figures, within the budget)."""
    rows = {f: r for f, r in score["formats"].items() if r.get("passed")}
    if not rows:
        raise TuneError("no exported format passed its verification")

    def mb(r):
        return r["size_bytes"] / 1e6

    fitting = [f for f, r in rows.items() if budget.fits(r["accuracy"], mb(r), r["latency_ms"])]
    if fitting:
        best = max(fitting, key=lambda f: (rows[f]["accuracy"], -rows[f]["size_bytes"]))
        return best, rows[best], True
    small = min(rows, key=lambda f: rows[f]["size_bytes"])
    return small, rows[small], False


@dataclass
class _Active:
    trial: Any  # optuna.Trial
    job: str
    run_dir: str
    reported: int = 0
    export: Any = None  # the export's process (subprocess.Popen)
    export_started: float = 0.0


class Driver:
    """Drives one study until its trials are done (or its time budget is spent); see the module's docstring."""

    def __init__(
        self,
        name: str,
        *,
        backend=None,
        home: Path | None = None,
        poll: float = 0.5,
        say: Callable[[str], None] | None = None,
    ):
        from pipeline.jobs.backends import get_backend

        self.home = home
        self.study, self.spec = load(name, home)
        self.backend = backend or get_backend()
        self.poll = poll
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.active: dict[int, _Active] = {}
        self.lock = StudyLock(name, home)

    # === the loop ===

    def run(self) -> int:
        if not self.lock.acquire():
            raise TuneError(f"study {self.spec.name!r} is being driven by another process already.")
        try:
            self._adopt_orphans()
            started = time.monotonic()
            spent0 = float(self.study.user_attrs.get("spent_s", 0.0))
            last_save = 0.0
            while True:
                spent = spent0 + time.monotonic() - started
                if time.monotonic() - last_save > 5:
                    self.study.set_user_attr("spent_s", round(spent, 1))
                    last_save = time.monotonic()
                for number in list(self.active):
                    self._step(number)
                over = self.spec.time_budget_s is not None and spent >= self.spec.time_budget_s
                while not over and len(self.active) < self.spec.parallel and self._counted() < self.spec.trials:
                    self._start()
                if not self.active:
                    break
                time.sleep(self.poll)
            self.study.set_user_attr("spent_s", round(spent0 + time.monotonic() - started, 1))
            if over and self._counted() < self.spec.trials:
                self.say(f"time budget spent: {self._counted()} of {self.spec.trials} trials ran")
            return 0
        finally:
            self.lock.release()

    def _counted(self) -> int:
        """Trials started that count towards ``trials``: not those a resumed driver replaced, nor enqueued ones."""
        optuna = _optuna()
        replaced = _replaced(self.study)
        return sum(
            1
            for t in self.study.get_trials(deepcopy=False)
            if t.number not in replaced and t.state != optuna.trial.TrialState.WAITING
        )

    def _adopt_orphans(self) -> None:
        """Trials a dead driver left running: failed here, their settings and job enqueued for the next ask."""
        optuna = _optuna()
        by_name = None
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            job = t.user_attrs.get("job")
            if not job:  # killed between ask and recording the job: look the job up by its name
                by_name = by_name if by_name is not None else {j.name: j.id for j in self.backend.list()}
                job = by_name.get(self._job_name(t.number))
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            self.study.set_user_attr(f"replaced:{t.number}", True)
            self.study.enqueue_trial(
                t.params,
                user_attrs={"adopt_job": job or "", "resumed_from": t.number, "first": t.user_attrs.get("first")},
                skip_if_exists=False,
            )
            self.say(f"trial {t.number}: its driver stopped; " + ("its job goes on" if job else "started again"))

    def _enqueue_next_first(self) -> None:
        """The study's next "try these first" settings, enqueued just before it is asked (enqueued all at once,
        they would be asked before the trials a resumed driver adopts)."""
        optuna = _optuna()
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            return  # an adopted trial (or a first one a killed driver enqueued) goes first
        used = {t.user_attrs.get("first") for t in trials}
        for i, params in enumerate(self.spec.first):
            if i not in used:
                self.study.enqueue_trial(params, user_attrs={"first": i})
                return

    def _job_name(self, number: int) -> str:
        return f"{self.spec.name} #{number}"

    def _start(self) -> None:
        from pipeline.training import presets
        from pipeline.tuning import space

        self._enqueue_next_first()
        trial = self.study.ask()
        overrides = space.sample(
            trial,
            _archs(self.spec),
            lr_suggestion=self.spec.lr_suggestion,
            fixed=space.fixed_settings(self.spec.overrides),
        )
        trial.set_user_attr("overrides", overrides)
        adopt = trial.user_attrs.get("adopt_job") or ""
        if adopt:
            job = self.backend.status(adopt)
            trial.set_user_attr("job", job.id)
            trial.set_user_attr("run_dir", job.run_dir)
            self.active[trial.number] = _Active(trial, job.id, job.run_dir)
            self.say(f"trial {trial.number}: goes on with job {job.id} (trial {trial.user_attrs.get('resumed_from')})")
            return
        cfg = presets.config_for(self.spec.data, overrides=[*self.spec.overrides, *space.overrides_text(overrides)])
        job_id = self.backend.submit(self.spec.data, cfg, owner=self.spec.owner, name=self._job_name(trial.number))
        job = self.backend.status(job_id)
        trial.set_user_attr("job", job_id)
        trial.set_user_attr("run_dir", job.run_dir)
        trial.set_user_attr("phase", "training")
        self.active[trial.number] = _Active(trial, job_id, job.run_dir)
        self.say(f"trial {trial.number}: {describe(overrides)} (job {job_id})")

    def _step(self, number: int) -> None:
        optuna = _optuna()
        a = self.active[number]
        if a.export is not None:
            if a.export.poll() is None:
                return
            self._scored(a)
            return
        job = self.backend.status(a.job)
        epochs = RunFolder(Path(a.run_dir)).epochs()
        new = epochs[a.reported :]
        for e in new:
            loss = float(e.get("val_loss", math.nan))
            a.trial.report(loss if math.isfinite(loss) else math.inf, int(e.get("global_epoch", a.reported + 1)))
            a.reported += 1
        # the pruner judges the newest epoch; a run that trained every epoch is scored, not pruned (nothing saved)
        if new and job.state != "done" and a.reported < _planned_epochs(job) and a.trial.should_prune():
            try:
                self.backend.cancel(a.job)
            except JobError:  # it finished meanwhile
                job = self.backend.status(a.job)
            else:
                a.trial.set_user_attr("pruned_at", a.reported)
                a.trial.set_user_attr("phase", "pruned")
                self.study.tell(a.trial, state=optuna.trial.TrialState.PRUNED)
                del self.active[number]
                self.say(f"trial {number}: pruned at epoch {a.reported} (validation loss {loss:.3f})")
                return
        if job.state == "done":
            a.trial.set_user_attr("train_seconds", _run_seconds(a.run_dir))
            model, score = Path(a.run_dir) / "model.keras", score_file(a.run_dir)
            if score.exists() and model.exists() and score.stat().st_mtime > model.stat().st_mtime:
                self._scored(a)  # a driver before this one exported it already
                return
            a.trial.set_user_attr("phase", "exporting")
            score.unlink(missing_ok=True)
            log = Path(a.run_dir) / "tune-export.log"
            log.unlink(missing_ok=True)
            a.export = start_python(
                "export",
                a.run_dir,
                "--formats",
                ",".join(EXPORT_FORMATS),
                "--score",
                log=log,
                env={"TRANSFER_STUDIO_HOME": str(self.home)} if self.home else None,
                die_with_parent=True,  # a killed driver's export stops too: the next driver exports again
            )
            a.export_started = time.monotonic()
            self.say(f"trial {number}: trained; exporting {' and '.join(EXPORT_FORMATS)}")
        elif job.state in ("failed", "cancelled"):
            why = job.error or ("cancelled outside the study" if job.state == "cancelled" else "failed")
            a.trial.set_user_attr("error", why)
            a.trial.set_user_attr("phase", job.state)
            self.study.tell(a.trial, state=optuna.trial.TrialState.FAIL)
            del self.active[number]
            self.say(f"trial {number}: {job.state}: {why}")

    def _scored(self, a: _Active) -> None:
        optuna = _optuna()
        number = a.trial.number
        del self.active[number]
        if a.export is not None:
            a.trial.set_user_attr("export_seconds", round(time.monotonic() - a.export_started, 1))
        path = score_file(a.run_dir)
        try:
            score = json.loads(path.read_text(encoding="utf-8"))
            fmt, row, feasible = pick(score, self.spec.budget)
        except (OSError, ValueError, KeyError, TuneError) as exc:
            why = _last_error(Path(a.run_dir) / "tune-export.log") or f"no score ({exc})"
            a.trial.set_user_attr("error", f"export: {why}")
            a.trial.set_user_attr("phase", "failed")
            self.study.tell(a.trial, state=optuna.trial.TrialState.FAIL)
            self.say(f"trial {number}: export failed: {why}")
            return
        mb, ms, acc = row["size_bytes"] / 1e6, row["latency_ms"], row["accuracy"]
        a.trial.set_user_attr("format", fmt)
        a.trial.set_user_attr("accuracy", acc)
        a.trial.set_user_attr("mb", round(mb, 4))
        a.trial.set_user_attr("ms", round(ms, 3))
        a.trial.set_user_attr("formats", score["formats"])
        a.trial.set_user_attr("feasible", feasible)
        for key, value in self.spec.budget.constraints(acc, mb, ms).items():
            a.trial.set_constraint(key, value)
        a.trial.set_user_attr("phase", "done")
        self.study.tell(a.trial, 1.0 - acc)
        verdict = "within the budget" if feasible else f"over the budget ({self.spec.budget.words()})"
        self.say(f"trial {number}: {fmt} {acc:.1%}, {mb:.2f} MB, {ms:.2f} ms: {verdict}")


def _planned_epochs(job) -> int:
    """Epochs a trial's run trains when nothing stops it (pruning a run that trained them all saves nothing)."""
    from pipeline.config import phases_for

    return sum(p.epochs for p in phases_for(job.run_config))


def _replaced(study) -> set[int]:
    """Trials a resumed driver replaced (failed, their settings and job taken over by a new trial)."""
    return {int(k.split(":", 1)[1]) for k in study.user_attrs if k.startswith("replaced:")}


def _run_seconds(run_dir: str) -> float | None:
    lines = RunFolder(Path(run_dir)).metrics_lines()
    times = [m["time"] for m in lines if "time" in m]
    return round(times[-1] - times[0], 1) if len(times) > 1 else None


def _last_error(log: Path) -> str | None:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [ln[len("error: ") :] for ln in lines if ln.startswith("error: ")]
    return errors[-1] if errors else None


def describe(overrides: dict[str, Any]) -> str:
    """A trial's sampled settings in one line: ``mobilenet_v2 0.35 @ 160, fine_tune, lr 1.2e-03/3.0e-05, augment
    light, dropout 0.2`` (a field the study fixed is left out)."""
    o = overrides
    parts = [f"{o['model.backbone']} {o['model.alpha']:g} @ {o['model.image_size']}", o["train.strategy"]]
    if "train.learning_rate" in o:
        lr = f"lr {o['train.learning_rate']:.1e}"
        if "train.fine_tune_learning_rate" in o:
            lr += f"/{o['train.fine_tune_learning_rate']:.1e}"
        parts.append(lr)
    if "augment.enabled" in o:
        parts.append("augment " + ("off" if not o["augment.enabled"] else ("strong" if o["augment.zoom"] else "light")))
    if "model.dropout" in o:
        parts.append(f"dropout {o['model.dropout']:g}")
    return ", ".join(parts)


# === What the CLI's --status and the Tune page show ===

STATE_WORDS = {
    "queued": "queued",
    "training": "training",
    "exporting": "exporting",
    "done": "done",
    "infeasible": "over budget",
    "pruned": "pruned",
    "failed": "failed",
    "cancelled": "failed",
    "stopped": "stopped",
}


def rows(name: str, home: Path | None = None) -> tuple[Spec, str, list[dict[str, Any]]]:
    """(spec, the study's state, one row per trial): state is running (a driver holds it), finished or stopped."""
    optuna = _optuna()
    study, spec = load(name, home)
    driving = StudyLock(name, home).held_elsewhere()
    replaced = _replaced(study)
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.number in replaced:
            continue
        a = t.user_attrs
        state = {
            optuna.trial.TrialState.COMPLETE: "done" if a.get("feasible") else "infeasible",
            optuna.trial.TrialState.PRUNED: "pruned",
            optuna.trial.TrialState.FAIL: "failed",
            optuna.trial.TrialState.WAITING: "queued",
        }.get(t.state, a.get("phase") or "training")
        if t.state == optuna.trial.TrialState.RUNNING and not driving:
            state = "stopped"
        o = a.get("overrides") or {}
        run_dir = a.get("run_dir")
        epochs = len(RunFolder(Path(run_dir)).epochs()) if run_dir and Path(run_dir).exists() else 0
        out.append(
            {
                "trial": t.number,
                "state": state,
                "settings": describe(o) if o else "",
                "backbone": o.get("model.backbone"),
                "alpha": o.get("model.alpha"),
                "size": o.get("model.image_size"),
                "strategy": o.get("train.strategy"),
                "learning_rate": o.get("train.learning_rate"),
                "epochs": epochs,
                "pruned_at": a.get("pruned_at"),
                "format": a.get("format"),
                "accuracy": a.get("accuracy"),
                "mb": a.get("mb"),
                "ms": a.get("ms"),
                "feasible": a.get("feasible"),
                "train_seconds": a.get("train_seconds"),
                "export_seconds": a.get("export_seconds"),
                "job": a.get("job"),
                "run_dir": run_dir,
                "error": a.get("error"),
            }
        )
    total = sum(1 for r in out if r["state"] not in ("queued",))
    if driving:
        status = "running"
    elif (
        total >= spec.trials
        or (spec.time_budget_s is not None and study.user_attrs.get("spent_s", 0.0) >= spec.time_budget_s)
    ) and not any(r["state"] in ("training", "exporting", "stopped") for r in out):
        status = "finished"  # every trial ran, or the time budget is spent
    else:
        status = "stopped"
    return spec, status, out


def start_background(name: str, home: Path | None = None):
    """Starts ``python -m pipeline tune --resume NAME`` in its own session (the app's way to drive a study: it
    outlives the page), its output in ``studies/NAME.log``; returns the process."""
    log = studies_dir(home) / f"{name}.log"
    log.unlink(missing_ok=True)  # one driver's output: an earlier driver's error is not this one's
    return start_python("pipeline", "tune", "--resume", name, log=log)


def stop(name: str, home: Path | None = None) -> bool:
    """Stops a study's driver (SIGTERM; its trials' jobs go on and a resumed driver adopts them)."""
    import signal

    lock = StudyLock(name, home)
    if not lock.held_elsewhere():
        return False
    try:
        os.kill(int(lock.path.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        return False
    return True


def last_error(name: str, home: Path | None = None) -> str | None:
    """The last ``error:`` line a background driver printed."""
    return _last_error(studies_dir(home) / f"{name}.log")


def best(table: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate trial within the budget (the faster on a tie)."""
    ok = [r for r in table if r["state"] == "done"]
    return max(ok, key=lambda r: (r["accuracy"], -r["ms"])) if ok else None


def format_table(spec: Spec, status: str, table: list[dict[str, Any]]) -> str:
    """The table ``tune --status`` prints."""

    def num(v, f, missing="-"):
        return missing if v is None else format(v, f)

    lines = [
        f"study {spec.name}: {status}, {len(table)} of {spec.trials} trials, budget {spec.budget.words()} "
        f"(latency: LiteRT, 1 thread of this machine, batch 1; a phone's core differs)",
        f"{'#':>3}  {'state':<11} {'acc':>6} {'MB':>6} {'ms':>7} {'format':<14} {'epochs':>6}  settings",
    ]
    for r in table:
        state = STATE_WORDS.get(r["state"], r["state"])
        if r["state"] == "pruned":
            state = f"pruned@{r['pruned_at']}"
        lines.append(
            f"{r['trial']:>3}  {state:<11} {num(r['accuracy'], '.1%'):>6} {num(r['mb'], '.2f'):>6} "
            f"{num(r['ms'], '.2f'):>7} {r['format'] or '-':<14} {r['epochs']:>6}  {r['settings']}"
            + (f"  [{r['error']}]" if r["error"] else "")
        )
    if top := best(table):
        lines.append(f"best within the budget: trial {top['trial']} ({top['run_dir']})")
    return "\n".join(lines)
