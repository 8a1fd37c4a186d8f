"""A study's score of an exported bundle: held-out accuracy (from verification), file size and latency on one thread.

``python -m export RUN --formats tflite-float16,tflite-int8 --score`` writes ``score.json`` in the run folder (the
bundle holds only what its manifest lists). The latency is LiteRT's per image at batch 1 on **one thread of this
machine** (median of :data:`CALLS` calls after a warm-up), so trials of a study are comparable; a phone's core is
slower or faster.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from export import formats as formats_mod
from export.verify import artifact_path, size_bytes

CALLS = 50
SCORE_NAME = "score.json"
WARM_UP = 5


def latency_ms(path: Path, *, threads: int = 1, calls: int = CALLS) -> float:
    """Median milliseconds of one LiteRT ``invoke`` at batch 1 on ``threads`` threads (input: random pixels)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 256, size=inp["shape"]).astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    for _ in range(WARM_UP):
        interp.invoke()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def score(bundle: Path, verified: dict[str, Any]) -> dict[str, Any]:
    """score.json's content for the LiteRT files of ``bundle``, from its verification ``verified``."""
    rows = {}
    for fmt, row in verified["formats"].items():
        spec = formats_mod.REGISTRY.get(fmt)
        if spec is None or spec.family != "tflite":
            continue
        path = artifact_path(bundle, fmt)
        rows[fmt] = {
            "accuracy": row.get("accuracy"),
            "size_bytes": size_bytes(path),
            "latency_ms": round(latency_ms(path), 4),
            "passed": bool(row.get("passed")) and row.get("accuracy") is not None,
        }
    return {"images": verified["images"], "threads": 1, "calls": CALLS, "formats": rows}
