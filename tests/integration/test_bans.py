"""Brute-force bans and connection rates through a real `mailkeep serve`: wrong IMAP
passwords ban the address from every listener, `mailkeep ban lift` lets it back in without a
restart, a restart keeps the ban, and port 25 refuses connections beyond the rate.

Loopback is the only address a test can connect from, so these servers set ``ban_allow``
to an empty list (the default allow-list is loopback), and thresholds are small.
"""

from __future__ import annotations

import imaplib
import socket
import ssl
import subprocess
import time

import pytest
from tests.integration.conftest import MAILKEEP, RunningServer, make_server

pytestmark = pytest.mark.timeout(120)

USER = "demo@example.test"
PASSWORD = "ban-test-password"
FAILURES = 4
BANNED = b"Your address is blocked for repeated authentication failures"
#: The server re-reads the ban file every second; give it a little more.
CLI_DELAY = 1.6


def ban_server(directory, *, auth: str = "", smtp: str = "") -> RunningServer:
    srv = make_server(directory)
    text = srv.config.read_text()
    text = text.replace("[auth]\n", "[auth]\nban_allow = []\n" + auth, 1)
    text = text.replace("[smtp]\n", "[smtp]\n" + smtp, 1)
    srv.config.write_text(text)
    return srv


def start(srv: RunningServer) -> None:
    """Start and wait for "started" in the log (the usual readiness probe connects to port
    25, which a banned or rate-limited loopback would spoil)."""
    before = srv.log_text().count("msg=started")
    srv.proc = subprocess.Popen([MAILKEEP, "serve", "--config", str(srv.config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while srv.log_text().count("msg=started") == before:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"server exited: {srv.proc.stdout.read()!r}")
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not start")


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def first_line(port: int) -> bytes:
    """What the server sends at connect (its first line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return _read_line(sock)


def refusal(port: int) -> bytes:
    """The line a refused client gets; the server must close the connection after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        line = _read_line(sock)
        assert sock.recv(4096) == b"", "the connection stayed open after the refusal"
        return line


def closed_at_once(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(4096) == b""


def tls_context(srv: RunningServer) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))
    ctx.check_hostname = False
    return ctx


def imap_login(srv: RunningServer, password: str) -> bool:
    conn = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps_port, ssl_context=tls_context(srv),
                             timeout=20)
    try:
        conn.login(USER, password)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def wait_until(predicate, limit: float = CLI_DELAY * 3) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_wrong_imap_passwords_ban_everywhere_until_lifted_and_across_restarts(tmp_path):
    srv = ban_server(tmp_path / "mk", auth=f'ban_after_failures = {FAILURES}\n'
                     'ban_window = "10m"\nban_duration = "1h"\n')
    start(srv)
    try:
        srv.set_password(USER, PASSWORD)
        assert first_line(srv.smtp_port).startswith(b"220 ")

        # Wrong passwords over one IMAP connection (as a guesser would).
        conn = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps_port, ssl_context=tls_context(srv),
                                 timeout=20)
        for _ in range(FAILURES):
            with pytest.raises(imaplib.IMAP4.error):
                conn.login(USER, "wrong")
        # The open connection may not guess on: even the right password is refused.
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(USER, PASSWORD)
        conn.shutdown()
        log = srv.log_text()
        banned = [line for line in log.splitlines() if 'msg="ip banned"' in line]
        assert len(banned) == 1 and "level=warning" in banned[0]
        assert "ip=127.0.0.1" in banned[0] and f"failures={FAILURES}" in banned[0]
        assert "until=" in banned[0]

        # Every listener refuses at connect, in its protocol, and closes.
        for port in (srv.smtp_port, srv.submission_port):
            assert refusal(port) == b"421 4.7.1 mx.example.test " + BANNED + b"\r\n"
        assert refusal(srv.imap_port) == b"* BYE [UNAVAILABLE] " + BANNED + b"\r\n"
        assert refusal(srv.pop3_port) == b"-ERR [SYS/TEMP] " + BANNED + b"\r\n"
        for port in (srv.imaps_port, srv.pop3s_port, srv.smtps_port, srv.submissions_port):
            assert closed_at_once(port)  # implicit TLS: no plaintext line, no handshake
        refused = [line for line in srv.log_text().splitlines()
                   if "msg=\"connection refused\"" in line and "reason=banned" in line]
        assert len(refused) == 1 and "level=info" in refused[0]  # once a minute per address

        listing = srv.cli("ban", "list")
        assert listing.returncode == 0
        assert "127.0.0.1" in listing.stdout and " auth " in listing.stdout

        # Lifted by the CLI: back in without a restart or a reload.
        lifted = srv.cli("ban", "lift", "127.0.0.1")
        assert lifted.returncode == 0 and lifted.stdout == "lifted 127.0.0.1\n"
        assert wait_until(lambda: first_line(srv.smtp_port).startswith(b"220 "))
        assert first_line(srv.pop3_port).startswith(b"+OK")
        assert imap_login(srv, PASSWORD)
        assert 'msg="ban lifted"' in srv.log_text()

        # Banned by the CLI: refused without a restart; and still after one.
        added = srv.cli("ban", "add", "127.0.0.1", "--for", "1h", "--reason", "test")
        assert added.returncode == 0, added.stderr
        assert wait_until(lambda: first_line(srv.smtp_port).startswith(b"421 4.7.1"))
        assert srv.stop() == 0
        start(srv)
        assert first_line(srv.smtp_port).startswith(b"421 4.7.1")
        assert first_line(srv.imap_port).startswith(b"* BYE [UNAVAILABLE]")
        assert srv.cli("ban", "lift", "127.0.0.1").returncode == 0
        assert wait_until(lambda: first_line(srv.smtp_port).startswith(b"220 "))
    finally:
        if srv.proc is not None:
            srv.stop()


def test_port_25_refuses_connections_beyond_the_rate(tmp_path):
    limit = 5
    srv = ban_server(tmp_path / "mk", smtp=f"max_connection_rate_per_ip = {limit}\n")
    start(srv)
    try:
        greetings = [first_line(srv.smtp_port) for _ in range(limit)]
        assert all(g.startswith(b"220 mx.example.test") for g in greetings)
        assert refusal(srv.smtp_port) == (b"421 4.7.0 mx.example.test Too many connections "
                                          b"from your address per minute, try again later\r\n")
        # The limit is per listener and per kind: the submission port and IMAP still answer.
        assert first_line(srv.submission_port).startswith(b"220 ")
        assert first_line(srv.imap_port).startswith(b"* OK")
        # Refusals took no tokens: the bucket refills at limit per minute (one per 12 s).
        time.sleep(60 / limit + 0.5)
        assert first_line(srv.smtp_port).startswith(b"220 ")
        assert first_line(srv.smtp_port).startswith(b"421 4.7.0")
    finally:
        srv.stop()
