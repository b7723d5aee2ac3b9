"""The catcher's chaos rules (smtpd_compat._catcher_chaos): their spellings
and checks, the decision with a seeded random source, and on the wire with
smtplib on loopback (connect, MAIL, RCPT, DATA)."""

from __future__ import annotations

import random
import smtplib
import socket
from typing import Any, List, Optional, Union

import pytest

from smtpd_compat import Controller, RecordingServer
from smtpd_compat import _catcher_chaos as chaos
from smtpd_compat._catcher_chaos import Rule


class ChaosRecorder(chaos.ChaosHooks, RecordingServer):
    """A RecordingServer with the catcher's chaos (CatcherServer has the
    same bases and asks data_refusal() in its process_message() the same way)."""

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str],
                        **kwargs: Any) -> Optional[str]:
        refusal = chaos.data_refusal(self, rcpttos)
        if refusal is not None:
            return refusal
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


# -- the --chaos spelling ------------------------------------------------------------------
@pytest.mark.parametrize("text, rule", [
    ("rcpt:550:50", Rule("rcpt", 550, "", 50.0, ())),
    ("rcpt:550", Rule("rcpt", 550, "", 100.0, ())),
    ("DATA:451:100:*@flaky.example", Rule("data", 451, "", 100.0, ("*@flaky.example",))),
    ("data:451::*@A.example, b@c.example", Rule("data", 451, "", 100.0, ("*@a.example", "b@c.example"))),
    ("mail:452:12.5::Mailbox full: try later", Rule("mail", 452, "Mailbox full: try later", 12.5, ())),
    ("connect:421:0", Rule("connect", 421, "", 0.0, ())),
])
def test_parse_rule(text: str, rule: Rule) -> None:
    assert chaos.parse_rule(text) == rule


@pytest.mark.parametrize("text, says", [
    ("rcpt", "STAGE:CODE"),
    ("helo:550", "stage must be one of connect, mail, rcpt, data"),
    ("rcpt:250", "code must be a failure reply code from 400 to 599"),
    ("rcpt:600", "400 to 599"),
    ("rcpt:5x0", "400 to 599"),
    ("rcpt:550:101", "probability must be a number from 0 to 100"),
    ("rcpt:550:-1", "probability must be a number from 0 to 100"),
    ("rcpt:550:nan", "probability must be a number from 0 to 100"),
    ("rcpt:550:*@x.example", "PERCENT must be a number"),
    ("connect:421:100:*@x.example", "a connect rule cannot match addresses"),
    ("rcpt:550:100::bad\ttext", "printable ASCII"),
    ("rcpt:550:100::" + "x" * 401, "at most 400"),
])
def test_parse_rule_refuses(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("*", r"\*")) as info:
        chaos.parse_rule(text)
    assert repr(text)[:20] in str(info.value)  # the error quotes the flag


# -- replies -----------------------------------------------------------------------------
def test_reply_texts() -> None:
    assert Rule("rcpt", 550).reply(False) == "550 Requested action not taken: mailbox unavailable"
    assert Rule("rcpt", 550).reply(True) == "550 5.1.1 Requested action not taken: mailbox unavailable"
    assert Rule("data", 451).reply(True) == "451 4.3.0 Requested action aborted: local error in processing"
    assert Rule("mail", 499).reply(False) == "499 Failure injected by a chaos rule"
    assert Rule("mail", 499).reply(True) == "499 4.0.0 Failure injected by a chaos rule"
    # A message that carries its own enhanced code keeps it; else the code's class gets one.
    assert Rule("mail", 550, "5.7.1 Go away").reply(True) == "550 5.7.1 Go away"
    assert Rule("mail", 550, "No thanks").reply(True) == "550 5.1.1 No thanks"


