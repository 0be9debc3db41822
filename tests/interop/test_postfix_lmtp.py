"""A real Postfix delivering into Mailkeep over LMTP, as seeds 000/001/004 deliver into Dovecot."""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
import time
from pathlib import Path

import pytest
from tests.integration.conftest import make_server
from tests.support.postfix import ThrowawayPostfix

pytestmark = pytest.mark.interop


@pytest.fixture
def public_server():
    # Postfix's lmtp(8) runs as the "postfix" user: the socket's directory must be reachable.
    directory = Path(tempfile.mkdtemp(prefix="mk-lmtp-", dir="/tmp"))
    directory.chmod(0o755)
    srv = make_server(directory / "mk")
    directory.joinpath("mk").chmod(0o755)
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(directory, ignore_errors=True)


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_postfix_delivers_over_lmtp(public_server):
    target = f"unix:{public_server.lmtp_socket}"
    with ThrowawayPostfix.relay_lmtp("example.test", target) as postfix:
        with smtplib.SMTP("127.0.0.1", postfix.port) as s:
            for i in range(5):
                s.sendmail("sender@example.net", ["demo@example.test", "team@example.test"],
                           f"Subject: through-postfix-{i}\r\n\r\nhello {i}\r\n")

        def delivered() -> bool:
            subjects = [m for m in public_server.messages("demo@example.test")
                        if b"Subject: through-postfix-" in m]
            return len(subjects) == 5

        assert _wait_for(delivered), postfix.log_text()[-3000:]
        postfix.wait_for_queue_empty(timeout=30)
        log = postfix.log_text()
    # Both recipients resolved to demo (directly and via the alias): one copy each account.
    other = [m for m in public_server.messages("me@other.test") if b"through-postfix-" in m]
    assert len(other) == 5
    msg = [m for m in public_server.messages("demo@example.test")
           if b"Subject: through-postfix-0" in m][0]
    assert b"with LMTP id" in msg
    assert b"Received: from postfix.throwaway.test" in msg or b"Received: from " in msg
    assert "status=sent" in log


def test_postfix_lmtp_unknown_user_bounces_not_lost(public_server):
    target = f"unix:{public_server.lmtp_socket}"
    with ThrowawayPostfix.relay_lmtp("other.test", target) as postfix:
        with smtplib.SMTP("127.0.0.1", postfix.port) as s:
            s.sendmail("sender@example.net", ["ghost@other.test"], "Subject: ghost\r\n\r\nx\r\n")
        assert _wait_for(lambda: "ghost@other.test" in postfix.log_text()
                         and "status=" in postfix.log_text())
        log = postfix.log_text()
    # Mailkeep's 550 5.1.1 reaches Postfix, which bounces instead of losing the message.
    assert "status=bounced" in log and "5.1.1" in log, log[-3000:]
    assert os.path.exists(public_server.lmtp_socket)
