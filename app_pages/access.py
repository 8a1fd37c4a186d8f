"""The job backend and who may do what: this server's backend, visitors and owners, launching a run."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_pages import wording
from app_pages.visitor import OWNER_COOKIE, visitor
from pipeline.host import paths


def backend():
    """The job backend for this server's TRANSFER_STUDIO_HOME (one per home, shared by every session)."""
    return _backend(str(paths.home()))


def runs_dir() -> Path:
    """The folder of the backend's run folders (where pipeline.quality.estimate finds this machine's measured
    epochs)."""
    return backend().runs


@st.cache_resource
def _backend(home: str):  # home: only the cache key (get_backend reads it from the environment)
    from pipeline.jobs.backends import get_backend

    return get_backend()


def remember_visitor() -> None:
    """Keeps this browser's owner key in a cookie (a year, this site only), so a refresh or a new tab of the same
    browser is the same owner. Streamlit reads cookies (st.context.cookies) but cannot set one, so a line of
    JavaScript does, once per session while the browser does not have it yet."""
    try:
        me = visitor()
    except ValueError as exc:  # a malformed TRANSFER_STUDIO_* setting: the host's message, not a traceback
        wording.error(exc)
        st.stop()
    key = st.session_state.get("owner_key")
    if me.signed_in or key is None or st.context.cookies.get(OWNER_COOKIE) == key:
        return
    with st.sidebar:
        st.html(
            f"<script>document.cookie = '{OWNER_COOKIE}={key}; path=/; max-age=31536000; SameSite=Strict';</script>",
            unsafe_allow_javascript=True,
        )  # key: 32 hex digits made here, nothing from outside


def can_control(job) -> bool:
    """Whether this visitor may cancel, resume, export, delete or retrain ``job`` (its owner, or the admin)."""
    me = visitor()
    return me.admin or (job.owner is not None and job.owner == me.owner)


def my_jobs(jobs: list) -> list:
    """The jobs this visitor's Runs list shows: their own (every job for the admin)."""
    me = visitor()
    return jobs if me.admin else [j for j in jobs if j.owner is not None and j.owner == me.owner]


def launch(src: str, cfg) -> str | None:
    """Submits a job owned by this visitor, unless they already have the most queued or running jobs allowed
    (TRANSFER_STUDIO_MAX_ACTIVE_JOBS), which is said as an error; returns the job id or None."""
    from pipeline.host.limits import Limits

    me = visitor()
    limit = Limits.from_env().max_active_jobs
    active = [j for j in backend().list() if j.owner == me.owner and j.active]
    if len(active) >= limit and not me.admin:
        st.error(
            f"You already have {len(active)} run(s) queued or running, the most this server allows per "
            f"visitor ({limit}). Wait for one to finish, or cancel one on the Runs page."
        )
        return None
    return backend().submit(src, cfg, owner=me.owner)
