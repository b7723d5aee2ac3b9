"""MAIL's parameters and what the envelope's addresses may hold: the rules
``Session.mail()`` and ``Session.rcpt()`` apply after parsing, with no I/O.

smtpd's parameters (``BODY``, ``SMTPUTF8``, ``SIZE``) are checked by
``_grammar.check_mail_params`` in smtpd's order; then those of the
extensions behind options: ``REQUIRETLS`` (RFC 8689, option ``requiretls``),
known only once the session is over TLS, as the EHLO keyword is announced
only then (before, it is an unknown parameter: 555, like any other).

SMTPUTF8 (RFC 6531 section 3.5): on a server with ``enable_SMTPUTF8``, a
non-ASCII address is refused ``553 5.6.7`` unless MAIL carried
``SMTPUTF8``.  smtpd accepted it; a server without ``enable_SMTPUTF8`` still
does, as smtpd did (docs/extensions.md, docs/differences.md).
``session.require_SMTPUTF8`` is that of the MAIL command accepted: a refused
MAIL leaves it false (smtpd left it set until the next RSET).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

from . import _grammar
from . import _replies as R

__all__ = ["mail_refused", "mail_refusal", "rcpt_refusal"]


def mail_refusal(session: Any, parsed: Dict[str, Union[str, bool]], address: str, syntaxerr: str) -> Optional[str]:
    """The reply refusing a MAIL command with *address* and the parameters
    *parsed* (``_grammar.parse_params``), or None when they are accepted.
    Sets ``session.require_SMTPUTF8`` when the command, accepted, gave
    ``SMTPUTF8`` (clears it otherwise)."""
    refusal, smtputf8 = _checked(session, parsed, address, syntaxerr)
    session.require_SMTPUTF8 = smtputf8 and refusal is None
    return refusal


def _checked(session: Any, parsed: Dict[str, Union[str, bool]], address: str, syntaxerr: str) -> Tuple[Optional[str], bool]:
    host = session.host
    smtputf8 = False
    if parsed:
        try:
            smtputf8 = _grammar.check_mail_params(
                parsed,
                syntaxerr,
                decode_data=host._decode_data,
                enable_smtputf8=host.enable_SMTPUTF8,
                data_size_limit=host.data_size_limit,
            )
        except _grammar.ReplyError as err:
            return err.reply, False
        if parsed and session.features.requiretls and session.tls_active:
            requiretls = parsed.pop("REQUIRETLS", False)
            if requiretls is not True and requiretls is not False:
                return R.REQUIRETLS_NO_ARGS, smtputf8
        if parsed:
            return R.MAIL_PARAMS_UNKNOWN, smtputf8
    if not smtputf8 and host.enable_SMTPUTF8 and not address.isascii():
        return R.NON_ASCII_SENDER, smtputf8
    return None, smtputf8


def mail_refused(session: Any) -> None:
    """MAIL was refused after its parameters were checked (by
    ``accept_mail()``): no transaction, so nothing they noted holds."""
    session.require_SMTPUTF8 = False


def rcpt_refusal(session: Any, address: str) -> Optional[str]:
    """The reply refusing RCPT's non-ASCII *address* on a server with
    enable_SMTPUTF8 (RFC 6531 section 3.5), or None."""
    if not session.require_SMTPUTF8:
        return R.NON_ASCII_RECIPIENT
    return None
