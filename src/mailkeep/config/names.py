"""Canonical domain names and mail addresses, as Mailkeep stores and compares them.

Every part of Mailkeep (config keys, the store, the passwd file, recipient resolution)
names a domain by its lower-case IDNA A-label (RFC 5890 §2.3.2.1, mapped with UTS #46 so
that users may type U-labels and any case) and an address by its local part, NFC-normalised
(RFC 6532 §3.1) and lower-cased, followed by ``@`` and the canonical domain.

RFC 5321 §2.4 lets a server treat local parts case-sensitively; Mailkeep, like every major
server, does not for its own accounts, so ``Me@Example.COM`` and ``me@example.com`` are one
mailbox.

Two flavours of functions live here: strict ones for names an administrator writes into the
configuration (``canonical_domain``, ``canonical_address``), which reject anything that is
not a plain dot-atom address, and a lenient one for names that arrive from the network
(``lookup_address``), which never raises and simply yields ``None`` for nonsense.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

import idna

# RFC 5321 §4.5.3.1.1: the maximum total length of a user name or other local part is 64
# octets. §4.5.3.1.2: a domain is at most 255 octets; 253 characters in text form
# (RFC 1035 §2.3.4 counts the length octets of the wire form).
MAX_LOCAL_PART_OCTETS = 64
MAX_DOMAIN_LENGTH = 253
# RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle brackets.
MAX_ADDRESS_OCTETS = 254

# RFC 5322 §3.2.3 atext, plus "." for dot-atom; non-ASCII characters are allowed separately
# (RFC 6532 §3.2 extends atext with UTF8-non-ascii).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_ALL_NUMERIC = re.compile(r"^[0-9]+$")


class InvalidName(ValueError):
    """A domain or address that cannot be used; the message says why, for a person."""


@lru_cache(maxsize=4096)
def canonical_domain(name: str) -> str:
    """The lower-case IDNA A-label form of a domain (U-labels and any case accepted).

    Raises InvalidName for anything that is not a usable mail domain: empty labels, bad
    hyphens, characters outside IDNA2008, over-long names, address literals such as
    ``[192.0.2.1]`` and all-numeric top-level labels (RFC 3696 §2).
    """
    if not isinstance(name, str) or not name:
        raise InvalidName("a domain cannot be empty")
    if len(name) > MAX_DOMAIN_LENGTH * 4:
        raise InvalidName(f"a domain is at most {MAX_DOMAIN_LENGTH} characters long")
    if name.startswith("["):
        raise InvalidName("an address literal is not a domain")
    try:
        encoded = idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidName(f"{name!r} is not a valid domain name ({exc})") from None
    if encoded.endswith("."):
        # An absolute name with the root label; mail domains are written without it.
        raise InvalidName(f"{name!r} ends with a dot; write the domain without it")
    if len(encoded) > MAX_DOMAIN_LENGTH:
        raise InvalidName(f"a domain is at most {MAX_DOMAIN_LENGTH} characters long")
    if _ALL_NUMERIC.match(encoded.rsplit(".", 1)[-1]):
        raise InvalidName(f"{name!r} looks like an IP address, not a domain name")
    return encoded.lower()


def display_domain(name: str) -> str:
    """The Unicode (U-label) form of a canonical domain, for people to read."""
    try:
        return idna.decode(name)
    except (idna.IDNAError, UnicodeError):
        return name


def fold_local_part(local: str) -> str:
    """NFC-normalise and lower-case a local part (no validation)."""
    folded = unicodedata.normalize("NFC", local).lower()
    # Lower-casing can (rarely) produce a sequence that is no longer in NFC.
    return unicodedata.normalize("NFC", folded)


def canonical_local_part(local: str) -> str:
    """Validate a dot-atom local part (ASCII atext or UTF-8) and fold it.

    Quoted local parts are not accepted in the configuration: they are legal on the wire
    (RFC 5321 §4.1.2) but a source of confusion for mailbox names.
    """
    if not local:
        raise InvalidName("the local part (before the @) is empty")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        raise InvalidName(f"the local part is longer than {MAX_LOCAL_PART_OCTETS} octets "
                          "(RFC 5321 §4.5.3.1.1)")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidName(f"{local!r}: a dot cannot start or end the local part or follow "
                          "another dot")
    for ch in local:
        if ch in _ATEXT or ch == ".":
            continue
        if ord(ch) > 0x7F and unicodedata.category(ch)[0] not in "CZ":
            continue
        raise InvalidName(f"{local!r} contains {ch!r}, which is not allowed in a local part")
    return fold_local_part(local)


def canonical_address(address: str) -> str:
    """The canonical form ``local@domain`` of an address written by an administrator.

    Raises InvalidName with a readable reason.
    """
    if not isinstance(address, str):
        raise InvalidName("an address must be a string")
    if "@" not in address:
        raise InvalidName(f"{address!r} is not an address (no @)")
    local, _, domain = address.rpartition("@")
    canonical = f"{canonical_local_part(local)}@{canonical_domain(domain)}"
    if len(canonical.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise InvalidName(f"the address is longer than {MAX_ADDRESS_OCTETS} octets "
                          "(RFC 5321 §4.5.3.1.3)")
    return canonical


@lru_cache(maxsize=4096)
def lookup_domain(domain: str) -> str | None:
    """Canonical domain for a name received from the network, or None if it is invalid."""
    if domain.isascii():
        lowered = domain.lower()
        # Fast path: plain LDH names need no IDNA processing. Names with "--" (A-labels,
        # which must be valid Punycode, and the reserved "ab--" form) take the full path.
        if ("--" not in lowered and len(lowered) <= MAX_DOMAIN_LENGTH
                and _LDH_DOMAIN.match(lowered)
                and not _ALL_NUMERIC.match(lowered.rpartition(".")[2])):
            return lowered
    try:
        return canonical_domain(domain)
    except InvalidName:
        return None


_LDH_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


def unquote_local_part(local: str) -> str:
    """Remove RFC 5321 §4.1.2 quoting: ``"john.doe"`` and ``"j\\ohn"`` name ``john.doe``, ``john``."""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        inner = local[1:-1]
        out: list[str] = []
        escaped = False
        for ch in inner:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(ch)
        return "".join(out)
    return local


class LookupAddress(NamedTuple):
    """An address from the network: folded local part, canonical domain, and the local
    part as received (unquoted, NFC) for what must keep its case, such as a folder name."""

    local: str
    domain: str
    raw_local: str


def lookup_address(address: str) -> LookupAddress | None:
    """Split and fold an address received from the network, or None if it is not usable.

    Never raises: a recipient that cannot be parsed is simply not one of ours. The local
    part may be quoted (its quoting is removed) and may contain UTF-8 (RFC 6531).
    """
    if not isinstance(address, str) or "@" not in address:
        return None
    try:
        if len(address.encode("utf-8")) > MAX_ADDRESS_OCTETS + 2:
            return None
    except UnicodeEncodeError:  # lone surrogates: not text a client could have sent
        return None
    local, _, domain = address.rpartition("@")
    local = unquote_local_part(local)
    if not local or not domain or len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        return None
    canonical = lookup_domain(domain)
    if canonical is None:
        return None
    return LookupAddress(fold_local_part(local), canonical, unicodedata.normalize("NFC", local))
