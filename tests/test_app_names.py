"""Issue 21, point 7: every page is safe on a dataset whose file names are not UTF-8.

Linux keeps a file name's bytes as they are; Python holds the bytes that are not UTF-8 as lone surrogates
(``os.fsdecode(b"bad_\\xff.jpg") == "bad_\\udcff.jpg"``), which no Streamlit element can send to the browser.
Such a name is shown with its odd bytes escaped (``bad_\\xff.jpg``), and the file is still opened by its real
name. The test walks every page (Data, Augment, Train, Runs, Evaluate with a confusion cell and a relabel,
the label-error search, a retrain and the comparison, Export, Try) through AppTest with such a dataset, trained
for real on the small CNN.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import revision
from pipeline.jobs.store import JobStore
from pipeline.quality import label_issues
from tests.conftest import write_shapes_dataset
from tests.test_app import _no_exception, _page, shown
from tests.test_app_loop import _wait

TRAIN_NAME = os.fsdecode(b"bad_\xff.jpg")  # a real JPEG, used for training
TEST_NAME = os.fsdecode(b"odd_\xfe.jpg")  # a real JPEG in the test split: evaluated, verified by the export
BROKEN_NAME = os.fsdecode(b"broken_\xfd.jpg")  # not an image: listed among the skipped files
TWIN_NAME = os.fsdecode(b"twin_\xfc.png")  # the same bytes in two classes: skipped, named by the label search
SUB_NAME = os.fsdecode(b"more_\xfb")  # a folder inside a class folder: its images are the class's too


def escaped(name: str) -> str:
    """How the app shows a name: its bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _jpeg(path: Path, value: int) -> None:
    img = np.random.default_rng(value).integers(0, 60, (40, 40, 3)).astype(np.uint8)
    img[10:30, 10:30] = value
    Image.fromarray(img).save(path, format="JPEG")


@pytest.fixture
def odd_root(tmp_path, monkeypatch) -> Path:
    """A data root with one dataset (train/ val/ test/ folders of three classes) holding non-UTF-8 names."""
    root = tmp_path / "root"
    odd = root / "odd"
    for split, per_class, seed in (("train", 8, 0), ("val", 4, 1), ("test", 4, 2)):
        write_shapes_dataset(odd / split, per_class=per_class, seed=seed)
    _jpeg(odd / "train" / "square" / TRAIN_NAME, 220)
    _jpeg(odd / "test" / "square" / TEST_NAME, 230)
    (odd / "val" / "disc" / BROKEN_NAME).write_bytes(b"not an image")
    (odd / "train" / "bar" / SUB_NAME).mkdir()
    _jpeg(odd / "train" / "bar" / SUB_NAME / "deep.jpg", 240)
    for cls in ("bar", "disc"):
        Image.fromarray(np.full((40, 40, 3), 77, np.uint8)).save(odd / "train" / cls / TWIN_NAME)
    assert (odd / "train" / "square" / TRAIN_NAME).exists()
    assert os.fsencode(TRAIN_NAME) == b"bad_\xff.jpg"
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(root))
    return odd


def _cells(at) -> list[str]:
    """Every cell of every table on the page, as text."""
    return [str(v) for df in at.dataframe for v in df.value.to_numpy().ravel()]


def _texts(at) -> list[str]:
    """Every piece of text on the page a name could be in (Markdown escapes removed)."""
    found = [
        shown(e.value)
        for kind in ("text", "caption", "markdown", "error", "warning", "info", "subheader")
        for e in at.get(kind)
    ]
    found += _cells(at)
    found += [o for sb in at.selectbox for o in sb.options]
    return found


def _stop_workers() -> None:
    import signal

    from pipeline.jobs.backends import LocalBackend

    store = JobStore()
    for w in store.workers():
        if w.stopped is None:
            os.kill(w.pid, signal.SIGTERM)
    while LocalBackend(store).worker_alive():
        time.sleep(0.1)


