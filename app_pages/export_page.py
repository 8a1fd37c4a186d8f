"""Export: choose formats, export in the background with progress, see the verification table, download."""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import shared
from export import bundle, task
from pipeline.runfolder import RunFolder

st.title("Export")
job = shared.pick_run(finished_only=True)
if job is None:
    st.stop()
run = RunFolder(Path(job.run_dir))
formats = st.multiselect("Formats", bundle.FORMATS + bundle.OPTIONAL_FORMATS, default=list(bundle.FORMATS),
                         key="export_formats")


def start_export(run_dir: Path) -> None:
    """Runs before the rerun draws the page, so the button is already disabled and progress shows."""
    try:
        task.start(run_dir, bundle.parse_formats(",".join(st.session_state["export_formats"])))
    except OSError as exc:  # e.g. a run folder this server cannot write to
        st.session_state["export_start_error"] = f"Could not start the export in {run_dir}: {exc.strerror or exc}."


status = task.read_status(run.root)
running = bool(status and status["state"] == "running")
st.button("Export and verify", type="primary", icon=":material/package_2:", disabled=running or not formats,
          on_click=start_export, args=(run.root,),
          help="Runs in the background: you can leave this page, refresh, or share the link meanwhile.")


@st.fragment(run_every=1.0)
def export_progress() -> None:
    """Follows the background export; when it ends, reruns the page to show the results."""
    now = task.read_status(run.root)
    if now is None or now["state"] != "running":
        st.rerun(scope="app")
    step = now.get("step", "starting")
    st.progress(min(now.get("done", 0) / max(now.get("total", 1), 1), 1.0),
                text=f"Exporting {', '.join(now.get('formats', []))}: {step}... "
                     f"({time.time() - now.get('started', time.time()):.0f} s)")


if message := st.session_state.pop("export_start_error", None):
    shared.error(message)
if running:
    export_progress()
    st.stop()
if status and status["state"] in ("failed", "interrupted"):
    shared.error(f"The last export did not finish: {status.get('error')}")
elif status and status["state"] == "gate_failed":
    st.error("Exported, but a verification gate failed: do not ship the failing format (see the result column).")

manifest = run.exports / "manifest.json"
if not manifest.exists():
    st.info("No export yet for this run.")
    st.stop()
verify_file = run.exports / "verify.json"
if verify_file.exists():
    import json

    result = json.loads(verify_file.read_text())
    formats = dict(result["formats"])
    reference = formats.pop("keras", None)  # the model every format is compared with: a caption, not a row
    rows = [{"format": f, "agreement": 100 * r["agreement"] if r.get("agreement") is not None else None,
             "accuracy": r.get("accuracy"),
             "max |dp|": r.get("max_abs_diff"), "ms / image": r.get("latency_ms"),
             "size (KB)": r["size_bytes"] / 1024 if r.get("size_bytes") else None,
             "result": "ok" if r["passed"] else "FAIL", "note": r.get("note", "")}
            for f, r in formats.items()]
    st.subheader(f"Verification on {result['images']} held-out images")
    if reference:
        st.caption(f"Each file run in its own runtime and compared with the trained Keras model "
                   f"(accuracy {reference['accuracy']:.4f}, {reference['latency_ms']:.2f} ms per image at batch 1).")
    if not result["passed"] and not (status and status["state"] == "gate_failed"):
        st.error("A verification gate failed: do not ship the failing format (see the result column).")
    number = st.column_config.NumberColumn
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
        "agreement": number("top-1 agreement", format="%.2f%%", help="Same top class as the Keras model"),
        "accuracy": number(format="%.4f"), "max |dp|": number(format="%.1e", help="Largest probability difference"),
        "ms / image": number(format="%.2f"), "size (KB)": number(format="%.0f"),
        "note": st.column_config.TextColumn(width="large")})

st.subheader("Download")
zip_path = run.exports / bundle.ZIP_NAME
st.download_button("Whole bundle (.zip)", zip_path.read_bytes(), file_name=f"transfer-studio-{job.id[:8]}.zip",
                   mime="application/zip", type="primary")
singles = [p for p in sorted(run.exports.iterdir()) if p.is_file() and p.name != bundle.ZIP_NAME]
cols = st.columns(4)
for i, path in enumerate(singles):
    cols[i % 4].download_button(path.name, path.read_bytes(), file_name=path.name, key=f"dl-{path.name}")
