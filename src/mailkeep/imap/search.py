"""IMAP SEARCH: which messages of a mailbox view match a search program.

Implements the search keys of RFC 9051 §6.4.4 and RFC 3501 §6.4.4, with OLDER/YOUNGER
(WITHIN, RFC 5032), MODSEQ (CONDSTORE, RFC 7162 §3.1.5), the SAVEDATE keys (RFC 8514 §2.2)
and the saved result ``$`` (SEARCHRES, RFC 5182), on the command AST of
:mod:`mailkeep.imap.commands`. SORT and THREAD (:mod:`mailkeep.imap.sort`) reuse it.

Semantics (RFC 9051 §6.4.4): strings match as case-insensitive substrings of the decoded
text, not as words. FROM, TO, CC, BCC, SUBJECT and HEADER look at the header field's value
with RFC 2047 encoded-words decoded, and at the raw value; ``HEADER name ""`` matches
messages that have the field. BODY looks at the decoded text of the text parts (and the
header blocks of body parts); TEXT at the header and the body. The text and its
normalisation are :mod:`mailkeep.store.fts`'s, shared with the full-text index, so an
answer from the index and one from reading the messages are the same.

BEFORE/ON/SINCE compare the internal date's calendar date in UTC (the store's zone);
SENTBEFORE/SENTON/SENTSINCE the Date: field's date in its own zone, falling back to the
internal date when Date: is missing or unparseable (as Dovecot does).

How it runs: keys that only need the message list (flags, sizes, dates, UIDs, sequence
numbers) are evaluated first, then the text keys, each on the candidates left. A text key
asks the full-text index when there is one and enough candidates, and reads the messages
(header only, when that suffices) that the index does not cover. The function is
synchronous and pure apart from reading the store and the index; the session runs it in a
thread for big mailboxes.
"""

from __future__ import annotations

import calendar
import datetime
import logging
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from mailkeep.imap.commands import SearchKey, SequenceSet
from mailkeep.logfmt import log
from mailkeep.store.api import SYSTEM_FLAG_BITS, MessageInfo, Store, StoreError
from mailkeep.store.fts import (
    FIELD_COLUMNS,
    FullTextIndex,
    IndexAnswer,
    IndexUnavailable,
    MessageFacts,
    MessageText,
    TextLimits,
    fold,
    header_contains,
    load_message,
)

logger = logging.getLogger("mailkeep.imap")

