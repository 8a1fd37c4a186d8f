"""Train: backbone, strategy, hyperparameters and the data split; Launch submits a job and opens its run.

Every field keeps its value across page switches, reloads and new tabs (app_pages.state, per data source).
Number fields have no bounds in the browser: a value out of range reaches this page, which says what is wrong
and keeps Launch disabled until it is fixed (bounds in the browser would keep the last valid value silently).
"""

import dataclasses
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import access, estimates, picker, sources, state, uploads, wording
from pipeline import backbones, data
from pipeline import config as config_mod
from pipeline.config import CLASS_WEIGHTS, STRATEGIES, ConfigError
from pipeline.data import revision
from pipeline.quality import advisor, estimate

UPLOAD_WEIGHTS = "upload a weights file"
P = "train:"  # widget keys

st.title("Train")
sources.source_note()
src = sources.source()
try:
    folder, scanned = sources.resolve_and_scan(src)
    report = revision.apply(data.ScanReport.from_dict(scanned), revision.Revision(folder).active())
except data.DataError as exc:
    wording.error(sources.user_words(exc, src))
    st.stop()
counts = {c: sum(v.values()) for c, v in report.to_dict()["counts"].items()}
shown_name = (
    src if data.is_sample(src) else (sources.address_source(src) or "").removeprefix("folder:") or Path(src).name
)
st.caption(
    wording.plain(
        f"Data: {shown_name} ({wording.count(len(counts), 'class', 'classes')}, "
        f"{wording.count(sum(counts.values()), 'image')}). "
        "Change it on the Data page."
    )
)

base = sources.base_config(src)
helps = config_mod.field_help()
kept_all = state.get("train") or {}
kept = kept_all.get(src, {}) if isinstance(kept_all, dict) else {}
if st.session_state.get(P + "source") != src:  # another dataset: its own kept settings, or its defaults
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(P)]:
        del st.session_state[key]
    st.session_state[P + "source"] = src


def seed(name: str, default):
    return state.seed(P + name, kept.get(name, default))


def _backbone_changed() -> None:
    spec_ = backbones.get(st.session_state[P + "backbone"])
    st.session_state[P + "image_size"] = (
        base.model.image_size if spec_.name == base.model.backbone else spec_.default_size
    )


with st.expander("Which strategy? (advisor)", expanded=False):
    similar = (
        st.radio(
            "Do your images look like everyday photos (objects, animals, scenes)?",
            ["Yes", "No"],
            horizontal=True,
            key=seed("similar", "Yes"),
        )
        == "Yes"
    )
    per_class = sum(counts.values()) / max(1, len(counts))
    advice = advisor.recommend(per_class, similar)
    st.info(f"Recommended: **{advice.strategy}**: {advice.reason}. ({per_class:.0f} images per class)")

    def _apply_advice(strategy: str = advice.strategy) -> None:
        if strategy != "from_scratch":
            spec_ = backbones.get(st.session_state[P + "backbone"])
            if not spec_.has_imagenet:
                return
            if st.session_state.get(P + "weights") == "none":
                st.session_state[P + "weights"] = "imagenet"
        st.session_state[P + "strategy"] = strategy

    st.button(
        f"Apply: {advice.strategy}",
        on_click=_apply_advice,
        key="train-apply-advice",
        help="Sets Strategy below to the recommendation (and ImageNet weights when the base starts pretrained).",
    )

problems: list[str] = []


