"""Password hashing and every Dovecot scheme Mailkeep verifies."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time

import argon2
import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

from mailkeep.auth.passwords import (
    ARGON2_MEMORY_COST_KIB,
    MAX_PASSWORD_BYTES,
    MalformedHashError,
    UnknownSchemeError,
    generate_password,
    hash_password,
    hash_password_async,
    needs_rehash,
    password_scheme,
    verify_password,
    verify_password_async,
    weak_scheme,
)

PASSWORD = "correct horse ✓ battery"
SALT = b"NaCl\x00\xffsalt"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _cheap_argon2(kind: argon2.Type) -> str:
    return argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=kind).hash(PASSWORD)


def _reference_hashes() -> dict[str, str]:
    """Hashes made by the reference libraries (or by the scheme's definition)."""
    pw = PASSWORD.encode()
    bcrypt_hash = bcrypt.hashpw(pw, bcrypt.gensalt(4)).decode()
    return {
        "ARGON2ID": "{ARGON2ID}" + _cheap_argon2(argon2.Type.ID),
        "ARGON2I": "{ARGON2I}" + _cheap_argon2(argon2.Type.I),
        "BLF-CRYPT $2b$": "{BLF-CRYPT}" + bcrypt_hash,
        "BLF-CRYPT $2y$": "{BLF-CRYPT}$2y$" + bcrypt_hash[4:],
        "BLF-CRYPT $2a$": "{BLF-CRYPT}$2a$" + bcrypt_hash[4:],
        "SHA512-CRYPT": "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash(PASSWORD),
        "SHA512-CRYPT rounds": "{SHA512-CRYPT}" + sha512_crypt.using(rounds=1000).hash(PASSWORD),
        "SHA256-CRYPT": "{SHA256-CRYPT}" + sha256_crypt.using(rounds=5000).hash(PASSWORD),
        "MD5-CRYPT": "{MD5-CRYPT}" + md5_crypt.hash(PASSWORD),
        "CRYPT": "{CRYPT}" + sha512_crypt.using(rounds=5000).hash(PASSWORD),
        "bare crypt": bcrypt_hash,
        "SSHA512": "{SSHA512}" + _b64(hashlib.sha512(pw + SALT).digest() + SALT),
        "SSHA256": "{SSHA256}" + _b64(hashlib.sha256(pw + SALT).digest() + SALT),
        "SSHA": "{SSHA}" + _b64(hashlib.sha1(pw + SALT).digest() + SALT),
        "SHA512": "{SHA512}" + _b64(hashlib.sha512(pw).digest()),
        "SHA512 hex": "{SHA512}" + hashlib.sha512(pw).hexdigest(),
        "SHA512.HEX": "{SHA512.HEX}" + hashlib.sha512(pw).hexdigest().upper(),
        "SHA256": "{SHA256}" + _b64(hashlib.sha256(pw).digest()),
        "SHA1": "{SHA1}" + _b64(hashlib.sha1(pw).digest()),
        "PLAIN": "{PLAIN}" + PASSWORD,
        "CLEAR": "{CLEAR}" + PASSWORD,
        "PLAIN.B64": "{PLAIN.B64}" + _b64(pw),
    }


REFERENCE = _reference_hashes()


@pytest.mark.parametrize("name", list(REFERENCE))
def test_every_scheme_verifies(name: str):
    stored = REFERENCE[name]
    assert verify_password(stored, PASSWORD)
    assert verify_password(stored, PASSWORD.encode())
    assert not verify_password(stored, PASSWORD + "x")
    assert not verify_password(stored, "")
    assert needs_rehash(stored)


def test_seed_000_cram_md5_vector():
    stored = "{CRAM-MD5}cf8527ae5867fc08068952261363c49f0bcc0d1d5f166bbd20d3783b3e97f828"
    assert verify_password(stored, "rolfheinrich")
    assert not verify_password(stored, "rolfheinrichx")
    assert password_scheme(stored) == "CRAM-MD5" and weak_scheme(stored)


def test_seed_004_blowfish_vector():
    # `doveadm pw -p insecure -s BLF-CRYPT -r 8`, from seed 004.
    stored = "{BLF-CRYPT}$2a$08$6U9XVhAdBjylRGg96P9i.esHQYhrGHHv.OpCpqqAPYtAYFOePAe9O"
    assert verify_password(stored, "insecure")
    assert not verify_password(stored, "secure")
    assert not weak_scheme(stored)


def test_new_hashes_are_argon2id_with_our_parameters():
    stored = hash_password(PASSWORD)
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    params = argon2.extract_parameters(stored[len("{ARGON2ID}"):])
    assert params.memory_cost == ARGON2_MEMORY_COST_KIB
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, PASSWORD.upper())
    assert not needs_rehash(stored) and not weak_scheme(stored)
    assert hash_password(PASSWORD) != stored  # salted


def test_argon2id_with_other_parameters_needs_rehash():
    assert needs_rehash(REFERENCE["ARGON2ID"])


