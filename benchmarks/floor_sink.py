#!/usr/bin/env python3
"""Reference floor: about the least a Python SMTP sink can do per message.

A measuring instrument for bench.py (``--servers floor``), not a server:
one thread, level-triggered ``select.epoll``, fixed replies, messages
discarded, no limits, no error handling beyond closing.  Its CPU per message
is what any Python server pays for the syscalls and the dialogue, so the
gap between it and smtpd_compat is what smtpd_compat's own code costs.

    python3 benchmarks/floor_sink.py 127.0.0.1:PORT
"""
import select
import socket
import sys
from typing import Any

# No extensions in the EHLO reply, so clients do not pipeline.
REPLIES = {b"HELO": b"250 floor\r\n", b"EHLO": b"250 floor\r\n", b"MAIL": b"250 2.1.0 Ok\r\n",
           b"RCPT": b"250 2.1.5 Ok\r\n", b"RSET": b"250 2.0.0 Ok\r\n", b"NOOP": b"250 2.0.0 Ok\r\n",
           b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n", b"QUIT": b"221 2.0.0 Bye\r\n"}
UNKNOWN = b"500 5.5.2 Error: command not recognized\r\n"


def feed(conn: "list[Any]", data: bytes) -> bool:
    """Answer what *data* completes; conn is [socket, buffer, in DATA]. False: close."""
    sock, buf, in_data = conn
    buf += data
    while True:
        if in_data:
            end = buf.find(b"\r\n.\r\n")
            if end < 0:
                buf = buf[-4:]  # enough to find a terminator split across reads
                break
            buf, in_data = buf[end + 5:], False
            sock.sendall(b"250 2.0.0 Ok: queued\r\n")
            continue
        eol = buf.find(b"\r\n")
        if eol < 0:
            break
        verb, buf = buf[:4].upper(), buf[eol + 2:]
        sock.sendall(REPLIES.get(verb, UNKNOWN))
        if verb == b"QUIT":
            return False
        if verb == b"DATA":
            buf, in_data = b"\r\n" + buf, True  # the DATA line's CRLF starts the terminator
    conn[1], conn[2] = buf, in_data
    return True


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    listener = socket.create_server((host, int(port)), backlog=4096)  # smtpd_compat's backlog
    poller = select.epoll()
    conns: "dict[int, list[Any]]" = {}  # fd -> [socket, buffer, in DATA]
    poller.register(listener.fileno(), select.EPOLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                # Blocking sockets are safe here: epoll said readable, and each
                # reply is small and read by the client before it sends more.
                sock, _ = listener.accept()
                sock.sendall(b"220 floor ESMTP\r\n")
                conns[sock.fileno()] = [sock, b"", False]
                poller.register(sock.fileno(), select.EPOLLIN)
                continue
            conn = conns[fd]
            try:
                data = conn[0].recv(65536)
                alive = bool(data) and feed(conn, data)
            except OSError:
                alive = False
            if not alive:
                poller.unregister(fd)
                conns.pop(fd)[0].close()


if __name__ == "__main__":
    main()
