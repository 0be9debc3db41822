"""ACME end to end: a real `mailkeep serve` obtains, serves and renews certificates from
Debian's pebble, which validates over real sockets and resolves the names through a
throwaway NSD + Unbound.

Names: mx.example.test (the hostname), mta-sts. and autoconfig.example.test, and
mta-sts.other.test resolve to 127.0.0.1. autoconfig.other.test and every name under
bücher.test do not resolve: the optional names the server must leave out, with a warning.
"""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.support.certs import TestCA
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.pebble import Pebble
from tests.support.procs import free_port, wait_until

from .conftest import RunningServer, make_server

pytestmark = pytest.mark.slow

ZONES = [
    Zone("example.test", "mx A 127.0.0.1\nmta-sts A 127.0.0.1\nautoconfig A 127.0.0.1"),
    Zone("other.test", "mta-sts A 127.0.0.1"),
]
HOSTNAME = "mx.example.test"
RESOLVING = {"mx.example.test", "mta-sts.example.test", "autoconfig.example.test",
             "mta-sts.other.test"}
#: TLS 1.2 suites that force one certificate type (TLS 1.3 suites do not say).
SUITES = {
    "ecdsa": "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
    "rsa": "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384",
}
ISSUE_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def dns() -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS(ZONES) as throwaway:
        yield throwaway


@dataclass
class Setup:
    server: RunningServer
    pebble: Pebble
    http_port: int
    https_port: int

    def root(self) -> bytes:
        return self.pebble.issuing_root()


@pytest.fixture
def acme(tmp_path: Path, dns: ThrowawayDNS) -> Iterator[Callable[..., Setup]]:
    """Builds a pebble and a Mailkeep server whose [acme] points at it; stops both."""
    made: list[Setup] = []

    def build(*, challenges: str = '["http-01", "tls-alpn-01"]', names: str | None = None,
              key_types: str | None = None, http: bool = True, validity: int | None = None,
              start_pebble: bool = True, start_server: bool = True) -> Setup:
        http_port, https_port = free_port(), free_port()
        pebble = Pebble(tmp_path / "pebble", dns=dns.resolver_address, http_port=http_port,
                        tls_port=https_port, validity=validity)
        if start_pebble:
            pebble.start()
        extra = ""
        if http:
            extra += f'\n[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:{http_port}"\n'
        extra += (f'\n[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:{https_port}"\n'
                  f'\n[acme]\nenabled = true\ndirectory = "{pebble.directory_url}"\n'
                  f'ca_file = "{pebble.ca_file}"\nemail = "postmaster@example.test"\n'
                  f'challenges = {challenges}\nretry_interval = "2s"\n')
        if names is not None:
            extra += f"names = {names}\n"
        if key_types is not None:
            extra += f"key_types = {key_types}\n"
        server = make_server(tmp_path / "mk", extra)
        setup = Setup(server, pebble, http_port, https_port)
        made.append(setup)
        if start_server:
            server.start()
        return setup

    yield build
    for setup in made:
        if setup.server.proc is not None:
            setup.server.stop()
        setup.pebble.stop()


# -- TLS clients --------------------------------------------------------------------------


