"""Runs: every job with its status; for one run, live curves, an epoch table and cancel."""

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app_pages import access, estimates, loop, picker, visitor, wording
from pipeline import config as config_mod
from pipeline.host import quiet
from pipeline.jobs.store import NAME_MAX
from pipeline.quality import estimate
from pipeline.runs import events
from pipeline.runs.events import stage
from pipeline.runs.folder import DamagedFileError, RunFolder

st.title("Runs")


@st.fragment(run_every=2.0)
def all_jobs() -> None:
    jobs = access.my_jobs(access.backend().list())  # your runs (every run with the host's admin key)
    if jobs:
        st.subheader("All runs" if visitor.visitor().admin else "Your runs")
        titles = picker.run_titles(jobs)
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "name": titles[j.id],
                        "id": j.id[:8],
                        "state": j.state,
                        "source": wording.readable(Path(j.source).name),
                        "created": pd.Timestamp(j.created, unit="s"),
                        "error": j.error or "",
                    }
                    for j in jobs
                ]
            ),
            hide_index=True,
            width="stretch",
        )


all_jobs()
job = picker.pick_run()
if job is None:
    st.stop()


def rename(current) -> None:
    """The run's name, editable by its owner (Enter saves it, before the page is drawn again: every title on it
    is the new one)."""
    key, said_key = f"name-{current.id}", f"name-said-{current.id}"

    def save() -> None:
        try:
            job = access.backend().rename(current.id, st.session_state[key])
            st.session_state[said_key] = ("toast", wording.plain(f"Renamed to {job.title}."))
        except ValueError as exc:  # JobError: empty, too long, a line break
            st.session_state[said_key] = ("error", str(exc))

    st.text_input(
        "Name",
        value=current.title,
        key=key,
        max_chars=NAME_MAX,
        on_change=save,
        help="What this run is called on every page; its id stays as it is. Press Enter to save.",
    )
    kind, text = st.session_state.pop(said_key, (None, None))
    if kind == "toast":
        st.toast(text)
    elif kind == "error":
        wording.error(text)


if access.can_control(job):
    rename(job)
    st.caption(
        "Share this run: whoever opens this link sees its curves, evaluation and finished exports; only you "
        "can cancel, resume, export or delete it. Copy it with the button at the right of the box."
    )
else:  # a visitor on a share link: what they can do, in their own words
    st.info(
        "A run shared with you: you can follow its curves and see its evaluation and exports; only whoever "
        "launched it can change it. Pass the link on with the button at the right of the box."
    )
st.code(picker.share_url(job.id), language=None, wrap_lines=True)  # st.code draws a copy button


def curves(epochs: list[dict]) -> go.Figure:
    df = pd.DataFrame(epochs)
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "accuracy", "learning rate"))
    x = df["global_epoch"]
    for col, name in ((1, "loss"), (2, "accuracy")):
        fig.add_trace(go.Scatter(x=x, y=df[name], name=f"train {name}", mode="lines+markers"), row=1, col=col)
        fig.add_trace(go.Scatter(x=x, y=df[f"val_{name}"], name=f"val {name}", mode="lines+markers"), row=1, col=col)
    fig.add_trace(go.Scatter(x=x, y=df["lr"], name="lr", mode="lines+markers"), row=1, col=3)
    fine = df[df["phase"] == "fine_tune"]
    if not fine.empty:
        boundary = float(fine["global_epoch"].min()) - 0.5
        for col in (1, 2, 3):
            fig.add_vline(x=boundary, line_dash="dash", line_color="gray", row=1, col=col)
        fig.add_annotation(
            x=boundary,
            y=1.0,
            yref="paper",
            yanchor="top",
            xanchor="left",
            text=" fine-tuning",
            showarrow=False,
            font=dict(color="gray"),
        )
    fig.update_yaxes(type="log", row=1, col=3)  # head and fine-tune rates are 100x apart
    fig.update_layout(
        height=360, margin=dict(t=40, b=20), legend=dict(orientation="h", y=-0.2), modebar=dict(orientation="v")
    )  # a horizontal modebar covers the third title
    fig.update_xaxes(tickformat="d", dtick=1 if len(df) <= 12 else None)  # epochs, never 1.5
    return fig


def delete_button(current) -> None:
    """Delete, confirmed by a second click: the run folder, its exports and the model files it served go."""
    if not st.toggle("Delete this run...", key=f"delete-ask-{current.id}"):
        return
    if st.button("Delete the run and its files", type="primary", icon=":material/delete:", key=f"delete-{current.id}"):
        if not access.can_control(access.backend().status(current.id)):
            return
        try:
            access.backend().delete(current.id)
        except ValueError as exc:  # JobError: it was resumed meanwhile
            wording.error(exc)
            return
        picker.select_run(None)
        st.rerun(scope="app")