#: CHARSETs accepted for search strings (RFC 9051 §6.4.4: US-ASCII and UTF-8 at least),
#: by their IANA names, with the Python codec for each.
SUPPORTED_CHARSETS: dict[str, str] = {
    "UTF-8": "utf-8",
    "US-ASCII": "ascii",
    **{f"ISO-8859-{n}": f"iso8859_{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)},
    **{f"WINDOWS-{n}": f"cp{n}" for n in range(1250, 1259)},
    "KOI8-R": "koi8_r",
    "KOI8-U": "koi8_u",
    "ISO-2022-JP": "iso2022_jp",
    "SHIFT_JIS": "shift_jis",
    "EUC-JP": "euc_jp",
    "EUC-KR": "euc_kr",
    "GB2312": "gb2312",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "BIG5": "big5",
}
# Other spellings clients send for the same charsets.
_CHARSET_ALIASES = {
    "UTF8": "UTF-8", "ASCII": "US-ASCII", "LATIN1": "ISO-8859-1", "ISO8859-1": "ISO-8859-1",
    "ISO_8859-1": "ISO-8859-1", "ISO-8859-15": "ISO-8859-15", "CP1252": "WINDOWS-1252",
    "SJIS": "SHIFT_JIS", "X-SJIS": "SHIFT_JIS",
}

#: The BADCHARSET response code (RFC 9051 §7.1) listing what we support.
BADCHARSET = "BADCHARSET (" + " ".join(SUPPORTED_CHARSETS) + ")"


class SearchError(Exception):
    """A search that cannot run, answered ``NO [code] message`` (e.g. an unsupported
    CHARSET: ``code`` is :data:`BADCHARSET`, RFC 9051 §6.4.4)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SearchLimits:
    """Named settings of the search (safe defaults; see docs/imap.md, "Search")."""

    #: Messages a search indexes itself before it answers (the rest is read directly);
    #: bounds the latency a search can add when the background indexer is behind.
    catch_up_per_search: int = 2000
    #: A text key on at most this many candidates reads them rather than asking the index
    #: (an index query costs about the same whatever the candidates).
    scan_below: int = 64
    #: Characters of message text kept in memory during one search, so that several keys
    #: on the same messages read them once.
    cache_chars: int = 32_000_000
    #: What is searchable of a message without an index (with one, the index's own
    #: TextLimits apply, so both paths agree).
    text: TextLimits = field(default_factory=TextLimits)


@dataclass
class SearchContext:
    """What a search runs on: the session's view of the selected mailbox."""

    store: Store
    account: str
    mailbox: str
    #: The session's view: ``messages[i]`` has sequence number ``i + 1`` (UID order).
    messages: Sequence[MessageInfo]
    #: SEARCHRES ``$`` (RFC 5182): UIDs of the saved result; None when nothing is saved.
    saved: Sequence[int] | None = None
    #: Seconds since the epoch for OLDER/YOUNGER; None means now.
    now: float | None = None
    fts: FullTextIndex | None = None
    limits: SearchLimits = field(default_factory=SearchLimits)


def search(ctx: SearchContext, key: SearchKey, charset: str | None = None) -> list[int]:
    """The UIDs of the messages of ``ctx.messages`` that match ``key``, ascending.

    ``charset`` is the CHARSET of the command (None: UTF-8, of which US-ASCII is a subset).
    Raises SearchError for an unsupported charset or a string invalid in it."""
    run = SearchRun(ctx, charset)
    return [run.uids[i] for i in run.match(key)]


def string_decoder(charset: str | None) -> Callable[[bytes], str]:
    """Decode search strings of a CHARSET into folded text (see :func:`fold`)."""
    name = "UTF-8" if charset is None else charset.upper()
    name = _CHARSET_ALIASES.get(name, name)
    codec = SUPPORTED_CHARSETS.get(name)
    if codec is None:
        # RFC 9051 §6.4.4: a tagged NO with BADCHARSET listing the supported ones.
        raise SearchError(f"charset {charset} is not supported", BADCHARSET)

    def decode(value: bytes) -> str:
        try:
            return fold(value.decode(codec))
        except UnicodeDecodeError:
            raise SearchError(f"a search string is not valid {name}") from None

    return decode


# -- evaluation ------------------------------------------------------------------------


_ALL, _INFO, _INDEX, _READ_HEADER, _READ_BODY = range(5)  # costs, cheapest first


class _Node:
    cost = _ALL

    def run(self, s: SearchRun, cands: list[int]) -> list[int]:
        raise NotImplementedError


class _Everything(_Node):
    def run(self, s: SearchRun, cands: list[int]) -> list[int]:
        return cands


class _Nothing(_Node):
    def run(self, s: SearchRun, cands: list[int]) -> list[int]:
        return []


class _Ranges(_Node):
    """Sequence numbers (as indices) or UIDs in merged, sorted intervals."""

    def __init__(self, intervals: list[tuple[int, int]], by_uid: bool) -> None:
        intervals.sort()
        merged: list[list[int]] = []
        for lo, hi in intervals:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.starts = [lo for lo, _ in merged]
        self.ends = [hi for _, hi in merged]
        self.by_uid = by_uid

    def run(self, s: SearchRun, cands: list[int]) -> list[int]:
        starts, ends = self.starts, self.ends
        uids = s.uids
        out = []
        for i in cands:
            value = uids[i] if self.by_uid else i
            pos = bisect_right(starts, value) - 1
            if pos >= 0 and value <= ends[pos]:
                out.append(i)
        return out


class _Info(_Node):
    cost = _INFO

    def __init__(self, test: Callable[[MessageInfo], bool]) -> None:
        self.test = test

    def run(self, s: SearchRun, cands: list[int]) -> list[int]:
        messages, test = s.messages, self.test
        return [i for i in cands if test(messages[i])]


class _Text(_Node):
    """TEXT, BODY, or one of FROM/TO/CC/BCC/SUBJECT (``target``), or HEADER ``name``."""

    def __init__(self, target: str, needle: str, name: str | None = None) -> None:
        self.target = target  # "text", "body", a FIELD_COLUMNS name, or "header"
        self.needle = needle
        self.name = name
        self.body = target in ("text", "body")
        self.cost = _READ_BODY if self.body else _READ_HEADER

    def matches(self, text: MessageText) -> bool:
        if self.target == "header":
            assert self.name is not None
            return header_contains(text.head, self.name, self.needle)
        return text.contains(self.target, self.needle)

    def run(self, s: SearchRun, cands: list[int]) -> list[int]:
        if not cands:
            return []
        answer = s.index_answer(self) if len(cands) > s.limits.scan_below else None
        uids = s.uids
        out = []
        for i in cands:
            uid = uids[i]
            if answer is not None and answer.coverage.covers(uid):
                if uid in answer.matches:
                    out.append(i)
            elif self.matches(s.text(i, body=self.body)):
                out.append(i)
        return out


class _Sent(_Node):
    """SENTBEFORE / SENTON / SENTSINCE: the Date: field's own calendar date."""

    cost = _READ_HEADER

    def __init__(self, op: str, day: datetime.date) -> None:
        self.op = op
        self.day = day.isoformat()

    def run(self, s: SearchRun, cands: list[int]) -> list[int]:
        facts = s.facts(cands)
        out = []
        for i in cands:
            day = facts[i].sent_day
            if day is None:  # no usable Date: the internal date stands in (UTC)
                day = _utc_day(s.messages[i].internal_date)
            if (day < self.day if self.op == "BEFORE"
                    else day == self.day if self.op == "ON" else day >= self.day):
                out.append(i)
        return out


class _Composite(_Node):
    """A node made of other nodes. ``steps`` is a generator that yields (child, candidates)
    and receives the child's result, so :func:`_evaluate` walks any nesting depth (a line
    of 5000 NOTs is legal) without recursion."""

    def steps(self, s: SearchRun, cands: list[int]) -> Generator[
            tuple[_Node, list[int]], list[int], list[int]]:
        raise NotImplementedError

    def run(self, s: SearchRun, cands: list[int]) -> list[int]:
        return _evaluate(self, s, cands)


def _evaluate(node: _Node, s: SearchRun, cands: list[int]) -> list[int]:
    if not isinstance(node, _Composite):
        return node.run(s, cands)
    stack = [node.steps(s, cands)]
    value: list[int] | None = None
    while stack:
        try:
            child, child_cands = stack[-1].send(value)  # type: ignore[arg-type]
        except StopIteration as stop:
            stack.pop()
            value = stop.value
            continue
        if isinstance(child, _Composite):
            stack.append(child.steps(s, child_cands))
            value = None
        else:
            value = child.run(s, child_cands)
    assert value is not None
    return value


class _And(_Composite):
    def __init__(self, children: list[_Node]) -> None:
        # Cheap keys first: each key only looks at what the previous ones left.
        self.children = sorted(children, key=lambda c: c.cost)
        self.cost = max((c.cost for c in children), default=_ALL)

    def steps(self, s: SearchRun, cands: list[int]) -> Generator[
            tuple[_Node, list[int]], list[int], list[int]]:
        for child in self.children:
            if not cands:
                break
            cands = yield child, cands
        return cands


class _Or(_Composite):
    def __init__(self, left: _Node, right: _Node) -> None:
        self.left, self.right = sorted((left, right), key=lambda c: c.cost)
        self.cost = max(left.cost, right.cost)

    def steps(self, s: SearchRun, cands: list[int]) -> Generator[
            tuple[_Node, list[int]], list[int], list[int]]:
        first = yield self.left, cands
        if len(first) == len(cands):
            return cands
        found = set(first)
        second = yield self.right, [i for i in cands if i not in found]
        return sorted(first + second)


class _Not(_Composite):
    def __init__(self, child: _Node) -> None:
        self.child = child
        self.cost = child.cost

    def steps(self, s: SearchRun, cands: list[int]) -> Generator[
            tuple[_Node, list[int]], list[int], list[int]]:
        found = set((yield self.child, cands))
        return [i for i in cands if i not in found]


def _flag_test(flag: str, *, present: bool) -> Callable[[MessageInfo], bool]:
    system = {name.lower(): name for name in SYSTEM_FLAG_BITS}.get(flag.lower())
    if system is not None:
        # The store and the parser both spell system flags canonically ("\\Seen").
        if present:
            return lambda m: system in m.flags
        return lambda m: system not in m.flags
    # Keywords compare case-insensitively (the store keeps one spelling per mailbox).
    wanted = flag.lower()
    return lambda m: any(f.lower() == wanted for f in m.flags) is present


def _utc_day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).date().isoformat()


