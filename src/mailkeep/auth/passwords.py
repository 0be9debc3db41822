"""Password hashing and verification, compatible with Dovecot's ``{SCHEME}`` hashes.

New passwords are hashed with Argon2id (RFC 9106) through argon2-cffi, with 64 MiB of memory,
3 passes and one lane: RFC 9106 §4's second recommended option uses 64 MiB and 3 passes,
and a single lane keeps one login on one core. Measured on the shared 2-core development
machine (under load): 0.18-0.32 s per hash or verification - not "tens of milliseconds",
since Argon2 with 64 MiB and 3 passes fills and re-reads 192 MiB of memory. No person
notices that delay at login, and it limits an attacker who stole the passwd file to a few
guesses per second per core. ``MAX_CONCURRENT_HASHES``
bounds the memory (and CPU) a flood of logins can take.

Existing hashes imported from Dovecot passwd-files are verified with their own scheme
(Dovecot's names, https://doc.dovecot.org/ "Password Schemes"):

==================  ==========================================================  =====
scheme              format                                                      weak
==================  ==========================================================  =====
ARGON2ID, ARGON2I   PHC string ``$argon2id$v=19$m=...,t=...,p=...$salt$hash``   no
BLF-CRYPT           bcrypt ``$2y$``/``$2b$``/``$2a$`` (passwords cut at 72 B)   no
SHA512-CRYPT        ``$6$[rounds=N$]salt$hash``                                 no
SHA256-CRYPT        ``$5$[rounds=N$]salt$hash``                                 no
MD5-CRYPT           ``$1$salt$hash``                                            yes
CRYPT               any of the crypt formats above, by its ``$id$``             -
SSHA512/SSHA256     base64(SHA-2(password + salt) + salt)                        yes
SSHA                base64(SHA-1(password + salt) + salt)                        yes
SHA512/SHA256/SHA1  base64 (or hex) of the unsalted digest                      yes
CRAM-MD5            HMAC-MD5 intermediate state, 64 hex digits (cram_md5.py)    yes
PLAIN/CLEAR         the password itself                                         yes
==================  ==========================================================  =====

"Weak" means cheap to brute-force or usable as-is by a thief; ``config check`` and
``account import-passwd`` report them, and the login code rehashes any stored hash for
which ``needs_rehash`` is true once the user has logged in successfully.

A digest scheme may carry Dovecot's encoding suffix: ``{SHA256.HEX}``, ``{SSHA512.B64}``.
All comparisons of secrets use ``hmac.compare_digest``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import string
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

from mailkeep.auth.cram_md5 import cram_md5_state, parse_cram_md5_state

log = logging.getLogger("mailkeep.auth")

# Argon2id parameters for new hashes (RFC 9106 §4, second recommended option, one lane).
ARGON2_TIME_COST = 3
ARGON2_MEMORY_COST_KIB = 64 * 1024
ARGON2_PARALLELISM = 1
ARGON2_HASH_LEN = 32
ARGON2_SALT_LEN = 16

# Limits on input, so that neither a client nor an imported hash can make one verification
# arbitrarily expensive. A password longer than this is refused without hashing it.
MAX_PASSWORD_BYTES = 4096
MAX_ARGON2_MEMORY_KIB = 1024 * 1024
MAX_ARGON2_TIME_COST = 32
MAX_ARGON2_PARALLELISM = 16
MAX_BCRYPT_COST = 16
MAX_SHA_CRYPT_ROUNDS = 2_000_000
# Concurrent hash computations (each Argon2id one holds 64 MiB).
MAX_CONCURRENT_HASHES = 2
# bcrypt only ever reads the first 72 bytes of a password (crypt_blowfish does the same).
BCRYPT_MAX_PASSWORD_BYTES = 72

WEAK_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT", "CRAM-MD5", "SHA512", "SHA256", "SHA1",
                          "SHA", "SSHA512", "SSHA256", "SSHA", "MD5-CRYPT"})
CLEARTEXT_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})

_hasher = argon2.PasswordHasher(
    time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_COST_KIB,
    parallelism=ARGON2_PARALLELISM, hash_len=ARGON2_HASH_LEN, salt_len=ARGON2_SALT_LEN,
    type=argon2.Type.ID)
# Verification takes the parameters from the stored hash; this instance only needs defaults.
_verifier = argon2.PasswordHasher()

_SCHEME_PREFIX = re.compile(r"^\{([A-Za-z0-9._-]{1,40})\}")
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
# Bare crypt(3) strings (no {SCHEME}) and {CRYPT} are recognised by their "$id$".
_CRYPT_IDS = (("$argon2id$", "ARGON2ID"), ("$argon2i$", "ARGON2I"), ("$2y$", "BLF-CRYPT"),
              ("$2b$", "BLF-CRYPT"), ("$2a$", "BLF-CRYPT"), ("$6$", "SHA512-CRYPT"),
              ("$5$", "SHA256-CRYPT"), ("$1$", "MD5-CRYPT"))
_DIGESTS: dict[str, Callable[..., Any]] = {
    "SHA512": hashlib.sha512, "SHA256": hashlib.sha256, "SHA1": hashlib.sha1, "SHA": hashlib.sha1,
    "SSHA512": hashlib.sha512, "SSHA256": hashlib.sha256, "SSHA": hashlib.sha1,
}
_SCHEME_ALIASES = {"BLF": "BLF-CRYPT", "BCRYPT": "BLF-CRYPT"}


class PasswordHashError(ValueError):
    """A stored password hash that cannot be used; the message says why (never the hash)."""


class UnknownSchemeError(PasswordHashError):
    """The stored hash names a scheme Mailkeep does not implement."""


class MalformedHashError(PasswordHashError):
    """The stored hash names a known scheme but its value is damaged or out of limits."""


def _password_bytes(password: str | bytes) -> bytes:
    data = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if len(data) > MAX_PASSWORD_BYTES:
        raise ValueError(f"a password is at most {MAX_PASSWORD_BYTES} bytes")
    return data


def hash_password(password: str) -> str:
    """Hash a new password: ``{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$...``.

    Raises ValueError for an empty or over-long password. Slow on purpose (see module
    docstring); from async code use ``hash_password_async``.
    """
    data = _password_bytes(password)
    if not data:
        raise ValueError("a password cannot be empty")
    return "{ARGON2ID}" + _hasher.hash(data)


def split_scheme(stored: str) -> tuple[str, str, str]:
    """``(scheme, encoding, value)`` of a stored hash; encoding is "", "hex" or "base64".

    A value without ``{SCHEME}`` is taken as a crypt(3) string, as Dovecot does with its
    default scheme CRYPT. Raises UnknownSchemeError or MalformedHashError.
    """
    if not isinstance(stored, str) or not stored:
        raise MalformedHashError("the password hash is empty")
    match = _SCHEME_PREFIX.match(stored)
    if match is None:
        if stored.startswith("{"):
            raise MalformedHashError("the password hash has an unterminated {SCHEME} prefix")
        return _crypt_scheme(stored), "", stored
    name = match.group(1).upper()
    value = stored[match.end():]
    encoding = ""
    base, dot, suffix = name.rpartition(".")
    if dot and suffix in ("HEX", "B64", "BASE64"):
        name, encoding = base, "hex" if suffix == "HEX" else "base64"
    name = _SCHEME_ALIASES.get(name, name)
    if name == "CRYPT":
        name = _crypt_scheme(value)
    if name not in _HANDLERS:
        raise UnknownSchemeError(f"unknown password scheme {{{match.group(1)}}}")
    if encoding and name not in _DIGESTS and name not in CLEARTEXT_SCHEMES and name != "CRAM-MD5":
        raise MalformedHashError(f"{{{name}}} does not take an encoding suffix")
    return name, encoding, value


def _crypt_scheme(value: str) -> str:
    for prefix, scheme in _CRYPT_IDS:
        if value.startswith(prefix):
            return scheme
    raise UnknownSchemeError("the password hash has no {SCHEME} prefix and is not a "
                             "supported crypt(3) format ($argon2id$, $2y$, $6$, $5$, $1$)")


def password_scheme(stored: str) -> str:
    """The scheme name of a stored hash (e.g. "ARGON2ID"), after checking its format.

    Raises UnknownSchemeError or MalformedHashError; use it to report bad entries before
    anyone tries to log in with them.
    """
    scheme, encoding, value = split_scheme(stored)
    _HANDLERS[scheme][0](scheme, encoding, value)
    return scheme


def verify_password(stored: str, password: str | bytes) -> bool:
    """True if ``password`` matches the stored hash. Never raises for bad input.

    An unknown scheme or a damaged hash is logged (without the hash) and fails the check.
    """
    try:
        data = _password_bytes(password)
        scheme, encoding, value = split_scheme(stored)
        check, verify = _HANDLERS[scheme]
        check(scheme, encoding, value)
        return verify(scheme, encoding, value, data)
    except PasswordHashError as exc:
        log.warning("cannot verify password: %s", exc)
        return False
    except ValueError:
        # Over-long password: no stored hash can match it.
        return False


def needs_rehash(stored: str) -> bool:
    """True unless ``stored`` is Argon2id with exactly Mailkeep's current parameters."""
    try:
        scheme, _, value = split_scheme(stored)
        if scheme != "ARGON2ID":
            return True
        return _hasher.check_needs_rehash(value)
    except (PasswordHashError, InvalidHashError, ValueError):
        return True


def weak_scheme(stored: str) -> bool:
    """True if the stored hash is cleartext, unsalted, fast to brute-force or password-equivalent.

    Unknown or damaged hashes are not "weak", they are unusable: see ``password_scheme``.
    """
    try:
        return split_scheme(stored)[0] in WEAK_SCHEMES
    except PasswordHashError:
        return False


def generate_password(length: int = 20) -> str:
    """A random password of letters and digits (``length`` 20 gives about 119 bits)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


# -- asynchronous helpers ------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _hash_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_HASHES,
                                           thread_name_prefix="mailkeep-hash")
        return _executor


async def hash_password_async(password: str, *, executor: Executor | None = None) -> str:
    """``hash_password`` in a thread pool, so the event loop keeps serving other clients."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor or _hash_executor(), hash_password, password)


async def verify_password_async(stored: str, password: str | bytes, *,
                                executor: Executor | None = None) -> bool:
    """``verify_password`` in a thread pool, so the event loop keeps serving other clients."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor or _hash_executor(), verify_password, stored, password)


# -- schemes: (check format, verify) -------------------------------------------------------

def _check_argon2(scheme: str, encoding: str, value: str) -> None:
    try:
        params = argon2.extract_parameters(value)
    except (InvalidHashError, ValueError):
        raise MalformedHashError(f"{{{scheme}}} is not a valid Argon2 hash") from None
    expected = argon2.Type.ID if scheme == "ARGON2ID" else argon2.Type.I
    if params.type is not expected:
        raise MalformedHashError(f"{{{scheme}}} holds an Argon2 hash of another type")
    if (params.memory_cost > MAX_ARGON2_MEMORY_KIB or params.time_cost > MAX_ARGON2_TIME_COST
            or params.parallelism > MAX_ARGON2_PARALLELISM):
        raise MalformedHashError(
            f"{{{scheme}}} parameters exceed Mailkeep's limits (memory {MAX_ARGON2_MEMORY_KIB} KiB, "
            f"time {MAX_ARGON2_TIME_COST}, parallelism {MAX_ARGON2_PARALLELISM})")


def _verify_argon2(scheme: str, encoding: str, value: str, password: bytes) -> bool:
    try:
        return _verifier.verify(value, password)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError):
        raise MalformedHashError(f"{{{scheme}}} is not a valid Argon2 hash") from None


def _check_bcrypt(scheme: str, encoding: str, value: str) -> None:
    match = _BCRYPT.match(value)
    if match is None:
        raise MalformedHashError("{BLF-CRYPT} is not a valid bcrypt hash ($2y$, $2b$ or $2a$)")
    if not 4 <= int(match.group(1)) <= MAX_BCRYPT_COST:
        raise MalformedHashError(f"{{BLF-CRYPT}} cost is outside 4 to {MAX_BCRYPT_COST}")


def _verify_bcrypt(scheme: str, encoding: str, value: str, password: bytes) -> bool:
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], value.encode("ascii"))
    except ValueError:
        raise MalformedHashError("{BLF-CRYPT} is not a valid bcrypt hash") from None


_CRYPT_HANDLERS = {"SHA512-CRYPT": sha512_crypt, "SHA256-CRYPT": sha256_crypt, "MD5-CRYPT": md5_crypt}


def _check_crypt(scheme: str, encoding: str, value: str) -> None:
    handler = _CRYPT_HANDLERS[scheme]
    try:
        parsed = handler.from_string(value)
    except (ValueError, TypeError):
        raise MalformedHashError(f"{{{scheme}}} is not a valid crypt(3) hash") from None
    if not parsed.checksum:
        raise MalformedHashError(f"{{{scheme}}} has no checksum")
    if getattr(parsed, "rounds", 0) > MAX_SHA_CRYPT_ROUNDS:
        raise MalformedHashError(f"{{{scheme}}} uses more than {MAX_SHA_CRYPT_ROUNDS} rounds")


def _verify_crypt(scheme: str, encoding: str, value: str, password: bytes) -> bool:
    try:
        return bool(_CRYPT_HANDLERS[scheme].verify(password, value))
    except (ValueError, TypeError):
        raise MalformedHashError(f"{{{scheme}}} is not a valid crypt(3) hash") from None


def _decode(scheme: str, encoding: str, value: str, raw_length: int | None) -> bytes:
    """Decode a digest value: explicit encoding, else hex when the length says so, else base64."""
    if not encoding:
        is_hex = (raw_length is not None and len(value) == 2 * raw_length
                  and all(ch in string.hexdigits for ch in value))
        encoding = "hex" if is_hex else "base64"
    try:
        if encoding == "hex":
            return bytes.fromhex(value)
        padded = value + "=" * (-len(value) % 4)
        return base64.b64decode(padded, validate=True)
    except (ValueError, binascii.Error):
        raise MalformedHashError(f"{{{scheme}}} is not valid {encoding}") from None


def _check_digest(scheme: str, encoding: str, value: str) -> None:
    size = _DIGESTS[scheme]().digest_size
    salted = scheme.startswith("SSHA")
    raw = _decode(scheme, encoding, value, None if salted else size)
    if (salted and len(raw) < size) or (not salted and len(raw) != size):
        raise MalformedHashError(f"{{{scheme}}} has the wrong length")


def _verify_digest(scheme: str, encoding: str, value: str, password: bytes) -> bool:
    digest = _DIGESTS[scheme]
    size = digest().digest_size
    if scheme.startswith("SSHA"):
        raw = _decode(scheme, encoding, value, None)
        expected, salt = raw[:size], raw[size:]
        return hmac.compare_digest(digest(password + salt).digest(), expected)
    raw = _decode(scheme, encoding, value, size)
    return hmac.compare_digest(digest(password).digest(), raw)


def _check_cram(scheme: str, encoding: str, value: str) -> None:
    if encoding == "base64":
        if len(_decode(scheme, encoding, value, None)) != 32:
            raise MalformedHashError("{CRAM-MD5} has the wrong length")
        return
    try:
        parse_cram_md5_state(value)
    except ValueError as exc:
        raise MalformedHashError(f"{{CRAM-MD5}}: {exc}") from None


def _verify_cram(scheme: str, encoding: str, value: str, password: bytes) -> bool:
    state = _decode(scheme, encoding or "hex", value, 32)
    return hmac.compare_digest(cram_md5_state(password), state)


def _check_plain(scheme: str, encoding: str, value: str) -> None:
    if encoding:
        _decode(scheme, encoding, value, None)


def _verify_plain(scheme: str, encoding: str, value: str, password: bytes) -> bool:
    stored = _decode(scheme, encoding, value, None) if encoding else value.encode("utf-8")
    # Compare digests so that the comparison time does not reveal the password's length.
    return hmac.compare_digest(hashlib.sha256(stored).digest(), hashlib.sha256(password).digest())


_Check = Callable[[str, str, str], None]
_Verify = Callable[[str, str, str, bytes], bool]
_HANDLERS: dict[str, tuple[_Check, _Verify]] = {
    "ARGON2ID": (_check_argon2, _verify_argon2),
    "ARGON2I": (_check_argon2, _verify_argon2),
    "BLF-CRYPT": (_check_bcrypt, _verify_bcrypt),
    "SHA512-CRYPT": (_check_crypt, _verify_crypt),
    "SHA256-CRYPT": (_check_crypt, _verify_crypt),
    "MD5-CRYPT": (_check_crypt, _verify_crypt),
    **{name: (_check_digest, _verify_digest) for name in _DIGESTS},
    "CRAM-MD5": (_check_cram, _verify_cram),
    **{name: (_check_plain, _verify_plain) for name in CLEARTEXT_SCHEMES},
}
SUPPORTED_SCHEMES = frozenset(_HANDLERS) | {"CRYPT"}
