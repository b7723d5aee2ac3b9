"""The mail catcher's chaos rules: SMTP failures on purpose
(docs/catcher-ops.md).

A :class:`Rule` answers a chosen ``4xx``/``5xx`` code at one stage of a
session (``connect``: in place of the greeting; ``mail``, ``rcpt``,
``data``: to the MAIL command, to a RCPT command, to the end of the
message), with a probability and/or only for matching addresses.  This
module owns the rules' three spellings (the ``--chaos`` flag,
:func:`parse_rule`; the API's JSON and Mailpit's, :func:`rules_from_json`),
their checks, the decision (:class:`Chaos`, with an injectable random
source) and the server's hooks (:class:`ChaosHooks`, mixed into
``CatcherServer`` only: smtpd's own servers never look at a rule).

The hooks are the ones every ``SMTPServer`` has: ``accept_connection()``
(refused before the greeting, then closed), ``accept_mail()`` and
``accept_rcpt()`` (their reply line); the end of data is decided by
:func:`data_refusal`, which the catcher's ``process_message()`` asks before
it stores the message.
"""

from __future__ import annotations

import fnmatch
import logging
import random
import re
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from . import _options
from . import _replies as R

__all__ = ["Chaos", "ChaosHooks", "Rule", "chaos_of", "data_refusal", "install", "parse_rule", "rules_from_json"]

log = logging.getLogger("smtpd_compat")

STAGES = ("connect", "mail", "rcpt", "data")
# The server's attribute holding its Chaos.
ATTRIBUTE = "_catcher_chaos"
# Longest rule message: a reply line is at most 512 octets with its code
# and CRLF (RFC 5321 4.5.3.1.5), and an enhanced code may come first.
MAX_MESSAGE = 400
FLAG_SYNTAX = "STAGE:CODE[:PERCENT[:GLOBS[:MESSAGE]]]"
# Mailpit's triggers (PUT /api/v1/chaos) and the stage each one is.
MAILPIT_TRIGGERS = {"Sender": "mail", "Recipient": "rcpt", "Authentication": None}
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}( |$)")


