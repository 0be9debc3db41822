"""SASLprep (RFC 4013), the stringprep profile SCRAM uses to normalise passwords.

RFC 5802 §2.2 defines SaltedPassword as Hi(Normalize(password), salt, i) with Normalize =
SASLprep, so the server must normalise a password the same way clients do before deriving
its SCRAM verifiers; otherwise a non-ASCII password typed in a different Unicode form could
never log in with SCRAM. Printable ASCII passwords come out unchanged.

Passwords are "queries" in stringprep's sense (RFC 3454 §7): unassigned code points are
allowed, as the common clients do.
"""

from __future__ import annotations

import stringprep
import unicodedata


class SASLprepError(ValueError):
    """The string contains characters SASLprep prohibits (RFC 4013 §2.3) or breaks the
    bidirectional rules (RFC 4013 §2.4, RFC 3454 §6)."""


_PROHIBITED = (
    stringprep.in_table_c12,  # non-ASCII space characters
    stringprep.in_table_c21_c22,  # ASCII and non-ASCII control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogate codes
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties or deprecated
    stringprep.in_table_c9,  # tagging characters
)


def saslprep(text: str) -> str:
    """``text`` prepared with SASLprep; raises SASLprepError."""
    if text.isascii() and all(" " <= ch <= "~" for ch in text):
        return text  # fast path: printable ASCII maps to itself
    # RFC 4013 §2.1: non-ASCII spaces map to SPACE; "commonly mapped to nothing" (B.1)
    # characters are removed.
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch
                     for ch in text if not stringprep.in_table_b1(ch))
    # §2.2: Unicode normalization form KC.
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return normalized
    # §2.3: prohibited output.
    for ch in normalized:
        if any(table(ch) for table in _PROHIBITED):
            raise SASLprepError(f"SASLprep prohibits U+{ord(ch):04X}")
    # §2.4, RFC 3454 §6: a string with right-to-left characters must not contain
    # left-to-right ones and must start and end with a right-to-left character.
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise SASLprepError("SASLprep: mixed right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise SASLprepError("SASLprep: right-to-left text must start and end with a "
                                "right-to-left character")
    return normalized


def scram_password_bytes(password: str | bytes) -> bytes:
    """The octets SCRAM feeds to PBKDF2 for ``password`` (RFC 5802 §2.2 Normalize).

    A password SASLprep rejects, or one that is not UTF-8, is used as its raw octets (as
    PostgreSQL does): clients that skip normalization for such passwords still log in, and
    nothing is lost for clients that refuse them anyway.
    """
    if isinstance(password, bytes):
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return password
    else:
        text = password
    try:
        return saslprep(text).encode("utf-8")
    except SASLprepError:
        return text.encode("utf-8", "surrogateescape")
