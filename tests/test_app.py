"""The Streamlit app through streamlit.testing.v1.AppTest, against a real tiny job."""

import os
import time
from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from export import task
from pipeline.jobs.backends import LocalBackend
from pipeline.jobs.store import JobStore
from tests.conftest import ROOT

ENTRY = str(ROOT / "streamlit_app.py")
config.set_option("client.showErrorDetails", "full")  # tests want the details users never see


BROWSER_KEY = "5" * 32  # the owner key one browser keeps in its cookie: every _page() is that same visitor


def _page(name: str, owner_key: str = BROWSER_KEY, **query) -> AppTest:
    """Runs one page through the entry (so st.navigation knows every page, as in the real app), as one visitor
    (by default the same owner key, as a refresh or a new tab of one browser)."""
    at = AppTest.from_file(ENTRY, default_timeout=120)
    at.session_state["owner_key"] = owner_key
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(f"app_pages/{name}")
    return at.run()


def shown(markdown: str) -> str:
    """What a browser shows for wording.plain() text: the Markdown escapes and the invisible word joiners removed."""
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_entry_opens_on_the_sample_set():
    at = AppTest.from_file(ENTRY, default_timeout=120).run()
    _no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "10" and metrics["Images"] == "1797"


def test_data_page_reports_a_bad_server_folder(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "oneclass" / "cats").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "oneclass" / "cats" / "a.png")
    (root / "oneclass" / "cats" / "b.jpg").write_bytes(b"not an image")
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(root))
    at = _page("data.py")
    at.radio[0].set_value("Server folder").run()
    _no_exception(at)
    assert any("at least 2 classes" in e.value for e in at.error)
    assert any("b.jpg" in str(df.value) for df in at.dataframe)


def _count(at: AppTest, kind: str) -> int:
    return len(at.get(kind))  # every element of that type on the page, at any depth


def test_chosen_server_folder_survives_leaving_and_reopening_the_data_page(tmp_path, monkeypatch):
    from tests.conftest import write_shapes_dataset

    shapes = write_shapes_dataset(tmp_path / "elsewhere" / "shapes", per_class=4)
    root = tmp_path / "root"
    root.mkdir()
    (root / "shapes").symlink_to(shapes)  # a dataset mounted elsewhere, linked into the data root
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(root))
    at = _page("data.py")
    at.radio[0].set_value("Server folder").run()
    _no_exception(at)
    assert {m.label: m.value for m in at.metric}["Classes"] == "3"
    at.switch_page("app_pages/train.py")
    at.run()
    assert any("shapes (3 classes" in shown(c.value) for c in at.caption)
    at.switch_page("app_pages/data.py")
    at.run()
    _no_exception(at)
    assert at.radio[0].value == "Server folder" and at.selectbox[0].value == "shapes"
    assert {m.label: m.value for m in at.metric}["Classes"] == "3"


def test_upload_choice_without_a_zip_asks_for_one():
    at = _page("data.py")
    at.radio[0].set_value("Upload a zip").run()
    _no_exception(at)
    assert any("Upload a .zip" in i.value for i in at.info) and not at.metric


def test_train_page_takes_an_uploaded_weights_file_instead_of_a_download():
    at = _page("train.py")
    at.selectbox[0].set_value("mobilenet_v2").run()  # backbone
    weights = next(sb for sb in at.selectbox if sb.label == "Weights")
    weights.set_value("upload a weights file").run()
    _no_exception(at)
    assert any("Upload the weights file" in i.value for i in at.info)
    assert not any(b.label == "Launch training" for b in at.button)  # nothing to launch without the file


def test_runs_page_shows_the_way_forward_when_weights_cannot_download():
    from pipeline import backbones, config

    store = JobStore()
    job_id = store.add("sample:digits", config.RunConfig().to_dict())
    store.claim(store.register_worker(1))
    offline = Exception(
        "URL fetch failure on https://storage.example/keras-applications/mobilenet_v2/"
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5: None -- [Errno -2]"
    )
    store.finish(job_id, "failed", backbones._weights_message(backbones.get("mobilenet_v2"), "imagenet", offline))
    at = _page("runs.py", run=job_id)
    _no_exception(at)
    assert any("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" in shown(e.value) for e in at.error)
    assert any("upload a weights file" in i.value for i in at.info)


