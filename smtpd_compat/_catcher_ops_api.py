"""The catcher's chaos and release endpoints (docs/catcher-ops.md):
``GET``/``PUT /api/v1/chaos`` and ``POST /api/v1/message/{ID}/release``.

Registered with :func:`~smtpd_compat._catcher_http.route` when this module
is imported (``catcher`` imports it); the rules and the relaying are
:mod:`~smtpd_compat._catcher_chaos`'s and
:mod:`~smtpd_compat._catcher_release`'s, this module only translates
requests and answers.
"""

from __future__ import annotations

from typing import Any

from ._catcher_chaos import chaos_of, rules_from_json
from ._catcher_http import Request, Response, error, json_response, ok, route
from ._catcher_release import recipients_of, releaser_of

_ID = r"(?P<id>[A-Za-z0-9._,:=+-]{1,200})"  # as _catcher_api's


@route("GET", r"/api/v1/chaos")
def get_chaos(request: Request, match: Any) -> Response:
    """The rules, and Mailpit's triggers as they give them."""
    chaos = chaos_of(request.app)
    if chaos is None:
        return error(409, "this server has no chaos rules (not a CatcherServer)")
    return json_response(chaos.as_json())


@route("PUT", r"/api/v1/chaos")
def put_chaos(request: Request, match: Any) -> Response:
    """Replace every rule (ours or Mailpit's body); answer the new rules."""
    chaos = chaos_of(request.app)
    if chaos is None:
        return error(409, "this server has no chaos rules (not a CatcherServer)")
    try:
        rules = rules_from_json(request.json())
    except ValueError as err:
        return error(400, str(err))
    chaos.replace(rules)
    return json_response(chaos.as_json())


@route("POST", r"/api/v1/message/" + _ID + r"/release")
def release(request: Request, match: Any) -> Response:
    """Relay the message to ``--release-to``: ``200 ok``, or ``502`` with
    the upstream server's reply."""
    releaser = releaser_of(request.app)
    if releaser is None:
        return error(409, "release is off: start the catcher with --release-to HOST:PORT")
    store = request.app.store
    entry = store.get(match.group("id"))
    raw = store.raw(entry) if entry is not None else None
    if entry is None or raw is None:
        return error(404, "message not found")
    try:
        recipients = recipients_of(request.json(), entry.envelope)
    except ValueError as err:
        return error(400, str(err))
    envelope = entry.envelope
    reply = releaser.release(raw, str(envelope.get("MailFrom", "")), recipients, envelope.get("MailOptions") or ())
    return ok() if reply is None else error(502, reply)
