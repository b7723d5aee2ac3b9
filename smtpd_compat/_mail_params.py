"""MAIL's parameters and what the envelope's addresses may hold: the rules
``Session.mail()`` and ``Session.rcpt()`` apply after parsing, with no I/O.

smtpd's parameters (``BODY``, ``SMTPUTF8``, ``SIZE``) are checked by
``_grammar.check_mail_params`` in smtpd's order (``BODY=BINARYMIME``, known
with the option ``chunking``, RFC 3030, is taken out before); then those of
the extensions behind options: ``REQUIRETLS`` (RFC 8689, option
``requiretls``), known only once the session is over TLS, as the EHLO
keyword is announced only then (before, it is an unknown parameter: 555,
like any other).
``_grammar.check_mail_params`` in smtpd's order; then those of the
extensions behind options: ``REQUIRETLS`` (RFC 8689, option ``requiretls``),
known only once the session is over TLS, as the EHLO keyword is announced
only then (before, it is an unknown parameter: 555, like any other); and
DSN's ``RET`` and ``ENVID`` (RFC 3461, option ``dsn``), as RCPT's
``NOTIFY`` and ``ORCPT``, checked by ``_dsn`` and kept in ``session.dsn``.

SMTPUTF8 (RFC 6531 section 3.5): on a server with ``enable_SMTPUTF8``, a
non-ASCII address is refused ``553 5.6.7`` unless MAIL carried
``SMTPUTF8``.  smtpd accepted it; a server without ``enable_SMTPUTF8`` still
does, as smtpd did (docs/extensions.md, docs/differences.md).
``session.require_SMTPUTF8`` is that of the MAIL command accepted: a refused
MAIL leaves it false (smtpd left it set until the next RSET).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

from . import _dsn, _grammar
from . import _replies as R

__all__ = ["mail_refused", "mail_refusal", "rcpt_params_refusal", "rcpt_refusal", "rcpt_refused"]


def mail_refusal(session: Any, parsed: Dict[str, Union[str, bool]], address: str, syntaxerr: str, params: str = "") -> Optional[str]:
    """The reply refusing a MAIL command with *address* and the parameters
    *parsed* (``_grammar.parse_params``; *params*: as the client wrote
    them), or None when they are accepted.  Sets
    ``session.require_SMTPUTF8`` when the command, accepted, gave
    ``SMTPUTF8`` (clears it otherwise), and ``session.dsn`` to its DSN
    parameters (option ``dsn``)."""
    refusal, smtputf8, dsn = _checked(session, parsed, address, syntaxerr, params)
    accepted = refusal is None
    session.require_SMTPUTF8 = smtputf8 and accepted
    if accepted and dsn is not None:
        session.dsn = dsn
    return refusal


def _checked(
    session: Any, parsed: Dict[str, Union[str, bool]], address: str, syntaxerr: str, params: str
) -> Tuple[Optional[str], bool, Optional[_dsn.Transaction]]:
    host = session.host
    smtputf8 = False
    dsn = None
    if parsed:
        refusal = _binarymime(parsed) if session.features.chunking else None
        if refusal:
            return refusal, False, None
        try:
            smtputf8 = _grammar.check_mail_params(
                parsed,
                syntaxerr,
                decode_data=host._decode_data,
                enable_smtputf8=host.enable_SMTPUTF8,
                data_size_limit=host.data_size_limit,
            )
        except _grammar.ReplyError as err:
            return err.reply, False, None
        refusal, dsn = _extension_params(session, parsed, params)
        if refusal is not None:
            return refusal, smtputf8, None
    if not smtputf8 and host.enable_SMTPUTF8 and not address.isascii():
        return R.NON_ASCII_SENDER, smtputf8, None
    return None, smtputf8, dsn


def _extension_params(
    session: Any, parsed: Dict[str, Union[str, bool]], params: str
) -> Tuple[Optional[str], Optional[_dsn.Transaction]]:
    """The parameters of the extensions behind options, taken out of
    *parsed* (smtpd's are already out): the reply refusing the command, or
    None and its DSN parameters (None without the option)."""
    if parsed and session.features.requiretls and session.tls_active:
        requiretls = parsed.pop("REQUIRETLS", False)
        if requiretls is not True and requiretls is not False:
            return R.REQUIRETLS_NO_ARGS, None
    dsn = None
    if parsed and session.features.dsn:
        try:
            dsn = _dsn.mail_params(parsed, params)  # RET, ENVID
        except _grammar.ReplyError as err:
            return err.reply, None
    if parsed:
        return R.MAIL_PARAMS_UNKNOWN, None
    return None, dsn


def mail_refused(session: Any) -> None:
    """MAIL was refused after its parameters were checked (by
    ``accept_mail()``): no transaction, so nothing they noted holds."""
    session.require_SMTPUTF8 = False
    session.dsn = None


def _binarymime(parsed: Dict[str, Union[str, bool]]) -> Optional[str]:
    """CHUNKING's BODY (RFC 3030 section 3): BINARYMIME is accepted (and
    taken out of *parsed*; the transaction must then use BDAT, see
    _chunking), and a bad BODY is refused naming it."""
    body = parsed.get("BODY")
    if body == "BINARYMIME":
        del parsed["BODY"]
    elif body is not None and body not in ("7BIT", "8BITMIME"):
        return R.BAD_BODY_CHUNKING
    return None


def rcpt_refusal(session: Any, address: str) -> Optional[str]:
    """The reply refusing RCPT's non-ASCII *address* on a server with
    enable_SMTPUTF8 (RFC 6531 section 3.5), or None."""
    if not session.require_SMTPUTF8:
        return R.NON_ASCII_RECIPIENT
    return None


def rcpt_params_refusal(
    session: Any, parsed: Optional[Dict[str, Union[str, bool]]], params: str, address: str, syntaxerr: str
) -> Optional[str]:
    """The reply refusing RCPT's parameters *parsed* (``_getparams``'s:
    None for a syntax error, answered *syntaxerr*; *params*: as the client
    wrote them), or None: none is known but DSN's ``NOTIFY`` and ``ORCPT``
    (option ``dsn``), noted in ``session.dsn`` for the recipient about to
    be added."""
    if parsed is None:
        return syntaxerr
    if not session.features.dsn:
        return R.RCPT_PARAMS_UNKNOWN
    try:
        recipient = _dsn.rcpt_params(parsed, params, address, utf8=session.require_SMTPUTF8)
    except _grammar.ReplyError as err:
        return err.reply
    if parsed:
        return R.RCPT_PARAMS_UNKNOWN
    transaction = getattr(session, "dsn", None)  # (set by post_data_state(): not before in a bare Session)
    if transaction is None:
        transaction = session.dsn = _dsn.Transaction()
    transaction.recipients[len(session.rcpttos)] = recipient
    return None


def rcpt_refused(session: Any) -> None:
    """RCPT was refused after its parameters were checked (by
    ``accept_rcpt()``): what they noted is dropped."""
    transaction = getattr(session, "dsn", None)
    if transaction is not None:
        transaction.recipients.pop(len(session.rcpttos), None)
