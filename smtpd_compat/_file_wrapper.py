"""asyncore's ``file_wrapper``: a file descriptor that looks enough like a
socket for a dispatcher (``asyncore.file_dispatcher`` reads a pipe or a tty
through it).  POSIX only, as in asyncore.
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any, Optional

__all__ = ["file_wrapper"]


class file_wrapper:
    """Make a file descriptor look enough like a socket for a dispatcher."""

    __module__ = "smtpd_compat.asyncore"  # asyncore.file_wrapper, where users meet it

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)

    def __del__(self) -> None:
        if self.fd >= 0:
            warnings.warn("unclosed file %r" % self, ResourceWarning, stacklevel=1, source=self)
        self.close()

    def recv(self, *args: Any) -> bytes:
        return os.read(self.fd, *args)

    def send(self, *args: Any) -> int:
        return os.write(self.fd, *args)

    def getsockopt(self, level: int, optname: int, buflen: Optional[int] = None) -> int:
        if level == socket.SOL_SOCKET and optname == socket.SO_ERROR and not buflen:
            return 0
        raise NotImplementedError("Only asyncore specific behaviour implemented.")

    read = recv
    write = send

    def close(self) -> None:
        if self.fd < 0:
            return
        fd = self.fd
        self.fd = -1
        os.close(fd)

    def fileno(self) -> int:
        return self.fd

    def setblocking(self, flag: bool) -> None:
        os.set_blocking(self.fd, flag)
