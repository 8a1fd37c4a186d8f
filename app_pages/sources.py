"""The chosen dataset: the data root, the source in the session and the address, scans and thumbnails."""

from __future__ import annotations

import os
import re
from pathlib import Path

import streamlit as st

from app_pages import wording
from pipeline.host import paths

DEFAULT_SOURCE = "sample:digits"


def data_root() -> Path:
    """The only server folder tree the Data page may browse (``TRANSFER_STUDIO_DATA_ROOT``)."""
    root = Path(os.environ.get("TRANSFER_STUDIO_DATA_ROOT") or paths.home() / "data").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def source() -> str:
    """The chosen data source: this session's, else the one the address names (``?source=``), else the one this
    visitor chose last (a reload or a new tab), else the sample set. A source that cannot be used is said."""
    from app_pages import state

    if "source" not in st.session_state:
        linked = st.query_params.get("source")
        chosen = _from_address(linked) if linked else None
        if chosen is None:
            kept = state.get("source")
            chosen = kept if isinstance(kept, str) and _usable(kept) else DEFAULT_SOURCE
            if kept and chosen != kept:
                st.session_state["source_note"] = (
                    f"The data you used last ({Path(kept).name}) is no longer on the "
                    "server; showing the sample set. Choose your data again."
                )
        st.session_state["source"] = chosen
    return st.session_state["source"]


def set_source(value: str) -> None:
    from app_pages import state

    st.session_state["source"] = value
    state.put("source", value)
    keep_in_address()


def source_note() -> None:
    """Says once why the source is not the one the link or the last visit named."""
    note = st.session_state.pop("source_note", None)
    if note:
        wording.warning(note)


def _usable(src: str) -> bool:
    from pipeline import data

    return data.is_sample(src) or Path(src).exists()


def address_source(src: str) -> str | None:
    """How a source appears in a link: ``sample:digits``, ``folder:<path under the data root>``; None for an
    upload (a file of this visitor's: not shared through the address)."""
    from pipeline import data

    if data.is_sample(src):
        return src
    try:
        return "folder:" + str(Path(src).relative_to(data_root()))
    except ValueError:
        pass
    root = data_root()  # a folder linked into the data root (a dataset mounted elsewhere)
    for entry in root.iterdir():
        if entry.is_dir() and str(entry.resolve()) == src:
            return f"folder:{entry.name}"
    return None


def _from_address(linked: str) -> str | None:
    from pipeline import data

    if data.is_sample(linked):
        name = linked.partition(":")[2] or "digits"
        if name in data.SAMPLES:
            return linked
    elif linked.startswith("folder:"):
        root = data_root()
        rel = linked.removeprefix("folder:")
        candidate = root / rel
        first = rel.split("/")[0]
        inside = bool(rel) and ".." not in Path(rel).parts and not Path(rel).is_absolute() and (root / first).is_dir()
        if inside and candidate.is_dir():
            return str(candidate.resolve())
    st.session_state["source_note"] = (
        f"The link names data source {linked!r}, which is not on this server "
        "(a sample set or a folder under the data root); showing the sample set."
    )
    return None


def keep_in_address() -> None:
    """Puts the data source back in the address (a page switch drops query parameters); the pages that show a
    run put ``?run=`` there themselves (picker.pick_run)."""
    src = st.session_state.get("source")
    linked = address_source(src) if src else None
    if linked and st.query_params.get("source") != linked:
        st.query_params["source"] = linked
    elif src and not linked and "source" in st.query_params:
        del st.query_params["source"]


def base_config(src: str):
    """Defaults for a source (pipeline.training.presets.config_for: a sample set's own preset, else the defaults)."""
    from pipeline.training import presets

    return presets.config_for(src)


@st.cache_resource
def _scan_cache() -> dict:
    """(folder, tree stamp) -> scan report, shared by every session of this server (small: reports only)."""
    return {}


def scan_folder(folder: str, stamp: str, progress=None) -> dict:
    """Scan report of a resolved folder, cached per folder and modification time.

    (Not ``st.cache_data``: the progress bar it draws lives outside the function, which cache replay forbids.)
    """
    from pipeline import data

    cache = _scan_cache()
    key = (folder, stamp)
    if key not in cache:
        if len(cache) >= 16:
            cache.pop(next(iter(cache)))
        cache[key] = data.scan(folder, progress=progress).to_dict()
    return cache[key]


def thumbnail_strip(root: str, files: tuple[str, ...], size: int = 96, gap: int = 4):
    """One image of up to six examples side by side: one element per class instead of six (faster pages)."""
    return _thumbnail_strip(wording.fs_key(root), tuple(wording.fs_key(rel) for rel in files), size, gap)


def thumbnail(root: str, rel: str, size: int = 112):
    """One image, square at ``size`` (white when it cannot be read: the scan lists it as skipped)."""
    return _thumbnail_strip(wording.fs_key(root), (wording.fs_key(rel),), size, 0)


@st.cache_data(max_entries=600, show_spinner=False)  # the class browser's pages too (~40 KB each)
def _thumbnail_strip(root: bytes, files: tuple[bytes, ...], size: int, gap: int):
    import numpy as np

    from pipeline import data

    tiles = []
    for rel in files:
        try:
            tiles.append(data.load_image(Path(os.fsdecode(root)) / os.fsdecode(rel), size))
        except data.DataError:
            continue  # the scan already lists it as skipped
    if not tiles:
        return np.full((size, size, 3), 255, np.uint8)
    strip = np.full((size, len(tiles) * (size + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        strip[:, i * (size + gap) : i * (size + gap) + size] = tile
    return strip


def resolve_and_scan(src: str) -> tuple[str, dict]:
    """Resolves (unzipping safely) and scans a source, with a progress bar while it unpacks and decodes."""
    from pipeline.jobs import quota

    bar = st.empty()

    def unpacking(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Unpacking: {done / 1e6:.1f} of {total / 1e6:.1f} MB")

    def scanning(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Scanning: {done}/{total} images decoded")

    folder = quota.resolve(src, progress=unpacking)
    report = scan_folder(str(folder), paths.tree_stamp(folder), progress=scanning)  # a photo added to a class
    bar.empty()
    return str(folder), report


def user_words(message: object, src: str) -> str:
    """A pipeline message about ``src`` in the user's terms: an uploaded file by the name they gave it, a server
    folder by its path under the data root, never the server's own paths; command-line advice as the app's."""
    words = str(message)
    path = Path(src)
    if not src.startswith("sample:"):
        try:
            shown_as = str(path.relative_to(data_root()))
        except ValueError:
            shown_as = path.name  # an upload: <home>/uploads/<hash>/<the name they gave it>
        words = words.replace(str(path), shown_as)
    home = str(paths.home())
    words = re.sub(re.escape(home) + r"/\S*/", "", words)  # any other server path: its last part only
    return words.replace("or set data.test_fraction=0.", "or set Test fraction to 0 on this page.").replace(
        "; give a folder or a .zip of class folders.", ": upload a .zip of class folders."
    )
