"""Real mail clients against Mailkeep and against Dovecot: mbsync, offlineimap3, fetchmail, mutt.

Issue 3 asks for the clients users read mail with to be tested against Mailkeep's IMAP and
POP3 servers. Every client test here runs twice, once per server: against a ``mailkeep
serve`` started for this module and against a throwaway Dovecot, the reference. Dovecot
passing proves the test and the driver (tests/support/imap_clients.py) right; Mailkeep
passing the same test proves Mailkeep behaves as users expect from Dovecot. What a client
did is checked on both ends: the files in the client's local Maildir or mbox, and the
server's mailbox as Python's imaplib sees it (``ServerView``), independent of the client.

A test sees its server through a ``MailServer`` adapter (``endpoint``, ``logins``, the port
and CA for imaplib), so one test function serves both. Each test uses its own account, so
the tests do not see each other's mail. Dovecot missing is a failure with instructions,
never a skip; select one server with ``-m dovecot`` or ``-m 'not dovecot'``.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.integration.conftest import MAILKEEP, free_ports
from tests.support.dovecot import (
    DovecotUnavailable,
    ThrowawayDovecot,
    make_test_certificates,
    require_dovecot,
)
from tests.support.imap_clients import (
    FETCHMAIL_NO_MAIL,
    Endpoint,
    TlsMode,
    add_maildir_message,
    find_maildir_message,
    maildir_files,
    maildir_flags,
    mutt_copy_messages,
    mutt_list_subjects,
    run_fetchmail,
    run_mbsync,
    run_offlineimap,
    set_maildir_flags,
    write_mbsyncrc,
    write_offlineimaprc,
)
from tests.support.procs import (
    ProcessError,
    WaitTimeout,
    run_command,
    start_process,
    stop_process,
    wait_until,
)

from mailkeep.logfmt import FLUSH_INTERVAL

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

USERS = {
    "mbsync@clients.test": "mbsync-pw-1",
    "scram@clients.test": "scram-pw-2",
    "offlineimap@clients.test": "offlineimap-pw-3",
    "fetchmail@clients.test": "fetchmail-pw-4",
    "mutt@clients.test": "mutt-pw-5",
    "folders@clients.test": "folders-pw-6",
    "uidl@clients.test": "uidl-pw-7",
}

#: The services a client can be pointed at, and how each starts TLS.
SERVICE_TLS: dict[str, TlsMode] = {"imap": "starttls", "imaps": "implicit", "pop3": "starttls", "pop3s": "implicit"}
#: Time limit (seconds) for Mailkeep to start.
MAILKEEP_START_TIMEOUT = 30.0
#: Time limit (seconds) for a log line to appear after the client that caused it has
#: exited (a session is logged when the server has closed it, maybe a moment later).
LOG_WAIT = 5.0
#: How many fresh port sets to try when a port we picked was taken before Mailkeep bound it.
PORT_ATTEMPTS = 3


# ------------------------------------------------------------------------------ the servers

@dataclass(frozen=True)
class Login:
    """A successful login as the server logged it."""

    mechanism: str
    tls: bool


class MailServer(ABC):
    """What a test needs to know about the server under test."""

    name: str
    #: The CA that issued the server's certificate (for ``localhost``).
    ca_file: Path

    @abstractmethod
    def port(self, service: str) -> int:
        """The port of ``service``: "imap", "imaps", "pop3" or "pop3s"."""

    @abstractmethod
    def logins(self, user: str, protocol: str) -> list[Login]:
        """The successful logins of ``user`` over ``protocol`` ("imap", "pop3") so far."""

    @abstractmethod
    def log_text(self) -> str:
        """The server's log so far."""

    def endpoint(self, user: str, service: str) -> Endpoint:
        """How a client reaches ``service`` as ``user`` (password from ``USERS``)."""
        return Endpoint("localhost", self.port(service), SERVICE_TLS[service], user,
                        USERS[user], self.ca_file)


