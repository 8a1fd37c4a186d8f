"""The selected run: in the session and the address, share links, run titles and the run picker."""

from __future__ import annotations

import time

import streamlit as st

from app_pages import access, wording


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
        wording.error(exc)  # the message quotes the crafted id: as text, never Markdown
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
    return {j.id: wording.readable(j.title if seen[j.title] == 1 else f"{j.title} ({j.id[:8]})") for j in jobs}


def pick_run(label: str = "Run", finished_only: bool = False):
    """A select box of this visitor's jobs (newest first) plus the one a link names; returns the Job or None.

    A run the address names that cannot be shown here (no such run, or not finished on a page that needs a
    finished one) is said, and no other run is put in its place until the visitor picks one.
    """
    linked = st.query_params.get("run")
    wanted = selected_job_id()  # validated first: a crafted link gets a message, never a path
    everyone = access.backend().list()
    by_id = {j.id: j for j in everyone}
    jobs = access.my_jobs(everyone)  # your runs, plus the one a share link names (read-only unless yours)
    jobs += [j for j in everyone if j.id == wanted and j not in jobs]
    if finished_only:
        jobs = [j for j in jobs if j.state == "done"]
    problem = None
    if wanted and wanted not in by_id:
        problem = (
            f"Run {wanted} cannot be shown: there is no such run on this server (it was deleted, or the "
            "link is from another server)."
        )
    elif wanted and finished_only and by_id[wanted].state != "done":
        problem = (
            f"Run {wanted[:8]} cannot be shown here: it is {by_id[wanted].state}, and this page needs a "
            "finished run. Follow it on the Runs page."
        )
    if problem and linked:
        wording.warning(problem)
        if wanted in by_id:
            st.page_link(
                "app_pages/runs.py",
                label="Open it on the Runs page",
                icon=":material/monitoring:",
                query_params={"run": wanted},
            )
    elif problem and wanted not in by_id:
        select_run(None)  # a remembered run deleted since: forgotten, and nothing to say
        problem = None
    if not jobs:
        st.info(
            "No finished runs yet. Launch one on the Train page."
            if finished_only
            else "No runs yet. Launch one on the Train page."
        )
        return None
    ids = [j.id for j in jobs]
    if problem and linked:
        index = None  # nothing in its place until the visitor picks
    else:
        index = ids.index(wanted) if wanted in ids else 0
        if problem:  # your last run is still going: say which one this page shows instead
            st.caption(wording.plain(f"{problem} Showing your newest finished run."))
    # No state in the label: the page's live parts update the state, a select box label would go stale.
    job = st.selectbox(
        label,
        jobs,
        index=index,
        placeholder="Choose a run",
        format_func=lambda j: wording.readable(
            f"{j.title}  ({j.id[:8]}, {time.strftime('%Y-%m-%d %H:%M', time.localtime(j.created))})"
        ),
    )
    if job is not None:
        select_run(job.id)  # the other pages open on it too
    return job
