"""Reading Dovecot's side: dovecot.conf, passwd-files, mail_location and Maildir layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.migrate.conftest import SEEDS

from mailkeep.migrate.dovecot import (
    PasswdSource,
    UnusableMailLocation,
    detect_layout,
    expand_mail_path,
    find_maildir,
    load_dovecot_conf,
    maildir_folders,
    parse_dovecot_conf,
    parse_mail_location,
    read_passwd_source,
)
from mailkeep.migrate.sources import MigrateError, SourceTree

SEED000 = SEEDS["seed000"].root()
SEED004 = SEEDS["seed004"].root()


def test_seed000_dovecot_conf() -> None:
    conf = load_dovecot_conf(SEED000 / "usr/local/etc/dovecot/dovecot.conf", SourceTree(SEED000))
    assert conf.get("mail_location") == "maildir:/var/mail/users/%u"
    assert conf.get("auth_mechanisms") == "cram-md5"
    assert [(db.driver, db.passwd_file()) for db in conf.passdbs] == [
        ("passwd-file", ("/var/mail/users/virtusers.d/sasl_virtual_passwords",
                         {"username_format": "%u"}))]
    assert conf.userdbs[0].passwd_file() == (
        "/var/mail/users/virtusers.d/imap_virtual_users", {"username_format": "%u"})
    assert conf.special_use == {"Drafts": "\\Drafts", "Junk": "\\Junk",
                                "Sent Messages": "\\Sent", "Deleted Messages": "\\Trash"}
    # "<file" values are kept as they are, not read.
    assert conf.get("ssl_cert") == "</usr/local/etc/letsencrypt/live/example.com/fullchain.pem"


def test_seed004_override_fields_and_plugin() -> None:
    conf = load_dovecot_conf(SEED004 / "opt/local/etc/dovecot/dovecot.conf", SourceTree(SEED004))
    assert conf.userdbs[0].fields == {"uid": "vmail", "gid": "vmail",
                                      "home": "/var/mail/virtual/%d/%n", "mail": "mdbox:~/mail"}
    assert conf.plugin["quota_rule"] == "*:storage=1G"
    assert conf.plugin["quota_grace"] == "10%"  # "%%" in the file
    assert conf.plugin["quota_status_overquota"] == "522 5.2.2 Mailbox is full"


def test_includes_comments_quotes_and_continuations(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-mail.conf").write_text(
        'mail_location = "maildir:~/Mail # not a comment"  # a comment\n')
    (tmp_path / "conf.d" / "20-auth.conf").write_text(
        "auth_mechanisms = plain \\\n  login\npassdb {\n  driver = passwd-file\n"
        "  args = scheme=SHA512-CRYPT /etc/dovecot/users\n}\n")
    main = tmp_path / "dovecot.conf"
    main.write_text("!include conf.d/*.conf\n!include_try local.conf\nprotocols = imap\n")
    conf = load_dovecot_conf(main, SourceTree())
    assert conf.get("mail_location") == "maildir:~/Mail # not a comment"
    assert conf.get("auth_mechanisms") == "plain login"
    assert conf.passdbs[0].passwd_file() == ("/etc/dovecot/users", {"scheme": "SHA512-CRYPT"})


@pytest.mark.parametrize(("text", "message"), [
    ("passdb {\n driver = passwd-file\n", "is not closed"),
    ("}\n", "without an open section"),
    ("!include missing.conf\n", "no such file"),
    ("just words\n", "expected 'key = value'"),
])
def test_malformed_dovecot_conf(tmp_path: Path, text: str, message: str) -> None:
    main = tmp_path / "dovecot.conf"
    main.write_text(text)
    with pytest.raises(MigrateError, match=message):
        parse_dovecot_conf(main, SourceTree())


def test_passwd_file_default_scheme(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("a@x.test:$6$salt$hash::::::\nb@x.test:{PLAIN}pw::::::\nc@x.test:secret\n"
                     ":no-user\n")
    entries, problems = read_passwd_source(PasswdSource(users, "PLAIN"), SourceTree())
    assert [(e.user, e.hash) for e in entries] == [
        ("a@x.test", "{PLAIN}$6$salt$hash"), ("b@x.test", "{PLAIN}pw"),
        ("c@x.test", "{PLAIN}secret")]
    assert problems == [(4, "the user name is empty")]
    entries, _ = read_passwd_source(PasswdSource(users), SourceTree())
    assert entries[0].hash == "$6$salt$hash"  # CRYPT: the bare crypt(3) string


def test_mail_location_parsing_and_expansion() -> None:
    location = parse_mail_location("maildir:~/Maildir:LAYOUT=fs:INBOX=~/Maildir/.INBOX:UTF-8")
    assert (location.format, location.path, location.layout, location.utf8) == (
        "maildir", "~/Maildir", "fs", True)
    assert location.options["INBOX"] == "~/Maildir/.INBOX"
    assert expand_mail_path("/var/vmail/%d/%n", "Me@Example.com", None) == \
        "/var/vmail/Example.com/Me"
    assert expand_mail_path("/var/vmail/%Ld/%{username}", "Me@Example.com", None) == \
        "/var/vmail/example.com/Me"
    assert expand_mail_path("~/Maildir", "me@x.test", "/home/me/") == "/home/me/Maildir"
    assert expand_mail_path("%h/mail", "me@x.test", "/srv/me") == "/srv/me/mail"
    with pytest.raises(UnusableMailLocation, match="home directory"):
        expand_mail_path("~/Maildir", "me@x.test", None)
    with pytest.raises(UnusableMailLocation, match="variable %r"):
        expand_mail_path("/var/%r/mail", "me@x.test", None)
    assert parse_mail_location("mdbox:~/mail:UTF-8").format == "mdbox"


def test_maildir_plus_plus_folders() -> None:
    root = SEED000 / "var/mail/users/rolf@example.com"
    assert find_maildir(root) == root
    assert detect_layout(root) == "maildir++"
    maildir = maildir_folders(root, "maildir++")
    assert [name for name, _ in maildir.folders] == [
        "INBOX", "Archive/2020", "Deleted Messages", "Drafts", "Junk", "Sent Messages"]
    assert maildir.message_count() == 11


def test_fs_layout_folders() -> None:
    home = SEED004 / "var/mail/virtual/example.net/brian"
    root = find_maildir(home)
    assert root == home / "Maildir"
    assert detect_layout(root) == "fs"
    maildir = maildir_folders(root, "fs")
    assert [(name, path.relative_to(root).as_posix()) for name, path in maildir.folders] == [
        ("INBOX", "."), ("Archive/2020", "Archive/2020"), ("Sent", "Sent")]
    assert maildir.message_count() == 5


def test_folder_names_in_modified_utf7_and_utf8(tmp_path: Path) -> None:
    for name in (".Entw&APw-rfe", ".Café", "Gel&APY-scht/sub", "Grüße"):
        (tmp_path / name / "cur").mkdir(parents=True)
    plus = maildir_folders(tmp_path, "maildir++")
    assert {n for n, _ in plus.folders} == {"Entwürfe", "Café"}
    utf8 = maildir_folders(tmp_path, "maildir++", utf8=True)
    assert {n for n, _ in utf8.folders} == {"Entw&APw-rfe", "Café"}
    fs = maildir_folders(tmp_path, "fs")
    assert {n for n, _ in fs.folders} == {"Gelöscht/sub", "Grüße"}


def test_separate_inbox_and_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "mail" / "Sent" / "cur").mkdir(parents=True)
    (tmp_path / "inbox" / "new").mkdir(parents=True)
    maildir = maildir_folders(tmp_path / "mail", "fs", inbox=tmp_path / "inbox")
    assert [n for n, _ in maildir.folders] == ["INBOX", "Sent"]
    assert maildir.folders[0][1] == tmp_path / "inbox"
    with pytest.raises(UnusableMailLocation, match="LAYOUT=index"):
        maildir_folders(tmp_path / "mail", "index")