class DovecotServer(MailServer):
    """The reference: a throwaway Dovecot (tests/support/dovecot.py)."""

    name = "dovecot"

    def __init__(self, instance: ThrowawayDovecot) -> None:
        self.instance = instance
        self.ca_file = instance.ca_file

    def port(self, service: str) -> int:
        return int(getattr(self.instance.ports, service))

    def log_text(self) -> str:
        return self.instance.log_text()

    def logins(self, user: str, protocol: str) -> list[Login]:
        # "imap-login: Info: Login: user=<u>, method=SCRAM-SHA-256, rip=..., lip=..., mpid=7,
        # TLS, session=<...>": "TLS" is there when the login happened over TLS (implicit
        # or after STARTTLS). Dovecot logs USER/PASS and IMAP LOGIN as method=PLAIN.
        pattern = re.compile(rf"{protocol}-login: Info: Login: user=<{re.escape(user)}>, "
                             r"method=([\w-]+), (.*)$", re.M)
        return [Login(m.group(1), "TLS" in m.group(2).split(", "))
                for m in pattern.finditer(self.instance.log_text())]


#: ``tls=`` values of Mailkeep's log lines that mean "not over TLS".
NOT_TLS = frozenset({"", "no", "none", "false"})

_LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """The key/value pairs of one logfmt line (mailkeep.logfmt), quotes removed."""
    fields = {}
    for key, value in _LOGFMT_PAIR.findall(line):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        fields[key] = value
    return fields


class MailkeepServer(MailServer):
    """``mailkeep serve`` in a temporary directory, with the accounts of ``USERS``.

    Configured as an operator would: hostname "localhost", a certificate from a throwaway
    CA in ``[tls]`` (clients verify the chain and the name), the four IMAP and POP3
    listeners on free loopback ports, passwords set with ``mailkeep account passwd``
    (which also stores the SCRAM verifiers). No plaintext login without TLS: ``serve``'s
    default, which is what the clients are tested against.
    """

    name = "mailkeep"

    def __init__(self, directory: Path, users: dict[str, str]) -> None:
        self.directory = directory
        self.users = users
        self.certificates = make_test_certificates(directory / "tls")
        self.ca_file = self.certificates.ca_file
        self.log_path = directory / "mailkeep.log"
        self.config = directory / "mailkeep.toml"
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def port(self, service: str) -> int:
        return self.ports[service]

    def _write_config(self) -> None:
        self.ports = dict(zip(SERVICE_TLS, free_ports(len(SERVICE_TLS)), strict=True))
        listeners = "".join(
            f'[[listeners]]\nprotocol = "{service}"\naddress = "127.0.0.1:{port}"\n'
            f'tls = "{SERVICE_TLS[service]}"\n\n' for service, port in self.ports.items())
        domains = sorted({user.split("@")[1] for user in self.users})
        self.config.write_text(
            'hostname = "localhost"\n'
            'data_dir = "data"\n\n'
            f'[log]\nformat = "logfmt"\nlevel = "info"\nfile = "{self.log_path}"\n\n'
            f'[tls]\ncert = "{self.certificates.cert_file}"\n'
            f'key = "{self.certificates.key_file}"\n\n'
            # Clients that fail a login would otherwise wait out the growing delay.
            '[auth]\nmax_failure_delay = "0.5s"\n\n'
            + listeners
            + "".join(f'[domains."{domain}"]\n' for domain in domains)
            + "".join(f'[accounts."{user}"]\n' for user in self.users)
        )

    def start(self) -> None:
        self._write_config()
        for user, password in self.users.items():
            run_command([MAILKEEP, "account", "passwd", user, "--password-stdin"],
                        input_bytes=f"{password}\n".encode(), timeout=60,
                        env={**os.environ, "MAILKEEP_CONFIG": str(self.config)})
        for attempt in range(PORT_ATTEMPTS):
            if attempt:
                # Another process took a port between free_ports() and our bind.
                self._write_config()
            if self._start_once(may_retry=attempt < PORT_ATTEMPTS - 1):
                return

    def _start_once(self, *, may_retry: bool) -> bool:
        """Start ``mailkeep serve``; False if a port was taken and ``may_retry``.

        Any other failure (or a taken port on the last attempt) raises ProcessError with
        the server's output.
        """
        out = self.directory / "serve.out"
        offset = out.stat().st_size if out.exists() else 0
        self.process = start_process([MAILKEEP, "serve", "--config", str(self.config)],
                                     log_path=out)
        process = self.process

        def started() -> bool:
            if process.poll() is not None:
                raise ProcessError(f"mailkeep serve exited with {process.returncode}:\n"
                                   f"{self.output_excerpt()}")
            return "msg=started" in self.log_text()

        try:
            wait_until(started, timeout=MAILKEEP_START_TIMEOUT, interval=0.05,
                       description="mailkeep serve to log msg=started")
        except WaitTimeout as exc:
            self.stop()
            raise ProcessError(f"{exc}\n{self.output_excerpt()}") from None
        except ProcessError:
            self.process = None
            with out.open("rb") as handle:
                handle.seek(offset)
                if may_retry and b"Address already in use" in handle.read():
                    return False
            raise
        return True

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=10, sig=signal.SIGTERM)
            self.process = None

    def log_text(self) -> str:
        # The server's info lines reach the file within FLUSH_INTERVAL (buffered writer).
        time.sleep(FLUSH_INTERVAL * 3)
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output_excerpt(self) -> str:
        out = self.directory / "serve.out"
        text = (out.read_text(errors="replace") if out.exists() else "") + self.log_text()
        return text[-4000:]

    def logins(self, user: str, protocol: str) -> list[Login]:
        """Successful logins of ``user`` over ``protocol``, from the server's log.

        mailkeep.sasl logs every login outcome (``event=auth result=success protocol=imap
        mechanism=SCRAM-SHA-256 account=...``). Whether it happened over TLS comes from the
        line's ``tls`` key when it has one. The auth line has none today, so otherwise
        it comes from the protocol server's lines about the same account (IMAP logs
        ``login`` and ``session``, POP3 ``session``, each with ``tls=``): a login counts
        as over TLS only if every one of them shows TLS. A session is logged when it
        ends, so this first waits (up to ``LOG_WAIT``) for a session line per login.
        """
        def collect() -> tuple[list[Login], bool]:
            lines = [parse_logfmt(line) for line in self.log_text().splitlines()]
            auths = [f for f in lines if f.get("event") == "auth"
                     and f.get("result") == "success" and f.get("protocol") == protocol
                     and f.get("account") == user]
            sessions = [f for f in lines if f.get("subsystem") == protocol
                        and f.get("msg") in ("login", "session") and f.get("account") == user]
            complete = sum("tls" not in f for f in auths) <= sum(
                f["msg"] == "session" for f in sessions)
            all_tls = bool(sessions) and all(f.get("tls", "") not in NOT_TLS for f in sessions)
            return [Login(f["mechanism"], f["tls"] not in NOT_TLS if "tls" in f else all_tls)
                    for f in auths], complete

        try:
            wait_until(lambda: collect()[1], timeout=LOG_WAIT, interval=0.05,
                       description=f"a {protocol} session line for every login of {user}")
        except WaitTimeout:
            pass  # a session still open: judge by the lines there are
        return collect()[0]


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[DovecotServer]:
    try:
        require_dovecot()
    except DovecotUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    with ThrowawayDovecot(USERS) as instance:
        yield DovecotServer(instance)


