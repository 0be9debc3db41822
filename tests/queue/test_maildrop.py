"""The maildrop: what `mailkeep sendmail` leaves for the server, read back as the server's
pickup reads it."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.queue import maildrop
from mailkeep.queue.maildrop import DropError, ensure_maildrop, list_drops, read_drop, write_drop


@pytest.fixture
def drop_dir(tmp_path: Path) -> Path:
    path = tmp_path / "maildrop"
    ensure_maildrop(path)
    return path


def drop(drop_dir: Path, data: bytes, recipients=("rcpt@example.net",), sender=None,
         **kwargs) -> tuple[maildrop.Drop, bytes]:
    path = write_drop(drop_dir, sender, list(recipients), io.BytesIO(data), **kwargs)
    result = read_drop(path)
    content = path.read_bytes()[result.offset:]
    assert len(content) == result.size
    return result, content


def test_maildrop_directory_is_a_sticky_drop_box(drop_dir: Path) -> None:
    mode = stat.S_IMODE(drop_dir.stat().st_mode)
    assert mode == 0o1733  # anyone may drop, nobody may list or remove others' files
    ensure_maildrop(drop_dir)  # idempotent
    assert stat.S_IMODE(drop_dir.stat().st_mode) == 0o1733


def test_envelope_and_message_round_trip(drop_dir: Path) -> None:
    result, content = drop(drop_dir, b"Subject: hi\n\nhello\n", recipients=["<a@example.net>",
                           "b@EXAMPLE.net"], sender="me@example.com", full_name="Me Myself",
                           body_type="8BITMIME", envid="ENV1", ret="HDRS",
                           notify=("SUCCESS", "FAILURE"))
    assert content == b"Subject: hi\r\n\r\nhello\r\n"
    assert result.sender == "me@example.com"
    assert result.recipients == ("a@example.net", "b@example.net")
    assert (result.full_name, result.body_type, result.envid, result.ret, result.notify) == (
        "Me Myself", "8BITMIME", "ENV1", "HDRS", ("SUCCESS", "FAILURE"))
    assert result.uid == os.getuid() and not result.extracted
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o644
    assert list_drops(drop_dir) == [result.path]
    maildrop.remove_drop(result.path)
    assert list_drops(drop_dir) == []


def test_null_sender_and_unset_sender(drop_dir: Path) -> None:
    assert drop(drop_dir, b"x\n", sender="<>")[0].sender == ""
    assert drop(drop_dir, b"x\n")[0].sender is None


def test_t_takes_to_cc_bcc_and_removes_bcc(drop_dir: Path) -> None:
    message = (b"From: me@example.com\n"
               b"To: Ann <ann@example.net>, bob@example.net\n"
               b"Cc: team: carl@example.net, dee@example.net;\n"
               b"Bcc: secret@example.net,\n"
               b"  hidden@example.net\n"
               b"Subject: plans\n"
               b"\n"
               b"Bcc: this line is body text, not a header\n")
    result, content = drop(drop_dir, message, recipients=["extra@example.net",
                                                          "bob@example.net"],
                           extract_recipients=True)
    assert result.recipients == ("extra@example.net", "bob@example.net", "ann@example.net",
                                 "carl@example.net", "dee@example.net",
                                 "secret@example.net", "hidden@example.net")
    assert result.extracted
    assert content == (b"From: me@example.com\r\nTo: Ann <ann@example.net>, bob@example.net\r\n"
                       b"Cc: team: carl@example.net, dee@example.net;\r\n"
                       b"Subject: plans\r\n\r\n"
                       b"Bcc: this line is body text, not a header\r\n")


def test_bcc_is_removed_even_without_t(drop_dir: Path) -> None:
    _, content = drop(drop_dir, b"To: a@example.net\nBCC: b@example.net\n\nbody\n")
    assert content == b"To: a@example.net\r\n\r\nbody\r\n"


def test_resent_fields_win_when_present(drop_dir: Path) -> None:
    message = (b"Resent-From: me@example.com\nResent-To: new@example.net\n"
               b"Resent-Bcc: quiet@example.net\nTo: old@example.net\n\nbody\n")
    result, content = drop(drop_dir, message, recipients=(), extract_recipients=True)
    assert result.recipients == ("new@example.net", "quiet@example.net")
    assert b"Resent-Bcc" not in content and b"To: old@example.net" in content


def test_no_recipients(drop_dir: Path) -> None:
    with pytest.raises(DropError, match="no recipient") as info:
        write_drop(drop_dir, None, [], io.BytesIO(b"To: undisclosed-recipients:;\n\nx\n"),
                   extract_recipients=True)
    assert info.value.kind == "usage"
    assert os.listdir(drop_dir) == []


@pytest.mark.parametrize(("recipients", "header"), [
    (["not an address"], b""),
    (["a@"], b""),
    ([], b"To: nodomain\n"),
])
def test_bad_addresses(drop_dir: Path, recipients: list[str], header: bytes) -> None:
    with pytest.raises(DropError) as info:
        write_drop(drop_dir, None, recipients, io.BytesIO(header + b"\nbody\n"),
                   extract_recipients=True)
    assert info.value.kind == "address"
    assert os.listdir(drop_dir) == []


def test_a_lone_dot_ends_the_message_unless_i(drop_dir: Path) -> None:
    data = b"Subject: dots\n\n.leading dot\n..two\n.\nafter the end\n"
    _, content = drop(drop_dir, data)
    # sendmail input is not dot-stuffed: only a line of a single "." is special.
    assert content == b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n"
    _, content = drop(drop_dir, data, ignore_dots=True)
    assert content == b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nafter the end\r\n"
    _, content = drop(drop_dir, b"Subject: crlf dot\r\n\r\nx\r\n.\r\nrest\r\n")
    assert content == b"Subject: crlf dot\r\n\r\nx\r\n"


def test_line_ends_become_crlf(drop_dir: Path) -> None:
    _, content = drop(drop_dir, b"Subject: mixed\r\n\nunix\nmac\rdos\r\nno end")
    assert content == b"Subject: mixed\r\n\r\nunix\r\nmac\r\ndos\r\nno end\r\n"


def test_a_header_without_blank_line_gets_one(drop_dir: Path) -> None:
    _, content = drop(drop_dir, b"Subject: x\nthis is body text\n")
    assert content == b"Subject: x\r\n\r\nthis is body text\r\n"
    _, content = drop(drop_dir, b"From someone Mon Jan 1 00:00:00 2026\nSubject: y\n\nz\n")
    assert content == b"Subject: y\r\n\r\nz\r\n"  # a Unix From_ line is dropped


def test_size_limit(drop_dir: Path) -> None:
    with pytest.raises(DropError, match="limit") as info:
        write_drop(drop_dir, None, ["a@example.net"], io.BytesIO(b"Subject: big\n\n"
                                                                   + b"x" * 5000 + b"\n"),
                   max_bytes=1000)
    assert info.value.kind == "size"
    assert os.listdir(drop_dir) == []


def test_header_limits(drop_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maildrop, "MAX_HEADER_BYTES", 1000)
    with pytest.raises(DropError, match="header") as info:
        write_drop(drop_dir, None, ["a@example.net"],
                   io.BytesIO(b"".join(b"X-N: %d\n" % i for i in range(500)) + b"\nbody\n"))
    assert info.value.kind == "data"
    monkeypatch.setattr(maildrop, "MAX_HEADER_LINE", 100)
    with pytest.raises(DropError, match="header line"):
        write_drop(drop_dir, None, ["a@example.net"],
                   io.BytesIO(b"Subject: " + b"y" * 500 + b"\n\nbody\n"))
    assert os.listdir(drop_dir) == []


def test_streams_a_large_message(drop_dir: Path) -> None:
    lines = [b"line %08d" % i for i in range(300_000)]  # ~4 MB
    data = b"Subject: big\n\n" + b"\n".join(lines) + b"\n"
    _, content = drop(drop_dir, data, ignore_dots=True)
    assert content == data.replace(b"\n", b"\r\n")


def test_missing_maildrop_is_a_temporary_failure(tmp_path: Path) -> None:
    with pytest.raises(DropError, match="does not exist") as info:
        write_drop(tmp_path / "nowhere", None, ["a@example.net"], io.BytesIO(b"x\n"))
    assert info.value.kind == "io"


def test_read_drop_refuses_what_sendmail_did_not_write(drop_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text('{"version": 1, "sender": null, "recipients": ["a@example.net"]}\n')
    (drop_dir / "symlink").symlink_to(secret)
    os.link(secret, drop_dir / "hardlink")
    os.mkfifo(drop_dir / "fifo")
    (drop_dir / "garbage").write_bytes(b"\x00\x01 not json\n")
    (drop_dir / "noline").write_bytes(b'{"version": 1}')
    (drop_dir / "badenv").write_text('{"version": 1, "sender": 5, "recipients": []}\n')
    (drop_dir / "future").write_text('{"version": 9, "sender": null, "recipients": ["a@b"]}\n')
    for name in ("symlink", "hardlink", "fifo", "garbage", "noline", "badenv", "future"):
        with pytest.raises(DropError) as info:
            read_drop(drop_dir / name)
        assert info.value.kind == "data", name


def reference_normalization(data: bytes, ignore_dots: bool) -> bytes:
    """What sendmail input becomes, computed the simple way (whole input in memory)."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        if line == b"." and not ignore_dots:
            break
        out.append(line + b"\r\n")
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.sampled_from([b"a", b"b", b".", b"\r", b"\n", b"\r\n", b"xyz"]),
                     max_size=40).map(b"".join),
       ignore_dots=st.booleans(), piece=st.integers(1, 5))
def test_line_reader_matches_a_simple_reference(data: bytes, ignore_dots: bool,
                                                piece: int) -> None:
    # Tiny reads put every line end and CR on a read boundary somewhere.
    original = maildrop._READ_PIECE
    maildrop._READ_PIECE = piece
    try:
        got = b"".join(maildrop._normalized_lines(io.BytesIO(data), ignore_dots))
    finally:
        maildrop._READ_PIECE = original
    assert got == reference_normalization(data, ignore_dots)
