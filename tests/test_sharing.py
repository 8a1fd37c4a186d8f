"""Safe to share: names shown as text, runs owned by whoever launched them, a per-visitor job limit (AppTest)."""

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_pages import shared
from pipeline import config
from pipeline.jobs.store import JobStore
from tests.test_app import ENTRY, _no_exception
from tests.test_app import shown as unescape

IMAGE_NAME = "![t](https:evil.example.t.png)"  # the folder name from the issue: a Markdown image
LINK_NAME = "[click](https:evil.example)"
NAMES = (IMAGE_NAME, LINK_NAME)


def write_markdown_named_dataset(root: Path, per_class: int = 3) -> Path:
    """Two classes whose folder names are Markdown image and link syntax (few images: a warning quotes them)."""
    rng = np.random.default_rng(0)
    for name in NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / name / f"{name}{i}.png")
    return root


def test_plain_escapes_every_markdown_construct_and_round_trips():
    for name in (*NAMES, "www.evil.example a@b.co https://x.y/z :smile: :material/home: $x$ <b>b</b> `c` *i*"):
        shown = shared.plain(name)
        assert unescape(shown) == name
        assert not re.search(r"(?<!\\)[!\[\]()<>`*$:]", shown), shown  # no unescaped Markdown character left
        assert "www." not in shown and "://" not in shown


def _app(**query) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def test_data_page_shows_markdown_class_names_as_text(tmp_path, monkeypatch):
    write_markdown_named_dataset(tmp_path / "root" / "tricky")
    monkeypatch.setenv("TRANSFER_STUDIO_DATA_ROOT", str(tmp_path / "root"))
    at = _app()
    at.radio[0].set_value("Server folder").run()
    _no_exception(at)
    assert {m.label: m.value for m in at.metric}["Classes"] == "2"
    captions = [c for img in at.image for c in img.captions]
    for name in NAMES:
        assert shared.plain(f"{name} (3 images)") in captions
        assert unescape(shared.plain(f"{name} (3 images)")) == f"{name} (3 images)"
    # the "few images" warning quotes both names: escaped, so no image or link can render
    warning = next(w.value for w in at.warning if "few images" in w.value)
    assert "![t](" not in warning and "[click](" not in warning
    assert IMAGE_NAME in unescape(warning) and LINK_NAME in unescape(warning)
    for element in (*at.caption, *at.error, *at.info, *at.warning):
        assert "](" not in element.value, element.value  # nothing left that Markdown reads as a link or image


def finished_job_with_eval(store: JobStore, labels: list[str], owner: str | None = None) -> str:
    """A finished job whose run folder holds an evaluation naming ``labels`` (rendering only: no training)."""
    job_id = store.add("sample:digits", config.RunConfig().to_dict(), **({"owner": owner} if owner else {}))
    worker = store.register_worker(1)  # this process, as a worker that stops at once (no fixture kills it)
    store.claim(worker)
    store.finish(job_id, "done")
    store.stop_worker(worker)
    run = Path(store.get(job_id).run_dir)
    run.mkdir(parents=True, exist_ok=True)
    image = run / f"{labels[0]}.png"
    Image.new("RGB", (8, 8)).save(image)
    n = len(labels)
    run.joinpath("eval.json").write_text(json.dumps({
        "split": "test", "images": 4, "accuracy": 0.5, "labels": labels,
        "confusion_matrix": [[1 if i == j else 0 for j in range(n)] for i in range(n)],
        "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for c in labels},
        "mistakes": [{"file": str(image), "true": labels[0], "predicted": labels[1], "probability": 0.9}],
    }))
    return job_id


def test_evaluate_page_shows_markdown_class_and_file_names_as_text():
    job_id = finished_job_with_eval(JobStore(), [*NAMES, "<b>bold"])
    at = _app(run=job_id)
    at.switch_page("app_pages/evaluate.py")
    at.run()
    _no_exception(at)
    mistake = next(c.value for c in at.caption if c.value.startswith("true"))
    assert "![t](" not in mistake and IMAGE_NAME in unescape(mistake) and LINK_NAME in unescape(mistake)
    assert f"{IMAGE_NAME}.png" in [t.value for t in at.text]  # the file name: st.text, literal
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert figure["data"][0]["x"] == [*NAMES, "&lt;b&gt;bold"]  # Plotly reads tags in text: entities


def test_a_crafted_run_link_is_quoted_as_text():
    at = _app(run="![x](https://evil.example/x.png)")
    at.switch_page("app_pages/runs.py")
    at.run()
    _no_exception(at)
    message = next(e.value for e in at.error if "is not a job id" in e.value)
    assert "![x](" not in message and "![x](https://evil.example/x.png)" in unescape(message)
