"""The catcher's browser side: the page's files, the message views and the event stream.

* ``GET /``, ``/static/app.js``, ``/static/app.css``: the page, served from
  this package's files (``_catcher_index.html``, ``_catcher_app.js``,
  ``_catcher_app.css``; nothing from a CDN) under the page's strict CSP.
* ``GET /view/{ID}.html``: the HTML body, for the page's sandboxed frame,
  under ``Content-Security-Policy: sandbox; default-src 'none'; ...``: no
  script runs, nothing remote loads (``?remote=1`` allows remote images,
  styles and fonts: the page's "load remote content").  ``/view/{ID}.txt``:
  the text body as text/plain.
* ``GET /api/v1/events``: Server-Sent Events of the store's changes
  (``new``, ``deleted``, ``read``), a ``: ping`` comment every 15 s.
"""

from __future__ import annotations

import json
import os
import queue
from typing import Any, Optional

from . import _catcher_mime as mime
from ._catcher_http import PAGE_CSP, Request, Response, Stream, error, route

VIEW_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
REMOTE_VIEW_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline' http: https:; "
                   "img-src data: http: https:; font-src http: https:")
PING_SECONDS = 15.0

_HERE = os.path.dirname(os.path.abspath(__file__))
_FILES = {
    "/": ("_catcher_index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("_catcher_app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("_catcher_app.css", "text/css; charset=utf-8"),
}


def _page_file(path: str) -> Response:
    name, kind = _FILES[path]
    try:
        with open(os.path.join(_HERE, name), "rb") as f:
            body = f.read()
    except OSError:
        return error(404, "not found")
    return Response(200, body, kind, [("Content-Security-Policy", PAGE_CSP), ("X-Frame-Options", "DENY")])


@route("GET", r"/")
def index(request: Request, match: Any) -> Response:
    return _page_file("/")


@route("GET", r"/static/app\.js")
def app_js(request: Request, match: Any) -> Response:
    return _page_file("/static/app.js")


@route("GET", r"/static/app\.css")
def app_css(request: Request, match: Any) -> Response:
    return _page_file("/static/app.css")


def _parsed(request: Request, ident: str) -> Optional[Any]:
    store = request.app.store
    entry = store.get(ident)
    raw = store.raw(entry) if entry is not None else None
    return None if raw is None else mime.parse(raw)


@route("GET", r"/view/(?P<id>[^/]{1,255})\.html")
def view_html(request: Request, match: Any) -> Response:
    """The HTML body for the page's ``<iframe sandbox>``."""
    message = _parsed(request, match.group("id"))
    if message is None:
        return error(404, "message not found")
    policy = REMOTE_VIEW_CSP if request.query.get("remote") == "1" else VIEW_CSP
    body = mime.view_html(message).encode("utf-8", "replace")
    return Response(200, body, "text/html; charset=utf-8",
                    [("Content-Security-Policy", policy), ("X-DNS-Prefetch-Control", "off")])


@route("GET", r"/view/(?P<id>[^/]{1,255})\.txt")
def view_text(request: Request, match: Any) -> Response:
    message = _parsed(request, match.group("id"))
    if message is None:
        return error(404, "message not found")
    text = mime.detail(message)["Text"]
    return Response(200, text.encode("utf-8", "replace"), "text/plain; charset=utf-8")


def event_text(name: str, data: Any) -> bytes:
    """One Server-Sent Event.  JSON has no raw line breaks, so one ``data:`` line."""
    return ("event: %s\ndata: %s\n\n" % (name, json.dumps(data, ensure_ascii=True, separators=(",", ":")))).encode("ascii")


@route("GET", r"/api/v1/events")
def events(request: Request, match: Any) -> Stream:
    """The store's changes as they happen, until the client or the server goes."""
    store = request.app.store
    changes = store.subscribe()

    def write(wfile: Any) -> None:
        try:
            wfile.write(b": connected\n\n")
            wfile.flush()
            while True:
                try:
                    change = changes.get(timeout=PING_SECONDS)
                except queue.Empty:
                    wfile.write(b": ping\n\n")
                    wfile.flush()
                    continue
                if change is None:
                    return
                wfile.write(event_text(*change))
                wfile.flush()
        finally:
            store.unsubscribe(changes)

    return Stream(write, cancel=lambda: store.unsubscribe(changes))
