"""Small helpers shared by the page files: the chosen dataset, the backend, the selected run."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import streamlit as st

from pipeline import paths

DEFAULT_SOURCE = "sample:digits"

# === Names are text ===
# Class names, file names, run sources and error messages quoting them come from uploads and links: they are
# shown literally, never as Markdown or HTML (an image in a folder name must not make a browser fetch a URL).

_MD_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark: CommonMark escapes them all
_AUTOLINK = re.compile(r"(?i)(www)(?=\\\.)|(\\:)(?=\\/\\/)|(?=\\@)")
WORD_JOINER = "\u2060"  # invisible: breaks the autolinks GFM finds after parsing (www., https://, a@b)


def plain(text: object) -> str:
    """``text`` as Markdown that renders exactly as the characters it holds (no link, image, emoji or icon).

    For the Streamlit elements that always parse Markdown (alerts, captions, image captions, metric labels):
    every ASCII punctuation mark is backslash-escaped, and the autolinks GitHub Markdown would still find
    (``www.``, ``scheme://``, ``name@host``) get an invisible word joiner.
    """
    escaped = _MD_PUNCTUATION.sub(r"\\\1", str(text))
    return _AUTOLINK.sub(lambda m: (m.group(1) or m.group(2) or "") + WORD_JOINER, escaped)


def text(value: object) -> None:
    """Shows a user-controlled string as plain text (``st.text``: no Markdown, no HTML)."""
    st.text(str(value))


def error(message: object) -> None:
    st.error(plain(message))


def warning(message: object) -> None:
    st.warning(plain(message))


def info(message: object) -> None:
    st.info(plain(message))


def chart_label(value: object) -> str:
    """A label for Plotly, which reads a few HTML tags (links among them) in its text: entities keep it literal."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def data_root() -> Path:
    """The only server folder tree the Data page may browse (``TRANSFER_STUDIO_DATA_ROOT``)."""
    root = Path(os.environ.get("TRANSFER_STUDIO_DATA_ROOT") or paths.home() / "data").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def source() -> str:
    return st.session_state.get("source", DEFAULT_SOURCE)


def set_source(value: str) -> None:
    st.session_state["source"] = value


def base_config(src: str):
    """Defaults for a source: a sample set's own preset, else the RunConfig defaults."""
    from pipeline import config, data

    return config.from_dict(data.sample_preset()) if data.is_sample(src) else config.RunConfig()


@st.cache_resource
def _scan_cache() -> dict:
    """(folder, mtime) -> scan report, shared by every session of this server (small: reports only)."""
    return {}


def scan_folder(folder: str, stamp: float, progress=None) -> dict:
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


@st.cache_data(max_entries=256, show_spinner=False)
def thumbnail_strip(root: str, files: tuple[str, ...], size: int = 96, gap: int = 4):
    """One image of up to six examples side by side: one element per class instead of six (faster pages)."""
    import numpy as np

    from pipeline import data

    tiles = []
    for rel in files:
        try:
            tiles.append(data.load_image(Path(root) / rel, size))
        except data.DataError:
            continue  # the scan already lists it as skipped
    if not tiles:
        return np.full((size, size, 3), 255, np.uint8)
    strip = np.full((size, len(tiles) * (size + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        strip[:, i * (size + gap):i * (size + gap) + size] = tile
    return strip


def resolve_and_scan(src: str) -> tuple[str, dict]:
    """Resolves (unzipping safely) and scans a source, with a progress bar while it unpacks and decodes."""
    from pipeline import data

    bar = st.empty()

    def unpacking(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Unpacking: {done / 1e6:.1f} of {total / 1e6:.1f} MB")

    def scanning(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Scanning: {done}/{total} images decoded")

    folder = data.resolve_source(src, progress=unpacking)
    report = scan_folder(str(folder), folder.stat().st_mtime, progress=scanning)
    bar.empty()
    return str(folder), report


def saved_upload(upload, kind: str) -> str | None:
    """The path an uploaded file is kept at (``paths.store_upload``), written once per upload, not per rerun."""
    if upload is None:
        return None
    saved = st.session_state.setdefault("uploads", {})  # file_id -> kept path
    if upload.file_id not in saved:
        from pipeline import quota

        # The UploadedFile itself, copied 1 MB at a time (getvalue() would copy the whole upload once more)
        kept = paths.store_upload(upload, upload.name, kind)
        quota.enforce(keep=(kept,))  # least recently used uploads and datasets no run refers to make room
        saved[upload.file_id] = str(kept)
    return saved[upload.file_id]


def max_upload_mb() -> int:
    """The upload limit: TRANSFER_STUDIO_MAX_UPLOAD_MB, never above the server's ``server.maxUploadSize``."""
    from pipeline.limits import Limits

    return min(Limits.from_env().max_upload_mb, int(st.get_option("server.maxUploadSize")))


def backend():
    """The job backend for this server's TRANSFER_STUDIO_HOME (one per home, shared by every session)."""
    return _backend(str(paths.home()))


@st.cache_resource
def _backend(home: str):  # home: only the cache key (get_backend reads it from the environment)
    from pipeline.jobs.backends import get_backend

    return get_backend()


# === Ownership ===
# A run belongs to whoever launched it. A visitor is known by a random owner key kept in a cookie of their
# browser (a refresh or a new tab of the same browser is the same visitor), or, when the host configures
# Streamlit's sign-in (st.login), by the signed-in account. Only a hash of the key is stored with a job.
# A run's share link (?run=ID) carries no key: whoever opens it sees the run read-only.

OWNER_COOKIE = "ts_owner"
_KEY = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(frozen=True)
class Visitor:
    owner: str  # stored with the jobs this visitor launches
    admin: bool  # the host's admin key was given: sees and controls every run
    signed_in: bool


def visitor() -> Visitor:
    """Who is looking: the signed-in user, else the owner key of this browser (made on the first visit)."""
    import hashlib
    import hmac
    import secrets

    from pipeline.limits import Limits

    admin_key = Limits.from_env().admin_key
    given = st.query_params.get("admin")
    if given is not None:
        del st.query_params["admin"]  # out of the address bar at once: a copied link never carries it
        if admin_key and hmac.compare_digest(given, admin_key):
            st.session_state["admin"] = True  # for this session (tab); a refresh asks for ?admin= again
    admin = bool(admin_key) and st.session_state.get("admin", False)
    user = st.user.to_dict()
    if user.get("is_logged_in") and (user.get("email") or user.get("sub")):
        return Visitor(f"user:{user.get('email') or user.get('sub')}", admin, True)
    key = st.session_state.get("owner_key")
    if key is None:
        cookie = st.context.cookies.get(OWNER_COOKIE, "")
        key = cookie if isinstance(cookie, str) and _KEY.fullmatch(cookie) else secrets.token_hex(16)
        st.session_state["owner_key"] = key
    return Visitor(f"key:{hashlib.sha256(key.encode()).hexdigest()[:32]}", admin, False)


def remember_visitor() -> None:
    """Keeps this browser's owner key in a cookie (a year, this site only), so a refresh or a new tab of the same
    browser is the same owner. Streamlit reads cookies (st.context.cookies) but cannot set one, so a line of
    JavaScript does, once per session while the browser does not have it yet."""
    try:
        me = visitor()
    except ValueError as exc:  # a malformed TRANSFER_STUDIO_* setting: the host's message, not a traceback
        error(exc)
        st.stop()
    key = st.session_state.get("owner_key")
    if me.signed_in or key is None or st.context.cookies.get(OWNER_COOKIE) == key:
        return
    with st.sidebar:
        st.html(f"<script>document.cookie = '{OWNER_COOKIE}={key}; path=/; max-age=31536000; SameSite=Strict';"
                "</script>", unsafe_allow_javascript=True)  # key: 32 hex digits made here, nothing from outside


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
    from pipeline.limits import Limits

    me = visitor()
    limit = Limits.from_env().max_active_jobs
    active = [j for j in backend().list() if j.owner == me.owner and j.state in ("queued", "running")]
    if len(active) >= limit and not me.admin:
        st.error(f"You already have {len(active)} run(s) queued or running, the most this server allows per "
                 f"visitor ({limit}). Wait for one to finish, or cancel one on the Runs page.")
        return None
    return backend().submit(src, cfg, owner=me.owner)


def selected_job_id() -> str | None:
    """The run named by ``?run=<id>`` (validated), else the last one this session launched."""
    from pipeline.jobs.store import JobError, validate_job_id

    raw = st.query_params.get("run") or st.session_state.get("run")
    if not raw:
        return None
    try:
        return validate_job_id(raw)
    except JobError as exc:
        error(exc)  # the message quotes the crafted id: text, never Markdown
        return None


def pick_run(label: str = "Run", finished_only: bool = False):
    """A select box of jobs (newest first), preselecting ``?run=``; returns the Job or None."""
    wanted = selected_job_id()  # validated first: a crafted link gets a message, never a path
    everyone = backend().list()
    jobs = my_jobs(everyone)  # your runs, plus the one a share link names (read-only unless yours)
    jobs += [j for j in everyone if j.id == wanted and j not in jobs]
    if finished_only:
        jobs = [j for j in jobs if j.state == "done"]
    if not jobs:
        st.info("No finished runs yet. Launch one on the Train page." if finished_only
                else "No runs yet. Launch one on the Train page.")
        return None
    ids = [j.id for j in jobs]
    index = ids.index(wanted) if wanted in ids else 0
    # No state in the label: the page's live parts update the state, a select box label would go stale.
    job = st.selectbox(label, jobs, index=index, format_func=lambda j: (
        f"{j.id[:8]}  {Path(j.source).name}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(j.created))}"))
    if job is not None and st.query_params.get("run") != job.id:
        st.query_params["run"] = job.id
    if job is not None:
        st.session_state["run"] = job.id  # the other pages open on it too (a page switch drops ?run=)
    return job
