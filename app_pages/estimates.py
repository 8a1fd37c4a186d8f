"""The run-time estimate for the pages, cached: it reads up to 100 run folders' metrics, and the Train page
reruns on every widget change while the Runs page's live panel redraws every second."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from app_pages import access
from pipeline import config as config_mod
from pipeline.quality import estimate


def for_run(cfg: config_mod.RunConfig, train: int, val: int, test: int) -> estimate.Estimate:
    """``pipeline.quality.estimate.estimate`` for ``cfg`` on this many images, measured on the backend's runs."""
    runs = access.runs_dir()
    # a run that finished since (its eval.json) is a new measurement: a new cache key
    newest = max((p.stat().st_mtime for p in Path(runs).glob("*/eval.json")), default=0.0)
    return _cached(cfg.to_json(), train, val, test, str(runs), newest)


@st.cache_data(ttl=300, max_entries=64, show_spinner=False)
def _cached(
    cfg_json: str, train: int, val: int, test: int, runs_dir: str, newest: float
) -> estimate.Estimate:  # newest: part of the cache key only
    return estimate.estimate(config_mod.from_dict(json.loads(cfg_json)), train, val, Path(runs_dir), test_images=test)
