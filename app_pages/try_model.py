"""Try: classify a photo with the server model, and in the browser with the exported TF.js files.

The browser column is the bundle's own web demo (``exports/web/index.html``, written by export.web):
one implementation for the app and the bundle. The run's bundle folder is served read-only by
Streamlit's component file server (app_pages.bundle_web), so nothing is
copied into the repository; the page gets the photo, already at the model's input size, in its URL
fragment (``#image=data:...``), so the browser sees the same pixels as the server model.
"""

import base64
import io
from pathlib import Path

import pandas as pd
import streamlit as st
import streamlit.components.v1 as components
from PIL import Image

from app_pages import bundle_web, picker, wording
from pipeline import data
from pipeline.runs.folder import DamagedFileError, RunFolder

st.title("Try")
job = picker.pick_run(finished_only=True)
if job is None:
    st.stop()
run = RunFolder(Path(job.run_dir))
try:
    size = run.settings().model.image_size
except DamagedFileError as exc:  # config.json missing or not a RunConfig: said without the server's paths
    wording.error(exc.in_words())
    st.stop()

source = st.radio(
    "Image",
    ["Upload", "Camera", "Live webcam"],
    horizontal=True,
    captions=["", "one photo, on the server and in the browser", "every frame, in the browser (TF.js)"],
)
if source == "Live webcam":  # the bundle's demo in continuous mode: frames centre-cropped, classified one by one
    if not (run.exports / "tfjs" / "model.json").exists() or not (run.exports / "web" / "index.html").exists():
        st.info("Export the model with the tfjs format (Export page) to classify the webcam live in the browser.")
        st.stop()
    st.caption(
        "Your browser asks to use the camera; the frames stay in this browser (nothing is sent to the "
        "server). Each frame's centre square is classified, as the exported model will be in an app."
    )
    components.iframe(bundle_web.demo_url(job.id, run.exports, webcam=True), height=560)
    st.stop()


@st.cache_resource(max_entries=3, show_spinner=False)
def _server_model(run_dir: str, stamp: float):
    from pipeline.runs.classifier import Classifier

    return Classifier.load(RunFolder(Path(run_dir)))


def server_model():
    """The run's classifier (its model loaded once per file version), or a message and the page stops."""
    try:
        return _server_model(str(run.root), run.model.stat().st_mtime)
    except OSError as exc:  # gone since the run finished
        wording.error(
            f"This run's {run.model.name} cannot be read ({exc.strerror}). Delete the run and train it again."
        )
    except DamagedFileError as exc:  # cut short, overwritten: said without the server's paths
        wording.error(f"{exc.in_words()} Delete the run and train it again.")
    st.stop()


@st.cache_resource(max_entries=3, show_spinner=False)
def _explainer(run_dir: str, stamp: float):
    """Grad-CAM on the server column's model (the same loaded model, not a second copy)."""
    from pipeline.quality.explain import Explainer

    return Explainer(_server_model(run_dir, stamp).model)


shot = (
    st.file_uploader("Photo", type=["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"])
    if source == "Upload"
    else st.camera_input("Take a photo")
)
if shot is None:  # the server model loads while the visitor picks a photo (Keras and the model: ~20-40 s cold)
    with st.spinner("Loading the model for the server column..."):
        server_model()
    st.stop()
try:
    if source == "Camera":  # a camera frame: its centre square (as MediaPipe's classifier crops), not squashed
        from pipeline.runs.classifier import centre_square

        pixels = centre_square(data.decode_image_bytes(shot.getvalue(), None, name=shot.name), size)
    else:
        pixels = data.decode_image_bytes(shot.getvalue(), size, name=shot.name)
except data.DataError as exc:
    wording.error(exc)  # quotes the photo's file name: text, never Markdown
    st.stop()


left, right = st.columns(2)
with left:
    st.image(pixels, caption=f"model input ({size}x{size}, raw RGB)", width=256)
    classifier = server_model()
    top = classifier.top(pixels, k=5)
    st.subheader(f"Server: {wording.plain(top[0][0])} ({top[0][1]:.1%})")
    if classifier.unsure(top[0][1]):
        st.warning(
            f"Not sure: {top[0][1]:.1%} is below this run's confidence threshold ({classifier.threshold:.1%}). "
            f"The model only knows its {len(classifier.classes)} classes; a photo of anything else still gets one "
            "of them, so this may be none of these."
        )
    st.bar_chart(
        pd.DataFrame({"probability": dict(top)}), horizontal=True, sort="-probability"
    )  # most likely first, as in the browser column
    if st.toggle("Show why (Grad-CAM heatmap)", key="try-why"):
        from pipeline.quality import explain

        found = _explainer(str(run.root), run.model.stat().st_mtime).explain(pixels[None])[0]
        st.image(
            explain.overlay(pixels, found),
            caption=f"Where the model found {wording.plain(classifier.classes[found.class_index])} (red: strongest)",
            width=256,
        )

with right:
    page = run.exports / "web" / "index.html"
    if not (run.exports / "tfjs" / "model.json").exists() or not page.exists():
        st.info("Export the model with the tfjs format (Export page) to test it in the browser.")
        st.stop()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    # Relative to the app's base URL (every page URL is one level deep); the run's bundle, served as it is.
    components.iframe(bundle_web.demo_url(job.id, run.exports, f"image=data:image/png;base64,{png}"), height=260)