@pytest.fixture(scope="module")
def mailkeep_server() -> Iterator[MailkeepServer]:
    directory = Path(tempfile.mkdtemp(prefix="mk-clients-"))
    server = MailkeepServer(directory, USERS)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module", params=[
    "mailkeep", pytest.param("dovecot", marks=pytest.mark.dovecot)])
def server(request: pytest.FixtureRequest) -> MailServer:
    """The server under test: each client test runs once against each."""
    instance: MailServer = request.getfixturevalue(f"{request.param}_server")
    return instance


# ------------------------------------------------------------------------------ server view

def _message(subject: str, body: str, *, date: str = "Mon, 01 Jan 2024 10:00:00 +0000") -> bytes:
    marker = uuid.uuid4().hex
    return (f"From: Sender <sender@clients.test>\r\nTo: someone@clients.test\r\n"
            f"Subject: {subject}\r\nDate: {date}\r\nMessage-ID: <{marker}@clients.test>\r\n"
            f"\r\n{body}\r\n").encode()


class ServerView:
    """The server side of a test, seen through imaplib (independent of the client tested)."""

    def __init__(self, server: MailServer, user: str) -> None:
        context = ssl.create_default_context(cafile=str(server.ca_file))
        self.imap = imaplib.IMAP4_SSL("localhost", server.port("imaps"), ssl_context=context,
                                      timeout=10)
        self.imap.login(user, USERS[user])

    def __enter__(self) -> ServerView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.imap.logout()

    def append(self, folder: str, message: bytes, flags: str | None = None) -> None:
        typ, data = self.imap.append(folder, flags, None, message)
        assert typ == "OK", data

    def create(self, folder: str) -> None:
        assert self.imap.create(folder)[0] == "OK"

    def folders(self) -> set[str]:
        _, data = self.imap.list()
        names = set()
        for line in data:
            assert isinstance(line, bytes)
            # (flags) "delimiter" name — names here are plain atoms or quoted strings.
            names.add(line.rsplit(b" ", 1)[1].strip(b'"').decode())
        return names

    def messages(self, folder: str = "INBOX") -> dict[bytes, set[str]]:
        """Body bytes -> flags, for every message of ``folder``."""
        assert self.imap.select(folder)[0] == "OK"
        _, data = self.imap.fetch("1:*", "(FLAGS BODY.PEEK[])")
        found: dict[bytes, set[str]] = {}
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                assert flags is not None, item[0]
                found[_without_tuid(item[1], b"\r\n")] = {
                    f.decode() for f in flags.group(1).split()} - {"\\Recent"}
        self.imap.close()
        return found

    def count(self, folder: str = "INBOX") -> int:
        """How many messages ``folder`` has (STATUS MESSAGES, selects nothing)."""
        typ, data = self.imap.status(folder, "(MESSAGES)")
        assert typ == "OK", data
        raw = data[0]
        assert isinstance(raw, bytes)
        found = re.search(rb"MESSAGES (\d+)", raw)
        assert found is not None, raw
        return int(found.group(1))

    def store(self, folder: str, body_marker: bytes, flags: str) -> None:
        """Add ``flags`` to the one message of ``folder`` whose text has ``body_marker``."""
        assert self.imap.select(folder)[0] == "OK"
        _, data = self.imap.search(None, "TEXT", body_marker.decode())
        (number,) = data[0].split()
        assert self.imap.store(number, "+FLAGS", flags)[0] == "OK"
        self.imap.close()

    def delete(self, folder: str, body_marker: bytes) -> None:
        """Delete the one message of ``folder`` with ``body_marker``, as another client would."""
        self.store(folder, body_marker, r"(\Deleted)")
        assert self.imap.select(folder)[0] == "OK"
        assert self.imap.expunge()[0] == "OK"
        self.imap.close()


