"""Mailbox names and message flags as the store keeps them: validation and canonical forms.

Pure functions, no I/O. Protocol code passes names and flags as the client wrote them
(after any wire decoding such as modified UTF-7); the store canonicalises them here so that
every engine compares them the same way.

Mailbox names (RFC 9051 §5.1): Unicode, NFC-normalised (RFC 5198 §2), hierarchy separator
"/". "INBOX" is case-insensitive (RFC 9051 §5.1: "the case-insensitive mailbox name INBOX
is a special name reserved to mean the primary mailbox"), also as the first level of a
hierarchical name ("inbox/x" is "INBOX/x").

Flags (RFC 9051 §2.3.2): the five system flags ``\\Seen \\Answered \\Flagged \\Deleted
\\Draft`` are kept as bits; keywords are atoms (RFC 9051 §9 ``flag-keyword``) compared
case-insensitively (RFC 9051 §2.3.2: flags are case-insensitive). ``\\Recent`` is a session
flag that clients cannot set (RFC 3501 §2.3.2) and IMAP4rev2 removed it; it is refused here.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable

from mailkeep.store.api import (
    INBOX,
    SEPARATOR,
    SYSTEM_FLAG_BITS,
    InvalidFlag,
    MailboxError,
    StoreLimits,
)

# RFC 9051 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials
# / resp-specials; list-wildcards = "%" / "*"; quoted-specials = DQUOTE / "\";
# resp-specials = "]". A keyword is 1*ATOM-CHAR, and ATOM-CHAR is 7-bit.
_ATOM_SPECIALS = frozenset('(){ %*"\\]')

_SYSTEM_BY_LOWER = {name.lower(): name for name in SYSTEM_FLAG_BITS}


def canonical_mailbox_name(name: str, limits: StoreLimits | None = None) -> str:
    """The stored form of a mailbox name (see ``_canonical_mailbox_name``), memoised: every
    store call names a mailbox, and the same few names recur."""
    return _canonical_cached(name, limits or _DEFAULT_LIMITS)


_DEFAULT_LIMITS = StoreLimits()


@functools.lru_cache(maxsize=4096)
def _canonical_cached(name: str, limits: StoreLimits) -> str:
    return _canonical_mailbox_name(name, limits)


def _canonical_mailbox_name(name: str, limits: StoreLimits | None = None) -> str:
    """The stored form of a mailbox name; raises MailboxError(reason="invalid-name").

    Refused: empty names and components (leading, trailing or doubled "/"), "." and ".."
    components (they would be path traversal in an export), control characters, the LIST
    wildcards "*" and "%" (a name containing them could never be listed unambiguously,
    RFC 9051 §6.3.9), and names over the length and depth limits.
    """
    limits = limits or StoreLimits()
    if not isinstance(name, str):
        raise MailboxError("a mailbox name must be text", reason="invalid-name")
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise MailboxError("a mailbox name cannot be empty", reason="invalid-name")
    if len(name.encode("utf-8")) > limits.max_mailbox_name_bytes:
        raise MailboxError(
            f"a mailbox name is at most {limits.max_mailbox_name_bytes} bytes long",
            reason="invalid-name")
    for char in name:
        code = ord(char)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            raise MailboxError("a mailbox name cannot contain control characters",
                               reason="invalid-name")
        if char in "*%":
            raise MailboxError(f"a mailbox name cannot contain {char!r}", reason="invalid-name")
        if 0xD800 <= code <= 0xDFFF:
            raise MailboxError("a mailbox name cannot contain lone surrogates",
                               reason="invalid-name")
    parts = name.split(SEPARATOR)
    if len(parts) > limits.max_mailbox_depth:
        raise MailboxError(f"a mailbox name has at most {limits.max_mailbox_depth} levels",
                           reason="invalid-name")
    for part in parts:
        if not part:
            raise MailboxError(f"{name!r}: a mailbox name cannot begin or end with "
                               f"{SEPARATOR!r} or contain it twice in a row",
                               reason="invalid-name")
        if part in (".", ".."):
            raise MailboxError(f"{name!r}: '.' and '..' are not mailbox names",
                               reason="invalid-name")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    return SEPARATOR.join(parts)


def parent_names(name: str) -> list[str]:
    """The superior names of a canonical name, outermost first ("a/b/c" -> ["a", "a/b"])."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def is_inferior(name: str, parent: str) -> bool:
    """True if ``name`` is below ``parent`` in the hierarchy (not equal to it)."""
    return name.startswith(parent + SEPARATOR)


def check_keyword(keyword: str, limits: StoreLimits | None = None) -> str:
    """Validate one keyword (RFC 9051 §9 flag-keyword = atom); returns it unchanged."""
    limits = limits or StoreLimits()
    if not keyword:
        raise InvalidFlag("a keyword cannot be empty")
    if len(keyword) > limits.max_keyword_length:
        raise InvalidFlag(f"a keyword is at most {limits.max_keyword_length} characters long")
    for char in keyword:
        code = ord(char)
        if code <= 0x20 or code >= 0x7F or char in _ATOM_SPECIALS:
            raise InvalidFlag(f"{keyword!r} is not a valid keyword "
                              f"(character {char!r} is not allowed in an IMAP atom)")
    return keyword


def parse_flags(flags: Iterable[str], limits: StoreLimits | None = None) -> tuple[int, tuple[str, ...]]:
    """Split flags into the system-flag bit mask and the keywords (deduplicated).

    System flags are recognised in any case; any other name starting with a backslash is
    refused (RFC 9051 §2.3.2 reserves them; ``\\Recent`` cannot be set by clients).
    Keywords keep the spelling first given; later case variants are dropped.
    """
    limits = limits or StoreLimits()
    if isinstance(flags, str):
        raise TypeError("flags must be a sequence of flag names, not one string")
    bits = 0
    keywords: list[str] = []
    seen: set[str] = set()
    for flag in flags:
        if not isinstance(flag, str):
            raise InvalidFlag(f"{flag!r} is not a flag name")
        if flag.startswith("\\"):
            system = _SYSTEM_BY_LOWER.get(flag.lower())
            if system is None:
                raise InvalidFlag(f"{flag} is not a flag that can be stored")
            bits |= SYSTEM_FLAG_BITS[system]
            continue
        check_keyword(flag, limits)
        folded = flag.lower()
        if folded not in seen:
            seen.add(folded)
            keywords.append(flag)
    if len(keywords) > limits.max_keywords_per_message:
        raise InvalidFlag(f"a message can carry at most {limits.max_keywords_per_message} keywords")
    return bits, tuple(keywords)


def format_flags(bits: int, keywords: Iterable[str]) -> tuple[str, ...]:
    """The flag list of a message: system flags in a fixed order, then keywords."""
    system = tuple(name for name, bit in SYSTEM_FLAG_BITS.items() if bits & bit)
    return system + tuple(keywords)


def join_keywords(keywords: Iterable[str]) -> str:
    """The stored form of a keyword set: sorted case-insensitively, space-separated.

    Keywords are atoms, so they never contain a space (RFC 9051 §9).
    """
    return " ".join(sorted(set(keywords), key=lambda k: (k.lower(), k)))


def split_keywords(stored: str) -> tuple[str, ...]:
    """Inverse of ``join_keywords``."""
    return tuple(stored.split()) if stored else ()
