"""Tune: search backbones, sizes and settings for the most accurate model within a file-size and latency budget.

A study runs in the background (``python -m pipeline tune --resume NAME``); its trials are ordinary runs (Runs
page). This page starts, stops and resumes one, and draws its table and Pareto chart as trials finish; "Use this
one" makes a trial's run the selected run.
"""

import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages import picker, sources, wording
from app_pages.visitor import visitor
from pipeline.host.exitcodes import UserError
from pipeline.host.limits import Limits
from pipeline.tuning import study as study_mod

st.title("Tune")
st.caption(
    "Find the model that fits your device: each trial trains a mobile backbone at a width, an image size and "
    "settings the search picks, exports it to LiteRT (float16 and 8-bit), verifies it and times it. Trials that "
    "stop improving are pruned; trials over your budget are kept, marked over budget."
)
me = visitor()
src = sources.source()


def my_studies() -> list[tuple[str, study_mod.Spec, str, list[dict]]]:
    out = []
    for name in study_mod.names():
        try:
            spec, status, table = study_mod.rows(name)
        except (UserError, KeyError, ValueError):
            continue
        if me.admin or (spec.owner is not None and spec.owner == me.owner):
            out.append((name, spec, status, table))
    return out


def new_study_form() -> None:
    limit = Limits.from_env().max_active_jobs
    with st.form("tune-new"):
        st.markdown(f"**New study** on {wording.plain(sources.user_words(src, src))}")
        a, b, c = st.columns(3)
        trials = a.number_input("Trials", 1, 100, 8, help="How many settings to try")
        parallel = b.number_input(
            "At once",
            1,
            max(1, limit) if not me.admin else 16,
            min(2, limit),
            help="Trials training at the same time (a Ray cluster runs them on its nodes; this machine's worker "
            "runs as many as it was started for)",
        )
        minutes = c.number_input("Time budget (minutes, 0 = none)", 0, 24 * 60, 0, help="No trial starts after it")
        a, b, c = st.columns(3)
        max_mb = a.number_input("Largest file (MB, 0 = any)", 0.0, 500.0, 2.0, 0.1)
        max_ms = b.number_input("Slowest per image (ms, 0 = any)", 0.0, 10_000.0, 0.0, 0.5)
        min_acc = c.number_input("Lowest accuracy (%, 0 = any)", 0.0, 100.0, 0.0, 1.0)
        a, b, c = st.columns(3)
        head = a.number_input("Head epochs", 1, 50, 3)
        fine = b.number_input("Fine-tune epochs", 0, 50, 2)
        size = c.selectbox("Image size", ["searched", 96, 128, 160, 192, 224], help="Fix it, or let the search pick")
        st.caption(
            "Latency is LiteRT's per image at batch 1 on one thread of this server, so trials compare fairly; a "
            "phone's core is faster or slower. Accuracy is the shipped file's on held-out images."
        )
        go_ = st.form_submit_button("Start the study", type="primary", icon=":material/travel_explore:")
    if not go_:
        return
    overrides = [f"train.head_epochs={head}", f"train.fine_tune_epochs={fine}"]
    if size != "searched":
        overrides.append(f"model.image_size={size}")
    try:
        spec = study_mod.create(
            src,
            int(trials),
            parallel=int(parallel),
            budget=study_mod.Budget(max_mb or None, max_ms or None, (min_acc / 100) or None),
            time_budget_s=minutes * 60 or None,
            overrides=overrides,
            owner=me.owner,
        )
    except UserError as exc:
        wording.error(sources.user_words(exc, src))
        return
    study_mod.start_background(spec.name)
    st.session_state["tune-show"] = spec.name  # shown by the next run (the picker above exists already)
    st.session_state[f"tune-starting-{spec.name}"] = time.time()
    st.rerun()


def chart(spec: study_mod.Spec, table: list[dict], key: str):
    """Accuracy against latency, a point's size its file's MB; over-budget points grey; the budget as lines."""
    scored = [r for r in table if r["accuracy"] is not None]
    if not scored:
        return None
    fig = go.Figure()
    for feasible, name, colour in ((True, "within the budget", "#2563eb"), (False, "over budget", "#9ca3af")):
        pts = [r for r in scored if (r["state"] == "done") == feasible]
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                x=[r["ms"] for r in pts],
                y=[r["accuracy"] * 100 for r in pts],
                mode="markers+text",
                name=name,
                text=[f"#{r['trial']}" for r in pts],
                textposition="top center",
                customdata=[r["trial"] for r in pts],
                marker={"size": [10 + 12 * r["mb"] for r in pts], "color": colour, "line": {"width": 1}},
                hovertemplate="trial %{customdata}: %{y:.1f}%, %{x:.2f} ms<extra></extra>",
            )
        )
    b = spec.budget
    if b.max_ms:
        fig.add_vline(x=b.max_ms, line_dash="dash", line_color="#dc2626", annotation_text=f"{b.max_ms:g} ms")
    if b.min_accuracy:
        fig.add_hline(y=b.min_accuracy * 100, line_dash="dash", line_color="#dc2626")
    fig.update_layout(
        xaxis_title="ms per image (LiteRT, 1 thread of this server)",
        yaxis_title="held-out accuracy of the shipped file (%)",
        height=380,
        margin={"t": 20, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    event = st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("points",))
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    return points[0].get("customdata") if points else None


def trial_table(table: list[dict]) -> None:
    frame = pd.DataFrame(
        [
            {
                "trial": r["trial"],
                "state": study_mod.STATE_WORDS.get(r["state"], r["state"])
                + (f" at epoch {r['pruned_at']}" if r["state"] == "pruned" else ""),
                "accuracy %": None if r["accuracy"] is None else round(r["accuracy"] * 100, 1),
                "MB": r["mb"],
                "ms": r["ms"],
                "file": r["format"] or "",
                "epochs": r["epochs"],
                "settings": wording.readable(r["settings"]),
                "note": wording.readable(r["error"] or ""),
            }
            for r in table
        ]
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "accuracy %": st.column_config.NumberColumn(format="%.1f"),
            "MB": st.column_config.NumberColumn(format="%.2f"),
            "ms": st.column_config.NumberColumn(format="%.2f"),
        },
    )


