"""Export: choose formats, export in the background with progress, see the format table, download each format."""

import io
import time
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import access, picker, wording
from export import bundle, model_card, task
from pipeline.runs.folder import RunFolder

st.title("Export")
job = picker.pick_run(finished_only=True)
if job is None:
    st.stop()
run = RunFolder(Path(job.run_dir))
formats = st.multiselect(
    "Formats", bundle.FORMATS + bundle.OPTIONAL_FORMATS, default=list(bundle.FORMATS), key="export_formats"
)
st.number_input(
    "Verification images",
    min_value=10,
    max_value=5000,
    value=200,
    step=50,
    key="export_verify_images",
    help="At most this many held-out images go through every format in its own runtime (more: a "
    "sharper agreement figure, a longer export).",
)


def start_export(run_dir: Path) -> None:
    """Runs before the rerun draws the page, so the button is already disabled and progress shows."""
    if not access.can_control(job):  # a share link is read-only: the button is disabled, and refused here too
        return
    try:
        task.start(
            run_dir,
            bundle.parse_formats(",".join(st.session_state["export_formats"])),
            verify_images=int(st.session_state["export_verify_images"]),
        )
    except OSError as exc:  # e.g. a run folder this server cannot write to
        st.session_state["export_start_error"] = f"Could not start the export in {run_dir}: {exc.strerror or exc}."


status = task.read_status(run.root)
running = bool(status and status["state"] == "running")
st.button(
    "Export and verify",
    type="primary",
    icon=":material/package_2:",
    disabled=running or not formats or not access.can_control(job),
    on_click=start_export,
    args=(run.root,),
    help="Runs in the background: you can leave this page, refresh, or share the link meanwhile.",
)
if not access.can_control(job):
    st.caption("Only this run's owner can export it; its finished exports can be downloaded below.")


@st.fragment(run_every=1.0)
def export_progress() -> None:
    """Follows the background export; when it ends, reruns the page to show the results."""
    now = task.read_status(run.root)
    if now is None or now["state"] != "running":
        st.rerun(scope="app")
    step = now.get("step", "starting")
    st.progress(
        min(now.get("done", 0) / max(now.get("total", 1), 1), 1.0),
        text=f"Exporting {', '.join(now.get('formats', []))}: {step}... "
        f"({time.time() - now.get('started', time.time()):.0f} s)",
    )


if message := st.session_state.pop("export_start_error", None):
    wording.error(message)
if running:
    export_progress()
    st.stop()
if status and status["state"] in ("failed", "interrupted"):
    wording.error(f"The last export did not finish: {status.get('error')}")
elif status and status["state"] == "gate_failed":
    st.error("Exported, but a verification gate failed: do not ship the failing format (see the result column).")

manifest = bundle.read_manifest(run.exports)
if manifest is None:
    st.info("No export yet for this run.")
    st.stop()
result = bundle.read_verify(run.exports)
if result is not None:
    formats = dict(result["formats"])
    reference = formats.pop("keras", None)  # the model every format is compared with: a caption, not a row
    rows = [
        {
            "format": f,
            "runtime": r.get("runtime", ""),
            "size (KB)": r["size_bytes"] / 1024 if r.get("size_bytes") else None,
            "ms / image": r.get("latency_ms"),
            "agreement": 100 * r["agreement"] if r.get("agreement") is not None else None,
            "accuracy change": r.get("accuracy_change"),
            "near-ties": "-" if r.get("near_tie_flips") is None else str(r["near_tie_flips"]),  # float32: none
            "max |dp|": r.get("max_abs_diff"),
            "result": "ok" if r["passed"] else "FAIL",
        }
        for f, r in formats.items()
    ]
    st.subheader(f"Verification on {result['images']} held-out images: the formats to choose from")
    if reference:
        st.caption(
            f"Each file run in its own runtime and compared with the trained Keras model "
            f"(accuracy {reference['accuracy']:.4f}, {reference['latency_ms']:.2f} ms per image at batch 1); "
            "MediaPipe rows compare MediaPipe's ImageClassifier with LiteRT on the same TFLite file. "
            "A near-tie is a changed top class where Keras's top two were closer than the format's "
            "numeric error: reported, not counted."
        )
    if not result["passed"] and not (status and status["state"] == "gate_failed"):
        st.error("A verification gate failed: do not ship the failing format (see the result column).")
    number = st.column_config.NumberColumn
    table = pd.DataFrame(rows)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "size (KB)": number(format="%.0f"),
            "ms / image": number(format="%.2f", help="Batch 1, in its own runtime"),
            "agreement": number("top-1 agreement", format="%.2f%%", help="Same top class as the Keras model"),
            "accuracy change": number(format="%+.2f", help="Accuracy points against the Keras model"),
            "near-ties": st.column_config.TextColumn(
                help="Changed top classes where Keras's top two were closer "
                "than the format's numeric error (float32 formats: -)"
            ),
            "max |dp|": number(format="%.1e", help="Largest probability difference"),
        },
    )
    notes = [(f, r["note"]) for f, r in formats.items() if r.get("note")]
    if notes:  # whole, under the table (a table cell cuts a long note off)
        st.markdown("**Notes**")
        for fmt, note in notes:
            st.caption(wording.plain(f"{fmt}: {note}"))


card = manifest.get("model_card")
if card:
    with st.expander("Model card (MODEL_CARD.md in the bundle)"):
        st.markdown(model_card.render(card, name=wording.plain, image=False))
        if (matrix := run.exports / model_card.MATRIX_NAME).exists():
            st.image(str(matrix), caption="Confusion matrix (confusion_matrix.png in the bundle)", width=420)


def _file_bytes(path: Path):
    """Read when the button is clicked (a deferred download), not on every rerun."""
    return lambda: path.read_bytes()


def _folder_zip(path: Path):
    """A folder zipped on its own, when its button is clicked."""

    def build() -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                zf.write(f, f.relative_to(path.parent).as_posix())
        return buf.getvalue()

    return build


st.subheader("Download")
zip_path = run.exports / bundle.ZIP_NAME
st.download_button(
    "Whole bundle (.zip)",
    _file_bytes(zip_path),
    file_name=f"transfer-studio-{job.id[:8]}.zip",
    mime="application/zip",
    type="primary",
    on_click="ignore",
)
manifest_formats = manifest.get("formats", {})
items = [(fmt, run.exports / rel) for fmt, rel in manifest_formats.items()]
listed = {path for _, path in items}
items += [
    (p.name, p)
    for p in sorted(run.exports.iterdir())
    if p.is_file() and p not in listed and p.name not in (bundle.ZIP_NAME, bundle.TIMES_NAME)
]
if (run.exports / "web").is_dir():
    items.append(("web demo", run.exports / "web"))
cols = st.columns(4)
for i, (name, path) in enumerate(items):
    if not path.exists():
        continue
    is_dir = path.is_dir()
    cols[i % 4].download_button(
        f"{name} (.zip)" if is_dir else path.name,
        _folder_zip(path) if is_dir else _file_bytes(path),
        file_name=f"{path.name}.zip" if is_dir else path.name,
        mime="application/zip" if is_dir else "application/octet-stream",
        key=f"dl-{name}",
        on_click="ignore",
    )
