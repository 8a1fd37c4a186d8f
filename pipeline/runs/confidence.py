"""The "none of these" threshold: the lowest top-1 probability that keeps most correct held-out answers.

A model only knows its classes: a photo of anything else (a daisy given to an ants/bees model) still gets one of
them, often with a low probability. Evaluation stores the threshold in eval.json; predict, Try, the bundle's
manifest, README snippets, web demo and model card flag a prediction below it as uncertain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CONFIDENCE_KEEP = 0.95  # the threshold keeps this share of the correctly classified held-out images


def confidence_threshold(result: dict[str, Any], keep: float = CONFIDENCE_KEEP) -> dict[str, Any] | None:
    """The lowest top-1 probability that keeps ``keep`` of the correctly classified held-out images.

    A prediction below it is flagged uncertain: the model only knows its classes, and a photo of anything else
    (a daisy given to an ants/bees model) still gets one of them, often with a low probability. Calibrated on the
    evaluated split (test, else val); None when no image was classified correctly.

    Returns:
        ``value`` (the threshold), ``keeps`` (the share of correct images at or above it), ``correct``, and
        ``mistakes_below`` of ``mistakes`` (the wrong answers it would flag), on ``split``.
    """
    rows = result.get("predictions") or []
    correct = sorted(r["probability"] for r in rows if r["true"] == r["predicted"])
    if not correct:
        return None
    value = correct[int(np.floor(len(correct) * (1 - keep) + 1e-9))]  # drop at most (1 - keep) of them
    mistakes = [r["probability"] for r in rows if r["true"] != r["predicted"]]
    return {
        "value": float(value),
        "keep": keep,
        "keeps": sum(p >= value for p in correct) / len(correct),
        "correct": len(correct),
        "mistakes": len(mistakes),
        "mistakes_below": sum(p < value for p in mistakes),
        "split": result.get("split"),
    }


def threshold_of_run(run) -> float | None:
    """A run folder's threshold; None without an evaluation, or when eval.json cannot be read (Evaluate says so:
    predicting without the flag beats refusing to predict)."""
    from pipeline.runs.folder import DamagedFileError

    try:
        return threshold_of(run.evaluation())
    except DamagedFileError:
        return None


def threshold_of(result: dict[str, Any] | None) -> float | None:
    """The run's "none of these" threshold from its eval.json (computed for one written before it was stored)."""
    if not result:
        return None
    found = result["confidence_threshold"] if "confidence_threshold" in result else confidence_threshold(result)
    return None if found is None else float(found["value"])