def _unlf(message: bytes) -> bytes:
    """A message as local mail programs store it: LF line ends (RFC 5322 wants CRLF)."""
    return message.replace(b"\r\n", b"\n")


def _without_tuid(message: bytes, eol: bytes) -> bytes:
    """``message`` without mbsync's X-TUID tracking header.

    mbsync 1.4 adds "X-TUID:" to every message it stores, on either side, so that it can
    find the message again before it knows its UID: its bookkeeping, not a change a user
    would see as one.
    """
    header, sep, body = message.partition(eol + eol)
    kept = [line for line in header.split(eol) if not line.startswith(b"X-TUID: ")]
    return eol.join(kept) + sep + body


def _local(path: Path) -> bytes:
    """A message file of a client's Maildir (LF line ends), without X-TUID."""
    return _without_tuid(path.read_bytes(), b"\n")


def _crlf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _wrong_ca(server: MailServer, user: str, service: str, directory: Path) -> Endpoint:
    """``endpoint`` but trusting another CA than the one that issued the server's certificate."""
    stranger = make_test_certificates(directory / "stranger")
    right = server.endpoint(user, service)
    return Endpoint(right.host, right.port, right.tls, right.user, right.password,
                    stranger.ca_file)


# ------------------------------------------------------------------------------ mbsync

