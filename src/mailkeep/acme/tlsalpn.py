"""The TLS-ALPN-01 challenge response (RFC 8737).

The CA connects to port 443, names the domain in SNI and offers only the ``acme-tls/1``
application protocol (RFC 8737 §3, §6.2). The server must answer with a self-signed
certificate whose only subjectAltName is that domain and which carries the critical
``id-pe-acmeIdentifier`` extension: the DER encoding of an OCTET STRING holding the SHA-256
digest of the key authorization.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: RFC 8737 §6.2: the ALPN protocol id of the challenge.
ACME_TLS_PROTOCOL = "acme-tls/1"
#: RFC 8737 §6.1: id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
#: The challenge certificate only has to outlive the validation (RFC 8737 does not say).
VALIDITY = datetime.timedelta(days=7)


def acme_identifier_value(key_authorization: str) -> bytes:
    """RFC 8737 §3: DER of ``Authorization ::= OCTET STRING (SIZE (32))`` holding
    SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04\x20" + digest  # tag OCTET STRING, length 32, contents


def challenge_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) answering the challenge for ``name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME challenge")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        # RFC 8737 §3: "a subjectAltName extension containing the dNSName being validated
        # and no other entries".
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # RFC 8737 §3: "The acmeIdentifier extension MUST be critical".
        .add_extension(x509.UnrecognizedExtension(
            ACME_IDENTIFIER_OID, acme_identifier_value(key_authorization)), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def challenge_context(name: str, key_authorization: str) -> ssl.SSLContext:
    """A server context that presents the challenge certificate and speaks only
    ``acme-tls/1`` (RFC 8737 §4: no application data is exchanged on it)."""
    cert_pem, key_pem = challenge_certificate(name, key_authorization)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8737 §4: "ACME servers ... MUST NOT use TLS versions below 1.2" (and so do we).
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_PROTOCOL])
    # The ssl module loads keys from files only: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="mailkeep-alpn-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        cert_file.write_bytes(cert_pem)
        context.load_cert_chain(cert_file, key_file)
    return context
