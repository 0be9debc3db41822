"""Login secrets kept next to the password hash: SCRAM verifiers and the CRAM-MD5 state.

A passwd-file line holds the Argon2id hash in its password field and, in its extra fields
(space-separated ``key=value``), what the challenge-response mechanisms need:

``scram-sha-256=<iter>,<b64 salt>,<b64 StoredKey>,<b64 ServerKey>`` and ``scram-sha-1=...``
    RFC 5802 §3 verifiers, the same shape as the body of Dovecot's ``{SCRAM-SHA-256}``
    scheme. StoredKey = H(HMAC(SaltedPassword, "Client Key")) and ServerKey =
    HMAC(SaltedPassword, "Server Key") let the server check a client's proof and prove
    itself, but neither can be replayed as a login: a thief still has to brute-force
    PBKDF2 (``iter`` rounds) per guess, like any salted hash.
``cram-md5=<64 hex>``
    Dovecot's CRAM-MD5 HMAC-MD5 intermediate state, written only when ``[auth] cram_md5``
    is on: it is password-equivalent for CRAM-MD5 and cheap to brute-force (docs/auth.md).

An imported ``{CRAM-MD5}`` password field is used for CRAM-MD5 as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from mailkeep.auth.cram_md5 import STATE_BYTES, cram_md5_state, parse_cram_md5_state
from mailkeep.auth.passwd_file import PasswdEntry, PasswdFile
from mailkeep.sasl.saslprep import scram_password_bytes

# RFC 7677 §4 and RFC 5802 §5.1: at least 4096 iterations. The upper bound keeps an
# imported or hand-edited verifier from making clients (and our own hashing) spin.
MIN_SCRAM_ITERATIONS = 4096
MAX_SCRAM_ITERATIONS = 10_000_000
SCRAM_SALT_BYTES = 16

# Hash functions by SCRAM mechanism name (RFC 5802 §4 for SHA-1, RFC 7677 for SHA-256).
SCRAM_HASHES: Mapping[str, str] = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}
# Extra-field names, by mechanism.
SCRAM_FIELDS: Mapping[str, str] = {"SCRAM-SHA-256": "scram-sha-256", "SCRAM-SHA-1": "scram-sha-1"}
CRAM_MD5_FIELD = "cram-md5"
CREDENTIAL_FIELDS = (*SCRAM_FIELDS.values(), CRAM_MD5_FIELD)


@dataclass(frozen=True)
class ScramVerifier:
    """What the server stores for one SCRAM hash function (RFC 5802 §3)."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def to_field(self) -> str:
        """``iter,salt,StoredKey,ServerKey`` with base64 (Dovecot's {SCRAM-*} body)."""
        b64 = base64.b64encode
        return (f"{self.iterations},{b64(self.salt).decode()},{b64(self.stored_key).decode()},"
                f"{b64(self.server_key).decode()}")

    @classmethod
    def parse(cls, text: str, hash_name: str) -> ScramVerifier:
        """Parse ``to_field`` output; raises ValueError with the reason."""
        parts = text.split(",")
        if len(parts) != 4:
            raise ValueError("a SCRAM verifier has 4 comma-separated parts")
        count, salt_text, stored_text, server_text = parts
        if not count.isascii() or not count.isdigit():
            raise ValueError("the SCRAM iteration count is not a number")
        iterations = int(count)
        if not MIN_SCRAM_ITERATIONS <= iterations <= MAX_SCRAM_ITERATIONS:
            raise ValueError(f"the SCRAM iteration count is outside {MIN_SCRAM_ITERATIONS} "
                             f"to {MAX_SCRAM_ITERATIONS}")
        try:
            salt, stored, server = (base64.b64decode(part, validate=True)
                                    for part in (salt_text, stored_text, server_text))
        except (binascii.Error, ValueError):
            raise ValueError("a SCRAM verifier part is not base64") from None
        size = hashlib.new(hash_name).digest_size
        if not salt or len(stored) != size or len(server) != size:
            raise ValueError(f"SCRAM keys must be {size} bytes and the salt non-empty")
        return cls(iterations, salt, stored, server)


def salted_password(hash_name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5802 §3 Hi(): PBKDF2 with HMAC as the PRF and the hash's output length."""
    return hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)