c1, c2, c3 = st.columns(3)
with c1:
    names = backbones.names()
    seed("backbone", base.model.backbone)
    if st.session_state[P + "backbone"] not in names:
        st.session_state[P + "backbone"] = base.model.backbone
    backbone = st.selectbox(
        "Backbone",
        names,
        key=P + "backbone",
        help=helps["model.backbone"],
        format_func=lambda n: backbones.get(n).title,
        on_change=_backbone_changed,
    )
    spec = backbones.get(backbone)
    alpha = base.model.alpha
    if spec.alphas:
        seed("alpha", base.model.alpha)
        if st.session_state[P + "alpha"] not in spec.alphas:
            st.session_state[P + "alpha"] = base.model.alpha if base.model.alpha in spec.alphas else spec.alphas[0]
        alpha = st.selectbox("Width (alpha)", spec.alphas, key=P + "alpha", help=helps["model.alpha"])
    image_size = st.number_input(
        "Image size (px)", step=8, key=seed("image_size", base.model.image_size), help=helps["model.image_size"]
    )
    if image_size < spec.min_size or image_size > 1024:
        problems.append(f"Image size (px): {spec.title} needs {spec.min_size} to 1024 pixels.")
    weight_choices = ["imagenet", "none", UPLOAD_WEIGHTS] if spec.has_imagenet else ["none"]
    seed("weights", base.model.weights if base.model.weights in weight_choices else weight_choices[0])
    if st.session_state[P + "weights"] not in weight_choices:
        st.session_state[P + "weights"] = weight_choices[0]
    weights = st.selectbox("Weights", weight_choices, key=P + "weights", help=helps["model.weights"])
    if weights == UPLOAD_WEIGHTS:  # the way forward on a server that cannot download ImageNet weights
        upload = uploads.file_input(
            "Weights file (.h5)",
            "weights",
            [".h5"],
            key="weights-h5",
            help=(
                "The notop .h5 file Keras names when its download fails, or weights saved from the same backbone, size "
                "and width"
            ),
        )  # streamed to disk as it arrives (app_pages/uploads.py)
        weights = upload.path if upload else None
        if weights is None:
            st.info(f"Upload the weights file for {spec.title}, or choose imagenet or none.")
            st.stop()
with c2:
    strategies = STRATEGIES if spec.has_imagenet else ("from_scratch",)
    seed("strategy", base.train.strategy)
    if st.session_state[P + "strategy"] not in strategies:
        st.session_state[P + "strategy"] = strategies[0] if spec.has_imagenet else "from_scratch"
    strategy = st.selectbox("Strategy", strategies, key=P + "strategy", help=helps["train.strategy"])
    head_epochs = st.number_input(
        "Head epochs" if strategy != "from_scratch" else "Epochs",
        step=1,
        key=seed("head_epochs", base.train.head_epochs),
        help=helps["train.head_epochs"],
    )
    fine_tune_epochs = st.number_input(
        "Fine-tune epochs",
        step=1,
        key=seed("fine_tune_epochs", base.train.fine_tune_epochs),
        help=helps["train.fine_tune_epochs"],
        disabled=strategy not in ("fine_tune", "freeze_first_k"),
    )
    batch_size = st.number_input(
        "Batch size", step=1, key=seed("batch_size", base.train.batch_size), help=helps["train.batch_size"]
    )
    seed_value = st.number_input("Seed", step=1, key=seed("seed", base.train.seed), help=helps["train.seed"])
with c3:
    learning_rate = st.number_input(
        "Learning rate",
        format="%.2e",
        step=1e-4,
        key=seed("learning_rate", base.train.learning_rate),
        help=helps["train.learning_rate"],
    )
    fine_tune_lr = st.number_input(
        "Fine-tune learning rate",
        format="%.6f",
        step=1e-6,
        key=seed("fine_tune_learning_rate", base.train.fine_tune_learning_rate),
        help=helps["train.fine_tune_learning_rate"],
    )
    schedule = st.selectbox(
        "Learning-rate schedule",
        config_mod.SCHEDULES,
        key=seed("lr_schedule", base.train.lr_schedule),
        help=helps["train.lr_schedule"],
    )
    precision = st.selectbox(
        "Precision", config_mod.PRECISIONS, key=seed("precision", base.train.precision), help=helps["train.precision"]
    )
    if precision != "float32":
        st.caption(
            "Measured on an H100, MobileNetV2 0.35 @ 224: bf16 2,185 vs float32 3,064 images/s at batch 32, "
            "~99 s to compile. The model you export is float32 either way."
        )

st.subheader("Data split and class balance")
# Only what this dataset allows: a val/ or test/ folder is that split (its fraction does not apply); with
# train/ and val/ folders and no test/, a test split is carved from one of them where the visitor says so.
folders = report.layout == "splits"
has_val, has_test = folders and bool(report.items.get("val")), folders and bool(report.items.get("test"))
d0, d1, d2, d3 = st.columns(4) if folders and not has_test else (None, *st.columns(3))
test_from = base.data.test_from
if d0 is not None:
    offered = [c for c in config_mod.TEST_FROM if c != "val" or has_val]  # carving from val/ needs a val/ folder
    key = seed("test_from", base.data.test_from)
    if st.session_state.get(key) not in offered:  # kept from a dataset that had a val/ folder
        st.session_state[key] = "none"
    test_from = d0.selectbox(
        "Test split from",
        offered,
        key=key,
        format_func={"none": "none (evaluate on val)", "train": "train/ folder", "val": "val/ folder"}.get,
        help=helps["data.test_from"],
    )
