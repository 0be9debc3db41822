"""Virus scanning with clamd: a real Debian clamd, the EICAR test file, and clamd failing.

The clamd under test is started by tests.support.clamd from a temporary directory with a
one-signature database (EICAR). Only the failures a real clamd cannot be made to produce
on demand (accepting and never answering, answering nonsense) use a tiny local server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.clamd import (
    DEFAULT_STREAM_MAX_LENGTH,
    EICAR,
    EICAR_DETECTED_AS,
    RunningClamd,
)
from tests.support.procs import free_port

from mailkeep.policy.clamd import (
    CLEAN_HEADER,
    DEFAULT_MAX_SCAN_SIZE,
    MAX_REPLY_LENGTH,
    SKIPPED_HEADER,
    STREAM_CHUNK_SIZE,
    TEMPFAIL_REPLY,
    UNAVAILABLE_HEADER,
    ClamdAddress,
    ClamdClient,
    ClamdResult,
    clamd_verdict,
    instream_chunk_header,
    parse_clamd_address,
    parse_instream_reply,
)
from mailkeep.smtp.reply import Reply

#: A failure to connect must be reported this fast (seconds), not after the scan timeout.
QUICK = 1.0


@pytest.fixture(scope="module")
def clamd() -> Iterator[RunningClamd]:
    with RunningClamd() as running:
        yield running


@pytest.fixture(params=["unix", "tcp"])
def client(request: pytest.FixtureRequest, clamd: RunningClamd) -> ClamdClient:
    address = clamd.socket_path if request.param == "unix" else clamd.tcp_address
    return ClamdClient(address, timeout=10.0)


def _message(body: bytes, *, headers: bytes = b"") -> bytes:
    return (b"From: sender@example.org\r\nTo: user@example.com\r\n"
            b"Subject: test\r\nMessage-ID: <1@example.org>\r\n" + headers + b"\r\n" + body)


def _eicar_attachment() -> bytes:
    """A multipart message carrying EICAR as a base64 attachment (RFC 2045 §6.8)."""
    encoded = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
    return _message(
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=\"eicar.com\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b1--\r\n",
        headers=b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n")


def _closed_port_address() -> str:
    return f"127.0.0.1:{free_port()}"


# --- a real clamd ---------------------------------------------------------------------------

async def test_eicar_in_the_body_is_infected(client: ClamdClient) -> None:
    result = await client.scan(_message(b"Here it is:\r\n" + EICAR + b"\r\n"))
    assert result.status == "infected"
    assert result.signature == EICAR_DETECTED_AS
    assert result.detail == f"stream: {EICAR_DETECTED_AS} FOUND"


async def test_eicar_as_base64_attachment_is_infected(client: ClamdClient) -> None:
    message = _eicar_attachment()
    # Only clamd's MIME decoding can find it: the raw bytes do not contain the test file.
    assert EICAR not in message
    result = await client.scan(message)
    assert (result.status, result.signature) == ("infected", EICAR_DETECTED_AS)


async def test_infected_message_is_refused_with_the_virus_name(client: ClamdClient) -> None:
    result = await client.scan(_eicar_attachment())
    verdict = clamd_verdict(result, "tempfail")
    assert verdict.header is None
    assert verdict.reply is not None
    assert verdict.reply.to_bytes() == (
        f"550 5.7.1 Message refused: virus {EICAR_DETECTED_AS} found\r\n".encode())


async def test_clean_message_is_clean(client: ClamdClient) -> None:
    result = await client.scan(_message(b"Nothing to see here.\r\n"))
    assert result == ClamdResult("clean", None, "stream: OK")
    assert clamd_verdict(result, "tempfail").header == b"X-Virus-Scanned: clamd; clean\r\n"


async def test_empty_message_is_clean(client: ClamdClient) -> None:
    assert (await client.scan(b"")).status == "clean"


async def test_spool_file_is_streamed_in_chunks(clamd: RunningClamd, tmp_path: Path) -> None:
    line = b"A clean line of text that repeats to make a large message body.\r\n"
    size = 3 * 1024 * 1024
    assert STREAM_CHUNK_SIZE * 8 < size < DEFAULT_STREAM_MAX_LENGTH
    spool = tmp_path / "clean.eml"
    spool.write_bytes(_message(line * (size // len(line))))
    client = ClamdClient(clamd.socket_path, timeout=20.0)
    tracemalloc.start()
    try:
        result = await client.scan(spool)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "clean", result
    # The 3 MiB file never was in memory whole: a few chunks at most.
    assert peak < 8 * STREAM_CHUNK_SIZE, f"peak {peak} bytes"


async def test_virus_at_the_end_of_a_large_spool_file_is_found(
        client: ClamdClient, tmp_path: Path) -> None:
    # Far past the first chunk, and split across two chunks: every chunk reaches clamd.
    filler = b"x" * 76 + b"\r\n"
    body = filler * (20 * STREAM_CHUNK_SIZE // len(filler))
    header = _message(b"")
    padding = STREAM_CHUNK_SIZE - (len(header) + len(body)) % STREAM_CHUNK_SIZE - 30
    spool = tmp_path / "infected.eml"
    spool.write_bytes(header + body + b"y" * padding + EICAR + b"\r\n")
    offset = len(header) + len(body) + padding
    assert offset // STREAM_CHUNK_SIZE != (offset + len(EICAR)) // STREAM_CHUNK_SIZE
    result = await client.scan(spool)
    assert (result.status, result.signature) == ("infected", EICAR_DETECTED_AS)


async def test_concurrent_scans_each_get_their_own_answer(clamd: RunningClamd) -> None:
    client = ClamdClient(clamd.tcp_address, timeout=20.0)
    messages = [_eicar_attachment() if i % 3 == 0 else _message(b"hello %d\r\n" % i)
                for i in range(12)]
    results = await asyncio.gather(*(client.scan(m) for m in messages))
    assert [r.status for r in results] == [
        "infected" if i % 3 == 0 else "clean" for i in range(12)]


async def test_stream_longer_than_clamds_limit_is_an_error(client: ClamdClient) -> None:
    """clamd refuses a stream over its StreamMaxLength and closes, maybe mid-send."""
    client.max_scan_size = 4 * DEFAULT_STREAM_MAX_LENGTH
    message = _message(b"z" * (DEFAULT_STREAM_MAX_LENGTH + STREAM_CHUNK_SIZE))
    for _ in range(3):
        result = await client.scan(message)
        assert result.status == "error"
        # clamd's own reply when it arrives before the connection is gone, else our guess.
        assert ("INSTREAM size limit exceeded" in result.detail
                or "StreamMaxLength" in result.detail), result.detail


async def test_ping_real_clamd(client: ClamdClient) -> None:
    assert await client.ping() is True


# --- limits -----------------------------------------------------------------------------------

async def test_message_above_the_scan_limit_is_skipped_and_not_sent(tmp_path: Path) -> None:
    # Nothing listens there: had the client connected, the result would be an error.
    client = ClamdClient(_closed_port_address(), max_scan_size=1000)
    result = await client.scan(b"x" * 1001)
    assert result.status == "skipped"
    assert result.signature is None
    assert "1001 bytes" in result.detail and "1000 bytes" in result.detail
    spool = tmp_path / "big.eml"
    spool.write_bytes(b"y" * 5000)
    assert (await client.scan(spool)).status == "skipped"
    assert (await client.scan(b"x" * 1000)).status == "error"  # at the limit: sent


async def test_default_scan_limit_is_25_mib() -> None:
    assert DEFAULT_MAX_SCAN_SIZE == 25 * 1024 * 1024
    assert ClamdClient("/run/clamav/clamd.ctl").max_scan_size == DEFAULT_MAX_SCAN_SIZE


async def test_missing_spool_file_is_an_error(tmp_path: Path) -> None:
    client = ClamdClient(_closed_port_address())
    result = await client.scan(tmp_path / "gone.eml")
    assert result.status == "error"
    assert result.detail == "cannot read the message file: no such file or directory"


# --- clamd not there --------------------------------------------------------------------------

async def test_missing_socket_is_an_error_at_once(tmp_path: Path) -> None:
    client = ClamdClient(str(tmp_path / "clamd.ctl"), timeout=30.0)
    started = time.monotonic()
    result = await client.scan(_message(b"hi\r\n"))
    assert time.monotonic() - started < QUICK
    assert result == ClamdResult("error", None, "no such file or directory")
    assert await client.ping() is False


async def test_closed_tcp_port_is_an_error_at_once() -> None:
    client = ClamdClient(_closed_port_address(), timeout=30.0)
    started = time.monotonic()
    result = await client.scan(_message(b"hi\r\n"))
    assert time.monotonic() - started < QUICK
    assert result == ClamdResult("error", None, "connection refused")
    assert await client.ping() is False


# --- a peer that is not a working clamd -------------------------------------------------------

@contextlib.asynccontextmanager
async def _fake_clamd(
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A local TCP server running ``handle`` per connection; yields its address."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def _read_stream(reader: asyncio.StreamReader) -> None:
    """Read a zINSTREAM command and its chunks up to the zero-length one."""
    assert await reader.readexactly(len(b"zINSTREAM\0")) == b"zINSTREAM\0"
    while length := int.from_bytes(await reader.readexactly(4), "big"):
        await reader.readexactly(length)


async def test_clamd_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100_000)
        await asyncio.sleep(60)

    async with _fake_clamd(silent) as address:
        client = ClamdClient(address, timeout=0.5)
        started = time.monotonic()
        result = await client.scan(_message(b"hi\r\n"))
        elapsed = time.monotonic() - started
        assert result == ClamdResult("error", None, "no answer from clamd within 0.5s")
        assert 0.5 <= elapsed < 0.5 + QUICK
        started = time.monotonic()
        assert await client.ping() is False
        assert 0.5 <= time.monotonic() - started < 0.5 + QUICK


async def test_reply_longer_than_the_limit_is_an_error() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_stream(reader)
        writer.write(b"stream: " + b"A" * MAX_REPLY_LENGTH + b" FOUND\0")
        await writer.drain()

    async with _fake_clamd(chatty) as address:
        result = await ClamdClient(address, timeout=5.0).scan(_message(b"hi\r\n"))
    assert result == ClamdResult("error", None,
                                 f"clamd reply longer than {MAX_REPLY_LENGTH} bytes")


async def test_endless_reply_without_nul_is_an_error() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(b"B" * 4096)
            await writer.drain()

    async with _fake_clamd(flood) as address:
        result = await ClamdClient(address, timeout=5.0).scan(_message(b"hi\r\n"))
    assert result.status == "error"
    assert result.detail == f"clamd reply longer than {MAX_REPLY_LENGTH} bytes"


async def test_nonsense_reply_is_an_error() -> None:
    async def nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = b""
        while not (received.endswith(b"\0\0\0\0") or received == b"zPING\0"):
            received += await reader.read(65536)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\0")

    async with _fake_clamd(nonsense) as address:
        client = ClamdClient(address, timeout=5.0)
        result = await client.scan(_message(b"hi\r\n"))
        assert result == ClamdResult(
            "error", None, "unparseable reply from clamd: 'HTTP/1.1 400 Bad Request'")
        started = time.monotonic()
        assert await client.ping() is False
        assert time.monotonic() - started < QUICK


async def test_connection_closed_without_reply_is_an_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_stream(reader)

    async with _fake_clamd(hang_up) as address:
        result = await ClamdClient(address, timeout=5.0).scan(_message(b"hi\r\n"))
    assert result == ClamdResult("error", None, "clamd closed the connection without a reply")


async def test_wire_format_is_clamds_instream() -> None:
    """The bytes sent are exactly zINSTREAM, length-prefixed chunks and a zero chunk."""
    received = bytearray()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not received.endswith(b"\0\0\0\0"):
            received.extend(await reader.read(65536))
        writer.write(b"stream: OK\0")

    message = bytes(range(256)) * (STREAM_CHUNK_SIZE // 256 + 1)
    async with _fake_clamd(record) as address:
        result = await ClamdClient(address, timeout=5.0).scan(message)
    assert result.status == "clean"
    first, second = message[:STREAM_CHUNK_SIZE], message[STREAM_CHUNK_SIZE:]
    assert bytes(received) == (b"zINSTREAM\0" + instream_chunk_header(len(first)) + first
                               + instream_chunk_header(len(second)) + second + b"\0\0\0\0")
    assert instream_chunk_header(256) == b"\x00\x00\x01\x00"


# --- pure parts -------------------------------------------------------------------------------

@pytest.mark.parametrize(("reply", "expected"), [
    (b"stream: OK", ClamdResult("clean", None, "stream: OK")),
    (b"stream: OK\n", ClamdResult("clean", None, "stream: OK")),
    (b"stream: Win.Test.EICAR_HDB-1 FOUND",
     ClamdResult("infected", "Win.Test.EICAR_HDB-1", "stream: Win.Test.EICAR_HDB-1 FOUND")),
    # ExtendedDetectionInfo: the hash and size of a hash signature are not part of the name.
    (b"stream: Eicar-Signature(44d88612fea8a8f36de82e1278abb02f:68) FOUND",
     ClamdResult("infected", "Eicar-Signature",
                 "stream: Eicar-Signature(44d88612fea8a8f36de82e1278abb02f:68) FOUND")),
    (b"INSTREAM size limit exceeded. ERROR",
     ClamdResult("error", None, "clamd: INSTREAM size limit exceeded. ERROR")),
    (b"stream: Can't allocate memory ERROR",
     ClamdResult("error", None, "clamd: stream: Can't allocate memory ERROR")),
    (b"", ClamdResult("error", None, "unparseable reply from clamd: ''")),
    (b"PONG", ClamdResult("error", None, "unparseable reply from clamd: 'PONG'")),
    (b"stream:  FOUND", ClamdResult("error", None, "unparseable reply from clamd: 'stream:  FOUND'")),
    (b"1: stream: OK", ClamdResult("error", None, "unparseable reply from clamd: '1: stream: OK'")),
])
def test_parse_instream_reply(reply: bytes, expected: ClamdResult) -> None:
    assert parse_instream_reply(reply) == expected


def test_signature_cannot_inject_a_reply_line() -> None:
    result = parse_instream_reply(b"stream: Evil\r\n250 2.0.0 OK FOUND")
    assert result.status == "error"
    assert "\r" not in result.detail and "\n" not in result.detail


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=MAX_REPLY_LENGTH))
def test_parse_instream_reply_never_raises(reply: bytes) -> None:
    result = parse_instream_reply(reply)
    assert result.status in ("clean", "infected", "error")
    if result.status == "infected":
        assert result.signature and result.signature.isprintable()
        # Whatever clamd says, the refusal is one well-formed reply line.
        wire = clamd_verdict(result, "accept").reply
        assert wire is not None and wire.to_bytes().count(b"\r\n") == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("/run/clamav/clamd.ctl", ClamdAddress(path="/run/clamav/clamd.ctl")),
    (" /var/run/clamav/clamd.ctl ", ClamdAddress(path="/var/run/clamav/clamd.ctl")),
    ("127.0.0.1:3310", ClamdAddress(host="127.0.0.1", port=3310)),
    ("clamav.internal:3310", ClamdAddress(host="clamav.internal", port=3310)),
    ("[::1]:3310", ClamdAddress(host="::1", port=3310)),
    ("[2001:DB8::0001]:1", ClamdAddress(host="2001:db8::1", port=1)),
])
def test_parse_clamd_address(text: str, expected: ClamdAddress) -> None:
    assert parse_clamd_address(text) == expected
    assert parse_clamd_address(str(expected)) == expected


@pytest.mark.parametrize("text", [
    "", "clamd.ctl", "localhost", "localhost:", ":3310", "localhost:0", "localhost:65536",
    "::1:3310", "[::1]", "[localhost]:3310", "[::1:3310", "host name:3310",
    "127.0.0.1:3310:1", "/" + "a" * 107, "/run/\0clamd",
])
def test_parse_clamd_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_clamd_address(text)


def test_client_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        ClamdClient("clamd")
    with pytest.raises(ValueError):
        ClamdClient("/run/clamav/clamd.ctl", timeout=0)
    with pytest.raises(ValueError):
        ClamdClient("/run/clamav/clamd.ctl", max_scan_size=-1)


INFECTED = ClamdResult("infected", "Eicar-Signature", "stream: Eicar-Signature FOUND")
CLEAN = ClamdResult("clean", None, "stream: OK")
ERROR = ClamdResult("error", None, "connection refused")
SKIPPED = ClamdResult("skipped", None, "message of 9 bytes is larger than ...")
REFUSED = Reply(550, "5.7.1", "Message refused: virus Eicar-Signature found")


@pytest.mark.parametrize(("result", "on_error", "reply", "header"), [
    (INFECTED, "tempfail", REFUSED, None),
    (INFECTED, "accept", REFUSED, None),
    (CLEAN, "tempfail", None, CLEAN_HEADER),
    (CLEAN, "accept", None, CLEAN_HEADER),
    (ERROR, "tempfail", TEMPFAIL_REPLY, None),
    (ERROR, "accept", None, UNAVAILABLE_HEADER),
    (SKIPPED, "tempfail", None, SKIPPED_HEADER),
    (SKIPPED, "accept", None, SKIPPED_HEADER),
])
def test_clamd_verdict(result: ClamdResult, on_error: str, reply: Reply | None,
                       header: bytes | None) -> None:
    verdict = clamd_verdict(result, on_error)  # type: ignore[arg-type]
    assert verdict.reply == reply
    assert verdict.header == header


def test_verdict_wire_forms() -> None:
    assert TEMPFAIL_REPLY.to_bytes() == b"451 4.7.1 Virus scanner unavailable, try again later\r\n"
    assert UNAVAILABLE_HEADER == b"X-Virus-Scanned: clamd; unavailable, message not scanned\r\n"
    assert SKIPPED_HEADER == b"X-Virus-Scanned: clamd; skipped, message larger than the scan limit\r\n"
