"""Small helpers shared by the page files: the chosen dataset, the backend, the selected run."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import streamlit as st

from app_pages.visitor import OWNER_COOKIE, visitor
from pipeline.host import paths

DEFAULT_SOURCE = "sample:digits"

# === Names are text ===
# Class names, file names, run sources and error messages quoting them come from uploads and links: they are
# shown literally, never as Markdown or HTML (an image in a folder name must not make a browser fetch a URL).
# A file name is bytes: one that is not UTF-8 is shown with those bytes escaped (readable), and opened by its
# real name.

_MD_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation mark: CommonMark escapes them all
_AUTOLINK = re.compile(r"(?i)(www)(?=\\\.)|(\\:)(?=\\/\\/)|(?=\\@)")
WORD_JOINER = "\u2060"  # invisible: breaks the autolinks GFM finds after parsing (www., https://, a@b)


def count(n: int, one: str, many: str | None = None) -> str:
    """``n`` and the noun in the number it takes: "1 class", "2 classes", "1,797 images"."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def readable(value: object) -> str:
    """``value`` as text every element can show: the bytes of a file name that are not UTF-8 as ``\\xNN``.

    Linux keeps a file name's bytes as they are, and Python holds the ones that are not UTF-8 as lone surrogates
    (``os.fsdecode(b"bad_\\xff.jpg") == "bad_\\udcff.jpg"``), which cannot be encoded as UTF-8: Streamlit cannot
    send such a string to the browser. Shown here as ``bad_\\xff.jpg``; the real name (the path that opens the
    file) is kept where it was. Every helper below passes what it shows through this one.
    """
    words = str(value)
    try:
        words.encode("utf-8")
        return words
    except UnicodeEncodeError:
        pass
    try:
        return words.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name makes (e.g. a \ud800 escape in a JSON file)
        return words.encode("utf-8", "backslashreplace").decode("utf-8")


def fs_key(path: object) -> bytes:
    """A path as bytes, for the argument of a cached function: Streamlit hashes a str argument as UTF-8, which a
    non-UTF-8 file name is not (``os.fsdecode`` gives the path back inside the function)."""
    return os.fsencode(str(path))


def plain(text: object) -> str:
    """``text`` as Markdown that renders exactly as the characters it holds (no link, image, emoji or icon).

    For the Streamlit elements that always parse Markdown (alerts, captions, image captions, metric labels):
    every ASCII punctuation mark is backslash-escaped, and the autolinks GitHub Markdown would still find
    (``www.``, ``scheme://``, ``name@host``) get an invisible word joiner.
    """
    escaped = _MD_PUNCTUATION.sub(r"\\\1", readable(text))
    return _AUTOLINK.sub(lambda m: (m.group(1) or m.group(2) or "") + WORD_JOINER, escaped)


def text(value: object) -> None:
    """Shows a user-controlled string as plain text (``st.text``: no Markdown, no HTML)."""
    st.text(readable(value))


def error(message: object) -> None:
    st.error(plain(message))


def warning(message: object) -> None:
    st.warning(plain(message))


def info(message: object) -> None:
    st.info(plain(message))


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
    return (words.replace("or set data.test_fraction=0.", "or set Test fraction to 0 on this page.")
            .replace("; give a folder or a .zip of class folders.", ": upload a .zip of class folders."))


