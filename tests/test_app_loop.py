"""The improvement loop in the app (AppTest, a real tiny job): a confusion cell's images, a correction
recorded as the dataset's revision, a retrain from the run, and the two runs compared."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.data import revision
from pipeline.jobs.store import JobStore
from tests.test_app import _no_exception, _page, finished_job  # noqa: F401 - finished_job is a fixture


def _wait(job_id: str) -> None:
    store = JobStore()
    t0 = time.monotonic()
    while store.get(job_id).state in ("queued", "running"):
        assert time.monotonic() - t0 < 300
        time.sleep(0.5)
    assert store.get(job_id).state == "done", store.get(job_id).error


def test_cell_selection_correction_retrain_and_compare(finished_job):  # noqa: F811
    run_dir = Path(JobStore().get(finished_job).run_dir)
    result = json.loads((run_dir / "eval.json").read_text())
    true, predicted = result["confused_pairs"][0]["true"], result["confused_pairs"][0]["predicted"]
    n = result["confused_pairs"][0]["images"]

    at = _page("evaluate.py", run=finished_job)
    _no_exception(at)
    assert any(s.value.startswith("Most confident mistakes") for s in at.subheader)
    # a click on the cell (true, predicted) of the confusion matrix, as the browser reports it
    at.session_state[f"cm-{finished_job}"] = {
        "selection": {"points": [{"customdata": [true, predicted, n]}], "point_indices": [0], "box": [], "lasso": []}
    }
    at.run()
    _no_exception(at)
    heading = next(s.value for s in at.subheader if s.value.startswith("True "))
    assert f"{n} image(s), mistakes" in heading
    assert at.get("imgs") or at.get("image")

    # relabel the first image of that cell to its predicted class: recorded as a revision, files untouched
    folder = json.loads((run_dir / "dataset.json").read_text())["scan"]["root"]
    first = next(b for b in at.button if b.label == "Relabel")
    first.click().run()
    _no_exception(at)
    rev = revision.Revision(folder)
    assert [e["op"] for e in rev.active()] == ["relabel"] and rev.active()[0]["class"] == predicted
    # the card says so (it kept the old label, only a toast confirmed), and the correction is listed
    assert any(f"relabelled {predicted}" in c.value and "since" in c.value for c in at.caption)
    assert any(t.value.startswith("#1 relabelled ") for t in at.text)

    # one selection model: a row of "Most confused pairs" chosen after the cell shows that pair (the cell's
    # images stayed until the chart was double-clicked); the button goes back to the mistakes
    pairs = result["confused_pairs"]
    row = len(pairs) - 1
    at.session_state[f"pairs-{finished_job}"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    at.run()
    _no_exception(at)
    heading = next(s.value for s in at.subheader if s.value.startswith("True "))
    assert heading.startswith(f"True {pairs[row]['true']}, predicted {pairs[row]['predicted']}"), heading
    assert any(c.value.startswith("Selected in Most confused pairs") for c in at.caption)
    # the chart was drawn again without its cell (a new key); a click on it there wins again
    assert f"cm-{finished_job}-1" in at.session_state and f"cm-{finished_job}" not in at.session_state
    at.session_state[f"cm-{finished_job}-1"] = {
        "selection": {"points": [{"customdata": [true, predicted, n]}], "point_indices": [0], "box": [], "lasso": []}
    }
    at.run()
    heading = next(s.value for s in at.subheader if s.value.startswith("True "))
    assert heading.startswith(f"True {true}, predicted {predicted}"), heading
    assert f"pairs-{finished_job}-1" in at.session_state  # and the table, without its row
    next(b for b in at.button if b.label == "Back to the most confident mistakes").click().run()
    assert any(s.value.startswith("Most confident mistakes") for s in at.subheader)

    # each correction has its own Undo: exclude one more image, undo the relabel only
    next(b for b in at.button if b.label == "Exclude from the data").click().run()
    assert [e["op"] for e in revision.Revision(folder).active()] == ["relabel", "exclude"]
    next(b for b in at.button if b.key == f"corrections-{finished_job}-undo-1").click().run()
    _no_exception(at)
    assert [e["op"] for e in revision.Revision(folder).active()] == ["exclude"]
    next(b for b in at.button if b.key == f"corrections-{finished_job}-undo-2").click().run()
    at = _page("evaluate.py", run=finished_job)
    at.session_state[f"cm-{finished_job}"] = {
        "selection": {"points": [{"customdata": [true, predicted, n]}], "point_indices": [0], "box": [], "lasso": []}
    }
    at.run()
    next(b for b in at.button if b.label == "Relabel").click().run()
    assert [e["op"] for e in revision.Revision(folder).active()] == ["relabel"]

    # retrain from the run: a new job whose config links back, trained on revision 1
    at = _page("evaluate.py", run=finished_job)
    next(b for b in at.button if b.label == "Retrain with these fixes").click().run()
    _no_exception(at)
    jobs = JobStore().list()
    child = next(j for j in jobs if j.id != finished_job)
    assert child.config["train"]["init_from"] == str(run_dir)
    _wait(child.id)
    child_dataset = json.loads((Path(child.run_dir) / "dataset.json").read_text())
    assert child_dataset["revision"]["number"] == revision.Revision(folder).number == 5  # 3 corrections, 2 undos

    # compare the two on the Runs page
    at = _page("runs.py", run=child.id)
    compare = next(m for m in at.multiselect if m.label.startswith("Compare runs"))
    compare.set_value([finished_job, child.id]).run()
    _no_exception(at)
    assert any("was retrained from" in c.value for c in at.caption)
    assert any("train.init_from" in str(df.value) for df in at.dataframe)


def test_a_photo_added_to_a_class_folder_shows_in_the_counts(tmp_path, monkeypatch):
    """The scan cache is keyed by the whole tree (every folder's mtime), not only the top folder's."""
    import numpy as np
    from PIL import Image

    from tests.conftest import write_shapes_dataset

    root = tmp_path / "root"
    shapes = write_shapes_dataset(root / "shapes", per_class=4)
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(root))

    def images() -> str:
        at = _page("data.py")
        at.radio[0].set_value("Server folder").run()
        _no_exception(at)
        return {m.label: m.value for m in at.metric}["Images"]

    assert images() == "12"
    top = (root / "shapes").stat().st_mtime_ns
    Image.fromarray(np.full((40, 40, 3), 99, np.uint8)).save(shapes / "bar" / "bar_new.png")
    assert (root / "shapes").stat().st_mtime_ns == top  # the top folder did not change
    assert images() == "13"
