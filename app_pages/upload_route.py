"""The upload route: a file goes from the browser straight to disk, never whole in the server's memory.

Streamlit's ``st.file_uploader`` keeps each upload in memory (its route reads the whole body, then its file
manager holds it for the session): a 470 MiB zip took the server from 0.97 to 1.93 GB at peak. The Data page's
zip and the Train page's weights file come here instead (``app_pages/uploads.py`` draws the widget that sends
them): the body is read as it arrives and written 1 MB at a time by ``paths.UploadWriter`` (a temporary name,
renamed when whole), so the server holds about 1 MB of it at any moment.

Who may send: only a page this server drew. The page asks ``issue()`` for a ticket (a random token naming the
folder the file goes to and the size limit, both chosen by the server); the browser sends the file with the
token, which is accepted once. A request without a live token is refused before anything is written, so
another site (or another visitor, who never saw the token) cannot write here; the folder is the ticket's,
never the request's, and the name the browser gives is only the display name (made safe by ``UploadWriter``).
Past the limit (the declared length, or the bytes as they arrive) the request is refused and the partial file
removed; so is one whose client goes away mid-file. What happened is kept with the ticket for the page to
read (``outcome()``): the kept path, or why nothing was kept.

``app_server.py`` serves these routes beside Streamlit's (``st.App``); ``mounted()`` tells the page whether
this server has them (a bare ``streamlit run streamlit_app.py`` or an AppTest does not: the page then uses
``st.file_uploader``).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import threading
import time
from contextlib import asynccontextmanager
from urllib.parse import unquote

from pipeline.host import paths
from pipeline.host.disk import FULL_ERRNOS

PATH = "api/upload"
TICKET_TTL_S = 6 * 3600  # an unused ticket (a page left open) lapses
TOKEN_HEADER = "X-Upload-Token"
NAME_HEADER = "X-Upload-Name"  # the file's name, percent-encoded (a header carries ASCII only)

# Problems, as ``Ticket.problem``: the page words them with the file's name.
TOO_LARGE = "too_large"
DISCONNECTED = "disconnected"
NO_SPACE = "no_space"
FAILED = "failed"


@dataclasses.dataclass
class Ticket:
    """One file's permission to arrive, and then what became of it."""

    kind: str  # the folder under home (``uploads``, ``weights``)
    limit_bytes: int
    created: float
    state: str = "open"  # open -> receiving -> kept | refused
    name: str | None = None  # the name the browser gave
    path: str | None = None  # where it is kept (state "kept")
    problem: str | None = None  # why nothing was kept (state "refused")
    received: int = 0


_tickets: dict[str, Ticket] = {}
_lock = threading.Lock()  # the route runs on the server's event loop, pages on their script threads
_mounted = False


def issue(kind: str, limit_bytes: int) -> str:
    """A new token for one file of at most ``limit_bytes`` into ``<home>/<kind>`` (lapsed tickets dropped)."""
    now = time.time()
    token = secrets.token_urlsafe(32)
    with _lock:
        for old in [t for t, ticket in _tickets.items() if now - ticket.created > TICKET_TTL_S]:
            del _tickets[old]
        _tickets[token] = Ticket(kind=kind, limit_bytes=limit_bytes, created=now)
    return token


def outcome(token: str) -> Ticket | None:
    """A copy of the ticket (its state, and the kept path or the problem once the file has arrived)."""
    with _lock:
        ticket = _tickets.get(token)
        return dataclasses.replace(ticket) if ticket else None


def forget(token: str) -> None:
    with _lock:
        _tickets.pop(token, None)


def mounted() -> bool:
    """Whether this server serves the route (``app_server.py``'s lifespan is running)."""
    return _mounted


def url_path() -> str:
    """The route's path on this server (under ``server.baseUrlPath``)."""
    from streamlit import config

    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}/{PATH}" if base else f"/{PATH}"


def _take(token: str) -> Ticket | None:
    """The open ticket of ``token``, now receiving (a token is accepted once); None when there is none."""
    with _lock:
        ticket = _tickets.get(token)
        if ticket is None or ticket.state != "open" or time.time() - ticket.created > TICKET_TTL_S:
            return None
        ticket.state = "receiving"
        return ticket


def _finish(ticket: Ticket, *, path: str | None = None, problem: str | None = None) -> None:
    with _lock:
        ticket.path, ticket.problem = path, problem
        ticket.state = "kept" if path else "refused"


async def receive(request):
    """``PUT <url_path()>``: the body is the file; headers: the token and the file's name."""
    from anyio import to_thread
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse

    ticket = _take(request.headers.get(TOKEN_HEADER, ""))
    if ticket is None:
        return JSONResponse({"error": "no such upload ticket (or it was used): reload the page"}, status_code=403)
    ticket.name = unquote(request.headers.get(NAME_HEADER, ""), errors="replace")[:255] or "upload"
    declared = request.headers.get("content-length")
    if declared is not None and not re.fullmatch(r"[0-9]+", declared):
        _finish(ticket, problem=FAILED)
        return JSONResponse({"error": "invalid Content-Length"}, status_code=400)
    if declared is not None and int(declared) > ticket.limit_bytes:
        _finish(ticket, problem=TOO_LARGE)
        return JSONResponse({"error": TOO_LARGE}, status_code=413)  # before a byte is written

    writer = None
    try:
        writer = await to_thread.run_sync(paths.UploadWriter, ticket.name, ticket.kind)
        piece = bytearray()
        async for chunk in request.stream():
            ticket.received += len(chunk)
            if ticket.received > ticket.limit_bytes:  # no (or a false) length: counted as it arrives
                _finish(ticket, problem=TOO_LARGE)
                return JSONResponse({"error": TOO_LARGE}, status_code=413)
            piece += chunk
            if len(piece) >= paths.CHUNK:
                full, piece = piece, bytearray()
                await to_thread.run_sync(writer.write, full)  # the disk off the event loop
        if piece:
            await to_thread.run_sync(writer.write, piece)
        if declared is not None and ticket.received != int(declared):
            _finish(ticket, problem=DISCONNECTED)
            return JSONResponse({"error": DISCONNECTED}, status_code=400)
        kept = await to_thread.run_sync(writer.keep)
        _finish(ticket, path=str(kept))
        return JSONResponse({"ok": True, "size": ticket.received})
    except ClientDisconnect:
        _finish(ticket, problem=DISCONNECTED)
        return JSONResponse({"error": DISCONNECTED}, status_code=400)
    except OSError as exc:
        _finish(ticket, problem=NO_SPACE if exc.errno in FULL_ERRNOS else FAILED)
        return JSONResponse({"error": "the server could not write the file"}, status_code=507)
    finally:
        if writer is not None:
            writer.discard()  # the partial file, whatever happened (a kept one was renamed already)
        if ticket.state == "receiving":  # cancelled (the server stopping)
            _finish(ticket, problem=DISCONNECTED)


def routes() -> list:
    """The Starlette routes to serve beside Streamlit's (``st.App(..., routes=routes())``)."""
    from starlette.routing import Route

    return [Route(url_path(), receive, methods=["PUT"])]


@asynccontextmanager
async def lifespan(_app):
    """``st.App(..., lifespan=lifespan)``: while the server runs, pages know the route is there."""
    global _mounted
    _mounted = True
    try:
        yield None
    finally:
        _mounted = False
