"""A closed session is freed at once, with the message it holds.

A reference cycle between a channel and one of its helpers would keep every
closed session, and its last message (``received_data``), alive until the
cyclic garbage collector happens to run, which an idle server may not do for
a long time: a server receiving large messages then grows without bound.
"""

import gc
import smtplib
import time
import weakref

from smtpd_compat import smtpd

from conftest import TIMEOUT, RecordingSMTPServer, running_server

channels = []


class TrackedChannel(smtpd.SMTPChannel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        channels.append(weakref.ref(self))


class TrackedServer(RecordingSMTPServer):
    channel_class = TrackedChannel


def test_closed_session_is_freed_without_the_cyclic_collector():
    channels.clear()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with running_server(TrackedServer) as st:
            with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
                client.sendmail("a@example.com", ["b@example.com"], b"x" * 100000)
            st.server.wait_for(1)
            deadline = time.monotonic() + TIMEOUT
            while channels[0]() is not None and time.monotonic() < deadline:
                time.sleep(0.01)  # the loop thread closes the session after QUIT
            assert len(channels) == 1
            assert channels[0]() is None, "the closed channel is still referenced (a cycle?)"
    finally:
        if enabled:
            gc.enable()
