"""The dataset map: every image's pooled features laid out in 2-D, with suspected label errors and near-duplicates
marked, as data for a scatter plot (Evaluate's map, ``python -m pipeline map ... --out map.html``).

Features come from a run's own model (``RUN``: the images of its splits, as it trained on them) or from the
pretrained base before any run (``DATA``: the dataset as scanned, its corrections applied). The layout is
scikit-learn's t-SNE: on 4,307 flower photos' features here it took 13.6 s, where UMAP (umap-learn 0.5.12) took
27.7 s plus 8.5 s compiling its numba code in each new process (BENCHMARKS.md, "Dataset map"). Suspected label
errors are found as ``pipeline.quality.label_issues`` finds them (out-of-fold logistic heads on the same features,
ranked by cleanlab); near-copies are images whose small grey thumbnails correlate at or above
:data:`NEAR_DUPLICATE` (exact byte copies never reach the map: the scan skips them, and the result lists them). A
map is computed once per (dataset revision, model, image size) and kept under ``TRANSFER_STUDIO_HOME/maps`` (a
run's map: ``dataset_map.json`` in the run folder).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import data as data_mod
from pipeline.config import RunConfig
from pipeline.host import paths
from pipeline.host.atomic import atomic_write_json
from pipeline.host.background import Background
from pipeline.host.exitcodes import UserError
from pipeline.quality import label_issues
from pipeline.training.model import pooled_features

SVG_POINTS = 5000  # up to this many points the map is drawn as SVG, beyond it with WebGL (faster, canvas only)
# Near-copies: 16x16 grey thumbnails (centred) whose cosine is at least this: the same photo resized to 80% and
# recompressed scored 0.993; no two of hymenoptera's 397 photos reach 0.99 (a trained model's pooled features put
# 1,676 of the 1,797 digits above 0.98: similar is not the same picture).
NEAR_DUPLICATE = 0.99
RUN_MAP_NAME = "dataset_map.json"
FORMAT_VERSION = 1
BUILD = Background(status_name="dataset_map.status.json", log_name="dataset_map.log")
Progress = Callable[[str], None]


class MapError(UserError, ValueError):
    """The map cannot be made as asked (an output that is not an HTML file); the message says why."""


def project(features: np.ndarray, seed: int) -> np.ndarray:
    """2-D coordinates of ``features`` with scikit-learn's t-SNE (cosine distances, PCA start, seeded)."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 6:  # t-SNE needs a neighbourhood (perplexity below n): a handful of images sit on a line
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, dtype=np.float32)])
    tsne = TSNE(n_components=2, init="pca", metric="cosine", perplexity=min(30.0, (n - 1) / 3), random_state=seed)
    return np.asarray(tsne.fit_transform(features), dtype=np.float32)