def client_context(kind: str | None = None, root: bytes | None = None) -> ssl.SSLContext:
    """A client that verifies against ``root`` (pebble's issuing root) when given, and
    offers only the suites of ``kind`` ("ecdsa"/"rsa") when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if root is not None:
        context.load_verify_locations(cadata=root.decode())
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if kind is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(SUITES[kind])
    return context


def implicit_tls_cert(port: int, context: ssl.SSLContext,
                      name: str = HOSTNAME) -> x509.Certificate:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    return data


def starttls_cert(port: int, context: ssl.SSLContext, name: str = HOSTNAME) -> x509.Certificate:
    """The certificate an SMTP server presents after STARTTLS (RFC 3207)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        assert _reply(raw).startswith(b"220")
        raw.sendall(b"EHLO client.example.test\r\n")
        assert b"STARTTLS" in _reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        assert _reply(raw).startswith(b"220")
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def san(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(ext.value.get_values_for_type(x509.DNSName))


def from_pebble(cert: x509.Certificate) -> bool:
    return "Pebble" in cert.issuer.rfc4514_string()


def wait_for_issued(setup: Setup, *, name: str = HOSTNAME) -> x509.Certificate:
    """The IMAPS certificate once it is pebble's (the server starts on the fallback)."""
    def issued() -> x509.Certificate | None:
        cert = implicit_tls_cert(setup.server.imaps_port, client_context(), name)
        return cert if from_pebble(cert) else None

    try:
        return wait_until(issued, timeout=ISSUE_TIMEOUT, interval=0.25,
                          description="a certificate from pebble on IMAPS")
    except TimeoutError:
        pytest.fail("no ACME certificate; server log:\n"
                    + setup.server.log_text()[-6000:] + "\npebble log:\n"
                    + setup.pebble.log_text()[-3000:])


def log_lines(server: RunningServer, msg: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if f'msg="{msg}"' in line
            or f"msg={msg} " in line]


# -- the tests ----------------------------------------------------------------------------


def test_http01_issues_ecdsa_and_rsa_served_on_every_tls_listener(acme):
    setup = acme(challenges='["http-01"]')
    server = setup.server
    wait_for_issued(setup)
    root = setup.root()
    # The fallback was announced while the CA had not issued yet.
    assert log_lines(server, "no ACME certificate yet: serving the self-signed one until "
                             "the CA issues one")
    # Wait for the second key type too: the RSA order runs after the ECDSA one.
    wait_until(lambda: from_pebble(implicit_tls_cert(server.imaps_port, client_context("rsa"))),
               timeout=ISSUE_TIMEOUT, description="the RSA certificate")
    for kind, key_class in (("ecdsa", ec.EllipticCurvePublicKey),
                            ("rsa", rsa.RSAPublicKey)):
        verified = client_context(kind, root)  # chain to pebble's root, name checked
        served = [implicit_tls_cert(server.imaps_port, verified),
                  starttls_cert(server.smtp_port, verified),
                  implicit_tls_cert(setup.https_port, verified),
                  implicit_tls_cert(setup.https_port, verified, "mta-sts.other.test")]
        assert all(isinstance(c.public_key(), key_class) for c in served), kind
        assert len({c.serial_number for c in served}) == 1, kind
        # Every name with DNS, none without.
        assert san(served[0]) == RESOLVING, kind
    # The names without DNS were left out with a warning saying what to publish.
    warnings = log_lines(server, "name left out of the certificate")
    left_out = {"autoconfig.other.test", "mta-sts.xn--bcher-kva.test",
                "autoconfig.xn--bcher-kva.test"}
    for name in left_out:
        line = next((w for w in warnings if f"identifier={name} " in w), None)
        assert line is not None, (name, warnings)
        assert "level=warning" in line and f"publish an A/AAAA record for {name}" in line
    status = server.cli("cert", "status")
    assert status.returncode == 0, status.stderr
    assert "ecdsa (acme)" in status.stdout and "rsa (acme)" in status.stdout
    assert "days left" in status.stdout and "Pebble Intermediate CA" in status.stdout
    assert "Left out for now (the CA could not validate them; fix their DNS):\n" \
        "  autoconfig.other.test (since " in status.stdout


def test_tls_alpn01_and_new_names_after_a_reload(acme):
    setup = acme(challenges='["tls-alpn-01"]', http=False, names='["mx.example.test"]',
                 key_types='["ecdsa"]')
    server = setup.server
    first = wait_for_issued(setup)
    assert san(first) == {HOSTNAME}
    assert not log_lines(server, "name left out of the certificate")
    # No http listener: pebble validated with TLS-ALPN-01 on the https one.
    assert "validate w/ HTTP" not in setup.pebble.log_text()
    text = server.config.read_text().replace('names = ["mx.example.test"]',
                                             'names = ["mx.example.test", '
                                             '"mta-sts.example.test"]')
    server.config.write_text(text)
    os.kill(server.proc.pid, signal.SIGHUP)
    root = setup.root()
    cert = wait_until(
        lambda: (c := implicit_tls_cert(setup.https_port, client_context())) and
        "mta-sts.example.test" in san(c) and c,
        timeout=ISSUE_TIMEOUT, interval=0.25, description="the certificate with the new name")
    assert san(cert) == {HOSTNAME, "mta-sts.example.test"}
    verified = implicit_tls_cert(setup.https_port, client_context("ecdsa", root),
                                 "mta-sts.example.test")
    assert verified.serial_number == cert.serial_number


def test_forced_renewal_keeps_open_sessions_and_new_ones_get_the_new_certificate(acme):
    setup = acme(challenges='["http-01"]', names='["mx.example.test"]')
    server = setup.server
    wait_for_issued(setup)
    wait_until(lambda: from_pebble(implicit_tls_cert(server.imaps_port, client_context("rsa"))),
               timeout=ISSUE_TIMEOUT, description="the RSA certificate")
    before = implicit_tls_cert(server.imaps_port, client_context("ecdsa"))
    session = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=client_context(),
                                timeout=20)
    try:
        assert session.noop()[0] == "OK"
        old_serial = x509.load_der_x509_certificate(
            session.sock.getpeercert(binary_form=True)).serial_number
        result = server.cli("cert", "renew", "--force")
        assert result.returncode == 0, result.stdout + result.stderr + server.log_text()[-3000:]
        assert "obtained ecdsa, rsa certificates for mx.example.test" in result.stdout
        after = implicit_tls_cert(server.imaps_port, client_context("ecdsa"))
        assert after.serial_number != before.serial_number and from_pebble(after)
        after_rsa = starttls_cert(server.smtp_port, client_context("rsa"))
        assert after_rsa.serial_number != before.serial_number and from_pebble(after_rsa)
        # The session opened before the renewal goes on, with what it started with.
        assert session.noop()[0] == "OK"
        assert old_serial == before.serial_number
        assert session.capability()[0] == "OK"
    finally:
        session.logout()
    # Not forced and nothing due: the running server reports the certificates current.
    again = server.cli("cert", "renew")
    assert again.returncode == 0 and "certificates are current" in again.stdout
    assert implicit_tls_cert(server.imaps_port, client_context("ecdsa")).serial_number == \
        after.serial_number