def test_a_name_is_shown_with_the_bytes_that_are_not_utf8_escaped():
    from app_pages import wording

    assert wording.readable(TRAIN_NAME) == "bad_\\xff.jpg" == escaped(TRAIN_NAME)
    assert wording.readable("caf\u00e9/\u00fc.png") == "caf\u00e9/\u00fc.png"  # UTF-8 names as they are
    assert wording.readable("x\ud800") == "x\\ud800"  # a surrogate no file name makes (a JSON escape)
    assert shown(wording.plain(f"ants/{TRAIN_NAME}")) == "ants/bad_\\xff.jpg"
    assert wording.chart_label(TRAIN_NAME) == "bad_\\xff.jpg"
    assert os.fsdecode(wording.fs_key(f"/d/{TRAIN_NAME}")) == f"/d/{TRAIN_NAME}"


def test_every_page_is_safe_on_non_utf8_file_names(odd_root):
    try:
        _walk(odd_root)
    finally:
        _stop_workers()


def _walk(odd: Path) -> None:
    # Data: the dataset scans, its thumbnails draw, the skipped file is named (escaped)
    at = _page("data.py")
    at.radio[0].set_value("Server folder").run()
    _no_exception(at)
    assert at.selectbox[0].value == "odd"
    cells = _cells(at)
    assert "val/disc/" + escaped(BROKEN_NAME) in cells and "train/bar/" + escaped(TWIN_NAME) in cells, cells
    assert at.get("image")

    # Augment: the image box lists the name escaped; the preview of that very file is drawn
    at.switch_page("app_pages/augment.py")
    at.run()
    _no_exception(at)
    box = next(sb for sb in at.selectbox if sb.label == "Image")
    assert f"train/square/{escaped(TRAIN_NAME)}" in box.options, box.options
    assert f"train/bar/{escaped(SUB_NAME)}/deep.jpg" in box.options, box.options
    box.set_value(f"train/square/{TRAIN_NAME}").run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("image")) == 9

    # Train: the small CNN on tiny images, launched from the page
    at.switch_page("app_pages/train.py")
    at.run()
    _no_exception(at)
    at.selectbox(key="train:backbone").set_value("small_cnn").run()
    at.number_input(key="train:head_epochs").set_value(3)
    at.number_input(key="train:batch_size").set_value(8).run()
    _no_exception(at)
    next(b for b in at.button if b.label == "Launch training").click().run()
    _no_exception(at)
    job_id = JobStore().list()[0].id
    _wait(job_id)
    run_dir = Path(JobStore().get(job_id).run_dir)

    # The run folder's JSON keeps the real names: the pages reading it back open the files
    splits = json.loads((run_dir / "dataset.json").read_text(encoding="utf-8"))["splits"]
    assert ["train/square/" + TRAIN_NAME, 2] in splits["train"]
    result = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    row = next(p for p in result["predictions"] if p["path"] == "test/square/" + TEST_NAME)
    assert Path(row["file"]).is_file()

    at = _page("runs.py", run=job_id)
    _no_exception(at)
    assert any(m.label == "State" and m.value == "done" for m in at.metric)

    # Evaluate: the mistakes, then the confusion cell holding the odd test image, named escaped
    at = _page("evaluate.py", run=job_id)
    _no_exception(at)
    at.session_state[f"cm-{job_id}"] = {
        "selection": {
            "points": [{"customdata": [row["true"], row["predicted"], 1]}],
            "point_indices": [0],
            "box": [],
            "lasso": [],
        }
    }
    at.run()
    _no_exception(at)
    assert escaped(TEST_NAME) in _texts(at)
    plain = [i.value for i in at.get("image")]
    at.toggle(key=f"why-{job_id}").set_value(True).run()  # the same cell's images with their Grad-CAM heatmaps
    _no_exception(at)
    heatmaps = [i.value for i in at.get("image")]
    assert len(heatmaps) == len(plain) > 0 and not any("no heatmap" in c.value for c in at.caption)
    assert not set(map(str, heatmaps)) & set(map(str, plain))  # other pictures (served by content), not the same
    assert escaped(TEST_NAME) in _texts(at)
    at.toggle(key=f"why-{job_id}").set_value(False).run()
    # relabel it: the correction keeps the real name, and training applies it
    cell_rows = sorted(
        (p for p in result["predictions"] if (p["true"], p["predicted"]) == (row["true"], row["predicted"])),
        key=lambda p: -p["probability"],
    )
    i = cell_rows.index(row)
    other = next(c for c in result["labels"] if c != row["true"])
    at.selectbox(key=f"cell-{job_id}-cls-{i}").set_value(other).run()
    at.button(key=f"cell-{job_id}-relabel-{i}").click().run()
    _no_exception(at)
    entry = revision.Revision(str(odd.resolve())).active()[0]
    assert (entry["op"], entry["path"], entry["class"]) == ("relabel", "test/square/" + TEST_NAME, other), entry

    # the label-error search, started from the page; it names the copies found in two classes (escaped)
    next(b for b in at.button if b.label == "Find suspected label errors").click().run()
    _no_exception(at)
    t0 = time.monotonic()
    while label_issues.background_status(run_dir)["state"] == "running":
        assert time.monotonic() - t0 < 300
        time.sleep(0.5)
    assert label_issues.background_status(run_dir)["state"] == "done", label_issues.background_status(run_dir)
    at = _page("evaluate.py", run=job_id)
    _no_exception(at)
    assert any(escaped(TWIN_NAME) in shown(w.value) for w in at.warning), [w.value for w in at.warning]

    # the dataset map, drawn in the background; a click on the odd test image's point opens it with its actions
    from pipeline.quality import dataset_map

    next(b for b in at.button if b.label == "Draw the dataset map").click().run()
    _no_exception(at)
    t0 = time.monotonic()
    while dataset_map.background_status(run_dir)["state"] == "running":
        assert time.monotonic() - t0 < 300
        time.sleep(0.5)
    status = dataset_map.background_status(run_dir)
    assert status["state"] == "done", status
    at = _page("evaluate.py", run=job_id)
    _no_exception(at)
    assert any(c.value.startswith(f"{status['result']['images']} images:") for c in at.caption)
    point = next(i for i, p in enumerate(status["result"]["points"]) if p["path"] == "test/square/" + TEST_NAME)
    at.session_state[f"map-{job_id}-map"] = {
        "selection": {"points": [{"customdata": point}], "point_indices": [0], "box": [], "lasso": []}
    }
    at.run()
    _no_exception(at)
    assert any(escaped(TEST_NAME) == t for t in _texts(at))
    assert any(b.key == f"map-{job_id}-picked-relabel-0" for b in at.button)

    # Data again: the run's suspected label errors and the corrections are shown there too
    at = _page("data.py")
    _no_exception(at)
    assert any("correction(s) in effect" in c.value for c in at.caption)

    # Retrain with the fix, then compare the two runs on the Runs page
    at = _page("evaluate.py", run=job_id)
    next(b for b in at.button if b.label == "Retrain with these fixes").click().run()
    _no_exception(at)
    child = next(j for j in JobStore().list() if j.id != job_id)
    _wait(child.id)
    at = _page("runs.py", run=child.id)
    _no_exception(at)
    compare = next(m for m in at.multiselect if m.label.startswith("Compare runs"))
    compare.set_value([job_id, child.id]).run()
    _no_exception(at)

    # Export: verified on the held-out images, the odd one among them
    at = _page("export_page.py", run=job_id)
    _no_exception(at)
    at.multiselect[0].set_value(["savedmodel"])
    at.button[0].click().run()
    _no_exception(at)
    from export import task

    t0 = time.monotonic()
    while task.read_status(run_dir)["state"] == "running":
        assert time.monotonic() - t0 < 300
        time.sleep(1)
    at = _page("export_page.py", run=job_id)
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert any("Verification on" in s.value for s in at.subheader)
    assert any(e.label.startswith("Model card") for e in at.expander)
    assert any(m.value.startswith("# Model card") for m in at.markdown)

    # Try: the odd image itself, uploaded (a browser sends its name as valid text)
    at = _page("try_model.py", run=job_id)
    _no_exception(at)
    photo = odd / "test" / "square" / TEST_NAME
    at.file_uploader[0].set_value((escaped(TEST_NAME), photo.read_bytes(), "image/jpeg")).run()
    _no_exception(at)
    assert any(s.value.startswith("Server: ") for s in at.subheader)
    at.toggle(key="try-why").set_value(True).run()
    _no_exception(at)
    assert any("Where the model found" in c for i in at.get("image") for c in i.captions)

    # the model file cut short afterwards: Try says so in one message, without the server's paths
    model_file = run_dir / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    at = _page("try_model.py", run=job_id)
    _no_exception(at)
    said = [e.value for e in at.error]
    assert len(said) == 1 and "model.keras cannot be read" in shown(said[0]) and str(run_dir) not in said[0], said
