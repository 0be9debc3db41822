"""IMAP response serialization: the bytes the server sends (RFC 9051 §7, §9; RFC 3501 §7).

Small pure helpers the session builds its replies with: status responses (tagged, untagged,
BYE, continuation), and the data formats that appear inside them: astrings, mailbox names in
modified UTF-7 (IMAP4rev1, RFC 3501 §5.1.3) or UTF-8 (IMAP4rev2 and UTF8=ACCEPT, RFC 9051
§5.1, RFC 6855 §3), flag lists, compact sequence sets (COPYUID of RFC 4315, ESEARCH ALL of
RFC 4731, VANISHED of RFC 7162), INTERNALDATE and literal8 (RFC 3516). Free text that ends
up in a status line is stripped of CR and LF, so nothing a client or a message supplied can
forge a second response line.

Also here: resolving a parsed sequence set against a mailbox (``*`` and reversed ranges,
RFC 9051 §9 seq-range), the inverse of :func:`sequence_set`.
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Iterable, Sequence
from typing import Literal

from mailkeep.imap.commands import SequenceSet
from mailkeep.imap.parser import parse_sequence_set
from mailkeep.mime.imap import imap_string
from mailkeep.store import mutf7

__all__ = [
    "astring",
    "bye",
    "continuation",
    "decode_mailbox_name",
    "flag_list",
    "internal_date",
    "literal8",
    "mailbox_name",
    "parse_sequence_set",
    "resolve_sequence_set",
    "sequence_set",
    "tagged",
    "untagged",
]

CRLF = b"\r\n"
# 1*ASTRING-CHAR (RFC 9051 §9): ATOM-CHAR or "]", ASCII only.
_ASTRING_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')
_LINE_BREAKS = re.compile(r"[\r\n]+")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Status = Literal["OK", "NO", "BAD"]


def _one_line(text: str) -> bytes:
    return _LINE_BREAKS.sub(" ", text).encode("utf-8", "replace")


def _status_text(text: str, code: str | None) -> bytes:
    """resp-text = ["[" resp-text-code "]" SP] [text] (RFC 9051 §9)."""
    if code:
        return b"[" + _one_line(code) + b"] " + _one_line(text)
    return _one_line(text)


def tagged(tag: str, status: Status, text: str, code: str | None = None) -> bytes:
    """``tag OK [code] text`` CRLF (RFC 9051 §7.1)."""
    if status not in ("OK", "NO", "BAD"):
        raise ValueError(f"not a tagged status: {status!r}")
    return tag.encode("ascii") + b" " + status.encode() + b" " + _status_text(text, code) + CRLF


def untagged(text: bytes | str) -> bytes:
    """``* text`` CRLF. ``text`` is sent as given: it may hold literals, whose CRLFs are
    part of the syntax, so building it safely is the caller's job."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    return b"* " + text + CRLF


def continuation(text: str = "Ready") -> bytes:
    """``+ text`` CRLF (RFC 9051 §7.6); also carries base64 SASL challenges."""
    return b"+ " + _one_line(text) + CRLF


def bye(text: str, code: str | None = None) -> bytes:
    """``* BYE [code] text`` CRLF (RFC 9051 §7.1.5)."""
    return b"* BYE " + _status_text(text, code) + CRLF


def astring(value: bytes, utf8: bool = False) -> bytes:
    """``value`` as an astring: an atom when it is one, else quoted or a literal
    (RFC 9051 §4.3). ``NIL`` is quoted so no client can mistake it for nil."""
    if _ASTRING_ATOM.fullmatch(value) and value.upper() != b"NIL":
        return value
    return imap_string(value, utf8=utf8)


def literal8(data: bytes) -> bytes:
    """``~{n}`` CRLF data (RFC 3516 §4.2): for BINARY[...] content that may hold NUL."""
    return b"~{%d}\r\n" % len(data) + data


def mailbox_name(name: str, utf8: bool) -> bytes:
    """A mailbox name as sent in LIST, STATUS etc.: modified UTF-7 for IMAP4rev1 clients
    (RFC 3501 §5.1.3), UTF-8 once IMAP4rev2 or UTF8=ACCEPT is in effect (RFC 9051 §5.1,
    RFC 6855 §3). Raises ValueError for names no encoding can carry (lone surrogates)."""
    if utf8:
        return astring(name.encode("utf-8"), utf8=True)
    return astring(mutf7.encode(name).encode("ascii"))


def decode_mailbox_name(raw: bytes, utf8: bool) -> str:
    """The inverse of :func:`mailbox_name` for a name the parser read: UTF-8, or strict
    modified UTF-7 for IMAP4rev1. Raises ValueError for an invalid encoding and for control
    characters, which RFC 9051 §5.1 tells clients not to use and which no name here holds.
    """
    # RFC 3501 §5.1.3: a rev1 name is 7-bit; 8-bit octets mean the client did not encode.
    name = raw.decode("utf-8") if utf8 else mutf7.decode(raw.decode("ascii"))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError("a mailbox name cannot contain control characters")
    return name


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Junk)`` (RFC 9051 §9 flag-list)."""
    return b"(" + " ".join(flags).encode("utf-8") + b")"


def sequence_set(numbers: Iterable[int]) -> bytes:
    """The shortest ascending sequence-set for ``numbers``: ``1:3,7,9:10``; ``b""`` when
    there are none. Numbers are sorted and de-duplicated, so for COPYUID (RFC 4315 §3) the
    caller passes source and destination UIDs that correspond in ascending order."""
    ordered = sorted(set(numbers))
    if not ordered:
        return b""
    parts: list[bytes] = []
    start = previous = ordered[0]
    for n in ordered[1:]:
        if n != previous + 1:
            parts.append(b"%d" % start if start == previous else b"%d:%d" % (start, previous))
            start = n
        previous = n
    parts.append(b"%d" % start if start == previous else b"%d:%d" % (start, previous))
    return b",".join(parts)


def resolve_sequence_set(seq: SequenceSet, largest: int) -> list[tuple[int, int]]:
    """The ranges of ``seq`` with ``*`` replaced by ``largest`` (the highest message number
    or UID in use), each put in order (RFC 9051 §9: ``4:2`` is ``2:4``), sorted, and merged
    where they overlap or touch. With an empty mailbox (``largest == 0``) ``*`` matches
    nothing. ``$`` (SEARCHRES) must be replaced by the caller first: ValueError."""
    if seq.saved:
        raise ValueError("the saved search result ($) must be resolved by the session")
    spans: list[tuple[int, int]] = []
    for first, last in seq.ranges:
        if largest < 1 and (first is None or last is None):
            continue
        a = largest if first is None else first
        b = largest if last is None else last
        if a > b:
            a, b = b, a
        if b < 1:
            continue
        spans.append((max(a, 1), b))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + 1:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def in_sequence_ranges(ranges: Sequence[tuple[int, int]], number: int) -> bool:
    """Whether ``number`` lies in ranges as :func:`resolve_sequence_set` returns them
    (sorted, disjoint): a binary search, so a set like ``1:4294967295`` costs nothing."""
    i = bisect.bisect_right(ranges, (number, 2**63)) - 1
    return i >= 0 and ranges[i][0] <= number <= ranges[i][1]


def internal_date(ts: float) -> bytes:
    """INTERNALDATE as a quoted date-time in UTC: ``"17-Jul-1996 09:44:25 +0000"``
    (RFC 9051 §9 date-time)."""
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
    )
