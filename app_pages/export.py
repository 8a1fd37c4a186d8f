"""Export: choose formats, export with progress, see the verification table, download."""

from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import shared
from export import bundle
from pipeline.runfolder import RunFolder

st.title("Export")
job = shared.pick_run(finished_only=True)
if job is None:
    st.stop()
run = RunFolder(Path(job.run_dir))
formats = st.multiselect("Formats", bundle.FORMATS + bundle.OPTIONAL_FORMATS, default=list(bundle.FORMATS))
if st.button("Export and verify", type="primary", icon=":material/package_2:"):
    with st.status("Exporting...", expanded=True) as status:
        try:
            dest, result = bundle.export_run(run.root, bundle.parse_formats(",".join(formats) or "all"),
                                             progress=lambda msg: st.write(msg.capitalize() + "..."))
        except Exception as exc:  # every export failure is shown as a sentence, never a traceback
            status.update(label="Export failed", state="error")
            st.error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            st.stop()
        status.update(label="Exported and verified" if result["passed"] else "Exported: a verification gate failed",
                      state="complete" if result["passed"] else "error")

manifest = run.exports / "manifest.json"
if not manifest.exists():
    st.info("No export yet for this run.")
    st.stop()
verify_file = run.exports / "verify.json"
if verify_file.exists():
    import json

    result = json.loads(verify_file.read_text())
    rows = [{"format": f, "agreement": r.get("agreement"), "accuracy": r.get("accuracy"),
             "max |dp|": r.get("max_abs_diff"), "ms / image": r.get("latency_ms"),
             "size (KB)": (r["size_bytes"] or 0) / 1024 if r.get("size_bytes") else None,
             "result": ("ok " if r["passed"] else "FAIL ") + r.get("note", "")}
            for f, r in result["formats"].items()]
    st.subheader(f"Verification on {result['images']} held-out images")
    if not result["passed"]:
        st.error("A verification gate failed: do not ship the failing format (see the result column).")
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)

st.subheader("Download")
zip_path = run.exports / bundle.ZIP_NAME
st.download_button("Whole bundle (.zip)", zip_path.read_bytes(), file_name=f"transfer-studio-{job.id[:8]}.zip",
                   mime="application/zip", type="primary")
singles = [p for p in sorted(run.exports.iterdir()) if p.is_file() and p.name != bundle.ZIP_NAME]
cols = st.columns(4)
for i, path in enumerate(singles):
    cols[i % 4].download_button(path.name, path.read_bytes(), file_name=path.name, key=f"dl-{path.name}")
