"""The run-time estimate for the pages, cached: it reads up to 100 run folders' metrics, and the Train page
reruns on every widget change while the Runs page's live panel redraws every second."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from app_pages import shared
from pipeline import config as config_mod
from pipeline import estimate


def for_run(cfg: config_mod.RunConfig, train: int, val: int, test: int) -> estimate.Estimate:
    """``pipeline.estimate.estimate`` for ``cfg`` on this many images, measured on the backend's runs."""
    return _cached(cfg.to_json(), train, val, test, str(shared.runs_dir()))


@st.cache_data(ttl=30, max_entries=64, show_spinner=False)  # a run finishing shows within 30 s
def _cached(cfg_json: str, train: int, val: int, test: int, runs_dir: str) -> estimate.Estimate:
    return estimate.estimate(config_mod.from_dict(json.loads(cfg_json)), train, val, Path(runs_dir), test_images=test)
