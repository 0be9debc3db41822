"""rspamd: the HTTP client against Debian's rspamd, bad peers, and the pure verdict.

The rspamd tests run the real daemon (tests/support/rspamd.py) with Debian's stock rules
and the harness's test rules, which a message opts into with an ``X-Mailkeep-Test:``
header. The peers that misbehave (never answers, answers garbage) are tiny local servers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.procs import free_port
from tests.support.rspamd import (
    REJECT_MESSAGE,
    SETTINGS_ADD_HEADER,
    SOFT_REJECT_MESSAGE,
    TEST_ADD_HEADER,
    TEST_GREYLIST,
    TEST_HEADER,
    TEST_REJECT,
    TEST_REWRITE_SUBJECT,
    TEST_SOFT_REJECT,
    THRESHOLDS,
    RunningRspamd,
)

from mailkeep.mime.header import decode_header_value
from mailkeep.policy.rspamd import (
    GREYLIST_TEXT,
    MAX_RESULT_HEADER,
    MAX_RESULT_SYMBOLS,
    REJECT_TEXT,
    SOFT_REJECT_TEXT,
    UNAVAILABLE_TEXT,
    RspamdClient,
    RspamdResult,
    RspamdVerdict,
    parse_reply,
    rspamd_verdict,
)

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
ENVELOPE = {"client_ip": "203.0.113.5", "helo": "mail.example.net",
            "mail_from": "alice@example.net", "recipients": ["bob@example.org"],
            "queue_id": "4Q7test"}


def message(subject: str = "Lunch on Friday", body: str = "Shall we meet at noon?",
            test: str | None = None) -> bytes:
    lines = ["From: Alice <alice@example.net>", "To: Bob <bob@example.org>",
             f"Subject: {subject}", "Date: Sat, 21 Nov 2026 06:00:00 +0000",
             "Message-ID: <lunch.1@example.net>", "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=utf-8"]
    if test is not None:
        lines.append(f"{TEST_HEADER}: {test}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


def header_text(verdict: RspamdVerdict) -> str:
    return b"".join(verdict.header_fields()).decode("ascii")


def field_values(verdict: RspamdVerdict, name: str) -> list[str]:
    """The values of the added fields called ``name``, unfolded (RFC 5322 §2.2.3) and with
    white space runs shown as one space, as a mail client displays them."""
    values = []
    for raw in verdict.header_fields():
        field_name, _, value = raw.decode("ascii").partition(":")
        if field_name.lower() == name.lower():
            values.append(" ".join(value.replace("\r\n", "").split()))
    return values


@pytest.fixture(scope="module")
def rspamd() -> Iterator[RunningRspamd]:
    with RunningRspamd() as server:
        yield server


@pytest.fixture
def client(rspamd: RunningRspamd) -> RspamdClient:
    return RspamdClient(rspamd.url, timeout=20.0)


# --- against Debian's rspamd -----------------------------------------------------------------

async def test_ping(client: RspamdClient) -> None:
    assert await client.ping()


async def test_gtube_is_rejected_with_554(client: RspamdClient) -> None:
    result = await client.check(message(body=GTUBE), **ENVELOPE)
    assert result.error is None
    assert result.action == "reject"
    assert "GTUBE" in result.symbols
    verdict = rspamd_verdict(result, "accept")
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (554, "5.7.1")
    # rspamd's own text for GTUBE is passed on to the sender.
    assert verdict.reply.text == result.smtp_message == "Gtube pattern"
    assert verdict.add_headers == ()


async def test_plain_message_passes_with_result_header(client: RspamdClient) -> None:
    result = await client.check(message(), **ENVELOPE)
    assert result.error is None and result.skipped is None
    assert result.action == "no action"
    assert result.score < THRESHOLDS["greylist"]
    assert result.required_score == THRESHOLDS["reject"]
    verdict = rspamd_verdict(result, "tempfail")
    assert verdict.reply is None and verdict.subject is None
    [spamd] = field_values(verdict, "X-Spamd-Result")
    assert spamd.startswith(f"default: False [{result.score:.2f} / 100.00];")
    assert "R_SPF_NA(0.00)" in spamd  # the stock SPF module ran (and found no record)
    assert field_values(verdict, "X-Spam") == []
    # milter_headers asked for X-Spam-Status; forged copies of our fields are removed.
    assert field_values(verdict, "X-Spam-Status") == [f"No, score={result.score:.2f}"]
    assert {"x-spamd-result", "x-spam", "x-spam-status"} <= {
        name.lower() for name in verdict.remove_headers}


async def test_add_header_band(client: RspamdClient) -> None:
    result = await client.check(message(test=TEST_ADD_HEADER), **ENVELOPE)
    assert result.action == "add header"
    assert THRESHOLDS["add_header"] <= result.score < THRESHOLDS["rewrite_subject"]
    verdict = rspamd_verdict(result, "accept")
    assert verdict.reply is None
    assert field_values(verdict, "X-Spam") == ["Yes"]
    [spamd] = field_values(verdict, "X-Spamd-Result")
    assert spamd.startswith(f"default: True [{result.score:.2f} / 100.00]; "
                            "MAILKEEP_TEST_ADD_HEADER(45.00);")


async def test_settings_id_selects_a_settings_rule(client: RspamdClient) -> None:
    plain = await client.check(message(), **ENVELOPE)
    chosen = await client.check(message(), **ENVELOPE, settings_id=SETTINGS_ADD_HEADER)
    assert plain.action == "no action"
    assert chosen.action == "add header"


async def test_rewrite_subject(client: RspamdClient) -> None:
    result = await client.check(message(test=TEST_REWRITE_SUBJECT), **ENVELOPE)
    assert result.action == "rewrite subject"
    verdict = rspamd_verdict(result, "accept")
    assert verdict.reply is None
    assert verdict.subject == "*** SPAM *** Lunch on Friday"
    assert verdict.subject_field() == b"Subject: *** SPAM *** Lunch on Friday\r\n"
    assert field_values(verdict, "X-Spam") == ["Yes"]


async def test_rewrite_subject_keeps_non_ascii_text(client: RspamdClient) -> None:
    encoded = "=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4sIGRpZXNtYWwgbWl0IMOEcGZlbG4gdW5kIEJpcm5lbg==?="
    expected = "*** SPAM *** Grüße aus Köln, diesmal mit Äpfeln und Birnen"
    result = await client.check(message(subject=encoded, test=TEST_REWRITE_SUBJECT),
                                **ENVELOPE)
    assert result.subject is not None
    # rspamd sends the new Subject ready for the header, as RFC 2047 encoded-words.
    assert decode_header_value(result.subject.encode()) == expected
    verdict = rspamd_verdict(result, "accept")
    raw = verdict.subject_field()
    assert raw is not None
    assert raw.isascii()
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert decode_header_value(raw.partition(b":")[2]) == expected


async def test_greylist_and_soft_reject_from_rspamd(client: RspamdClient) -> None:
    greylist = await client.check(message(test=TEST_GREYLIST), **ENVELOPE)
    assert greylist.action == "greylist"
    reply = rspamd_verdict(greylist, "accept").reply
    assert reply is not None and (reply.code, reply.enhanced) == (451, "4.7.1")
    assert reply.text == GREYLIST_TEXT

    soft = await client.check(message(test=TEST_SOFT_REJECT), **ENVELOPE)
    assert soft.action == "soft reject"
    reply = rspamd_verdict(soft, "accept").reply
    assert reply is not None and (reply.code, reply.enhanced) == (451, "4.7.1")
    assert reply.text == SOFT_REJECT_MESSAGE


async def test_reject_carries_rspamd_message(client: RspamdClient) -> None:
    result = await client.check(message(test=TEST_REJECT), **ENVELOPE)
    assert result.action == "reject"
    reply = rspamd_verdict(result, "accept").reply
    assert reply is not None
    assert reply.to_bytes() == f"554 5.7.1 {REJECT_MESSAGE}\r\n".encode()


async def test_envelope_reaches_rspamd(rspamd: RunningRspamd, client: RspamdClient) -> None:
    bounce = await client.check(
        message(), client_ip="203.0.113.77", helo="mail.example.net", mail_from="",
        recipients=["a@example.org", "b@example.org", "c@example.org"],
        queue_id="4QenvelopeX")
    # Without a verified reverse name rspamd's hfilter counts the client as unknown...
    assert "HFILTER_HOSTNAME_UNKNOWN" in bounce.symbols
    known = await client.check(message(), **ENVELOPE, hostname="mail.example.net",
                               user="alice")
    assert "HFILTER_HOSTNAME_UNKNOWN" not in known.symbols
    log = rspamd.log_text()
    # The null reverse-path is sent as "<>", which rspamd logs as no sender at all.
    assert "qid: <4QenvelopeX>, ip: 203.0.113.77, (default: F (no action)" in log
    assert "rcpts: <a@example.org,b@example.org,c@example.org>" in log
    assert "qid: <4Q7test>, ip: 203.0.113.5, user: alice, from: <alice@example.net>" in log
    # rspamd's DNS questions came to the harness's resolver, not the Internet.
    assert rspamd.resolver is not None and rspamd.resolver.queries > 0


async def test_large_message_is_streamed_from_file(client: RspamdClient, tmp_path: Path) -> None:
    path = tmp_path / "spool.eml"
    head = message().split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again: line %07d\r\n"
    with open(path, "wb") as spool:
        spool.write(head)
        number = 0
        while spool.tell() < 6 * 1024 * 1024:
            spool.write(line % number)
            number += 1
    size = path.stat().st_size
    tracemalloc.start()
    try:
        result = await client.check(path, **ENVELOPE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.error is None and result.skipped is None
    assert result.action == "no action"
    assert "R_SPF_NA" in result.symbols
    # Streaming: never more than a third of the message in memory at once.
    assert peak < size / 3, (peak, size)


# --- limits and broken peers -------------------------------------------------------------

async def test_oversized_message_is_skipped_unsent(tmp_path: Path) -> None:
    path = tmp_path / "big.eml"
    path.write_bytes(message() + b"x" * 5000)
    # Nothing listens at this port: a skipped message never tries to connect.
    client = RspamdClient(f"http://127.0.0.1:{free_port()}", max_size=4096)
    for payload in (path, path.read_bytes()):
        result = await client.check(payload, **ENVELOPE)
        assert result.error is None
        assert result.skipped is not None and "larger than the 4096 bytes" in result.skipped
        verdict = rspamd_verdict(result, "tempfail")
        assert verdict.reply is None
        [value] = field_values(verdict, "X-Spamd-Result")
        assert value.startswith("skipped (message of ")


async def test_missing_spool_file_is_an_error(tmp_path: Path) -> None:
    client = RspamdClient(f"http://127.0.0.1:{free_port()}")
    result = await client.check(tmp_path / "gone.eml", **ENVELOPE)
    assert result.error is not None and "cannot read the message" in result.error


async def test_rspamd_down_is_an_error_quickly(caplog: pytest.LogCaptureFixture) -> None:
    client = RspamdClient(f"http://127.0.0.1:{free_port()}", timeout=20.0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mailkeep.policy.rspamd"):
        result = await client.check(message(), **ENVELOPE)
    assert time.monotonic() - started < 2.0
    assert result.action == "no action"
    assert result.error is not None and result.error.startswith("cannot connect")
    [record] = [r for r in caplog.records if r.getMessage() == "spam check failed"]
    assert record.levelno == logging.WARNING
    assert record.queue_id == "4Q7test" and record.error == result.error  # type: ignore[attr-defined]
    assert not await client.ping()

    tempfail = rspamd_verdict(result, "tempfail")
    assert tempfail.reply is not None
    assert tempfail.reply.to_bytes() == f"451 4.7.1 {UNAVAILABLE_TEXT}\r\n".encode()
    accept = rspamd_verdict(result, "accept")
    assert accept.reply is None
    [value] = field_values(accept, "X-Spamd-Result")
    assert value.startswith("unavailable (cannot connect")
    assert set(accept.remove_headers) == {"X-Spamd-Result", "X-Spam"}


async def test_server_that_never_answers_times_out() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = RspamdClient(f"http://127.0.0.1:{port}", timeout=0.5)
        started = time.monotonic()
        result = await client.check(message(), **ENVELOPE)
        elapsed = time.monotonic() - started
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
    assert connections, "the client never connected"
    assert 0.5 <= elapsed < 2.0
    assert result.error == "no answer within 0.5s"
    assert result.action == "no action"


class BrokenRspamd:
    """An HTTP server that answers /checkv2 with a chosen status and body, and records the
    request headers it got."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.requests: list[tuple[list[tuple[str, str]], int]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _check(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((list(request.headers.items()), len(body)))
        return web.Response(status=self.status, body=self.body,
                            content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/checkv2", self._check)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def broken() -> AsyncIterator[BrokenRspamd]:
    server = BrokenRspamd()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize(("status", "body", "error"), [
    (200, b"this is not JSON {", "reply is not JSON"),
    (200, b"", "reply is not JSON"),
    (200, b"\xff\xfe\x00garbage", "reply is not JSON"),
    (200, b"[1, 2, 3]", "reply is not a JSON object"),
    (200, b'{"score": 1.0, "required_score": 15}', "reply has no action"),
    (200, b'{"action": "reject", "score": "high", "required_score": 15}',
     "reply has no valid score"),
    (200, b'{"action": "reject", "score": NaN, "required_score": 15}', "reply is not JSON"),
    (200, b'{"action": "reject", "score": 1' + b"0" * 400 + b', "required_score": 15}',
     "reply has no valid score"),
    (200, b'{"action": "reject", "score": 1e999, "required_score": 15}',
     "reply has no valid score"),
    (200, b"[" * 100_000 + b"]" * 100_000, "reply is not JSON"),
    (500, b'{"error": "Lua script failed\\r\\nX-Injected: 1"}',
     "HTTP 500: Lua script failed X-Injected: 1"),
    (400, b"<html>bad request</html>", "HTTP 400: <html>bad request</html>"),
    (200, b'{"action": "reject", "score": 1, "required_score": 1, "x": "'
     + b"a" * (3 * 1024 * 1024) + b'"}', "larger than"),
])
async def test_malformed_replies_are_errors(broken: BrokenRspamd, status: int, body: bytes,
                                            error: str) -> None:
    broken.status, broken.body = status, body
    client = RspamdClient(f"http://127.0.0.1:{broken.port}", timeout=10.0)
    result = await client.check(message(), **ENVELOPE)
    assert result.error is not None and error in result.error, result.error
    assert result.action == "no action"
    assert rspamd_verdict(result, "tempfail").reply is not None


async def test_request_headers_carry_the_envelope_safely(broken: BrokenRspamd) -> None:
    broken.body = b'{"action": "no action", "score": 0.5, "required_score": 15}'
    client = RspamdClient(f"http://127.0.0.1:{broken.port}", password="s3cret")
    result = await client.check(
        message(), client_ip="[2001:db8::25]", helo="evil.example\r\nX-Injected: yes",
        mail_from="", recipients=["a@example.org", "b@example.org"], queue_id="4Qhdr",
        hostname="mx.example.net", user="alice", mta_name="mx.example.com")
    assert result.error is None and result.action == "no action"
    [(headers, length)] = broken.requests
    assert length == len(message())
    sent = [(name.lower(), value) for name, value in headers]
    assert ("ip", "2001:db8::25") in sent
    assert ("helo", "evil.example X-Injected: yes") in sent
    assert ("from", "<>") in sent
    assert [value for name, value in sent if name == "rcpt"] == ["a@example.org",
                                                                 "b@example.org"]
    for expected in [("queue-id", "4Qhdr"), ("hostname", "mx.example.net"),
                     ("user", "alice"), ("mta-name", "mx.example.com"),
                     ("password", "s3cret")]:
        assert expected in sent
    assert "x-injected" not in {name for name, _ in sent}


async def test_invalid_client_address_is_not_sent(broken: BrokenRspamd) -> None:
    broken.body = b'{"action": "no action", "score": 0, "required_score": 15}'
    client = RspamdClient(f"http://127.0.0.1:{broken.port}")
    await client.check(message(), **{**ENVELOPE, "client_ip": "not-an-address"})
    [(headers, _)] = broken.requests
    assert "ip" not in {name.lower() for name, _ in headers}


def test_client_rejects_bad_configuration() -> None:
    for url in ("127.0.0.1:11333", "ftp://host", "http://host/?q=1", "http://", "http:// x"):
        with pytest.raises(ValueError):
            RspamdClient(url)
    with pytest.raises(ValueError):
        RspamdClient("http://127.0.0.1:11333", timeout=0)
    with pytest.raises(ValueError):
        RspamdClient("http://127.0.0.1:11333", password="a\nb")


# --- the pure verdict ----------------------------------------------------------------------

def result(action: str, *, score: float = 1.0, subject: str | None = None,
           smtp_message: str | None = None, symbols: dict[str, float] | None = None,
           add: list[tuple[str, str]] | None = None,
           remove: list[str] | None = None) -> RspamdResult:
    return RspamdResult(action=action, score=score, required_score=15.0,
                        symbols=symbols or {"SYM": score}, subject=subject,
                        add_headers=add or [], remove_headers=remove or [], error=None,
                        smtp_message=smtp_message)


@pytest.mark.parametrize(("action", "smtp_message", "wire"), [
    ("reject", None, f"554 5.7.1 {REJECT_TEXT}"),
    ("reject", "Spam: go away", "554 5.7.1 Spam: go away"),
    ("soft reject", None, f"451 4.7.1 {SOFT_REJECT_TEXT}"),
    ("soft reject", "Rate limit exceeded", "451 4.7.1 Rate limit exceeded"),
    ("greylist", None, f"451 4.7.1 {GREYLIST_TEXT}"),
    ("greylist", "Try again later", "451 4.7.1 Try again later"),
])
def test_refusing_actions(action: str, smtp_message: str | None, wire: str) -> None:
    verdict = rspamd_verdict(result(action, smtp_message=smtp_message), "accept")
    assert verdict.reply is not None
    assert verdict.reply.to_bytes() == (wire + "\r\n").encode()
    assert verdict.add_headers == () and verdict.subject is None


@pytest.mark.parametrize(("action", "spam"), [
    ("no action", False), ("add header", True), ("rewrite subject", True),
    ("discard", True), ("quarantine", True), ("some future action", False),
])
def test_accepting_actions(action: str, spam: bool) -> None:
    verdict = rspamd_verdict(result(action, score=7.5), "tempfail")
    assert verdict.reply is None
    assert field_values(verdict, "X-Spam") == (["Yes"] if spam else [])
    [value] = field_values(verdict, "X-Spamd-Result")
    assert value == f"default: {spam} [7.50 / 15.00]; SYM(7.50)"


def test_rewrite_subject_in_raw_utf8_is_encoded() -> None:
    verdict = rspamd_verdict(result("rewrite subject", subject="[SPAM] Grüße"), "accept")
    assert verdict.subject_field() == b"Subject: =?UTF-8?B?W1NQQU1dIEdyw7zDn2U=?=\r\n"


def test_rewrite_subject_without_rspamd_subject_uses_template() -> None:
    verdict = rspamd_verdict(result("rewrite subject"), "accept",
                             original_subject="Cheap\r\n watches")
    assert verdict.subject == "*** SPAM *** Cheap watches"
    # Without the old subject there is nothing to rewrite: the message is still marked.
    unknown = rspamd_verdict(result("rewrite subject"), "accept")
    assert unknown.subject is None and field_values(unknown, "X-Spam") == ["Yes"]


def test_milter_headers_are_validated() -> None:
    raw = json.dumps({
        "action": "no action", "score": 1.0, "required_score": 15.0,
        "milter": {
            "add_headers": {
                "X-Virus": "clean",
                "X-Multi": [{"value": "one", "order": 1}, {"value": "two", "order": 2}],
                "X-Folded": {"value": "a\r\nb\tc", "order": 0},
                "Received": "from forged by rspamd",
                "DKIM-Signature": "v=1; forged",
                "X-Spam": "No",
                "Bad Name": "x",
                "Bad:Name": "x",
                "X-" + "L" * 100: "too long a name",
                "X-Number": 5,
            },
            "remove_headers": {"X-Old": 1, "From": 0, "Authentication-Results": 0,
                               "x-old": 0, "Bad Name": 0},
        },
    }).encode()
    parsed = parse_reply(raw)
    assert parsed.add_headers == [("X-Virus", "clean"), ("X-Multi", "one"),
                                  ("X-Multi", "two"), ("X-Folded", "a b c")]
    assert parsed.remove_headers == ["X-Old"]
    verdict = rspamd_verdict(parsed, "accept")
    assert verdict.remove_headers == ("X-Spamd-Result", "X-Spam", "X-Old")
    assert header_text(verdict).endswith(
        "X-Virus: clean\r\nX-Multi: one\r\nX-Multi: two\r\nX-Folded: a b c\r\n")


def test_long_and_non_ascii_values_are_folded_and_encoded() -> None:
    words = " ".join(f"word{n}" for n in range(100))
    parsed = parse_reply(json.dumps({
        "action": "no action", "score": 0.0, "required_score": 15.0,
        "milter": {"add_headers": {"X-Long": words, "X-Utf8": "Prüfung bestanden ✓"}},
    }).encode())
    verdict = rspamd_verdict(parsed, "accept")
    [long_field] = [f for f in verdict.header_fields() if f.startswith(b"X-Long:")]
    lines = long_field.split(b"\r\n")[:-1]
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b" ") for line in lines[1:])
    assert long_field.replace(b"\r\n", b"") == b"X-Long: " + words.encode()
    [utf8_field] = [f for f in verdict.header_fields() if f.startswith(b"X-Utf8:")]
    assert utf8_field.isascii()
    assert decode_header_value(utf8_field[len(b"X-Utf8:"):]) == "Prüfung bestanden ✓"


