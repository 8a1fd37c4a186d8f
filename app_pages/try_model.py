"""Try: classify a photo with the server model, and in the browser with the exported TF.js files."""

import base64
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import streamlit as st
import streamlit.components.v1 as components
from PIL import Image

from app_pages import shared
from pipeline import data
from pipeline.runfolder import RunFolder

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "static"  # served by Streamlit at /app/static (enableStaticServing)

st.title("Try")
job = shared.pick_run(finished_only=True)
if job is None:
    st.stop()
run = RunFolder(Path(job.run_dir))
cfg = json.loads(run.config.read_text())
size = cfg["model"]["image_size"]
labels = json.loads(run.dataset.read_text())["splits"]["classes"]

source = st.radio("Image", ["Upload", "Camera"], horizontal=True)
shot = st.file_uploader("Photo", type=["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"]) \
    if source == "Upload" else st.camera_input("Take a photo")
if shot is None:
    st.stop()
try:
    pixels = data.decode_image_bytes(shot.getvalue(), size, name=shot.name)
except data.DataError as exc:
    shared.error(exc)  # quotes the photo's file name: text, never Markdown
    st.stop()


@st.cache_resource(max_entries=3)
def server_model(path: str, stamp: float):
    import keras

    return keras.saving.load_model(path, compile=False)


left, right = st.columns(2)
with left:
    st.image(pixels, caption=f"model input ({size}x{size}, raw RGB)", width=256)
    model = server_model(str(run.model), run.model.stat().st_mtime)
    probs = model.predict(pixels[None].astype("float32"), verbose=0)[0]
    top = probs.argsort()[::-1][:5]
    st.subheader(f"Server: {shared.plain(labels[top[0]])} ({probs[top[0]]:.1%})")
    st.bar_chart(pd.DataFrame({"probability": {labels[i]: float(probs[i]) for i in top}}), horizontal=True,
                 sort="-probability")  # most likely first, as in the browser column

with right:
    tfjs_dir = run.exports / "tfjs"
    if not (tfjs_dir / "model.json").exists():
        st.info("Export the model with the tfjs format (Export page) to test it in the browser.")
        st.stop()
    lib = STATIC / "vendor" / "tf.min.js"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js", lib)
    served = STATIC / "models" / job.id
    if not (served / "model.json").exists() or (served / "model.json").stat().st_mtime < (tfjs_dir / "model.json").stat().st_mtime:
        shutil.rmtree(served, ignore_errors=True)
        shutil.copytree(tfjs_dir, served)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    labels_js = json.dumps(labels).replace("</", "<\\/")  # no "</script>" in a class name can end the tag
    components.html(f"""
<div style="font-family: 'Source Sans Pro', 'Source Sans 3', sans-serif; color: rgb(49, 51, 63)">
  <div id="out" data-top1="">Loading TF.js and the model in your browser...</div>
  <img id="img" src="data:image/png;base64,{png}" style="display:none">
</div>
<script src="/app/static/vendor/tf.min.js"></script>
<script>
(async () => {{
  const labels = {labels_js};
  const out = document.getElementById('out');
  try {{
    const img = document.getElementById('img');
    await img.decode();
    const model = await tf.loadGraphModel('/app/static/models/{job.id}/model.json');
    const x = tf.tidy(() => tf.browser.fromPixels(img).toFloat().expandDims(0));  // raw 0..255, no normalisation
    const probs = await model.predict(x).data();
    const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]).slice(0, 5);
    out.dataset.top1 = labels[order[0]];
    const pct = i => (probs[i] * 100).toFixed(1) + '%';
    // class names are folder names from an upload: escaped, never markup
    const esc = t => String(t).replace(/[&<>"']/g, c => ({{'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}}[c]));
    out.innerHTML = '<h3 style="margin:0 0 12px; font-weight:600">Browser (TF.js, ' + tf.getBackend() + '): ' +
      esc(labels[order[0]]) + ' (' + pct(order[0]) + ')</h3>' +
      order.map(i => '<div style="display:flex; align-items:center; gap:8px; margin:4px 0">' +
        '<span style="width:35%; overflow:hidden; text-overflow:ellipsis; white-space:nowrap">' + esc(labels[i]) + '</span>' +
        '<span style="flex:1; background:#f0f2f6; height:14px"><span style="display:block; height:14px; width:' +
        pct(i) + '; background:#0068c9"></span></span><span style="width:4em; text-align:right">' + pct(i) +
        '</span></div>').join('');
  }} catch (e) {{
    out.textContent = 'The in-browser model could not run: ' + e.message;
  }}
}})();
</script>
""", height=260)
