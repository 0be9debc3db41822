"""Passwords: hashing, verification of Dovecot-compatible schemes, the passwd file.

``passwords`` hashes new passwords with Argon2id and verifies every scheme a Dovecot
passwd-file is likely to hold; ``cram_md5`` computes CRAM-MD5 (RFC 2195) answers from
Dovecot's stored HMAC-MD5 state; ``passwd_file`` reads and atomically rewrites
``data_dir/passwd``.
"""

from mailkeep.auth.cram_md5 import cram_md5_response, cram_md5_state, verify_cram_md5_response
from mailkeep.auth.passwd_file import PasswdEntry, PasswdFile, PasswdFileError, parse_passwd_text
from mailkeep.auth.passwords import (
    MalformedHashError,
    PasswordHashError,
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

__all__ = [
    "MalformedHashError",
    "PasswdEntry",
    "PasswdFile",
    "PasswdFileError",
    "PasswordHashError",
    "UnknownSchemeError",
    "cram_md5_response",
    "cram_md5_state",
    "generate_password",
    "hash_password",
    "hash_password_async",
    "needs_rehash",
    "parse_passwd_text",
    "password_scheme",
    "verify_cram_md5_response",
    "verify_password",
    "verify_password_async",
    "weak_scheme",
]