def starting(name: str, status: str) -> bool:
    """Whether this session started the study's driver in the last minute and it has not taken the study yet."""
    since = st.session_state.get(f"tune-starting-{name}")
    if since is None or status == "running" or time.time() - since > 60:
        st.session_state.pop(f"tune-starting-{name}", None)
        return False
    return True


def draw(name: str) -> None:
    """The study's table and chart, redrawn while it runs; a study that ends reruns the page once."""
    try:
        spec, status, table = study_mod.rows(name)
    except UserError as exc:
        wording.error(exc)
        return
    if starting(name, status):
        status = "starting"
    if status != "running" and st.session_state.get(f"tune-running-{name}"):
        del st.session_state[f"tune-running-{name}"]
        st.rerun(scope="app")
    if status in ("running", "starting"):
        st.session_state[f"tune-running-{name}"] = True
    done = sum(1 for r in table if r["state"] not in ("queued", "training", "exporting", "stopped"))
    st.progress(
        min(done / max(spec.trials, 1), 1.0),
        text=f"{status}: {done} of {spec.trials} trials finished, budget {spec.budget.words()}",
    )
    st.session_state[f"tune-table-{name}"] = table
    trial_table(table)
    picked = chart(spec, table, key=f"tune-chart-{name}")
    if picked is not None:
        st.session_state[f"tune-picked-{name}"] = picked


studies = my_studies()
names = [s[0] for s in studies]
if (shown := st.session_state.pop("tune-show", None)) in names:
    st.session_state["tune-study"] = shown
if st.session_state.get("tune-study") not in names:
    st.session_state.pop("tune-study", None)
choice = st.selectbox("Study", ["New study", *names], key="tune-study", format_func=wording.readable)
if choice == "New study":
    new_study_form()
    st.stop()

name, spec, status, table = next(s for s in studies if s[0] == choice)
st.caption(f"Data: {wording.plain(sources.user_words(spec.data, spec.data))}.")
if spec.space_notes:
    with st.expander("What the search covers here"):
        for note in spec.space_notes:
            wording.text(note)
if starting(name, status):
    status = "starting"
if status in ("running", "starting"):
    if st.button("Stop the study", icon=":material/stop_circle:", help="Trials training now go on; resume later"):
        study_mod.stop(name)
        st.rerun()
elif status == "stopped":
    if error := study_mod.last_error(name):
        wording.error(sources.user_words(f"The study stopped: {error}", spec.data))
    if st.button("Resume the study", icon=":material/play_arrow:"):
        study_mod.start_background(name)
        st.session_state[f"tune-starting-{name}"] = time.time()
        st.rerun()
if status in ("running", "starting"):
    st.fragment(run_every=2.0)(draw)(name)
else:
    draw(name)

table = st.session_state.get(f"tune-table-{name}", table)
finished = [r for r in table if r["accuracy"] is not None and r["job"]]
if finished:
    best = study_mod.best(table)
    by_trial = {r["trial"]: r for r in finished}
    labels = {
        r["trial"]: f"#{r['trial']}: {r['accuracy']:.1%}, {r['mb']:.2f} MB, {r['ms']:.2f} ms"
        + ("" if r["state"] == "done" else " (over budget)")
        for r in finished
    }
    picked = st.session_state.get(f"tune-picked-{name}")
    default = picked if picked in by_trial else (best or finished[0])["trial"]
    order = sorted(by_trial)
    trial = st.selectbox("Trial (or click a point)", order, index=order.index(default), format_func=lambda t: labels[t])
    if best:
        st.caption(f"Best within the budget: trial #{best['trial']}.")
    if st.button("Use this one", type="primary", icon=":material/check_circle:"):
        job_id = by_trial[trial]["job"]
        picker.select_run(job_id)
        st.switch_page("app_pages/runs.py", query_params={"run": job_id})
elif status != "running":
    st.caption(f"No trial finished: {wording.readable(Path(name).name)} has nothing to use yet.")
