"""TLS for every listener: contexts with safe defaults, and the self-signed fallback.

Policy (RFC 8996, RFC 9325): TLS 1.2 and 1.3 only; on 1.2 only ECDHE key exchange with AEAD
ciphers (forward secrecy). RSA and ECDSA certificates may be loaded together; OpenSSL picks
the one the client supports. Contexts are rebuilt on reload, and listeners ask
:meth:`TLSManager.context` at each handshake, so a renewed certificate applies to new
sessions without dropping existing ones.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from mailkeep.durable import atomic_write_bytes

logger = logging.getLogger("mailkeep.tls")

# TLS 1.2 suites: ECDHE only (forward secrecy), AEAD only. TLS 1.3 suites are all AEAD+FS.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!RSA:!DHE"


@dataclass(frozen=True)
class CertificatePair:
    cert: Path
    key: Path


def server_context(pairs: list[CertificatePair]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    for pair in pairs:
        ctx.load_cert_chain(pair.cert, pair.key)
    return ctx


def generate_self_signed(directory: Path, hostname: str) -> list[CertificatePair]:
    """Create (once) an ECDSA P-256 and an RSA 2048 self-signed certificate for ``hostname``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pairs = []
    for kind in ("ecdsa", "rsa"):
        cert_path, key_path = directory / f"selfsigned-{kind}.pem", directory / f"selfsigned-{kind}.key"
        pairs.append(CertificatePair(cert_path, key_path))
        if cert_path.exists() and key_path.exists():
            continue
        key = ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else \
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        names: list[x509.GeneralName] = [x509.DNSName(hostname)]
        if hostname == "localhost":
            names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                      x509.IPAddress(ipaddress.ip_address("::1"))]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        atomic_write_bytes(key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), mode=0o600)
        atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        logger.warning("generated a self-signed certificate", extra={
            "cert": str(cert_path), "hostname": hostname, "kind": kind})
    return pairs


class TLSManager:
    """Holds the current server context; :meth:`reload` swaps it atomically."""

    def __init__(self, pairs: list[CertificatePair]):
        self._pairs = pairs
        self._context = server_context(pairs)
        self._stamp = self._stat()

    @classmethod
    def from_config(cls, cert: str, key: str, data_dir: Path, hostname: str) -> TLSManager:
        if cert and key:
            return cls([CertificatePair(Path(cert), Path(key))])
        return cls(generate_self_signed(data_dir / "tls", hostname))

    def _stat(self) -> tuple[float, ...]:
        stamps: list[float] = []
        for pair in self._pairs:
            for path in (pair.cert, pair.key):
                try:
                    stamps.append(os.stat(path).st_mtime)
                except OSError:
                    stamps.append(-1.0)
        return tuple(stamps)

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    def reload_if_changed(self) -> bool:
        """Reload when a certificate or key file changed on disk (e.g. renewed by certbot)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        try:
            self._context = server_context(self._pairs)
        except (OSError, ssl.SSLError) as exc:
            logger.error("certificate reload failed; keeping the previous one",
                         extra={"error": str(exc)})
            return False
        self._stamp = stamp
        logger.info("certificates reloaded")
        return True
