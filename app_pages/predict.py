"""Predict: classify many new images with a run's model (a zip, several photos, or a server folder), in the
background; a table with thumbnails, filters, the CSV, and chosen images added to the dataset."""

import base64
import io
from pathlib import Path

import pandas as pd
import streamlit as st
from PIL import Image

from app_pages import access, loop, picker, sources, uploads, wording
from pipeline import data
from pipeline.host.exitcodes import UserError
from pipeline.quality import predict
from pipeline.runs.folder import DamagedFileError, RunFolder

st.title("Predict")
job = picker.pick_run(finished_only=True)
if job is None:
    st.stop()
run = RunFolder(Path(job.run_dir))
editable = access.can_control(job)
try:
    classes = list(run.splits().classes)
    data_folder = run.dataset_record()["scan"]["root"]
except (DamagedFileError, KeyError) as exc:
    wording.error(exc.in_words() if isinstance(exc, DamagedFileError) else "This run's dataset.json has no scan.")
    st.stop()


@st.fragment(run_every=1.0)
def progress() -> None:
    """The running prediction's progress; reruns the page once it finishes."""
    status = predict.background_status(run.root)
    if status["state"] == "running":
        step = status.get("step") or "starting (loading the model)"
        done, _, total = step.removeprefix("classified ").partition("/")
        fraction = int(done) / int(total) if done.isdigit() and total.isdigit() and int(total) else 0.0
        st.progress(min(fraction, 1.0), text=f"Classifying... {wording.plain(step)} ({status['seconds']:.0f} s)")
    elif st.session_state.get(f"predicting-{job.id}"):
        del st.session_state[f"predicting-{job.id}"]
        st.rerun(scope="app")