def test_mbsync_two_way_sync_with_flags_new_folders_and_deletions(
    server: MailServer, tmp_path: Path,
) -> None:
    user = "mbsync@clients.test"
    first, second, third, fourth = (_message(f"mbsync {n}", f"mbsync body {n}")
                                    for n in range(4))
    archived = _message("archived", "archived body")
    with ServerView(server, user) as view:
        view.append("INBOX", first)
        view.append("INBOX", second, r"(\Flagged)")
        view.append("INBOX", third)
        view.append("INBOX", fourth)
        view.create("Receipts")
        view.append("Receipts", archived, r"(\Seen)")

    setup = write_mbsyncrc(server.endpoint(user, "imaps"), tmp_path)
    run_mbsync(setup)

    # Pull: every message arrived (stored with LF line ends), flags in the file name.
    local = {_local(p): maildir_flags(p) for p in maildir_files(setup.inbox)}
    assert local == {_unlf(first): "", _unlf(second): "F", _unlf(third): "", _unlf(fourth): ""}
    (archive_file,) = maildir_files(setup.folder("Receipts"))
    assert _local(archive_file) == _unlf(archived) and maildir_flags(archive_file) == "S"

    # Changes on both sides: the user reads and deletes locally, files into a new folder,
    # writes a draft; meanwhile new mail arrives, another client flags a message and
    # deletes one.
    first_file = find_maildir_message(setup.inbox, b"mbsync body 0")
    third_file = find_maildir_message(setup.inbox, b"mbsync body 2")
    assert first_file is not None and third_file is not None
    set_maildir_flags(first_file, "RS")
    third_file.unlink()
    filed = _unlf(_message("filed locally", "filed body"))
    add_maildir_message(setup.folder("Projects"), filed, flags="S")
    draft = _unlf(_message("draft", "draft body"))
    add_maildir_message(setup.inbox, draft, flags="D")
    arrived = _message("arrived", "arrived body")
    with ServerView(server, user) as view:
        view.append("INBOX", arrived)
        view.store("INBOX", b"mbsync body 1", r"(\Seen)")
        view.delete("INBOX", b"mbsync body 3")

    run_mbsync(setup)

    with ServerView(server, user) as view:
        assert {"INBOX", "Receipts", "Projects"} <= view.folders()
        inbox = view.messages("INBOX")
        # Uploaded messages reach the server with CRLF line ends, as IMAP requires.
        assert inbox == {
            first: {"\\Seen", "\\Answered"},
            second: {"\\Flagged", "\\Seen"},
            _crlf(draft): {"\\Draft"},
            arrived: set(),
        }
        assert view.messages("Projects") == {_crlf(filed): {"\\Seen"}}
    local = {_local(p): maildir_flags(p) for p in maildir_files(setup.inbox)}
    assert local == {_unlf(first): "RS", _unlf(second): "FS", draft: "D", _unlf(arrived): ""}

    # A third run with nothing changed changes nothing.
    before = sorted(p.name for p in maildir_files(setup.inbox))
    run_mbsync(setup)
    assert sorted(p.name for p in maildir_files(setup.inbox)) == before


def test_mbsync_starttls_with_scram_sha_256(server: MailServer, tmp_path: Path) -> None:
    user = "scram@clients.test"
    message = _message("scram", "pulled over SCRAM")
    with ServerView(server, user) as view:
        view.append("INBOX", message)
    setup = write_mbsyncrc(server.endpoint(user, "imap"), tmp_path,
                           auth_mechs="SCRAM-SHA-256")
    run_mbsync(setup)
    assert [_local(p) for p in maildir_files(setup.inbox)] == [_unlf(message)]
    # The server saw SCRAM over TLS, not a fallback to PLAIN.
    assert Login("SCRAM-SHA-256", tls=True) in server.logins(user, "imap")


def test_mbsync_syncs_the_other_folders_when_one_name_is_refused(
    server: MailServer, tmp_path: Path,
) -> None:
    # mbsync 1.4 sends a local folder's name as raw UTF-8, which an IMAP4rev1 session cannot
    # take (RFC 3501 §5.1.3: modified UTF-7). The server must refuse only that folder: on a
    # NO mbsync skips it and goes on, on a BAD it gives up on every folder after it.
    user = "folders@clients.test"
    arrived = _message("arrived", "arrived for folders")
    with ServerView(server, user) as view:
        view.append("INBOX", arrived)
    setup = write_mbsyncrc(server.endpoint(user, "imaps"), tmp_path)
    add_maildir_message(setup.folder("A-\u00fc"), _unlf(_message("umlaut", "cannot go up")))
    later = _unlf(_message("later", "filed in a later folder"))
    add_maildir_message(setup.folder("Zed"), later, flags="S")

    result = run_mbsync(setup, check=False)

    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode != 0 and "CREATE" in output and " NO " in output, output
    with ServerView(server, user) as view:
        folders = view.folders()
        assert "Zed" in folders and not any(name.startswith("A-") for name in folders)
        assert view.messages("Zed") == {_crlf(later): {"\\Seen"}}
    assert [_local(p) for p in maildir_files(setup.inbox)] == [_unlf(arrived)]


