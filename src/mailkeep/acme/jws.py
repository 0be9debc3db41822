"""The ACME account key and the signatures made with it.

- Every ACME POST body is a flattened JWS (RFC 7515 §7.2.2) whose protected header holds
  ``alg``, ``nonce``, ``url`` and either the account key itself (``jwk``, for newAccount) or
  the account URL (``kid``) — RFC 8555 §6.2.
- The account key is ECDSA P-256, signing with ES256 (RFC 7518 §3.4): the signature is the
  two 32-byte integers R and S concatenated, not the DER structure OpenSSL produces.
- Its public half is a JSON Web Key (RFC 7517; EC members per RFC 7518 §6.2.1), and its
  thumbprint (RFC 7638) goes into every key authorization (RFC 8555 §8.1).

Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: RFC 4648 §5 alphabet; RFC 7515 §2 forbids padding.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

#: RFC 7638 §3.2: the members that make up the thumbprint input, per key type.
THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "oct": ("k", "kty"),
}

ALGORITHM = "ES256"
_COORDINATE_BYTES = 32  # P-256


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2, "Base64url Encoding")."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The inverse of :func:`b64url`; ValueError for anything that is not base64url."""
    if not isinstance(text, str) or not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(f"not base64url ({exc})") from None


def _json(value: Any) -> bytes:
    """Compact JSON, the form RFC 7638 §3 hashes and that keeps request bodies small."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True,
                      ensure_ascii=True).encode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 §3: SHA-256 over the required members of the JWK, in lexicographic order,
    without whitespace; base64url encoded. Raises ValueError for an unknown key type."""
    kty = jwk.get("kty")
    members = THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError(f"unknown JWK key type {kty!r}")
    missing = [m for m in members if not isinstance(jwk.get(m), str)]
    if missing:
        raise ValueError(f"JWK lacks {', '.join(missing)}")
    return b64url(hashlib.sha256(_json({m: jwk[m] for m in members})).digest())


class AccountKey:
    """An ES256 account key (ECDSA over P-256 with SHA-256)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or \
                not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("an ACME account key must be ECDSA P-256")
        self.private_key = private_key
        numbers = private_key.public_key().public_numbers()
        # RFC 7518 §6.2.1.2/3: coordinates as fixed-length big-endian octets.
        self.jwk: dict[str, str] = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
            "y": b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
        }
        self.thumbprint = jwk_thumbprint(self.jwk)

    @classmethod
    def generate(cls) -> AccountKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, data: bytes) -> AccountKey:
        """Load a PEM private key; ValueError when it is not an unencrypted P-256 key."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a usable private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("an ACME account key must be ECDSA P-256")
        return cls(key)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def sign(self, data: bytes) -> bytes:
        """RFC 7518 §3.4: ES256 signature as R || S, each 32 octets."""
        der = self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")


def key_authorization(token: str, thumbprint: str) -> str:
    """RFC 8555 §8.1: ``token || '.' || base64url(Thumbprint(accountKey))``."""
    return f"{token}.{thumbprint}"


def signed_request(key: AccountKey, url: str, nonce: str, payload: Mapping[str, Any] | None,
                   *, kid: str | None) -> bytes:
    """The body of an ACME POST (RFC 8555 §6.2): a flattened JWS in JSON serialization.

    ``payload=None`` makes a POST-as-GET (RFC 8555 §6.3), whose payload is the empty string.
    ``kid`` is the account URL; without it the header carries the key (``jwk``), as only
    newAccount and revokeCert by certificate key may (RFC 8555 §6.2).
    """
    protected: dict[str, Any] = {"alg": ALGORITHM, "nonce": nonce, "url": url}
    if kid is not None:
        protected["kid"] = kid
    else:
        protected["jwk"] = key.jwk
    protected_b64 = b64url(_json(protected))
    payload_b64 = "" if payload is None else b64url(_json(payload))
    # RFC 7515 §5.1: the signing input is ASCII(protected || '.' || payload).
    signature = key.sign(f"{protected_b64}.{payload_b64}".encode("ascii"))
    return _json({"protected": protected_b64, "payload": payload_b64,
                  "signature": b64url(signature)})
