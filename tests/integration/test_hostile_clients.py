"""Bad input over real sockets: nothing crashes the server, stalls others or loses mail."""

from __future__ import annotations

import random
import smtplib
import socket
import threading
import time

from .conftest import RunningServer

COMMANDS = [b"EHLO x", b"HELO y", b"MAIL FROM:<a@example.net>", b"RCPT TO:<demo@example.test>",
            b"DATA", b"BDAT 10", b"BDAT 5 LAST", b"RSET", b"NOOP", b"STARTTLS", b"AUTH PLAIN",
            b"VRFY x", b"QUIT", b"\x00\xff", b"MAIL FROM:<\xc3\xa9@x>", b"RCPT TO:<" + b"a" * 300,
            b".", b"\r", b"\n", b"GET / HTTP/1.1"]


def _garbage(seed: int) -> bytes:
    rng = random.Random(seed)
    parts = []
    for _ in range(rng.randint(1, 40)):
        if rng.random() < 0.6:
            parts.append(rng.choice(COMMANDS) + rng.choice([b"\r\n", b"\n", b"\r", b""]))
        else:
            parts.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))))
    return b"".join(parts)


def _hostile(port: int, seed: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                data = _garbage(seed)
                seed += 1
                for i in range(0, len(data), 37):
                    s.sendall(data[i:i + 37])
                s.settimeout(0.2)
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
        except OSError:
            time.sleep(0.01)


def test_hostile_clients_do_not_disturb_legitimate_mail(fresh_server: RunningServer):
    deadline = time.monotonic() + 6
    threads = [threading.Thread(target=_hostile, args=(fresh_server.smtp_port, n * 1000,
                                                         deadline)) for n in range(4)]
    for t in threads:
        t.start()
    delivered = []
    latencies = []
    try:
        for i in range(10):
            started = time.monotonic()
            with smtplib.SMTP("127.0.0.1", fresh_server.smtp_port, timeout=10) as s:
                assert s.sendmail("a@example.net", ["demo@example.test"],
                                  f"Subject: legit-{i}\r\n\r\nhello\r\n") == {}
            latencies.append(time.monotonic() - started)
            delivered.append(f"legit-{i}")
            time.sleep(0.2)
    finally:
        for t in threads:
            t.join(timeout=15)
    assert fresh_server.proc.poll() is None, "the server died"
    stored = b"".join(fresh_server.messages("demo@example.test"))
    for tag in delivered:
        assert f"Subject: {tag}\r\n".encode() in stored
    # Hostile sessions sleep on their own errors; they never hold up anyone else.
    assert max(latencies) < 3.0, latencies
    assert "Traceback" not in fresh_server.log_text()
    assert "session failed" not in fresh_server.log_text()
