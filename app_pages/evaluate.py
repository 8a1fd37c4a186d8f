"""Evaluate: accuracy, the confusion matrix (click a cell for its images), per-class metrics, suspected label
errors, corrections, and a retrain with them."""

from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import access, loop, picker, wording
from pipeline.runs.folder import DamagedFileError, RunFolder
from pipeline.training.evaluate import cell

st.title("Evaluate")
job = picker.pick_run(finished_only=True)
if job is None:
    st.stop()
run = RunFolder(Path(job.run_dir))
try:
    result = run.evaluation()
    dataset = run.dataset_record()
except DamagedFileError as exc:  # eval.json or dataset.json cut short or overwritten: said without the server's paths
    wording.error(exc.in_words())
    st.stop()
if result is None:
    st.info("This run has no evaluation yet.")
    st.stop()
folder = dataset["scan"]["root"]
editable = access.can_control(job)

st.metric(f"Accuracy on the {result['split']} split ({result['images']} images)", f"{result['accuracy']:.2%}")
if result.get("split_chose_checkpoint", result["split"] == "val"):
    st.warning(
        "This run has no test split, so it is measured on the validation split, which also chose the best "
        "checkpoint: the figure is optimistic. For an unbiased one, retrain with a test split: on the Train page, "
        + (
            "choose where to carve it from (Test split from: train/ or val/)."
            if dataset.get("scan", {}).get("layout") == "splits"
            else "set a test fraction."
        )
    )

labels = result["labels"]
selection = f"selected-{job.id}"  # one selection model: a cell or a row, the newest wins
left, right = st.columns(2)
with left:
    clicked = loop.confusion_matrix(result, key=loop.widget_key(f"cm-{job.id}", selection, "cell"))
with right:
    per_class = pd.DataFrame(result["per_class"]).T.rename_axis("class")
    per_class["support"] = per_class["support"].astype(int)
    st.dataframe(per_class.style.format({"precision": "{:.3f}", "recall": "{:.3f}", "f1": "{:.3f}"}), width="stretch")
    picked = loop.confused_pairs(result, key=loop.widget_key(f"pairs-{job.id}", selection, "pair"))

choice = loop.newest(selection, cell=clicked, pair=picked)  # the widget used last wins
why = None  # or (run folder, image size): each image below with its Grad-CAM heatmap
if st.toggle(
    "Show why (Grad-CAM heatmaps)",
    key=f"why-{job.id}",
    help="Each image with a heatmap of where the model found the class it predicted (red: strongest).",
):
    try:
        why = (job.run_dir, run.settings().model.image_size)
    except DamagedFileError as exc:  # config.json cut short: no heatmaps, the rest of the page stays
        wording.error(exc.in_words())
selected = choice[1] if choice else None
if selected and "predictions" in result:
    true, predicted = selected
    rows = cell(result, true, predicted)
    what = "correct" if true == predicted else "mistakes"
    st.subheader(f"True {wording.plain(true)}, predicted {wording.plain(predicted)}: {len(rows)} image(s), {what}")
    st.caption(
        ("Selected in the confusion matrix" if choice[0] == "cell" else "Selected in Most confused pairs")
        + "; selecting in either shows that one instead."
    )
    if st.button("Back to the most confident mistakes", key=f"unselect-{job.id}"):
        loop.clear_selection(selection)
        st.rerun()
    if rows:
        loop.image_grid(rows[:48], folder=folder, classes=labels, editable=editable, key=f"cell-{job.id}", why=why)
else:
    st.subheader("Most confident mistakes")
    if not result["mistakes"]:
        st.success("No mistakes on this split.")
    loop.image_grid(
        result["mistakes"][:24], folder=folder, classes=labels, editable=editable, key=f"mistakes-{job.id}", why=why
    )

loop.label_issues_panel(job.run_dir, folder, labels, editable, key=f"issues-{job.id}")
loop.dataset_map_panel(job.run_dir, folder, labels, editable, key=f"map-{job.id}")

st.subheader("Corrections and retraining")
used = dataset.get("revision", {}).get("number")
loop.revision_summary(folder, used)
loop.corrections_list(folder, editable, key=f"corrections-{job.id}")
if editable:
    loop.undo_button(folder, key=f"undo-{job.id}")
    loop.retrain_button(job, key=f"retrain-{job.id}")
    st.caption(
        "A retrain starts from this run's best weights, fine-tunes on the data with every correction "
        "applied, and links back to this run; compare them on the Runs page."
    )
else:
    st.caption("A shared run: only its owner can correct the data or retrain it.")
