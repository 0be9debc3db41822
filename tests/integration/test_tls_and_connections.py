"""TLS listeners, certificate reloads and connection accounting over real sockets."""

from __future__ import annotations

import datetime
import os
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import RunningServer


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _peer_cn(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _write_cert(directory: Path, cn: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{cn}.pem", directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _implicit_tls_greeting(port: int) -> tuple[bytes, str]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with _insecure().wrap_socket(raw, server_hostname="mx.example.test") as tls:
        return tls.recv(512), _peer_cn(tls)


def _starttls_cn(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=_insecure())
        return _peer_cn(s.sock)


def test_implicit_tls_listener_delivers(server: RunningServer):
    greeting, _ = _implicit_tls_greeting(server.smtps_port)
    assert greeting.startswith(b"220 mx.example.test")
    with smtplib.SMTP_SSL("127.0.0.1", server.smtps_port, context=_insecure(), timeout=10) as s:
        ehlo = s.ehlo()[1]
        assert b"STARTTLS" not in ehlo  # already TLS
        assert s.sendmail("a@example.net", ["demo@example.test"], "Subject: smtps\r\n\r\nx\r\n") == {}
    msg = next(m for m in server.messages("demo@example.test") if b"Subject: smtps\r\n" in m)
    assert b"with ESMTPS id" in msg and b"(using TLSv1.3" in msg


def test_plaintext_to_implicit_tls_port_gets_nothing(server: RunningServer):
    with socket.create_connection(("127.0.0.1", server.smtps_port), timeout=5) as s:
        s.sendall(b"EHLO plaintext\r\n")
        s.settimeout(5)
        try:
            data = s.recv(512)
        except OSError:
            data = b""
    assert not data.startswith(b"220") and not data.startswith(b"250")


def test_connection_slots_are_released_after_failed_handshakes(fresh_server: RunningServer):
    # More aborted STARTTLS handshakes than the per-IP limit (30 in this config) ...
    for _ in range(35):
        s = socket.create_connection(("127.0.0.1", fresh_server.smtp_port), timeout=5)
        s.recv(512)
        s.sendall(b"EHLO x\r\n")
        s.recv(4096)
        s.sendall(b"STARTTLS\r\n")
        s.recv(512)
        s.sendall(b"\x16\x03\x01\x00\xff")  # half a ClientHello, then a reset
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    # ... and as many on the implicit-TLS port; neither may lock anyone out.
    for _ in range(35):
        s = socket.create_connection(("127.0.0.1", fresh_server.smtps_port), timeout=5)
        s.sendall(b"\x16\x03\x01")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    time.sleep(0.5)
    with smtplib.SMTP("127.0.0.1", fresh_server.smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250
    greeting, _ = _implicit_tls_greeting(fresh_server.smtps_port)
    assert greeting.startswith(b"220")


def test_half_closed_client_still_gets_its_replies(server: RunningServer):
    s = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10)
    s.recv(512)
    s.sendall(b"EHLO x.example.net\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<demo@example.test>\r\n"
              b"DATA\r\nSubject: half-close\r\n\r\nx\r\n.\r\nQUIT\r\n")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    assert b"\r\n250 2.0.0 OK" in data and b"221" in data, data


def test_certificate_change_applies_on_reload_to_both_tls_kinds(fresh_server: RunningServer):
    assert _starttls_cn(fresh_server.smtp_port) == "mx.example.test"
    cert, key = _write_cert(fresh_server.dir, "renewed.example.test")
    text = fresh_server.config.read_text()
    fresh_server.config.write_text(text.replace(
        '[smtp]', f'[tls]\ncert = "{cert}"\nkey = "{key}"\n\n[smtp]', 1))
    os.kill(fresh_server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "msg=reloaded" not in fresh_server.log_text():
        time.sleep(0.1)
    assert _starttls_cn(fresh_server.smtp_port) == "renewed.example.test"
    assert _implicit_tls_greeting(fresh_server.smtps_port)[1] == "renewed.example.test"


def test_broken_certificate_on_reload_keeps_the_old_one(fresh_server: RunningServer):
    text = fresh_server.config.read_text()
    fresh_server.config.write_text(text.replace(
        '[smtp]', '[tls]\ncert = "/nonexistent.pem"\nkey = "/nonexistent.key"\n\n[smtp]', 1))
    os.kill(fresh_server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "reload failed" not in fresh_server.log_text():
        time.sleep(0.1)
    assert "reload failed" in fresh_server.log_text()
    assert _starttls_cn(fresh_server.smtp_port) == "mx.example.test"