class Rule(NamedTuple):
    """One chaos rule: answer *code* (with *message*, or the code's usual
    text when empty) at *stage*, *probability* percent of the times its
    *recipients* globs (none: every address) match."""

    stage: str
    code: int
    message: str = ""
    probability: float = 100.0
    recipients: Tuple[str, ...] = ()

    def reply(self, enhanced: bool) -> str:
        """The reply line, with an RFC 3463 code when *enhanced* and the
        message has none of its own."""
        status, text = R.CHAOS_TEXTS.get(self.code, ("%d.0.0" % (self.code // 100), R.CHAOS_DEFAULT))
        text = self.message or text
        if enhanced and not _ENHANCED.match(text):
            text = "%s %s" % (status, text)
        return "%d %s" % (self.code, text)

    def matches(self, addresses: Sequence[str]) -> bool:
        """Whether one of *addresses* matches one of the globs (always,
        without globs); case-insensitive, as domains are."""
        if not self.recipients:
            return True
        return any(fnmatch.fnmatchcase(address.lower(), glob) for glob in self.recipients for address in addresses)

    def as_json(self) -> Dict[str, Any]:
        """The rule in the API's shape."""
        return {"Stage": self.stage, "Code": self.code, "Message": self.message, "Probability": self.probability,
                "Recipients": list(self.recipients)}


def make_rule(stage: Any, code: Any, message: Any = "", probability: Any = 100, recipients: Any = ()) -> Rule:
    """A checked :class:`Rule`; ValueError saying what is wrong otherwise."""
    if not isinstance(stage, str) or stage.lower() not in STAGES:
        raise ValueError("stage must be one of %s, not %r" % (", ".join(STAGES), stage))
    stage = stage.lower()
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
        raise ValueError("code must be a failure reply code from 400 to 599, not %r" % (code,))
    if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 100:
        raise ValueError("probability must be a number from 0 to 100 (percent), not %r" % (probability,))
    if not isinstance(message, str) or len(message) > MAX_MESSAGE \
            or any(not " " <= ch <= "~" for ch in message):
        raise ValueError("message must be printable ASCII of at most %d characters (one reply line), not %r"
                         % (MAX_MESSAGE, message))
    globs = _globs(recipients)
    if globs and stage == "connect":
        raise ValueError("a connect rule cannot match addresses: none is known before the greeting")
    return Rule(stage, code, message.strip(), float(probability), globs)


def _globs(recipients: Any) -> Tuple[str, ...]:
    if isinstance(recipients, str) or not isinstance(recipients, (list, tuple)):
        raise ValueError("recipients must be a list of address globs such as '*@example.com', not %r" % (recipients,))
    for glob in recipients:
        if not isinstance(glob, str) or not glob.strip() or any(not " " < ch <= "~" for ch in glob.strip()):
            raise ValueError("each recipient glob must be a non-empty ASCII pattern without spaces, not %r" % (glob,))
    return tuple(glob.strip().lower() for glob in recipients)


def parse_rule(text: str) -> Rule:
    """The rule a ``--chaos`` flag spells: ``STAGE:CODE[:PERCENT[:GLOBS[:MESSAGE]]]``
    (PERCENT empty or absent: 100; GLOBS comma-separated, empty: every
    address; MESSAGE the rest, colons included).  ValueError otherwise."""
    fields = text.split(":", 4)
    if len(fields) < 2:
        raise ValueError("a chaos rule is %s, such as rcpt:550:50 or data:451:100:*@flaky.example, not %r"
                         % (FLAG_SYNTAX, text))
    stage, code = fields[0].strip(), fields[1].strip()
    percent = fields[2].strip() if len(fields) > 2 else ""
    globs = [glob for glob in fields[3].split(",") if glob.strip()] if len(fields) > 3 else []
    try:
        number = int(code) if code.isdigit() else code
        chance: Any = float(percent) if percent else 100
    except ValueError:
        raise ValueError("PERCENT must be a number from 0 to 100 (empty: 100), not %r in %r" % (percent, text)) from None
    try:
        return make_rule(stage, number, fields[4] if len(fields) > 4 else "", chance, globs)
    except ValueError as err:
        raise ValueError("%s in %r (%s)" % (err, text, FLAG_SYNTAX)) from None


def rules_from_json(body: Any) -> List[Rule]:
    """The rules of a ``PUT /api/v1/chaos`` body: ours (``{"Rules": [...]}``)
    or Mailpit's (``{"Sender": {"ErrorCode", "Probability"}, ...}``).
    ValueError saying what is wrong otherwise."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object: {\"Rules\": [...]} or Mailpit's triggers")
    if "Rules" in body:
        if set(body) - {"Rules"} - set(MAILPIT_TRIGGERS):
            raise ValueError("unknown keys: %s" % ", ".join(sorted(set(body) - {"Rules"} - set(MAILPIT_TRIGGERS))))
        if not isinstance(body["Rules"], list):
            raise ValueError("Rules must be a list of rules")
        return [_rule_from_json(item, i) for i, item in enumerate(body["Rules"])]
    unknown = set(body) - set(MAILPIT_TRIGGERS)
    if unknown:
        raise ValueError("unknown keys: %s (expected Rules, or Mailpit's Sender, Recipient, Authentication)"
                         % ", ".join(sorted(unknown)))
    return [rule for name in MAILPIT_TRIGGERS if name in body for rule in _mailpit_rule(name, body[name])]


_RULE_KEYS = {"Stage", "Code", "Message", "Probability", "Recipients"}


def _rule_from_json(item: Any, index: int) -> Rule:
    if not isinstance(item, dict) or "Stage" not in item or "Code" not in item:
        raise ValueError("Rules[%d]: a rule is an object with at least Stage and Code" % index)
    if set(item) - _RULE_KEYS:
        raise ValueError("Rules[%d]: unknown keys: %s" % (index, ", ".join(sorted(set(item) - _RULE_KEYS))))
    try:
        return make_rule(item["Stage"], item["Code"], item.get("Message", ""), item.get("Probability", 100),
                         item.get("Recipients", []))
    except ValueError as err:
        raise ValueError("Rules[%d]: %s" % (index, err)) from None


def _mailpit_rule(name: str, trigger: Any) -> List[Rule]:
    """Mailpit's trigger *name* as our rules: none at probability 0."""
    if not isinstance(trigger, dict) or set(trigger) - {"ErrorCode", "Probability"}:
        raise ValueError("%s must be an object with ErrorCode and Probability" % name)
    probability = trigger.get("Probability", 0)
    stage = MAILPIT_TRIGGERS[name]
    try:
        rule = make_rule(stage or "mail", trigger.get("ErrorCode", 451), "", probability)
    except ValueError as err:
        raise ValueError("%s: %s" % (name, err)) from None
    if rule.probability == 0:
        return []
    if stage is None:
        raise ValueError("%s: the catcher has no AUTH stage; only Probability 0 is accepted" % name)
    return [rule]


def mailpit_view(rules: Iterable[Rule]) -> Dict[str, Dict[str, Any]]:
    """Mailpit's triggers as the rules give them: for each stage Mailpit has,
    the first rule of that stage that matches every address."""
    view: Dict[str, Dict[str, Any]] = {}
    rules = list(rules)
    for name, stage in MAILPIT_TRIGGERS.items():
        found = next((rule for rule in rules if rule.stage == stage and not rule.recipients), None)
        view[name] = {"ErrorCode": found.code if found else 451,
                      "Probability": found.probability if found else 0}
    return view


class Chaos:
    """The rules of one catcher and the decision they make.

    *rules* may be replaced at any time from another thread (the HTTP
    server's): :attr:`rules` is a tuple, swapped whole.  *rng* is anything
    with ``random()`` in ``[0, 1)`` (a seeded ``random.Random`` in tests).
    """

    def __init__(self, rules: Iterable[Rule] = (), rng: Any = None, enhanced: bool = False) -> None:
        self.rules: Tuple[Rule, ...] = tuple(rules)
        self.rng = rng if rng is not None else random.Random()
        self.enhanced = enhanced

    def replace(self, rules: Iterable[Rule]) -> None:
        """Put *rules* in place of the current ones."""
        self.rules = tuple(rules)
        log.info("chaos rules now: %s", ", ".join(_spelled(rule) for rule in self.rules) or "none")

    def decide(self, stage: str, addresses: Sequence[str] = ()) -> Optional[str]:
        """The reply of the first rule of *stage* that matches *addresses*
        and wins its draw, or None (go on as usual)."""
        for rule in self.rules:
            if rule.stage != stage or not rule.matches(addresses):
                continue
            if rule.probability >= 100 or (rule.probability > 0 and self.rng.random() * 100 < rule.probability):
                reply = rule.reply(self.enhanced)
                log.info("chaos: %s answered %s", stage, reply)
                return reply
        return None

    def as_json(self) -> Dict[str, Any]:
        """``GET /api/v1/chaos``: our rules, and Mailpit's view of them."""
        body: Dict[str, Any] = {"Rules": [rule.as_json() for rule in self.rules]}
        body.update(mailpit_view(self.rules))
        return body


def _spelled(rule: Rule) -> str:
    percent = ("%g" % rule.probability)
    return ":".join([rule.stage, str(rule.code), percent, ",".join(rule.recipients)] + ([rule.message] if rule.message else []))


def install(server: Any, rules: Iterable[Any] = (), rng: Any = None) -> Chaos:
    """Give *server* its :class:`Chaos`, from :class:`Rule` objects or
    ``--chaos`` spellings; ValueError for a bad one."""
    checked = [rule if isinstance(rule, Rule) else parse_rule(str(rule)) for rule in rules]
    chaos = Chaos(checked, rng, enhanced=bool(_options.of(server).enhanced_status_codes))
    server.__dict__[ATTRIBUTE] = chaos
    return chaos


def chaos_of(server: Any) -> Optional[Chaos]:
    """*server*'s Chaos, or None when it has none."""
    found: Optional[Chaos] = getattr(server, "__dict__", {}).get(ATTRIBUTE)
    return found


def data_refusal(server: Any, rcpttos: Sequence[str]) -> Optional[str]:
    """The reply a data rule gives the message for *rcpttos*, or None
    (store it).  For the catcher's ``process_message()``."""
    chaos = chaos_of(server)
    return chaos.decide("data", rcpttos) if chaos is not None and chaos.rules else None


class ChaosHooks:
    """The catcher's chaos as a mixin for its server class (before
    ``SMTPServer`` in its bases): the keyword options ``chaos`` (rules:
    :class:`Rule` objects or ``--chaos`` spellings, checked before the
    socket is bound) and ``chaos_random`` (the random source), and the
    ``SMTPServer`` hooks that apply the rules of ``connect``, ``mail`` and
    ``rcpt``.  The class's ``process_message()`` asks :func:`data_refusal`."""

    def __init__(self, *args: Any, chaos: Iterable[Any] = (), chaos_random: Any = None, **kwargs: Any) -> None:
        rules = [rule if isinstance(rule, Rule) else parse_rule(str(rule)) for rule in chaos]
        if chaos_random is not None and not callable(getattr(chaos_random, "random", None)):
            raise TypeError("chaos_random must have a random() method (such as random.Random(1)), not %r" % (chaos_random,))
        super().__init__(*args, **kwargs)
        install(self, rules, chaos_random)

    @property
    def chaos_rules(self) -> Tuple[Rule, ...]:
        """The rules in force (``GET /api/v1/info``'s ``Chaos``)."""
        chaos = chaos_of(self)
        return chaos.rules if chaos is not None else ()

    def accept_connection(self, peer: Any) -> Optional[str]:
        chaos = chaos_of(self)
        return chaos.decide("connect") if chaos is not None and chaos.rules else None

    def accept_mail(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
        chaos = chaos_of(self)
        return chaos.decide("mail", (address,)) if chaos is not None and chaos.rules else None

    def accept_rcpt(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
        chaos = chaos_of(self)
        return chaos.decide("rcpt", (address,)) if chaos is not None and chaos.rules else None