def chart_label(value: object) -> str:
    """A label for Plotly, which reads a few HTML tags (links among them) in its text: entities keep it literal."""
    return readable(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
                st.session_state["source_note"] = (f"The data you used last ({Path(kept).name}) is no longer on the "
                                                   "server; showing the sample set. Choose your data again.")
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
        warning(note)


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
    st.session_state["source_note"] = (f"The link names data source {linked!r}, which is not on this server "
                                       "(a sample set or a folder under the data root); showing the sample set.")
    return None


def keep_in_address() -> None:
    """Puts the data source back in the address (a page switch drops query parameters); the pages that show a
    run put ``?run=`` there themselves (pick_run)."""
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
    return _thumbnail_strip(fs_key(root), tuple(fs_key(rel) for rel in files), size, gap)


def thumbnail(root: str, rel: str, size: int = 112):
    """One image, square at ``size`` (white when it cannot be read: the scan lists it as skipped)."""
    return _thumbnail_strip(fs_key(root), (fs_key(rel),), size, 0)


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
        strip[:, i * (size + gap):i * (size + gap) + size] = tile
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


def backend():
    """The job backend for this server's TRANSFER_STUDIO_HOME (one per home, shared by every session)."""
    return _backend(str(paths.home()))


def runs_dir() -> Path:
    """The folder of the backend's run folders (where pipeline.quality.estimate finds this machine's measured epochs)."""
    return backend().runs


@st.cache_resource
def _backend(home: str):  # home: only the cache key (get_backend reads it from the environment)
    from pipeline.jobs.backends import get_backend

    return get_backend()


# === Ownership ===
# A run belongs to whoever launched it. A visitor is known by a random owner key kept in a cookie of their
# browser (a refresh or a new tab of the same browser is the same visitor), or, when the host configures
# Streamlit's sign-in (st.login), by the signed-in account. Only a hash of the key is stored with a job.
# A run's share link (?run=ID) carries no key: whoever opens it sees the run read-only.

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
    from pipeline.host.limits import Limits

    me = visitor()
    limit = Limits.from_env().max_active_jobs
    active = [j for j in backend().list() if j.owner == me.owner and j.active]
    if len(active) >= limit and not me.admin:
        st.error(f"You already have {len(active)} run(s) queued or running, the most this server allows per "
                 f"visitor ({limit}). Wait for one to finish, or cancel one on the Runs page.")
        return None
    return backend().submit(src, cfg, owner=me.owner)


def selected_job_id() -> str | None:
    """The run named by ``?run=<id>`` (validated), else the one this visitor selected last (this session, or
    kept for a reload or a new tab)."""
    from app_pages import state
    from pipeline.jobs.store import JobError, validate_job_id

    raw = st.query_params.get("run") or st.session_state.get("run") or state.get("run")
    if not raw:
        return None
    try:
        return validate_job_id(raw)
    except JobError as exc:
        error(exc)  # the message quotes the crafted id: text, never Markdown
        return None


def select_run(job_id: str | None) -> None:
    """Makes ``job_id`` this visitor's selected run (session, kept choices, address); None forgets it."""
    from app_pages import state

    if job_id is None:
        st.session_state.pop("run", None)
        st.query_params.pop("run", None)
    else:
        st.session_state["run"] = job_id
        if st.query_params.get("run") != job_id:
            st.query_params["run"] = job_id
    state.put("run", job_id)


def share_url(job_id: str, page: str = "runs") -> str:
    """The full address of a run's page (``st.context.url``: the address this browser opened; else the host
    the request came to), with ``?run=``: a link to paste anywhere."""
    from urllib.parse import urlsplit

    url = st.context.url or ""
    parts = urlsplit(url)
    if parts.scheme and parts.netloc:
        base = f"{parts.scheme}://{parts.netloc}"
    else:
        host = (st.context.headers or {}).get("Host") or "localhost:8501"
        base = f"http://{host}"
    prefix = parts.path.rsplit("/", 1)[0] if parts.path.count("/") > 1 else ""  # a server.baseUrlPath
    return f"{base}{prefix}/{page}?run={job_id}"


def run_titles(jobs: list) -> dict[str, str]:
    """Each job's name for a table or a chart legend: its title, with its short id where two share one."""
    seen: dict[str, int] = {}
    for j in jobs:
        seen[j.title] = seen.get(j.title, 0) + 1
    return {j.id: readable(j.title if seen[j.title] == 1 else f"{j.title} ({j.id[:8]})") for j in jobs}


def pick_run(label: str = "Run", finished_only: bool = False):
    """A select box of this visitor's jobs (newest first) plus the one a link names; returns the Job or None.

    A run the address names that cannot be shown here (no such run, or not finished on a page that needs a
    finished one) is said, and no other run is put in its place until the visitor picks one.
    """
    linked = st.query_params.get("run")
    wanted = selected_job_id()  # validated first: a crafted link gets a message, never a path
    everyone = backend().list()
    by_id = {j.id: j for j in everyone}
    jobs = my_jobs(everyone)  # your runs, plus the one a share link names (read-only unless yours)
    jobs += [j for j in everyone if j.id == wanted and j not in jobs]
    if finished_only:
        jobs = [j for j in jobs if j.state == "done"]
    problem = None
    if wanted and wanted not in by_id:
        problem = (f"Run {wanted} cannot be shown: there is no such run on this server (it was deleted, or the "
                   "link is from another server).")
    elif wanted and finished_only and by_id[wanted].state != "done":
        problem = (f"Run {wanted[:8]} cannot be shown here: it is {by_id[wanted].state}, and this page needs a "
                   "finished run. Follow it on the Runs page.")
    if problem and linked:
        warning(problem)
        if wanted in by_id:
            st.page_link("app_pages/runs.py", label="Open it on the Runs page", icon=":material/monitoring:",
                         query_params={"run": wanted})
    elif problem and wanted not in by_id:
        select_run(None)  # a remembered run deleted since: forgotten, and nothing to say
        problem = None
    if not jobs:
        st.info("No finished runs yet. Launch one on the Train page." if finished_only
                else "No runs yet. Launch one on the Train page.")
        return None
    ids = [j.id for j in jobs]
    if problem and linked:
        index = None  # nothing in its place until the visitor picks
    else:
        index = ids.index(wanted) if wanted in ids else 0
        if problem:  # your last run is still going: say which one this page shows instead
            st.caption(plain(f"{problem} Showing your newest finished run."))
    # No state in the label: the page's live parts update the state, a select box label would go stale.
    job = st.selectbox(label, jobs, index=index, placeholder="Choose a run", format_func=lambda j: readable(
        f"{j.title}  ({j.id[:8]}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(j.created))})"))
    if job is not None:
        select_run(job.id)  # the other pages open on it too
    return job
