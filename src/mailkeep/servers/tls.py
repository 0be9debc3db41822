"""TLS for every listener: contexts with safe defaults, and where the certificates come from.

Policy (RFC 8996, RFC 9325): TLS 1.2 and 1.3 only; on 1.2 only ECDHE key exchange with AEAD
ciphers (forward secrecy). RSA and ECDSA certificates may be loaded together; OpenSSL picks
the one the client supports. Contexts are rebuilt on reload, and listeners ask
:meth:`TLSManager.context` at each handshake, so a renewed certificate applies to new
sessions without dropping existing ones.

Sources, in order (:meth:`TLSManager.for_config`):

- ``files``: [tls] ``cert`` and ``key`` (e.g. certbot's ``/etc/letsencrypt/live/...``),
  reloaded when they change on disk;
- ``acme``: with [acme] enabled, the pairs in ``data_dir/acme`` (mailkeep.acme.storage),
  reloaded at once after each renewal (:meth:`TLSManager.refresh`); a key type that has
  no ACME certificate yet is served with the self-signed one of that type;
- ``self-signed``: generated once in ``data_dir/tls``, the fallback until ACME succeeds.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailkeep.durable import atomic_write_bytes
from mailkeep.logfmt import log

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


SOURCE_FILES = "files"
SOURCE_ACME = "acme"
SOURCE_SELF_SIGNED = "self-signed"


def acme_pairs(data_dir: Path, key_types: tuple[str, ...],
               hostname: str) -> tuple[list[CertificatePair], str]:
    """The ACME pairs in use (see mailkeep.acme.storage), with the self-signed pair of any
    key type ACME has not issued yet; ("self-signed" pairs, "self-signed") when ACME has
    none at all."""
    from mailkeep.acme.storage import AcmeStorage

    storage = AcmeStorage(data_dir)
    found = {kind: storage.current(kind) for kind in key_types}
    if not any(found.values()):
        return generate_self_signed(data_dir / "tls", hostname), SOURCE_SELF_SIGNED
    fallback = dict(zip(("ecdsa", "rsa"), generate_self_signed(data_dir / "tls", hostname),
                        strict=True)) if not all(found.values()) else {}
    pairs = []
    for kind, stored in found.items():
        if stored is not None:
            pairs.append(CertificatePair(stored.cert_file, stored.key_file))
        elif kind in fallback:
            pairs.append(fallback[kind])
    return pairs, SOURCE_ACME


def _origin(config: Any) -> tuple[Any, ...]:
    """What in a config decides where the certificates come from."""
    if config.tls.cert and config.tls.key:
        return (SOURCE_FILES, str(config.tls.cert), str(config.tls.key))
    if config.acme.enabled:
        return (SOURCE_ACME, str(config.data_dir), config.acme.key_types, config.hostname)
    return (SOURCE_SELF_SIGNED, str(config.data_dir), config.hostname)


class TLSManager:
    """Holds the current server context; :meth:`reload_if_changed` and :meth:`refresh` swap
    it atomically. ``source`` says where the certificates come from ("files", "acme",
    "self-signed")."""

    def __init__(self, pairs: list[CertificatePair], *, source: str = SOURCE_FILES) -> None:
        self._pairs = pairs
        self._context = server_context(pairs)
        self._stamp = self._stat()
        self.source = source
        self._origin: tuple[Any, ...] | None = None
        # (data_dir, key_types, hostname) when the pairs come from ACME.
        self._acme: tuple[Path, tuple[str, ...], str] | None = None

    @classmethod
    def from_config(cls, cert: str, key: str, data_dir: Path, hostname: str) -> TLSManager:
        if cert and key:
            return cls([CertificatePair(Path(cert), Path(key))])
        return cls(generate_self_signed(data_dir / "tls", hostname), source=SOURCE_SELF_SIGNED)

    @classmethod
    def for_config(cls, config: Any) -> TLSManager:
        """The certificates ``config`` asks for: [tls] files, else ACME's (when [acme] is
        enabled and has some), else the self-signed fallback."""
        if config.tls.cert and config.tls.key:
            manager = cls([CertificatePair(Path(config.tls.cert), Path(config.tls.key))])
        elif config.acme.enabled:
            acme = (Path(config.data_dir), tuple(config.acme.key_types), config.hostname)
            pairs, source = acme_pairs(*acme)
            try:
                manager = cls(pairs, source=source)
            except (OSError, ssl.SSLError) as exc:
                # A damaged pair must not keep the server from starting.
                log(logger, "cannot load the ACME certificates; serving the self-signed one",
                    logging.ERROR, error=str(exc))
                manager = cls(generate_self_signed(acme[0] / "tls", config.hostname),
                              source=SOURCE_SELF_SIGNED)
                source = SOURCE_SELF_SIGNED
            manager._acme = acme
            if source == SOURCE_SELF_SIGNED:
                log(logger, "no ACME certificate yet: serving the self-signed one until the "
                    "CA issues one", logging.WARNING, hostname=config.hostname)
        else:
            manager = cls(generate_self_signed(Path(config.data_dir) / "tls", config.hostname),
                          source=SOURCE_SELF_SIGNED)
        manager._origin = _origin(config)
        return manager

    def serves(self, config: Any) -> bool:
        """True when ``config`` asks for the certificates this manager already serves (a
        reload then keeps it)."""
        return self._origin is not None and self._origin == _origin(config)

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

    @property
    def pairs(self) -> list[CertificatePair]:
        return list(self._pairs)

    def refresh(self) -> bool:
        """Load the ACME pairs now in use (after a renewal); True when they changed. For
        other sources, the same as :meth:`reload_if_changed`."""
        if self._acme is None:
            return self.reload_if_changed()
        try:
            pairs, source = acme_pairs(*self._acme)
        except OSError as exc:
            log(logger, "cannot read the ACME certificates; keeping the previous ones",
                logging.ERROR, error=exc.strerror or str(exc))
            return False
        if pairs == self._pairs:
            return False
        try:
            context = server_context(pairs)
        except (OSError, ssl.SSLError) as exc:
            log(logger, "certificate reload failed; keeping the previous one", logging.ERROR,
                error=str(exc))
            return False
        self._pairs, self._context, self.source = pairs, context, source
        self._stamp = self._stat()
        log(logger, "certificates loaded", source=source,
            certificates=",".join(str(p.cert) for p in pairs))
        return True

    def reload_if_changed(self) -> bool:
        """Reload when a certificate or key file changed on disk (e.g. renewed by certbot)."""
        if self._acme is not None:
            return self.refresh()
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        try:
            self._context = server_context(self._pairs)
        except (OSError, ssl.SSLError) as exc:
            log(logger, "certificate reload failed; keeping the previous one", logging.ERROR,
                error=str(exc))
            return False
        self._stamp = stamp
        log(logger, "certificates reloaded", source=self.source,
            certificates=",".join(str(p.cert) for p in self._pairs))
        return True