def _config(job):
    try:
        return job.run_config
    except (config_mod.ConfigError, TypeError):
        return None


def _time_left(current, run: RunFolder, cfg, done: dict) -> str:
    if not current.active:
        return "none" if current.state == "done" else "stopped"
    if done["seconds_left"] is not None:
        return estimate.describe(done["seconds_left"])
    est = _estimate(cfg, run)
    if est is None:
        return "after the first epoch"
    return estimate.describe(est.seconds) + ("" if est.measured else " (first guess)")


def _estimate(cfg, run: RunFolder):
    """The Train page's estimate for this run (None before its dataset.json is written)."""
    if not run.dataset.exists():
        return None
    try:
        splits = run.splits()
    except DamagedFileError:
        return None
    return estimates.for_run(cfg, len(splits.train), len(splits.val), len(splits.test))


@st.fragment(run_every=1.0)
def live(job_id: str) -> None:
    try:
        current = access.backend().status(job_id)
    except ValueError:  # JobError: deleted meanwhile (here or in another tab)
        st.info("This run was deleted.")
        return
    run = RunFolder(Path(current.run_dir))
    lines = run.metrics_lines()
    epochs = run.epochs()  # trained epochs (a rollback line voids the ones trained again)
    cfg = _config(current)
    c1, c2, c3, c4 = st.columns([1, 1, 1, 3])
    c1.metric("State", current.state)
    if cfg is not None:
        done = estimate.progress(lines, cfg, _estimate(cfg, run) if current.state == "running" else None)
        c2.metric(
            "Epochs",
            f"{done['epochs_done']} / {done['epochs_total']}",
            help="Epochs finished of those planned (early stopping can end a phase sooner).",
        )
        c3.metric(
            "Time left",
            _time_left(current, run, cfg, done),
            help="From this run's own measured epochs; before its first epoch, the Train page's estimate.",
        )
    else:
        c2.metric("Epochs", len(epochs))
    for note in [m for m in lines if m.get("event") == events.WARNING][-3:]:  # a damaged file fallen back from, etc.
        wording.warning(note.get("message", ""))
    if current.state == "failed":
        wording.error(f"Training failed: {current.error}")
        if "could not be downloaded" in (current.error or ""):
            st.info(
                "This server cannot download pretrained weights. On the Train page, set Weights to "
                "**upload a weights file** and give it the file named above, or ask whoever runs the server "
                "to copy it into the Keras cache."
            )
    mine = access.can_control(current)  # cancel, resume and delete: the owner (or the admin) only
    if mine and current.state in ("failed", "cancelled"):  # said beside it, not in a tooltip: the button takes
        act, why = st.columns([1, 4], vertical_alignment="center")  # Cancel's place, under the pointer
        resume = act.button("Resume", icon=":material/play_circle:", key=f"resume-{job_id}")
        why.caption("Resume queues the job again: training continues from its last finished epoch.")
    else:
        resume = False
    if resume:
        try:
            access.backend().resume(job_id)
            st.toast("Queued again: training continues from its last finished epoch.")
        except ValueError as exc:  # JobError: the job changed state meanwhile
            wording.error(str(exc))
    if current.active:
        text, fraction = stage(current.state, lines, cfg)
        if fraction is None:
            c4.info(text, icon=":material/hourglass_top:")  # a stage with no count: no bar to sit full
        else:
            c4.progress(fraction, text=text)
        if mine and st.button("Cancel", icon=":material/stop_circle:", key=f"cancel-{job_id}"):
            access.backend().cancel(job_id)
            st.toast("Stopping at the next batch; the last finished epoch is kept.")
    if epochs:
        st.plotly_chart(curves(epochs), width="stretch", key=f"curves-{job_id}")
        table = pd.DataFrame(epochs)[
            ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second"]
        ]
        st.dataframe(table, hide_index=True, width="stretch")
    if mine and current.state in ("done", "failed", "cancelled"):
        delete_button(current)
    if current.state in ("done", "failed", "cancelled"):
        log = run.root / "train.log"
        if log.exists():
            with st.expander("Training log"):
                st.code(quiet.clean(log.read_text(errors="replace"))[-5000:])  # without TensorFlow's start-up noise


live(job.id)

finished = [j for j in access.my_jobs(access.backend().list()) if j.state == "done"]
if len(finished) >= 2:
    with st.expander("Compare runs", expanded=bool(st.session_state.get("compare-runs"))):
        loop.compare_view(finished, key="compare-runs")