def test_short_lived_certificates_renew_by_themselves(acme):
    # 30-second certificates: renewed a third of their life before expiry (10 s).
    setup = acme(challenges='["http-01"]', names='["mx.example.test"]', key_types='["ecdsa"]',
                 validity=30)
    first = wait_for_issued(setup)
    renewed = wait_until(
        lambda: (c := implicit_tls_cert(setup.server.imaps_port, client_context())) and
        c.serial_number != first.serial_number and c,
        timeout=60, interval=0.5, description="a renewed certificate")
    assert from_pebble(renewed)
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert "reason=\"it expires" in setup.server.log_text()


def test_unreachable_ca_falls_back_to_self_signed_then_converges(acme):
    setup = acme(challenges='["http-01"]', names='["mx.example.test"]', key_types='["ecdsa"]',
                 start_pebble=False)
    server = setup.server
    url = f"https://127.0.0.1:{setup.pebble.port}"
    failure = wait_until(lambda: log_lines(server, "could not obtain a certificate"),
                         timeout=30, description="the failure to reach the CA")[0]
    assert "level=error" in failure
    assert f'error="cannot reach the ACME server {url}: Connection refused"' in failure
    assert "serving=\"the self-signed certificate\"" in failure
    served = implicit_tls_cert(server.imaps_port, client_context())
    self_signed = x509.load_pem_x509_certificate(
        (server.data_dir / "tls" / "selfsigned-ecdsa.pem").read_bytes())
    assert served == self_signed
    # Nothing half-written: no certificate, no version directory.
    acme_dir = server.data_dir / "acme"
    assert not (acme_dir / "ecdsa").exists()
    archive = acme_dir / "archive"
    assert not archive.exists() or not any(archive.iterdir())
    status = server.cli("cert", "status")
    assert "no ACME certificate yet, serving the self-signed one" in status.stdout
    assert f"FAILED: cannot reach the ACME server {url}" in status.stdout
    # The CA comes back: the next retry succeeds, without a restart or a command.
    setup.pebble.start()
    cert = wait_for_issued(setup)
    assert san(cert) == {HOSTNAME}
    assert "FAILED" not in server.cli("cert", "status").stdout


def test_certificate_files_in_tls_are_reloaded_when_they_change(tmp_path: Path):
    ca = TestCA.create(tmp_path / "ca")
    first = ca.issue([HOSTNAME], stem="first")
    cert_file, key_file = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    cert_file.write_bytes(first.cert_file.read_bytes())
    key_file.write_bytes(first.key_file.read_bytes())
    server = make_server(tmp_path / "mk", f'\n[tls]\ncert = "{cert_file}"\nkey = "{key_file}"\n')
    server.start()
    try:
        verified = client_context(root=ca.ca_file.read_bytes())
        served = implicit_tls_cert(server.imaps_port, verified)
        assert served.public_bytes(serialization.Encoding.DER) == first.cert_der
        session = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port,
                                    ssl_context=client_context(), timeout=20)
        # certbot's renewal: new files under the same names (key first, as certbot's
        # deploy does not make the pair switch atomic).
        second = ca.issue([HOSTNAME], stem="second")
        os.replace(second.key_file, key_file)
        os.replace(second.cert_file, cert_file)
        wait_until(lambda: implicit_tls_cert(server.imaps_port, verified).public_bytes(
            serialization.Encoding.DER) == second.cert_der, timeout=30, interval=0.5,
            description="the renewed files served")
        assert starttls_cert(server.smtp_port, verified).public_bytes(
            serialization.Encoding.DER) == second.cert_der
        assert session.noop()[0] == "OK"
        session.logout()
        assert log_lines(server, "certificates reloaded")
        status = server.cli("cert", "status").stdout
        assert "Certificates from the files in [tls]" in status and "(files)" in status
    finally:
        server.stop()
