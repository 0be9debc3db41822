"""IMAP mixed workload: Mailkeep against a stock Dovecot, same load, same machine, same run.

Issue 3's benchmark: our own IMAP load generator (raw IMAP over TLS on asyncio, no imaplib,
so the client's overhead is small and identical for both servers) runs C concurrent
clients (default 20) against each server. Each client runs IMAP sessions back to back
until the run's time is up; a session is what a mail client does when it checks a mailbox:

    connect (TCP + TLS + greeting), LOGIN, SELECT INBOX, FETCH 1:* (FLAGS UID RFC822.SIZE),
    then --session-ops operations drawn at random (fixed weights, see OPERATION_WEIGHTS):
    UID FETCH of header fields for a window of 50 messages, UID FETCH BODY.PEEK[] of 3
    messages, UID STORE +FLAGS/-FLAGS (\\Seen), UID SEARCH (UNSEEN / FROM / SUBJECT / TEXT),
    APPEND of a 2-10 KB message, UID STORE +FLAGS.SILENT (\\Deleted) + UID EXPUNGE of the
    messages this session appended, NOOP; then the cleanup expunge and LOGOUT. Searches are
    40 % UNSEEN, 25 % FROM, 25 % SUBJECT, 10 % TEXT (SEARCH_WEIGHTS).

Before the timed runs every user's INBOX is seeded over IMAP APPEND with the same M
messages (default 2,000: plain, multipart/alternative, attachments, forwarded messages;
1 KB to 200 KB) on both servers. The operation sequence of each client is drawn from a
seeded random generator, so both servers get the same sequence of commands.

Answers are checked, not just timed: BODY[] must have the size of the message appended,
header windows must return every message, FROM/SUBJECT/TEXT searches must find exactly the
seeded messages that contain the term. A wrong answer counts as an error; a run with
errors is reported and the script exits with status 1.

Measured per server and round: operations per second (every command and every connection
set-up counts as one operation), p50 and p99 latency per operation type and overall, the
server's CPU time per operation and its memory (PSS of all its processes) at the end. R
rounds (default 3), the order of the servers alternating; the tables show medians and the
ratio Mailkeep/Dovecot.

Dovecot (tests/support/dovecot.py) runs as Debian ships it: default fsync behaviour, no
auth cache, Argon2id password hashes, TLS. Mailkeep runs ``mailkeep serve`` with an imaps
listener on a free port, accounts created with ``mailkeep account add --password-stdin``.

Usage: .venv/bin/python benchmarks/imap_mixed.py [--clients 20] [--users 5]
       [--messages 2000] [--duration 30] [--rounds 3] [--only dovecot|mailkeep]
       (see --help; README.md explains the output)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    MAILKEEP,
    BenchmarkError,
    ProcessError,
    format_table,
    free_port,
    median,
    port_is_open,
    run_command,
    start_process,
    stop_process,
)
from tests.support.dovecot import (
    DovecotUnavailable,
    TestCertificates,
    ThrowawayDovecot,
    make_test_certificates,
    require_dovecot,
)
from tests.support.procs import group_cpu_seconds, processes_in_group

SERVERS = ("dovecot", "mailkeep")
DOMAIN = "bench.test"
PASSWORD_PREFIX = "bench-imap-pw-"
#: The name the servers' certificate carries and the clients verify.
TLS_NAME = "localhost"

# Input bounds: a benchmark that would run for hours is a typo, not a measurement.
MAX_CLIENTS = 1000
MAX_USERS = 1000
MAX_MESSAGES = 200_000
MAX_DURATION = 3600.0
MAX_ROUNDS = 50
MAX_SESSION_OPS = 10_000
#: Dovecot refuses more than this many sessions per user and IP (mail_max_userip_connections).
DOVECOT_USERIP_LIMIT = 10

#: Client-side limits: the longest response line and literal we accept (bytes).
MAX_LINE = 16 * 1024 * 1024
MAX_LITERAL = 64 * 1024 * 1024
#: Time limits (seconds): server start-up, one connection's close.
SERVER_START_TIMEOUT = 60.0
CLOSE_TIMEOUT = 5.0
#: How often the server's memory is sampled during a timed run (seconds).
MEMORY_SAMPLE_INTERVAL = 1.0

#: Relative frequency of the operations between SELECT and LOGOUT. Reading dominates, as
#: in the logs of a real mailbox: headers of a screenful, a few bodies, flag changes.
OPERATION_WEIGHTS: dict[str, int] = {
    "fetch_headers": 20,
    "fetch_bodies": 20,
    "store_seen": 15,
    "search": 15,
    "append": 10,
    "expunge": 5,
    "noop": 15,
}
HEADER_WINDOW = 50
BODIES_PER_FETCH = 3
#: Which search a "search" operation is. Clients search for unread mail all the time
#: (UNSEEN), for a sender or subject when the user types into the quick filter, and
#: through the full text less often; without an index a TEXT search reads every message.
SEARCH_WEIGHTS: dict[str, int] = {
    "search_unseen": 40,
    "search_from": 25,
    "search_subject": 25,
    "search_text": 10,
}
SEARCH_KINDS = tuple(SEARCH_WEIGHTS)

# ------------------------------------------------------------------------------ corpus
# Search terms and the filler text are disjoint by construction (checked below): a term
# matches exactly the messages it was put into, so search answers can be verified.
SENDERS = ["alice.archer", "bruno.baptiste", "chiara.conti", "dmitri.dolgov", "emeka.eze",
           "fatima.farouk", "gunnar.grieg", "hana.hoshino", "ivan.ilic", "julia.jansen",
           "kwame.kuffour", "lena.lindqvist", "mateo.marquez", "nadia.nowak", "oskar.olsen",
           "priya.patel", "quentin.quade", "rosa.romero", "sven.sorensen", "tamar.tal"]
SUBJECT_TOPICS = ["budget", "roadmap", "invoice", "offsite", "migration", "hiring",
                  "quarterly", "security", "newsletter", "firmware", "warranty", "catering"]
BODY_KEYWORDS = ["kumquat", "marzipan", "tangerine", "pistachio", "rhubarb", "nutmeg",
                 "saffron", "cardamom", "persimmon", "gooseberry", "elderflower", "quince"]
_FILLER_TEXT = ("the a of to and in is for on that with as at by from it this be are we you or "
          "meeting project team update please review attached thanks regards next week "
          "monday friday agenda notes draft final version status open item follow up call "
          "morning afternoon office remote shared folder document slides numbers figures "
          "customer supplier order delivery schedule plan question answer idea proposal "
          "summary detail change request approval deadline reminder")
_APPEND_TEXT = ("benchmark appended message body line written by the load generator while "
                "the timed run is going on")
FILLER = _FILLER_TEXT.split()
APPEND_FILLER = _APPEND_TEXT.split()


def _check_vocabulary() -> None:
    terms = SENDERS + SUBJECT_TOPICS + BODY_KEYWORDS
    for term in terms:
        others = [t for t in terms if t != term]
        words = FILLER + APPEND_FILLER + others + ["bench", "example", "org", "re", "fwd"]
        clash = [w for w in words if term in w or (len(w) > 3 and w in term)]
        if clash:
            raise AssertionError(f"search term {term!r} overlaps with {clash}")


_check_vocabulary()


@dataclass(frozen=True)
class SeedMessage:
    data: bytes
    sender: str
    topic: str
    keyword: str
    flags: str  # IMAP flag list for APPEND, e.g. "(\\Seen)"


def _words(rng: random.Random, count: int, vocabulary: Sequence[str] = FILLER) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def _paragraphs(rng: random.Random, size: int, keyword: str) -> str:
    """About ``size`` bytes of text in 72-column lines; ``keyword`` occurs once."""
    lines: list[str] = []
    total = 0
    insert_at = rng.randrange(max(1, size // 72))
    while total < size:
        line = _words(rng, rng.randint(8, 12))
        if len(lines) == insert_at:
            line = f"{line} {keyword}"
        lines.append(line)
        total += len(line) + 2
        if rng.random() < 0.15:
            lines.append("")
    if keyword and keyword not in " ".join(lines):
        lines.append(keyword)
    return "\r\n".join(lines)


def build_corpus(count: int, seed: int) -> list[SeedMessage]:
    """``count`` realistic messages, the same for every user and every server.

    Mix: 60 % text/plain (1-4 KB), 25 % multipart/alternative text+HTML (4-20 KB), 12 %
    multipart/mixed with a base64 attachment (20-200 KB), 3 % a forwarded message/rfc822.
    Flags: 60 % \\Seen, 5 % \\Flagged, 5 % \\Answered.
    """
    rng = random.Random(f"corpus:{seed}")
    messages = []
    for index in range(count):
        sender = rng.choice(SENDERS)
        topic = rng.choice(SUBJECT_TOPICS)
        keyword = rng.choice(BODY_KEYWORDS)
        first, last = (part.capitalize() for part in sender.split("."))
        day = 1 + index % 28
        headers = (
            f"Return-Path: <{sender}@example.org>\r\n"
            f"Received: from mx.example.org by mail.{DOMAIN} with ESMTPS; "
            f"{day} Feb 2024 09:{index % 60:02d}:00 +0000\r\n"
            f"From: {first} {last} <{sender}@example.org>\r\n"
            f"To: Reader <reader@{DOMAIN}>\r\n"
            f"Subject: {topic} {_words(rng, rng.randint(2, 6))} #{index}\r\n"
            f"Date: {day} Feb 2024 09:{index % 60:02d}:00 +0000\r\n"
            f"Message-ID: <seed-{index}-{rng.getrandbits(48):x}@example.org>\r\n"
            "MIME-Version: 1.0\r\n"
        )
        kind = rng.random()
        if kind < 0.60:
            body = _paragraphs(rng, rng.randint(800, 3800), keyword)
            data = (headers + "Content-Type: text/plain; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: 7bit\r\n\r\n" + body + "\r\n")
        elif kind < 0.85:
            text = _paragraphs(rng, rng.randint(2000, 9000), keyword)
            html = "<html><body>" + "".join(
                f"<p>{line}</p>\r\n" for line in text.split("\r\n") if line) + "</body></html>"
            boundary = f"alt-{index}-{rng.getrandbits(32):x}"
            data = (headers + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
                    f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}"
                    f"\r\n--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}"
                    f"\r\n--{boundary}--\r\n")
        else:
            text = _paragraphs(rng, rng.randint(300, 1500), keyword)
            boundary = f"mix-{index}-{rng.getrandbits(32):x}"
            if kind < 0.97:
                size = rng.randint(15_000, 150_000)
                while True:
                    # Random data could spell a search term (in base64, or decoded): the
                    # answer would then depend on whether a server searches attachments.
                    raw = rng.randbytes(size)
                    encoded = base64.encodebytes(raw).decode().replace("\n", "\r\n")
                    if not _terms_in(encoded.encode()) and not _terms_in(raw):
                        break
                part = ("Content-Type: application/pdf; name=\"report.pdf\"\r\n"
                        "Content-Disposition: attachment; filename=\"report.pdf\"\r\n"
                        f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}")
            else:
                inner = (f"From: Someone <someone@example.net>\r\nTo: {first} "
                         f"<{sender}@example.org>\r\nSubject: original {_words(rng, 3)}\r\n"
                         f"Date: 1 Jan 2024 08:00:00 +0000\r\nContent-Type: text/plain\r\n\r\n"
                         f"{_paragraphs(rng, rng.randint(500, 3000), '')}\r\n")
                part = "Content-Type: message/rfc822\r\n\r\n" + inner
            data = (headers + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
                    f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}"
                    f"\r\n--{boundary}\r\n{part}\r\n--{boundary}--\r\n")
        roll = rng.random()
        flags = "(\\Seen)" if roll < 0.60 else "()"
        if rng.random() < 0.05:
            flags = flags[:-1] + (" " if flags != "()" else "") + "\\Flagged)"
        if rng.random() < 0.05:
            flags = flags[:-1] + (" " if flags != "()" else "") + "\\Answered)"
        encoded_message = data.encode()
        found = _terms_in(encoded_message)
        if found != {sender, topic, keyword}:
            raise AssertionError(f"corpus message {index} contains the terms {sorted(found)}")
        messages.append(SeedMessage(encoded_message, sender, topic, keyword, flags))
    return messages


ALL_TERMS = (*SENDERS, *SUBJECT_TOPICS, *BODY_KEYWORDS)


def _terms_in(data: bytes) -> set[str]:
    """The search terms occurring in ``data``, compared case-insensitively (as IMAP does)."""
    lowered = data.lower()
    return {term for term in ALL_TERMS if term.encode() in lowered}


def appended_message(rng: random.Random, client: int) -> bytes:
    """A 2-10 KB message for APPEND during the run; it matches none of the search terms."""
    size = rng.randint(2000, 10_000)
    lines = []
    total = 0
    while total < size:
        line = _words(rng, 10, APPEND_FILLER)
        lines.append(line)
        total += len(line) + 2
    return (f"From: Load Generator <client{client}@{DOMAIN}>\r\nTo: Reader <reader@{DOMAIN}>\r\n"
            f"Subject: appended by client {client}\r\n"
            f"Date: 1 Mar 2024 12:00:00 +0000\r\n"
            f"Message-ID: <append-{client}-{rng.getrandbits(64):x}@{DOMAIN}>\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
            + "\r\n".join(lines) + "\r\n").encode()


# ------------------------------------------------------------------------------ IMAP client

class ImapError(BenchmarkError):
    """The server answered something other than what the operation needs."""


@dataclass
class Untagged:
    """One untagged response; ``line`` keeps ``{n}`` where each literal was."""

    line: bytes
    literals: list[bytes]


@dataclass
class Reply:
    status: bytes  # OK, NO or BAD
    text: bytes
    untagged: list[Untagged]


_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r\n\Z")


class ImapConnection:
    """A minimal IMAP4rev1 client: one command at a time, literals, untagged collection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 literal_plus: bool) -> None:
        self.reader = reader
        self.writer = writer
        self._tag = 0
        #: Send literals without waiting for "+" (RFC 7888). Decided once per server from
        #: its CAPABILITY, so every session of a run writes the same bytes.
        self.literal_plus = literal_plus

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext, *,
                   literal_plus: bool = False) -> ImapConnection:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=TLS_NAME, limit=MAX_LINE)
        connection = cls(reader, writer, literal_plus)
        greeting = await connection._read_line()
        if not greeting.startswith(b"* OK"):
            writer.close()
            raise ImapError(f"unexpected greeting {greeting[:200]!r}")
        return connection

    async def _read_line(self) -> bytes:
        try:
            line = await self.reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ImapError(f"connection closed by the server (after {exc.partial[:200]!r})"
                            ) from None
        except asyncio.LimitOverrunError:
            raise ImapError(f"a response line longer than {MAX_LINE} bytes") from None
        return line

    async def _read_response(self) -> Untagged:
        """One logical response: a line and the literals it announces."""
        parts: list[bytes] = []
        literals: list[bytes] = []
        while True:
            line = await self._read_line()
            match = _LITERAL_AT_END.search(line)
            if match is None:
                parts.append(line[:-2])
                return Untagged(b"".join(parts), literals)
            size = int(match.group(1))
            if size > MAX_LITERAL:
                raise ImapError(f"a literal of {size} bytes (limit {MAX_LITERAL})")
            parts.append(line[:-2])
            try:
                literals.append(await self.reader.readexactly(size))
            except asyncio.IncompleteReadError:
                raise ImapError("connection closed in the middle of a literal") from None

    async def command(self, text: str, literal: bytes | None = None,
                      *, expect: bytes = b"OK") -> Reply:
        """Send ``text`` (and a final ``literal``), read until the tagged reply."""
        self._tag += 1
        tag = f"A{self._tag:05d}".encode()
        untagged: list[Untagged] = []
        if literal is None:
            self.writer.write(tag + b" " + text.encode() + b"\r\n")
        elif self.literal_plus:
            # RFC 7888: a non-synchronizing literal saves the round trip for "+".
            self.writer.write(tag + b" " + text.encode() + f" {{{len(literal)}+}}\r\n".encode()
                              + literal + b"\r\n")
        else:
            self.writer.write(tag + b" " + text.encode() + f" {{{len(literal)}}}\r\n".encode())
            await self.writer.drain()
            while True:
                response = await self._read_response()
                if response.line.startswith(b"+"):
                    break
                if response.line.startswith(tag + b" "):
                    raise ImapError(f"{text.split()[0]} refused before the literal: "
                                    f"{response.line[:200]!r}")
                untagged.append(response)
            self.writer.write(literal + b"\r\n")
        await self.writer.drain()
        while True:
            response = await self._read_response()
            if response.line.startswith(tag + b" "):
                status, _, rest = response.line[len(tag) + 1:].partition(b" ")
                reply = Reply(status.upper(), rest, untagged)
                if reply.status != expect:
                    # LOGIN's arguments stay out of the report (they are the password).
                    shown = "LOGIN" if text.startswith("LOGIN ") else text[:60]
                    raise ImapError(f"{shown!r}: {reply.status.decode()} {rest[:200]!r}")
                return reply
            untagged.append(response)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_TIMEOUT)