def keys_from_salted_password(hash_name: str, salted: bytes) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) from SaltedPassword (RFC 5802 §3)."""
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    stored_key = hashlib.new(hash_name, client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", hash_name)
    return stored_key, server_key


def make_scram_verifier(password: str | bytes, mechanism: str, iterations: int,
                        salt: bytes | None = None) -> ScramVerifier:
    """A new verifier for ``password`` (normalized with SASLprep, RFC 5802 §2.2)."""
    hash_name = SCRAM_HASHES[mechanism]
    if not MIN_SCRAM_ITERATIONS <= iterations <= MAX_SCRAM_ITERATIONS:
        raise ValueError(f"SCRAM iterations must be {MIN_SCRAM_ITERATIONS} to "
                         f"{MAX_SCRAM_ITERATIONS}")
    salt = os.urandom(SCRAM_SALT_BYTES) if salt is None else salt
    salted = salted_password(hash_name, scram_password_bytes(password), salt, iterations)
    stored_key, server_key = keys_from_salted_password(hash_name, salted)
    return ScramVerifier(iterations, salt, stored_key, server_key)


def credential_fields(password: str | bytes, *, scram_iterations: int,
                      cram_md5: bool) -> dict[str, str | None]:
    """Extra fields to write with a new password hash: both SCRAM verifiers, and the
    CRAM-MD5 state when enabled (None removes a stale one when it is not)."""
    fields: dict[str, str | None] = {
        name: make_scram_verifier(password, mechanism, scram_iterations).to_field()
        for mechanism, name in SCRAM_FIELDS.items()
    }
    fields[CRAM_MD5_FIELD] = cram_md5_state(password).hex() if cram_md5 else None
    return fields


def merge_extra(extra: str, fields: Mapping[str, str | None]) -> str:
    """``extra`` with ``fields`` set (value) or removed (None); other fields, and their
    order, are kept so that nothing another tool wrote there is lost."""
    out: list[str] = []
    for item in extra.split():
        key = item.partition("=")[0]
        if key not in fields:
            out.append(item)
    out.extend(f"{key}={value}" for key, value in fields.items() if value is not None)
    return " ".join(out)


def scram_verifier(entry: PasswdEntry, mechanism: str) -> ScramVerifier | None:
    """The stored verifier of ``entry`` for ``mechanism``, or None if missing or damaged."""
    text = entry.extra_fields().get(SCRAM_FIELDS[mechanism])
    if not text:
        return None
    try:
        return ScramVerifier.parse(text, SCRAM_HASHES[mechanism])
    except ValueError:
        return None


def cram_md5_secret(entry: PasswdEntry) -> bytes | None:
    """The HMAC-MD5 state of ``entry``: the ``cram-md5`` extra field, or an imported
    ``{CRAM-MD5}`` password hash (hex, or base64 with ``.B64``); None if there is none."""
    text = entry.extra_fields().get(CRAM_MD5_FIELD)
    if text:
        try:
            return parse_cram_md5_state(text)
        except ValueError:
            return None
    stored = entry.hash
    prefix, _, value = stored.partition("}")
    scheme = prefix.upper()
    if scheme in ("{CRAM-MD5", "{CRAM-MD5.HEX"):
        try:
            return parse_cram_md5_state(value)
        except ValueError:
            return None
    if scheme in ("{CRAM-MD5.B64", "{CRAM-MD5.BASE64"):
        try:
            state = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
        return state if len(state) == STATE_BYTES else None
    return None


def missing_credentials(entry: PasswdEntry, *, scram_iterations: int, cram_md5: bool) -> bool:
    """True if ``entry`` lacks a SCRAM verifier (or has one weaker than the policy), or
    lacks the CRAM-MD5 state while CRAM-MD5 is enabled: the next plaintext login should
    write them."""
    for mechanism in SCRAM_FIELDS:
        verifier = scram_verifier(entry, mechanism)
        if verifier is None or verifier.iterations < scram_iterations:
            return True
    return cram_md5 and cram_md5_secret(entry) is None


def fake_scram_verifier(secret: bytes, mechanism: str, username: str,
                        iterations: int) -> ScramVerifier:
    """A verifier for a user without one (or who does not exist) that no proof matches.

    The salt is derived from a server secret and the user name, so asking twice gives the
    same salt, as for a real user: the server-first message does not reveal whether the
    account exists. The keys are random-looking values nobody knows a preimage of, and the
    exchange is failed regardless.
    """
    def derive(label: bytes, size: int) -> bytes:
        material = hmac.digest(secret, label + b"\0" + mechanism.encode() + b"\0"
                               + username.encode("utf-8", "surrogateescape"), "sha256")
        return material[:size]

    size = hashlib.new(SCRAM_HASHES[mechanism]).digest_size
    return ScramVerifier(iterations, derive(b"salt", SCRAM_SALT_BYTES),
                         derive(b"stored", size), derive(b"server", size))


def write_credentials(passwd: PasswdFile, user: str, password_hash: str, password: str | bytes,
                      *, scram_iterations: int, cram_md5: bool,
                      expected_hash: str | None = None) -> bool:
    """Store ``password_hash`` for ``user`` with the SCRAM verifiers (and CRAM-MD5 state
    when ``cram_md5``) of the same password, in one locked rewrite of the passwd file.

    Other extra fields are kept. With ``expected_hash``, nothing is written unless the
    entry still has that hash (a compare-and-set for upgrades after a login). Returns
    whether the file was written. Blocking (PBKDF2 and file I/O).
    """
    fields = credential_fields(password, scram_iterations=scram_iterations, cram_md5=cram_md5)

    def change(current: PasswdEntry | None) -> tuple[str, str] | None:
        if expected_hash is not None and (current is None or current.hash != expected_hash):
            return None
        return password_hash, merge_extra(current.extra if current is not None else "", fields)

    return passwd.modify(user, change)
