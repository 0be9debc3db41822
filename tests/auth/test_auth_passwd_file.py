"""The passwd file: Dovecot passwd-file format, atomic rewrites, nothing else lost."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.auth.passwd_file import (
    PasswdEntry,
    PasswdFile,
    parse_passwd_line,
    parse_passwd_text,
)
from mailkeep.auth.passwords import verify_password

ARGON = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"


def test_written_format_is_dovecot_passwd_file(tmp_path: Path):
    passwd = PasswdFile(tmp_path / "passwd")
    passwd.set("me@example.com", ARGON)
    assert (tmp_path / "passwd").read_text() == f"me@example.com:{ARGON}::::::\n"
    assert (tmp_path / "passwd").stat().st_mode & 0o777 == 0o600
    assert passwd.get("me@example.com") == PasswdEntry("me@example.com", ARGON)
    assert passwd.get("other@example.com") is None


def test_seed_formats_parse():
    # Seed 000 (vumap output), seed 004 (six colons), seed 001 (userdb line, no password).
    text = ("rolf@example.com:{CRAM-MD5}cf8527ae5867fc08068952261363c49f0bcc0d1d5f166bbd20d3783b3e97f828:10001:10000:\n"
            "user@example.net:{BLF-CRYPT}$2a$08$6U9XVhAdBjylRGg96P9i.esHQYhrGHHv.OpCpqqAPYtAYFOePAe9O::::::\n"
            "example@domain.tld:::::::\n"
            "# comment\n\n"
            "q@example.com:{PLAIN}x:1:2:Q:/home/q:/bin/false:userdb_quota_rule=*:storage=1G nopassword\n")
    entries, problems = parse_passwd_text(text)
    assert problems == []
    rolf, user, example, q = entries
    assert (rolf.uid, rolf.gid) == ("10001", "10000")
    assert verify_password(rolf.hash, "rolfheinrich")
    assert verify_password(user.hash, "insecure")
    assert example.hash == ""
    assert q.extra == "userdb_quota_rule=*:storage=1G nopassword"
    assert q.extra_fields() == {"userdb_quota_rule": "*:storage=1G", "nopassword": ""}
    assert (q.gecos, q.home, q.shell) == ("Q", "/home/q", "/bin/false")


def test_bad_lines_are_reported_with_their_number():
    entries, problems = parse_passwd_text("good:{PLAIN}x\n:{PLAIN}nouser\n")
    assert [e.user for e in entries] == ["good"]
    assert problems == [(2, "the user name is empty")]


def test_unknown_content_survives_a_rewrite(tmp_path: Path):
    path = tmp_path / "passwd"
    original = ("# managed by mailkeep\n"
                "me@example.com:{PLAIN}old:::::: scram-sha-256=abc userdb_x=1\n"
                ":broken line kept\n"
                "she@example.com:{SHA512-CRYPT}$6$x$y::::::\n")
    path.write_text(original)
    passwd = PasswdFile(path)
    passwd.set("me@example.com", ARGON)
    text = path.read_text()
    assert text.splitlines() == [
        "# managed by mailkeep",
        f"me@example.com:{ARGON}:::::: scram-sha-256=abc userdb_x=1",
        ":broken line kept",
        "she@example.com:{SHA512-CRYPT}$6$x$y::::::",
    ]
    assert passwd.get("me@example.com").extra_fields()["scram-sha-256"] == "abc"
    passwd.set("me@example.com", ARGON, extra="")
    assert passwd.get("me@example.com").extra == ""


def test_remove(tmp_path: Path):
    passwd = PasswdFile(tmp_path / "passwd")
    passwd.set("a@example.com", ARGON)
    passwd.set("b@example.com", ARGON)
    assert passwd.remove("a@example.com") is True
    assert passwd.remove("a@example.com") is False
    assert [e.user for e in passwd.entries()] == ["b@example.com"]


def test_removing_from_a_missing_file_creates_nothing(tmp_path: Path):
    passwd = PasswdFile(tmp_path / "data" / "passwd")
    assert passwd.remove("a@example.com") is False
    assert not (tmp_path / "data").exists()


def test_duplicates_first_wins_and_set_removes_the_rest(tmp_path: Path):
    path = tmp_path / "passwd"
    path.write_text("a@example.com:{PLAIN}one\na@example.com:{PLAIN}two\n")
    passwd = PasswdFile(path)
    assert passwd.get("a@example.com").hash == "{PLAIN}one"
    assert passwd.problems() == [(2, "'a@example.com' repeats an earlier line; the first one is used")]
    passwd.set("a@example.com", ARGON)
    assert path.read_text() == f"a@example.com:{ARGON}::::::\n"


def test_reader_sees_changes_by_another_writer(tmp_path: Path):
    reader = PasswdFile(tmp_path / "passwd")
    writer = PasswdFile(tmp_path / "passwd")
    assert reader.get("a@example.com") is None
    writer.set("a@example.com", "{PLAIN}first")
    assert reader.get("a@example.com").hash == "{PLAIN}first"
    writer.set("a@example.com", "{PLAIN}second")
    assert reader.get("a@example.com").hash == "{PLAIN}second"
    os.unlink(tmp_path / "passwd")
    assert reader.get("a@example.com") is None


def test_concurrent_writers_lose_nothing(tmp_path: Path):
    users = [f"u{i}@example.com" for i in range(16)]

    def write(user: str) -> None:
        PasswdFile(tmp_path / "passwd").set(user, ARGON)

    threads = [threading.Thread(target=write, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(e.user for e in PasswdFile(tmp_path / "passwd").entries()) == sorted(users)


@pytest.mark.parametrize(("user", "password_hash", "extra"), [
    ("a:b@example.com", ARGON, None), ("a@example.com", "{PLAIN}a:b", None),
    ("a@example.com\n", ARGON, None), ("", ARGON, None), ("#a@example.com", ARGON, None),
    ("a@example.com", ARGON, "x=1\ny=2"),
])
def test_fields_that_would_break_the_format_are_refused(tmp_path: Path, user: str,
                                                        password_hash: str, extra: str | None):
    with pytest.raises(ValueError):
        PasswdFile(tmp_path / "passwd").set(user, password_hash, extra)
    assert not (tmp_path / "passwd").exists()


def test_batch_update(tmp_path: Path):
    passwd = PasswdFile(tmp_path / "passwd")
    passwd.set("gone@example.com", ARGON)
    passwd.update({"a@example.com": ("{PLAIN}a", None), "b@example.com": ("{PLAIN}b", "k=v"),
                   "gone@example.com": None})
    assert [(e.user, e.hash, e.extra) for e in passwd.entries()] == [
        ("a@example.com", "{PLAIN}a", ""), ("b@example.com", "{PLAIN}b", "k=v")]


_FIELD = st.text(alphabet=st.characters(blacklist_characters=":\r\n\x00\x1c\x1d\x1e\x85\u2028\u2029",
                                        blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.builds(PasswdEntry, user=_FIELD.filter(lambda u: u.strip() and not u.lstrip().startswith("#")),
                 hash=_FIELD, uid=_FIELD, gid=_FIELD, gecos=_FIELD, home=_FIELD, shell=_FIELD,
                 extra=st.text(alphabet=st.characters(blacklist_characters="\r\n\x00\x1c\x1d\x1e\x85\u2028\u2029",
                                                      blacklist_categories=("Cs",)), max_size=20)))
def test_lines_round_trip(entry: PasswdEntry):
    assert parse_passwd_line(entry.to_line()) == entry


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parser_never_fails_unexpectedly(text: str):
    entries, problems = parse_passwd_text(text)
    assert all(entry.user for entry in entries)
    assert all(number >= 1 for number, _ in problems)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_rewrite_keeps_the_owner_the_server_needs(tmp_path: Path):
    # root runs the CLI; the server runs as its own user and must still read the file.
    path = tmp_path / "passwd"
    path.write_text("a@example.com:{PLAIN}a::::::\n")
    os.chown(path, 12345, 23456)
    PasswdFile(path).set("b@example.com", ARGON)
    assert (path.stat().st_uid, path.stat().st_gid) == (12345, 23456)
    # A new file belongs to the owner of the data directory.
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 12345, 23456)
    PasswdFile(data / "passwd").set("a@example.com", ARGON)
    assert ((data / "passwd").stat().st_uid, (data / "passwd").stat().st_gid) == (12345, 23456)
    assert (data / "passwd.lock").stat().st_uid == 12345
