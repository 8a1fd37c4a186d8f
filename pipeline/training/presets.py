"""The one place a run's settings are put together, for the CLI and the app alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from pipeline import config as config_mod
from pipeline import data as data_mod
from pipeline.runs.folder import RunFolder, RunFolderError

# Named sets of settings (``--preset NAME``), applied on top of where a config starts.
PRESETS: dict[str, tuple[str, ...]] = {
    # The Keras transfer-learning guide's recipe as written: every head epoch augments through the frozen base,
    # fine-tuning at 1e-5 (bench/bench_train.py --whole compares the defaults with it: BENCHMARKS.md).
    "keras_guide": (
        "augment.head_views=0",
        "train.fine_tune_learning_rate=1e-05",
        "train.batch_size=32",
        "train.label_smoothing=0",
        "train.lr_schedule=constant",
    ),
}


def config_for(
    source: str,
    *,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    parent: str | Path | None = None,
    head_only: bool = False,
    preset: str | None = None,
) -> config_mod.RunConfig:
    """The run config: where it starts, then a preset's settings, then the config file, then ``--set`` overrides.

    It starts from the parent run's own settings for a retrain (``parent``; the new run starts from its best
    weights), else from the sample's preset for a ``sample:*`` source, else from the defaults.

    Raises:
        RunFolderError: ``parent`` is not a run folder.
        config_mod.ConfigError: the file, the preset or an override is invalid.
    """
    if parent:
        folder = RunFolder(Path(parent).expanduser().resolve())
        if not folder.config.exists():
            raise RunFolderError(f"--from {folder.root}: not a run folder (no config.json).")
        cfg = config_mod.load(folder.config)
        cfg = dataclasses.replace(
            cfg,
            train=dataclasses.replace(
                cfg.train, init_from=str(folder.root), from_phase="head" if head_only else "fine_tune"
            ),
        )
    elif data_mod.is_sample(source):
        cfg = config_mod.from_dict(data_mod.sample_preset())
    else:
        cfg = config_mod.RunConfig()
    if preset:
        if preset not in PRESETS:
            raise config_mod.ConfigError(
                f"--preset {preset!r} is not a preset; choose one of {', '.join(PRESETS)}.", field="preset"
            )
        cfg = config_mod.apply_overrides(cfg, list(PRESETS[preset]))
    if config_file:
        cfg = config_mod.load(config_file, base=cfg)
    return config_mod.apply_overrides(cfg, list(overrides))
