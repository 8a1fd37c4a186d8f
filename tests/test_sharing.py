"""Safe to share: names shown as text, runs owned by whoever launched them, a per-visitor job limit (AppTest)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_pages import wording
from pipeline import config
from pipeline.jobs.store import JobStore
from tests.test_app import ENTRY, _no_exception, _page
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
        shown = wording.plain(name)
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
        assert wording.plain(f"{name} (3 images)") in captions
        assert unescape(wording.plain(f"{name} (3 images)")) == f"{name} (3 images)"
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
    run.joinpath("eval.json").write_text(
        json.dumps(
            {
                "split": "test",
                "images": 4,
                "accuracy": 0.5,
                "labels": labels,
                "confusion_matrix": [[1 if i == j else 0 for j in range(n)] for i in range(n)],
                "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for c in labels},
                "mistakes": [
                    {
                        "file": str(image),
                        "path": image.name,
                        "true": labels[0],
                        "predicted": labels[1],
                        "probability": 0.9,
                    }
                ],
            }
        )
    )
    run.joinpath("dataset.json").write_text(
        json.dumps(
            {
                "scan": {"root": str(run)},
                "splits": {"root": str(run), "classes": labels, "train": [], "val": [], "test": []},
            }
        )
    )
    return job_id


def test_evaluate_page_shows_markdown_class_and_file_names_as_text():
    job_id = finished_job_with_eval(JobStore(), [*NAMES, "<b>bold"])
    at = _app(run=job_id)
    at.switch_page("app_pages/evaluate.py")
    at.run()
    _no_exception(at)
    mistake = next(c.value for c in at.caption if c.value.startswith("labelled"))
    assert "![t](" not in mistake and IMAGE_NAME in unescape(mistake) and LINK_NAME in unescape(mistake)
    assert f"{IMAGE_NAME}.png" in [t.value for t in at.text]  # the file name: st.text, literal
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    labels = set(figure["data"][0]["x"])  # Plotly reads tags in its text: entities keep the name literal
    assert {*NAMES, "&lt;b&gt;bold"} <= labels and "<b>bold" not in labels


def test_a_crafted_run_link_is_quoted_as_text():
    at = _app(run="![x](https://evil.example/x.png)")
    at.switch_page("app_pages/runs.py")
    at.run()
    _no_exception(at)
    message = next(e.value for e in at.error if "is not a job id" in e.value)
    assert "![x](" not in message and "![x](https://evil.example/x.png)" in unescape(message)


# === Ownership ===

KEY_A, KEY_B = "a" * 32, "b" * 32


def owner_of(key: str) -> str:
    import hashlib

    return f"key:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def _visitor(key: str, page: str, **query) -> AppTest:
    """One visitor (their browser's owner key) on one page."""
    return _page(page, owner_key=key, **query)


def _labels(at: AppTest) -> set[str]:
    return {b.label for b in at.button} | {t.label for t in at.toggle}


def test_a_share_link_is_read_only_and_runs_lists_show_your_runs(monkeypatch):
    store = JobStore()
    queued = store.add("sample:digits", config.RunConfig().to_dict(), owner=owner_of(KEY_A))  # no worker: stays queued

    a = _visitor(KEY_A, "runs.py")
    _no_exception(a)
    assert queued[:8] in a.dataframe[0].value["id"].tolist()  # A's list shows A's run
    assert "Cancel" in _labels(a)

    b = _visitor(KEY_B, "runs.py")
    _no_exception(b)
    assert not b.dataframe and any("No runs yet" in i.value for i in b.info)  # B's list does not show it
    b = _visitor(KEY_B, "runs.py", run=queued)  # A's share link
    _no_exception(b)
    assert any(m.label == "State" and m.value == "queued" for m in b.metric)
    assert not {"Cancel", "Resume", "Delete this run..."} & _labels(b)
    assert any("A run shared with you" in i.value for i in b.info)
    assert not any("only you" in c.value for c in b.caption)  # the owner's wording is not a visitor's
    assert not [t for t in b.text_input if t.label == "Name"]  # a visitor cannot rename it
    assert store.get(queued).state == "queued"

    monkeypatch.setenv("TRANSFER_STUDIO_ADMIN_KEY", "the-host-key")
    admin = _visitor("c" * 32, "runs.py", admin="the-host-key")
    _no_exception(admin)
    assert queued[:8] in admin.dataframe[0].value["id"].tolist() and "Cancel" in _labels(admin)
    wrong = _visitor("c" * 32, "runs.py", admin="a-guess")
    assert not wrong.dataframe


def test_export_needs_the_owner_and_delete_removes_the_run():
    store = JobStore()
    job_id = finished_job_with_eval(store, ["cat", "dog"], owner=owner_of(KEY_A))
    b = _visitor(KEY_B, "export_page.py", run=job_id)
    _no_exception(b)
    assert next(x for x in b.button if x.label == "Export and verify").disabled
    assert any("Only this run's owner can export" in c.value for c in b.caption)
    a = _visitor(KEY_A, "export_page.py", run=job_id)
    assert not next(x for x in a.button if x.label == "Export and verify").disabled

    a = _visitor(KEY_A, "runs.py", run=job_id)
    a.toggle[0].set_value(True).run()
    next(x for x in a.button if x.label == "Delete the run and its files").click().run()
    _no_exception(a)
    assert job_id not in [j.id for j in store.list()]
    assert not Path(store.runs / job_id).exists()


def test_a_visitor_can_have_at_most_the_job_limit_queued_or_running(monkeypatch):
    store = JobStore()
    for _ in range(2):
        store.add("sample:digits", config.RunConfig().to_dict(), owner=owner_of(KEY_A))
    a = _visitor(KEY_A, "train.py")
    next(x for x in a.button if x.label == "Launch training").click().run()
    _no_exception(a)
    assert any("the most this server allows per visitor (2)" in e.value for e in a.error)
    assert len(store.list()) == 2  # nothing queued
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_ACTIVE_JOBS", "1")
    store.finish(store.list()[0].id, "cancelled")
    a = _visitor(KEY_A, "train.py")
    next(x for x in a.button if x.label == "Launch training").click().run()
    assert any("the most this server allows per visitor (1)" in e.value for e in a.error)


def test_owner_column_is_added_to_an_existing_job_store(ts_home):
    import sqlite3

    db = sqlite3.connect(ts_home / "jobs.sqlite3")
    db.executescript("""CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, source TEXT NOT NULL,
        config TEXT NOT NULL, run_dir TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, error TEXT,
        worker TEXT, attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0);""")
    db.execute(
        "INSERT INTO jobs (id, state, source, config, run_dir, created) VALUES (?, 'done', 's', '{}', ?, 1)",
        ("f" * 32, str(ts_home / "runs" / ("f" * 32))),
    )
    db.commit()
    db.close()
    store = JobStore(ts_home)
    assert store.get("f" * 32).owner is None  # from before owners: the host's
    assert store.get("f" * 32).name is None and store.get("f" * 32).title == "s ffffffff"  # before names
    new = store.add("sample:digits", {}, owner="key:x")
    assert store.get(new).owner == "key:x" and store.get(new).name == "digits #1"


def test_runs_have_names_numbered_per_dataset_that_the_cli_and_the_owner_change(ts_home, capsys):
    from pipeline.__main__ import main

    store = JobStore()
    ids = [
        store.add(src, {}) for src in ("/data/hymenoptera", "/data/hymenoptera", "sample:digits", "/up/3f/flowers.zip")
    ]
    assert [store.get(i).title for i in ids] == ["hymenoptera #1", "hymenoptera #2", "digits #1", "flowers #1"]
    assert main(["rename", ids[0], "  bees, cleaned labels "]) == 0
    assert store.get(ids[0]).name == "bees, cleaned labels"
    for bad, said in (("   ", "cannot be empty"), ("x" * 81, "at most 80 characters"), ("two\nlines", "one line")):
        capsys.readouterr()
        assert main(["rename", ids[0], bad]) == 2 and said in capsys.readouterr().err
    assert store.get(ids[0]).name == "bees, cleaned labels"
    capsys.readouterr()
    assert main(["jobs"]) == 0 and "bees, cleaned labels" in capsys.readouterr().out

    job_id = finished_job_with_eval(store, ["cat", "dog"], owner=owner_of(KEY_A))
    a = _visitor(KEY_A, "runs.py", run=job_id)
    _no_exception(a)
    assert "digits #2" in a.dataframe[0].value["name"].tolist()
    a.text_input(key=f"name-{job_id}").input("first try").run()  # Enter in the browser
    _no_exception(a)
    assert store.get(job_id).name == "first try"
    assert "first try" in a.selectbox[0].value.title and "first try" in a.dataframe[0].value["name"].tolist()
    a.text_input(key=f"name-{job_id}").input("").run()
    assert any("cannot be empty" in e.value for e in a.error) and store.get(job_id).name == "first try"


def test_cli_deletes_a_job_or_a_run_folder(ts_home, capsys):
    from pipeline.__main__ import main

    store = JobStore()
    done = finished_job_with_eval(store, ["cat", "dog"])
    queued = store.add("sample:digits", config.RunConfig().to_dict())
    assert main(["delete", queued]) == 2 and "cancel it first" in capsys.readouterr().err
    assert main(["delete", str(store.runs / done)]) == 0  # by its run folder
    assert done not in [j.id for j in store.list()] and not (store.runs / done).exists()
    assert main(["delete", str(ts_home)]) == 2 and "neither a job id nor a run folder" in capsys.readouterr().err


def test_cli_delete_removes_only_what_its_layout_proves_is_a_run(ts_home, tmp_path, capsys):
    """`delete PATH` removed any folder holding a config.json or a state.json (with the user's code beside it)."""
    from pipeline.__main__ import main

    def run_layout(folder: Path) -> Path:
        folder.mkdir(parents=True)
        config.save(config.RunConfig(), folder / "config.json")
        (folder / "dataset.json").write_text(json.dumps({"splits": {"root": "/x", "classes": [], "train": []}}))
        (folder / "checkpoints").mkdir()
        (folder / ".state.json.abc.tmp").write_text("")  # a killed write's leftover is a run's too
        return folder

    project = tmp_path / "X"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "src" / "a.py").write_text("hi")
    only_state = ts_home / "runs" / "state-only"
    only_state.mkdir(parents=True)
    (only_state / "state.json").write_text('{"phases": {}}')
    mixed = run_layout(ts_home / "runs" / "with-notes")
    (mixed / "notes.txt").write_text("mine")
    outside = run_layout(tmp_path / "elsewhere" / "run")
    for folder, words in (
        (project, "neither a job id nor a run folder"),
        (only_state, "no run's config.json"),
        (mixed, "holds what a run does not write (notes.txt)"),
        (outside, "neither a job id nor a run folder"),
    ):
        assert main(["delete", str(folder)]) == 2, folder
        assert words in capsys.readouterr().err, folder
        assert folder.is_dir(), folder
    assert (project / "src" / "a.py").read_text() == "hi"
    inside = run_layout(ts_home / "runs" / "trained-by-the-cli")
    assert main(["delete", str(inside)]) == 0 and not inside.exists()
    assert not list((ts_home / "runs").glob(".deleting-*"))


