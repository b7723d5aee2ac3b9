"""MAIL's parameters and what the envelope's addresses may hold: the rules
``Session.mail()`` and ``Session.rcpt()`` apply after parsing, with no I/O.

smtpd's parameters (``BODY``, ``SMTPUTF8``, ``SIZE``) are checked by
``_grammar.check_mail_params`` in smtpd's order (``BODY=BINARYMIME``, known
with the option ``chunking``, RFC 3030, is taken out before); then those of
the extensions behind options: ``REQUIRETLS`` (RFC 8689, option
``requiretls``), known only once the session is over TLS, as the EHLO
keyword is announced only then (before, it is an unknown parameter: 555,
like any other).

SMTPUTF8 (RFC 6531 section 3.5): on a server with ``enable_SMTPUTF8``, a
non-ASCII address is refused ``553 5.6.7`` unless MAIL carried
``SMTPUTF8``.  smtpd accepted it; a server without ``enable_SMTPUTF8`` still
does, as smtpd did (docs/extensions.md, docs/differences.md).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

from . import _grammar
from . import _replies as R

__all__ = ["mail_refusal", "rcpt_refusal"]


def mail_refusal(session: Any, parsed: Dict[str, Union[str, bool]], address: str, syntaxerr: str) -> Optional[str]:
    """The reply refusing a MAIL command with *address* and the parameters
    *parsed* (``_grammar.parse_params``), or None when they are accepted.
    Sets ``session.require_SMTPUTF8`` as smtpd did (when ``SMTPUTF8`` is
    given, even if an unknown parameter then refuses the command)."""
    host = session.host
    smtputf8 = False
    if parsed:
        refusal = _binarymime(parsed) if session.features.chunking else None
        if refusal:
            return refusal
        try:
            smtputf8 = _grammar.check_mail_params(
                parsed,
                syntaxerr,
                decode_data=host._decode_data,
                enable_smtputf8=host.enable_SMTPUTF8,
                data_size_limit=host.data_size_limit,
            )
        except _grammar.ReplyError as err:
            return err.reply
        if smtputf8:
            session.require_SMTPUTF8 = True
        if parsed and session.features.requiretls and session.tls_active:
            requiretls = parsed.pop("REQUIRETLS", False)
            if requiretls is not True and requiretls is not False:
                return R.REQUIRETLS_NO_ARGS
        if parsed:
            return R.MAIL_PARAMS_UNKNOWN
    if not smtputf8 and host.enable_SMTPUTF8 and not address.isascii():
        return R.NON_ASCII_SENDER
    return None


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
