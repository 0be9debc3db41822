"""Property tests of the POP3 core: random command mixtures and random bytes, in random
chunkings; and the streaming dot-stuffer against a line-by-line reference.

Properties: nothing raises; what the server writes and the events it reports do not
depend on how the input was split into reads; RETR content unstuffs to the message; TOP
content is exactly the header, the empty line and n body lines (RFC 1939 §7).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.pop3 import MessageStream

from .driver import PASSWORD, USER, Session, b64

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

COMMANDS = [
    "CAPA", "USER " + USER, "PASS " + PASSWORD.decode(), "PASS wrong", "USER", "PASS",
    "STAT", "LIST", "LIST 1", "LIST 2", "LIST 9", "LIST x", "UIDL", "UIDL 3", "UIDL 0",
    "RETR 1", "RETR 2", "RETR 3", "RETR 4", "TOP 2 0", "TOP 2 1", "TOP 3 5", "TOP 1",
    "DELE 1", "DELE 2", "DELE 3", "RSET", "NOOP", "QUIT", "STLS", "APOP a b",
    "AUTH", "AUTH PLAIN", "AUTH PLAIN =", "AUTH X-CHALLENGE", "AUTH SCRAM-SHA-256 biws",
    "AUTH PLAIN " + b64(b"\0" + USER.encode() + b"\0" + PASSWORD), b64(b"pong"), "*",
    "!!!", "", "GETX", "list   2", "x" * 600,
]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def run(data: bytes, cuts: list[int], chunk: int, eof: bool = True) -> Session:
    s = Session(plaintext_allowed=True, tls_active=True, max_errors=1000, chunk=chunk)
    for piece in split(data, cuts):
        s.send(piece)
    if eof:
        s.eof()
    return s


@SETTINGS
@given(st.lists(st.sampled_from(COMMANDS), max_size=40),
       st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=1, max_size=3),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
       st.integers(min_value=1, max_value=64))
def test_command_mixtures_do_not_depend_on_chunking(commands, endings, cuts, chunk):
    data = b"".join(c.encode() + endings[i % len(endings)] for i, c in enumerate(commands))
    whole = run(data, [], 1 << 20)
    pieces = run(data, cuts, chunk)
    assert bytes(pieces.output) == bytes(whole.output)
    assert pieces.events == whole.events
    assert whole.conn.closed


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=5000),
                                          max_size=12))
def test_random_bytes_never_raise_and_do_not_depend_on_chunking(data, cuts):
    whole = run(b"USER " + USER.encode() + b"\r\nPASS secret\r\n" + data, [], 5)
    pieces = run(b"USER " + USER.encode() + b"\r\nPASS secret\r\n" + data, cuts, 5)
    assert bytes(pieces.output) == bytes(whole.output)
    for line in bytes(whole.output).split(b"\r\n")[:3]:
        assert line.startswith((b"+OK", b"-ERR"))


@SETTINGS
@given(st.lists(st.sampled_from(COMMANDS), max_size=30),
       st.lists(st.integers(min_value=0, max_value=3000), max_size=8))
def test_stls_anywhere_never_raises(commands, cuts):
    data = b"".join(c.encode() + b"\r\n" for c in commands)
    s = Session(stls_available=True, max_errors=1000)
    for piece in split(data, cuts):
        s.send(piece)
    s.eof()
    assert s.conn.closed
    # Nothing sent before the handshake may be acted upon after it.
    if b"+OK Begin TLS negotiation" in s.output and len(split(data, cuts)) == 1:
        after = bytes(s.output).split(b"+OK Begin TLS negotiation\r\n", 1)[1]
        assert after == b""


# -- the message stream ------------------------------------------------------------------------

MESSAGE_BYTES = st.lists(st.sampled_from([b".", b"\r\n", b"\n", b"\r", b"a", b"..", b" "]),
                         max_size=80).map(b"".join)


def reference_lines(message: bytes) -> list[bytes]:
    return message.splitlines(keepends=True) if message else []


def _lf_lines(message: bytes) -> list[bytes]:
    """Lines as the stream sees them: ended by LF only (a lone CR is content)."""
    out, start = [], 0
    while True:
        end = message.find(b"\n", start)
        if end < 0:
            if start < len(message):
                out.append(message[start:])
            return out
        out.append(message[start:end + 1])
        start = end + 1


def reference(message: bytes, body_lines: int | None) -> bytes:
    lines = _lf_lines(message)
    if body_lines is not None:
        for i, line in enumerate(lines):
            if line in (b"\r\n", b"\n"):
                lines = lines[:i + 1 + body_lines]
                break
    content = b"".join(lines)
    stuffed = b"".join(b"." + line if line.startswith(b".") else line for line in lines)
    if not content or content.endswith(b"\r\n"):
        end = b""
    elif content.endswith(b"\r"):
        end = b"\n"
    else:
        end = b"\r\n"
    return stuffed + end + b".\r\n"


def stream(message: bytes, cuts: list[int], body_lines: int | None) -> bytes:
    s = MessageStream(body_lines)
    out = bytearray()
    for piece in split(message, cuts):
        out += s.feed(piece)
        if s.done:
            break
    return bytes(out) + s.finish()


@settings(max_examples=200, deadline=None)
@given(MESSAGE_BYTES, st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_retr_stream_matches_reference_in_any_chunking(message, cuts):
    out = stream(message, cuts, None)
    assert out == reference(message, None)
    # Unstuffing gives the message back (RFC 1939 §3).
    body = out[: -3]
    unstuffed = b"".join(line[1:] if line.startswith(b".") else line
                         for line in _lf_lines(body))
    assert unstuffed.startswith(message)


@settings(max_examples=200, deadline=None)
@given(MESSAGE_BYTES, st.lists(st.integers(min_value=0, max_value=200), max_size=10),
       st.integers(min_value=0, max_value=6))
def test_top_stream_matches_reference_in_any_chunking(message, cuts, body_lines):
    assert stream(message, cuts, body_lines) == reference(message, body_lines)
