"""A sink whose ``process_message()`` costs CPU (200 rounds of SHA-256 over
the message, about 0.5 ms for 1 KB), to see what ``--workers`` buys when the
work per message is the server's own rather than the dialogue's
(docs/performance.md, "Several processes").

    PYTHONPATH=.:benchmarks python -m smtpd_compat -n -q -c cpu_sink.Sink --workers 2 127.0.0.1:2525
    /usr/sbin/smtp-source -s 20 -m 4000 -l 1024 127.0.0.1:2525
"""

import hashlib

from smtpd_compat import SMTPServer


class Sink(SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):  # type: ignore[no-untyped-def]
        digest = bytes(data) if isinstance(data, (bytes, bytearray)) else data.encode()
        for _ in range(200):
            digest = hashlib.sha256(digest + data).digest()
        return None