def _grid_urls(at: AppTest) -> list[str]:
    return [img.proto.imgs[0].url for img in at.get("image")]  # media URLs are named by the image's content


def test_augment_page_shows_a_3x3_grid_that_re_roll_changes():
    at = _page("augment.py")
    at.toggle[0].set_value(True).run()  # the digits preset: a small rotation, zoom and translation
    _no_exception(at)
    first = _grid_urls(at)
    assert len(first) == 9 and len(set(first)) > 1  # nine different draws
    at.run()
    assert _grid_urls(at) == first  # a rerun with the same seed redraws the same grid (cached)
    at.button[0].click().run()  # re-roll
    _no_exception(at)
    rolled = _grid_urls(at)
    assert len(rolled) == 9 and rolled != first


def test_augment_page_names_an_image_that_can_no_longer_be_read():
    from pipeline import data

    at = _page("augment.py")
    _no_exception(at)
    pick = at.selectbox[1].value  # the Image box (after Flip)
    path = data.resolve_source("sample:digits") / pick
    with open(path, "r+b") as fh:  # rewritten in place: the folder's stamp (and the cached scan) unchanged
        fh.write(b"\0" * path.stat().st_size)
    at.button[0].click().run()  # re-roll: a new draw must read the file again
    _no_exception(at)
    assert any(pick in shown(e.value) and "could not be read" in shown(e.value) for e in at.error), [
        e.value for e in at.error
    ]


def test_augment_page_previews_settings_while_augmentation_is_off():
    at = _page("augment.py")  # the digits preset: augmentation off, a small rotation set
    assert not at.toggle[0].value
    assert at.selectbox[0].value == "none"  # a mirrored digit is not a digit: the preset never flips
    assert any("Augmentation is off" in i.value for i in at.info)
    at.toggle[0].set_value(True).run()
    _no_exception(at)
    assert not at.info and _count(at, "image") == 9
    for slider in at.slider:
        slider.set_value(0.0)
    at.selectbox[0].set_value("none").run()  # flip: no transform left
    assert any("No transform is set" in i.value for i in at.info)


@pytest.fixture
def finished_job():
    """A real tiny job launched from the Train page and run by the background worker."""
    at = _page("train.py")
    _no_exception(at)
    labels = [m.label for m in at.metric]  # no run on this machine yet: the estimate says it is a first guess
    assert "Per training epoch (first guess)" in labels and "Whole run (first guess)" in labels, labels
    at.number_input[1].set_value(2)  # epochs: keep the job short
    next(b for b in at.button if b.label == "Launch training").click().run()
    store = JobStore()
    jobs = store.list()
    assert len(jobs) == 1
    job_id = jobs[0].id
    t0 = time.monotonic()
    while store.get(job_id).state in ("queued", "running"):
        assert time.monotonic() - t0 < 300
        time.sleep(0.5)
    assert store.get(job_id).state == "done", store.get(job_id).error
    yield job_id
    import signal

    for w in store.workers():
        if w.stopped is None:
            os.kill(w.pid, signal.SIGTERM)
    while LocalBackend(store).worker_alive():
        time.sleep(0.1)


