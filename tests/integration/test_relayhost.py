"""A running Mailkeep sending through a real Postfix relay host that requires SASL over
verified TLS (seed 000's `relayhost = [smtp.provider]:submission`)."""

from __future__ import annotations

import shutil
import smtplib
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.conftest import RunningServer, make_server
from tests.support.certs import TestCA
from tests.support.postfix import ThrowawayPostfix

PASSWORD = "correct horse battery"
RELAY_LOGIN = "mailkeep@provider.test"
RELAY_PASSWORD = "relay secret 42"
DEST_DOMAIN = "far.test"
DEST_USER = "friend"
EXTRA = """
[relays.provider]
host = "[127.0.0.1]:{port}"
username = "{login}"
password_file = "{password_file}"
tls = "verify"

[delivery]
relayhost = "provider"
ca_file = "{ca_file}"
mta_sts = false
dane = false

[queue]
queue_run_delay = "1s"
minimal_backoff_time = "1s"
maximal_backoff_time = "2s"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Iterator[tuple[TestCA, TestCA, Path, Path]]:
    base = tmp_path_factory.mktemp("pki")
    ca = TestCA.create(base / "ca")
    other = TestCA.create(base / "other", name="Some Other CA")
    cert = ca.issue(["smtp.provider.test"])
    # Postfix's daemons run as postfix: the files go where that user can read them.
    shared = Path(f"/tmp/mailkeep-relayhost-{uuid.uuid4().hex}")
    shared.mkdir(mode=0o755)
    cert_file, key_file = shared / "relay.crt", shared / "relay.key"
    shutil.copy(cert.cert_file, cert_file)
    shutil.copy(cert.key_file, key_file)
    key_file.chmod(0o644)
    yield ca, other, cert_file, key_file
    shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="module")
def provider(pki) -> Iterator[ThrowawayPostfix]:
    _, _, cert_file, key_file = pki
    with ThrowawayPostfix.sasl_submission(
            DEST_DOMAIN, DEST_USER, login=RELAY_LOGIN, password=RELAY_PASSWORD,
            cert_file=cert_file, key_file=key_file, hostname="smtp.provider.test") as postfix:
        yield postfix


def _server(directory: Path, provider: ThrowawayPostfix, ca_file: Path,
            relay_password: str) -> RunningServer:
    directory.mkdir(parents=True)
    secret = directory / "provider.secret"
    secret.write_text(relay_password + "\n")
    secret.chmod(0o600)
    srv = make_server(directory / "mk", EXTRA.format(
        port=provider.port, login=RELAY_LOGIN, password_file=secret, ca_file=ca_file))
    srv.set_password("demo@example.test", PASSWORD)
    srv.start()
    return srv


def _submit(srv: RunningServer, subject: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=20) as client:
        client.starttls(context=ctx)
        client.login("demo@example.test", PASSWORD)
        client.sendmail("demo@example.test", [f"{DEST_USER}@{DEST_DOMAIN}"],
                        f"From: <demo@example.test>\r\nTo: <{DEST_USER}@{DEST_DOMAIN}>\r\n"
                        f"Subject: {subject}\r\n\r\nvia the provider\r\n".encode())


def _wait(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_mail_goes_through_the_relay_with_sasl_over_verified_tls(tmp_path, pki, provider):
    ca = pki[0]
    srv = _server(tmp_path / "ok", provider, ca.ca_file, RELAY_PASSWORD)
    try:
        _submit(srv, "through the provider")
        found = _wait(lambda: [m for m in provider.maildir_messages()
                               if b"Subject: through the provider" in m], "the relayed mail")
        assert found
        log = provider.log_text()
        assert "TLS connection established from" in log
        assert f"sasl_username={RELAY_LOGIN}" in log
        _wait(lambda: "demo@example.test" not in srv.cli("queue", "list").stdout,
              "the queue to empty")
    finally:
        srv.stop()


def test_a_refused_relay_login_defers_instead_of_bouncing(tmp_path, pki, provider):
    ca = pki[0]
    srv = _server(tmp_path / "badpw", provider, ca.ca_file, "not the password")
    try:
        _submit(srv, "wrong relay password")
        listing = _wait(lambda: (lambda out: out if "535" in out or "uthentication" in out
                                 else None)(srv.cli("queue", "list").stdout),
                        "the authentication failure in the queue listing")
        assert f"{DEST_USER}@{DEST_DOMAIN}" in listing, "still queued, not bounced"
        assert "relay authentication failed" in srv.log_text()
        assert not [m for m in provider.maildir_messages()
                    if b"Subject: wrong relay password" in m]
        assert len(srv.messages("demo@example.test")) == 0, "no bounce to the sender"
    finally:
        srv.stop()


def test_an_unverifiable_relay_certificate_gets_nothing(tmp_path, pki, provider):
    other = pki[1]
    logins_before = provider.log_text().count(f"sasl_username={RELAY_LOGIN}")
    srv = _server(tmp_path / "badca", provider, other.ca_file, RELAY_PASSWORD)
    try:
        _submit(srv, "untrusted relay")
        listing = _wait(lambda: (lambda out: out if "certificate" in out.lower()
                                 else None)(srv.cli("queue", "list").stdout),
                        "the certificate failure in the queue listing")
        assert f"{DEST_USER}@{DEST_DOMAIN}" in listing
        # The password was never sent to a server whose certificate did not verify.
        assert provider.log_text().count(f"sasl_username={RELAY_LOGIN}") == logins_before
        assert not [m for m in provider.maildir_messages()
                    if b"Subject: untrusted relay" in m]
    finally:
        srv.stop()
