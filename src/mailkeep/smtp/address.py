"""Envelope addresses: the RFC 5321 §4.1.2 path grammar, with RFC 6531 (SMTPUTF8) extensions.

Parses the ``<...>`` of MAIL FROM and RCPT TO, and bare ``local@domain`` addresses from the
configuration and the command line, into one canonical value type, ``Address``. Domains are
stored as lower-case IDNA A-labels (or validated address literals) so that every part of
Mailkeep compares them the same way (docs/architecture.md, "Canonical names").

Errors carry the SMTP reply to send, so protocol code maps them to the wire in one place.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import idna

from .reply import Reply

__all__ = [
    "Address",
    "AddressError",
    "canonical_address",
    "canonical_domain",
    "parse_address",
    "parse_path",
    "split_path",
]

# RFC 5321 §4.5.3.1.1-3, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

BAD_SYNTAX = Reply(501, "5.1.3", "Bad address syntax")
PATH_TOO_LONG = Reply(501, "5.5.4", "Path too long")
NULL_NOT_ALLOWED = Reply(501, "5.1.3", "The null address <> is not allowed here")
UTF8_WITHOUT_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")


class AddressError(ValueError):
    """An address that cannot be used; ``reply`` is the SMTP reply that says why."""

    def __init__(self, message: str, reply: Reply = BAD_SYNTAX) -> None:
        super().__init__(message)
        self.reply = Reply(reply.code, reply.enhanced, f"{reply.lines[0]}: {message}")


# RFC 5322 §3.2.3 atext (RFC 5321 §4.1.2 Atom = 1*atext).
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
# RFC 6531 §3.3: atext =/ UTF8-non-ascii. C1 controls and lone surrogates are left out: they
# are never part of a real mailbox name and only serve to confuse logs and displays.
_NON_ASCII = "\u00a0-\ud7ff\ue000-\U0010ffff"
# (_ATEXT ends with "-", so it goes last in the class to stay a literal hyphen.)
_DOT_STRING_UTF8 = re.compile(rf"^[{_NON_ASCII}{_ATEXT}]+(?:\.[{_NON_ASCII}{_ATEXT}]+)*$")
# RFC 5321 §4.1.2 qtextSMTP (%d32-33 / %d35-91 / %d93-126) plus quoted-pairSMTP (\ %d32-126);
# RFC 6531 §3.3 adds UTF8-non-ascii to qtextSMTP.
_QUOTED_CONTENT = re.compile(rf'^(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*$')
_QUOTED_PAIR = re.compile(r"\\([\x20-\x7e])")
# RFC 5321 §4.1.2 sub-domain = Let-dig [Ldh-str], checked on the A-label.
_LDH_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ASCII_DOMAIN = re.compile(r"^[A-Za-z0-9.-]+$")
# RFC 5321 §4.1.3 General-address-literal = Standardized-tag ":" 1*dcontent.
_GENERAL_LITERAL = re.compile(r"^([A-Za-z0-9-]*[A-Za-z0-9]):([\x21-\x5a\x5e-\x7e]+)$")


def _octets(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _needs_quoting(local: str) -> bool:
    return not _DOT_STRING_UTF8.match(local)


def _quote_local(local: str) -> str:
    """The wire form of a local part: a Dot-string if possible, else a Quoted-string.

    RFC 5321 §4.1.2: a local part that can be a Dot-string SHOULD NOT be quoted, so
    ``"john"@x`` and ``john@x`` are the same mailbox and print the same way.
    """
    if not _needs_quoting(local):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass(frozen=True)
class Address:
    """A mailbox: a local part (unquoted value) and a canonical domain.

    ``domain`` is a lower-case IDNA A-label ("xn--bcher-kva.example") or an address literal
    ("[192.0.2.1]", "[IPv6:2001:db8::1]"). Build addresses with ``parse_path`` or
    ``parse_address``, which guarantee that form.
    """

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{_quote_local(self.local)}@{self.domain}"

    @property
    def utf8(self) -> bool:
        """True if the address can only be transmitted with SMTPUTF8 (RFC 6531 §3.2).

        The domain is stored as an A-label, so only a non-ASCII local part needs it.
        """
        return not self.local.isascii()

    @property
    def canonical(self) -> str:
        """The account key: local part NFC-normalised and lower-cased, then the domain.

        Mailkeep treats the local parts of its own accounts case-insensitively, as every
        major server does (docs/architecture.md), although RFC 5321 §2.4 lets the owner of
        the domain decide.
        """
        local = unicodedata.normalize("NFC", unicodedata.normalize("NFC", self.local).lower())
        return f"{_quote_local(local)}@{self.domain}"

    @property
    def domain_unicode(self) -> str:
        """The domain for display: U-labels where the A-label decodes, else as stored."""
        if self.domain.startswith("[") or "xn--" not in self.domain:
            return self.domain
        try:
            return idna.decode(self.domain)
        except (idna.IDNAError, UnicodeError, ValueError):
            return self.domain

    @property
    def unicode(self) -> str:
        """``local@domain`` with the domain in U-labels, for display."""
        return f"{_quote_local(self.local)}@{self.domain_unicode}"


@lru_cache(maxsize=4096)
def canonical_domain(domain: str) -> str:
    """The canonical form of a domain name: lower-case IDNA A-label.

    Strips one trailing dot (configuration files often write absolute names), then applies
    UTS #46 mapping and IDNA 2008 validation. Address literals are validated and returned in
    their canonical form. Raises ValueError (``AddressError``) on anything invalid.
    """
    if domain.startswith("["):
        return _canonical_literal(domain)
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or _octets(domain) > MAX_DOMAIN:
        raise AddressError("domain empty or longer than 255 octets")
    if _ASCII_DOMAIN.match(domain) and "xn--" not in domain.lower():
        # Fast path for the common all-ASCII case: RFC 5321 §4.1.2 LDH labels.
        result = domain.lower()
    else:
        try:
            result = idna.encode(domain, uts46=True).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise AddressError(f"invalid domain name ({exc})") from None
    labels = result.split(".")
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise AddressError(f"invalid domain label {label!r}")
    if len(result) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    return result


def _canonical_literal(text: str) -> str:
    """RFC 5321 §4.1.3 address literal, validated; canonical textual form."""
    if not (text.startswith("[") and text.endswith("]")) or len(text) < 3:
        raise AddressError("malformed address literal")
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        body = inner[5:]
        # ipaddress accepts "%zone" suffixes (RFC 4007) which have no place in mail.
        if "%" in body or not body:
            raise AddressError("malformed IPv6 address literal")
        try:
            return f"[IPv6:{ipaddress.IPv6Address(body).compressed}]"
        except ValueError:
            raise AddressError("malformed IPv6 address literal") from None
    if _GENERAL_LITERAL.match(inner):
        # RFC 5321 §4.1.3: tags other than IPv6 must be registered with IANA; none are.
        raise AddressError("unknown address literal tag")
    try:
        # Python ≥3.9.5 rejects leading zeros, which RFC 5321's Snum grammar also forbids
        # from being ambiguous octal ("010").
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError("malformed IPv4 address literal") from None


def _parse_domain(text: str, smtputf8: bool) -> str:
    """Domain or address literal from a path, per RFC 5321 §4.1.2 (RFC 6531 §3.3 for UTF-8)."""
    if not text:
        raise AddressError("missing domain")
    if _octets(text) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets", PATH_TOO_LONG)
    if text.startswith("["):
        return _canonical_literal(text)
    if not text.isascii() and not smtputf8:
        raise AddressError("non-ASCII domain", UTF8_WITHOUT_SMTPUTF8)
    # The grammar has no trailing dot and no empty label; check before IDNA, which would
    # quietly accept "example.com." as a root-relative name.
    if text.endswith(".") or text.startswith(".") or ".." in text:
        raise AddressError("empty domain label")
    return canonical_domain(text)


def _parse_local(text: str, smtputf8: bool) -> str:
    """Local part: Dot-string or Quoted-string (RFC 5321 §4.1.2); returns the unquoted value."""
    if not text:
        raise AddressError("empty local part")
    if _octets(text) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets", PATH_TOO_LONG)
    if not text.isascii() and not smtputf8:
        # RFC 6531 §3.5: a non-ASCII address without the SMTPUTF8 parameter.
        raise AddressError("non-ASCII local part", UTF8_WITHOUT_SMTPUTF8)
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise AddressError("unterminated quoted local part")
        content = text[1:-1]
        if not _QUOTED_CONTENT.match(content):
            raise AddressError("invalid character in quoted local part")
        value = _QUOTED_PAIR.sub(r"\1", content)
        if not value:
            # RFC 5321 allows "" but no real mailbox has an empty name; refusing it keeps
            # every Address printable as something a human can read.
            raise AddressError("empty local part")
        return value
    if not _DOT_STRING_UTF8.match(text):
        raise AddressError("invalid character in local part")
    return text


def _split_mailbox(text: str) -> tuple[str, str]:
    """Split ``local@domain`` at the "@" that is outside the quoted local part."""
    if text.startswith('"'):
        i = 1
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                break
            i += 1
        else:
            raise AddressError("unterminated quoted local part")
        end = i + 1
        if text[end:end + 1] != "@":
            raise AddressError("missing @ after quoted local part")
        return text[:end], text[end + 1:]
    at = text.rfind("@")
    if at < 0:
        raise AddressError("missing @")
    return text[:at], text[at + 1:]


def _check_adl(adl: str, smtputf8: bool) -> None:
    """RFC 5321 §4.1.2 A-d-l = At-domain *( "," At-domain ); validated, then ignored (§C)."""
    for part in adl.split(","):
        if not part.startswith("@"):
            raise AddressError("malformed source route")
        _parse_domain(part[1:], smtputf8)


def split_path(text: str) -> tuple[str, str]:
    """Split the argument of MAIL FROM:/RCPT TO: into the ``<path>`` and the parameters.

    The path ends at the first ``>`` outside a quoted local part; a quoted local part may
    contain spaces and ``>``. Raises AddressError if there is no complete ``<...>``.
    """
    if not text.startswith("<"):
        raise AddressError("the address must be enclosed in <>")
    if '"' not in text:
        # Common case: no quoted local part, so the first ">" closes the path.
        close = text.find(">")
        if close < 0:
            raise AddressError("missing closing >")
        rest = text[close + 1:]
        if rest and not rest.startswith(" "):
            raise AddressError("expected a space after the address")
        return text[: close + 1], rest.lstrip(" ")
    in_quotes = False
    i = 1
    length = len(text)
    while i < length:
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == ">":
            rest = text[i + 1:]
            if rest and not rest.startswith(" "):
                raise AddressError("expected a space after the address")
            return text[: i + 1], rest.lstrip(" ")
        i += 1
    raise AddressError("missing closing >")


def parse_path(
    text: str,
    *,
    smtputf8: bool = False,
    allow_null: bool = False,
    postmaster_domain: str | None = None,
) -> Address | None:
    """Parse an RFC 5321 §4.1.2 Reverse-path or Forward-path, angle brackets included.

    ``smtputf8``: the transaction uses SMTPUTF8, so UTF-8 local parts and U-label domains
    are allowed (RFC 6531 §3.3); otherwise they get 553 5.6.7. ``allow_null``: ``<>`` is
    accepted and returns None (reverse paths, RFC 5321 §4.5.5). ``postmaster_domain``: if
    given, the special forward path ``<Postmaster>`` (RFC 5321 §4.5.1) is accepted and means
    postmaster at that domain. Source routes are checked and dropped (RFC 5321 §C).
    """
    if _octets(text) > MAX_PATH:
        raise AddressError("path longer than 256 octets", PATH_TOO_LONG)
    if len(text) < 2 or text[0] != "<" or text[-1] != ">":
        raise AddressError("the address must be enclosed in <>")
    inner = text[1:-1]
    if not inner:
        if allow_null:
            return None
        raise AddressError("empty path", NULL_NOT_ALLOWED)
    if postmaster_domain is not None and inner.lower() == "postmaster":
        return Address("Postmaster", canonical_domain(postmaster_domain))
    if inner.startswith("@"):
        colon = inner.find(":")
        if colon < 0:
            raise AddressError("malformed source route")
        _check_adl(inner[:colon], smtputf8)
        inner = inner[colon + 1:]
    return _parse_mailbox(inner, smtputf8)


def _parse_mailbox(text: str, smtputf8: bool) -> Address:
    local_text, domain_text = _split_mailbox(text)
    local = _parse_local(local_text, smtputf8)
    domain = _parse_domain(domain_text, smtputf8)
    return Address(local, domain)


def parse_address(text: str, *, smtputf8: bool = True) -> Address:
    """Parse a bare ``local@domain`` (configuration, command line); same rules as a path.

    Surrounding whitespace is ignored; angle brackets are not expected.
    """
    text = text.strip()
    if _octets(text) > MAX_PATH - 2:
        raise AddressError("address longer than 254 octets", PATH_TOO_LONG)
    return _parse_mailbox(text, smtputf8)


def canonical_address(text: str) -> str:
    """``parse_address(text).canonical``: the key under which an account or alias is stored."""
    return parse_address(text).canonical