def _day_start(day: datetime.date) -> int:
    """The first second of a UTC calendar day (RFC 9051: dates compare in the server's
    zone; the store keeps UTC)."""
    return calendar.timegm(day.timetuple())


def _date_test(op: str, day: datetime.date, attr: str) -> Callable[[MessageInfo], bool]:
    start = _day_start(day)
    end = start + 86400
    if op == "BEFORE":
        return lambda m: getattr(m, attr) < start
    if op == "ON":
        return lambda m: start <= getattr(m, attr) < end
    return lambda m: getattr(m, attr) >= start


class SearchRun:
    """One search (or SORT/THREAD) over a mailbox view: compiles keys, evaluates them, and
    caches the message text and facts it reads. Not thread-safe; one per command."""

    def __init__(self, ctx: SearchContext, charset: str | None = None) -> None:
        self.ctx = ctx
        self.decode = string_decoder(charset)
        self.messages: Sequence[MessageInfo] = ctx.messages
        self.uids: list[int] = [m.uid for m in ctx.messages]
        self.limits = ctx.limits
        self.fts = ctx.fts
        self.text_limits = ctx.fts.limits.text if ctx.fts is not None else ctx.limits.text
        self._index_ready = False
        self._answers: dict[tuple[str, str, str | None], IndexAnswer | None] = {}
        self._texts: OrderedDict[int, MessageText] = OrderedDict()
        self._cached_chars = 0
        self._facts: dict[int, MessageFacts] = {}
        self._now = ctx.now

    def match(self, key: SearchKey) -> list[int]:
        """Indices (sequence number - 1) of the matching messages, ascending."""
        return _evaluate(self.compile(key), self, list(range(len(self.messages))))

    # -- compiling ------------------------------------------------------------------------

    def compile(self, key: SearchKey) -> _Node:
        """Turn a search key into an evaluation tree, decoding its strings (raises
        SearchError). Iterative, so that nesting depth costs no Python stack."""
        # Post-order over the key tree: children compiled before their parent.
        done: dict[int, _Node] = {}
        stack: list[tuple[SearchKey, bool]] = [(key, False)]
        while stack:
            k, expanded = stack.pop()
            children = [a for a in k.args if isinstance(a, SearchKey)] \
                if k.kind in ("AND", "OR", "NOT") else []
            if children and not expanded:
                stack.append((k, True))
                stack.extend((c, False) for c in children)
                continue
            done[id(k)] = self._node(k, [done[id(c)] for c in children])
        return done[id(key)]

    def _node(self, key: SearchKey, children: list[_Node]) -> _Node:
        kind, args = key.kind, key.args
        try:
            if kind == "ALL":
                return _Everything()
            if kind == "AND":
                return _And(children)
            if kind == "OR":
                if len(children) != 2:
                    raise SearchError("OR takes two search keys")
                return _Or(children[0], children[1])
            if kind == "NOT":
                if len(children) != 1:
                    raise SearchError("NOT takes one search key")
                if isinstance(children[0], _Not):
                    return children[0].child  # NOT NOT x is x
                return _Not(children[0])
            if kind in ("SEQUENCE", "UID"):
                return self._sequence(args[0], by_uid=kind == "UID")
            if kind in ("FLAG", "NOFLAG"):
                return _Info(_flag_test(str(args[0]), present=kind == "FLAG"))
            if kind == "RECENT":
                return _Nothing()  # no \\Recent in this server (IMAP4rev2 dropped it)
            if kind == "HEADER":
                name = fold(str(args[0]))
                needle = self.decode(bytes(args[1]))
                if name in FIELD_COLUMNS:
                    return _Text(name, needle)
                return _Text("header", needle, name)
            if kind in ("BODY", "TEXT"):
                return _Text(kind.lower(), self.decode(bytes(args[0])))
            if kind in ("BEFORE", "ON", "SINCE"):
                return _Info(_date_test(kind, _as_date(args[0]), "internal_date"))
            if kind in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
                # RFC 8514 §2.2: the date the message was saved in this mailbox.
                return _Info(_date_test(kind[5:], _as_date(args[0]), "save_date"))
            if kind == "SAVEDATESUPPORTED":
                return _Everything()  # RFC 8514 §2.2: every mailbox here has save dates
            if kind in ("SENTBEFORE", "SENTON", "SENTSINCE"):
                return _Sent(kind[4:], _as_date(args[0]))
            if kind in ("LARGER", "SMALLER"):
                size = _as_int(args[0])
                if kind == "LARGER":
                    return _Info(lambda m: m.size > size)
                return _Info(lambda m: m.size < size)
            if kind in ("OLDER", "YOUNGER"):
                # RFC 5032 §3: relative to now, in seconds; both ends inclusive.
                now = time.time() if self._now is None else self._now
                limit = now - _as_int(args[0])
                if kind == "OLDER":
                    return _Info(lambda m: m.internal_date <= limit)
                return _Info(lambda m: m.internal_date >= limit)
            if kind == "MODSEQ":
                # RFC 7162 §3.1.5: mod-sequence equal to or greater than the value.
                modseq = _as_int(args[0])
                return _Info(lambda m: m.modseq >= modseq)
        except (IndexError, TypeError, ValueError) as exc:
            raise SearchError(f"invalid arguments to search key {kind}") from exc
        raise SearchError(f"unknown search key {kind}")

    def _sequence(self, sequence_set: SequenceSet, *, by_uid: bool) -> _Node:
        if sequence_set.saved:
            # RFC 5182 §2.1: "$" is the saved result (UIDs), empty if none was saved.
            saved = sorted(set(self.ctx.saved or ()))
            return _Ranges([(u, u) for u in saved], by_uid=True)
        # "*" is the largest UID, or the number of messages (RFC 9051 §9 seq-number).
        star = (self.uids[-1] if self.uids else 0) if by_uid else len(self.uids)
        intervals = []
        for first, last in sequence_set.ranges:
            a = star if first is None else int(first)
            b = star if last is None else int(last)
            lo, hi = min(a, b), max(a, b)
            if by_uid:
                intervals.append((lo, hi))
            else:  # sequence numbers as indices
                intervals.append((lo - 1, hi - 1))
        return _Ranges(intervals, by_uid=by_uid)

    # -- reading ------------------------------------------------------------------------

    def index_answer(self, node: _Text) -> IndexAnswer | None:
        """The index's answer for a text key, or None if there is no usable index."""
        key = (node.target, node.needle, node.name)
        if key in self._answers:
            return self._answers[key]
        answer = None
        if self._prepare_index():
            assert self.fts is not None
            ctx = self.ctx
            try:
                if node.target == "header":
                    assert node.name is not None
                    answer = self.fts.search_header(ctx.account, ctx.mailbox, node.name,
                                                    node.needle)
                else:
                    answer = self.fts.search_text(ctx.account, ctx.mailbox, node.target,
                                                  node.needle)
            except IndexUnavailable as exc:
                self._index_failed(exc)
        self._answers[key] = answer
        return answer

    def _prepare_index(self) -> bool:
        """Bring the index up to date with the view (within the per-search budget) once."""
        if self.fts is None:
            return False
        if not self._index_ready:
            self._index_ready = True
            ctx = self.ctx
            try:
                self.fts.catch_up(ctx.account, ctx.mailbox, self.messages,
                                  max_messages=self.limits.catch_up_per_search)
            except IndexUnavailable as exc:
                self._index_failed(exc)
        return self.fts is not None

    def _index_failed(self, exc: Exception) -> None:
        log(logger, "full-text index not usable; reading messages", logging.WARNING,
            account=self.ctx.account, mailbox=self.ctx.mailbox, error=str(exc))
        self.fts = None

    def _load(self, i: int, body: bool) -> tuple[MessageText, MessageFacts]:
        ctx = self.ctx
        uid = self.uids[i]
        try:
            return load_message(ctx.store, ctx.account, ctx.mailbox, uid, self.text_limits,
                                body=body)
        except StoreError as exc:
            # Expunged by another session meanwhile, or unreadable: it matches no text.
            log(logger, "message not readable for search", logging.DEBUG,
                account=ctx.account, mailbox=ctx.mailbox, uid=uid, error=str(exc))
            return MessageText("", "", dict.fromkeys(FIELD_COLUMNS)), MessageFacts()

    def text(self, i: int, *, body: bool) -> MessageText:
        """The searchable text of message ``i`` (read once per search while it fits)."""
        cached = self._texts.get(i)
        if cached is not None and (cached.body is not None or not body):
            self._texts.move_to_end(i)
            return cached
        text, facts = self._load(i, body)
        self._facts.setdefault(i, facts)
        if cached is not None:
            self._texts.pop(i)
            self._cached_chars -= len(cached.head) + len(cached.body or "")
        self._texts[i] = text
        self._cached_chars += len(text.head) + len(text.body or "")
        while self._cached_chars > self.limits.cache_chars and len(self._texts) > 1:
            _, old = self._texts.popitem(last=False)
            self._cached_chars -= len(old.head) + len(old.body or "")
        return text

    def facts(self, indices: Sequence[int]) -> dict[int, MessageFacts]:
        """:class:`MessageFacts` of messages, from the index where it has them."""
        missing = [i for i in indices if i not in self._facts]
        if len(missing) > self.limits.scan_below and self._prepare_index():
            assert self.fts is not None
            ctx = self.ctx
            uids = self.uids
            try:
                stored = self.fts.facts(ctx.account, ctx.mailbox, [uids[i] for i in missing])
            except IndexUnavailable as exc:
                self._index_failed(exc)
            else:
                for i in missing:
                    found = stored.facts.get(uids[i])
                    if found is not None:
                        self._facts[i] = found
                missing = [i for i in missing if i not in self._facts]
        for i in missing:
            self.text(i, body=False)  # reads the header: text and facts
        return {i: self._facts[i] for i in indices}


def _as_date(value: object) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    raise TypeError("a date is needed")


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("a number is needed")
    return value
