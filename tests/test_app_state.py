"""Issue 15 through AppTest: every choice survives page switches, reloads and new tabs; Launch is disabled
with the reason; a run link that cannot be shown says why; the share link is a full URL."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from pipeline import config
from pipeline.jobs.store import JobStore
from tests.conftest import write_shapes_dataset
from tests.test_app import BROWSER_KEY, ENTRY, _no_exception, _page, shown


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    write_shapes_dataset(root / "shapes", per_class=6)
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(root))
    return root


def _train_values(at: AppTest) -> dict:
    keys = ("head_epochs", "fine_tune_epochs", "batch_size", "seed", "val_fraction", "test_fraction")
    values = {k: at.number_input(key=f"train:{k}").value for k in keys}
    values.update({k: at.selectbox(key=f"train:{k}").value for k in ("backbone", "strategy", "class_weight")})
    return values


def _reload(**query) -> AppTest:
    """The same browser opening the app again (a reload, or a new tab): a new session, the same owner cookie."""
    at = AppTest.from_file(ENTRY, default_timeout=120)
    at.session_state["owner_key"] = BROWSER_KEY
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def test_every_choice_survives_page_switches_reloads_and_new_tabs(data_root):
    at = _page("data.py")
    at.radio[0].set_value("Server folder").run()
    _no_exception(at)
    assert at.query_params["source"] == "folder:shapes"  # shareable: in the address

    at.switch_page("app_pages/augment.py")
    at.run()
    at.toggle[0].set_value(True)
    at.slider[0].set_value(0.2)  # rotation
    at.selectbox[0].set_value("vertical").run()  # flip
    _no_exception(at)

    at.switch_page("app_pages/train.py")
    at.run()
    _no_exception(at)
    assert any("shapes (3 classes" in shown(c.value) for c in at.caption)
    chosen = {
        "head_epochs": 2,
        "fine_tune_epochs": 3,
        "batch_size": 16,
        "seed": 9,
        "val_fraction": 0.3,
        "test_fraction": 0.2,
    }
    for k, v in chosen.items():
        at.number_input(key=f"train:{k}").set_value(v)
    at.selectbox(key="train:strategy").set_value("freeze_first_k")
    at.selectbox(key="train:class_weight").set_value("balanced").run()
    _no_exception(at)
    expected = {
        **chosen,
        "backbone": at.selectbox(key="train:backbone").value,
        "strategy": "freeze_first_k",
        "class_weight": "balanced",
    }
    assert _train_values(at) == expected
    assert any("Augmentation: on" in c.value for c in at.caption)

    for page in ("augment.py", "runs.py", "data.py", "train.py"):  # away and back: nothing resets
        at.switch_page(f"app_pages/{page}")
        at.run()
        _no_exception(at)
    assert _train_values(at) == expected

    for fresh in (_reload(source="folder:shapes"), _reload()):  # a reload keeps the address; a new tab has none
        _no_exception(fresh)
        assert fresh.radio[0].value == "Server folder" and fresh.selectbox[0].value == "shapes"
        fresh.switch_page("app_pages/train.py")
        fresh.run()
        _no_exception(fresh)
        assert _train_values(fresh) == expected
        assert any("shapes (3 classes" in shown(c.value) for c in fresh.caption)
        fresh.switch_page("app_pages/augment.py")
        fresh.run()
        assert fresh.toggle[0].value and fresh.slider[0].value == 0.2 and fresh.selectbox[0].value == "vertical"


def test_launch_is_disabled_with_the_reason_while_a_field_is_invalid(data_root):
    at = _page("train.py")
    launch = next(b for b in at.button if b.label == "Launch training")
    assert not launch.disabled
    at.number_input(key="train:head_epochs").set_value(0)
    at.number_input(key="train:batch_size").set_value(-4).run()
    _no_exception(at)
    launch = next(b for b in at.button if b.label == "Launch training")
    assert launch.disabled
    errors = [shown(e.value) for e in at.error]
    assert any(e.startswith("Epochs: must be at least 1") for e in errors), errors  # the digits preset: one phase
    assert any(e.startswith("Batch size: must be at least 1") for e in errors), errors
    at.number_input(key="train:head_epochs").set_value(2)
    at.number_input(key="train:batch_size").set_value(8).run()
    assert not next(b for b in at.button if b.label == "Launch training").disabled and not at.error


def test_launch_is_disabled_when_the_dataset_cannot_train(data_root):
    (data_root / "shapes" / "bar").rename(data_root / "tiny")  # a class left with 1 image
    for f in sorted((data_root / "tiny").iterdir())[1:]:
        f.unlink()
    (data_root / "tiny").rename(data_root / "shapes" / "bar")
    at = _page("data.py")
    at.radio[0].set_value("Server folder").run()
    at.switch_page("app_pages/train.py")
    at.run()
    _no_exception(at)
    assert next(b for b in at.button if b.label == "Launch training").disabled
    assert any(
        "class 'bar' has 1 usable image(s)" in shown(e.value) and "Test fraction to 0 on this page" in shown(e.value)
        for e in at.error
    ), [e.value for e in at.error]
    at.number_input(key="train:test_fraction").set_value(0.0).run()  # the way out the message names
    assert any(
        "class 'bar' has 1 usable image(s)" in shown(e.value) and "remove the class" in shown(e.value) for e in at.error
    )
    assert next(b for b in at.button if b.label == "Launch training").disabled


def test_a_one_class_dataset_cannot_launch(tmp_path, monkeypatch):
    root = tmp_path / "root"
    write_shapes_dataset(root / "one", per_class=4)
    for cls in ("disc", "square"):
        for f in (root / "one" / cls).iterdir():
            f.unlink()
        (root / "one" / cls).rmdir()
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(root))
    at = _reload(source="folder:one")
    at.switch_page("app_pages/train.py")
    at.run()
    _no_exception(at)
    assert next(b for b in at.button if b.label == "Launch training").disabled
    assert any("a classifier needs at least 2" in shown(e.value) for e in at.error)


def _cancelled_job() -> str:
    store = JobStore()
    job_id = store.add("sample:digits", config.RunConfig().to_dict(), owner=None)
    store.cancel(job_id)
    return job_id


def test_a_run_link_that_cannot_be_shown_says_why():
    job_id = _cancelled_job()
    at = _page("evaluate.py", run=job_id)
    _no_exception(at)
    assert any(f"Run {job_id[:8]} cannot be shown here: it is cancelled" in shown(w.value) for w in at.warning)
    assert at.query_params["run"] == job_id  # not rewritten to another run

    gone = "0" * 32
    at = _page("runs.py", run=gone)
    _no_exception(at)
    assert any(f"Run {gone} cannot be shown: there is no such run" in shown(w.value) for w in at.warning)


def test_share_link_is_a_full_url_to_copy():
    job_id = _cancelled_job()
    at = _page("runs.py", run=job_id)
    _no_exception(at)
    links = [c.value for c in at.code if "run=" in c.value]
    assert links and links[0].startswith("http") and links[0].endswith(f"/runs?run={job_id}"), links


def test_the_advisors_recommendation_applies_in_one_click(data_root):
    at = _reload(source="folder:shapes")  # 6 images per class: small
    at.switch_page("app_pages/train.py")
    at.run()
    at.radio(key="train:similar").set_value("No").run()
    apply = next(b for b in at.button if b.label.startswith("Apply:"))
    assert apply.label == "Apply: freeze_first_k" and at.selectbox(key="train:strategy").value != "freeze_first_k"
    apply.click().run()
    _no_exception(at)
    assert at.selectbox(key="train:strategy").value == "freeze_first_k"


def test_a_data_link_that_cannot_be_used_says_so(data_root):
    (data_root.parent / "secret").mkdir()
    for linked in ("folder:../secret", "folder:/etc", "folder:nothing-here", "sample:nope"):
        at = _reload(source=linked)
        _no_exception(at)
        assert any(
            f"The link names data source {linked!r}, which is not on this server" in shown(w.value) for w in at.warning
        ), (linked, [w.value for w in at.warning])
        assert at.radio[0].value.startswith("Sample") and at.query_params["source"] == "sample:digits"