# ------------------------------------------------------------------------------ statistics

@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)

    def record(self, op: str, seconds: float) -> None:
        self.latencies.setdefault(op, []).append(seconds)

    def error(self, op: str, message: str) -> None:
        self.errors[op] = self.errors.get(op, 0) + 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{op}: {message}")

    @property
    def operations(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.5 = median, 0.99 = p99)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class RunResult:
    operations: int
    elapsed: float
    server_cpu: float
    server_memory_mb: float
    client_cpu: float
    stats: Stats

    @property
    def rate(self) -> float:
        return self.operations / self.elapsed


# ------------------------------------------------------------------------------ workload

@dataclass
class Mailbox:
    """What a user's INBOX holds after seeding: seed index -> UID, and search answers."""

    user: str
    password: str
    literal_plus: bool
    seed_uids: list[int]
    sizes: dict[int, int]  # uid -> RFC822.SIZE of the seeded message
    by_sender: dict[str, set[int]]
    by_topic: dict[str, set[int]]
    by_keyword: dict[str, set[int]]

    @property
    def seed_set(self) -> set[int]:
        return set(self.seed_uids)


class Workload:
    """Runs the sessions of one client against one server, recording into ``stats``."""

    def __init__(self, *, port: int, context: ssl.SSLContext, mailbox: Mailbox, client: int,
                 rng: random.Random, stats: Stats, session_ops: int, op_timeout: float) -> None:
        self.port = port
        self.context = context
        self.mailbox = mailbox
        self.client = client
        self.rng = rng
        self.stats = stats
        self.session_ops = session_ops
        self.op_timeout = op_timeout
        self.current_op = "connect"
        self._ops = list(OPERATION_WEIGHTS)
        self._weights = [OPERATION_WEIGHTS[o] for o in self._ops]

    async def _timed(self, op: str, call: Callable[[], object]) -> object:
        self.current_op = op
        began = time.perf_counter()
        result = await asyncio.wait_for(call(), self.op_timeout)  # type: ignore[arg-type]
        self.stats.record(op, time.perf_counter() - began)
        return result

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                await self.session(deadline)
            except (ImapError, OSError, ssl.SSLError, TimeoutError) as exc:
                self.stats.error("session", f"client {self.client}, during {self.current_op}: "
                                            f"{exc!r}"[:300])
                # A failing server must not turn into a busy loop of reconnects.
                await asyncio.sleep(0.05)

    async def session(self, deadline: float) -> None:
        connection = await self._timed("connect", lambda: ImapConnection.open(
            self.port, self.context, literal_plus=self.mailbox.literal_plus))
        assert isinstance(connection, ImapConnection)
        appended: list[int] = []
        try:
            box = self.mailbox
            await self._timed("login", lambda: connection.command(
                f'LOGIN "{box.user}" "{box.password}"'))
            await self._timed("select", lambda: connection.command("SELECT INBOX"))
            reply = await self._timed("fetch_all", lambda: connection.command(
                "FETCH 1:* (FLAGS UID RFC822.SIZE)"))
            assert isinstance(reply, Reply)
            self._check_fetch_all(reply)
            for _ in range(self.session_ops):
                if time.monotonic() >= deadline:
                    break
                op = self.rng.choices(self._ops, self._weights)[0]
                if op == "expunge" and not appended:
                    op = "append"
                await self._operation(connection, op, appended)
            if appended:
                await self._operation(connection, "expunge", appended)
            await self._timed("logout", lambda: connection.command("LOGOUT"))
        finally:
            await connection.close()

    def _check_fetch_all(self, reply: Reply) -> None:
        uids = set()
        for item in reply.untagged:
            match = re.search(rb"\bUID (\d+)", item.line)
            if b" FETCH " in item.line and match:
                uids.add(int(match.group(1)))
        missing = self.mailbox.seed_set - uids
        if missing:
            self.stats.error("fetch_all", f"{len(missing)} seeded messages missing")

    async def _operation(self, connection: ImapConnection, op: str,
                         appended: list[int]) -> None:
        rng = self.rng
        box = self.mailbox
        if op == "fetch_headers":
            start = rng.randrange(max(1, len(box.seed_uids) - HEADER_WINDOW + 1))
            window = box.seed_uids[start:start + HEADER_WINDOW]
            reply = await self._timed(op, lambda: connection.command(
                f"UID FETCH {_uid_set(window)} "
                "(UID FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])"))
            assert isinstance(reply, Reply)
            got = {uid for uid, _ in _fetched(reply, b"BODY[HEADER.FIELDS")}
            if got != set(window):
                self.stats.error(op, f"asked {len(window)} headers, got {len(got)}")
        elif op == "fetch_bodies":
            chosen = sorted(set(rng.sample(box.seed_uids, min(BODIES_PER_FETCH,
                                                              len(box.seed_uids)))))
            reply = await self._timed(op, lambda: connection.command(
                f"UID FETCH {','.join(map(str, chosen))} (UID BODY.PEEK[])"))
            assert isinstance(reply, Reply)
            got = dict(_fetched(reply, b"BODY[]"))
            wrong = [uid for uid in chosen if got.get(uid) != box.sizes[uid]]
            if wrong:
                self.stats.error(op, f"BODY[] of UIDs {wrong} missing or of the wrong size")
        elif op == "store_seen":
            uid = rng.choice(box.seed_uids)
            sign = rng.choice("+-")
            await self._timed(op, lambda: connection.command(
                f"UID STORE {uid} {sign}FLAGS (\\Seen)"))
        elif op == "search":
            await self._search(connection, rng.choices(
                SEARCH_KINDS, [SEARCH_WEIGHTS[k] for k in SEARCH_KINDS])[0])
        elif op == "append":
            message = appended_message(rng, self.client)
            reply = await self._timed(op, lambda: connection.command(
                "APPEND INBOX (\\Seen)", message))
            assert isinstance(reply, Reply)
            match = re.search(rb"\[APPENDUID \d+ (\d+)\]", reply.text)
            if match is None:
                raise ImapError("APPEND without APPENDUID: the benchmark needs UIDPLUS "
                                "(RFC 4315) to expunge what it appended")
            appended.append(int(match.group(1)))
        elif op == "expunge":
            uids = _uid_set(appended)
            await self._timed("store_deleted", lambda: connection.command(
                f"UID STORE {uids} +FLAGS.SILENT (\\Deleted)"))
            reply = await self._timed(op, lambda: connection.command(f"UID EXPUNGE {uids}"))
            assert isinstance(reply, Reply)
            expunged = sum(1 for item in reply.untagged if item.line.endswith(b" EXPUNGE"))
            if expunged < len(appended):
                self.stats.error(op, f"expunged {expunged} of {len(appended)}")
            appended.clear()
        elif op == "noop":
            await self._timed(op, lambda: connection.command("NOOP"))
        else:  # pragma: no cover - OPERATION_WEIGHTS and this list are written together
            raise AssertionError(op)

    async def _search(self, connection: ImapConnection, kind: str) -> None:
        box = self.mailbox
        if kind == "search_unseen":
            criteria, expected = "UNSEEN", None
        elif kind == "search_from":
            term = self.rng.choice(SENDERS)
            criteria, expected = f'FROM "{term}"', box.by_sender.get(term, set())
        elif kind == "search_subject":
            term = self.rng.choice(SUBJECT_TOPICS)
            criteria, expected = f'SUBJECT "{term}"', box.by_topic.get(term, set())
        else:
            term = self.rng.choice(BODY_KEYWORDS)
            criteria, expected = f'TEXT "{term}"', box.by_keyword.get(term, set())
        reply = await self._timed(kind, lambda: connection.command(f"UID SEARCH {criteria}"))
        assert isinstance(reply, Reply)
        found: set[int] = set()
        for item in reply.untagged:
            if item.line.startswith(b"* SEARCH"):
                found.update(int(n) for n in item.line[8:].split())
        if expected is not None and found & box.seed_set != expected:
            self.stats.error(kind, f"{criteria}: {len(found & box.seed_set)} seeded matches, "
                                   f"expected {len(expected)}")


