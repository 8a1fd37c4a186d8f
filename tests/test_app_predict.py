"""The Predict page (AppTest, a real tiny job): a server folder classified in the background, the counts, the
filters (class names that look like numbers stay names), and chosen images added to the dataset's revision."""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image, ImageOps

from pipeline.data import revision
from pipeline.quality import predict
from tests.test_app import _no_exception, _page, finished_job  # noqa: F401 - finished_job is a fixture


def test_predict_a_folder_filter_download_and_add_to_the_dataset(finished_job, tmp_path, monkeypatch):  # noqa: F811
    from pipeline.jobs.store import JobStore

    run_dir = Path(JobStore().get(finished_job).run_dir)
    dataset = json.loads((run_dir / "dataset.json").read_text())
    root = Path(dataset["scan"]["root"])
    samples = [root / rel for rel, _ in dataset["splits"]["test"][:6]]
    new = tmp_path / "data" / "new"
    (new / "more").mkdir(parents=True)
    for i, path in enumerate(samples):  # mirrored: new images, not copies of the dataset's
        with Image.open(path) as img:
            ImageOps.mirror(img.convert("RGB")).save((new / "more" if i % 2 else new) / f"digit_{i}.png")
    # every file readable: the CSV's class columns hold only digits (pandas would read them as numbers); an
    # unreadable file is the browser test's (tests/test_e2e_insight.py)
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(tmp_path / "data"))

    at = _page("predict.py", run=finished_job)
    _no_exception(at)
    at.radio(key="predict-kind").set_value("Server folder").run()
    _no_exception(at)
    next(b for b in at.button if b.label == "Classify").click().run()
    _no_exception(at)
    t0 = time.monotonic()
    while (status := predict.background_status(run_dir))["state"] == "running":
        assert time.monotonic() - t0 < 300
        time.sleep(0.5)
    assert status["state"] == "done", status
    at.run()
    _no_exception(at)
    assert any(s.value == "6 of 6 images classified" for s in at.subheader), [s.value for s in at.subheader]
    csv_rows = (run_dir / predict.APP_OUT).read_text().splitlines()
    assert len(csv_rows) == 7 and all(r.startswith("new/") for r in csv_rows[1:])
    table = at.dataframe[0].value
    assert len(table) == 6 and list(table["probability_1"]) == sorted(table["probability_1"])  # least sure first
    assert table["image"].str.startswith("data:image/jpeg;base64,").all()  # thumbnails

    top = table["class_1"].iloc[0]
    at.multiselect(key=f"predict-filter-{finished_job}").set_value([top]).run()
    _no_exception(at)
    assert set(at.dataframe[0].value["class_1"]) == {top}
    at.multiselect(key=f"predict-filter-{finished_job}").set_value(list(dataset["splits"]["classes"])).run()
    at.slider(key=f"predict-conf-{finished_job}").set_value(0.0).run()
    assert len(at.dataframe[0].value) == 0

    # chosen rows added to the dataset under a class, through the revision (all or nothing)
    at.slider(key=f"predict-conf-{finished_job}").set_value(1.0).run()
    at.session_state[f"predict-table-{finished_job}"] = {"selection": {"rows": [0, 1], "columns": []}}
    at.run()
    _no_exception(at)
    cls = dataset["splits"]["classes"][3]
    at.selectbox(key=f"predict-add-cls-{finished_job}").set_value(cls).run()
    at.button(key=f"predict-add-{finished_job}").click().run()
    _no_exception(at)
    added = [e for e in revision.Revision(str(root)).active() if e["op"] == "add"]
    assert len(added) == 2 and {e["class"] for e in added} == {cls}, added
