"""Header blocks: field ranges for HEADER.FIELDS, and header values decoded for display."""

from __future__ import annotations

import pytest

from mailkeep.mime import decode_header_value, header_fields
from mailkeep.mime.header import collect_fields, find_header_end

HEADER = (
    b"Received: from a\r\n"
    b"\tby b; Mon, 7 Aug 2023 09:15:00 +0200\r\n"
    b"Subject : spaced name\r\n"
    b"X-Empty:\r\n"
    b"not a field line\r\n"
    b"From: a@example.com\r\n"
    b"\r\n"
    b"Body-Looking: not a header\r\n"
)


def test_header_fields_ranges_include_folds_and_line_ends() -> None:
    fields = header_fields(HEADER, 0, len(HEADER))
    assert [(name, HEADER[s:e]) for name, s, e in fields] == [
        (b"received", b"Received: from a\r\n\tby b; Mon, 7 Aug 2023 09:15:00 +0200\r\n"),
        (b"subject", b"Subject : spaced name\r\n"),
        (b"x-empty", b"X-Empty:\r\n"),
        (b"", b"not a field line\r\n"),
        (b"from", b"From: a@example.com\r\n"),
    ]


def test_header_fields_lf_only_and_unterminated() -> None:
    data = b"A: 1\n  more\nB: 2"
    assert header_fields(data, 0, len(data)) == [(b"a", 0, 12), (b"b", 12, 16)]


def test_header_fields_respects_range() -> None:
    data = b"junk\r\nX: 1\r\nY: 2\r\n\r\n"
    start = 6
    fields = header_fields(data, start, len(data))
    assert [(n, data[s:e]) for n, s, e in fields] == [(b"x", b"X: 1\r\n"), (b"y", b"Y: 2\r\n")]


def test_header_fields_leading_continuation_is_nameless() -> None:
    data = b" folded start\r\nA: b\r\n\r\n"
    assert header_fields(data, 0, len(data)) == [(b"", 0, 15), (b"a", 15, 21)]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"A: b\r\n\r\nbody", (6, 8, False)),
        (b"A: b\n\nbody", (5, 6, False)),
        (b"\r\nbody", (0, 2, False)),
        (b"\nbody", (0, 1, False)),
        (b"A: b\r\n", (6, 6, False)),
        (b"", (0, 0, False)),
        (b"A: b\r\nB: c\r\n\nmixed", (12, 13, False)),
    ],
)
def test_find_header_end(data: bytes, expected: tuple[int, int, bool]) -> None:
    assert find_header_end(data, 0, len(data), 1 << 20) == expected


def test_find_header_end_limit_cuts_at_a_line_end() -> None:
    data = b"A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody"
    assert find_header_end(data, 0, len(data), 14) == (12, 12, True)


def test_collect_fields_unfolds_and_keeps_first() -> None:
    data = b"Subject: one\r\n two\r\nsubject: again\r\nTo:\tx@y\r\n"
    values, over = collect_fields(data, 0, len(data), frozenset({b"subject", b"to"}), 10)
    assert values == {b"subject": b"one two", b"to": b"x@y"}
    assert not over
    _, over = collect_fields(data, 0, len(data), frozenset({b"to"}), 2)
    assert over


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain text", "plain text"),
        (b"=?utf-8?q?caf=C3=A9?=", "café"),
        (b"=?UTF-8?B?w6l0w6k=?=", "été"),
        (b"=?iso-8859-1?q?=E9t=E9?= and more", "été and more"),
        # RFC 2047 §6.2: white space between adjacent encoded-words is not displayed.
        (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
        (b"=?utf-8?q?a?=\r\n =?utf-8?q?b?=", "ab"),
        (b"=?utf-8?q?a?= x =?utf-8?q?b?=", "a x b"),
        (b"=?utf-8?q?hello_world?=", "hello world"),
        # A UTF-8 character split across two words still decodes.
        (b"=?utf-8?B?4oI=?= =?utf-8?B?rA==?=", "€"),
        # RFC 2231 §5 language in an encoded-word.
        (b"=?utf-8*en?q?hi?=", "hi"),
        # Unknown charset: decoded as UTF-8 rather than dropped.
        (b"=?x-nonsense?q?abc?=", "abc"),
        # Refused codec names are not used.
        (b"=?idna?q?xn--caf-dma?=", "xn--caf-dma"),
        # Broken base64 padding is repaired.
        (b"=?utf-8?b?w6l0w6k?=", "été"),
        # Raw UTF-8 (RFC 6532).
        ("Grüße aus Köln".encode(), "Grüße aus Köln"),
        # Invalid bytes become replacement characters.
        (b"caf\xe9", "caf\ufffd"),
        (b"  folded\r\n\tvalue  ", "folded\tvalue"),
        (b"=?utf-8?q?unterminated", "=?utf-8?q?unterminated"),
        (b"", ""),
    ],
)
def test_decode_header_value(raw: bytes, text: str) -> None:
    assert decode_header_value(raw) == text


def test_decode_header_value_mislabelled_ascii() -> None:
    assert decode_header_value(b"=?us-ascii?q?=C3=A9?=") == "é"
    assert decode_header_value(b"=?iso-8859-1?q?=80?=") == "€"  # read as windows-1252