def test_mbsync_refuses_a_certificate_from_another_ca(server: MailServer,
                                                      tmp_path: Path) -> None:
    wrong = _wrong_ca(server, "mbsync@clients.test", "imaps", tmp_path)
    result = run_mbsync(write_mbsyncrc(wrong, tmp_path), check=False)
    assert result.returncode != 0
    assert b"certificate" in (result.stderr + result.stdout).lower()


# ------------------------------------------------------------------------------ offlineimap

def test_offlineimap_syncs_both_ways(server: MailServer, tmp_path: Path) -> None:
    user = "offlineimap@clients.test"
    one, two = _message("oi one", "offlineimap body 1"), _message("oi two", "offlineimap body 2")
    kept = _message("oi kept", "kept in a folder")
    with ServerView(server, user) as view:
        view.append("INBOX", one)
        view.append("INBOX", two)
        view.create("Kept")
        view.append("Kept", kept, r"(\Flagged)")

    setup = write_offlineimaprc(server.endpoint(user, "imaps"), tmp_path)
    run_offlineimap(setup)
    assert sorted(_local(p) for p in maildir_files(setup.folder("INBOX"))) == sorted(
        [_unlf(one), _unlf(two)])
    (kept_file,) = maildir_files(setup.folder("Kept"))
    assert _local(kept_file) == _unlf(kept) and maildir_flags(kept_file) == "F"

    one_file = find_maildir_message(setup.folder("INBOX"), b"offlineimap body 1")
    assert one_file is not None
    set_maildir_flags(one_file, "S")
    written = _unlf(_message("oi local", "written locally"))
    add_maildir_message(setup.folder("INBOX"), written, flags="S")
    run_offlineimap(setup)

    with ServerView(server, user) as view:
        inbox = view.messages("INBOX")
    # offlineimap adds its X-OfflineIMAP header to messages it uploads; match by content.
    assert inbox[one] == {"\\Seen"} and inbox[two] == set()
    (uploaded,) = [(body, flags) for body, flags in inbox.items() if b"written locally" in body]
    assert uploaded[1] == {"\\Seen"}
    assert b"Subject: oi local" in uploaded[0]


# ------------------------------------------------------------------------------ fetchmail

def test_fetchmail_retrieves_over_pop3s_then_deletes_over_stls(
    server: MailServer, tmp_path: Path,
) -> None:
    user = "fetchmail@clients.test"
    # A line starting with "." is byte-stuffed on the wire (RFC 1939 §3) and must arrive
    # unstuffed; a lone "." would end the message early if the server forgot.
    sent = [_message(f"pop {n}", f"pop3 body {n}\r\n.leading dot\r\n.\r\nlast line")
            for n in range(3)]
    with ServerView(server, user) as view:
        for message in sent:
            view.append("INBOX", message)

    # Implicit TLS, keep: every message delivered to the MDA, nothing removed.
    kept = run_fetchmail(server.endpoint(user, "pop3s"), tmp_path / "keep", keep=True)
    assert kept.process.returncode == 0
    assert len(kept.delivered) == 3
    for original, delivered in zip(sent, kept.delivered, strict=True):
        # fetchmail puts its Received header on top and hands the MDA LF line ends.
        assert delivered.startswith(b"Received: from localhost")
        assert delivered.endswith(_unlf(original))
    with ServerView(server, user) as view:
        assert view.count("INBOX") == 3

    # STLS on the plain port, no keep: fetched again (fetchall), then deleted on the server.
    moved = run_fetchmail(server.endpoint(user, "pop3"), tmp_path / "move", keep=False)
    # fetchmail may hand them over in another order the second time (seen with Dovecot);
    # the order is not what this test is about.
    assert sorted(m.split(b"\n\n", 1)[1] for m in moved.delivered) == sorted(
        _unlf(m).split(b"\n\n", 1)[1] for m in sent)
    with ServerView(server, user) as view:
        assert view.count("INBOX") == 0
    # Both runs logged in with a password, and only ever over TLS.
    logins = server.logins(user, "pop3")
    assert len(logins) == 2 and all(login.tls for login in logins), logins

    # Nothing left: fetchmail's "no mail" status, nothing delivered.
    empty = run_fetchmail(server.endpoint(user, "pop3s"), tmp_path / "move", keep=False)
    assert empty.process.returncode == FETCHMAIL_NO_MAIL and empty.delivered == []