def test_result_header_is_bounded() -> None:
    symbols = {f"SYMBOL_NUMBER_{n:04d}": n / 100 for n in range(400)}
    verdict = rspamd_verdict(result("add header", score=12.0, symbols=symbols), "accept")
    [value] = field_values(verdict, "X-Spamd-Result")
    listed = value.split("; ")
    assert len(value) <= MAX_RESULT_HEADER + 20
    assert len(listed) == 1 + MAX_RESULT_SYMBOLS + 1
    assert listed[1] == "SYMBOL_NUMBER_0399(3.99)"  # the heaviest first
    assert listed[-1] == f"MORE({400 - MAX_RESULT_SYMBOLS})"


def test_symbols_and_texts_from_rspamd_are_cleaned() -> None:
    parsed = parse_reply(json.dumps({
        "action": "REJECT", "score": 20, "required_score": 15,
        "symbols": {"GOOD_ONE": {"score": 2.5}, "bad name;\r\n": {"score": 1},
                    "NO_SCORE": {"name": "NO_SCORE"}, "TEXT": {"score": "2"},
                    "BOOL": {"score": True}},
        "messages": {"smtp_message": "Go\r\n250 OK"},
        "subject": "x" * 5000,
    }).encode())
    assert parsed.action == "reject"
    assert parsed.symbols == {"GOOD_ONE": 2.5, "badname": 1.0}
    assert parsed.smtp_message == "Go 250 OK"
    assert parsed.subject is not None and len(parsed.subject) <= 900
    reply = rspamd_verdict(parsed, "accept").reply
    assert reply is not None and reply.to_bytes() == b"554 5.7.1 Go 250 OK\r\n"


