"""mbox (mboxrd) import and export: parsing, quoting, flags, round trips, resumability."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.store.mbox import (
    export_mbox,
    format_message,
    import_mbox,
    iter_mbox,
    parse_from_date,
    split_mbox_headers,
)

from .conftest import ACCOUNT

SAMPLE = b"""\
From alice@example.org Thu Jan  1 00:00:00 2015
Subject: first
Status: RO
X-Status: AF
X-Keywords: Work $Junk

>From the start of a line
>>From quoted once
body

From MAILER-DAEMON Fri Feb 13 23:31:30 2009
Subject: second
X-Mozilla-Status: 0001

no trailing blank line
"""


def parse(data: bytes, **kwargs) -> list:
    return list(iter_mbox(io.BytesIO(data), **kwargs))


def test_iter_mbox_splits_and_unquotes() -> None:
    first, second = parse(SAMPLE)
    assert first.from_line == b"From alice@example.org Thu Jan  1 00:00:00 2015"
    assert first.data.endswith(b"\nFrom the start of a line\n>From quoted once\nbody\n")
    assert second.data == b"Subject: second\nX-Mozilla-Status: 0001\n\nno trailing blank line\n"
    assert second.offset == SAMPLE.index(b"From MAILER-DAEMON")


def test_from_dates() -> None:
    assert parse_from_date(b"From a@b Thu Jan  1 00:00:00 1970") == 0.0
    assert parse_from_date(b"From a@b Fri Feb 13 23:31:30 2009") == 1234567890.0
    assert parse_from_date(b"From a@b Fri Feb 13 23:31:30 +0100 2009") == 1234567890.0 - 3600
    assert parse_from_date(b"From a@b") is None


def test_flags_come_from_headers_which_are_removed() -> None:
    first, _ = parse(SAMPLE)
    text, found = split_mbox_headers(first.data)
    assert b"Status" not in text and b"X-Keywords" not in text
    assert text.startswith(b"Subject: first\n\nFrom the start")
    assert found[b"status"] == b"RO" and found[b"x-status"] == b"AF"


async def test_import_mbox_file(store, tmp_path: Path) -> None:
    path = tmp_path / "old.mbox"
    path.write_bytes(SAMPLE)
    report = await import_mbox(store, ACCOUNT, path, mailbox="Old")
    assert (report.imported, report.failed) == (2, 0)
    first, second = store.list_messages(ACCOUNT, "Old")
    assert first.flags == ("\\Seen", "\\Answered", "\\Flagged", "$Junk", "Work")
    assert first.internal_date == 1420070400.0
    assert second.flags == ("\\Seen",)  # from X-Mozilla-Status
    assert store.read_message(ACCOUNT, "Old", first.uid) == (
        b"Subject: first\r\n\r\nFrom the start of a line\r\n>From quoted once\r\nbody\r\n")
    assert b"X-Mozilla-Status: 0001" in store.read_message(ACCOUNT, "Old", second.uid)


async def test_rerun_and_resume(store, tmp_path: Path) -> None:
    path = tmp_path / "many.mbox"
    path.write_bytes(b"".join(
        b"From x@y Thu Jan  1 00:00:%02d 2015\nSubject: %d\n\nbody %d\n\n" % (i, i, i)
        for i in range(10)))
    first = await import_mbox(store, ACCOUNT, path, limit=4)
    assert first.imported == 4 and first.incomplete
    second = await import_mbox(store, ACCOUNT, path)
    assert (second.imported, second.skipped) == (6, 4)
    third = await import_mbox(store, ACCOUNT, path)
    assert (third.imported, third.skipped) == (0, 10)
    subjects = [store.read_message(ACCOUNT, "INBOX", m.uid).split(b"\r\n")[0]
                for m in store.list_messages(ACCOUNT, "INBOX")]
    assert subjects == [b"Subject: %d" % i for i in range(10)]


async def test_thunderbird_tree(store, tmp_path: Path) -> None:
    profile = tmp_path / "Local Folders"
    (profile / "Archives.sbd").mkdir(parents=True)
    (profile / "Inbox").write_bytes(b"From - Thu Jan  1 00:00:00 2015\nSubject: a\n\nx\n\n")
    (profile / "Inbox.msf").write_bytes(b"// mork index, not mail")
    (profile / "Archives.sbd" / "2015").write_bytes(
        b"From - Thu Jan  1 00:00:00 2015\nSubject: b\n\ny\n\n")
    report = await import_mbox(store, ACCOUNT, profile)
    assert report.imported == 2
    assert store.get_mailbox(ACCOUNT, "INBOX").messages == 1
    assert store.get_mailbox(ACCOUNT, "Archives/2015").messages == 1


async def test_oversized_messages_are_skipped_and_reported(store, tmp_path: Path) -> None:
    path = tmp_path / "big.mbox"
    path.write_bytes(b"From a Thu Jan  1 00:00:00 2015\nSubject: big\n\n" + b"x" * 5000 +
                     b"\n\nFrom a Thu Jan  1 00:00:00 2015\nSubject: small\n\ny\n")
    report = await import_mbox(store, ACCOUNT, path, max_message_bytes=1000)
    assert (report.imported, report.failed) == (1, 1)
    assert "over the limit" in report.errors[0]


async def test_round_trip_store_mbox_store(store, tmp_path: Path) -> None:
    messages = [
        b"Subject: plain\r\n\r\nhello\r\n",
        b"Return-Path: <bob@example.org>\r\nSubject: from lines\r\n\r\nFrom here\r\n"
        b">From there\r\n>>From everywhere\r\n",
        b"Subject: no body",
        b"\r\nno header at all\r\n",
        b"Subject: ends with blank lines\r\n\r\nx\r\n\r\n\r\n",
    ]
    flags = [("\\Seen",), ("\\Answered", "\\Flagged", "Work"), (), ("\\Draft", "\\Deleted"),
             ("$Forwarded",)]
    for i, (data, f) in enumerate(zip(messages, flags, strict=True)):
        await store.append(ACCOUNT, "Archive" if i % 2 else "INBOX", data, f,
                           internal_date=1_600_000_000 + i)
    out = tmp_path / "export"
    report = export_mbox(store, ACCOUNT, out)
    assert report.exported == 5
    assert (out / "INBOX.mbox").exists() and (out / "Archive.mbox").exists()
    assert (out / "Sent.mbox").read_bytes() == b""
    archive = (out / "Archive.mbox").read_bytes()
    assert b"\n>From here\n>>From there\n>>>From everywhere\n" in archive  # mboxrd quoting
    assert (out / "Archive.mbox").read_bytes().startswith(b"From bob@example.org ")

    store.ensure_account("copy@example.com")
    back = await import_mbox(store, "copy@example.com", out)
    assert back.imported == 5 and back.failed == 0
    for name in ("INBOX", "Archive"):
        original = store.list_messages(ACCOUNT, name)
        copied = store.list_messages("copy@example.com", name)
        assert [(m.flags, m.internal_date) for m in original] == \
            [(m.flags, m.internal_date) for m in copied]
        for a, b in zip(original, copied, strict=True):
            data = store.read_message(ACCOUNT, name, a.uid)
            expected = data if data.endswith(b"\r\n") else data + b"\r\n"
            assert store.read_message("copy@example.com", name, b.uid) == expected


async def test_export_hierarchy_paths(store, tmp_path: Path) -> None:
    store.create_mailbox(ACCOUNT, "Archive/2024")
    await store.append(ACCOUNT, "Archive/2024", b"Subject: x\r\n\r\ny\r\n")
    export_mbox(store, ACCOUNT, tmp_path / "out")
    assert (tmp_path / "out" / "Archive" / "2024.mbox").read_bytes().count(b"\nSubject: x") == 1


def test_export_refuses_a_non_empty_destination(store, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(FileExistsError):
        export_mbox(store, ACCOUNT, tmp_path / "x")


line = st.one_of(st.sampled_from([b"From x", b">From y", b">>From z", b"", b"Subject: s",
                                  b"From ", b">"]),
                 st.binary(max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b))
bodies = st.lists(line, max_size=12).map(lambda lines: b"".join(x + b"\r\n" for x in lines))


@settings(max_examples=200, deadline=None)
@given(st.lists(bodies, min_size=1, max_size=4))
def test_format_then_parse_round_trips(messages: list[bytes]) -> None:
    mbox = b"".join(format_message(b"Subject: t\r\n\r\n" + m, ("\\Seen",), 0.0)
                    for m in messages)
    parsed = parse(mbox)
    assert len(parsed) == len(messages)
    for original, got in zip(messages, parsed, strict=True):
        text, found = split_mbox_headers(got.data)
        assert found[b"status"] == b"RO"
        assert text == (b"Subject: t\r\n\r\n" + original).replace(b"\r\n", b"\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_parser_accepts_anything(data: bytes) -> None:
    total = 0
    for message in parse(data, max_message_bytes=200):
        assert message.too_big or len(message.data) <= 200
        total += 1
    assert total <= data.count(b"From ") + 1


def test_crlf_mbox_files() -> None:
    data = SAMPLE.replace(b"\n", b"\r\n")
    first, second = parse(data)
    assert first.data.endswith(b"\r\nFrom the start of a line\r\n>From quoted once\r\nbody\r\n")
    assert second.data.endswith(b"no trailing blank line\r\n")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**33))
def test_from_line_dates_round_trip(stamp: int) -> None:
    import time

    line = b"From x@y " + time.asctime(time.gmtime(stamp)).encode()
    assert parse_from_date(line) == float(stamp)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_from_date_parser_accepts_anything(line: bytes) -> None:
    value = parse_from_date(b"From " + line)
    assert value is None or isinstance(value, float)