val_fraction = d1.number_input(
    "Validation fraction",
    format="%.2f",
    step=0.05,
    key=seed("val_fraction", base.data.val_fraction),
    disabled=has_val,
    help="Your data has a val/ folder: it is the validation split." if has_val else helps["data.val_fraction"],
)
test_fraction = d2.number_input(
    "Test fraction",
    format="%.2f",
    step=0.05,
    key=seed("test_fraction", base.data.test_fraction),
    disabled=has_test or (folders and test_from == "none"),
    help="Your data has a test/ folder: it is the test split."
    if has_test
    else "Choose where the test split is carved from first (Test split from)."
    if folders and test_from == "none"
    else helps["data.test_fraction"],
)
class_weight = d3.selectbox(
    "Class weights", CLASS_WEIGHTS, key=seed("class_weight", base.train.class_weight), help=helps["train.class_weight"]
)


# Kept for this visitor as shown, valid or not: a reload shows the same values (and the same reasons).
state.put(
    "train",
    {
        **kept_all,
        src: {
            k.removeprefix(P): v
            for k, v in st.session_state.items()
            if isinstance(k, str) and k.startswith(P) and k != P + "source"
        },
    },
)

augment_cfg = base.augment
kept_aug = (state.get("augment") or {}).get(src)
if kept_aug:
    try:
        augment_cfg = config_mod.from_dict({"augment": kept_aug}, base=base).augment
    except ConfigError:
        pass
st.caption(f"Augmentation: {'on' if augment_cfg.active else 'off'} (set it on the Augment page).")
# The form's fields as config fields: pipeline.config checks each (its reasons are data, said beside the label).
labels = {
    "train.head_epochs": "Head epochs" if strategy != "from_scratch" else "Epochs",
    "train.fine_tune_epochs": "Fine-tune epochs",
    "train.batch_size": "Batch size",
    "train.seed": "Seed",
    "train.learning_rate": "Learning rate",
    "train.fine_tune_learning_rate": "Fine-tune learning rate",
    "data.val_fraction": "Validation fraction",
    "data.test_fraction": "Test fraction",
}
cfg, invalid = config_mod.build(
    {
        "train.head_epochs": head_epochs,
        "train.fine_tune_epochs": fine_tune_epochs,
        "train.batch_size": batch_size,
        "train.seed": seed_value,
        "train.learning_rate": learning_rate,
        "train.fine_tune_learning_rate": fine_tune_lr,
        "data.val_fraction": val_fraction,
        "data.test_fraction": test_fraction,
        "data.test_from": test_from,
        "model.backbone": backbone,
        "model.alpha": float(alpha),
        "model.image_size": int(image_size),
        "model.weights": weights,
        "train.strategy": strategy,
        "train.lr_schedule": schedule,
        "train.class_weight": class_weight,
        "train.precision": precision,
        **{f"augment.{f.name}": getattr(augment_cfg, f.name) for f in dataclasses.fields(augment_cfg)},
    },
    base=base,
)
for field_name, reason in invalid.items():  # a cross-field rule may quote an uploaded weights file's name
    if field_name == "model.image_size" and any(p.startswith("Image size (px):") for p in problems):
        continue  # said above with this backbone's own range
    problems.append(
        sources.user_words(
            f"{labels[field_name]}: {reason}"
            if field_name in labels
            else f"{field_name}: {reason}"
            if field_name
            else reason,
            src,
        )
    )

splits = None
if cfg is not None:
    for warning in cfg.warnings():
        wording.warning(warning)
    try:
        splits = data.make_splits(report, cfg.data, cfg.train.seed)  # what training will split, exactly
    except data.DataError as exc:
        problems.append(sources.user_words(exc, src))

