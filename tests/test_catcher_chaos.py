"""The catcher's chaos rules (smtpd_compat._catcher_chaos): their spellings
and checks, the decision with a seeded random source, and on the wire with
smtplib on loopback (connect, MAIL, RCPT, DATA)."""

from __future__ import annotations

import http.client as http_client
import json
import random
import shutil
import smtplib
import socket
import subprocess
from typing import Any, List, Optional, Union

import pytest
from catcher_helpers import api

from smtpd_compat import CatcherServer, Controller, RecordingServer
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


# -- CatcherServer: the flags' options, the data stage, the API ----------------------------------


def catcher(**kwargs: Any) -> "Controller[CatcherServer]":
    return Controller(CatcherServer, web=("127.0.0.1", 0), **kwargs)


def test_catcher_applies_every_stage() -> None:
    rules = ["rcpt:550:100:*@nobody.example", "data:451:100:*@flaky.example"]
    with catcher(chaos=rules) as controller, smtplib.SMTP(*controller.address, timeout=10) as client:
        refused = client.sendmail("app@example.com", ["a@example.com", "x@nobody.example"], b"Subject: one\r\n\r\nhi\r\n")
        assert refused == {"x@nobody.example": (550, b"Requested action not taken: mailbox unavailable")}
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("app@example.com", ["b@flaky.example"], b"Subject: two\r\n\r\nhi\r\n")
        assert info.value.smtp_code == 451
        status, listing = api(controller.server, "GET", "/api/v1/messages")
        assert status == 200 and [m["Subject"] for m in listing["messages"]] == ["one"]  # the refused one is not kept
        assert api(controller.server, "GET", "/api/v1/info")[1]["Chaos"] is True


def test_api_get_and_put_rules() -> None:
    with catcher() as controller:
        server = controller.server
        assert api(server, "GET", "/api/v1/chaos") == (200, {
            "Rules": [], "Sender": {"ErrorCode": 451, "Probability": 0},
            "Recipient": {"ErrorCode": 451, "Probability": 0}, "Authentication": {"ErrorCode": 451, "Probability": 0}})
        assert api(server, "GET", "/api/v1/info")[1]["Chaos"] is False
        body = {"Rules": [{"Stage": "connect", "Code": 421, "Message": "Busy"}]}
        status, answer = api(server, "PUT", "/api/v1/chaos", body)
        assert status == 200 and answer["Rules"] == [
            {"Stage": "connect", "Code": 421, "Message": "Busy", "Probability": 100.0, "Recipients": []}]
        with socket.create_connection(controller.address, timeout=10) as sock:
            assert sock.recv(1024) == b"421 Busy\r\n"
        # Mailpit's body: the PUT replaces every rule.
        status, answer = api(server, "PUT", "/api/v1/chaos", {"Recipient": {"ErrorCode": 552, "Probability": 100},
                                                               "Sender": {"ErrorCode": 451, "Probability": 0}})
        assert status == 200 and answer["Recipient"] == {"ErrorCode": 552, "Probability": 100.0}
        assert [rule["Stage"] for rule in answer["Rules"]] == ["rcpt"]
        with smtplib.SMTP(*controller.address, timeout=10) as client:
            client.ehlo()
            client.mail("a@example.com")
            assert client.rcpt("b@example.com")[0] == 552
        assert api(server, "PUT", "/api/v1/chaos", {"Rules": []})[1]["Rules"] == []


@pytest.mark.parametrize("body, says", [
    ({"Rules": [{"Stage": "helo", "Code": 550}]}, "Rules[0]: stage must be one of"),
    ({"Authentication": {"ErrorCode": 535, "Probability": 50}}, "no AUTH stage"),
    ([1, 2], "JSON object"),
])
def test_api_refuses_a_bad_body_and_keeps_the_rules(body: Any, says: str) -> None:
    with catcher(chaos=["rcpt:550:100"]) as controller:
        status, answer = api(controller.server, "PUT", "/api/v1/chaos", body)
        assert status == 400 and says in answer["Error"]
        assert [rule.stage for rule in controller.server.chaos_rules] == ["rcpt"]


def test_api_refuses_a_cross_origin_put() -> None:
    with catcher() as controller:
        conn = http_client.HTTPConnection(*controller.server.web_address, timeout=10)
        conn.request("PUT", "/api/v1/chaos", body=json.dumps({"Rules": [{"Stage": "connect", "Code": 421}]}),
                     headers={"Content-Type": "application/json", "Origin": "http://evil.example"})
        assert conn.getresponse().status == 403
        conn.close()
        assert controller.server.chaos_rules == ()


def test_enhanced_status_codes_on_the_catcher() -> None:
    with catcher(chaos=["mail:452:100"], enhanced_status_codes=True) as controller, \
            smtplib.SMTP(*controller.address, timeout=10) as client:
        client.ehlo()
        assert client.mail("a@example.com") == (452, b"4.3.1 Requested action not taken: insufficient system storage")


def test_command_line_rules() -> None:
    from smtpd_compat._cli import make_server
    from smtpd_compat._cli_args import UsageError, parse_args

    ns = parse_args(["-n", "-c", "CatcherServer", "--web", "127.0.0.1:0", "--chaos", "rcpt:550:50",
                     "--chaos", "data:451:100:*@flaky.example", "--chaos-seed", "3", "127.0.0.1:0"])
    server = make_server(ns)
    try:
        assert [(r.stage, r.code, r.probability) for r in server.chaos_rules] == [("rcpt", 550, 50.0), ("data", 451, 100.0)]
        seeded = random.Random(3)
        drawn = [chaos.chaos_of(server).rng.random() for _ in range(3)]  # type: ignore[union-attr]
        assert drawn == [seeded.random() for _ in range(3)]
    finally:
        server.close()
    with pytest.raises(UsageError, match="code must be a failure reply code"):
        parse_args(["-n", "-c", "CatcherServer", "--chaos", "rcpt:250", "127.0.0.1:0"])
    with pytest.raises(UsageError, match="--chaos applies to -c CatcherServer, not to RecordingServer"):
        make_server(parse_args(["-n", "-c", "RecordingServer", "--chaos", "rcpt:550", "127.0.0.1:0"]))


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_mailpit_script_with_curl() -> None:
    # What a CI step written for Mailpit runs, unchanged but for the port.
    with catcher() as controller:
        url = "http://%s:%d/api/v1/chaos" % controller.server.web_address
        body = '{"Sender": {"ErrorCode": 451, "Probability": 0}, "Recipient": {"ErrorCode": 550, "Probability": 100}}'
        done = subprocess.run(["curl", "-sS", "-X", "PUT", "-H", "Content-Type: application/json", "-d", body, url],
                              capture_output=True, timeout=30, check=True)
        assert json.loads(done.stdout)["Recipient"] == {"ErrorCode": 550, "Probability": 100.0}
        with smtplib.SMTP(*controller.address, timeout=10) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\ny\r\n")
