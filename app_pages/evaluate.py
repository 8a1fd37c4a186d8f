"""Evaluate: accuracy, confusion matrix, per-class metrics, the most confident mistakes."""

import json
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from app_pages import shared
from pipeline import data
from pipeline.runfolder import RunFolder

st.title("Evaluate")
job = shared.pick_run(finished_only=True)
if job is None:
    st.stop()
run = RunFolder(Path(job.run_dir))
if not run.eval.exists():
    st.info("This run has no evaluation yet.")
    st.stop()
result = json.loads(run.eval.read_text())
st.metric(f"Accuracy on the {result['split']} split ({result['images']} images)", f"{result['accuracy']:.2%}")

labels = result["labels"]
left, right = st.columns(2)
with left:
    names = [shared.chart_label(c) for c in labels]  # class names are folder names: Plotly text, not its HTML
    fig = px.imshow(result["confusion_matrix"], x=names, y=names, text_auto=True, color_continuous_scale="Blues",
                    labels={"x": "predicted", "y": "true", "color": "images"}, title="Confusion matrix")
    fig.update_xaxes(type="category", tickangle=-45 if sum(map(len, labels)) > 40 else 0)  # every class named, even "0".."9"
    fig.update_yaxes(type="category")
    st.plotly_chart(fig, width="stretch")
with right:
    per_class = pd.DataFrame(result["per_class"]).T.rename_axis("class")
    per_class["support"] = per_class["support"].astype(int)
    st.dataframe(per_class.style.format({"precision": "{:.3f}", "recall": "{:.3f}", "f1": "{:.3f}"}),
                 width="stretch")

st.subheader("Most confident mistakes")
if not result["mistakes"]:
    st.success("No mistakes on this split.")
cols = st.columns(4)
for i, m in enumerate(result["mistakes"][:24]):
    with cols[i % 4]:
        try:
            st.image(data.load_image(m["file"], 192), width="stretch")
        except data.DataError:
            st.caption("(image no longer available)")
        st.caption(f"true **{shared.plain(m['true'])}**, predicted **{shared.plain(m['predicted'])}** "
                   f"({m['probability']:.0%})")
        shared.text(Path(m["file"]).name)