def _uid_set(uids: Sequence[int]) -> str:
    """A compact UID set: runs of consecutive UIDs as ranges (RFC 9051 §9 sequence-set)."""
    parts: list[str] = []
    ordered = sorted(set(uids))
    start = 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            first, last = ordered[start], ordered[index - 1]
            parts.append(str(first) if first == last else f"{first}:{last}")
            start = index
    return ",".join(parts)


def _fetched(reply: Reply, section: bytes) -> list[tuple[int, int]]:
    """(UID, literal size) of the FETCH responses that carry ``section``."""
    result = []
    for item in reply.untagged:
        if b" FETCH " not in item.line or section not in item.line or not item.literals:
            continue
        match = re.search(rb"\bUID (\d+)", item.line)
        if match:
            result.append((int(match.group(1)), len(item.literals[-1])))
    return result


# ------------------------------------------------------------------------------ servers

class ServerUnderTest:
    name: str
    port: int

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def process_group(self) -> int:
        raise NotImplementedError

    def log_tail(self) -> str:
        return ""


class DovecotServer(ServerUnderTest):
    name = "dovecot"

    def __init__(self, users: dict[str, str], settings: dict[str, str], keep: bool) -> None:
        self.instance = ThrowawayDovecot(users, settings=settings, keep_dir=keep)

    def start(self) -> None:
        self.instance.start()
        self.port = self.instance.ports.imaps

    @property
    def ca_file(self) -> Path:
        return self.instance.ca_file

    def stop(self) -> None:
        self.instance.stop()

    def process_group(self) -> int:
        pid = self.instance.pid
        if pid is None:
            raise BenchmarkError("Dovecot is not running")
        return pid

    def log_tail(self) -> str:
        return self.instance.log_text()[-3000:]


