"""Uploads on the pages: the widget that streams a file to disk, the limit, and refusing a file the page cannot use.

``file_input()`` is the dataset zip's and the weights file's widget. Where the server has the upload route
(``app_server.py``, which ``make run`` starts), it is a small custom component (``st.components.v2``): the
browser sends the file itself to the route (``app_pages/upload_route.py``) with a one-time token the page
issued, showing progress, and the route writes it to disk as it arrives; the page then reads where it was
kept. Without the route (``streamlit run streamlit_app.py``, AppTest) it is ``st.file_uploader``, whose file
Streamlit holds in memory, copied to disk 1 MB at a time (``saved_upload``).

Either way the page gets an ``Upload`` (the name the user gave it, the kept path) once per file, not per rerun,
and every problem is said naming the user's file. A file the page refuses (not a zip, a zip it cannot read,
over the limit) is removed from disk (``refuse()``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import streamlit as st

from app_pages import upload_route, wording
from pipeline.host import paths

_HTML = """
<div class="ts-upload">
  <label class="ts-label" for="ts-file"></label>
  <div class="ts-drop">
    <input id="ts-file" class="ts-input" type="file">
    <span class="ts-hint"></span>
  </div>
  <progress class="ts-bar" max="1" value="0" hidden></progress>
  <div class="ts-status" role="status" aria-live="polite"></div>
