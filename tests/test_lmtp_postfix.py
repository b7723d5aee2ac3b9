"""LMTP against Postfix's own lmtp(8) delivery agent: a private Postfix
instance (its own configuration, queue and data directories, no network
listener) delivers through ``python -m smtpd_compat --lmtp --unix``.

Opt-in (``SMTPD_COMPAT_POSTFIX_TEST=1``): it needs root, the ``postfix``
user and Postfix installed, and starts Postfix's master daemon for the
length of the test (stopped in every case).  docs/lmtp.md describes the
same set-up for a real Postfix.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, List

import pytest

from conftest import TIMEOUT

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSTFIX = "/usr/sbin/postfix"


def _postfix_user() -> Any:
    try:
        return pwd.getpwnam("postfix")
    except KeyError:
        return None


pytestmark = pytest.mark.skipif(
    os.environ.get("SMTPD_COMPAT_POSTFIX_TEST") != "1" or not hasattr(os, "geteuid") or os.geteuid() != 0
    or not os.path.exists(POSTFIX) or _postfix_user() is None,
    reason="opt-in: SMTPD_COMPAT_POSTFIX_TEST=1, as root, with Postfix installed",
)

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = {root}/etc
shlib_directory = no
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.invalid
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
virtual_mailbox_domains = lmtp.invalid
virtual_mailbox_maps = static:ok
virtual_transport = lmtp:unix:{root}/sock/lda.sock
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtputf8_enable = no
bounce_queue_lifetime = 0
default_transport = error:this test delivers to lmtp.invalid only
"""

# The services delivery needs; nothing listens on the network, nothing is chrooted.
MASTER_CF = """\
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
lmtp unix - - n - - lmtp
smtp unix - - n - - smtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
showq unix n - n - - showq
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
verify unix - - n - 1 verify
postlog unix-dgram n - n - 1 postlogd
"""

VERDICTS = """\
from smtpd_compat import MailboxServer


class Verdicts(MailboxServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        super().process_message(peer, mailfrom, rcpttos, data, **kwargs)
        return [None if r.startswith("alice") else "550 5.1.1 No such user" if r.startswith("bob")
                else "452 4.2.2 Mailbox full" for r in rcpttos]
"""


@pytest.fixture
def instance() -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="pfx")  # not under pytest's 0700 directory: Postfix must reach it
    os.chmod(root, 0o755)
    user = _postfix_user()
    for name in ("etc", "queue", "data", "sock", "mail"):
        os.mkdir(os.path.join(root, name))
    for name in ("data", "sock"):
        os.chown(os.path.join(root, name), user.pw_uid, -1)
    for name in ("dynamicmaps.cf", "postfix-files"):
        if os.path.exists("/etc/postfix/" + name):
            shutil.copy("/etc/postfix/" + name, os.path.join(root, "etc", name))
    with open(os.path.join(root, "etc", "main.cf"), "w") as f:
        f.write(MAIN_CF.format(root=root))
    with open(os.path.join(root, "etc", "master.cf"), "w") as f:
        f.write(MASTER_CF)
    with open(os.path.join(root, "lda_verdicts.py"), "w") as f:
        f.write(VERDICTS)
    started = subprocess.run([POSTFIX, "-c", os.path.join(root, "etc"), "start"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    try:
        assert started.returncode == 0, "postfix did not start: %s %s" % (started.stdout, _log(root))
        yield root
    finally:
        subprocess.run([POSTFIX, "-c", os.path.join(root, "etc"), "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _log(root: str) -> str:
    try:
        with open(os.path.join(root, "maillog")) as f:
            return f.read()
    except OSError:
        return ""


def _wait_for(root: str, words: List[str]) -> str:
    deadline = time.monotonic() + TIMEOUT * 3
    while time.monotonic() < deadline:
        text = _log(root)
        if all(word in text for word in words):
            return text
        time.sleep(0.1)  # polling Postfix's log file: it has nothing to wait on
    raise AssertionError("Postfix's log lacks %r:\n%s" % (words, _log(root)))


def test_postfix_lmtp_delivers_with_a_reply_per_recipient(instance: str) -> None:
    root = instance
    sock = os.path.join(root, "sock", "lda.sock")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, root]))
    server = subprocess.Popen([sys.executable, "-m", "smtpd_compat", "-n", "-c", "lda_verdicts.Verdicts", "--lmtp",
                               "--maildir", os.path.join(root, "mail"), "--unix", sock, "--unix-mode", "660"],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(sock):
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        os.chown(sock, -1, _postfix_user().pw_gid)  # mode 660: the postfix group may connect
        message = b"Subject: through Postfix\n\nhello\n"
        sent = subprocess.run(["/usr/sbin/sendmail", "-C", os.path.join(root, "etc"), "-f", "sender@example.invalid",
                               "alice@lmtp.invalid", "bob@lmtp.invalid", "carol@lmtp.invalid"],
                              input=message, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        assert sent.returncode == 0, sent.stdout
        log = _wait_for(root, ["to=<alice@lmtp.invalid>", "to=<bob@lmtp.invalid>", "to=<carol@lmtp.invalid>"])
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=TIMEOUT)
    lines = {rcpt: next(line for line in log.splitlines() if "postfix/lmtp" in line and "to=<%s@" % rcpt in line)
             for rcpt in ("alice", "bob", "carol")}
    assert "status=sent (250 2.0.0 OK)" in lines["alice"]
    assert "status=bounced" in lines["bob"] and "550 5.1.1 No such user" in lines["bob"]
    assert "status=deferred" in lines["carol"] and "452 4.2.2 Mailbox full" in lines["carol"]
    stored = os.listdir(os.path.join(root, "mail", "new"))
    assert len(stored) == 1  # MailboxServer's one copy (the bounce to the sender goes nowhere)
    assert not os.path.exists(sock), err
