"""Train: backbone, strategy and hyperparameters; Launch submits a job and opens its run."""

import dataclasses

import streamlit as st

from app_pages import shared
from pipeline import advisor, backbones, data
from pipeline import config as config_mod
from pipeline.config import STRATEGIES, ConfigError, RunConfig

UPLOAD_WEIGHTS = "upload a weights file"

st.title("Train")
src = shared.source()
try:
    folder, report = shared.resolve_and_scan(src)
except data.DataError as exc:
    shared.error(exc)
    st.stop()
counts = {c: sum(v.values()) for c, v in report["counts"].items()}
st.caption(shared.plain(f"Data: {src} ({len(counts)} classes, {sum(counts.values())} images)"))

base = shared.base_config(src)
helps = config_mod.field_help()

with st.expander("Which strategy? (advisor)", expanded=False):
    similar = st.radio("Do your images look like everyday photos (objects, animals, scenes)?", ["Yes", "No"],
                       horizontal=True) == "Yes"
    per_class = sum(counts.values()) / max(1, len(counts))
    advice = advisor.recommend(per_class, similar)
    st.info(f"Recommended: **{advice.strategy}**: {advice.reason}. ({per_class:.0f} images per class)")

c1, c2, c3 = st.columns(3)
with c1:
    names = backbones.names()
    backbone = st.selectbox("Backbone", names, index=names.index(base.model.backbone), help=helps["model.backbone"],
                            format_func=lambda n: backbones.get(n).title)
    spec = backbones.get(backbone)
    alpha = base.model.alpha
    if spec.alphas:
        alpha = st.selectbox("Width (alpha)", spec.alphas,
                             index=spec.alphas.index(base.model.alpha) if base.model.alpha in spec.alphas else 0,
                             help=helps["model.alpha"])
    size_default = base.model.image_size if backbone == base.model.backbone else spec.default_size
    image_size = st.number_input("Image size (px)", spec.min_size, 1024, size_default, 8, help=helps["model.image_size"])
    weights = st.selectbox("Weights", ["imagenet", "none", UPLOAD_WEIGHTS] if spec.has_imagenet else ["none"],
                           help=helps["model.weights"])
    if weights == UPLOAD_WEIGHTS:  # the way forward on a server that cannot download ImageNet weights
        weights = shared.saved_upload(
            st.file_uploader("Weights file (.h5)", type=["h5"], max_upload_size=shared.max_upload_mb(), help="The notop .h5 file Keras names when its "
                             "download fails, or weights saved from the same backbone, size and width"), "weights")
        if weights is None:
            st.info(f"Upload the weights file for {spec.title}, or choose imagenet or none.")
            st.stop()
with c2:
    default_strategy = base.train.strategy if spec.has_imagenet or base.train.strategy == "from_scratch" else "from_scratch"
    strategy = st.selectbox("Strategy", STRATEGIES if spec.has_imagenet else ("from_scratch",),
                            index=(STRATEGIES.index(default_strategy) if spec.has_imagenet else 0),
                            help=helps["train.strategy"])
    head_epochs = st.number_input("Head epochs" if strategy != "from_scratch" else "Epochs", 1, 1000,
                                  base.train.head_epochs, help=helps["train.head_epochs"])
    fine_tune_epochs = st.number_input("Fine-tune epochs", 0, 1000, base.train.fine_tune_epochs,
                                       help=helps["train.fine_tune_epochs"],
                                       disabled=strategy not in ("fine_tune", "freeze_first_k"))
    batch_size = st.number_input("Batch size", 1, 1024, base.train.batch_size, help=helps["train.batch_size"])
with c3:
    learning_rate = st.number_input("Learning rate", 1e-6, 1.0, base.train.learning_rate, format="%.5f",
                                    help=helps["train.learning_rate"])
    fine_tune_lr = st.number_input("Fine-tune learning rate", 1e-7, 1.0, base.train.fine_tune_learning_rate,
                                   format="%.6f", help=helps["train.fine_tune_learning_rate"])
    schedule = st.selectbox("Learning-rate schedule", config_mod.SCHEDULES,
                            index=config_mod.SCHEDULES.index(base.train.lr_schedule), help=helps["train.lr_schedule"])
    seed = st.number_input("Seed", 0, 2**31 - 1, base.train.seed, help=helps["train.seed"])

augment_cfg = st.session_state.get("augment_config", {}).get(src, base.augment)
st.caption(f"Augmentation: {'on' if augment_cfg.active else 'off'} (set it on the Augment page).")
try:
    cfg = RunConfig(
        data=base.data,
        augment=augment_cfg,
        model=dataclasses.replace(base.model, backbone=backbone, alpha=float(alpha), image_size=int(image_size),
                                  weights=weights),
        train=dataclasses.replace(base.train, strategy=strategy, head_epochs=int(head_epochs),
                                  fine_tune_epochs=int(fine_tune_epochs), batch_size=int(batch_size),
                                  learning_rate=float(learning_rate), fine_tune_learning_rate=float(fine_tune_lr),
                                  lr_schedule=schedule, seed=int(seed)),
    )
except ConfigError as exc:
    shared.error(exc)  # may quote an uploaded weights file's name
    st.stop()
for warning in cfg.warnings():
    shared.warning(warning)

n = sum(counts.values())
train_n = int(n * (1 - cfg.data.val_fraction - cfg.data.test_fraction))
est = advisor.epoch_seconds(backbone, float(alpha), int(image_size), train_n, n - train_n,
                            base_trains=strategy != "feature_extraction")
st.metric("Estimated time per epoch on 2 CPU cores", f"{est:.0f} s" if est >= 1 else "under 1 s")

if st.button("Launch training", type="primary", icon=":material/rocket_launch:"):
    job_id = shared.launch(src, cfg)  # owned by this visitor; refused past the per-visitor job limit
    if job_id is None:
        st.stop()
    st.session_state["run"] = job_id
    st.query_params["run"] = job_id
    st.switch_page("app_pages/runs.py")