</div>
"""

_CSS = """
.ts-upload { font-family: var(--st-font, sans-serif); color: var(--st-text-color, inherit); font-size: 0.875rem; }
.ts-label { display: block; margin-bottom: 0.25rem; }
.ts-drop { display: flex; flex-wrap: wrap; align-items: center; gap: 0.75rem; padding: 1rem;
           border-radius: var(--st-base-radius, 0.5rem); background: var(--st-secondary-background-color, #f0f2f6);
           border: 1px dashed var(--st-border-color, #c9ccd3); }
.ts-drop.ts-over { border-color: var(--st-primary-color, #2563eb); }
.ts-hint { opacity: 0.7; }
.ts-input::file-selector-button { font: inherit; color: inherit; background: var(--st-background-color, #fff);
  border: 1px solid var(--st-border-color, #c9ccd3); border-radius: var(--st-base-radius, 0.5rem);
  padding: 0.25rem 0.75rem; margin-right: 0.75rem; cursor: pointer; }
.ts-input::file-selector-button:hover { border-color: var(--st-primary-color, #2563eb);
  color: var(--st-primary-color, #2563eb); }
.ts-bar { width: 100%; margin-top: 0.5rem; accent-color: var(--st-primary-color, #2563eb); }
.ts-status { margin-top: 0.25rem; min-height: 1.2em; }
"""

# The browser sends the file itself (XMLHttpRequest streams it from disk, with progress); the page learns the
# outcome through the component's state. Every text is set with textContent, never as HTML.
_JS = """
export default function (component) {
  const { data, setStateValue, parentElement } = component;
  const root = parentElement;
  const input = root.querySelector(".ts-input");
  const drop = root.querySelector(".ts-drop");
  const bar = root.querySelector(".ts-bar");
  const status = root.querySelector(".ts-status");
  root.querySelector(".ts-label").textContent = data.label;
  root.querySelector(".ts-hint").textContent = data.hint;
  input.accept = data.accept.join(",");
  input.title = data.help || "";
  root.__tsData = data;  // called again when the data changes (a new token): the handlers read the latest
  const mb = (n) => (n / 1048576).toFixed(1);
  const size = (n) => (n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${mb(n)} MB`);
  const send = (file) => {
    const d = root.__tsData;
    const report = (outcome, extra) => setStateValue("upload", { token: d.token, name: file.name, size: file.size,
                                                                  status: outcome, ...extra });
    if (root.__tsXhr) root.__tsXhr.abort();
    const lower = file.name.toLowerCase();
    if (!d.accept.some((suffix) => lower.endsWith(suffix))) return report("wrong_type");
    if (file.size > d.limit) return report("too_large");
    const xhr = new XMLHttpRequest();
    root.__tsXhr = xhr;
    xhr.open("PUT", d.url);
    xhr.setRequestHeader("X-Upload-Token", d.token);
    xhr.setRequestHeader("X-Upload-Name", encodeURIComponent(file.name));
    bar.hidden = false;
    bar.value = 0;
    status.textContent = `Uploading ${file.name}: 0.0 of ${mb(file.size)} MB`;
    xhr.upload.onprogress = (e) => {
      bar.value = file.size ? e.loaded / file.size : 1;
      status.textContent = `Uploading ${file.name}: ${mb(e.loaded)} of ${mb(file.size)} MB`;
    };
    const done = (outcome) => {
      if (root.__tsXhr === xhr) root.__tsXhr = null;
      bar.hidden = true;
      status.textContent = outcome === "sent" ? `${file.name} (${size(file.size)})` : "";
      report(outcome, { code: xhr.status });
    };
    xhr.onload = () => done(xhr.status === 200 ? "sent" : "refused");
    xhr.onerror = () => done("failed");
    xhr.send(file);
  };
  if (!root.__tsBound) {
    root.__tsBound = true;
    input.addEventListener("change", () => {
      if (input.files.length) send(input.files[0]);
      input.value = "";
    });
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("ts-over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("ts-over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("ts-over");
      if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
    });
  }
  return () => { if (root.__tsXhr) root.__tsXhr.abort(); };  // the page left: the server drops the partial file
}
"""

_component = None


def _mount(**kwargs):
    global _component
    if _component is None:
        _component = st.components.v2.component("transfer_studio_upload", html=_HTML, css=_CSS, js=_JS)
    return _component(**kwargs)


@dataclasses.dataclass(frozen=True)
class Upload:
    """A file the visitor uploaded: the name they gave it and where the server keeps it."""

    name: str
    path: str
    kind: str
    key: str  # the widget's
    ref: str  # this upload among the widget's (a token, or Streamlit's file id)


def max_upload_mb() -> int:
    """The upload limit: TRANSFER_STUDIO_MAX_UPLOAD_MB, never above the server's ``server.maxUploadSize``."""
    from pipeline.host.limits import Limits

    return min(Limits.from_env().max_upload_mb, int(st.get_option("server.maxUploadSize")))


def _box(key: str) -> dict:
    """What this session knows of widget ``key``: the tokens it issued, the token on offer, each file's outcome."""
    return st.session_state.setdefault(f"upload-box:{key}", {"issued": [], "token": None, "done": {}})


def file_input(label: str, kind: str, suffixes: list[str], *, key: str, help: str | None = None) -> Upload | None:
    """The file the visitor uploaded with this widget (None before one arrives, or when it was refused, which is
    said here naming the file). ``kind``: the folder under home it is kept in; ``suffixes``: e.g. ``[".zip"]``."""
    limit_mb = max_upload_mb()
    if not upload_route.mounted():
        return _file_uploader(label, kind, suffixes, key, help, limit_mb)
    limit = limit_mb * 1024 * 1024  # as Streamlit counts server.maxUploadSize
    box = _box(key)
    if box["token"] is None or upload_route.outcome(box["token"]) is None:  # none yet, or lapsed
        box["token"] = upload_route.issue(kind, limit)
        box["issued"] = [*box["issued"][-20:], box["token"]]
    words = ", ".join(s.lstrip(".").upper() for s in suffixes)
    result = _mount(
        key=f"upload-{key}",
        default={"upload": None},
        data={
            "token": box["token"],
            "url": upload_route.url_path(),
            "label": label,
            "help": help,
            "accept": suffixes,
            "limit": limit,
            "hint": f"Limit {limit_mb} MB per file - {words}",
        },
        on_upload_change=lambda: _arrived(key, kind, suffixes, limit_mb),
    )
    sent = result.get("upload") if result is not None else None
    record = box["done"].get(sent.get("token")) if isinstance(sent, dict) else None
    return _shown(record, kind, key, sent.get("token") if record else None)


def _arrived(key: str, kind: str, suffixes: list[str], limit_mb: int) -> None:
    """The component's callback (before the rerun): what became of the file the browser just sent."""
    box = _box(key)
    result = st.session_state.get(f"upload-{key}")
    sent = result.get("upload") if result is not None else None
    if not isinstance(sent, dict) or sent.get("token") not in box["issued"] or sent["token"] in box["done"]:
        return  # not a token this session issued: ignored
    token = sent["token"]
    name = str(sent.get("name") or "the file").encode("utf-8", "replace").decode("utf-8")[:255]
    size = sent.get("size") if isinstance(sent.get("size"), int) else None
    ticket = upload_route.outcome(token)
    upload_route.forget(token)
    if ticket is not None and ticket.state == "kept":
        name = ticket.name or name
        if not any(name.lower().endswith(s) for s in suffixes):  # a name the browser should not have sent
            paths.remove_upload(ticket.path, kind)
            record = {"name": name, "error": _wrong_type(name, suffixes)}
        else:
            from pipeline.jobs import quota

            quota.enforce(keep=(Path(ticket.path),))  # least recently used unreferenced uploads make room
            record = {"name": name, "path": ticket.path}
    elif ticket is not None and ticket.state == "refused":
        name = ticket.name or name
        record = {"name": name, "error": _problem(name, ticket.problem, limit_mb, size)}  # size: the browser's
    elif sent.get("status") == "wrong_type":
        record = {"name": name, "error": _wrong_type(name, suffixes)}
    elif sent.get("status") == "too_large":
        record = {"name": name, "error": _problem(name, upload_route.TOO_LARGE, limit_mb, size)}
    else:  # the request never reached the route, or did not finish there
        record = {"name": name, "error": _problem(name, upload_route.DISCONNECTED, limit_mb, None)}
    box["done"][token] = record
    box["token"] = None  # the next file gets a new token


def _problem(name: str, problem: str | None, limit_mb: int, size: int | None) -> str:
    if problem == upload_route.TOO_LARGE:
        how_big = f" ({size / 2**20:,.1f} MB)" if size else ""
        return (
            f"{name}{how_big} is larger than this server's upload limit of {limit_mb} MB, so it was not kept. "
            "Upload a smaller file, or ask whoever runs the server to raise TRANSFER_STUDIO_MAX_UPLOAD_MB "
            "(and server.maxUploadSize)."
        )
    if problem == upload_route.NO_SPACE:
        return f"The server's disk is full: {name} could not be kept. Try again later, or ask whoever runs it."
    if problem == upload_route.FAILED:
        return f"The server could not keep {name}. Upload it again."
    return f"The upload of {name} did not finish (the connection was lost), so nothing was kept. Upload it again."


def _wrong_type(name: str, suffixes: list[str]) -> str:
    return f"{name} is not a {' or '.join(suffixes)} file, so it was not kept. Choose a {suffixes[0]} file."


def _shown(record: dict | None, kind: str, key: str, ref: str | None) -> Upload | None:
    if record is None:
        return None
    if "error" in record:
        wording.error(record["error"])
        return None
    if not Path(record["path"]).is_file():
        return None  # removed since (the disk quota, or the same file refused in another tab)
    return Upload(name=record["name"], path=record["path"], kind=kind, key=key, ref=ref or "")


def _file_uploader(label, kind, suffixes, key, help, limit_mb) -> Upload | None:
    """Without the route: ``st.file_uploader`` (the file in memory), kept once per file."""
    upload = st.file_uploader(
        label, type=[s.lstrip(".") for s in suffixes], max_upload_size=limit_mb, help=help, key=f"uploader-{key}"
    )
    if upload is None:
        return None
    box = _box(key)
    if upload.file_id not in box["done"]:
        box["done"][upload.file_id] = {"name": upload.name, "path": saved_upload(upload, kind)}
    return _shown(box["done"][upload.file_id], kind, key, upload.file_id)


def refuse(upload: Upload, message: str, extracted: str | None = None) -> None:
    """Says why ``upload`` cannot be used and removes it from disk, with the folder unpacked from it
    (``extracted``, a ``datasets/zip-*`` folder), unless a run refers to them; the widget says so again on the
    next reruns, until another file is uploaded."""
    import shutil

    from pipeline.jobs import quota

    referenced = quota.referenced()
    if Path(upload.path).resolve() not in referenced:
        paths.remove_upload(upload.path, upload.kind)
    if extracted is not None:
        unpacked = Path(extracted).resolve()
        while unpacked.parent != paths.datasets_dir() and unpacked.parent != unpacked:
            unpacked = unpacked.parent
        if unpacked.name.startswith("zip-") and not any(r.is_relative_to(unpacked) for r in referenced):
            shutil.rmtree(unpacked, ignore_errors=True)
    saved = st.session_state.get("uploads", {})  # saved_upload's: kept again if the same file comes back
    for file_id in [f for f, kept in saved.items() if kept == upload.path]:
        del saved[file_id]
    _box(upload.key)["done"][upload.ref] = {"name": upload.name, "error": message}
    wording.error(message)


def saved_upload(upload, kind: str) -> str | None:
    """The path an ``st.file_uploader`` file is kept at (``paths.store_upload``), written once per upload, not per
    rerun (the small uploads: images added to a class, a photo to try)."""
    if upload is None:
        return None
    saved = st.session_state.setdefault("uploads", {})  # file_id -> kept path
    if upload.file_id not in saved or not Path(saved[upload.file_id]).is_file():
        from pipeline.jobs import quota

        # The UploadedFile itself, copied 1 MB at a time (getvalue() would copy the whole upload once more)
        kept = paths.store_upload(upload, upload.name, kind)
        quota.enforce(keep=(kept,))  # least recently used uploads and datasets no run refers to make room
        saved[upload.file_id] = str(kept)
    return saved[upload.file_id]
