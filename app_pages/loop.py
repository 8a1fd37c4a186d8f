"""The improvement loop's widgets, shared by the Data, Evaluate and Runs pages (not a page itself).

Find what is wrong (a confusion cell's images, suspected label errors), record corrections as the dataset's
revision (relabel, exclude, add; the original files are never touched), retrain from a run, compare runs.
The work itself is in pipeline.training.evaluate, pipeline.quality.label_issues, pipeline.data.revision and
pipeline.quality.compare; label-error search and training run as their own processes, never in the app's.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages import access, picker, sources, uploads, wording
from pipeline import data
from pipeline.data import revision
from pipeline.host import paths
from pipeline.host.exitcodes import UserError

GRID_COLUMNS = 4


# === Finding what is wrong ===


def confusion_matrix(result: dict, key: str) -> tuple[str, str] | None:
    """The confusion matrix; a click on a cell selects it. Returns the selected (true, predicted) or None.

    Drawn as one square marker per cell: Streamlit's selection events do not fire on Plotly heatmaps
    (streamlit/streamlit#8760), and do on scatter points.
    """
    labels, matrix = result["labels"], result["confusion_matrix"]
    names = [wording.chart_label(c) for c in labels]  # Plotly reads a few HTML tags: entities keep names literal
    cells = [(t, p) for t in range(len(labels)) for p in range(len(labels))]
    counts = [matrix[t][p] for t, p in cells]
    top = max(max(counts), 1)
    size = max(14, min(60, 420 // max(len(labels), 1)))
    fig = go.Figure(
        go.Scatter(
            x=[names[p] for _, p in cells],
            y=[names[t] for t, _ in cells],
            mode="markers+text",
            text=[str(c) for c in counts],
            textfont=dict(color=["white" if c > top / 2 else "black" for c in counts]),
            marker=dict(
                symbol="square",
                size=size,
                color=counts,
                colorscale="Blues",
                cmin=0,
                cmax=top,
                line=dict(width=1, color="#ccc"),
            ),
            customdata=[[labels[t], labels[p], c] for (t, p), c in zip(cells, counts, strict=True)],
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[2]} image(s)<extra></extra>",
        )
    )
    fig.update_xaxes(
        type="category",
        categoryorder="array",
        categoryarray=names,
        title="predicted",
        side="bottom",
        tickangle=-45 if sum(map(len, labels)) > 40 else 0,
    )
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=names[::-1], title="true")
    fig.update_layout(
        title="Confusion matrix (click a cell to see its images)",
        height=140 + size * len(labels),
        margin=dict(t=50, b=40),
        clickmode="event+select",
        dragmode=False,
    )
    event = st.plotly_chart(fig, width="stretch", on_select="rerun", selection_mode="points", key=key)
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if points:
        true, predicted, _ = points[0]["customdata"]
        return true, predicted
    return None


def confused_pairs(result: dict, key: str) -> tuple[str, str] | None:
    """The most confused class pairs; selecting a row selects that cell."""
    pairs = result.get("confused_pairs", [])
    if not pairs:
        return None
    st.markdown("**Most confused pairs** (select a row to see its images)")
    table = pd.DataFrame(pairs).rename(columns={"true": "true class", "predicted": "taken for"})
    event = st.dataframe(
        table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row", key=key
    )
    rows = event.selection.rows if event else []
    return (pairs[rows[0]]["true"], pairs[rows[0]]["predicted"]) if rows else None


def widget_key(base: str, selection: str, name: str) -> str:
    """The key of widget ``name`` of the selection model ``selection``: ``base``, then a new one each time
    :func:`newest` drops the widget's selection (a new widget is drawn without it)."""
    generation = st.session_state.get(f"{selection}-generations", {}).get(name, 0)
    return base if not generation else f"{base}-{generation}"


def newest(key: str, **selections):
    """One selection model for several widgets that select the same thing: the one changed last wins, and the
    others are drawn again without theirs (a highlighted cell beside another row's images would mislead).

    Each keyword is a widget's current selection (None when it has none), drawn with the key
    :func:`widget_key` gives it. Returns (name, value) of the newest selection still held, or None.
    :func:`clear_selection` forgets it (and clears every widget) until a widget changes again.
    """
    before = st.session_state.get(key, {"values": {}, "chosen": None})
    changed = [n for n, v in selections.items() if v != before["values"].get(n) and v is not None]
    chosen = changed[-1] if changed else before["chosen"]
    if chosen is not None and selections.get(chosen) is None:  # that widget was deselected
        chosen = None
    stale = [n for n, v in selections.items() if n != chosen and v is not None]
    st.session_state[key] = {"values": {n: None if n in stale else v for n, v in selections.items()}, "chosen": chosen}
    if stale:
        _redraw_without_selection(key, stale)
    return (chosen, selections[chosen]) if chosen else None


def _redraw_without_selection(key: str, names: list[str]) -> None:
    generations = st.session_state.setdefault(f"{key}-generations", {})
    for name in names:
        generations[name] = generations.get(name, 0) + 1
    st.rerun()


def clear_selection(key: str) -> None:
    """No selection, and no widget of the model shows one (called before a rerun)."""
    state = st.session_state.get(key)
    if state is None:
        return
    held = [n for n, v in state["values"].items() if v is not None]
    state["chosen"] = None
    state["values"] = dict.fromkeys(state["values"])
    generations = st.session_state.setdefault(f"{key}-generations", {})
    for name in held:
        generations[name] = generations.get(name, 0) + 1


# === Corrections ===


@st.cache_data(max_entries=512, show_spinner=False)
def _thumb(path: bytes, size: int = 160):  # path: bytes (wording.fs_key), a cache key any file name can be
    return data.load_image(os.fsdecode(path), size)


@st.cache_resource(max_entries=2, show_spinner=False)
def _explainer(run_dir: str, stamp: float):
    """The run's Grad-CAM explainer, its model loaded once per file version (``stamp``: model.keras's mtime)."""
    from pipeline.quality.explain import Explainer
    from pipeline.runs.folder import RunFolder, load_model

    return Explainer(load_model(RunFolder(Path(run_dir))))


def why_image(run_dir: str | Path, pixels: np.ndarray) -> np.ndarray:
    """One image (raw RGB at the model's size) with the Grad-CAM heatmap of its top class blended over it.

    Raises:
        DamagedFileError, OSError: the run's model cannot be read.
    """
    from pipeline.quality import explain

    model_file = Path(run_dir) / "model.keras"
    found = _explainer(str(run_dir), model_file.stat().st_mtime).explain(pixels[None])[0]
    return np.asarray(explain.overlay(pixels, found))


@st.cache_data(max_entries=256, show_spinner=False)
def _why_file(run_dir: str, stamp: float, path: bytes, size: int) -> np.ndarray:  # stamp: a new model, new heatmaps
    return why_image(run_dir, data.load_image(os.fsdecode(path), size))


def _report(folder: str) -> data.ScanReport:
    """The dataset as scanned (before corrections): what a correction is checked against."""
    _, report = sources.resolve_and_scan(folder)
    return data.ScanReport.from_dict(report)


TOAST = "loop-correction-toast"


def _correct(folder: str, action: str, path: str, cls: str | None = None) -> None:
    rev = revision.Revision(folder)
    try:
        if action == "relabel":
            rev.relabel(_report(folder), path, cls)
            said = f"Recorded: {path} is {cls}. Retrain to use it."
        else:
            rev.exclude(_report(folder), path)
            said = f"Recorded: {path} is left out. Retrain to use it."
    except UserError as exc:  # DataError, or a full disk
        wording.error(exc)
        return
    st.session_state[TOAST] = wording.plain(said)  # shown by the rerun: a toast before st.rerun() is lost
    st.rerun()  # the cards above were drawn before the correction: drawn again, they show it


def image_grid(
    rows: list[dict],
    *,
    folder: str,
    classes: list[str],
    editable: bool,
    key: str,
    suggested_key: str | None = None,
    why: tuple[str, int] | None = None,
) -> None:
    """Images with their label and prediction; owners get Relabel / Exclude under each.

    Args:
        rows: Dicts with ``file``, ``path`` (relative to ``folder``), a label under ``true`` or ``label``,
            and a prediction under ``predicted``/``probability`` or ``suggested``/``suggested_probability``.
        suggested_key: The key of the class a relabel defaults to (the prediction or the suggestion).
        why: (run folder, image size): each image shown with the Grad-CAM heatmap of the run's top class.
    """
    if said := st.session_state.pop(TOAST, None):
        st.toast(said)
    cols = st.columns(GRID_COLUMNS)
    effect = corrections_in_effect(folder)
    for i, r in enumerate(rows):
        label = r.get("true", r.get("label"))
        now = effect.get(r["path"])  # a correction recorded since this evaluation
        guess = r.get("predicted", r.get("suggested"))
        prob = r.get("probability", r.get("suggested_probability", 0.0))
        with cols[i % GRID_COLUMNS]:
            try:
                if why is None:
                    st.image(_thumb(wording.fs_key(r["file"])), width="stretch")
                else:
                    stamp = (Path(why[0]) / "model.keras").stat().st_mtime
                    st.image(_why_file(why[0], stamp, wording.fs_key(r["file"]), why[1]), width="stretch")
            except data.DataError:
                st.caption("(image no longer available)")
            except (UserError, OSError) as exc:  # the run's model cut short or gone: no heatmap, the rest stays
                st.caption(f"(no heatmap: {wording.plain(getattr(exc, 'in_words', lambda: 'the model is gone')())})")
            st.caption(
                f"labelled **{wording.plain(label)}**, looks like **{wording.plain(guess)}**"
                + (f" ({prob:.0%})" if prob is not None else "")
                + (f", score {r['score']:.2f}" if r.get("score") is not None else "")
            )
            if now == EXCLUDED:
                st.caption(":orange[**excluded** since (retrain to use it)]")
            elif now:
                st.caption(f":orange[**relabelled {wording.plain(now)}** since (retrain to use it)]")
            wording.text(Path(r["path"]).name)
            if not editable or Path(r["path"]).is_absolute():
                continue
            default = r.get(suggested_key or "predicted", guess)
            with st.popover("Fix this label", width="stretch"):
                choice = st.selectbox(
                    "Class", classes, index=classes.index(default) if default in classes else 0, key=f"{key}-cls-{i}"
                )
                if st.button("Relabel", key=f"{key}-relabel-{i}", disabled=choice == label):
                    _correct(folder, "relabel", r["path"], choice)
                if st.button("Exclude from the data", key=f"{key}-exclude-{i}"):
                    _correct(folder, "exclude", r["path"])


EXCLUDED = object()


def corrections_in_effect(folder: str) -> dict:
    """Dataset path -> the class a relabel in effect gives it, or EXCLUDED."""
    out: dict = {}
    for e in revision.Revision(folder).active():
        if e["op"] == "relabel":
            out[e["path"]] = e["class"]
        elif e["op"] == "exclude":
            out[e["path"]] = EXCLUDED
    return out


def corrections_list(folder: str, editable: bool, key: str) -> None:
    """Every correction in effect, newest first, each with its own Undo (the owner's)."""
    rev = revision.Revision(folder)
    active = rev.active()
    if not active:
        return
    with st.expander(f"The {len(active)} correction(s) in effect", expanded=False):
        for e in reversed(active):
            what = {
                "relabel": lambda e: f"relabelled {Path(e['path']).name} as {e['class']}",
                "exclude": lambda e: f"excluded {Path(e['path']).name}",
                "add": lambda e: f"added {Path(e['path']).name} to {e['class']}",
            }[e["op"]](e)
            left, right = st.columns([5, 1])
            left.text(wording.readable(f"#{e['id']} {what}"))
            if editable and right.button("Undo", key=f"{key}-undo-{e['id']}"):
                try:
                    rev.undo(e["id"])
                except UserError as exc:
                    wording.error(exc)
                else:
                    st.rerun()


def revision_summary(folder: str, used: int | None = None) -> int:
    """A line on the dataset's corrections (and undo for the owner's last one); returns the revision number."""
    rev = revision.Revision(folder)
    number = rev.number
    if not number:
        return 0
    active = rev.active()
    text = f"The dataset has {len(active)} correction(s) in effect (revision {number})"
    if used is not None and used != number:
        text += f"; this run was trained on revision {used}: retrain to use the newer one"
    st.caption(text + ". The original files are unchanged.")
    return number


def add_images(folder: str, scanned: dict, cls: str, files: list, *, force: bool = False) -> None:
    """Adds uploaded or camera images to class ``cls`` of the dataset's revision (copied beside the dataset):
    all of them or, when one is not an image or is a copy of one the dataset has (unless ``force``), none."""
    report = data.ScanReport.from_dict(scanned)
    rev = revision.Revision(folder)
    given = []
    try:
        for u in files:
            given.append((uploads.saved_upload(u, "uploads"), getattr(u, "name", None) or "photo.jpg"))
        added = rev.add_all(report, cls, given, force=force)
    except UserError as exc:  # DataError, or a full disk: nothing was added, and the uploads are not kept
        wording.error(exc)
        from pipeline.jobs import quota

        referenced = quota.referenced()
        removed = {
            path for path, _ in given if Path(path).resolve() not in referenced and paths.remove_upload(path, "uploads")
        }
        saved = st.session_state.get("uploads", {})  # saved_upload's record: forget only the files removed
        for file_id in [f for f, kept in saved.items() if kept in removed]:
            del saved[file_id]
        return
    st.session_state["added"] = st.session_state.get("added", 0) + 1  # new keys: the pickers start empty
    st.toast(wording.plain(f"Added {len(added)} image(s) to {cls}."))
    st.rerun()


def add_files(folder: str, cls: str, given: list[tuple[str, str]]) -> None:
    """Adds files on this server (``given``: path, the name the person knows it by) to class ``cls`` of the
    dataset's revision: all of them or, when one is refused (a copy of a dataset image, not an image), none."""
    rev = revision.Revision(folder)
    try:
        added = rev.add_all(_report(folder), cls, given)
    except UserError as exc:  # DataError, or a full disk: nothing was added
        wording.error(exc)
        return
    st.toast(wording.plain(f"Added {len(added)} image(s) to {cls}. Retrain to use them."))


def latest_finished_run(source: str):
    """This visitor's newest finished run on ``source`` (None without one)."""
    from pipeline.data import absolute_source

    wanted = absolute_source(source)
    runs = [j for j in access.my_jobs(access.backend().list()) if j.state == "done" and j.source == wanted]
    return max(runs, key=lambda j: j.created, default=None)


def undo_button(folder: str, key: str) -> None:
    rev = revision.Revision(folder)
    if rev.active() and st.button("Undo the last correction", key=key, icon=":material/undo:"):
        try:
            rev.undo()
        except UserError as exc:  # undone meanwhile in another tab, or a full disk
            wording.error(exc)
            return
        st.rerun()


# === Label errors ===


@st.fragment(run_every=1.0)
def background_progress(flag: str, status_of, text: str, expected_seconds: float) -> None:
    """Progress of a command a page started in the background (``status_of()``: where it stands, with its log's
    latest line); reruns the whole page once it finishes. ``flag``: the session key set when it was started."""
    status = status_of()
    if status["state"] == "running":
        step = status.get("step")
        st.progress(
            min(status["seconds"] / expected_seconds, 0.95),
            text=f"{text} ({status['seconds']:.0f} s" + (f"; {wording.plain(step)})" if step else ")"),
        )
    elif st.session_state.get(flag):
        del st.session_state[flag]
        st.rerun(scope="app")


def label_issues_panel(run_dir: str, folder: str, classes: list[str], editable: bool, key: str) -> None:
    """Suspected label errors of a run's train/val images, with a button to look for them (owners)."""
    from pipeline.quality import label_issues

    st.subheader("Suspected label errors")
    status = label_issues.background_status(run_dir)
    if status["state"] == "running":
        st.session_state[f"searching-{run_dir}"] = True  # a reload or another session reruns when it ends too
    if status["state"] == "running" or st.session_state.get(f"searching-{run_dir}"):
        background_progress(
            f"searching-{run_dir}",
            functools.partial(label_issues.background_status, run_dir),
            "Looking for suspected label errors: features of every train/val image, then 5 fold heads...",
            60,
        )
        return
    if status["state"] == "failed":
        wording.error(sources.user_words(f"The label-error search failed: {status['error']}", "sample:none"))
    if editable and st.button(
        "Find suspected label errors" if status["state"] != "done" else "Search again",
        key=f"{key}-start",
        icon=":material/search:",
    ):
        label_issues.start_background(run_dir)
        st.session_state[f"searching-{run_dir}"] = True
        st.rerun()
    if status["state"] != "done":
        st.caption(
            "Every train/val image is scored by heads that never saw its label (5-fold, on the frozen "
            "pretrained features), and cleanlab ranks the labels those heads contradict."
        )
        return
    result = status["result"]
    issues = result["issues"]
    st.caption(
        f"{len(issues)} suspected among {result['images']} images ({result['features']}; "
        f"{result['seconds']:.0f} s). Lowest score first: the likeliest wrong labels."
    )
    image_grid(
        issues[:24], folder=folder, classes=classes, editable=editable, key=f"{key}-issues", suggested_key="suggested"
    )
    for c in result.get("in_two_classes", []):
        wording.warning(f"In two classes: {c['path']} ({c['class']}); exclude the copy in the wrong class to use it.")


def dataset_map_panel(run_dir: str, folder: str, classes: list[str], editable: bool, key: str) -> None:
    """Every image of the run's data on a 2-D map of its features; a click opens the image with its actions."""
    from pipeline.quality import dataset_map

    st.subheader("Dataset map")
    status = dataset_map.background_status(run_dir)
    if status["state"] == "running":
        st.session_state[f"mapping-{run_dir}"] = True  # a reload or another session reruns when it ends too
    if status["state"] == "running" or st.session_state.get(f"mapping-{run_dir}"):
        background_progress(
            f"mapping-{run_dir}", functools.partial(dataset_map.background_status, run_dir), "Drawing the map...", 90
        )
        return
    if status["state"] == "failed":
        wording.error(sources.user_words(f"The dataset map failed: {status['error']}", "sample:none"))
    if status["state"] != "done":
        st.caption(
            "Every image of this run's data placed by what the trained model sees in it (t-SNE of the pooled "
            "features): look for images among another class's, suspected label errors (crosses) and near-copies "
            "(diamonds)."
        )
        if editable and st.button("Draw the dataset map", key=f"{key}-start", icon=":material/scatter_plot:"):
            dataset_map.start_background(run_dir)
            st.session_state[f"mapping-{run_dir}"] = True
            st.rerun()
        return
    result = status["result"]
    st.caption(
        f"{result['images']} images: {result['issues']} suspected label error(s) (crosses), "
        f"{result['near_duplicates']} near-copies (diamonds); {result['seconds']['total']:.0f} s to draw. "
        "Click a point to see the image" + (" and fix its label." if editable else ".")
    )
    event = st.plotly_chart(
        dataset_map.figure(result), key=f"{key}-map", on_select="rerun", selection_mode="points", width="stretch"
    )
    picked = [p.get("customdata") for p in ((event or {}).get("selection", {}).get("points", []) if event else [])]
    picked = [int(i[0] if isinstance(i, list) else i) for i in picked if i is not None]
    if picked:
        points = [result["points"][i] for i in picked[:8]]
        rows = [{**p, "suggested": p["suggested"] or p["label"], "suggested_probability": None} for p in points]
        image_grid(
            rows, folder=folder, classes=classes, editable=editable, key=f"{key}-picked", suggested_key="suggested"
        )
        for p in points:
            if p["near_copy_of"]:
                wording.warning(f"{p['path']} looks like a copy of {p['near_copy_of']}: exclude one of them.")


# === Retrain and compare ===


def retrain_button(job, key: str) -> None:
    """Submits a retrain from this run on the dataset's current revision (fine-tune phase) and opens it."""
    from pipeline.config import ConfigError
    from pipeline.runs.folder import RunFolderError
    from pipeline.training import presets

    if not st.button("Retrain with these fixes", key=key, type="primary", icon=":material/replay:"):
        return
    try:
        cfg = presets.config_for(job.source, parent=job.run_dir)
    except (ConfigError, RunFolderError) as exc:
        wording.error(exc)
        return
    new_id = access.launch(job.source, cfg)
    if new_id:
        st.session_state["run"] = new_id
        st.switch_page("app_pages/runs.py", query_params={"run": new_id})


def compare_view(jobs: list, key: str) -> None:
    """Pick 2-4 runs: validation curves overlaid, the settings they differ in, results and export sizes."""
    from pipeline.quality import compare

    if len(jobs) < 2:
        return
    labels = picker.run_titles(jobs)
    chosen = st.multiselect(
        "Compare runs (2 to 4)", [j.id for j in jobs], format_func=labels.get, max_selections=compare.MAX_RUNS, key=key
    )
    if len(chosen) < 2:
        return
    by_id = {j.id: j for j in jobs}
    result = compare.compare([by_id[i].run_dir for i in chosen])
    names = [labels[i] for i in chosen]
    fig = go.Figure()
    for name, curve in zip(names, result["curves"], strict=True):
        if curve:  # a retrain's epochs counted on from its parent's (x), on whole-number ticks
            df = pd.DataFrame(curve)
            fig.add_trace(
                go.Scatter(x=df["x"], y=df["val_accuracy"], name=wording.chart_label(name), mode="lines+markers")
            )
    fig.update_layout(
        title="Validation accuracy",
        height=320,
        margin=dict(t=40, b=20),
        xaxis_title="epoch (a retrain continues after its parent's)",
        xaxis=dict(tickformat="d", dtick=1),
    )
    st.plotly_chart(fig, width="stretch", key=f"{key}-curves")
    for run, name in zip(result["runs"], names, strict=True):
        if run["parent"]:
            parent = next(
                (labels[j.id] for j in jobs if str(Path(j.run_dir).resolve()) == run["parent"]),
                Path(run["parent"]).name,
            )
            st.caption(f"{wording.plain(name)} was retrained from {wording.plain(parent)}")
    if result.get("val_differs"):
        st.warning(f"Not like for like: {result['val_differs']}.")
    summary = pd.DataFrame(
        {
            "run": names,
            "data revision": [r["revision"] for r in result["runs"]],
            "epochs": [r["epochs"] for r in result["runs"]],
            "best val accuracy": [r["best_val_accuracy"] for r in result["runs"]],
            "accuracy": [r["accuracy"] for r in result["runs"]],
            "measured on": [r["eval_split"] for r in result["runs"]],
        }
    )
    st.dataframe(summary, hide_index=True, width="stretch")
    if result["differences"]:
        st.markdown("**Settings that differ**")
        st.dataframe(pd.DataFrame(result["differences"], index=names).T.astype(str), width="stretch")
    else:
        st.caption("Same settings.")
    if result["per_class_f1"]:
        st.markdown("**F1 per class**")
        st.dataframe(pd.DataFrame(result["per_class_f1"], index=names).T, width="stretch")
    if result["export_sizes"]:
        st.markdown("**Export sizes (KB)**")
        sizes = {f: [v / 1024 if v else None for v in values] for f, values in result["export_sizes"].items()}
        st.dataframe(pd.DataFrame(sizes, index=names).T.round(1), width="stretch")
