"""Test driver for the sans-IO POP3 core: feeds bytes, answers decisions like an adapter
would (with an in-memory maildrop and password), collects output and events."""

from __future__ import annotations

import base64
from collections.abc import Iterable

from mailkeep.pop3 import (
    NEED_DATA,
    Auth,
    AuthResponse,
    ConnectionClosed,
    Event,
    ListedMessage,
    Pass,
    Quit,
    Retr,
    ServerConnection,
    SessionConfig,
    Stls,
    Top,
)

HOST = "pop.example.org"
USER = "me@example.org"
PASSWORD = b"secret"

#: (uid, content) of the test maildrop; contents are CRLF like the store's.
CONTENTS: dict[int, bytes] = {
    11: b"Subject: one\r\n\r\nfirst body\r\n",
    12: b"Subject: two\r\nX-A: b\r\n\r\n.leading dot\r\nline 2\r\n..two dots\r\nlast\r\n",
    15: b"Subject: three\r\n\r\nno final newline",
}


def maildrop(contents: dict[int, bytes] = CONTENTS) -> list[ListedMessage]:
    return [ListedMessage(uid, len(data), f"77.{uid}") for uid, data in contents.items()]


class Session:
    """A ServerConnection plus everything it produced.

    Decisions: PASS succeeds for USER/PASSWORD; AUTH PLAIN with the same credentials
    succeeds; AUTH X-CHALLENGE sends one challenge "ping" and succeeds on "pong"; RETR/TOP
    serve ``contents`` in ``chunk``-sized pieces; STLS is accepted and the handshake
    "succeeds" at once with ``tls_config``; QUIT is accepted (or refused with
    ``quit_fails``).
    """

    def __init__(self, *, contents: dict[int, bytes] = CONTENTS, chunk: int = 7,
                 greet: bool = True, quit_fails: bool = False,
                 tls_config: SessionConfig | None = None, **config: object):
        config.setdefault("sasl_mechanisms", ("SCRAM-SHA-256", "PLAIN", "X-CHALLENGE"))
        self.conn = ServerConnection(SessionConfig(HOST, **config))  # type: ignore[arg-type]
        self.contents = contents
        self.chunk = chunk
        self.quit_fails = quit_fails
        self.tls_config = tls_config
        self.events: list[Event] = []
        self.output = bytearray()
        self.stop_tls_handshake = False
        if greet:
            self.conn.greet()
            self.pump()

    def send(self, data: bytes | str) -> bytes:
        """Feed ``data``, handle every event, return what the server wrote meanwhile."""
        if isinstance(data, str):
            data = data.encode()
        start = len(self.output)
        self.conn.receive_data(data)
        self.pump()
        return bytes(self.output[start:])

    def eof(self) -> bytes:
        start = len(self.output)
        self.conn.receive_eof()
        self.pump()
        return bytes(self.output[start:])

    def pump(self) -> None:
        conn = self.conn
        while not (self.events and isinstance(self.events[-1], ConnectionClosed)):
            event = conn.next_event()
            if event is NEED_DATA:
                break
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            self.decide(event)
        self.output += conn.data_to_send()

    def decide(self, event: Event) -> None:
        conn = self.conn
        if isinstance(event, Pass):
            if event.username == USER and event.password == PASSWORD:
                conn.login(maildrop(self.contents))
            else:
                conn.err("Authentication failed", "AUTH", count_error=True)
        elif isinstance(event, Auth):
            if event.mechanism == "PLAIN" and event.initial is not None:
                self._plain(event.initial)
            elif event.mechanism == "X-CHALLENGE":
                conn.auth_challenge(b"ping")
            else:
                conn.auth_challenge(b"")
        elif isinstance(event, AuthResponse):
            if event.cancelled:
                conn.err("Authentication cancelled", "AUTH")
            elif event.data == b"pong":
                conn.login(maildrop(self.contents))
            else:
                self._plain(event.data)
        elif isinstance(event, Retr | Top):
            data = self.contents[event.message.uid]
            conn.begin_message()
            for i in range(0, len(data), self.chunk):
                if not conn.message_data(data[i:i + self.chunk]):
                    break
            conn.end_message()
        elif isinstance(event, Stls):
            conn.ok()
            self.output += conn.data_to_send()
            if not self.stop_tls_handshake:
                conn.tls_started(self.tls_config)
        elif isinstance(event, Quit):
            if self.quit_fails:
                conn.err("Some deleted messages not removed", "SYS/TEMP")
            else:
                conn.ok()

    def _plain(self, data: bytes) -> None:
        if data == b"\0" + USER.encode() + b"\0" + PASSWORD:
            self.conn.login(maildrop(self.contents))
        else:
            self.conn.err("Authentication failed", "AUTH", count_error=True)

    def login(self) -> bytes:
        return self.send(f"USER {USER}\r\nPASS {PASSWORD.decode()}\r\n")

    def names(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")[:-1]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secured(**config: object) -> Session:
    """A session on a connection where plaintext logins are allowed (TLS or policy)."""
    return Session(plaintext_allowed=True, tls_active=True, **config)


def logged_in(**config: object) -> Session:
    s = secured(**config)
    out = s.login()
    assert out.endswith(b"+OK Logged in\r\n"), out
    return s


def feed_all(session: Session, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        session.send(chunk)