MAILKEEP_CONFIG = """\
# Written by benchmarks/imap_mixed.py for one benchmark run.
hostname = "{hostname}"
data_dir = "data"

[log]
format = "logfmt"
level = "warning"
file = "{log}"

[tls]
cert = "{cert}"
key = "{key}"

# All benchmark load comes from 127.0.0.1 and several sessions share an account:
# raise the per-IP, per-account and command-rate limits out of the way (Dovecot has no
# per-IP limit and allows 10 sessions per user and IP, which the benchmark stays under).
[imap]
max_connections_per_ip = {per_ip}
max_connections_per_account = {per_account}
max_commands_per_second = 1000000

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:{port}"

[domains."{domain}"]
"""


class MailkeepServer(ServerUnderTest):
    """``mailkeep serve --config`` with one imaps listener, in a temporary directory."""

    name = "mailkeep"

    def __init__(self, users: dict[str, str], certificates: TestCertificates, clients: int,
                 keep: bool) -> None:
        self.users = users
        self.certificates = certificates
        self.clients = clients
        self.keep = keep
        self.directory = Path(tempfile.mkdtemp(prefix="mailkeep-imap-bench-"))
        self.config = self.directory / "mailkeep.toml"
        self.log_path = self.directory / "mailkeep.log"
        self.output_path = self.directory / "server.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    def _prepare(self) -> None:
        # Own copies of certificate and key: a directory kept with --keep still starts.
        tls = self.directory / "tls"
        tls.mkdir(mode=0o700)
        cert = Path(shutil.copy(self.certificates.cert_file, tls / "server.pem"))
        key = Path(shutil.copy(self.certificates.key_file, tls / "server.key"))
        self.config.write_text(MAILKEEP_CONFIG.format(
            hostname=TLS_NAME, log=self.log_path, cert=cert,
            key=key, port=self.port, domain=DOMAIN,
            per_ip=self.clients * 2 + 50, per_account=self.clients * 2 + 50))
        for user, password in self.users.items():
            # The same commands an administrator types; the password never on the command line.
            run_command([MAILKEEP, "account", "add", user, "--password-stdin",
                         "--config", self.config],
                        input_bytes=(password + "\n").encode(), timeout=120)

    def start(self) -> None:
        if not os.access(MAILKEEP, os.X_OK):
            raise BenchmarkError(f"{MAILKEEP} is missing: run `make test` once")
        self._prepare()
        if port_is_open(self.port):
            raise BenchmarkError(f"127.0.0.1:{self.port} is already taken by another program")
        self.process = start_process([MAILKEEP, "serve", "--config", self.config],
                                     log_path=self.output_path,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_for_imap_greeting(self.port, self.certificates.ca_file, self.process,
                                   SERVER_START_TIMEOUT)
        except BenchmarkError as exc:
            output = self.log_tail()  # before stop() removes the directory
            self.stop()
            raise BenchmarkError(
                f"Mailkeep did not answer IMAP over TLS on 127.0.0.1:{self.port}: {exc}. "
                "(Until Mailkeep's IMAP server lands, run with --only dovecot.)\n"
                f"--- Mailkeep output ---\n{output}") from None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=SERVER_START_TIMEOUT, sig=signal.SIGTERM)
            self.process = None
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def process_group(self) -> int:
        if self.process is None:
            raise BenchmarkError("Mailkeep is not running")
        return self.process.pid

    def log_tail(self) -> str:
        text = ""
        for path in (self.output_path, self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return text[-3000:]


def wait_for_imap_greeting(port: int, ca_file: Path, process: subprocess.Popen[bytes],
                           timeout: float) -> None:
    """Wait until ``port`` completes a TLS handshake and greets with ``* OK``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + timeout
    last = "nothing"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"the server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as raw, \
                    context.wrap_socket(raw, server_hostname=TLS_NAME) as tls:
                tls.settimeout(2.0)
                greeting = tls.recv(1024)
                if greeting.startswith(b"* OK"):
                    return
                last = repr(greeting[:100])
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchmarkError(f"no IMAP greeting within {timeout:g}s (last: {last})")


def server_memory_mb(pgid: int) -> float:
    """Proportional set size of every process in the group, in MB (shared pages split)."""
    total_kb = 0
    for pid in processes_in_group(pgid):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
    return total_kb / 1024


# ------------------------------------------------------------------------------ phases

def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


async def seed_mailboxes(port: int, context: ssl.SSLContext, users: dict[str, str],
                         corpus: list[SeedMessage], op_timeout: float,
                         allow_literal_plus: bool = True) -> list[Mailbox]:
    """APPEND the corpus to every user's INBOX (one connection per user, in parallel)."""

    async def seed(user: str, password: str) -> Mailbox:
        connection = await ImapConnection.open(port, context)
        try:
            await asyncio.wait_for(connection.command(f'LOGIN "{user}" "{password}"'),
                                   op_timeout)
            reply = await asyncio.wait_for(connection.command("CAPABILITY"), op_timeout)
            capabilities: set[bytes] = set()
            for item in reply.untagged:
                if item.line.upper().startswith(b"* CAPABILITY "):
                    capabilities.update(item.line[13:].upper().split())
            connection.literal_plus = allow_literal_plus and b"LITERAL+" in capabilities
            uids: list[int] = []
            for message in corpus:
                reply = await asyncio.wait_for(
                    connection.command(f"APPEND INBOX {message.flags}", message.data),
                    op_timeout)
                match = re.search(rb"\[APPENDUID \d+ (\d+)\]", reply.text)
                if match is None:
                    raise ImapError("APPEND without APPENDUID: the server lacks UIDPLUS")
                uids.append(int(match.group(1)))
            await asyncio.wait_for(connection.command("LOGOUT"), op_timeout)
        finally:
            await connection.close()
        box = Mailbox(user, password, connection.literal_plus, uids, {}, {}, {}, {})
        for uid, message in zip(uids, corpus, strict=True):
            box.sizes[uid] = len(message.data)
            box.by_sender.setdefault(message.sender, set()).add(uid)
            box.by_topic.setdefault(message.topic, set()).add(uid)
            box.by_keyword.setdefault(message.keyword, set()).add(uid)
        return box

    return list(await asyncio.gather(*(seed(u, p) for u, p in users.items())))


async def run_load(port: int, context: ssl.SSLContext, mailboxes: list[Mailbox], *,
                   clients: int, duration: float, session_ops: int, op_timeout: float,
                   seed: str, pgid: int) -> tuple[Stats, float, float]:
    """Run every client until ``duration`` is over.

    Returns the stats, the wall-clock seconds until the last client finished, and the
    largest memory use of the server (PSS of its process group, MB) sampled every second.
    """
    stats = Stats()
    began = time.perf_counter()
    deadline = time.monotonic() + duration
    workloads = [
        Workload(port=port, context=context, mailbox=mailboxes[n % len(mailboxes)], client=n,
                 rng=random.Random(f"{seed}:{n}"), stats=stats, session_ops=session_ops,
                 op_timeout=op_timeout)
        for n in range(clients)
    ]
    peak_memory = 0.0

    async def sample_memory() -> None:
        nonlocal peak_memory
        while True:
            # Reading /proc of every server process takes milliseconds: not on the loop.
            peak_memory = max(peak_memory, await asyncio.to_thread(server_memory_mb, pgid))
            await asyncio.sleep(MEMORY_SAMPLE_INTERVAL)

    sampler = asyncio.create_task(sample_memory())
    try:
        await asyncio.gather(*(w.run(deadline) for w in workloads))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return stats, time.perf_counter() - began, peak_memory


def timed_run(server: ServerUnderTest, context: ssl.SSLContext, mailboxes: list[Mailbox],
              args: argparse.Namespace, seed: str) -> RunResult:
    pgid = server.process_group()
    cpu_before = group_cpu_seconds(pgid)
    client_before = time.process_time()
    stats, elapsed, peak_memory = asyncio.run(run_load(
        server.port, context, mailboxes, clients=args.clients, duration=args.duration,
        session_ops=args.session_ops, op_timeout=args.op_timeout, seed=seed, pgid=pgid))
    client_cpu = time.process_time() - client_before
    server_cpu = group_cpu_seconds(pgid) - cpu_before
    return RunResult(stats.operations, elapsed, server_cpu, peak_memory, client_cpu, stats)


# ------------------------------------------------------------------------------ command line

def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value
    return parse


def _bounded_float(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="IMAP mixed workload (login, select, fetch headers and bodies, store "
        "flags, search, append, expunge, logout) against Mailkeep and a stock Dovecot: "
        "ops/s, p50/p99 latency, the ratio.",
        epilog="Quick look: .venv/bin/python benchmarks/imap_mixed.py --only dovecot "
        "--messages 200 --duration 10 --rounds 1",
    )
    parser.add_argument("--clients", type=_bounded_int(1, MAX_CLIENTS), default=20,
                        help="concurrent clients (default 20)")
    parser.add_argument("--users", type=_bounded_int(1, MAX_USERS), default=5,
                        help="accounts; clients are spread over them (default 5)")
    parser.add_argument("--messages", type=_bounded_int(1, MAX_MESSAGES), default=2000,
                        help="messages seeded into each user's INBOX (default 2000)")
    parser.add_argument("--duration", type=_bounded_float(1, MAX_DURATION), default=30.0,
                        help="seconds of load per timed run (default 30)")
    parser.add_argument("--session-ops", type=_bounded_int(0, MAX_SESSION_OPS), default=30,
                        help="operations per session between SELECT and LOGOUT (default 30)")
    parser.add_argument("--rounds", type=_bounded_int(1, MAX_ROUNDS), default=3,
                        help="timed runs per server; medians are reported (default 3)")
    parser.add_argument("--warmup", type=_bounded_float(0, 600), default=5.0,
                        help="seconds of untimed load per server before the first round "
                        "(default 5)")
    parser.add_argument("--only", choices=SERVERS, default=None,
                        help="run one server only (default: both)")
    parser.add_argument("--seed", type=int, default=1, help="seed of corpus and workload")
    parser.add_argument("--op-timeout", type=_bounded_float(1, 600), default=60.0,
                        help="limit in seconds for one IMAP command (default 60)")
    parser.add_argument("--timeout", type=_bounded_float(10, 86_400), default=3600.0,
                        help="limit in seconds for the whole benchmark (default 3600)")
    parser.add_argument("--dovecot-setting", action="append", default=[],
                        metavar="NAME=VALUE",
                        help="extra dovecot.conf setting, repeatable (default: none; the "
                        "reference is Dovecot as shipped), e.g. auth_cache_size=10M")
    parser.add_argument("--sync-literals", action="store_true",
                        help="always wait for the server's '+' before a literal, even if it "
                        "offers LITERAL+ (default: use LITERAL+ when offered)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the servers' temporary directories (logs) for inspection")
    args = parser.parse_args(argv)
    args.servers = [args.only] if args.only else list(SERVERS)
    args.dovecot_settings = {}
    for option in args.dovecot_setting:
        name, sep, value = option.partition("=")
        if not sep or not name.strip():
            parser.error(f"--dovecot-setting wants NAME=VALUE, got {option!r}")
        args.dovecot_settings[name.strip()] = value.strip()
    per_user = math.ceil(args.clients / min(args.users, args.clients))
    limit = int(args.dovecot_settings.get("mail_max_userip_connections", DOVECOT_USERIP_LIMIT))
    if "dovecot" in args.servers and per_user > limit:
        parser.error(f"{per_user} sessions per user exceed Dovecot's limit of {limit} per user "
                     "and IP: use more --users, or --dovecot-setting "
                     "mail_max_userip_connections=N")
    return args


def _dovecot_version() -> str:
    result = run_command(["/usr/sbin/dovecot", "--version"], check=False)
    return result.stdout.decode().strip() or "?"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report(args: argparse.Namespace, results: dict[str, list[RunResult]]) -> None:
    print()
    rows = []
    for name in args.servers:
        runs = results[name]
        rows.append([name, f"{median([r.rate for r in runs]):.1f}",
                     " ".join(f"{r.rate:.1f}" for r in runs),
                     f"{median([1000 * r.server_cpu / max(1, r.operations) for r in runs]):.2f}",
                     f"{median([1000 * r.client_cpu / max(1, r.operations) for r in runs]):.2f}",
                     f"{median([r.server_memory_mb for r in runs]):.0f}",
                     str(sum(r.stats.error_count for r in runs))])
    print(format_table(["server", "ops/s (median)", "each round", "server CPU ms/op",
                        "client CPU ms/op", "server peak PSS MB", "errors"], rows))

    op_names = sorted({op for runs in results.values() for r in runs for op in r.stats.latencies},
                      key=lambda op: (_OP_ORDER.get(op, 99), op))
    headers = ["operation"]
    for name in args.servers:
        headers += [f"{name} count", f"{name} p50 ms", f"{name} p99 ms"]
    if len(args.servers) == 2:
        headers.append("p50 mailkeep/dovecot")
    rows = []
    for op in [*op_names, "all"]:
        row = [op]
        p50s = {}
        for name in args.servers:
            runs = results[name]
            samples = [[v for values in r.stats.latencies.values() for v in values]
                       if op == "all" else r.stats.latencies.get(op, []) for r in runs]
            present = [s for s in samples if s]
            if not present:
                row += ["0", "-", "-"]
                continue
            p50s[name] = median([percentile(s, 0.5) for s in present])
            row += [str(round(median([len(s) for s in samples]))), _ms(p50s[name]),
                    _ms(median([percentile(s, 0.99) for s in present]))]
        if len(args.servers) == 2:
            row.append(f"{p50s['mailkeep'] / p50s['dovecot']:.2f}"
                       if len(p50s) == 2 and p50s["dovecot"] > 0 else "-")
        rows.append(row)
    print("\nper operation (median over rounds of each round's count, p50, p99):")
    print(format_table(headers, rows))

    for name in args.servers:
        examples = [e for r in results[name] for e in r.stats.error_examples]
        if examples:
            print(f"\n{name} errors (first {min(len(examples), 10)}):")
            for example in examples[:10]:
                print(f"  {example}")
    if len(args.servers) == 2:
        ratio = (median([r.rate for r in results["mailkeep"]])
                 / median([r.rate for r in results["dovecot"]]))
        print(f"\nratio mailkeep/dovecot: {ratio:.2f}x ops/s")


_OP_ORDER = {op: n for n, op in enumerate(
    ["connect", "login", "select", "fetch_all", "fetch_headers", "fetch_bodies", "store_seen",
     *SEARCH_KINDS, "append", "store_deleted", "expunge", "noop", "logout", "session"])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    if "dovecot" in args.servers:
        try:
            require_dovecot()
        except DovecotUnavailable as exc:
            raise SystemExit(f"imap_mixed: {exc}") from None
    users = {f"user{n}@{DOMAIN}": f"{PASSWORD_PREFIX}{n}" for n in range(args.users)}

    print(f"IMAP mixed workload: {args.clients} clients on {args.users} users, "
          f"{args.messages} messages per INBOX, {args.session_ops} operations per session, "
          f"{args.duration:g} s per run, {args.rounds} round(s), warm-up {args.warmup:g} s")
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
          f"{platform.python_version()}, Dovecot {_dovecot_version()}")
    print("dovecot settings: " + (", ".join(f"{k} = {v}" for k, v in
                                           args.dovecot_settings.items()) or
                                  "as shipped (no auth cache, mail_fsync = optimized)"),
          flush=True)

    corpus = build_corpus(args.messages, args.seed)
    print(f"corpus: {len(corpus)} messages, {sum(len(m.data) for m in corpus) / 1e6:.1f} MB "
          "per user", flush=True)
    work = Path(tempfile.mkdtemp(prefix="imap-bench-tls-"))
    servers: dict[str, ServerUnderTest] = {}
    mailboxes: dict[str, list[Mailbox]] = {}
    contexts: dict[str, ssl.SSLContext] = {}
    results: dict[str, list[RunResult]] = {name: [] for name in args.servers}
    try:
        certificates = make_test_certificates(work)
        for name in args.servers:
            server: ServerUnderTest
            if name == "dovecot":
                server = DovecotServer(users, args.dovecot_settings, args.keep)
            else:
                server = MailkeepServer(users, certificates, args.clients, args.keep)
            servers[name] = server
            server.start()
            ca = server.ca_file if isinstance(server, DovecotServer) else certificates.ca_file
            contexts[name] = client_context(ca)
            began = time.perf_counter()
            mailboxes[name] = asyncio.run(asyncio.wait_for(
                seed_mailboxes(server.port, contexts[name], users, corpus, args.op_timeout,
                               not args.sync_literals),
                max(1.0, args.timeout - (time.monotonic() - started))))
            literals = "LITERAL+" if mailboxes[name][0].literal_plus else "synchronizing"
            print(f"seeded {name}: {len(users) * len(corpus)} messages in "
                  f"{time.perf_counter() - began:.1f} s ({literals} literals)", flush=True)
            if args.warmup:
                warm = timed_run_for(server, contexts[name], mailboxes[name], args,
                                     "warmup", args.warmup)
                if warm.stats.error_count:
                    print(f"  warm-up of {name}: {warm.stats.error_count} errors, e.g. "
                          f"{warm.stats.error_examples[:2]}", flush=True)
        for round_number in range(args.rounds):
            order = args.servers if round_number % 2 == 0 else list(reversed(args.servers))
            for name in order:
                if time.monotonic() - started + args.duration > args.timeout:
                    raise BenchmarkError(f"--timeout {args.timeout:g} s reached")
                result = timed_run(servers[name], contexts[name], mailboxes[name], args,
                                   f"{args.seed}:round{round_number}")
                results[name].append(result)
                print(f"  round {round_number + 1}  {name:<8}  {result.rate:9.1f} ops/s  "
                      f"({result.operations} ops in {result.elapsed:.1f} s, "
                      f"{result.stats.error_count} errors)", flush=True)
    except (BenchmarkError, ProcessError, TimeoutError, OSError) as exc:
        tails = "".join(f"\n--- {n} log (tail) ---\n{s.log_tail()}" for n, s in servers.items())
        print(f"\nimap_mixed: {exc}{tails}", file=sys.stderr)
        return 1
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(args, results)
    errors = sum(r.stats.error_count for runs in results.values() for r in runs)
    if errors:
        print(f"\nimap_mixed: {errors} errors: the figures above are not trustworthy",
              file=sys.stderr)
        return 1
    return 0


def timed_run_for(server: ServerUnderTest, context: ssl.SSLContext, mailboxes: list[Mailbox],
                  args: argparse.Namespace, seed: str, duration: float) -> RunResult:
    """A run of another length (the warm-up), with the other settings of ``args``."""
    shortened = argparse.Namespace(**{**vars(args), "duration": duration})
    return timed_run(server, context, mailboxes, shortened, seed)


if __name__ == "__main__":
    sys.exit(main())
