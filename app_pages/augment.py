"""Augment: the training-time transforms, previewed on one of your images (the layers training uses)."""

import dataclasses
import os
from pathlib import Path

import streamlit as st

from app_pages import sources, state, wording
from pipeline import data
from pipeline.config import FLIPS, AugmentConfig, ConfigError
from pipeline.config import from_dict as config_from_dict


@st.cache_data(max_entries=64, show_spinner=False)
def _grid(path: bytes, stamp: int, settings: dict, seed: int):
    """Nine augmentations of one image, kept per (file version, settings, seed): a rerun redraws nothing.

    ``path``: bytes (wording.fs_key), so a file name that is not UTF-8 can be a cache key."""
    from pipeline.training.augment import preview  # imports TensorFlow: only on this page

    return preview(data.load_image(os.fsdecode(path), 224), AugmentConfig(**settings), count=9, seed=seed)


st.title("Augment")
st.caption("Random transforms applied to training images only; exports never contain them.")

sources.source_note()
src = sources.source()
base = sources.base_config(src)
kept = (state.get("augment") or {}).get(src)  # per dataset (digits must not be flipped by default), per visitor
d = base.augment
if kept:
    try:
        d = config_from_dict({"augment": kept}, base=base).augment
    except ConfigError:
        pass  # kept by an older version: the defaults
left, right = st.columns([1, 2])
with left:
    enabled = st.toggle("Augment while training", value=d.enabled, key=f"aug_enabled:{src}")
    flip = st.selectbox("Flip", FLIPS, index=FLIPS.index(d.flip), key=f"aug_flip:{src}")
    rotation = st.slider("Rotation (fraction of a turn)", 0.0, 0.5, d.rotation, 0.01, key=f"aug_rotation:{src}")
    zoom = st.slider("Zoom", 0.0, 0.5, d.zoom, 0.01, key=f"aug_zoom:{src}")
    translation = st.slider("Translation", 0.0, 0.5, d.translation, 0.01, key=f"aug_translation:{src}")
    contrast = st.slider("Contrast", 0.0, 0.9, d.contrast, 0.05, key=f"aug_contrast:{src}")
    brightness = st.slider("Brightness", 0.0, 0.9, d.brightness, 0.05, key=f"aug_brightness:{src}")
try:
    cfg = AugmentConfig(
        enabled=enabled,
        flip=flip,
        rotation=rotation,
        zoom=zoom,
        translation=translation,
        contrast=contrast,
        brightness=brightness,
    )
except ConfigError as exc:
    wording.error(exc)
    st.stop()
state.put("augment", {**(state.get("augment") or {}), src: dataclasses.asdict(cfg)})

with right:
    try:
        folder, report = sources.resolve_and_scan(src)
    except data.DataError as exc:
        wording.error(exc)
        st.stop()
    files = [rel for items in report["items"].values() for rel, _ in items]
    if not files:
        st.info("The dataset has no usable images yet (see the Data page).")
        st.stop()
    pick = st.selectbox("Image", files[:500], format_func=wording.readable)  # the real name stays the value
    if st.button("Re-roll", icon=":material/casino:"):
        st.session_state["aug_seed"] = st.session_state.get("aug_seed", 0) + 1
    # The preview shows the settings even while augmentation is off, so they can be tried before switching on.
    shown = dataclasses.replace(cfg, enabled=True)
    if not shown.active:
        st.info("No transform is set: training sees the images as they are.")
    elif not cfg.enabled:
        st.info(
            "Augmentation is off: training sees the images as they are. The preview shows what these "
            "settings would do; switch on **Augment while training** to use them."
        )
    path = Path(report["root"]) / pick
    try:
        with st.spinner("Drawing nine augmentations (the first time loads TensorFlow, a few seconds)..."):
            grid = _grid(
                wording.fs_key(path),
                path.stat().st_mtime_ns,
                dataclasses.asdict(shown),
                st.session_state.get("aug_seed", 0),
            )
    except (data.DataError, OSError) as exc:
        wording.error(f"{pick} could not be read ({exc}); pick another image, or re-scan on the Data page.")
        st.stop()
    for row in range(3):
        cols = st.columns(3)
        for col, img in zip(cols, grid[row * 3 : row * 3 + 3], strict=True):
            col.image(img, width="stretch")