def test_train_runs_evaluate_export_try_on_a_real_job(finished_job):
    at = _page("runs.py", run=finished_job)
    _no_exception(at)
    assert any(m.label == "State" and m.value == "done" for m in at.metric)
    assert any(m.label == "Epochs" and m.value == "2 / 2" for m in at.metric)
    assert at.get("plotly_chart")

    at = _page("train.py")  # the finished run is now this machine's measurement for the same shape
    _no_exception(at)
    labels = [m.label for m in at.metric]
    assert "Per training epoch" in labels and "Whole run" in labels, labels
    assert any("measured on 1 earlier run(s)" in c.value for c in at.caption)

    at = _page("evaluate.py", run=finished_job)
    _no_exception(at)
    assert any("Accuracy on the test split" in m.label for m in at.metric)

    at = _page("export_page.py", run=finished_job)
    _no_exception(at)
    at.multiselect[0].set_value(["savedmodel", "tflite-float32", "tfjs"])
    at.button[0].click().run()  # starts the export in its own process and returns at once
    _no_exception(at)
    run_dir = Path(JobStore().get(finished_job).run_dir)
    assert task.read_status(run_dir)["state"] == "running"
    assert at.button[0].disabled  # one export at a time
    t0 = time.monotonic()
    while task.read_status(run_dir)["state"] == "running":
        assert time.monotonic() - t0 < 600
        time.sleep(1)
    at = _page("export_page.py", run=finished_job)  # a fresh session (refresh, second tab) sees the result
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert any("Verification on" in s.value for s in at.subheader)
    shown_rows = at.dataframe[0].value
    float32 = shown_rows[shown_rows["format"].isin(["savedmodel", "tflite-float32", "tfjs"])]
    assert len(float32) == 3 and set(float32["near-ties"]) == {"-"}  # no near-ties there: a dash, not "None"
    assert any(shown(c.value).startswith("mediapipe-float32: same top-1 as LiteRT") for c in at.caption)  # whole
    assert (run_dir / "exports" / "tfjs" / "model.json").exists()

    at = _page("try_model.py", run=finished_job)
    _no_exception(at)
    _try_a_photo(at, run_dir)


def _try_a_photo(at: AppTest, run_dir: Path) -> None:
    """Uploads test-split photos on the Try page (AppTest's file_uploader, as pinned: Streamlit 1.67): the server's
    answer is the run's own model's on those pixels; a file that is not an image is named in a message."""
    import json

    import numpy as np

    from pipeline.data import load_image
    from pipeline.runs.folder import RunFolder, load_model

    run = RunFolder(run_dir)
    splits = json.loads(run.dataset.read_text())["splits"]
    size = json.loads(run.config.read_text())["model"]["image_size"]
    model = load_model(run)
    for rel, _ in splits["test"][:2]:
        photo = Path(splits["root"]) / rel
        at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/png")).run()
        _no_exception(at)
        probs = model.predict(load_image(photo, size)[None].astype(np.float32), verbose=0)[0]
        top = int(probs.argmax())
        heading = [shown(s.value) for s in at.subheader if s.value.startswith("Server: ")]
        assert heading == [f"Server: {splits['classes'][top]} ({probs[top]:.1%})"], (rel, heading)
    at.file_uploader[0].set_value(("notes.png", b"not an image", "image/png")).run()
    _no_exception(at)
    assert any("notes.png" in shown(e.value) for e in at.error), [e.value for e in at.error]
    assert not any(s.value.startswith("Server: ") for s in at.subheader)


def test_a_crafted_run_id_in_the_link_is_refused():
    at = _page("runs.py", run="../../etc")
    _no_exception(at)
    assert any("is not a job id" in e.value for e in at.error)


def test_train_page_offers_only_the_splits_a_train_val_dataset_allows(tmp_path):
    """With train/ and val/ folders, Test fraction changed nothing (the test column stayed 0) while the caption
    said to set it: now the page asks where to carve the test split from, and the fractions that cannot apply
    are disabled, saying why."""
    from tests.conftest import write_shapes_dataset

    root = tmp_path / "given"
    write_shapes_dataset(root / "train", per_class=10)
    write_shapes_dataset(root / "val", per_class=5, seed=3)
    at = AppTest.from_file(ENTRY, default_timeout=120)
    at.session_state["owner_key"] = BROWSER_KEY
    at.session_state["source"] = str(root)
    at.run()
    at.switch_page("app_pages/train.py").run()
    _no_exception(at)
    fractions = {n.label: n for n in at.number_input}
    assert fractions["Validation fraction"].disabled and fractions["Test fraction"].disabled
    assert any("Carve one from train/ or val/" in c.value for c in at.caption)
    test_column = at.dataframe[0].value["test"]
    assert test_column["all classes"] == 0
    next(s for s in at.selectbox if s.label == "Test split from").set_value("train").run()
    _no_exception(at)
    assert not next(n for n in at.number_input if n.label == "Test fraction").disabled
    table = at.dataframe[0].value
    assert table["test"]["all classes"] == 3 and table["train"]["all classes"] == 27  # 10% of each train/ class