def test_weak_schemes_are_flagged():
    weak = {name for name, stored in REFERENCE.items() if weak_scheme(stored)}
    assert weak == {"MD5-CRYPT", "SSHA512", "SSHA256", "SSHA", "SHA512", "SHA512 hex",
                    "SHA512.HEX", "SHA256", "SHA1", "PLAIN", "CLEAR", "PLAIN.B64"}


def test_scheme_names():
    assert password_scheme(REFERENCE["CRYPT"]) == "SHA512-CRYPT"
    assert password_scheme(REFERENCE["bare crypt"]) == "BLF-CRYPT"
    assert password_scheme("{sha512.hex}" + "ab" * 64) == "SHA512"


def test_unknown_scheme_fails_and_is_reported(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="mailkeep.auth"):
        assert not verify_password("{NTLM}0cb6948805f797bf2a82807973b89537", "test")
    assert "unknown password scheme {NTLM}" in caplog.text
    assert "0cb6948805f797bf2a82807973b89537" not in caplog.text  # never log the hash
    with pytest.raises(UnknownSchemeError):
        password_scheme("{NTLM}0cb6948805f797bf2a82807973b89537")
    with pytest.raises(UnknownSchemeError):
        password_scheme("plaintextpassword")


@pytest.mark.parametrize("stored", [
    "", "{", "{SHA512}not-base64!", "{SHA512}" + _b64(b"short"), "{SSHA512}" + _b64(b"x" * 10),
    "{CRAM-MD5}abcd", "{CRAM-MD5}" + "zz" * 32, "{BLF-CRYPT}$2y$99$" + "a" * 53,
    "{BLF-CRYPT}$2x$04$" + "a" * 53, "{SHA512-CRYPT}$6$salt", "{ARGON2ID}$argon2id$nonsense",
    "{ARGON2ID}" + _cheap_argon2(argon2.Type.I), "{BLF-CRYPT.HEX}00",
])
def test_damaged_hashes_fail_safely(stored: str):
    assert not verify_password(stored, PASSWORD)
    with pytest.raises((MalformedHashError, UnknownSchemeError)):
        password_scheme(stored)
    assert needs_rehash(stored)


def test_expensive_imported_hashes_are_refused():
    # A hash asking for 2 GiB of memory must not be computed.
    huge = "$argon2id$v=19$m=2097152,t=1,p=1$c29tZXNhbHQ$" + "A" * 43
    with pytest.raises(MalformedHashError, match="limits"):
        password_scheme("{ARGON2ID}" + huge)
    assert not verify_password("{ARGON2ID}" + huge, PASSWORD)


def test_bcrypt_uses_only_72_bytes_like_crypt_blowfish():
    long_password = "a" * 72
    stored = "{BLF-CRYPT}" + bcrypt.hashpw(long_password.encode(), bcrypt.gensalt(4)).decode()
    assert verify_password(stored, long_password + "ignored")


def test_password_limits():
    with pytest.raises(ValueError):
        hash_password("")
    with pytest.raises(ValueError):
        hash_password("x" * (MAX_PASSWORD_BYTES + 1))
    assert not verify_password("{PLAIN}" + "x" * (MAX_PASSWORD_BYTES + 1), "x" * (MAX_PASSWORD_BYTES + 1))


def test_generated_passwords_are_strong_and_distinct():
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(len(p) == 20 and p.isalnum() for p in passwords)


async def test_async_helpers_do_not_block_the_event_loop():
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    stored = await hash_password_async(PASSWORD)
    assert await verify_password_async(stored, PASSWORD)
    assert not await verify_password_async(stored, "wrong")
    elapsed = time.monotonic() - started
    done.set()
    await task
    # The loop kept running while three Argon2 computations took place in threads.
    assert ticks >= min(5, int(elapsed / 0.005) // 4)
    assert ticks > 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120), st.text(max_size=40))
def test_verify_never_raises(stored: str, password: str):
    assert verify_password(stored, password) in (True, False)
    weak_scheme(stored)
    needs_rehash(stored)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["SHA512", "SHA256", "SHA1", "SSHA512", "SSHA256", "SSHA", "PLAIN"]),
       st.text(min_size=1, max_size=40), st.binary(min_size=1, max_size=16))
def test_digest_schemes_match_their_definition(scheme: str, password: str, salt: bytes):
    pw = password.encode()
    digest = {"SHA512": hashlib.sha512, "SHA256": hashlib.sha256, "SHA1": hashlib.sha1,
              "SSHA512": hashlib.sha512, "SSHA256": hashlib.sha256, "SSHA": hashlib.sha1}
    if scheme == "PLAIN":
        if ":" in password or "\n" in password:
            return
        stored = "{PLAIN}" + password
    elif scheme.startswith("SSHA"):
        stored = f"{{{scheme}}}" + _b64(digest[scheme](pw + salt).digest() + salt)
    else:
        stored = f"{{{scheme}}}" + _b64(digest[scheme](pw).digest())
    assert verify_password(stored, password)
    assert not verify_password(stored, password + "!")
