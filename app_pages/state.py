"""One per-visitor state for every choice a person makes: data source, augmentation, train settings, run.

Where a choice lives:
- the data source and the selected run identify something shareable: they are in the address (``?source=``,
  ``?run=``), put back on every page (a page switch drops query parameters);
- every choice is also kept server-side, per visitor, in ``TRANSFER_STUDIO_HOME/visitors/<hash of the owner
  key>.json`` (the owner key of app_pages.visitor.visitor(): the browser's cookie or the signed-in account), so a
  reload or a new tab of the same browser opens on the same data, augmentation and train settings;
- within a session, ``st.session_state`` holds them (widgets are seeded from it: Streamlit forgets the value of a
  widget on a page that is not shown).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import streamlit as st

from pipeline.host import paths

_SESSION = "visitor_prefs"


def _file() -> Path:
    from app_pages.visitor import visitor

    owner = visitor().owner
    folder = paths.home() / "visitors"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{hashlib.sha256(owner.encode()).hexdigest()[:32]}.json"


def prefs() -> dict[str, Any]:
    """This visitor's kept choices (read from disk once per session)."""
    if _SESSION not in st.session_state:
        try:
            loaded = json.loads(_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        st.session_state[_SESSION] = loaded if isinstance(loaded, dict) else {}
    return st.session_state[_SESSION]


def get(name: str, default: Any = None) -> Any:
    return prefs().get(name, default)


def put(name: str, value: Any) -> None:
    """Keeps one choice for this visitor (session and disk; written only when it changed)."""
    current = prefs()
    if current.get(name) == value:
        return
    current[name] = value
    from pipeline.host.atomic import atomic_write_text

    try:
        atomic_write_text(_file(), json.dumps(current, indent=1, sort_keys=True))
    except OSError:
        pass  # a full or read-only disk: the choice still holds for this session


def seed(key: str, value: Any) -> str:
    """Gives the widget ``key`` its kept value when Streamlit has none for it (first show, or back from another
    page); returns ``key`` for the widget call. Pass no ``value=`` to that widget."""
    if key not in st.session_state:
        st.session_state[key] = value
    return key