# -- the JSON spellings ------------------------------------------------------------------
def test_rules_from_json_ours() -> None:
    body = {"Rules": [{"Stage": "rcpt", "Code": 550, "Probability": 25, "Recipients": ["*@x.example"]},
                      {"Stage": "connect", "Code": 421, "Message": "Busy"}]}
    rules = chaos.rules_from_json(body)
    assert rules == [Rule("rcpt", 550, "", 25.0, ("*@x.example",)), Rule("connect", 421, "Busy", 100.0, ())]
    assert chaos.Chaos(rules).as_json()["Rules"] == [
        {"Stage": "rcpt", "Code": 550, "Message": "", "Probability": 25.0, "Recipients": ["*@x.example"]},
        {"Stage": "connect", "Code": 421, "Message": "Busy", "Probability": 100.0, "Recipients": []},
    ]
    assert chaos.rules_from_json({"Rules": []}) == []


def test_rules_from_json_mailpit() -> None:
    body = {"Sender": {"ErrorCode": 451, "Probability": 5}, "Recipient": {"ErrorCode": 550, "Probability": 0},
            "Authentication": {"ErrorCode": 535, "Probability": 0}}
    rules = chaos.rules_from_json(body)
    assert rules == [Rule("mail", 451, "", 5.0, ())]
    view = chaos.Chaos(rules).as_json()
    assert view["Sender"] == {"ErrorCode": 451, "Probability": 5.0}
    assert view["Recipient"] == {"ErrorCode": 451, "Probability": 0}
    assert view["Authentication"] == {"ErrorCode": 451, "Probability": 0}
    assert chaos.rules_from_json({"Recipient": {"ErrorCode": 550, "Probability": 100}}) == [Rule("rcpt", 550)]


