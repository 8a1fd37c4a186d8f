"""Why the model decided: Grad-CAM heatmaps on the base's last convolutional feature map, as overlay PNGs.

Grad-CAM (Selvaraju et al., 2017; the keras-io ``grad_cam`` example) weighs each channel k of the last feature
map A by the gradient of the class score y_c (the logit, before softmax) averaged over the map's positions, and
keeps the positive part of the weighted sum: ``relu(sum_k alpha_k A_k)``, ``alpha_k = mean_ij dy_c/dA_ijk``.
Every run's model has the same head: global average pooling, then one dense layer (``pipeline.training.model``).
For that head the gradient is exact and constant: ``y_c = mean_ij(A_ij) . W[:, c] + b_c``, so
``dy_c/dA_ijk = W[k, c] / (H W)`` and ``alpha_k = W[k, c] / (H W)`` (Grad-CAM equals CAM there, section 3.1 of the
paper). This module computes it that way: one forward pass to the feature map, no gradient tape, the same on
TensorFlow and JAX, for every backbone in the registry and the small CNN. ``tests/test_explain.py`` checks the
closed form against a gradient taken by TensorFlow.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class ExplainError(ValueError):
    """The model's head is not pooling + one dense layer, so the closed form does not hold."""


@dataclass(frozen=True)
class Explanation:
    """One image's heatmap for one class.

    Attributes:
        heatmap: [h, w] in 0..1 at the feature map's resolution (1 = the strongest evidence for the class).
        class_index: The class explained (the top-1 unless another was asked for).
        probability: The model's probability of that class.
        probabilities: Every class's probability (the model's own output).
    """

    heatmap: np.ndarray
    class_index: int
    probability: float
    probabilities: np.ndarray


class Explainer:
    """Grad-CAM for a run's inference model (raw RGB pixels in, softmax out), a batch at a time."""

    def __init__(self, model: Any):
        import keras

        try:
            pool, dense = model.get_layer("pool"), model.get_layer("predictions")
        except ValueError as exc:
            raise ExplainError(f"the model has no 'pool' and 'predictions' layers ({exc})") from exc
        if not isinstance(pool, keras.layers.GlobalAveragePooling2D) or not isinstance(dense, keras.layers.Dense):
            raise ExplainError("the model's head is not global average pooling + one dense layer")
        self.features = keras.Model(model.inputs, pool.input, name="feature_map")  # the base's last feature map
        self.kernel = np.asarray(keras.ops.convert_to_numpy(dense.kernel), dtype=np.float64)  # [K, classes]
        self.bias = np.asarray(keras.ops.convert_to_numpy(dense.bias), dtype=np.float64)

    def explain(self, pixels: np.ndarray, class_index: int | None = None) -> list[Explanation]:
        """Heatmaps for raw RGB pixels [N, S, S, 3] (uint8 or float 0..255): the top class, or ``class_index``."""
        fmap = np.asarray(self.features.predict_on_batch(np.asarray(pixels, dtype="float32")), dtype=np.float64)
        logits = fmap.mean(axis=(1, 2)) @ self.kernel + self.bias  # the head, as the model computes it
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for i in range(len(fmap)):
            c = int(probs[i].argmax()) if class_index is None else int(class_index)
            cam = np.maximum(fmap[i] @ self.kernel[:, c], 0.0)  # relu(sum_k alpha_k A_k), alpha_k = W[k, c] / HW
            peak = cam.max()
            out.append(
                Explanation(
                    heatmap=(cam / peak if peak > 0 else cam).astype(np.float32),
                    class_index=c,
                    probability=float(probs[i, c]),
                    probabilities=probs[i].astype(np.float32),
                )
            )
        return out


def upsampled(heatmap: np.ndarray, size: int) -> np.ndarray:
    """The heatmap at ``size`` x ``size`` (bilinear), 0..1, as the overlay and the quadrant test use it."""
    from PIL import Image

    img = Image.fromarray(np.asarray(heatmap, dtype=np.float32))  # mode F
    return np.clip(np.asarray(img.resize((size, size), Image.Resampling.BILINEAR)), 0.0, 1.0)


@functools.cache
def _colormap() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def overlay(pixels: np.ndarray, explanation: Explanation, caption: str | None = None, alpha: float = 0.45):
    """The image with its heatmap blended over it (jet colours), and ``caption`` in a band below; a PIL image."""
    from PIL import Image, ImageDraw

    size = pixels.shape[0]
    heat = _colormap()[(upsampled(explanation.heatmap, size) * 255).astype(np.uint8)]
    blended = (np.asarray(pixels, dtype=np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)
    shown = Image.fromarray(blended).resize((max(size, 224), max(size, 224)), Image.Resampling.BILINEAR)
    if not caption:
        return shown
    out = Image.new("RGB", (shown.width, shown.height + 22), "white")
    out.paste(shown, (0, 0))
    ImageDraw.Draw(out).text((6, shown.height + 5), caption, fill="black")
    return out


def explain_run(
    run_dir: str | Path,
    sources: list[str | Path],
    out_dir: str | Path,
    *,
    class_name: str | None = None,
    progress=None,
) -> list[dict[str, Any]]:
    """Overlay PNGs for every image of ``sources`` (files or folders) in ``out_dir``; a row per image.

    Each row: ``path`` (as given), ``class`` and ``probability`` (explained), ``overlay`` (the PNG written), or
    ``error`` (an unreadable file, named with the reason). Files are written whole (temporary name, then rename).

    Raises:
        PredictError: no image found, a source missing, or ``class_name`` not one of the run's classes.
    """
    from pipeline.host.atomic import atomic_write
    from pipeline.host.devices import select_backend
    from pipeline.quality.predict import BATCH, PredictError, decode_items, find_images
    from pipeline.runs.folder import load_model, load_run

    run, cfg, splits = load_run(run_dir)
    classes = list(splits.classes)
    if class_name is not None and class_name not in classes:
        raise PredictError(f"--class {class_name!r} is not one of the run's classes ({', '.join(classes)}).")
    items = find_images(list(sources))
    select_backend(cfg.train.backend, strict=False)
    explainer = Explainer(load_model(run))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    pending: list[tuple[Any, np.ndarray]] = []
    used: set[str] = set()

    def flush() -> None:
        if not pending:
            return
        found = explainer.explain(
            np.stack([p for _, p in pending]), None if class_name is None else classes.index(class_name)
        )
        for (item, pixels), e in zip(pending, found, strict=True):
            name = _unique(Path(item.name).stem + ".gradcam.png", used)
            caption = f"{classes[e.class_index]} {e.probability:.1%}"
            image = overlay(pixels, e, caption)
            atomic_write(out / name, lambda fh, image=image: image.save(fh, format="PNG"))
            rows.append({"path": item.name, "class": classes[e.class_index], "probability": e.probability,
                         "overlay": str(out / name), "error": None})  # fmt: skip
            if progress:
                progress(len(rows), len(items))
        pending.clear()

    for item, pixels, error in decode_items(items, cfg.model.image_size, cfg.data.max_image_pixels):
        if error is not None:
            flush()
            rows.append({"path": item.name, "class": None, "probability": None, "overlay": None, "error": error})
            continue
        pending.append((item, pixels))
        if len(pending) == BATCH:
            flush()
    flush()
    return rows


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name`` with ``-2``, ``-3``... before its suffixes when two images share a stem."""
    stem, suffix = name.split(".", 1)
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}.{suffix}"
    used.add(candidate)
    return candidate
