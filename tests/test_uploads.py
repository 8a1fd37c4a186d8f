"""Uploads: the route a file streams to disk through (real HTTP requests to a real uvicorn), refused uploads
removed from disk (the Data page through AppTest), and the whole path in a real browser (marked slow)."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest

from app_pages import upload_route
from tests.conftest import ROOT, write_shapes_dataset
from tests.test_e2e_browser import app_url, open_page  # noqa: F401 - the fixture

MB = 1024 * 1024


def _zip_of(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder))
    return target


def _kept_files(home: Path, kind: str = "uploads") -> list[Path]:
    """Every file in ``<home>/<kind>`` (kept ones and temporary ``.part`` ones)."""
    folder = home / kind
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _parts(home: Path) -> list[Path]:
    return list((home / "uploads").glob(".upload-*.part")) if (home / "uploads").exists() else []


def _wait_for(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    return check()


@pytest.fixture
def route():
    """The upload route served by a real uvicorn on a free port in this process: (host, port)."""
    import uvicorn
    from starlette.applications import Starlette

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=upload_route.routes()), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert _wait_for(lambda: server.started, 20), "uvicorn did not start"
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(20)
    sock.close()


def _put(route, token: str, name: str, body, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*route, timeout=60)
    try:
        conn.request(
            "PUT",
            upload_route.url_path(),
            body=body,
            headers={"X-Upload-Token": token, "X-Upload-Name": quote(name), **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_zip_sent_to_the_route_is_kept_whole_under_its_content_hash_and_a_token_works_once(route, ts_home, tmp_path):
    archive = _zip_of(write_shapes_dataset(tmp_path / "shapes", per_class=3), tmp_path / "my shapes.zip")
    token = upload_route.issue("uploads", 10 * MB)
    with open(archive, "rb") as fh:  # http.client sends a file object in pieces, with its length
        status, _ = _put(route, token, "my shapes.zip", fh, {"Content-Length": str(archive.stat().st_size)})
    assert status == 200
    ticket = upload_route.outcome(token)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    assert ticket.state == "kept" and ticket.name == "my shapes.zip"
    assert Path(ticket.path) == ts_home / "uploads" / digest / "my_shapes.zip"
    assert Path(ticket.path).read_bytes() == archive.read_bytes() and not _parts(ts_home)

    status, _ = _put(route, token, "again.zip", b"PK\x03\x04 other bytes")  # the same token, once more
    assert status == 403
    assert _kept_files(ts_home) == [Path(ticket.path)]


def test_without_a_live_token_nothing_is_written(route, ts_home):
    assert _put(route, "made-up-token", "x.zip", b"PK\x03\x04")[0] == 403
    assert _put(route, "", "x.zip", b"PK\x03\x04")[0] == 403
    assert _kept_files(ts_home) == []


def test_the_folder_is_the_tickets_and_the_name_cannot_climb_out(route, ts_home):
    token = upload_route.issue("weights", MB)
    assert _put(route, token, "../../../etc/evil.h5", b"weights")[0] == 200
    kept = Path(upload_route.outcome(token).path)
    assert kept.parent.parent == ts_home / "weights" and kept.name == "evil.h5"
    assert _kept_files(ts_home, "weights") == [kept] and _kept_files(ts_home) == []


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_written(route, ts_home):
    token = upload_route.issue("uploads", 1000)
    status, _ = _put(route, token, "big.zip", b"x" * 5000)
    ticket = upload_route.outcome(token)
    assert status == 413 and ticket.state == "refused" and ticket.problem == upload_route.TOO_LARGE
    assert ticket.received == 0 and _kept_files(ts_home) == []


def test_a_body_past_the_limit_is_stopped_while_streaming_and_its_partial_file_removed(route, ts_home):
    """No length given (chunked): the bytes are counted as they arrive. The file is on disk while it arrives
    (streamed, not gathered in memory), and gone once the limit is passed."""
    token = upload_route.issue("uploads", 3 * MB)
    seen_on_disk = []

    def body():
        for i in range(6):
            if i == 3:  # 3 MB sent: the route has written at least 2 MB of it to its temporary file
                seen_on_disk.append(
                    _wait_for(lambda: [p.stat().st_size for p in _parts(ts_home) if p.stat().st_size >= 2 * MB])
                )
            yield os.urandom(MB)

    status, _ = _put(route, token, "huge.zip", body())
    ticket = upload_route.outcome(token)
    assert seen_on_disk and seen_on_disk[0], "the partial file never grew on disk while the body arrived"
    assert status == 413 and ticket.problem == upload_route.TOO_LARGE and ticket.received > 3 * MB
    assert _kept_files(ts_home) == []  # neither a kept file nor the partial one


def test_a_client_that_goes_away_mid_file_leaves_nothing(route, ts_home):
    token = upload_route.issue("uploads", 100 * MB)
    sock = socket.create_connection(route)
    sock.sendall(
        (
            f"PUT {upload_route.url_path()} HTTP/1.1\r\nHost: x\r\nX-Upload-Token: {token}\r\n"
            f"X-Upload-Name: half.zip\r\nContent-Length: {8 * MB}\r\n\r\n"
        ).encode()
    )
    sock.sendall(os.urandom(3 * MB))
    assert _wait_for(lambda: any(p.stat().st_size >= MB for p in _parts(ts_home))), "nothing written yet"
    sock.close()  # the browser tab closed, the network dropped
    assert _wait_for(lambda: upload_route.outcome(token).state == "refused")
    assert upload_route.outcome(token).problem == upload_route.DISCONNECTED
    assert _wait_for(lambda: _kept_files(ts_home) == [])


# === The Data page refuses what it cannot use, and removes it (AppTest: st.file_uploader, no route) ===


def _data_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.session_state["owner_key"] = "6" * 32
    at.run()
    at.radio[0].set_value("Upload a zip").run()
    return at


def _errors(at) -> str:
    import re

    return " ".join(re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", e.value).replace("\u2060", "") for e in at.error)


def test_the_data_page_removes_a_non_zip_an_empty_zip_and_a_broken_zip_and_keeps_a_good_one(ts_home, tmp_path):
    at = _data_page()
    assert not at.exception
    at.file_uploader[0].set_value(("holiday photos.zip", b"not a zip, whatever the name says", "application/zip"))
    at.run()
    assert not at.exception and "holiday photos.zip is not a zip archive" in _errors(at)
    assert _kept_files(ts_home) == []  # refused: not left in uploads/

    empty = io.BytesIO()
    zipfile.ZipFile(empty, "w").close()
    at.file_uploader[0].set_value(("empty.zip", empty.getvalue(), "application/zip")).run()
    assert not at.exception and "empty.zip holds no images" in _errors(at)
    assert _kept_files(ts_home) == [] and not list((ts_home / "datasets").glob("zip-*"))

    good = _zip_of(write_shapes_dataset(tmp_path / "shapes", per_class=3), tmp_path / "shapes.zip").read_bytes()
    broken = good[: len(good) // 2] + bytes(64) + good[len(good) // 2 :]  # the directory at the end still reads
    at.file_uploader[0].set_value(("broken.zip", broken, "application/zip")).run()
    assert not at.exception and "broken.zip" in _errors(at), _errors(at)
    assert _kept_files(ts_home) == []

    at.file_uploader[0].set_value(("shapes.zip", good, "application/zip")).run()
    assert not at.exception and not at.error, _errors(at)
    assert {m.label: m.value for m in at.metric}["Classes"] == "3"
    kept = _kept_files(ts_home)
    assert [p.name for p in kept] == ["shapes.zip"] and kept[0].read_bytes() == good


# === In a real browser: the page's widget sends the file to the route (marked slow) ===


@pytest.fixture
def one_mb_limit(monkeypatch):
    """The app_url server's upload limit: 1 MB (set before app_url starts it)."""
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_UPLOAD_MB", "1")