def test_early_stop_keeps_the_action() -> None:
    # GTUBE and allow-lists make rspamd stop early ("is_skipped"); the action stands.
    parsed = parse_reply(b'{"is_skipped": true, "action": "reject", "score": 100,'
                         b' "required_score": 100, "messages": {"smtp_message": "Gtube"}}')
    assert parsed.action == "reject" and parsed.skipped is None and parsed.error is None
    reply = rspamd_verdict(parsed, "accept").reply
    assert reply is not None and reply.to_bytes() == b"554 5.7.1 Gtube\r\n"


def _check_fields(verdict: RspamdVerdict) -> None:
    subject = verdict.subject_field()
    fields = [*verdict.header_fields(), *([subject] if subject else [])]
    for raw in fields:
        assert raw.isascii() and raw.endswith(b"\r\n")
        lines = raw[:-2].split(b"\r\n")
        assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
        assert all(len(line) <= 998 for line in lines)
        assert all(line[:1] in (b" ", b"\t") for line in lines[1:])
        name = lines[0].partition(b":")[0]
        assert name and all(33 <= c <= 126 and c != 58 for c in name)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers()
    | st.text(max_size=200),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=30), children, max_size=5),
    max_leaves=30)


@PROPERTY
@given(st.fixed_dictionaries({}, optional={
    "action": st.sampled_from(["no action", "greylist", "add header", "rewrite subject",
                               "soft reject", "reject", "discard"]) | st.text(max_size=20),
    "score": st.floats() | st.integers() | json_values,
    "required_score": st.floats(allow_nan=False) | json_values,
    "subject": st.text(max_size=300) | json_values,
    "symbols": st.dictionaries(st.text(max_size=40), st.fixed_dictionaries(
        {"score": st.floats(allow_nan=False)}) | json_values, max_size=20) | json_values,
    "messages": st.fixed_dictionaries({"smtp_message": st.text(max_size=600)}) | json_values,
    "milter": st.fixed_dictionaries({}, optional={
        "add_headers": st.dictionaries(st.text(max_size=80), st.text(max_size=1200)
                                       | json_values, max_size=10) | json_values,
        "remove_headers": st.dictionaries(st.text(max_size=80), st.integers(),
                                          max_size=10) | json_values,
    }) | json_values,
    "is_skipped": st.booleans(),
}), st.sampled_from(["tempfail", "accept"]))
def test_any_json_reply_gives_a_safe_verdict(data: dict[str, object], on_error: str) -> None:
    raw = json.dumps(data, allow_nan=True).encode()
    parsed = parse_reply(raw)
    assert math.isfinite(parsed.score) and math.isfinite(parsed.required_score)
    verdict = rspamd_verdict(parsed, on_error)  # type: ignore[arg-type]
    _check_fields(verdict)
    if verdict.reply is not None:
        assert verdict.reply.code in (451, 554)
        assert len(verdict.reply.to_bytes()) <= 512


@PROPERTY
@given(st.binary(max_size=2000))
def test_any_bytes_reply_is_parsed_without_raising(raw: bytes) -> None:
    parsed = parse_reply(raw)
    assert parsed.error is not None or parsed.skipped is not None or parsed.action
    _check_fields(rspamd_verdict(parsed, "accept"))
