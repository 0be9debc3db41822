"""`mailkeep import` and `mailkeep export` as a user runs them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mailkeep.cli import mailbox_io
from mailkeep.store import open_store

from .conftest import tiny_indexer

ACCOUNT = "me@example.com"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mailkeep")
    mailbox_io.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "Maildir"
    for folder in ("", ".Lists"):
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(5):
        (root / "cur" / f"17000000{i:02d}.M{i}.host:2,S").write_bytes(
            b"Subject: %d\n\nhello\n" % i)
    (root / ".Lists" / "new" / "1700000099.M9.host").write_bytes(b"Subject: list\n\nx\n")
    return root


def test_import_then_rerun_then_export(maildir: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    assert run("import", "Me@Example.COM", "--format", "maildir", str(maildir),
               "--data-dir", str(data), "--create-account") == 0
    out = capsys.readouterr().out
    assert "Imported 6 messages into 2 mailboxes of me@example.com" in out
    assert run("import", ACCOUNT, "-f", "maildir", str(maildir), "--data-dir", str(data)) == 0
    assert "Imported 0 messages" in capsys.readouterr().out
    assert run("export", ACCOUNT, "--format", "mbox", str(tmp_path / "mbox"),
               "--data-dir", str(data)) == 0
    assert "Exported 6 messages" in capsys.readouterr().out
    assert (tmp_path / "mbox" / "Lists.mbox").read_bytes().count(b"Subject: list") == 1
    assert run("export", ACCOUNT, "--format", "maildir", str(tmp_path / "md"),
               "--data-dir", str(data)) == 0
    assert len(list((tmp_path / "md" / "cur").iterdir())) == 5


def test_limit_then_resume(maildir: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    assert run("import", ACCOUNT, "-f", "maildir", str(maildir), "--data-dir", str(data),
               "--create-account", "--limit", "2") == 0
    out = capsys.readouterr().out
    assert "Imported 2 messages" in out and "run the same command again" in out
    assert run("import", ACCOUNT, "-f", "maildir", str(maildir), "--data-dir", str(data)) == 0
    assert "Imported 4 messages" in capsys.readouterr().out
    with open_store(data, indexer=tiny_indexer) as store:
        assert store.usage(ACCOUNT).messages == 6


def test_unknown_account_is_refused_with_a_hint(maildir: Path, tmp_path: Path, capsys) -> None:
    assert run("import", ACCOUNT, "-f", "maildir", str(maildir),
               "--data-dir", str(tmp_path / "data")) == 1
    assert "--create-account" in capsys.readouterr().err
    assert run("export", ACCOUNT, "-f", "mbox", str(tmp_path / "out"),
               "--data-dir", str(tmp_path / "data")) == 1


def test_usage_errors(maildir: Path, tmp_path: Path, capsys) -> None:
    data = str(tmp_path / "data")
    assert run("import", "not an address", "-f", "maildir", str(maildir), "--data-dir", data) == 2
    assert run("import", ACCOUNT, "-f", "maildir", str(tmp_path / "missing"),
               "--data-dir", data) == 2
    assert run("import", ACCOUNT, "-f", "maildir", str(maildir), "--data-dir", data,
               "--max-message-size", "lots") == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert run("export", ACCOUNT, "-f", "mbox", str(tmp_path / "full"), "--data-dir", data) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "not an empty directory" in err


def test_failed_messages_make_the_exit_status_non_zero(maildir: Path, tmp_path: Path,
                                                        capsys) -> None:
    assert run("import", ACCOUNT, "-f", "maildir", str(maildir), "--data-dir",
               str(tmp_path / "data"), "--create-account", "--max-message-size", "10") == 1
    captured = capsys.readouterr()
    assert "failed" in captured.out and "over the limit" in captured.err


def test_help_has_examples(capsys) -> None:
    for command in ("import", "export"):
        with pytest.raises(SystemExit):
            run(command, "--help")
        assert "examples:" in capsys.readouterr().out


def test_mbox_import_with_progress_forced(tmp_path: Path, capsys) -> None:
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"From a Thu Jan  1 00:00:00 2015\nSubject: x\n\ny\n\n")
    assert run("import", ACCOUNT, "-f", "mbox", str(mbox), "--mailbox", "Old",
               "--data-dir", str(tmp_path / "data"), "--create-account", "--progress") == 0
    captured = capsys.readouterr()
    assert "Importing" in captured.err and captured.err.endswith("\n")
    assert "Imported 1 messages into 1 mailboxes" in captured.out
