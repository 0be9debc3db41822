"""A full disk: every message gets a temporary failure (the client keeps it and retries), a
clear log line, nothing half-written is kept, and mail flows again once there is room.

The data directory is a small tmpfs mounted by the test (tests run as root), filled up
with a file while the server runs."""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.conftest import RunningServer, make_server
from tests.support.procs import free_port

PASSWORD = "correct horse battery"
EXTRA = """
[relays.nowhere]
host = "[127.0.0.1]:{port}"
tls = "may"

[delivery]
relayhost = "nowhere"
mta_sts = false
dane = false
"""


def _fill(path: Path) -> None:
    """Write until the file system refuses: ENOSPC."""
    chunk = b"\0" * (256 * 1024)
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError:
                break
        with contextlib.suppress(OSError):
            while fh.write(b"\0" * 1024):
                pass


@pytest.fixture
def small_disk_server(tmp_path: Path) -> Iterator[RunningServer]:
    directory = tmp_path / "mk"
    data = directory / "data"
    data.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(data)],
                   check=True, capture_output=True)
    srv = make_server(directory, EXTRA.format(port=free_port()))
    try:
        srv.set_password("demo@example.test", PASSWORD)
        srv.start()
        yield srv
    finally:
        if srv.proc is not None:
            srv.stop()
        subprocess.run(["umount", "-l", str(data)], check=False, capture_output=True)


def _message(subject: str) -> bytes:
    return (f"From: <demo@example.test>\r\nTo: <x@elsewhere.test>\r\nSubject: {subject}\r\n"
            f"\r\n" + "full disk test line\r\n" * 200).encode()


def _submit(srv: RunningServer, recipient: str, subject: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=30) as client:
        client.starttls(context=ctx)
        client.login("demo@example.test", PASSWORD)
        client.docmd("MAIL", "FROM:<demo@example.test>")
        code, _ = client.docmd("RCPT", f"TO:<{recipient}>")
        assert code == 250
        return client.data(_message(subject))


def _receive(srv: RunningServer, subject: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, timeout=30) as client:
        client.ehlo("peer.test")
        client.docmd("MAIL", "FROM:<someone@elsewhere.test>")
        code, _ = client.docmd("RCPT", "TO:<demo@example.test>")
        assert code == 250
        return client.data(_message(subject))


def test_a_full_disk_defers_everything_and_recovers(small_disk_server: RunningServer) -> None:
    srv = small_disk_server
    filler = srv.data_dir / "filler"
    _fill(filler)

    code, text = _submit(srv, "x@elsewhere.test", "queued while full")
    assert code == 451 and text.startswith(b"4.3.0"), (code, text)
    code, text = _submit(srv, "me@other.test", "stored while full")
    assert code == 451, (code, text)
    code, text = _receive(srv, "received while full")
    assert code == 451, (code, text)

    log = srv.log_text()
    assert "msg=\"queue failed\"" in log and "No space left on device" in log
    assert "msg=\"store refused\"" in log and "error=io" in log
    assert srv.proc is not None and srv.proc.poll() is None, "the server keeps running"
    filler.unlink()
    # Nothing half-written was kept: no queue entry, no message in the mailboxes.
    assert "elsewhere.test" not in srv.cli("queue", "list").stdout
    assert srv.messages("me@other.test") == []
    assert srv.messages("demo@example.test") == []
    code, _ = _submit(srv, "x@elsewhere.test", "queued with room")
    assert code == 250
    code, _ = _receive(srv, "received with room")
    assert code == 250
    assert "x@elsewhere.test" in srv.cli("queue", "list").stdout
    stored = srv.messages("demo@example.test")
    assert len(stored) == 1 and b"Subject: received with room" in stored[0]