def signatures(files: list[str], size: int = 16) -> np.ndarray:
    """Each image as a ``size`` x ``size`` grey thumbnail, centred and scaled to unit length (an image that cannot
    be read: zeros, similar to nothing)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(path: str) -> np.ndarray:
        try:
            grey = data_mod.load_image(path, size).astype(np.float32).mean(axis=2).ravel()
        except (data_mod.DataError, OSError):
            return np.zeros(size * size, np.float32)
        grey -= grey.mean()
        return grey / max(float(np.linalg.norm(grey)), 1e-6)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return np.stack(list(pool.map(one, files))) if files else np.zeros((0, size * size), np.float32)


def near_duplicates(vectors: np.ndarray, threshold: float = NEAR_DUPLICATE, block: int = 1024) -> dict[int, int]:
    """Each image that has a near-copy: index -> the index of its most similar other image, by the cosine of
    ``vectors`` (blocks of rows, so memory stays at ``block`` x N whatever the set's size)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    found: dict[int, int] = {}
    for start in range(0, len(unit), block):
        sims = unit[start : start + block] @ unit.T
        for row in range(len(sims)):
            sims[row, start + row] = -1.0  # not itself
        best = sims.argmax(axis=1)
        for row, j in enumerate(best):
            if sims[row, j] >= threshold:
                found[start + row] = int(j)
    return found


def compute(
    rows: list[tuple[str, str, int]],
    root: str,
    classes: list[str],
    cfg: RunConfig,
    extractor,
    *,
    features_from: str,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The map of ``rows`` (split, path under ``root``, label index) through ``extractor`` (raw pixels -> pooled
    features)."""
    t0 = time.perf_counter()
    files = [str(Path(root) / rel) for _, rel, _ in rows]
    labels = np.array([label for _, _, label in rows], dtype=np.int64)
    features = pooled_features(cfg, files, extractor, progress=progress)
    t_features = time.perf_counter() - t0
    if progress:
        progress(f"laying out {len(rows)} images")
    coords = project(features, cfg.train.seed)
    t_layout = time.perf_counter() - t0 - t_features
    suspected: dict[int, tuple[int, float]] = {}
    note = None
    try:
        probs, _ = label_issues.out_of_sample_probabilities(features, labels, len(classes), cfg.train.seed)
        order, scores = label_issues.rank(labels, probs)
        suspected = {int(i): (int(probs[i].argmax()), float(scores[i])) for i in order}
    except data_mod.DataError as exc:  # a class with a single image: no fold can hold it out
        note = f"no label-error search: {exc}"
    copies = near_duplicates(signatures(files))
    points = []
    for i, (split, rel, label) in enumerate(rows):
        point = {
            "path": rel,
            "file": files[i],
            "split": split,
            "label": classes[label],
            "x": round(float(coords[i, 0]), 4),
            "y": round(float(coords[i, 1]), 4),
            "issue": i in suspected,
            "suggested": classes[suspected[i][0]] if i in suspected else None,
            "score": round(suspected[i][1], 4) if i in suspected else None,
            "near_copy_of": rows[copies[i]][1] if i in copies else None,
        }
        points.append(point)
    return {
        "format_version": FORMAT_VERSION,
        "images": len(rows),
        "classes": classes,
        "features": features_from,
        "method": "t-SNE (cosine)",
        "issues": len(suspected),
        "near_duplicates": len(copies),
        "note": note,
        "seconds": {
            "features": round(t_features, 2),
            "layout": round(t_layout, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
        "points": points,
    }


def _all_rows(splits: data_mod.Splits) -> list[tuple[str, str, int]]:
    return [(split, rel, label) for split in ("train", "val", "test") for rel, label in getattr(splits, split)]


def for_run(run_dir: str | Path, *, progress: Progress | None = None, fresh: bool = False) -> dict[str, Any]:
    """The map of a trained run's images through its own model, kept as ``dataset_map.json`` in the run folder."""
    import keras

    from pipeline.host.devices import select_backend
    from pipeline.runs.folder import load_model, load_run

    run, cfg, splits = load_run(run_dir)
    cached = run.root / RUN_MAP_NAME
    if not fresh and (found := _read(cached)) is not None:
        return found
    select_backend(cfg.train.backend, strict=False)
    model = load_model(run)
    extractor = keras.Model(model.inputs, model.get_layer("pool").output)
    result = compute(
        _all_rows(splits),
        splits.root,
        list(splits.classes),
        cfg,
        extractor,
        features_from=f"the run's model ({cfg.model.backbone} at {cfg.model.image_size} px, after training)",
        progress=progress,
    )
    result["skipped"] = _skipped(json.loads(run.dataset.read_text(encoding="utf-8")).get("scan", {}))
    atomic_write_json(cached, result)
    return result


def for_data(source: str, cfg: RunConfig, *, progress: Progress | None = None, fresh: bool = False) -> dict[str, Any]:
    """The map of a dataset (its corrections applied) through ``cfg``'s pretrained base, before any run; kept under
    ``TRANSFER_STUDIO_HOME/maps`` per (data, revision, backbone, alpha, size, weights).

    Raises:
        DataError: the source cannot be read; WeightsUnavailableError: the base's weights are not here.
    """
    from pipeline.data import revision
    from pipeline.training import model as model_mod

    folder = data_mod.resolve_source(source, cfg.data)
    report, rev = revision.scan(folder, cfg.data, size=cfg.model.image_size, progress=_scan_progress(progress))
    m = cfg.model
    key = json.dumps([str(folder), rev.number, m.backbone, m.alpha, m.image_size, m.weights, FORMAT_VERSION])
    cached = paths.home() / "maps" / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")
    if not fresh and (found := _read(cached)) is not None:
        return found
    splits = data_mod.make_splits(report, cfg.data, cfg.train.seed)
    extractor = model_mod.build_models(cfg, len(splits.classes)).features
    result = compute(
        _all_rows(splits),
        splits.root,
        list(splits.classes),
        cfg,
        extractor,
        features_from=f"the pretrained base ({m.backbone} at {m.image_size} px, {m.weights} weights), before training",
        progress=progress,
    )
    result["skipped"] = _skipped(report.to_dict())
    result["revision"] = rev.number
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached, result)
    return result


def _scan_progress(progress: Progress | None):
    return (lambda done, total: progress(f"scanning {done}/{total}")) if progress else None


def _skipped(scan: dict[str, Any]) -> list[dict[str, Any]]:
    """The files the scan left out as copies (the same bytes twice, or in two classes): not on the map."""
    return [s for s in scan.get("skipped", []) if s.get("kind") in (data_mod.DUPLICATE, data_mod.CONFLICT)]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("format_version") == FORMAT_VERSION else None


# === In the background (the app) ===


def start_background(run_dir: str | Path) -> None:
    """Starts ``python -m pipeline map RUN_DIR`` as its own process (the app never runs TensorFlow)."""
    BUILD.start(run_dir, "pipeline", "map", str(Path(run_dir)))


def background_status(run_dir: str | Path) -> dict[str, Any]:
    """``state``: none, running (``step``: the latest progress line), done (``result``) or failed (``error``)."""
    return BUILD.outcome(run_dir, RUN_MAP_NAME, "the map")


# === Output: a standalone HTML page ===


def figure(result: dict[str, Any]):
    """A Plotly scatter of the map: coloured by label, suspected label errors as crosses, near-copies as diamonds;
    hover names the file and what is suspected. ``customdata`` holds each point's index."""
    import plotly
    import plotly.graph_objects as go

    points = result["points"]
    trace = go.Scatter if len(points) <= SVG_POINTS else go.Scattergl  # SVG: each point a clickable element
    fig = go.Figure()
    marks = (("ok", "circle", 7), ("issue", "x", 11), ("copy", "diamond", 10))
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.Dark24  # a class keeps its colour
    for n, cls in enumerate(result["classes"]):
        for kind, symbol, size in marks:
            idx = [i for i, p in enumerate(points) if p["label"] == cls and _kind(p) == kind]
            if not idx:
                continue
            name = cls if kind == "ok" else f"{cls}: {'suspected label error' if kind == 'issue' else 'near-copy'}"
            fig.add_trace(
                trace(
                    x=[points[i]["x"] for i in idx],
                    y=[points[i]["y"] for i in idx],
                    mode="markers",
                    name=_html_text(name),
                    legendgroup=_html_text(cls),
                    marker={
                        "symbol": symbol,
                        "size": size,
                        "color": palette[n % len(palette)],
                        "line": {"width": 1 if kind != "ok" else 0, "color": "black"},
                    },
                    customdata=idx,
                    text=[_hover(points[i]) for i in idx],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    fig.update_layout(
        title=_html_text(f"{result['images']} images: {result['features']}, {result['method']}"),
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
        height=640,
        legend={"itemsizing": "constant"},
        clickmode="event+select",
    )
    return fig


def _kind(point: dict[str, Any]) -> str:
    return "issue" if point["issue"] else "copy" if point["near_copy_of"] else "ok"


def _html_text(text: str) -> str:
    """Plotly reads tags in its text: names are shown as typed (``<b>`` stays literal)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _hover(p: dict[str, Any]) -> str:
    lines = [_html_text(p["path"]), f"label: {_html_text(p['label'])} ({p['split']})"]
    if p["issue"]:
        lines.append(f"suspected label error: looks like {_html_text(p['suggested'])}")
    if p["near_copy_of"]:
        lines.append(f"near-copy of {_html_text(p['near_copy_of'])}")
    return "<br>".join(lines)


def write_html(result: dict[str, Any], out: str | Path, thumb_size: int = 64) -> Path:
    """A standalone HTML page (Plotly bundled, no CDN): the map, and each point's thumbnail shown on hover."""
    import base64
    import io

    from PIL import Image

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise MapError(f"--out {out}: give an .html file name.")
    thumbs = []
    for p in result["points"]:
        try:
            pixels = data_mod.load_image(p["file"], thumb_size)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=70)
            thumbs.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
        except (data_mod.DataError, OSError):
            thumbs.append("")
    fig = figure(result)
    script = (
        "const thumbs = " + json.dumps(thumbs) + ";\n"
        "const plot = document.getElementById('{plot_id}');\n"
        "const img = document.createElement('img');\n"
        "img.id = 'thumb'; img.alt = ''; img.style.cssText = 'position:fixed;right:16px;bottom:16px;width:160px;"
        "border:1px solid #888;background:#fff;display:none';\n"
        "document.body.appendChild(img);\n"
        "plot.on('plotly_hover', e => { const i = e.points[0].customdata; if (thumbs[i]) { img.src = thumbs[i];"
        " img.style.display = 'block'; } });\n"
        "plot.on('plotly_unhover', () => { img.style.display = 'none'; });\n"
    )
    html = fig.to_html(include_plotlyjs=True, full_html=True, post_script=script)

    def write(fh) -> None:
        fh.write(html.encode("utf-8"))

    from pipeline.host.atomic import atomic_write

    atomic_write(out, write)
    return out
