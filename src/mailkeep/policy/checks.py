"""header_checks(5) and body_checks(5): Postfix's built-in content inspection, on a message.

Each logical header (a header and its continuation lines, the line breaks between them
kept as ``\\n``, as Postfix's cleanup passes them) is matched against the header table,
and each body line against the body table. For every line the first rule that applies
wins (header_checks(5) "TABLE SEARCH ORDER"); its action is then carried out:

* REJECT (5.x.x: 550, 4.x.x: 451) and DISCARD end the inspection of the message;
  PASS ends it without a verdict; HOLD marks the message for holding and goes on.
* IGNORE and STRIP remove the line, REPLACE replaces it, PREPEND inserts a line before
  it; the rewritten message is in :attr:`ContentVerdict.message`.
* WARN, INFO and DUNNO change nothing; every rule that fired is in
  :attr:`ContentVerdict.hits` so the caller can log it.

Which table sees which header, as in Postfix: the message's own headers go to
header_checks, except the MIME headers among them (Content-*, MIME-Version), which go to
mime_header_checks; the headers of every MIME part go to mime_header_checks; the headers
of an attached message (message/rfc822) go to nested_header_checks. The last two default
to header_checks, so with one table every header line is inspected, MIME part headers
included (that is how seed 000's attachment-name rule sees ``Content-Disposition`` of an
attachment). Everything else, preambles and boundary lines included, is body.

Work is bounded: a header is matched on at most :data:`HEADER_SIZE_LIMIT` characters,
body lines in chunks of :data:`LINE_LENGTH_LIMIT` bytes (Postfix line_length_limit), at
most :data:`BODY_CHECKS_SIZE_LIMIT` bytes of each body segment (Postfix
body_checks_size_limit) and :data:`MAX_CHECKED_HEADERS` headers per message. Each pattern
has its own matching window besides (see :mod:`mailkeep.policy.tables`), and the whole
inspection has a time budget (:data:`CONTENT_TIME_BUDGET`, checked between lines; the
clock is injectable): content that is slow to inspect is deferred, never let through
uninspected. The MIME structure comes from :func:`mailkeep.mime.index_message`, which
never raises.

Speed: before any line is matched, one pass over the message's header bytes and one over
its body bytes find which rules' required literal text occurs at all
(:meth:`~mailkeep.policy.tables.RegexTable.prefiltered`); only those rules, and rules
without such text, are tried line by line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from mailkeep.mime import index_message
from mailkeep.mime.structure import MESSAGE_TYPES, Part
from mailkeep.policy.actions import ActionKind, Reply, content_reply
from mailkeep.policy.tables import HEADER_SIZE_LIMIT, LINE_LENGTH_LIMIT, RegexTable, TableHit

#: Postfix body_checks_size_limit: bytes of each body segment subjected to body checks.
BODY_CHECKS_SIZE_LIMIT = 51_200
#: Headers inspected per message at most (all header blocks together); the rest pass
#: uninspected and :attr:`ContentVerdict.truncated` says so.
MAX_CHECKED_HEADERS = 5000
#: Body bytes inspected per message at most (all segments together).
MAX_CHECKED_BODY_BYTES = 1024 * 1024
#: Seconds of matching one message may take. One pattern on one line is bounded by its
#: window (tens of milliseconds at worst); this bounds the sum over many hostile lines.
#: Past it the inspection stops and the message is deferred (TIMEOUT_REPLY).
CONTENT_TIME_BUDGET = 2.0

#: Header names Postfix treats as MIME headers (global/header_opts.c HDR_OPT_MIME).
MIME_HEADER_NAMES = frozenset({
    "content-description", "content-disposition", "content-id",
    "content-transfer-encoding", "content-type", "mime-version",
})
#: The reply when matching took longer than the time budget: content crafted to be slow
#: to inspect must not get through uninspected, and a temporary failure is safe for mail
#: that is merely unlucky (RFC 3463 X.3.0: other mail system status).
TIMEOUT_REPLY = Reply(451, "4.3.0", "message content inspection took too long, try again "
                      "later")


class HeaderClass(StrEnum):
    """Which header table applies (header_checks(5) "FILTERS WHILE RECEIVING MAIL")."""

    PRIMARY = "primary"  # the message's own headers: header_checks
    MIME = "mime"  # MIME headers anywhere: mime_header_checks
    NESTED = "nested"  # headers of an attached message: nested_header_checks


class Decision(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    DEFER = "defer"
    DISCARD = "discard"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class ContentHit:
    """A rule that fired on one header or body line."""

    where: Literal["header", "body"]
    header_class: HeaderClass | None
    text: str
    hit: TableHit


@dataclass(frozen=True)
class ContentVerdict:
    """The outcome of :meth:`ContentChecker.check_message`.

    ``reply`` is set for REJECT and DEFER. ``message`` is the rewritten message when an
    IGNORE, STRIP, REPLACE or PREPEND changed it and the message is kept (ACCEPT, HOLD);
    None otherwise. ``truncated``: a size limit or the time budget stopped the inspection
    early; the time budget also makes the decision DEFER with :data:`TIMEOUT_REPLY`.
    """

    decision: Decision
    reply: Reply | None = None
    hits: tuple[ContentHit, ...] = ()
    message: bytes | None = None
    truncated: bool = False


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _line_end(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    if line.endswith(b"\n"):
        return b"\n"
    return b"\r\n"


def header_subject(raw: bytes) -> str:
    """A logical header as header checks see it: physical lines joined with ``\\n``."""
    raw = raw[:HEADER_SIZE_LIMIT]
    text = raw.replace(b"\r\n", b"\n")
    if text.endswith(b"\n"):
        text = text[:-1]
    return _decode(text)


def split_headers(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) offsets of each logical header in ``data[start:end]``, a header block;
    the blank line that ends it is excluded.

    A line that starts with a space or tab continues the header before it (RFC 5322
    §2.2.3). An indented first line is kept as a header of its own, so it is inspected too.
    """
    headers: list[tuple[int, int]] = []
    position = start
    end_of_block = len(data) if end is None else end
    current: int | None = None
    while position < end_of_block:
        newline = data.find(b"\n", position, end_of_block)
        line_end = end_of_block if newline < 0 else newline + 1
        line = data[position:line_end]
        if line in (b"\r\n", b"\n") or not line.strip(b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and current is not None:
            position = line_end
            continue
        if current is not None:
            headers.append((current, position))
        current = position
        position = line_end
    if current is not None:
        headers.append((current, position))
    return headers


def _header_name(subject: str) -> str:
    colon = subject.find(":")
    return subject[:colon].strip().lower() if colon > 0 else ""


class HeaderChecker:
    """header_checks, with optional separate mime_header_checks and nested_header_checks."""

    def __init__(self, header_checks: RegexTable, *,
                 mime_header_checks: RegexTable | None = None,
                 nested_header_checks: RegexTable | None = None) -> None:
        for table in (header_checks, mime_header_checks, nested_header_checks):
            if table is not None and table.purpose != "header":
                raise ValueError(f"{table.source} was loaded for {table.purpose} checks, "
                                 "not header checks")
        self._tables = {
            HeaderClass.PRIMARY: header_checks,
            HeaderClass.MIME: mime_header_checks or header_checks,
            HeaderClass.NESTED: nested_header_checks or header_checks,
        }

    def prefiltered(self, haystack: bytes) -> HeaderChecker:
        """A checker with only the rules that can match text in ``haystack``, the
        lower-cased header bytes of one message (see RegexTable.prefiltered)."""
        views: dict[int, RegexTable] = {}
        for table in self._tables.values():
            if id(table) not in views:
                views[id(table)] = table.prefiltered(haystack)
        checker = HeaderChecker.__new__(HeaderChecker)
        checker._tables = {
            header_class: views[id(table)] for header_class, table in self._tables.items()
        }
        return checker

    def check(self, header: str | bytes,
              header_class: HeaderClass = HeaderClass.PRIMARY) -> TableHit | None:
        """The rule that applies to one logical header, or None."""
        subject = header_subject(header) if isinstance(header, bytes) else header
        if not subject:
            return None  # header_checks(5) BUGS: empty lines never match
        return self._tables[header_class].lookup(subject[:HEADER_SIZE_LIMIT])

    def classify(self, subject: str, block_kind: Literal["primary", "part", "nested"]
                 ) -> HeaderClass:
        """The header class of a header in a block of the given kind (Postfix mime_state)."""
        if block_kind == "part" or _header_name(subject) in MIME_HEADER_NAMES:
            return HeaderClass.MIME
        return HeaderClass.NESTED if block_kind == "nested" else HeaderClass.PRIMARY


class BodyChecker:
    """body_checks: one body line at a time, in chunks of at most LINE_LENGTH_LIMIT bytes."""

    def __init__(self, body_checks: RegexTable) -> None:
        if body_checks.purpose != "body":
            raise ValueError(f"{body_checks.source} was loaded for {body_checks.purpose} "
                             "checks, not body checks")
        self._table = body_checks

    def prefiltered(self, haystack: bytes) -> BodyChecker:
        """A checker with only the rules that can match text in ``haystack``, the
        lower-cased body bytes of one message (see RegexTable.prefiltered)."""
        return BodyChecker(self._table.prefiltered(haystack))

    def check(self, line: str | bytes) -> TableHit | None:
        """The rule that applies to one body line (without its line end), or None."""
        text = _decode(line[:LINE_LENGTH_LIMIT]) if isinstance(line, bytes) else line
        if not text:
            return None
        return self._table.lookup(text)


@dataclass
class _Inspection:
    """State of one message's inspection: hits, edits and Postfix's cleanup flags."""

    hits: list[ContentHit] = field(default_factory=list)
    edits: list[tuple[int, int, bytes]] = field(default_factory=list)
    stop: bool = False
    reply: Reply | None = None
    discard: bool = False
    hold: bool = False
    truncated: bool = False
    timed_out: bool = False
    headers_seen: int = 0
    deadline: float = float("inf")
    clock: Callable[[], float] = time.monotonic

    def out_of_time(self) -> bool:
        """Called after each line: stop once the time budget is spent."""
        if self.clock() > self.deadline:
            self.timed_out = self.stop = True
        return self.timed_out

    def act(self, hit: TableHit, where: Literal["header", "body"],
            header_class: HeaderClass | None, text: str, start: int, end: int,
            line_end: bytes) -> None:
        """Carry out one action (Postfix cleanup_act)."""
        action = hit.action
        kind = action.kind
        if kind is ActionKind.DUNNO:
            return
        self.hits.append(ContentHit(where, header_class, text, hit))
        if kind is ActionKind.REJECT:
            self.reply = content_reply(action)
            self.stop = True
        elif kind is ActionKind.DISCARD:
            self.discard = True
            self.stop = True
        elif kind is ActionKind.PASS:
            self.stop = True
        elif kind is ActionKind.HOLD:
            self.hold = True
        elif kind in (ActionKind.IGNORE, ActionKind.STRIP):
            self.edits.append((start, end, b""))
        elif kind is ActionKind.REPLACE:
            self.edits.append((start, end, _encode(action.text) + line_end))
        elif kind is ActionKind.PREPEND:
            self.edits.append((start, start, _encode(action.text) + line_end))
        # WARN and INFO: recorded in hits, nothing else to do.


class ContentChecker:
    """A whole message against header and body checks, compiled once, used for many."""

    def __init__(self, *, header_checks: RegexTable | None = None,
                 body_checks: RegexTable | None = None,
                 mime_header_checks: RegexTable | None = None,
                 nested_header_checks: RegexTable | None = None,
                 body_checks_size_limit: int = BODY_CHECKS_SIZE_LIMIT,
                 time_budget: float = CONTENT_TIME_BUDGET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.headers: HeaderChecker | None = None
        if header_checks is not None:
            self.headers = HeaderChecker(header_checks, mime_header_checks=mime_header_checks,
                                         nested_header_checks=nested_header_checks)
        self.body = BodyChecker(body_checks) if body_checks is not None else None
        self.body_checks_size_limit = body_checks_size_limit
        self.time_budget = time_budget
        self.clock = clock

    def check_message(self, message: bytes) -> ContentVerdict:
        """Inspect a message (CRLF or LF line ends) and return the verdict; never raises
        on message content."""
        if self.headers is None and self.body is None:
            return ContentVerdict(Decision.ACCEPT)
        state = _Inspection(clock=self.clock, deadline=self.clock() + self.time_budget)
        root = index_message(message)
        blocks = _header_blocks(root)
        if self.headers is not None:
            # One substring search per rule over all header text rules out most patterns
            # before any line is matched (RegexTable.prefiltered).
            haystack = b"\n".join(message[start:end] for start, end, _kind in blocks).lower()
            headers = self.headers.prefiltered(haystack)
            for block_start, block_end, kind in blocks:
                if state.stop:
                    break
                self._check_header_block(headers, message, block_start, block_end, kind,
                                         state)
        if self.body is not None and not state.stop:
            nested = sorted((start, end) for start, end, _kind in blocks[1:])
            ranges, truncated = self._body_ranges(message, root.body_start, nested)
            state.truncated = state.truncated or truncated
            haystack = b"\n".join(message[start:end] for start, end in ranges).lower()
            body = self.body.prefiltered(haystack)
            for start, end in ranges:
                self._check_lines(body, message, start, end, state)
                if state.stop:
                    break
        return _verdict(message, state)

    def _check_header_block(self, headers: HeaderChecker, message: bytes, start: int,
                            end: int, kind: Literal["primary", "part", "nested"],
                            state: _Inspection) -> None:
        for header_start, header_end in split_headers(message, start, end):
            if state.stop:
                return
            if state.headers_seen >= MAX_CHECKED_HEADERS:
                state.truncated = True
                state.stop = True
                return
            state.headers_seen += 1
            raw = message[header_start:header_end]
            subject = header_subject(raw)
            header_class = headers.classify(subject, kind)
            hit = headers.check(subject, header_class)
            if hit is not None:
                last_line = raw[raw.rfind(b"\n", 0, len(raw) - 1) + 1:]
                state.act(hit, "header", header_class, subject, header_start, header_end,
                          _line_end(last_line))
            if state.out_of_time():
                return

    def _body_ranges(self, message: bytes, body_start: int,
                     header_blocks: list[tuple[int, int]]
                     ) -> tuple[list[tuple[int, int]], bool]:
        """The body bytes to inspect, (start, end) for each segment between header blocks,
        cut to the per-segment and per-message limits; and whether the latter cut."""
        ranges: list[tuple[int, int]] = []
        budget = MAX_CHECKED_BODY_BYTES
        truncated = False
        segment_start = body_start
        for block_start, block_end in [*header_blocks, (len(message), len(message))]:
            if block_start > segment_start:
                if budget <= 0:
                    truncated = True
                    break
                allowed = min(block_start, segment_start + self.body_checks_size_limit)
                until = min(allowed, segment_start + budget)
                truncated = truncated or until < allowed
                if until < block_start:
                    # Finish the line the limit falls in, unless it is longer than a chunk.
                    newline = message.find(b"\n", until - 1,
                                           min(block_start, until + LINE_LENGTH_LIMIT))
                    if newline >= 0:
                        until = newline + 1
                budget -= until - segment_start
                ranges.append((segment_start, until))
            segment_start = max(segment_start, block_end)
        return ranges, truncated

    def _check_lines(self, body: BodyChecker, message: bytes, start: int, end: int,
                     state: _Inspection) -> None:
        position = start
        while position < end:
            newline = message.find(b"\n", position, end)
            line_end = end if newline < 0 else newline + 1
            content_end = line_end
            if message.endswith(b"\r\n", position, line_end):
                content_end -= 2
            elif message.endswith(b"\n", position, line_end):
                content_end -= 1
            ending = message[content_end:line_end]
            # Postfix inspects a long line in line_length_limit chunks.
            chunk = position
            while True:
                chunk_end = min(content_end, chunk + LINE_LENGTH_LIMIT)
                last = chunk_end >= content_end
                raw = message[chunk:chunk_end]
                hit = body.check(raw)
                if hit is not None:
                    state.act(hit, "body", None, _decode(raw), chunk,
                              line_end if last else chunk_end,
                              (ending or b"\r\n") if last else b"")
                    if state.stop:
                        return
                if state.out_of_time():
                    return
                if last:
                    break
                chunk = chunk_end
            position = line_end


def _header_blocks(root: Part) -> list[tuple[int, int, Literal["primary", "part", "nested"]]]:
    """Header blocks in document order: the message's, each part's, each attached
    message's (the root first)."""
    blocks: list[tuple[int, int, Literal["primary", "part", "nested"]]] = []
    stack: list[tuple[Part, Literal["primary", "part", "nested"]]] = [(root, "primary")]
    while stack:
        part, kind = stack.pop()
        blocks.append((part.header_start, part.body_start, kind))
        followers: list[tuple[Part, Literal["primary", "part", "nested"]]] = []
        if part.message is not None and part.content_type in MESSAGE_TYPES:
            followers.append((part.message, "nested"))
        followers.extend((child, "part") for child in part.children)
        stack.extend(reversed(followers))
    return blocks


def _verdict(message: bytes, state: _Inspection) -> ContentVerdict:
    hits = tuple(state.hits)
    if state.reply is None and not state.discard and state.timed_out:
        return ContentVerdict(Decision.DEFER, TIMEOUT_REPLY, hits, None, True)
    if state.reply is not None:
        decision = Decision.DEFER if state.reply.temporary else Decision.REJECT
        return ContentVerdict(decision, state.reply, hits, None, state.truncated)
    if state.discard:
        return ContentVerdict(Decision.DISCARD, None, hits, None, state.truncated)
    decision = Decision.HOLD if state.hold else Decision.ACCEPT
    rewritten = _apply_edits(message, state.edits) if state.edits else None
    return ContentVerdict(decision, None, hits, rewritten, state.truncated)


def _apply_edits(message: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Splice edits (start, end, replacement) into the message, in message order; an
    insertion (start == end) goes before a replacement at the same place."""
    out: list[bytes] = []
    position = 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1] != e[0])):
        if start < position:
            continue  # overlaps an earlier edit of the same line: cannot happen, be safe
        out.append(message[position:start])
        out.append(replacement)
        position = end
    out.append(message[position:])
    return b"".join(out)
