"""Test driver for the sans-IO SMTP core: feeds bytes, answers decisions, collects output."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from mailkeep.smtp import (
    NEED_DATA,
    BodyData,
    BodyEnd,
    ConnectionClosed,
    Event,
    ServerConnection,
    SessionConfig,
)

HOST = "mx.example.org"

Policy = Callable[[ServerConnection, Event], None]


def accept_all(conn: ServerConnection, event: Event) -> None:
    """Answer every decision positively with its default reply."""
    conn.accept()


class Session:
    """A ServerConnection plus everything it produced, driven like an adapter would."""

    def __init__(self, policy: Policy = accept_all, greet: bool = True, **config: object):
        self.conn = ServerConnection(SessionConfig(HOST, **config))  # type: ignore[arg-type]
        self.policy = policy
        self.events: list[Event] = []
        self.output = bytearray()
        if greet:
            self.conn.greet()
            self.pump()

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                break
            self.events.append(event)
            if event.decision:
                self.policy(self.conn, event)
            if isinstance(event, ConnectionClosed):
                break
        self.output += self.conn.data_to_send()

    def send(self, data: bytes, chunks: Iterable[int] | None = None) -> bytes:
        """Feed ``data`` (split at the given chunk sizes, else in one piece); return the
        bytes the server wrote in response."""
        before = len(self.output)
        if chunks is None:
            self.conn.receive_data(data)
            self.pump()
        else:
            pos = 0
            for size in chunks:
                self.conn.receive_data(data[pos:pos + size])
                self.pump()
                pos += size
            if pos < len(data):
                self.conn.receive_data(data[pos:])
                self.pump()
        return bytes(self.output[before:])

    def eof(self) -> None:
        self.conn.receive_eof()
        self.pump()

    def replies(self, data: bytes) -> list[str]:
        """Send and return the reply lines (without CRLF)."""
        return self.send(data).decode().split("\r\n")[:-1]

    def codes(self, data: bytes) -> list[str]:
        """Send and return the final lines' "code enhanced" prefixes, one per reply."""
        out = []
        for line in self.replies(data):
            if line[3:4] == " ":
                out.append(" ".join(line.split(" ")[:2]) if line[4:5].isdigit() else line[:3])
        return out

    def of_type(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def body(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, BodyData))

    @property
    def body_end(self) -> BodyEnd | None:
        ends = self.of_type(BodyEnd)
        return ends[-1] if ends else None


@pytest.fixture
def session() -> Callable[..., Session]:
    """Factory: ``session(**SessionConfig overrides)`` -> greeted Session."""
    return Session


def ehlo_session(**config: object) -> Session:
    s = Session(**config)
    s.send(b"EHLO client.example\r\n")
    return s


@pytest.fixture
def ready() -> Callable[..., Session]:
    """Factory: a Session that has already said EHLO (LHLO for lmtp=True)."""

    def make(policy: Policy = accept_all, **config: object) -> Session:
        s = Session(policy, **config)
        s.send(b"LHLO client.example\r\n" if config.get("lmtp") else b"EHLO client.example\r\n")
        return s

    return make


@pytest.fixture
def in_transaction(ready: Callable[..., Session]) -> Callable[..., Session]:
    """Factory: EHLO, MAIL FROM and one RCPT TO already accepted."""

    def make(policy: Policy = accept_all, mail_params: bytes = b"", **config: object) -> Session:
        s = ready(policy, **config)
        s.send(b"MAIL FROM:<sender@example.net>" + mail_params + b"\r\nRCPT TO:<rcpt@example.org>\r\n")
        return s

    return make