@pytest.mark.parametrize("body, says", [
    ([], "JSON object"),
    ({"Rules": {}}, "Rules must be a list"),
    ({"Rules": [{"Stage": "rcpt"}]}, r"Rules\[0\]: a rule is an object with at least Stage and Code"),
    ({"Rules": [{"Stage": "rcpt", "Code": 550, "Colour": 1}]}, "unknown keys: Colour"),
    ({"Rules": [{"Stage": "rcpt", "Code": "550"}]}, r"Rules\[0\]: code must be"),
    ({"Rules": [{"Stage": "rcpt", "Code": 550, "Recipients": "*@x"}]}, "list of address globs"),
    ({"Rules": [{"Stage": "rcpt", "Code": 550, "Probability": True}]}, "probability"),
    ({"Sender": {"ErrorCode": 250, "Probability": 5}}, "Sender: code must be"),
    ({"Sender": 5}, "Sender must be an object"),
    ({"Authentication": {"ErrorCode": 535, "Probability": 10}}, "no AUTH stage"),
    ({"Whatever": {}}, "unknown keys: Whatever"),
])
def test_rules_from_json_refuses(body: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        chaos.rules_from_json(body)


# -- the decision ------------------------------------------------------------------------
def test_decide_first_matching_rule() -> None:
    decider = chaos.Chaos([Rule("rcpt", 550, "", 100.0, ("*@bad.example",)), Rule("rcpt", 451, "", 0.0, ()),
                           Rule("rcpt", 452)])
    assert decider.decide("rcpt", ["x@BAD.example"]) is not None
    assert decider.decide("rcpt", ["x@BAD.example"]).startswith("550 ")  # type: ignore[union-attr]
    assert decider.decide("rcpt", ["x@good.example"]).startswith("452 ")  # type: ignore[union-attr]
    assert decider.decide("mail", ["x@bad.example"]) is None
    assert decider.decide("data", ["a@good.example", "b@bad.example"]) is None


class Sequence_:
    """A random source that returns the given values in turn."""

    def __init__(self, values: List[float]) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_decide_probability_draws() -> None:
    decider = chaos.Chaos([Rule("rcpt", 550, "", 30.0)], rng=Sequence_([0.29, 0.30, 0.0, 0.999]))
    assert [decider.decide("rcpt", ["a@x"]) is not None for _ in range(4)] == [True, False, True, False]


def test_decide_seeded_rate() -> None:
    decider = chaos.Chaos([Rule("rcpt", 550, "", 25.0)], rng=random.Random(17))
    hits = sum(decider.decide("rcpt", ["a@x"]) is not None for _ in range(4000))
    assert 850 < hits < 1150  # 1000 expected; the seed makes it the same every run
    again = chaos.Chaos([Rule("rcpt", 550, "", 25.0)], rng=random.Random(17))
    assert sum(again.decide("rcpt", ["a@x"]) is not None for _ in range(4000)) == hits


# -- on the wire ---------------------------------------------------------------------------
def serve(rules: Any, **kwargs: Any) -> "Controller[ChaosRecorder]":
    return Controller(ChaosRecorder, chaos=rules, **kwargs)


def test_connect_rule_refuses_before_the_greeting() -> None:
    with serve(["connect:554:100::No service for you"]) as controller:
        with socket.create_connection(controller.address, timeout=10) as sock:
            assert sock.recv(1024) == b"554 No service for you\r\n"
            assert sock.recv(1024) == b""  # then closed
        with pytest.raises(smtplib.SMTPConnectError) as info:
            smtplib.SMTP(*controller.address, timeout=10)
        assert info.value.smtp_code == 554


def test_mail_rcpt_data_rules() -> None:
    rules = ["mail:451:100:*@slow.example", "rcpt:550:100:*@nobody.example", "data:452:100:*@full.example"]
    with serve(rules) as controller, smtplib.SMTP(*controller.address, timeout=10) as client:
        client.ehlo()
        assert client.mail("app@slow.example") == (451, b"Requested action aborted: local error in processing")
        assert client.mail("app@fine.example")[0] == 250
        assert client.rcpt("x@nobody.example") == (550, b"Requested action not taken: mailbox unavailable")
        assert client.rcpt("y@full.example")[0] == 250
        assert client.data(b"Subject: hi\r\n\r\nbody\r\n") == (452, b"Requested action not taken: insufficient system storage")
        client.rset()
        client.sendmail("app@fine.example", ["ok@fine.example"], b"Subject: kept\r\n\r\nbody\r\n")
        assert [m.rcpttos for m in controller.server.wait_for(1)] == [["ok@fine.example"]]


def test_enhanced_status_codes_and_runtime_change() -> None:
    with serve([], enhanced_status_codes=True) as controller, smtplib.SMTP(*controller.address, timeout=10) as client:
        client.ehlo()
        assert client.mail("a@x.example")[0] == 250
        chaos.chaos_of(controller.server).replace([Rule("rcpt", 550, "", 100.0)])  # type: ignore[union-attr]
        assert client.rcpt("b@x.example") == (550, b"5.1.1 Requested action not taken: mailbox unavailable")
        chaos.chaos_of(controller.server).replace([])  # type: ignore[union-attr]
        assert client.rcpt("b@x.example")[0] == 250


def test_probability_zero_never_fires() -> None:
    with serve(["rcpt:550:0", "data:451:0", "mail:451:0", "connect:421:0"]) as controller:
        for number in range(5):
            with smtplib.SMTP(*controller.address, timeout=10) as client:
                client.sendmail("a@x.example", ["b@x.example"], b"Subject: %d\r\n\r\nbody\r\n" % number)
        assert len(controller.server.wait_for(5)) == 5


def test_probability_between_with_seeded_source() -> None:
    # Draws go in order: the rcpt rule's at each RCPT (the only rule).
    with serve(["rcpt:450:50"], chaos_random=Sequence_([0.1, 0.9, 0.49, 0.5])) as controller, \
            smtplib.SMTP(*controller.address, timeout=10) as client:
        client.ehlo()
        client.mail("a@x.example")
        assert [client.rcpt("r%d@x.example" % i)[0] for i in range(4)] == [450, 250, 450, 250]


def test_bad_options_are_refused_before_binding() -> None:
    with pytest.raises(ValueError, match="stage must be one of"):
        ChaosRecorder(("127.0.0.1", 0), chaos=["quit:550"], map={})
    with pytest.raises(TypeError, match="chaos_random must have a random"):
        ChaosRecorder(("127.0.0.1", 0), chaos=["rcpt:550"], chaos_random=17, map={})
    server = ChaosRecorder(("127.0.0.1", 0), chaos=[Rule("rcpt", 550), "data:451"], map={})
    try:
        assert [rule.stage for rule in server.chaos_rules] == ["rcpt", "data"]
    finally:
        server.close()
