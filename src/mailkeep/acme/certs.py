"""Certificate keys, signing requests and what an issued certificate says.

Key types (the [acme] ``key_types`` setting): ``ecdsa`` is P-256, ``rsa`` is 2048 bits,
the two every TLS client of the last decade supports; serving both lets OpenSSL pick by
what the client offers. The CSR (RFC 2986) names every identifier of the order in its
subjectAltName, as RFC 8555 §7.4 requires, and the first one as common name when it fits
(RFC 5280: at most 64 characters).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

KEY_TYPES = ("ecdsa", "rsa")
RSA_BITS = 2048
#: More certificates than any real chain has: a response with more is refused.
MAX_CHAIN_LENGTH = 10
MAX_COMMON_NAME = 64

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(kind: str) -> PrivateKey:
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ValueError(f"unknown key type {kind!r}")


def reusable_key(key_file: Path, kind: str) -> PrivateKey | None:
    """The private key of the certificate in use, to be certified again: a renewal that
    keeps the key keeps TLSA "3 1 1" records (RFC 7672, RFC 7671 §8.1) valid, so DNS need
    not change at each renewal. None when the file is missing, unreadable or of another
    type or size than ``kind`` asks (a new key is made then)."""
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if kind == "ecdsa" and isinstance(key, ec.EllipticCurvePrivateKey) \
            and isinstance(key.curve, ec.SECP256R1):
        return key
    if kind == "rsa" and isinstance(key, rsa.RSAPrivateKey) and key.key_size >= RSA_BITS:
        return key
    return None


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_csr(key: PrivateKey, names: list[str]) -> bytes:
    """A DER certificate signing request for ``names`` (the first is the common name)."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    subject = []
    if len(names[0]) <= MAX_COMMON_NAME:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, names[0]))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name(subject))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


def parse_chain(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain, leaf first (RFC 8555 §9.1); ValueError if empty,
    malformed or implausibly long."""
    if pem.count(b"-----BEGIN CERTIFICATE-----") > MAX_CHAIN_LENGTH:
        raise ValueError(f"more than {MAX_CHAIN_LENGTH} certificates in the chain")
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate chain ({exc})") from None
    if not chain:
        raise ValueError("no certificate in the chain")
    return chain


def key_type_of(public_key: Any) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ecdsa"
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    return type(public_key).__name__


def public_key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


@dataclass(frozen=True)
class CertificateInfo:
    """What ``mailkeep cert status`` shows and what renewal decisions read."""

    names: tuple[str, ...]
    key_type: str
    issuer: str
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateInfo:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = tuple(n.lower() for n in san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return cls(names=names, key_type=key_type_of(cert.public_key()),
                   issuer=cert.issuer.rfc4514_string(), serial=format(cert.serial_number, "x"),
                   not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)

    @classmethod
    def from_pem(cls, pem: bytes) -> CertificateInfo:
        return cls.of(parse_chain(pem)[0])

    @property
    def lifetime(self) -> float:
        return (self.not_after - self.not_before).total_seconds()

    def covers(self, names: list[str] | tuple[str, ...]) -> bool:
        return set(names) <= set(self.names)

    def renewal_time(self, renew_before: float) -> datetime.datetime:
        """When to renew: ``renew_before`` ahead of expiry, but never earlier than a third
        of the lifetime before it, so a short-lived certificate (6 days, or a test CA's
        minutes) is not renewed in a loop the moment it is issued."""
        window = min(renew_before, self.lifetime / 3)
        return self.not_after - datetime.timedelta(seconds=window)
