"""End to end: migrate seed 000 into a configuration, start `mailkeep serve` on it, and read
the migrated mail over IMAP with the migrated password (PLAIN over TLS, and CRAM-MD5 from
the imported {CRAM-MD5} hash, as seed 000's clients log in)."""

from __future__ import annotations

import email
import imaplib
import ssl
import subprocess

import pytest
from tests.integration.conftest import MAILKEEP, RunningServer, free_ports
from tests.migrate.conftest import PASSWORDS, SEEDS

SKELETON = """\
# The new server's own settings; the migration adds the rest.
hostname = "mail.example.com"
data_dir = "data"

[log]
format = "logfmt"
level = "info"
file = "{log}"

[auth]
max_failure_delay = "0.3s"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{smtp}"

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:{imaps}"
"""


@pytest.fixture(scope="module")
def migrated_server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    directory = tmp_path_factory.mktemp("migrated")
    smtp, imaps = free_ports(2)
    config = directory / "mailkeep.toml"
    log = directory / "mailkeep.log"
    config.write_text(SKELETON.format(log=log, smtp=smtp, imaps=imaps))
    seed = SEEDS["seed000"]
    argv = seed.argv(config, directory / "data")
    argv.remove("--data-dir")
    argv.remove(str(directory / "data"))  # the skeleton's data_dir is used
    result = subprocess.run([MAILKEEP, *argv], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "merged the migration into" in result.stdout
    server = RunningServer(directory, config, smtp, 0, directory / "lmtp.sock", log,
                           imaps_port=imaps)
    server.start()
    yield server
    server.stop()


def connect(server: RunningServer) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.check_hostname = False  # the certificate names mail.example.com; we dial 127.0.0.1
    return imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=ctx, timeout=20)


def subjects(conn: imaplib.IMAP4_SSL, mailbox: str) -> dict[str, str]:
    """Subject -> FLAGS of every message in ``mailbox``."""
    status, _ = conn.select(f'"{mailbox}"', readonly=True)
    assert status == "OK", mailbox
    status, data = conn.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert status == "OK"
    found = {}
    for item in data:
        if isinstance(item, tuple):
            flags = item[0].decode()
            subject = email.message_from_bytes(item[1])["Subject"]
            found[str(subject)] = flags[flags.index("FLAGS (") + 7:flags.index(")")]
    return found


def test_login_with_the_migrated_password_shows_the_migrated_mail(
        migrated_server: RunningServer) -> None:
    conn = connect(migrated_server)
    try:
        conn.login("rolf@example.com", PASSWORDS["rolf@example.com"])
        status, listing = conn.list()
        assert status == "OK"
        names = [line.decode() for line in listing]
        assert any(r'\Sent' in line and '"Sent Messages"' in line for line in names), names
        assert any(line.endswith(' "/" Archive/2020') for line in names), names
        inbox = subjects(conn, "INBOX")
        assert set(inbox) == {"Seen in the inbox", "Flagged and answered", "With a keyword",
                              "Unread, to a personalized address"}
        assert set(inbox["Flagged and answered"].split()) == {"\\Answered", "\\Flagged",
                                                              "\\Seen"}
        assert "$Label1" in inbox["With a keyword"]
        assert "\\Seen" not in inbox["Unread, to a personalized address"]
        assert set(subjects(conn, "Sent Messages")) == {"Re: Seen in the inbox", "Re: Flagged"}
        assert set(subjects(conn, "Archive/2020")) == {"Archived", "Archived too"}
    finally:
        conn.logout()


def test_cram_md5_login_from_the_imported_hash(migrated_server: RunningServer) -> None:
    conn = connect(migrated_server)
    try:
        status, _ = conn.login_cram_md5("user1@example.com", PASSWORDS["user1@example.com"])
        assert status == "OK"
        assert set(subjects(conn, "INBOX")) == {"For user1", "New for user1"}
    finally:
        conn.logout()


def test_wrong_password_and_relay_only_account(migrated_server: RunningServer) -> None:
    for user, password, refusal in (
            ("rolf@example.com", "not-rolfs-password", "AUTHENTICATIONFAILED"),
            # relay1 has the right password, but as a relay-only account no mailbox.
            ("relay1@example.com", PASSWORDS["relay1@example.com"], "AUTHORIZATIONFAILED")):
        conn = connect(migrated_server)
        try:
            with pytest.raises(imaplib.IMAP4.error, match=refusal):
                conn.login(user, password)
        finally:
            conn.shutdown()
