"""The one place a run's settings are put together, for the CLI and the app alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from pipeline import config as config_mod
from pipeline import data as data_mod
from pipeline.runs.folder import RunFolder, RunFolderError


def config_for(
    source: str,
    *,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    parent: str | Path | None = None,
    head_only: bool = False,
) -> config_mod.RunConfig:
    """The run config: where it starts, then the config file, then ``--set`` overrides.

    It starts from the parent run's own settings for a retrain (``parent``; the new run starts from its best
    weights), else from the sample's preset for a ``sample:*`` source, else from the defaults.

    Raises:
        RunFolderError: ``parent`` is not a run folder.
        config_mod.ConfigError: the file or an override is invalid.
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
    if config_file:
        cfg = config_mod.load(config_file, base=cfg)
    return config_mod.apply_overrides(cfg, list(overrides))