def test_cli_delete_of_an_old_jobs_folder_deletes_the_job_not_just_the_folder(ts_home, capsys):
    """`delete PATH` looked the job up among the 500 newest: an older job's folder looked jobless."""
    from pipeline.__main__ import main

    store = JobStore()
    old = finished_job_with_eval(store, ["cat", "dog"])
    for _ in range(501):
        store.add("sample:digits", {})
    assert old not in [j.id for j in store.list()]  # past the list's limit
    assert main(["delete", str(store.runs / old)]) == 0
    assert "deleted job" in capsys.readouterr().out
    from pipeline.jobs.store import JobError

    with pytest.raises(JobError, match="no job"):
        store.get(old)


def test_a_damaged_evaluation_or_config_is_one_message_without_server_paths():
    """eval.json cut short (Evaluate) or config.json overwritten (Try): a message, no traceback, no server path."""
    store = JobStore()
    job_id = finished_job_with_eval(store, ["cat", "dog"], owner=owner_of(KEY_A))
    run_dir = Path(store.get(job_id).run_dir)
    (run_dir / "eval.json").write_text('{"split": "te')
    at = _visitor(KEY_A, "evaluate.py", run=job_id)
    assert not at.exception, at.exception
    said = " ".join(wording_shown(e.value) for e in at.error)
    assert "eval.json is damaged" in said and str(run_dir) not in said, said
    (run_dir / "config.json").write_text("[1, 2]")
    at = _visitor(KEY_A, "try_model.py", run=job_id)
    assert not at.exception, at.exception
    said = " ".join(wording_shown(e.value) for e in at.error)
    assert "config.json cannot be read" in said and str(run_dir) not in said, said


def wording_shown(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown).replace(wording.WORD_JOINER, "")
