"""Maildir++ import and export: round trips, flags, keywords, resumability."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.store.maildir import (
    export_maildir,
    folder_to_mailbox,
    import_maildir,
    mailbox_to_folder,
    parse_info,
    read_subscriptions,
)

from .conftest import ACCOUNT


def write_maildir(root: Path, folder: str, name: str, data: bytes, mtime: float) -> Path:
    path = root / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def dovecot_maildir(tmp_path: Path) -> Path:
    """A small Maildir++ tree as Dovecot would leave it."""
    root = tmp_path / "Maildir"
    for folder in ("", ".Sent", ".Archive.2024", ".Entw&APw-rfe"):
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    write_maildir(root, "cur", "1700000000.M1P1.mx,S=36,W=39:2,FS",
                  b"Subject: read and flagged\n\nhello\n", 1_700_000_000)
    write_maildir(root, "cur", "1700000100.M2P1.mx,S=40:2,Pabc",
                  b"Subject: forwarded\n\nFrom the body\n", 1_700_000_100)
    write_maildir(root, "new", "1700000200.M3P1.mx", b"Subject: new\n\nunread\n", 1_700_000_200)
    (root / "dovecot-keywords").write_text("0 $Junk\n1 Work\n2 $Label1\n")
    write_maildir(root, ".Sent/cur", "1700000300.M4P1.mx:2,S",
                  b"Subject: sent\r\n\r\nalready CRLF\r\n", 1_700_000_300)
    write_maildir(root, ".Archive.2024/cur", "1700000400.M5P1.mx:2,RST,extra",
                  b"Subject: archived\n\nold\n", 1_700_000_400)
    write_maildir(root, ".Entw&APw-rfe/cur", "1700000500.M6P1.mx:2,D",
                  b"Subject: draft\n\n...\n", 1_700_000_500)
    (root / "subscriptions").write_text("V\t2\n\nSent\nArchive\t2024\n")
    return root


async def test_import_reads_folders_flags_keywords_dates(store, dovecot_maildir: Path) -> None:
    report = await import_maildir(store, ACCOUNT, dovecot_maildir)
    assert (report.imported, report.skipped, report.failed) == (6, 0, 0)
    inbox = store.list_messages(ACCOUNT, "INBOX")
    assert [m.flags for m in inbox] == [
        ("\\Seen", "\\Flagged"), ("$Forwarded", "$Junk", "$Label1", "Work"), ()]
    assert [m.internal_date for m in inbox] == [1_700_000_000, 1_700_000_100, 1_700_000_200]
    assert store.read_message(ACCOUNT, "INBOX", 1) == b"Subject: read and flagged\r\n\r\nhello\r\n"
    assert store.read_message(ACCOUNT, "Sent", 1) == b"Subject: sent\r\n\r\nalready CRLF\r\n"
    [archived] = store.list_messages(ACCOUNT, "Archive/2024")
    assert archived.flags == ("\\Seen", "\\Answered", "\\Deleted")
    [draft] = store.list_messages(ACCOUNT, "Entwürfe")
    assert draft.flags == ("\\Draft",)
    assert "Archive/2024" in store.list_subscriptions(ACCOUNT)


async def test_rerun_imports_nothing_twice(store, dovecot_maildir: Path) -> None:
    await import_maildir(store, ACCOUNT, dovecot_maildir)
    # A mail client marks a message read in the meantime: its file is renamed, but the
    # unique part stays, so it is still recognised.
    old = dovecot_maildir / "new" / "1700000200.M3P1.mx"
    old.rename(dovecot_maildir / "cur" / "1700000200.M3P1.mx:2,S")
    again = await import_maildir(store, ACCOUNT, dovecot_maildir)
    assert (again.imported, again.skipped) == (0, 6)
    assert store.usage(ACCOUNT).messages == 6


async def test_interrupted_import_resumes(store, dovecot_maildir: Path) -> None:
    first = await import_maildir(store, ACCOUNT, dovecot_maildir, limit=4)
    assert first.imported == 4 and first.incomplete
    second = await import_maildir(store, ACCOUNT, dovecot_maildir)
    assert (second.imported, second.skipped) == (2, 4) and not second.incomplete
    assert store.usage(ACCOUNT).messages == 6


async def test_import_into_a_prefix(store, dovecot_maildir: Path) -> None:
    await import_maildir(store, ACCOUNT, dovecot_maildir, mailbox_prefix="Old Server")
    names = {m.name for m in store.list_mailboxes(ACCOUNT)}
    assert {"Old Server", "Old Server/Sent", "Old Server/Archive/2024"} <= names
    assert store.get_mailbox(ACCOUNT, "INBOX").messages == 0


async def test_oversized_and_vanished_files_are_reported(store, dovecot_maildir: Path) -> None:
    report = await import_maildir(store, ACCOUNT, dovecot_maildir, max_message_bytes=30)
    assert report.failed >= 1 and "over the limit" in report.errors[0]
    assert report.imported + report.failed == 6


async def test_round_trip_store_maildir_store(store, dovecot_maildir: Path,
                                              tmp_path: Path) -> None:
    await import_maildir(store, ACCOUNT, dovecot_maildir)
    await store.store_flags(ACCOUNT, "INBOX", [3], ["Custom", "\\Answered"])
    out = tmp_path / "export"
    report = export_maildir(store, ACCOUNT, out)
    assert report.exported == 6
    # What Dovecot needs to see: LF files, flags in names, keywords file, mtime.
    [inbox_file] = [p for p in (out / "cur").iterdir() if p.name.endswith(":2,FS")]
    assert inbox_file.read_bytes() == b"Subject: read and flagged\n\nhello\n"
    assert inbox_file.stat().st_mtime == 1_700_000_000
    assert (out / ".Archive.2024" / "maildirfolder").exists()
    assert (out / ".Entw&APw-rfe" / "cur").is_dir()
    assert "Work" in (out / "dovecot-keywords").read_text()
    assert "Archive/2024" in read_subscriptions(out)

    store.ensure_account("copy@example.com")
    back = await import_maildir(store, "copy@example.com", out)
    assert back.imported == 6
    for box in store.list_mailboxes(ACCOUNT):
        original = store.list_messages(ACCOUNT, box.name)
        copied = store.list_messages("copy@example.com", box.name)
        assert [(m.flags, m.internal_date // 1) for m in original] == \
            [(m.flags, m.internal_date // 1) for m in copied]
        assert [store.read_message(ACCOUNT, box.name, m.uid) for m in original] == \
            [store.read_message("copy@example.com", box.name, m.uid) for m in copied]


def test_export_refuses_a_non_empty_destination(store, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(FileExistsError):
        export_maildir(store, ACCOUNT, tmp_path / "x")


def test_parse_info() -> None:
    keywords = {"a": "$Junk", "c": "Work"}
    assert parse_info("123.M1.host,S=10:2,DFPRST", keywords) == (
        "123.M1.host,S=10", ["\\Draft", "\\Flagged", "$Forwarded", "\\Answered", "\\Seen",
                             "\\Deleted"])
    assert parse_info("123.host:2,Sac,ignored", keywords) == ("123.host", ["\\Seen", "$Junk",
                                                                          "Work"])
    assert parse_info("123.host!2,S", keywords) == ("123.host", ["\\Seen"])
    assert parse_info("123.host", keywords) == ("123.host", [])
    assert parse_info("123.host:2,z", keywords) == ("123.host", [])  # unknown letter


def test_folder_names() -> None:
    assert folder_to_mailbox(".Archive.2024") == "Archive/2024"
    assert folder_to_mailbox(".Entw&APw-rfe") == "Entwürfe"
    assert folder_to_mailbox(".v1&AC4-2") == "v1.2"
    assert folder_to_mailbox(".a*b") == "a_b"
    assert mailbox_to_folder("INBOX") == ""
    assert mailbox_to_folder("Archive/2024") == ".Archive.2024"
    assert mailbox_to_folder("v1.2") == ".v1&AC4-2"


names = st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")),
                         min_size=1, max_size=10)
                 .filter(lambda s: "/" not in s and s not in (".", "..") and "*" not in s
                         and "%" not in s), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(names)
def test_folder_name_round_trip(levels: list[str]) -> None:
    name = "/".join(levels)
    folder = mailbox_to_folder(name) if name != "INBOX" else ".INBOX"
    assert "/" not in folder
    assert folder_to_mailbox(folder) == name


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_parse_info_never_crashes(filename: str) -> None:
    unique, flags = parse_info(filename, {"a": "$Junk"})
    assert filename.startswith(unique)
    assert set(flags) <= {"\\Draft", "\\Flagged", "$Forwarded", "\\Answered", "\\Seen",
                          "\\Deleted", "$Junk"}
    if unique != filename:
        assert filename[len(unique) + 1:].startswith("2,")


@settings(max_examples=50, deadline=None)
@given(st.lists(names.map("/".join), max_size=5))
def test_subscriptions_file_round_trip(tmp_path_factory, subscribed: list[str]) -> None:
    from mailkeep.store.maildir import _write_subscriptions

    root = tmp_path_factory.mktemp("subs")
    _write_subscriptions(root, subscribed)
    assert read_subscriptions(root) == subscribed


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_control_files_accept_anything(tmp_path_factory, content: bytes) -> None:
    from mailkeep.store.maildir import read_dovecot_keywords

    root = tmp_path_factory.mktemp("junk")
    (root / "subscriptions").write_bytes(content)
    (root / "dovecot-keywords").write_bytes(content)
    assert all(isinstance(n, str) for n in read_subscriptions(root))
    assert set(read_dovecot_keywords(root)) <= set("abcdefghijklmnopqrstuvwxyz")