def test_fetchmail_fetches_only_new_mail_by_uidl(server: MailServer, tmp_path: Path) -> None:
    # Leaving mail on the server and fetching only what is new relies on UIDL being stable
    # across sessions (RFC 1939 §7): fetchmail remembers the UIDs it has seen in its idfile.
    user = "uidl@clients.test"
    old = [_message(f"old {n}", f"old body {n}") for n in range(2)]
    with ServerView(server, user) as view:
        for message in old:
            view.append("INBOX", message)
    first = run_fetchmail(server.endpoint(user, "pop3s"), tmp_path, keep=True,
                          fetch_all=False)
    assert len(first.delivered) == 2
    assert all(got.endswith(_unlf(sent)) for got, sent in zip(first.delivered, old, strict=True))

    new = _message("new", "new body")
    with ServerView(server, user) as view:
        view.append("INBOX", new)
    second = run_fetchmail(server.endpoint(user, "pop3s"), tmp_path, keep=True,
                           fetch_all=False)
    assert len(second.delivered) == 1 and second.delivered[0].endswith(_unlf(new))

    # Nothing new: nothing fetched, and everything still on the server.
    third = run_fetchmail(server.endpoint(user, "pop3s"), tmp_path, keep=True,
                          fetch_all=False)
    assert third.process.returncode == FETCHMAIL_NO_MAIL and third.delivered == []
    with ServerView(server, user) as view:
        assert view.count("INBOX") == 3


def test_fetchmail_refuses_a_certificate_from_another_ca(server: MailServer,
                                                         tmp_path: Path) -> None:
    user = "fetchmail@clients.test"
    before = len(server.logins(user, "pop3"))
    wrong = _wrong_ca(server, user, "pop3s", tmp_path)
    result = run_fetchmail(wrong, tmp_path / "wrong", check=False)
    assert result.process.returncode not in (0, FETCHMAIL_NO_MAIL) and result.delivered == []
    assert b"certificate" in (result.process.stderr + result.process.stdout).lower()
    # The password was never sent: no login happened.
    assert len(server.logins(user, "pop3")) == before


# ------------------------------------------------------------------------------ mutt

def test_mutt_lists_a_folder_and_saves_a_message(server: MailServer, tmp_path: Path) -> None:
    user = "mutt@clients.test"
    messages = [
        _message("mutt second", "second body", date="Tue, 02 Jan 2024 10:00:00 +0000"),
        _message("mutt first", "first body", date="Mon, 01 Jan 2024 10:00:00 +0000"),
        _message("mutt third", "third body\r\nwith two lines",
                 date="Wed, 03 Jan 2024 10:00:00 +0000"),
    ]
    with ServerView(server, user) as view:
        for message in messages:
            view.append("INBOX", message)

    # Over STARTTLS: the listing in mutt's order (sorted by date sent).
    subjects = mutt_list_subjects(server.endpoint(user, "imap"), tmp_path / "list")
    assert subjects == ["mutt first", "mutt second", "mutt third"]

    # Over implicit TLS: save one message found by a pattern, as a user would.
    saved = mutt_copy_messages(server.endpoint(user, "imaps"), tmp_path / "save",
                               pattern="~s third")
    (message,) = saved.messages
    header, _, body = message.partition(b"\n\n")
    assert body == b"third body\nwith two lines\n"
    original_header = _unlf(messages[2]).partition(b"\n\n")[0]
    for line in original_header.split(b"\n"):
        assert line in header.split(b"\n")
    # Reading changed nothing on the server (no flags set, nothing deleted).
    with ServerView(server, user) as view:
        assert view.messages("INBOX") == {m: set() for m in messages}


