"""The Tune page (AppTest): a study refused with a message when no backbone's weights are here, a visitor's own
stopped study listed with its notes and Resume, another visitor's study not listed."""

from __future__ import annotations

from pipeline.tuning import study as study_mod
from tests.test_app import BROWSER_KEY, _no_exception, _page


def test_no_weights_is_a_message_not_a_traceback():
    at = _page("tune.py")
    _no_exception(at)
    assert at.selectbox(key="tune-study").value == "New study"
    next(b for b in at.button if b.label == "Start the study").click().run()
    _no_exception(at)
    errors = " ".join(e.value for e in at.error)
    assert "no mobile backbone has its ImageNet weights here" in errors, errors
    assert study_mod.names() == []


def test_my_stopped_study_is_listed_with_resume_and_another_visitors_is_not(keras_home_with_weights):
    import hashlib

    owner = f"key:{hashlib.sha256(BROWSER_KEY.encode()).hexdigest()[:32]}"  # how app_pages.visitor names a browser
    mine = study_mod.create("sample:digits", 3, name="mine", owner=owner, overrides=["train.head_epochs=1"])
    study_mod.create("sample:digits", 3, name="theirs", owner="someone-else")
    at = _page("tune.py")
    _no_exception(at)
    assert at.selectbox(key="tune-study").options == ["New study", "mine"]
    at.selectbox(key="tune-study").set_value("mine").run()
    _no_exception(at)
    assert any(b.label == "Resume the study" for b in at.button)
    assert any("stopped: 0 of 3 trials finished" in str(p.proto) for p in at.get("progress"))
    assert mine.space_notes and not any("/tmp" in n for n in mine.space_notes)  # no server paths in the notes
