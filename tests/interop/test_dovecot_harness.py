"""The throwaway Dovecot harness works: real clients log in over TLS, store and read mail.

The IMAP and POP3 interop tests and the IMAP benchmark use ``ThrowawayDovecot`` as the
reference server, so these tests check what a user of the harness relies on: every
listener greets and speaks TLS with a certificate the given CA verifies, PLAIN/LOGIN work
against the Argon2id hashes Mailkeep writes, SCRAM-SHA-256 works against the verifiers the
harness writes, a message appended over IMAP is fetched back byte for byte and retrieved
over POP3, and nothing (process, port, directory) is left behind.

Dovecot missing is a failure with instructions (run `make test`), never a skip.
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import socket
import ssl
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from scramp import ScramClient, ScramMechanism
from tests.support.dovecot import (
    DovecotUnavailable,
    ThrowawayDovecot,
    make_test_certificates,
    require_dovecot,
    scram_sha256_verifier,
)
from tests.support.procs import pid_is_alive, port_is_open, processes_in_group, run_command

pytestmark = [pytest.mark.interop, pytest.mark.dovecot, pytest.mark.timeout(120)]

USER = "demo@bench.test"
PASSWORD = "harness-pw-1234"
OTHER = "other@example.test"
OTHER_PASSWORD = "other-pw-5678"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[ThrowawayDovecot]:
    try:
        require_dovecot()
    except DovecotUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    with ThrowawayDovecot({USER: PASSWORD, OTHER: OTHER_PASSWORD}) as instance:
        yield instance


def _tls(instance: ThrowawayDovecot) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(instance.ca_file))


def _message(marker: str, body: str = "Hello from the harness test.") -> bytes:
    return (f"From: Sender <sender@client.test>\r\nTo: {USER}\r\nSubject: harness {marker}\r\n"
            f"Message-ID: <{marker}@client.test>\r\n\r\n{body}\r\n").encode()


def _imaps(instance: ThrowawayDovecot) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL("localhost", instance.ports.imaps, ssl_context=_tls(instance),
                             timeout=10)


def test_append_then_fetch_over_imaps_returns_the_same_bytes(dovecot: ThrowawayDovecot) -> None:
    marker = uuid.uuid4().hex
    message = _message(marker)
    imap = _imaps(dovecot)
    try:
        typ, _ = imap.login(USER, PASSWORD)
        assert typ == "OK"
        typ, data = imap.append("INBOX", r"(\Flagged)", None, message)
        assert typ == "OK" and b"APPENDUID" in data[0]
        typ, data = imap.select("INBOX")
        assert typ == "OK"
        typ, found = imap.uid("SEARCH", "HEADER", "Message-ID", f"<{marker}@client.test>")
        (uid,) = found[0].split()
        typ, data = imap.uid("FETCH", uid, "(FLAGS RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK"
        header, body = data[0]
        assert body == message
        assert f"RFC822.SIZE {len(message)}".encode() in header
        assert rb"\Flagged" in header
    finally:
        imap.logout()
    # The message is a file in the user's Maildir, owned by the unprivileged mail user.
    files = [p for p in dovecot.maildir_files(USER) if marker.encode() in p.read_bytes()]
    assert len(files) == 1
    assert files[0].stat().st_uid != 0


def test_starttls_on_the_imap_port_then_login(dovecot: ThrowawayDovecot) -> None:
    imap = imaplib.IMAP4("127.0.0.1", dovecot.ports.imap, timeout=10)
    try:
        assert "STARTTLS" in imap.capabilities
        typ, _ = imap.starttls(ssl_context=_tls(dovecot))
        assert typ == "OK"
        assert isinstance(imap.sock, ssl.SSLSocket)
        assert imap.login(OTHER, OTHER_PASSWORD)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
    finally:
        imap.logout()


def _scram_login(instance: ThrowawayDovecot, user: str, password: str) -> str:
    """AUTHENTICATE SCRAM-SHA-256 (RFC 7677) with scramp; returns the tagged status."""
    client = ScramClient(["SCRAM-SHA-256"], user, password)
    steps = iter([
        lambda _challenge: client.get_client_first(),
        lambda challenge: (client.set_server_first(challenge), client.get_client_final())[1],
        lambda challenge: (client.set_server_final(challenge), "")[1],
    ])

    def answer(challenge: bytes) -> bytes:
        return next(steps)(challenge.decode()).encode()

    imap = _imaps(instance)
    try:
        assert "AUTH=SCRAM-SHA-256" in imap.capabilities
        status, _ = imap.authenticate("SCRAM-SHA-256", answer)
        return status
    finally:
        imap.shutdown()


def test_scram_sha_256_login_uses_the_scram_verifier(dovecot: ThrowawayDovecot) -> None:
    # set_server_final checks the server's signature: this proves mutual authentication.
    assert _scram_login(dovecot, USER, PASSWORD) == "OK"
    assert _scram_login(dovecot, OTHER, OTHER_PASSWORD) == "OK"


def test_wrong_passwords_are_refused() -> None:
    # Its own instance: Dovecot delays every later login from an IP after a failure
    # (anvil's auth penalty), which would slow the other tests sharing 127.0.0.1. The
    # fixed delay before a failure reply (2 s by default) is not what this test is about.
    require_dovecot()
    with ThrowawayDovecot({USER: PASSWORD}, settings={"auth_failure_delay": "0"}) as instance:
        imap = _imaps(instance)
        try:
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                imap.login(USER, PASSWORD + "x")
        finally:
            imap.shutdown()
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            _scram_login(instance, USER, "not-the-password")
        assert "auth failed" in instance.log_text() or "Disconnected" in instance.log_text()


def test_pop3s_and_stls_retrieve_a_message_appended_over_imap(dovecot: ThrowawayDovecot) -> None:
    marker = uuid.uuid4().hex
    message = _message(marker, "For POP3.")
    imap = _imaps(dovecot)
    try:
        imap.login(OTHER, OTHER_PASSWORD)
        assert imap.append("INBOX", None, None, message)[0] == "OK"
    finally:
        imap.logout()

    def retrieve(pop: poplib.POP3) -> list[bytes]:
        assert pop.user(OTHER).startswith(b"+OK")
        assert pop.pass_(OTHER_PASSWORD).startswith(b"+OK")
        count, _ = pop.stat()
        bodies = [b"\r\n".join(pop.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
        pop.quit()
        return bodies

    pop = poplib.POP3_SSL("localhost", dovecot.ports.pop3s, context=_tls(dovecot), timeout=10)
    assert message in retrieve(pop)
    pop = poplib.POP3("127.0.0.1", dovecot.ports.pop3, timeout=10)
    assert "STLS" in pop.capa()
    pop.stls(context=_tls(dovecot))
    assert message in retrieve(pop)


def test_the_certificate_is_checked_by_clients(dovecot: ThrowawayDovecot, tmp_path: Path) -> None:
    # A CA the server's certificate does not chain to: the handshake must fail.
    stranger = make_test_certificates(tmp_path / "other-ca")
    context = ssl.create_default_context(cafile=str(stranger.ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("localhost", dovecot.ports.imaps, ssl_context=context, timeout=10)
    # The right CA, but a name the certificate does not carry.
    with (socket.create_connection(("127.0.0.1", dovecot.ports.imaps), timeout=10) as raw,
          pytest.raises(ssl.SSLCertVerificationError, match="mismatch")):
        _tls(dovecot).wrap_socket(raw, server_hostname="mail.example.org")
    # The right CA and name: the handshake succeeds and the server greets.
    with (socket.create_connection(("127.0.0.1", dovecot.ports.imaps), timeout=10) as raw,
          _tls(dovecot).wrap_socket(raw, server_hostname="localhost") as tls):
        assert tls.recv(100).startswith(b"* OK")


def test_dovecot_verifies_mailkeep_hashes_and_our_scram_verifiers(
    dovecot: ThrowawayDovecot,
) -> None:
    assert dovecot.root is not None
    stored = (dovecot.root / "passwd").read_text().splitlines()
    assert all(line.split(":")[1].startswith("{ARGON2ID}$argon2id$") for line in stored)
    verifier = scram_sha256_verifier(PASSWORD)
    ok = run_command(["/usr/bin/doveadm", "pw", "-t", verifier, "-p", PASSWORD], timeout=30)
    assert b"(verified)" in ok.stdout
    bad = run_command(["/usr/bin/doveadm", "pw", "-t", verifier, "-p", "wrong"], timeout=30,
                      check=False)
    assert bad.returncode != 0


def test_scram_verifier_agrees_with_an_independent_implementation() -> None:
    # Salt and password of RFC 7677 §3's example; scramp derives the same keys on its own.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_sha256_verifier("pencil", salt=salt)
    scheme, _, rest = verifier.partition("}")
    iterations, salt_b64, stored_key, server_key = rest.split(",")
    assert scheme == "{SCRAM-SHA-256" and iterations == "4096"
    assert base64.b64decode(salt_b64) == salt
    _salt, expected_stored, expected_server, _i = ScramMechanism("SCRAM-SHA-256").make_auth_info(
        "pencil", iteration_count=4096, salt=salt)
    assert base64.b64decode(stored_key) == expected_stored
    assert base64.b64decode(server_key) == expected_server
    with pytest.raises(ValueError):
        scram_sha256_verifier("pencil", iterations=1000)


def test_configuration_is_private_and_loopback_only(dovecot: ThrowawayDovecot) -> None:
    assert dovecot.root is not None
    result = run_command(["/usr/bin/doveconf", "-c", dovecot.config_path, "-h", "base_dir",
                          "listen", "mail_fsync", "auth_cache_size"], timeout=30)
    assert result.stdout.decode().split("\n")[:4] == [
        str(dovecot.root / "run"), "127.0.0.1", "optimized", "0"]
    conf = dovecot.config_path.read_text()
    assert "/etc/dovecot" not in conf and "!include" not in conf
    assert f"Login: user=<{USER}>" in dovecot.log_text()


def test_stop_leaves_nothing_behind() -> None:
    require_dovecot()
    instance = ThrowawayDovecot()
    with instance:
        root, pid, ports = instance.root, instance.pid, instance.ports
        assert root is not None and pid is not None and pid_is_alive(pid)
        # The master leads a group of several services (log, config, auth, anvil, login).
        assert len(processes_in_group(pid)) > 3
        assert all(port_is_open(p) for p in (ports.imap, ports.imaps, ports.pop3, ports.pop3s))
    assert not pid_is_alive(pid)
    assert not processes_in_group(pid)
    assert not any(port_is_open(p) for p in (ports.imap, ports.imaps, ports.pop3, ports.pop3s))
    assert not root.exists()


def test_missing_dovecot_is_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.support.dovecot as harness

    monkeypatch.setattr(harness, "DOVECOT", "/nonexistent/dovecot")
    with pytest.raises(DovecotUnavailable, match=r"make test"):
        require_dovecot()
    instance = ThrowawayDovecot()
    with pytest.raises(DovecotUnavailable):
        instance.start()
    assert instance.root is None


@pytest.mark.parametrize("user, password", [
    ("../../etc@x.test", "pw-123456"),
    ("no-domain", "pw-123456"),
    ("a@b.test", "has space"),
    ("a@b.test", "colon:inside"),
    ("a@b.test", ""),
])
def test_unsafe_users_are_refused_before_anything_is_written(user: str, password: str) -> None:
    with pytest.raises(ValueError):
        ThrowawayDovecot({user: password})


def test_unsafe_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ThrowawayDovecot(settings={"ssl": "no\nprotocols = imap"})
    with pytest.raises(ValueError):
        ThrowawayDovecot(settings={"bad name": "x"})


# ----------------------------------------------------------------------------------------
# The harness's main consumer: benchmarks/imap_mixed.py must run clean against it.

def test_imap_benchmark_runs_clean_against_the_harness() -> None:
    require_dovecot()
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "imap_mixed.py"
    result = run_command(
        [sys.executable, script, "--only", "dovecot", "--messages", "40", "--users", "2",
         "--clients", "4", "--duration", "2", "--rounds", "2", "--warmup", "0",
         "--session-ops", "40"],
        timeout=120, check=False)
    output = result.stdout.decode()
    assert result.returncode == 0, output + result.stderr.decode()
    assert output.count(" dovecot ") >= 2 and "0 errors" in output
    # Every operation of the workload ran and was answered correctly (no error rows).
    for op in ("connect", "login", "select", "fetch_all", "fetch_headers", "fetch_bodies",
               "store_seen", "search_unseen", "search_from", "search_subject", "append",
               "store_deleted", "expunge", "noop", "logout"):
        assert re.search(rf"^{op}\s+[1-9]", output, re.M), f"no {op} in:\n{output}"
    assert "errors (first" not in output
