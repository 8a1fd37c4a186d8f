"""Side by side: 2 to 4 runs' curves, the settings they differ in, test results and export sizes.

Reads only the run folders (``config.json``, ``metrics.jsonl``, ``eval.json``, ``exports/verify.json``,
``train.init_from`` in the config for a parent run), so it works on runs from any backend and never loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import config as config_mod
from pipeline.host.exitcodes import UserError
from pipeline.runs.folder import RunFolder

MIN_RUNS, MAX_RUNS = 2, 4


class CompareError(UserError, ValueError):
    """The runs cannot be compared (too few, too many, or not run folders)."""


def _flat(cfg: config_mod.RunConfig) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, fields in cfg.to_dict().items() for key, value in fields.items()}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _parent(cfg: config_mod.RunConfig) -> str | None:
    """The run this one was retrained from (``train --from``: ``train.init_from`` in its config.json)."""
    return cfg.train.init_from or None


def _epochs_before(parent: str | None, depth: int = 0) -> int:
    """How many epochs came before a retrain's first: its parent's, and theirs (a chain of retrains)."""
    if not parent or depth > 16:
        return 0
    folder = RunFolder(Path(parent).expanduser().resolve())
    try:
        grand = _parent(config_mod.load(folder.config))
    except (OSError, config_mod.ConfigError):
        grand = None
    return len(folder.epochs()) + _epochs_before(grand, depth + 1)


def _val_differs(splits: list[dict[str, Any] | None]) -> str | None:
    """Whether the runs validated on other images or labels (a correction changes them), said as a sentence."""
    known = [s for s in splits if s]
    if len(known) < 2:
        return None
    sets = [{(rel, s["classes"][label]) for rel, label in s.get("val", [])} for s in known]
    if all(v == sets[0] for v in sets[1:]):
        return None
    same_files = all({rel for rel, _ in v} == {rel for rel, _ in sets[0]} for v in sets[1:])
    if same_files:
        changed = len(set().union(*sets) - set.intersection(*sets)) // 2
        return (
            f"the validation images are the same but {changed} of their labels differ (the data's corrections): "
            "validation accuracies are measured against different labels"
        )
    return "the runs validated on different images: their validation accuracies are not on the same set"


def compare(run_dirs: list[str | Path]) -> dict[str, Any]:
    """What a comparison view shows, for 2-4 run folders (in the order given).

    Returns:
        ``runs``: per run, its name, folder, parent, data revision and final figures; ``differences``: setting ->
        values, only the settings that differ (``train.init_from`` as the parent run's name, the data's
        revision as ``data.revision``); ``curves``: per run the epoch records, each with ``x``, its epoch
        counted on from the parent's last one for a retrain; ``val_differs``: a sentence when the runs'
        validation images or labels differ (their accuracies are not on the same set), else None;
        ``per_class_f1``: class -> values; ``export_sizes``: format -> bytes per run.

    Raises:
        CompareError: fewer than 2 or more than 4 runs, or a folder without config.json.
    """
    if not MIN_RUNS <= len(run_dirs) <= MAX_RUNS:
        raise CompareError(f"pick {MIN_RUNS} to {MAX_RUNS} runs to compare (got {len(run_dirs)}).")
    runs = [RunFolder(Path(d).expanduser().resolve()) for d in run_dirs]
    loaded = []
    for run in runs:
        if not run.config.exists():
            raise CompareError(f"{run.root} is not a run folder (no config.json).")
        loaded.append(config_mod.load(run.config))
    datasets = [_read_json(run.dataset) or {} for run in runs]
    configs = [_flat(cfg) for cfg in loaded]
    for flat, dataset in zip(configs, datasets, strict=True):  # a path on the server says nothing: the run's name
        flat["train.init_from"] = Path(flat["train.init_from"]).name if flat.get("train.init_from") else ""
        flat["data.revision"] = (dataset.get("revision") or {}).get("number", 0)
    keys = sorted(set().union(*configs))
    differences = {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1}
    evals = [_read_json(run.eval) for run in runs]
    verifies = [_read_json(run.root / "exports" / "verify.json") for run in runs]
    classes = sorted({c for e in evals if e for c in e.get("per_class", {})})
    formats = sorted({f for v in verifies if v for f, row in v.get("formats", {}).items() if row.get("size_bytes")})
    names = {str(run.root): run.root.name for run in runs}
    summary, curves = [], []
    for run, ev, cfg, dataset in zip(runs, evals, loaded, datasets, strict=True):
        epochs = run.epochs()
        parent = _parent(cfg)
        summary.append(
            {
                "name": run.root.name,
                "folder": str(run.root),
                "parent": parent,
                "parent_in_view": str(Path(parent).expanduser().resolve()) in names if parent else False,
                "revision": (dataset.get("revision") or {}).get("number", 0),
                "epochs": len(epochs),
                "best_val_accuracy": max((e["val_accuracy"] for e in epochs), default=None),
                "eval_split": ev.get("split") if ev else None,
                "accuracy": ev.get("accuracy") if ev else None,
            }
        )
        offset = _epochs_before(parent)
        curves.append([{**e, "x": offset + i + 1} for i, e in enumerate(epochs)])
    return {
        "runs": summary,
        "differences": differences,
        "curves": curves,
        "val_differs": _val_differs([d.get("splits") for d in datasets]),
        "per_class_f1": {c: [(e or {}).get("per_class", {}).get(c, {}).get("f1") for e in evals] for c in classes},
        "export_sizes": {
            f: [((v or {}).get("formats", {}).get(f) or {}).get("size_bytes") for v in verifies] for f in formats
        },
    }


def table(result: dict[str, Any]) -> str:
    """The comparison as plain text."""
    names = [r["name"][:14] for r in result["runs"]]

    def row(label: str, values: list[Any], fmt=lambda v: f"{v}") -> str:
        return f"{label:<28}" + "".join(f" {('-' if v is None else fmt(v)):>14}" for v in values)

    lines = [row("run", names)]
    lines.append(row("parent", [(r["parent"] and Path(r["parent"]).name[:14]) for r in result["runs"]]))
    lines.append(row("data revision", [r["revision"] for r in result["runs"]]))
    lines.append(row("epochs", [r["epochs"] for r in result["runs"]]))
    lines.append(row("best val accuracy", [r["best_val_accuracy"] for r in result["runs"]], lambda v: f"{v:.4f}"))
    lines.append(row("accuracy (eval split)", [r["accuracy"] for r in result["runs"]], lambda v: f"{v:.4f}"))
    if result.get("val_differs"):
        lines.append(f"note: {result['val_differs']}.")
    if result["differences"]:
        lines.append("settings that differ:")
        lines += [row(f"  {k}", v) for k, v in result["differences"].items()]
    if result["per_class_f1"]:
        lines.append("per-class F1:")
        lines += [row(f"  {c}", v, lambda x: f"{x:.3f}") for c, v in result["per_class_f1"].items()]
    if result["export_sizes"]:
        lines.append("export size (bytes):")
        lines += [row(f"  {f}", v, lambda x: f"{x:,}") for f, v in result["export_sizes"].items()]
    return "\n".join(lines)