def test_mutt_opens_a_folder_with_a_non_ascii_name(server: MailServer, tmp_path: Path) -> None:
    # imaplib creates it in modified UTF-7 (RFC 3501 §5.1.3); mutt asks for "Büro" in
    # UTF-8 after ENABLE UTF8=ACCEPT where the server offers it (RFC 6855 §3), else in
    # modified UTF-7 itself. Either way it is the same folder.
    user = "mutt@clients.test"
    message = _message("office", "filed in the office folder")
    with ServerView(server, user) as view:
        view.create('"B&APw-ro"')
        view.append('"B&APw-ro"', message)
    saved = mutt_copy_messages(server.endpoint(user, "imaps"), tmp_path / "mutt",
                               folder="B\u00fcro")
    (copied,) = saved.messages
    assert copied.partition(b"\n\n")[2] == b"filed in the office folder\n"
    assert b"Subject: office" in copied.partition(b"\n\n")[0].split(b"\n")


def test_mutt_stops_at_an_unverifiable_certificate(server: MailServer, tmp_path: Path) -> None:
    wrong = _wrong_ca(server, "mutt@clients.test", "imaps", tmp_path)
    with pytest.raises(ProcessError, match="stopped to ask"):
        mutt_copy_messages(wrong, tmp_path / "mutt", timeout=30)


# ------------------------------------------------------------------------------ helpers

def test_logfmt_lines_are_parsed_with_quoted_values() -> None:
    line = ('ts=2026-11-20T23:59:01.123Z level=info subsystem=sasl msg=login event=auth '
            'result=success account="a b\\"c" detail=""')
    assert parse_logfmt(line) == {
        "ts": "2026-11-20T23:59:01.123Z", "level": "info", "subsystem": "sasl",
        "msg": "login", "event": "auth", "result": "success", "account": 'a b"c',
        "detail": ""}


def test_mailkeep_logins_are_judged_tls_from_the_session_lines(tmp_path: Path) -> None:
    server = MailkeepServer(tmp_path, {})
    auth = ("level=info subsystem=auth msg=login event=auth result=success protocol=imap "
            "ip=127.0.0.1 mechanism={mech} account=a@clients.test")
    session = "level=info subsystem=imap msg=session client=127.0.0.1 account={acct} tls={tls}"
    server.log_path.write_text("\n".join([
        auth.format(mech="SCRAM-SHA-256"),
        session.format(acct="a@clients.test", tls="TLSv1.3"),
        session.format(acct="b@clients.test", tls="no"),  # someone else's session
    ]) + "\n")
    assert server.logins("a@clients.test", "imap") == [Login("SCRAM-SHA-256", tls=True)]
    assert server.logins("a@clients.test", "pop3") == []
    with server.log_path.open("a") as log:
        log.write(auth.format(mech="PLAIN") + "\n")
        log.write(session.format(acct="a@clients.test", tls="no") + "\n")
    # One of the account's sessions was not over TLS: no login of it counts as TLS.
    assert server.logins("a@clients.test", "imap") == [Login("SCRAM-SHA-256", tls=False),
                                                       Login("PLAIN", tls=False)]
    # Once the auth line says itself, that is what counts.
    with server.log_path.open("a") as log:
        log.write(auth.format(mech="SCRAM-SHA-1") + " tls=TLSv1.2\n")
    assert server.logins("a@clients.test", "imap")[-1] == Login("SCRAM-SHA-1", tls=True)


def test_maildir_flag_changes_keep_the_unique_name(tmp_path: Path) -> None:
    path = add_maildir_message(tmp_path / "box", b"Subject: x\r\n\r\nx\r\n")
    assert path.parent.name == "new" and maildir_flags(path) == ""
    renamed = set_maildir_flags(path, "SF")
    assert renamed.parent.name == "cur" and renamed.name == f"{path.name}:2,FS"
    again = set_maildir_flags(renamed, "")
    assert again.name == f"{path.name}:2," and maildir_files(tmp_path / "box") == [again]
    with pytest.raises(ValueError):
        set_maildir_flags(again, "X")


@pytest.mark.parametrize("field, value", [
    ("password", 'with"quote'), ("password", "with space"), ("user", "back\\slash"),
    ("password", "dollar$sign"), ("host", ""),
])
def test_endpoint_refuses_values_the_client_configs_cannot_quote(field: str,
                                                                  value: str) -> None:
    values = {"host": "localhost", "port": 993, "tls": "implicit", "user": "u@x.test",
              "password": "pw-123456", "ca_file": Path("/nonexistent")}
    values[field] = value
    with pytest.raises(ValueError):
        Endpoint(**values)  # type: ignore[arg-type]

