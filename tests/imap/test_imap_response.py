"""IMAP response serialization: the exact bytes of status lines and data formats."""

from __future__ import annotations

import calendar

import pytest

from mailkeep.imap.commands import SequenceSet
from mailkeep.imap.response import (
    astring,
    bye,
    continuation,
    decode_mailbox_name,
    flag_list,
    internal_date,
    literal8,
    mailbox_name,
    parse_sequence_set,
    resolve_sequence_set,
    sequence_set,
    tagged,
    untagged,
)


def test_tagged() -> None:
    assert tagged("A142", "OK", "SELECT completed", "READ-WRITE") == (
        b"A142 OK [READ-WRITE] SELECT completed\r\n")
    assert tagged("a", "NO", "Mailbox does not exist", "TRYCREATE") == (
        b"a NO [TRYCREATE] Mailbox does not exist\r\n")
    assert tagged("a", "BAD", "Unknown command") == b"a BAD Unknown command\r\n"
    with pytest.raises(ValueError):
        tagged("a", "MAYBE", "x")  # type: ignore[arg-type]


def test_status_text_cannot_inject_a_line() -> None:
    # Text that came from a client or a message must not end the line early.
    assert tagged("a", "NO", "no such mailbox: x\r\na OK fake") == (
        b"a NO no such mailbox: x a OK fake\r\n")
    assert continuation("line\nbreak") == b"+ line break\r\n"
    assert bye("bye\r\n* OK", "ALERT") == b"* BYE [ALERT] bye * OK\r\n"


def test_untagged_continuation_bye() -> None:
    assert untagged("23 EXISTS") == b"* 23 EXISTS\r\n"
    assert untagged(b"1 FETCH (BODY[] {2}\r\nhi)") == b"* 1 FETCH (BODY[] {2}\r\nhi)\r\n"
    assert continuation() == b"+ Ready\r\n"
    assert continuation("cj1yb3NlLHM9") == b"+ cj1yb3NlLHM9\r\n"
    assert bye("Autologout; idle for too long") == b"* BYE Autologout; idle for too long\r\n"


def test_astring() -> None:
    assert astring(b"INBOX") == b"INBOX"
    assert astring(b"a]b") == b"a]b"
    assert astring(b"") == b'""'
    assert astring(b"two words") == b'"two words"'
    assert astring(b"50%") == b'"50%"'
    assert astring(b'say "hi"\\') == b'"say \\"hi\\"\\\\"'
    assert astring(b"NIL") == b'"NIL"'
    assert astring(b"nil") == b'"nil"'
    assert astring(b"line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert astring("Grüße".encode()) == b"{7}\r\nGr\xc3\xbc\xc3\x9fe"
    assert astring("Grüße".encode(), utf8=True) == b'"Gr\xc3\xbc\xc3\x9fe"'


def test_literal8() -> None:
    assert literal8(b"a\x00b") == b"~{3}\r\na\x00b"
    assert literal8(b"") == b"~{0}\r\n"


def test_mailbox_name_rev1_is_modified_utf7() -> None:
    # RFC 3501 §5.1.3 example
    assert mailbox_name("~peter/mail/台北/日本語", utf8=False) == (
        b"~peter/mail/&U,BTFw-/&ZeVnLIqe-")
    assert mailbox_name("Tom & Jerry", utf8=False) == b'"Tom &- Jerry"'
    assert mailbox_name("INBOX", utf8=False) == b"INBOX"


def test_mailbox_name_utf8() -> None:
    assert mailbox_name("Entwürfe", utf8=True) == b'"Entw\xc3\xbcrfe"'
    assert mailbox_name("Sent", utf8=True) == b"Sent"
    assert mailbox_name('a"b', utf8=True) == b'"a\\"b"'
    with pytest.raises(ValueError):
        mailbox_name("bad\ud800", utf8=True)
    with pytest.raises(ValueError):
        mailbox_name("bad\ud800", utf8=False)


def test_decode_mailbox_name() -> None:
    assert decode_mailbox_name(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-", utf8=False) == (
        "~peter/mail/台北/日本語")
    assert decode_mailbox_name(b"Tom &- Jerry", utf8=False) == "Tom & Jerry"
    assert decode_mailbox_name("Entwürfe".encode(), utf8=True) == "Entwürfe"
    # "&" kept literally in a UTF-8 session
    assert decode_mailbox_name(b"A&B", utf8=True) == "A&B"
    for raw, utf8 in ((b"&Jjo!", False), (b"&U,BTFw", False), ("Entwürfe".encode(), False),
                      (b"\xff", True), (b"a\x01b", True), (b"&AAE-", False),
                      (b"&AGEAYgBj-", False)):
        with pytest.raises(ValueError):
            decode_mailbox_name(raw, utf8=utf8)


def test_flag_list() -> None:
    assert flag_list(["\\Seen", "$Junk"]) == b"(\\Seen $Junk)"
    assert flag_list([]) == b"()"


def test_sequence_set() -> None:
    assert sequence_set([1, 2, 3, 7, 9, 10]) == b"1:3,7,9:10"
    assert sequence_set([10, 9, 3, 3, 1, 2]) == b"1:3,9:10"
    assert sequence_set([5]) == b"5"
    assert sequence_set([]) == b""
    assert sequence_set(range(1, 100001)) == b"1:100000"


def test_resolve_sequence_set() -> None:
    assert resolve_sequence_set(parse_sequence_set("1:3,7,9:*"), 12) == [
        (1, 3), (7, 7), (9, 12)]
    # RFC 9051 §9: "4:2" is "2:4"; overlapping and adjacent ranges merge.
    assert resolve_sequence_set(parse_sequence_set("4:2,3:6,8,7"), 10) == [(2, 8)]
    # "*" is the largest number in use, even where that reverses the range.
    assert resolve_sequence_set(parse_sequence_set("5:*"), 3) == [(3, 5)]
    assert resolve_sequence_set(parse_sequence_set("*"), 0) == []
    assert resolve_sequence_set(parse_sequence_set("1:*,4"), 0) == [(4, 4)]
    with pytest.raises(ValueError):
        resolve_sequence_set(SequenceSet(saved=True), 5)


def test_internal_date() -> None:
    ts = calendar.timegm((1996, 7, 17, 9, 44, 25))
    assert internal_date(ts) == b'"17-Jul-1996 09:44:25 +0000"'
    assert internal_date(calendar.timegm((2024, 1, 2, 3, 4, 5)) + 0.9) == (
        b'"02-Jan-2024 03:04:05 +0000"')


def test_in_sequence_ranges() -> None:
    from mailkeep.imap.response import in_sequence_ranges

    ranges = resolve_sequence_set(parse_sequence_set("1:3,7,9:4294967295"), 12)
    assert [n for n in range(0, 12) if in_sequence_ranges(ranges, n)] == [1, 2, 3, 7, 9, 10, 11]
    assert in_sequence_ranges(ranges, 4294967295)
    assert not in_sequence_ranges([], 1)