if splits is not None:
    per_split = {name: [0] * len(splits.classes) for name in ("train", "val", "test")}
    for name in per_split:
        for _, label in getattr(splits, name):
            per_split[name][label] += 1
    table = pd.DataFrame(per_split, index=list(splits.classes))
    table.loc["all classes"] = table.sum()
    st.dataframe(table, width="stretch")
    if not splits.test:
        st.caption(
            "No test split: Evaluate will measure the validation split, which also chooses the best "
            "checkpoint (an optimistic figure). "
            + (
                "Carve one from train/ or val/ (Test split from) for an unbiased one."
                if folders
                else "Set a test fraction for an unbiased one."
            )
        )

    est = estimates.for_run(cfg, len(splits.train), len(splits.val), len(splits.test))
    guess = "" if est.measured else " (first guess)"
    cols = st.columns(len(est.phases) + 1)
    for col, phase in zip(cols, est.phases, strict=False):
        label = {"head": "head", "fine_tune": "fine-tune", "scratch": "training"}.get(phase.name, phase.name)
        col.metric(
            f"Per {label} epoch{guess}",
            estimate.describe(phase.epoch_seconds),
            help=f"The first epoch of the phase takes about {estimate.describe(phase.first_epoch_seconds)} "
            "(the graph is traced and compiled).",
        )
    cols[-1].metric(
        f"Whole run{guess}",
        estimate.describe(est.seconds),
        help=f"Launch to done: start-up (the process, loading and decoding the images, building the "
        f"model) about {estimate.describe(est.startup_seconds)}, the epochs, then the evaluation "
        f"about {estimate.describe(est.finish_seconds)}.",
    )
    st.caption(f"Estimate: {est.basis}.")


def _use_learning_rate(value: float) -> None:  # a callback: it runs before the widget is drawn again
    st.session_state[P + "learning_rate"] = float(f"{value:.2g}")


def lr_finder(source: str, run_cfg) -> None:
    """The learning-rate finder for these settings: a sweep in the background, its curve, its suggestion."""
    from pipeline.training import lr_find

    with st.expander("Find a learning rate (a short sweep of the head's learning rate)"):
        if (why := lr_find.usable(run_cfg)) is not None:
            st.caption(wording.plain(why[0].upper() + why[1:] + "."))
            return
        rev = revision.Revision(folder).number  # a correction since: the old sweep no longer applies
        status = lr_find.background_status(source, run_cfg, rev)
        flag = f"lr-finding-{lr_find.folder_for(source, run_cfg, rev).name}"
        if status["state"] == "running":
            st.session_state[flag] = True  # a reload or another session reruns when it ends too
        if status["state"] == "running" or st.session_state.get(flag):
            from app_pages import loop

            loop.background_progress(
                flag, lambda: lr_find.background_status(source, run_cfg, rev), "Sweeping the learning rate...", 30
            )
            return
        if status["state"] == "failed":
            wording.error(sources.user_words(f"The sweep failed: {status['error']}", source))
        if status["state"] == "done":
            result = status["result"]
            import plotly.graph_objects as go

            fig = go.Figure(go.Scatter(x=result["learning_rates"], y=result["smoothed"], mode="lines", name="loss"))
            fig.add_vline(x=result["suggestion"], line_dash="dash", annotation_text=f"{result['suggestion']:.2g}")
            fig.update_xaxes(type="log", title="learning rate")
            fig.update_yaxes(title=f"{result['curve']} (smoothed)")
            fig.update_layout(height=300, margin=dict(t=20, b=40))
            st.plotly_chart(fig, width="stretch")
            diverged = f", diverging from {result['diverged_at']:.2g}" if result["diverged_at"] else ""
            st.caption(f"Lowest loss at {result['lowest_loss_at']:.2g}{diverged}; {result['seconds']:.0f} s.")
            st.button(
                f"Use {result['suggestion']:.2g} as the learning rate",
                on_click=_use_learning_rate,
                args=(result["suggestion"],),
                key="use-suggested-lr",
            )
        else:
            st.caption(
                "The head trains a batch a step while its learning rate grows from 1e-7 to 10; the loss on the "
                "validation images falls, then climbs. The suggestion is a tenth of the rate at the lowest loss "
                "(fastai's lr_find). Seconds on the cached features; nothing is trained into a run."
            )
        busy = lr_find.running()
        if st.button(
            "Sweep again" if status["state"] == "done" else "Sweep the learning rate",
            icon=":material/tune:",
            disabled=busy,
            help="Another sweep is running on this server; one runs at a time." if busy else None,
        ):
            lr_find.start_background(source, run_cfg, rev)
            st.session_state[flag] = True
            st.rerun()


for problem in problems:
    wording.error(problem)
launch = st.button(
    "Launch training",
    type="primary",
    icon=":material/rocket_launch:",
    disabled=bool(problems),
    help=("Fix first: " + " ".join(problems)) if problems else None,
)
if cfg is not None and splits is not None:
    lr_finder(src, cfg)
if launch and cfg is not None and splits is not None:
    job_id = access.launch(src, cfg)  # owned by this visitor; refused past the per-visitor job limit
    if job_id is None:
        st.stop()
    picker.select_run(job_id)
    st.switch_page("app_pages/runs.py", query_params={"run": job_id})