@pytest.mark.slow
def test_in_a_browser_a_zip_streams_to_disk_and_refused_uploads_are_removed(
    one_mb_limit,
    app_url,  # noqa: F811
    ts_home,
    tmp_path,
):
    from playwright.sync_api import expect, sync_playwright

    good = _zip_of(write_shapes_dataset(tmp_path / "shapes", per_class=4), tmp_path / "my shapes.zip")
    fake = tmp_path / "holiday photos.zip"
    fake.write_text("not a zip, whatever the name says")
    big = tmp_path / "big set.zip"
    with zipfile.ZipFile(big, "w") as zf:  # 2 MB, stored: over the 1 MB limit
        zf.writestr("cats/noise.bin", os.urandom(2 * MB))
    with sync_playwright() as pw:
        browser, page = open_page(pw)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
        page.goto(app_url)
        page.get_by_text("Upload a zip").click()
        chooser = page.get_by_label("Zip of class folders")
        expect(chooser).to_be_attached()

        chooser.set_input_files(str(fake))
        alert = page.get_by_test_id("stAlertContentError")
        expect(alert).to_contain_text("holiday photos.zip is not a zip archive")
        assert _kept_files(ts_home) == []  # it came, and was removed

        chooser.set_input_files(str(big))
        expect(alert).to_contain_text("big set.zip (2.0 MB) is larger than this server's upload limit of 1 MB")
        assert _kept_files(ts_home) == []

        chooser.set_input_files(str(good))
        expect(page.get_by_text("Images per class")).to_be_visible()
        expect(page.get_by_test_id("stMetricValue").first).to_have_text("3")
        kept = _kept_files(ts_home)
        assert [p.name for p in kept] == ["my_shapes.zip"] and kept[0].read_bytes() == good.read_bytes()
        browser.close()
    sent = [r for r in requests if r.startswith("PUT ")]
    assert len(sent) == 2 and all(r.endswith(upload_route.url_path()) for r in sent), sent  # the fake and the good
    assert not any("/_stcore/upload_file" in r for r in requests)  # never through st.file_uploader's memory
