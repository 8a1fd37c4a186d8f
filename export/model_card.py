"""The bundle's model card: ``MODEL_CARD.md`` and ``confusion_matrix.png``, with the same fields in manifest.json.

Every figure is read from what the run and the export measured (dataset.json, state.json, metrics.jsonl,
eval.json, verify.json), never recomputed, so the card says exactly what was measured; ``tests/test_export.py``
checks its numbers against eval.json and verify.json. The card names the data by its folder or zip name, never
a server path: it ships inside the bundle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from export import formats as formats_mod
from pipeline.runs import events
from pipeline.runs.confidence import confidence_threshold

CARD_NAME = "MODEL_CARD.md"
MATRIX_NAME = "confusion_matrix.png"
WORST_PAIRS = 5


def fields(run, cfg, splits, verify_result: dict[str, Any] | None) -> dict[str, Any]:
    """The card's fields (also manifest.json's ``model_card``): data, training, results, formats, use."""
    from pipeline import backbones

    dataset = run.dataset_record()
    eval_result = run.evaluation()
    state = run.read_state()
    records = _records(run)
    start = next((r for r in records if r.get("event") == events.START), {})
    done = next((r for r in reversed(records) if r.get("event") == events.DONE), None)
    began = start.get("process_started", start.get("time"))
    spec = backbones.get(cfg.model.backbone)
    revision = dataset.get("revision") or {}
    return {
        "data": {
            "source": _shown_source(dataset.get("source", "")),
            "revision": revision.get("number", 0),
            "classes": list(splits.classes),
            "images": {name: len(getattr(splits, name)) for name in ("train", "val", "test")},
        },
        "training": {
            "backbone": cfg.model.backbone,
            "alpha": cfg.model.alpha if spec.alphas else None,
            "image_size": cfg.model.image_size,
            "weights": cfg.model.weights,
            "strategy": cfg.train.strategy,
            "epochs": {name: p.epochs_done for name, p in state.phases.items()},
            "best": None if state.best is None else {"phase": state.best.phase, "epoch": state.best.epoch},
            "precision": cfg.train.precision,
            "seed": cfg.train.seed,
            "backend": start.get("backend"),
            "devices": (start.get("devices") or {}).get("framework"),
            "wall_seconds": round(done["time"] - began, 1) if done and began else None,
            "resumed": sum(r.get("event") == events.RESUMED for r in records),
        },
        "results": None
        if eval_result is None
        else {
            "split": eval_result["split"],
            "images": eval_result["images"],
            "accuracy": eval_result["accuracy"],
            "optimistic": bool(eval_result.get("split_chose_checkpoint")),
            "per_class": eval_result["per_class"],
            "confused_pairs": eval_result.get("confused_pairs", [])[:WORST_PAIRS],
            "confusion_matrix": MATRIX_NAME,
            "confidence_threshold": eval_result["confidence_threshold"]
            if "confidence_threshold" in eval_result
            else confidence_threshold(eval_result),
        },
        "formats": None if verify_result is None else _format_rows(verify_result),
        "verified_on": None if verify_result is None else verify_result["images"],
    }


def _records(run) -> list[dict[str, Any]]:
    try:
        lines = run.metrics.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill: the resumed run wrote it again
    return out


def _shown_source(source: str) -> str:
    """``sample:digits`` as it is; a folder or zip by its name alone (the card ships: no server path)."""
    shown = source if ":" in source.split("/")[0] else Path(source).name
    return shown.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")  # bytes not UTF-8: \xNN


def _format_rows(verify_result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keep = ("runtime", "size_bytes", "agreement", "accuracy", "accuracy_change", "latency_ms", "passed", "note")
    rows = {}
    for name, row in verify_result["formats"].items():
        rows[name] = {k: row.get(k) for k in keep}
        base = name.replace("mediapipe-", "tflite-", 1)  # a MediaPipe row checks the LiteRT file of its level
        if base in formats_mod.REGISTRY:
            rows[name]["file"] = formats_mod.get(base).file
    return rows


def write_confusion_png(eval_result: dict[str, Any], path: Path) -> None:
    """The confusion matrix as a PNG: rows the true class, columns the predicted one, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(eval_result["confusion_matrix"])
    labels = eval_result["labels"]
    side = max(3.0, 0.6 * len(labels) + 1.5)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{eval_result['split']} split, {eval_result['images']} images")
    high = matrix.max() / 2 if matrix.size else 0
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > high else "black", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(card: dict[str, Any], name: Callable[[str], str] = str, image: bool = True) -> str:
    """MODEL_CARD.md from :func:`fields`.

    Args:
        name: Applied to every name that came from the user's data (classes, the source): the app passes its
            Markdown escape, so a class called ``**x**`` shows as typed.
        image: Link the confusion matrix PNG (the app draws it beside instead).
    """
    data, training, results = card["data"], card["training"], card["results"]
    classes = [name(c) for c in data["classes"]]
    lines = [
        "# Model card",
        "",
        f"An image classifier for {len(classes)} classes: {', '.join(classes)}. "
        f"{training['backbone']} at {training['image_size']}x{training['image_size']} px, trained with Transfer "
        "Studio. Every figure below was measured on held-out images by the run and the export that wrote this "
        "bundle.",
        "",
        "## Intended use and limits",
        "",
        f"- It tells these {len(classes)} classes apart, and nothing else. **An image of anything else still gets "
        "one of them**, often with a low probability: check the top probability against the confidence "
        'threshold below and treat a lower one as "none of these".',
        "- Two classes within a few points of each other (a near-tie) are a guess between the two.",
        "- It learned from the images listed under Data: photos unlike them (other cameras, light, framing) may "
        "score lower than the results below.",
    ]
    if results is not None:
        threshold = results["confidence_threshold"]
        if threshold is not None:
            lines += [
                "",
                f"**Confidence threshold: {threshold['value']:.3f}.** The lowest top-1 probability that keeps "
                f"{threshold['keep']:.0%} of the correctly classified {threshold['split']} images "
                f"({threshold['keeps']:.1%} of {threshold['correct']}); it would also flag "
                f"{threshold['mistakes_below']} of the {threshold['mistakes']} mistakes there. Below it, say the "
                "model is not sure.",
            ]
    images = data["images"]
    lines += [
        "",
        "## Data",
        "",
        f"- Source: {name(data['source'])}, dataset revision {data['revision']} (corrections made in Transfer Studio).",
        f"- Images: {images['train']} train, {images['val']} validation, {images['test']} test.",
        "",
        "## Training",
        "",
        f"- Backbone: {training['backbone']}"
        + (f" (alpha {training['alpha']})" if training["alpha"] is not None else "")
        + (
            ", no pretrained weights (random initial values)"
            if training["weights"] == "none"
            else f", {training['weights']} weights"
        )
        + f", input {training['image_size']} px.",
        f"- Strategy: {training['strategy']}; epochs "
        + ", ".join(f"{phase} {n}" for phase, n in training["epochs"].items())
        + (
            f"; best epoch {training['best']['epoch']} of {training['best']['phase']}."
            if training["best"] is not None
            else "."
        ),
        f"- Precision {training['precision']}, seed {training['seed']}, on {training['backend']} "
        f"({', '.join(training['devices'] or ['?'])})"
        + (f", {training['wall_seconds']:.0f} s start to done" if training["wall_seconds"] is not None else "")
        + (f", resumed {training['resumed']} time(s)" if training["resumed"] else "")
        + ".",
    ]
    if results is not None:
        lines += [
            "",
            "## Results",
            "",
            f"Accuracy on the {results['split']} split ({results['images']} images): **{results['accuracy']:.2%}**"
            + (
                " (no test split: the validation split also chose the best epoch, so this is optimistic)."
                if results["optimistic"]
                else "."
            ),
            "",
            "| class | precision | recall | F1 | images |",
            "|---|---:|---:|---:|---:|",
        ]
        for cls, m in results["per_class"].items():
            lines.append(f"| {name(cls)} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
        lines += ["", f"![Confusion matrix]({results['confusion_matrix']})", ""] if image else [""]
        pairs = [p for p in results["confused_pairs"] if p["images"]]
        lines += (
            [
                "Most confused: "
                + "; ".join(f"{name(p['true'])} taken for {name(p['predicted'])} ({p['images']})" for p in pairs)
            ]
            if pairs
            else ["No image was confused."]
        )
    if card["formats"] is not None:
        lines += [
            "",
            "## Files and how each was verified",
            "",
            f"Each file was run in its own runtime on the same {card['verified_on']} held-out images as the trained "
            "Keras model; agreement is the share of images with the same top-1 class (verify.json has every "
            "figure).",
            "",
            "| format | file | runtime | size | agreement | accuracy | ms/image | verdict |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for fmt, r in card["formats"].items():
            size = f"{r['size_bytes'] / 1e6:.2f} MB" if r.get("size_bytes") else "-"
            agree = "-" if r.get("agreement") is None else f"{r['agreement']:.2%}"
            acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.2%}"
            ms = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.2f}"
            lines.append(
                f"| {fmt} | {r.get('file') or '-'} | {r.get('runtime') or '-'} | {size} | {agree} | {acc} | {ms} "
                f"| {'ok' if r.get('passed') else 'FAILED'} |"
            )
        lines += ["", "Milliseconds are on the exporting machine's CPU, one image at a time; a phone differs."]
    return "\n".join(lines) + "\n"