def chosen_sources() -> tuple[dict[str, str], dict[str, str]] | None:
    """What to classify (each source's path and the name the CSV gives it), and where each such name is on this
    server (for thumbnails and adding images)."""
    kind = st.radio("Images", ["Upload a zip", "Upload photos", "Server folder"], horizontal=True, key="predict-kind")
    if kind == "Upload a zip":
        upload = uploads.file_input("Zip of images (any folders inside)", "uploads", [".zip"], key="predict-zip")
        if upload is None:
            return None
        from pipeline.jobs import quota

        try:
            folder = quota.resolve(upload.path)  # unpacked once; the CLI finds the same folder
        except UserError as exc:
            uploads.refuse(upload, str(exc).replace(upload.path, upload.name))
            return None
        return {upload.path: upload.name}, {upload.name: str(folder)}
    if kind == "Upload photos":
        files = st.file_uploader(
            "Photos", type=[s.lstrip(".") for s in predict.IMAGE_SUFFIXES], accept_multiple_files=True
        )
        saved = [(uploads.saved_upload(f, "uploads"), f.name) for f in files or []]
        saved = [(path, name) for path, name in saved if path]
        if not saved:
            return None
        named = _unique_names([name for _, name in saved])  # two photos called IMG_0001.jpg stay two rows
        return {path: name for (path, _), name in zip(saved, named, strict=True)}, {
            name: path for (path, _), name in zip(saved, named, strict=True)
        }
    root = sources.data_root()
    folders = sorted(str(p.relative_to(root)) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = [f for f in folders if wording.readable(f) == f]
    if not folders:
        wording.info(f"No folders under {root}. Put images there, or set TRANSFER_STUDIO_DATA_ROOT.")
        return None
    picked = (root / st.selectbox(f"Folder under {root} (every image inside, subfolders too)", folders)).resolve()
    return {str(picked): picked.name}, {picked.name: str(picked)}


def _unique_names(names: list[str]) -> list[str]:
    """``names``, a second ``a.jpg`` as ``a (2).jpg`` and so on."""
    out: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in out:
            n += 1
            stem, dot, suffix = name.rpartition(".")
            candidate = f"{stem} ({n}).{suffix}" if dot else f"{name} ({n})"
        out.append(candidate)
    return out


status = predict.background_status(run.root)
if status["state"] == "running":
    st.session_state[f"predicting-{job.id}"] = True  # any session watching it (a reload too) reruns when it ends
if status["state"] == "running" or st.session_state.get(f"predicting-{job.id}"):
    progress()
    st.stop()
if editable:
    chosen = chosen_sources()
    if st.button("Classify", type="primary", disabled=chosen is None, icon=":material/label:"):
        paths, roots = chosen
        predict.start_background(run.root, paths)
        st.session_state[f"roots-{job.id}"] = roots
        st.session_state[f"predicting-{job.id}"] = True
        st.rerun()
else:
    st.caption("Only whoever trained this run can classify with it here; the last result is shown below.")
if status["state"] == "failed":
    wording.error(sources.user_words(f"The prediction failed: {status['error']}", "sample:none"))
if status["state"] != "done" or not (run.root / predict.APP_OUT).exists():
    st.caption("Each image gets its top classes, the margin between the first two, and 'uncertain' below the run's "
               "confidence threshold. Classified in its own process, a batch at a time.")  # fmt: skip
    st.stop()

counts = status["result"]
table = pd.read_csv(run.root / predict.APP_OUT, dtype=str, keep_default_na=False)  # class names stay text
st.subheader(
    f"{counts['classified']} of {counts['images']} images classified"
    + (f", {counts['unreadable']} unreadable" if counts["unreadable"] else "")
)
if counts.get("threshold") is not None:
    st.caption(
        f"{counts['uncertain']} below the run's confidence threshold ({counts['threshold']:.1%}), marked uncertain: "
        "the model only knows its classes, so a photo of anything else still gets one of them."
    )
st.download_button(
    "Download the CSV", (run.root / predict.APP_OUT).read_bytes(), file_name="predictions.csv", mime="text/csv"
)

good = table[table["error"] == ""].copy()
for column in [c for c in good.columns if c.startswith("probability_") or c == "margin"]:
    good[column] = pd.to_numeric(good[column], errors="coerce")
left, right = st.columns(2)
shown_classes = left.multiselect("Predicted class", classes, default=classes, key=f"predict-filter-{job.id}")
at_most = right.slider(
    "Confidence at most", 0.0, 1.0, 1.0, 0.01, key=f"predict-conf-{job.id}", help="Least confident first"
)
view = good[good["class_1"].isin(shown_classes) & (good["probability_1"] <= at_most)]
view = view.sort_values("probability_1", kind="stable")
roots = st.session_state.get(f"roots-{job.id}", {})


def server_file(name: str) -> str | None:
    """The file behind a name in the CSV (``photos/a.jpg``), where this session knows the source's root."""
    head, _, rest = name.partition("/")
    root = roots.get(head)
    if root is None:
        return None
    return str(Path(root) / rest) if rest else root


@st.cache_data(max_entries=2048, show_spinner=False)
def _thumb_url(path: str) -> str | None:
    try:
        pixels = data.load_image(path, 64)
    except (data.DataError, OSError):
        return None
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


PAGE = 50
shown = view.head(PAGE).copy()
table_key = f"predict-table-{job.id}"
shown_now = [(run.root / predict.APP_OUT).stat().st_mtime_ns, list(shown["path"])]
if st.session_state.get(f"{table_key}-rows") != shown_now:  # other rows now: an old selection would pick others
    st.session_state.pop(table_key, None)
    st.session_state[f"{table_key}-rows"] = shown_now
shown.insert(0, "image", [_thumb_url(f) if (f := server_file(p)) else None for p in shown["path"]])
st.caption(f"{len(view)} of {len(good)} images match; the {min(PAGE, len(view))} least confident are shown.")
event = st.dataframe(
    shown,
    hide_index=True,
    width="stretch",
    key=table_key,
    on_select="rerun",
    selection_mode="multi-row",
    column_config={
        "image": st.column_config.ImageColumn("image", width="small"),
        "probability_1": st.column_config.NumberColumn("probability", format="%.3f"),
    },
)
bad = table[table["error"] != ""]
if len(bad):
    with st.expander(f"{len(bad)} unreadable file(s)"):
        st.dataframe(bad[["path", "error"]], hide_index=True, width="stretch")

rows = [r for r in ((event or {}).get("selection", {}).get("rows", []) if event else []) if r < len(shown)]
if editable and rows:
    picked = shown.iloc[rows]
    cls = st.selectbox("Add the selected images to the dataset as", classes, key=f"predict-add-cls-{job.id}")
    files = [(server_file(p), p.split("/")[-1]) for p in picked["path"]]
    known = [(f, n) for f, n in files if f]
    if len(known) < len(files):
        st.caption("Images from an earlier session can be added only after classifying them again.")
    if st.button(f"Add {len(known)} image(s) to {wording.plain(cls)}", disabled=not known, key=f"predict-add-{job.id}"):
        loop.add_files(data_folder, cls, known)
