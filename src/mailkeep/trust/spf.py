"""SPF: may this client send mail for this domain? (RFC 7208, Sender Policy Framework.)

A domain publishes, in a TXT record beginning ``v=spf1``, which hosts may send mail with
its name in the SMTP ``MAIL FROM`` (or ``HELO``). :func:`check_host` evaluates such a
record for a client IP address (RFC 7208 §4) and gives one of the seven results of §2.6:
pass, fail, softfail, neutral, none, temperror, permerror.

The module is in three layers:

- **Parsing** (pure): :func:`parse_record` turns record text into an :class:`SpfRecord`
  (directives, ``redirect=``, ``exp=``, unknown modifiers), checking the whole ABNF of
  §12 first, so that a syntax error anywhere gives permerror even when an earlier
  mechanism would have matched (§4.6). :func:`parse_macro_string` parses the macro
  language of §7.
- **Macro expansion** (pure): :func:`expand` with a :class:`MacroContext`, and
  :func:`domain_name`, which turns an expansion into a DNS name the way §7.3 says
  (trailing dot dropped, long names truncated on the left to 253 characters).
- **Evaluation** (async, DNS through :func:`mailkeep.outbound.dns.query` and the
  resolver the caller passes): :func:`check_host`, :func:`spf_for_mail_from` and
  :func:`spf_for_helo` (§2.3, §2.4), and :func:`received_spf_header` (§9.1).

Limits (:class:`SpfLimits`, all from §4.6.4 unless said otherwise): at most 10 terms that
query DNS (``include``, ``a``, ``mx``, ``ptr``, ``exists``, ``redirect``) over the whole
evaluation, includes and redirects included: the 11th is a permerror, which is also how
an ``include`` or ``redirect`` loop ends. At most 2 void lookups (NXDOMAIN or an empty
answer): the 3rd is a permerror. An ``mx`` with more than 10 MX hosts is a permerror; of
the PTR names of the client only the first 10 are looked at. The whole evaluation has a
time budget (20 s; §4.6.4 says at least that much before giving up): temperror when
exceeded.

Choices where the RFC leaves room, each said where it is made in the code:

- Only the lookup a term itself makes can be void (the TXT of a ``include``/``redirect``
  target, the A/AAAA of ``a``, the MX of ``mx``, the PTR of ``ptr``, the A of
  ``exists``); the address lookups of MX hosts and of PTR names are not counted.
- A target name that no query can be made for after macro expansion (an empty label, a
  label over 63 octets) is treated as a name that does not exist (RFC 7208 test suite,
  "invalid-domain-*"): no match, and a void lookup.
- ``%{p}`` (§7.3) costs one PTR lookup and at most 10 address lookups per evaluation,
  cached, not counted in the 10 terms (the RFC does not count it; it is bounded anyway).
- The ``ptr`` mechanism (§5.5) forward-checks only the PTR names that are the target
  domain or below it: the others could not make it match, so checking them would only
  cost queries.
- No default explanation: ``explanation`` is empty unless the record's ``exp=`` gave one
  (§6.2 allows either); the SMTP receiver words its own reply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import dns.asyncresolver
import dns.exception
import dns.name

from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, query
from mailkeep.trust.iprev import IPAddress, client_address, forward_addresses, reverse_name

#: Terms that query DNS (include, a, mx, ptr, exists, redirect) per evaluation (§4.6.4).
DNS_LOOKUP_LIMIT = 10
#: Lookups answered with NXDOMAIN or no records, per evaluation (§4.6.4 "SHOULD ... two").
VOID_LOOKUP_LIMIT = 2
#: MX hosts one ``mx`` mechanism may look up; more is a permerror (§4.6.4).
MX_NAME_LIMIT = 10
#: PTR names ``ptr`` and ``%{p}`` look at; further ones are ignored (§4.6.4).
PTR_NAME_LIMIT = 10
#: Time budget of one evaluation in seconds; exceeded: temperror (§4.6.4: at least 20 s).
TIME_BUDGET = 20.0
#: Longest explanation returned (characters): it ends up in an SMTP reply line (§6.2
#: allows a limit; RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets).
EXPLANATION_LIMIT = 400
#: Longest domain name a macro expansion may give; longer ones are cut on the left (§7.3).
DOMAIN_LENGTH_LIMIT = 253
#: Characters of a macro expansion needed to make a domain name of it (§7.3): the final
#: dot, and the 254 before it, where a label boundary is looked for.
DOMAIN_EXPANSION_LIMIT = DOMAIN_LENGTH_LIMIT + 2
#: Longest DNS label in octets (RFC 1035 §2.3.4).
LABEL_LENGTH_LIMIT = 63
#: A macro transformer's digit count is capped here: no name has more labels (§7.3).
MACRO_PARTS_LIMIT = 128
#: Longest excerpt of an offending term quoted in a syntax error message (characters).
TERM_EXCERPT_LIMIT = 80
#: Longest value put in a Received-SPF key-value pair or comment (characters).
HEADER_VALUE_LIMIT = 300
#: Received-SPF lines are folded before this length where possible (RFC 5322 §2.1.1).
HEADER_LINE_LENGTH = 78


class SpfStatus(StrEnum):
    """The results of check_host() (RFC 7208 §2.6); equal to their names as strings."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class SpfSyntaxError(ValueError):
    """An SPF record or macro string does not follow the grammar (RFC 7208 §12)."""


# -- the record: an AST ---------------------------------------------------------------

#: Qualifier → result when the mechanism matches (§4.6.2); no qualifier means "+".
QUALIFIERS = {"+": SpfStatus.PASS, "-": SpfStatus.FAIL, "~": SpfStatus.SOFTFAIL,
              "?": SpfStatus.NEUTRAL}
MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
#: Macro letters allowed in a domain-spec; c, r and t only in explanation text (§7.2).
DOMAIN_MACRO_LETTERS = frozenset("slodipvh")
EXPLANATION_MACRO_LETTERS = DOMAIN_MACRO_LETTERS | frozenset("crt")
MACRO_DELIMITERS = ".-+,/_="
#: What %%, %_ and %- stand for (§7.1).
MACRO_ESCAPES = {"%": "%", "_": " ", "-": "%20"}

_DIGITS = frozenset("0123456789")
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALPHANUM = _ALPHA | _DIGITS
_NAME_CHARS = _ALPHANUM | frozenset("-_.")
_HEX_IP6 = frozenset("0123456789abcdefABCDEF:.")


@dataclass(frozen=True)
class Macro:
    """``%{letter digits r delimiters}`` (§7.1). ``digits`` 0 means "all parts";
    ``url_escape`` is true for an upper-case letter (§7.3)."""

    letter: str
    digits: int = 0
    reverse: bool = False
    delimiters: str = ""
    url_escape: bool = False

    def to_text(self) -> str:
        letter = self.letter.upper() if self.url_escape else self.letter
        return ("%{" + letter + (str(self.digits) if self.digits else "")
                + ("r" if self.reverse else "") + self.delimiters + "}")


@dataclass(frozen=True)
class MacroEscape:
    """``%%``, ``%_`` or ``%-`` (§7.1); ``code`` is the character after the ``%``."""

    code: str

    def to_text(self) -> str:
        return "%" + self.code


MacroPart = str | Macro | MacroEscape


@dataclass(frozen=True)
class MacroString:
    """A parsed macro-string: literal text, macros and escapes, in order."""

    parts: tuple[MacroPart, ...] = ()

    def to_text(self) -> str:
        return "".join(p if isinstance(p, str) else p.to_text() for p in self.parts)

    @property
    def letters(self) -> frozenset[str]:
        """The (lower-case) macro letters used."""
        return frozenset(p.letter for p in self.parts if isinstance(p, Macro))


@dataclass(frozen=True)
class Directive:
    """A qualifier and a mechanism (§4.6.1, §5).

    ``qualifier`` is as written ("" when none); ``domain_spec`` is the target of
    include/a/mx/ptr/exists (None: the current domain, for a/mx/ptr); ``network`` is the
    ip4/ip6 network; ``cidr4``/``cidr6`` are the a/mx prefix lengths as written (None:
    32/128). ``text`` is the term as it appeared in the record.
    """

    mechanism: str
    qualifier: str = ""
    domain_spec: MacroString | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int | None = None
    cidr6: int | None = None
    text: str = field(default="", compare=False)

    @property
    def result(self) -> SpfStatus:
        return QUALIFIERS[self.qualifier or "+"]

    def to_text(self) -> str:
        out = self.qualifier + self.mechanism
        if self.network is not None:
            out += f":{self.network.network_address}/{self.network.prefixlen}"
        if self.domain_spec is not None:
            out += ":" + self.domain_spec.to_text()
        if self.cidr4 is not None:
            out += f"/{self.cidr4}"
        if self.cidr6 is not None:
            out += f"//{self.cidr6}"
        return out


@dataclass(frozen=True)
class Modifier:
    """An unknown modifier (§6): kept, checked for syntax, otherwise ignored."""

    name: str
    value: MacroString


@dataclass(frozen=True)
class SpfRecord:
    """A parsed SPF record (§4.5, §12)."""

    directives: tuple[Directive, ...] = ()
    redirect: MacroString | None = None
    explanation: MacroString | None = None
    modifiers: tuple[Modifier, ...] = ()

    def to_text(self) -> str:
        terms = ["v=spf1", *(d.to_text() for d in self.directives)]
        if self.redirect is not None:
            terms.append("redirect=" + self.redirect.to_text())
        if self.explanation is not None:
            terms.append("exp=" + self.explanation.to_text())
        terms += [f"{m.name}={m.value.to_text()}" for m in self.modifiers]
        return " ".join(terms)


# -- parsing --------------------------------------------------------------------------

def is_spf_record(text: str) -> bool:
    """True if ``text`` (a TXT record's strings joined) is an SPF record: "v=spf1", in
    any case, then a space or the end (§4.5). "v=spf10" is not one."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def parse_record(text: str) -> SpfRecord:
    """Parse an SPF record; SpfSyntaxError (saying which term and why) if it does not
    follow the grammar of §12, so that the caller can answer permerror (§4.6)."""
    if not is_spf_record(text):
        raise SpfSyntaxError("an SPF record begins with 'v=spf1' and a space")
    directives: list[Directive] = []
    redirect: MacroString | None = None
    explanation: MacroString | None = None
    modifiers: list[Modifier] = []
    # §12: terms are separated by one or more spaces (SP only; a tab is no separator and
    # is caught as an invalid character); trailing spaces are allowed.
    terms = [t for t in text[6:].split(" ") if t]
    for index, term in enumerate(terms, start=1):
        try:
            item = _parse_term(term)
            if isinstance(item, Directive):
                directives.append(item)
            elif item.name == "redirect":
                if redirect is not None:
                    raise SpfSyntaxError("redirect= given twice (§6)")
                redirect = item.value
            elif item.name == "exp":
                if explanation is not None:
                    raise SpfSyntaxError("exp= given twice (§6)")
                explanation = item.value
            else:
                modifiers.append(item)
        except SpfSyntaxError as exc:
            raise SpfSyntaxError(f"term {index} {_excerpt(term)!r}: {exc}") from None
    return SpfRecord(tuple(directives), redirect, explanation, tuple(modifiers))


def _excerpt(text: str) -> str:
    return text if len(text) <= TERM_EXCERPT_LIMIT else text[:TERM_EXCERPT_LIMIT] + "..."


def _parse_term(term: str) -> Directive | Modifier:
    # A modifier is name "=" ...; anything else must be a directive (§4.6.1, §12).
    name_end = _name_length(term)
    if name_end and term[name_end:name_end + 1] == "=":
        name, value = term[:name_end].lower(), term[name_end + 1:]
        if name in ("redirect", "exp"):
            # §6.1, §6.2: the value is a domain-spec; a bad one is a syntax error, not
            # an unknown modifier (RFC 7208 test suite "redirect-syntax-error").
            return Modifier(name, parse_domain_spec(value))
        return Modifier(name, parse_macro_string(value, letters=EXPLANATION_MACRO_LETTERS))
    qualifier = term[0] if term[0] in QUALIFIERS else ""
    rest = term[len(qualifier):]
    length = 0
    while length < len(rest) and rest[length] in _ALPHANUM:
        length += 1
    mechanism = rest[:length].lower()
    if not mechanism or rest[0] not in _ALPHA:
        raise SpfSyntaxError("neither a mechanism nor a modifier")
    if mechanism not in MECHANISMS:
        hint = " (a modifier takes '=' and no qualifier)" if mechanism in (
            "redirect", "exp") else ""
        raise SpfSyntaxError(f"unknown mechanism {mechanism!r}{hint}")
    return _parse_mechanism(qualifier, mechanism, rest[length:], term)


def _name_length(term: str) -> int:
    """Length of the modifier name at the start of ``term``: ALPHA *(ALPHA / DIGIT / "-"
    / "_" / ".") (§12); 0 if there is none."""
    if not term or term[0] not in _ALPHA:
        return 0
    length = 1
    while length < len(term) and term[length] in _NAME_CHARS:
        length += 1
    return length


def _parse_mechanism(qualifier: str, mechanism: str, args: str, term: str) -> Directive:
    if mechanism == "all":
        if args:
            raise SpfSyntaxError("'all' takes no argument (§5.1)")
        return Directive(mechanism, qualifier, text=term)
    if mechanism in ("include", "exists"):
        if not args.startswith(":"):
            raise SpfSyntaxError(f"'{mechanism}' needs ':' and a domain (§5.2, §5.7)")
        return Directive(mechanism, qualifier, parse_domain_spec(args[1:]), text=term)
    if mechanism in ("ip4", "ip6"):
        if not args.startswith(":"):
            raise SpfSyntaxError(f"'{mechanism}' needs ':' and a network (§5.6)")
        return Directive(mechanism, qualifier, network=_parse_network(mechanism, args[1:]),
                         text=term)
    cidr4 = cidr6 = None
    if mechanism in ("a", "mx"):
        # dual-cidr-length = [ "/" ip4-length ] [ "//" ip6-length ], at the very end
        # (§5.3, §5.4); a "/" further left belongs to the domain-spec.
        args, digits6 = _strip_cidr(args, "//")
        args, digits4 = _strip_cidr(args, "/")
        cidr4 = None if digits4 is None else _cidr_length(digits4, 32)
        cidr6 = None if digits6 is None else _cidr_length(digits6, 128)
    spec = None
    if args:
        if not args.startswith(":"):
            raise SpfSyntaxError(f"unexpected {_excerpt(args)!r} after '{mechanism}'")
        spec = parse_domain_spec(args[1:])
    return Directive(mechanism, qualifier, spec, cidr4=cidr4, cidr6=cidr6, text=term)


def _strip_cidr(text: str, marker: str) -> tuple[str, str | None]:
    end = len(text)
    start = end
    while start > 0 and text[start - 1] in _DIGITS:
        start -= 1
    if start == end or not text[:start].endswith(marker):
        return text, None
    return text[:start - len(marker)], text[start:]


def _cidr_length(digits: str, maximum: int) -> int:
    # ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT); no leading zeros (§12), and a
    # length beyond the address size has no meaning (RFC 7208 test suite "cidr4-033").
    if (not digits or not set(digits) <= _DIGITS or len(digits) > 3
            or (len(digits) > 1 and digits[0] == "0")):
        raise SpfSyntaxError(f"invalid prefix length {digits!r}")
    value = int(digits)
    if value > maximum:
        raise SpfSyntaxError(f"prefix length {value} is over {maximum}")
    return value


def _parse_network(mechanism: str, text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    address, slash, digits = text.partition("/")
    maximum = 32 if mechanism == "ip4" else 128
    length = _cidr_length(digits, maximum) if slash else maximum
    if mechanism == "ip4":
        quads = address.split(".")
        # ip4-network = qnum "." qnum "." qnum "." qnum, qnum 0-255 without leading
        # zeros (§12); "1.2.3" is not a shorthand for a network (§5.6).
        if len(quads) != 4 or not all(
                q and len(q) <= 3 and set(q) <= _DIGITS and (q == "0" or q[0] != "0")
                and int(q) <= 255 for q in quads):
            raise SpfSyntaxError(f"{_excerpt(address)!r} is not an IPv4 address")
        return ipaddress.IPv4Network((ipaddress.IPv4Address(address), length), strict=False)
    # ip6-network per RFC 4291 §2.2; the character check keeps out zone indexes ("%eth0"),
    # which ipaddress would accept.
    if not address or not set(address) <= _HEX_IP6:
        raise SpfSyntaxError(f"{_excerpt(address)!r} is not an IPv6 address")
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        raise SpfSyntaxError(f"{_excerpt(address)!r} is not an IPv6 address") from None
    return ipaddress.IPv6Network((parsed, length), strict=False)


def parse_macro_string(text: str, *, letters: frozenset[str] = DOMAIN_MACRO_LETTERS,
                       spaces: bool = False) -> MacroString:
    """Parse a macro-string (§7.1); ``letters`` are the macro letters allowed and
    ``spaces`` allows literal spaces (explain-string, §6.2). SpfSyntaxError if invalid."""
    parts: list[MacroPart] = []
    literal: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char != "%":
            # macro-literal = %x21-24 / %x26-7E: visible ASCII except "%".
            if not ("!" <= char <= "~" or (spaces and char == " ")):
                raise SpfSyntaxError(f"invalid character {char!r} at position {position}")
            literal.append(char)
            position += 1
            continue
        if literal:
            parts.append("".join(literal))
            literal = []
        following = text[position + 1:position + 2]
        if following in MACRO_ESCAPES:
            parts.append(MacroEscape(following))
            position += 2
            continue
        if following != "{":
            # §7.1: "A '%' character not followed by a '{', '%', '-', or '_' character is
            # a syntax error."
            raise SpfSyntaxError(f"'%' not followed by '{{', '%', '_' or '-' at position "
                                 f"{position}")
        end = text.find("}", position + 2)
        if end < 0:
            raise SpfSyntaxError(f"macro at position {position} has no closing '}}'")
        parts.append(_parse_macro(text[position + 2:end], letters))
        position = end + 1
    if literal:
        parts.append("".join(literal))
    return MacroString(tuple(parts))


def _parse_macro(body: str, letters: frozenset[str]) -> Macro:
    """``letter *DIGIT ["r"] *delimiter`` (§7.1), the inside of ``%{...}``."""
    shown = "%{" + _excerpt(body) + "}"
    if not body or body[0] not in _ALPHA:
        raise SpfSyntaxError(f"invalid macro {shown!r}")
    letter = body[0]
    if letter.lower() not in letters:
        where = " (c, r and t are for exp= text only, §7.2)" if letter.lower() in "crt" \
            else ""
        raise SpfSyntaxError(f"unknown macro letter {letter!r} in {shown!r}{where}")
    position = 1
    while position < len(body) and body[position] in _DIGITS:
        position += 1
    digits = body[1:position]
    reverse = body[position:position + 1] in ("r", "R")
    position += reverse
    delimiters = body[position:]
    if any(char not in MACRO_DELIMITERS for char in delimiters):
        raise SpfSyntaxError(f"invalid macro {shown!r}")
    count = 0
    if digits:
        significant = digits.lstrip("0")
        if not significant:
            # §7.3: "If a DIGIT is specified, the value MUST be nonzero."
            raise SpfSyntaxError(f"macro {shown!r} keeps zero parts")
        count = MACRO_PARTS_LIMIT if len(significant) > 3 \
            else min(int(significant), MACRO_PARTS_LIMIT)
    return Macro(letter.lower(), count, reverse, delimiters, letter.isupper())


def parse_domain_spec(text: str) -> MacroString:
    """Parse a domain-spec (§7.1): a macro-string that ends in a macro or in "." and a
    top label (letters, digits, inner hyphens, not all digits), optionally with a final
    dot. "example" or "a:111.222.33.44" are syntax errors (§7.1, RFC 7208 test suite
    "a-only-toplabel", "a-numeric")."""
    if not text:
        raise SpfSyntaxError("empty domain")
    spec = parse_macro_string(text)
    last = spec.parts[-1]
    if last == "." and len(spec.parts) > 1 and not isinstance(spec.parts[-2], str):
        # "%{d}." is outside the letter of the grammar, but the final dot only makes
        # the name absolute and is dropped anyway (§7.3): accepted, as most verifiers do.
        return spec
    if isinstance(last, str):
        body = last[:-1] if last.endswith(".") else last
        dot = body.rfind(".")
        if dot < 0:
            raise SpfSyntaxError(f"{_excerpt(text)!r} does not end in '.' and a top label "
                                 "or in a macro")
        top = body[dot + 1:]
        if not _is_toplabel(top):
            hint = " (an address belongs in ip4:/ip6:)" if top and set(top) <= _DIGITS \
                else ""
            raise SpfSyntaxError(f"{_excerpt(top)!r} is not a valid top label{hint}")
    return spec


def _is_toplabel(label: str) -> bool:
    # toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" )
    #            alphanum ): alphanumerics and inner hyphens, not all digits (§7.1).
    return (bool(label) and label[0] in _ALPHANUM and label[-1] in _ALPHANUM
            and all(c in _ALPHANUM or c == "-" for c in label)
            and not set(label) <= _DIGITS)


# -- macro expansion (pure) -----------------------------------------------------------

@dataclass(frozen=True)
class MacroContext:
    """What the macros of §7.3 expand to. ``validated_name`` is %{p}, already looked up
    (or "unknown"); ``receiver`` is %{r}; ``timestamp`` is %{t}."""

    ip: IPAddress
    sender: str
    local_part: str
    sender_domain: str
    domain: str
    helo: str
    validated_name: str = "unknown"
    receiver: str = "unknown"
    timestamp: int = 0


def expand(macro_string: MacroString, context: MacroContext, *, limit: int | None = None,
           keep_end: bool = False) -> str:
    """The text of ``macro_string`` with every macro expanded (§7.3).

    With ``limit``, only the first ``limit`` characters (the last ones with ``keep_end``)
    are produced, and only the parts needed for them are expanded: a hostile record of
    thousands of ``%{s}`` would otherwise cost megabytes and blocking CPU time, when a
    domain name keeps only its last 253 characters (§7.3) and an explanation its first
    few hundred.
    """
    parts = reversed(macro_string.parts) if keep_end else iter(macro_string.parts)
    out: list[str] = []
    produced = 0
    for part in parts:
        if isinstance(part, str):
            text = part
        elif isinstance(part, MacroEscape):
            text = MACRO_ESCAPES[part.code]
        else:
            text = _expand_macro(part, context)
        out.append(text)
        produced += len(text)
        if limit is not None and produced >= limit:
            break
    if keep_end:
        out.reverse()
    text = "".join(out)
    if limit is None or len(text) <= limit:
        return text
    return text[len(text) - limit:] if keep_end else text[:limit]


def _macro_value(letter: str, context: MacroContext) -> str:
    ip = context.ip
    if letter == "i":
        # IPv4 in dotted form; IPv6 as 32 dot-separated nibbles (§7.3), so that "%{ir}"
        # gives the ip6.arpa order.
        return str(ip) if ip.version == 4 else ".".join(ip.exploded.replace(":", ""))
    return {
        "s": context.sender, "l": context.local_part, "o": context.sender_domain,
        "d": context.domain, "h": context.helo, "p": context.validated_name,
        "v": "in-addr" if ip.version == 4 else "ip6",
        "c": str(ip), "r": context.receiver, "t": str(context.timestamp),
    }[letter]


def _expand_macro(macro: Macro, context: MacroContext) -> str:
    value = _macro_value(macro.letter, context)
    if macro.delimiters or macro.digits or macro.reverse:
        # §7.3: split on the delimiters (default "."), optionally reverse, keep the
        # rightmost N parts, join with ".".
        delimiters = macro.delimiters or "."
        parts = [value]
        for delimiter in delimiters:
            parts = [piece for part in parts for piece in part.split(delimiter)]
        if macro.reverse:
            parts.reverse()
        if macro.digits:
            parts = parts[-macro.digits:]
        value = ".".join(parts)
    if macro.url_escape:
        # §7.3: upper-case macros are URL-escaped: everything but RFC 3986 unreserved.
        value = quote(value, safe="")
    return value


def domain_name(text: str) -> tuple[str, dns.name.Name] | None:
    """``text`` (a domain or a macro expansion) as (domain text, DNS name), or None if no
    query can be made for it (an empty label, a label over 63 octets, or non-ASCII that is
    not a valid IDN).

    §7.3: a final dot is dropped, and a name longer than 253 characters loses labels on
    the left until it fits.
    """
    if text.endswith("."):
        text = text[:-1]
    if len(text) > DOMAIN_LENGTH_LIMIT:
        # The longest suffix that starts after a dot and fits (found in one pass: a
        # hostile record can make expansions megabytes long).
        dot = text.find(".", len(text) - DOMAIN_LENGTH_LIMIT - 1)
        text = text[dot + 1:] if dot >= 0 else text
    if not text or len(text) > DOMAIN_LENGTH_LIMIT:
        return None
    labels = []
    for label in text.split("."):
        if not label:
            return None
        if label.isascii():
            encoded = label.encode("ascii")
        else:
            try:
                encoded = dns.name.IDNA_2008_Practical.encode(label)
            except (dns.exception.DNSException, UnicodeError, ValueError):
                return None
        if len(encoded) > LABEL_LENGTH_LIMIT:
            return None
        labels.append(encoded)
    try:
        return text, dns.name.Name([*labels, b""])
    except dns.exception.DNSException:
        return None


# -- evaluation -----------------------------------------------------------------------

@dataclass(frozen=True)
class SpfLimits:
    """Processing limits of one evaluation (§4.6.4); see the module constants."""

    dns_lookups: int = DNS_LOOKUP_LIMIT
    void_lookups: int = VOID_LOOKUP_LIMIT
    mx_names: int = MX_NAME_LIMIT
    ptr_names: int = PTR_NAME_LIMIT
    time_budget: float = TIME_BUDGET
    explanation_length: int = EXPLANATION_LIMIT


@dataclass(frozen=True)
class SpfResult:
    """The outcome of an SPF check.

    ``domain`` is the domain checked (the MAIL FROM or HELO domain: what DMARC aligns);
    ``mechanism`` the term that decided, as written ("" for the default result, none and
    errors; an include's term when the include matched); ``lookups``/``void_lookups`` the
    DNS-querying terms and void lookups used; ``explanation`` the ``exp=`` text for a
    fail ("" otherwise); ``problem`` why the result is permerror/temperror/none, for logs
    and Received-SPF. ``identity`` ("mailfrom" or "helo") is set by
    :func:`spf_for_mail_from` / :func:`spf_for_helo`.
    """

    result: SpfStatus
    explanation: str = ""
    mechanism: str = ""
    lookups: int = 0
    domain: str = ""
    problem: str = ""
    void_lookups: int = 0
    identity: str = ""
    sender: str = ""
    helo: str = ""
    ip: str = ""


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(frozen=True)
class _Decision:
    """What one check_host() level decided, with the ``exp=`` of the record that
    decided (§6.2) and the domain it belongs to (for %{d} in the explanation)."""

    result: SpfStatus
    mechanism: str = ""
    explanation: MacroString | None = None
    domain: str = ""


class _Evaluation:
    """One SPF evaluation: the counters of §4.6.4 span all includes and redirects."""

    def __init__(self, context: MacroContext, resolver: dns.asyncresolver.Resolver,
                 limits: SpfLimits) -> None:
        self.context = context
        self.ip = context.ip
        self.resolver = resolver
        self.limits = limits
        self.lookups = 0
        self.voids = 0
        self._ptr: tuple[tuple[dns.name.Name, ...], bool] | None = None
        self._validated: dict[dns.name.Name, bool] = {}
        self._validated_name: dict[str, str] = {}

    # DNS, with RFC 7208's reading of the answers ---------------------------------

    async def _lookup(self, name: dns.name.Name, rdtype: str) -> tuple[Any, ...]:
        """Records of ``rdtype``; () for NXDOMAIN and NODATA (§5: "as if the server
        returned ... zero answer records"); _TempError for any other failure (§5, §4.4)."""
        try:
            answer = await query(self.resolver, name, rdtype)
        except DnsNameError:
            return ()
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from None
        return answer.records

    def _count_term(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > self.limits.dns_lookups:
            raise _PermError(f"more than {self.limits.dns_lookups} DNS-querying terms "
                             f"(RFC 7208 §4.6.4), at {_excerpt(term)!r}")

    def _count_void(self, what: str) -> None:
        self.voids += 1
        if self.voids > self.limits.void_lookups:
            raise _PermError(f"more than {self.limits.void_lookups} void lookups "
                             f"(RFC 7208 §4.6.4), at {what}")

    async def _ptr_names(self) -> tuple[tuple[dns.name.Name, ...], bool]:
        """The client's PTR names (first PTR_NAME_LIMIT) and whether the PTR lookup was
        void; a DNS failure gives no names (§5.5: the mechanism then fails to match)."""
        if self._ptr is None:
            try:
                records = await self._lookup(reverse_name(self.ip), "PTR")
            except _TempError:
                self._ptr = ((), False)
            else:
                names: list[dns.name.Name] = []
                for record in records:
                    if record.target != dns.name.root and record.target not in names:
                        names.append(record.target)
                self._ptr = (tuple(names[:self.limits.ptr_names]), not records)
        return self._ptr

    async def _is_validated(self, name: dns.name.Name) -> bool:
        """Does ``name`` resolve to the client's address? A DNS failure counts as no
        (§5.5: "that domain name is skipped")."""
        if name not in self._validated:
            try:
                addresses = await forward_addresses(self.resolver, name, self.ip.version)
            except DnsTemporaryError:
                addresses = frozenset()
            self._validated[name] = self.ip in addresses
        return self._validated[name]

    async def _p_macro(self, domain: str) -> str:
        """%{p} (§7.3): the client's validated name, preferring ``domain`` itself, then a
        name below it, then any; "unknown" if none."""
        if domain not in self._validated_name:
            names, _ = await self._ptr_names()
            validated = [n for n in names if await self._is_validated(n)]
            chosen = "unknown"
            target = domain_name(domain)
            if target is not None:
                exact = [n for n in validated if n == target[1]]
                below = [n for n in validated if n.is_subdomain(target[1])]
                validated = exact + below + validated
            if validated:
                chosen = validated[0].to_text(omit_final_dot=True)
            self._validated_name[domain] = chosen
        return self._validated_name[domain]

    async def _expand(self, spec: MacroString, domain: str, *, limit: int,
                      keep_end: bool = False) -> str:
        context = replace(self.context, domain=domain)
        if "p" in spec.letters:
            context = replace(context, validated_name=await self._p_macro(domain))
        return expand(spec, context, limit=limit, keep_end=keep_end)

    async def _target(self, spec: MacroString | None,
                      domain: str) -> tuple[str, dns.name.Name] | None:
        if spec is None:
            return domain_name(domain)
        # domain_name() looks at no more than the last 255 characters (the final dot and
        # the 254 before it): the rest of a longer expansion is never needed.
        return domain_name(await self._expand(spec, domain, limit=DOMAIN_EXPANSION_LIMIT,
                                              keep_end=True))

    # check_host() ------------------------------------------------------------------

    async def check_host(self, domain: str) -> _Decision:
        """§4: the record of ``domain``, evaluated; _PermError/_TempError end the whole
        evaluation (§4.4, §4.6, §5.2)."""
        target = domain_name(domain)
        if target is None or not _is_checkable(domain):
            # §4.3: a malformed or single-label domain gives "none".
            return _Decision(SpfStatus.NONE)
        domain, name = target
        texts = [b"".join(r.strings).decode("latin-1") for r in await self._lookup(name, "TXT")]
        records = [t for t in texts if is_spf_record(t)]
        if not records:
            return _Decision(SpfStatus.NONE)  # §4.5
        if len(records) > 1:
            raise _PermError(f"{domain} has {len(records)} SPF records (RFC 7208 §4.5: "
                             "at most one)")
        try:
            record = parse_record(records[0])
        except SpfSyntaxError as exc:
            raise _PermError(f"{domain}: {exc}") from None
        for directive in record.directives:
            if await self._matches(directive, domain):
                return _Decision(directive.result, directive.text, record.explanation,
                                 domain)
        if record.redirect is not None:
            # §6.1: redirect applies only when no mechanism matched; the target's exp=
            # replaces ours (§6.2), which returning its decision does.
            text = "redirect=" + record.redirect.to_text()
            self._count_term(text)
            target = await self._target(record.redirect, domain)
            decision = _Decision(SpfStatus.NONE) if target is None \
                else await self.check_host(target[0])
            if decision.result is SpfStatus.NONE:
                raise _PermError(f"{domain}: {_excerpt(text)} leads to no SPF record "
                                 "(RFC 7208 §6.1)")
            return decision
        return _Decision(SpfStatus.NEUTRAL, domain=domain)  # §4.7

    async def _matches(self, directive: Directive, domain: str) -> bool:
        mechanism = directive.mechanism
        if mechanism == "all":
            return True
        if directive.network is not None:
            # An ip4 network never contains an IPv6 address and vice versa (§5.6).
            return self.ip in directive.network
        self._count_term(directive.text)
        target = await self._target(directive.domain_spec, domain)
        if mechanism == "include":
            decision = _Decision(SpfStatus.NONE) if target is None \
                else await self.check_host(target[0])
            # §5.2: pass matches; fail, softfail and neutral do not; none is a permerror
            # (temperror and permerror have already ended the evaluation).
            if decision.result is SpfStatus.NONE:
                raise _PermError(f"{domain}: {_excerpt(directive.text)} names a domain "
                                 "without an SPF record (RFC 7208 §5.2)")
            return decision.result is SpfStatus.PASS
        if target is None:
            # No query can be made for the name: as if it did not exist.
            self._count_void(_excerpt(directive.text))
            return False
        name = target[1]
        if mechanism == "exists":
            # §5.7: always an A lookup, whatever the client's address family.
            found = await self._lookup(name, "A")
            if not found:
                self._count_void(_excerpt(directive.text))
            return bool(found)
        if mechanism == "a":
            found = await self._lookup(name, "A" if self.ip.version == 4 else "AAAA")
            if not found:
                self._count_void(_excerpt(directive.text))
            return self._in_any(found, directive)
        if mechanism == "mx":
            return await self._mx_matches(name, directive)
        return await self._ptr_matches(name, directive)

    def _in_any(self, records: Iterable[Any], directive: Directive) -> bool:
        prefix = (32 if directive.cidr4 is None else directive.cidr4) if self.ip.version == 4 \
            else (128 if directive.cidr6 is None else directive.cidr6)
        for record in records:
            network = ipaddress.ip_network((record.address, prefix), strict=False)
            if self.ip in network:
                return True
        return False

    async def _mx_matches(self, name: dns.name.Name, directive: Directive) -> bool:
        records = await self._lookup(name, "MX")
        if not records:
            # §5.4: no implicit MX; the domain's own addresses are not used.
            self._count_void(_excerpt(directive.text))
            return False
        # A null MX (RFC 7505, "MX 0 .") names no host.
        hosts = sorted({(r.preference, r.exchange) for r in records
                        if r.exchange != dns.name.root})
        if len(hosts) > self.limits.mx_names:
            raise _PermError(f"{_excerpt(directive.text)}: {len(hosts)} MX hosts, more than "
                             f"{self.limits.mx_names} (RFC 7208 §4.6.4)")
        rdtype = "A" if self.ip.version == 4 else "AAAA"
        for _, host in hosts:
            if self._in_any(await self._lookup(host, rdtype), directive):
                return True
        return False

    async def _ptr_matches(self, name: dns.name.Name, directive: Directive) -> bool:
        names, void = await self._ptr_names()
        if void:
            self._count_void(_excerpt(directive.text))
        for candidate in names:
            # is_subdomain() is true for the name itself, compares case-insensitively.
            if candidate.is_subdomain(name) and await self._is_validated(candidate):
                return True
        return False

    async def explanation(self, spec: MacroString, domain: str) -> str:
        """§6.2: the expanded text of the TXT record ``exp=`` names, or "" if anything
        is wrong with it (no record, several, a DNS error, a syntax error)."""
        try:
            target = await self._target(spec, domain)
            records = () if target is None else await self._lookup(target[1], "TXT")
        except _TempError:
            return ""
        if len(records) != 1:
            return ""
        text = b"".join(records[0].strings).decode("latin-1")
        try:
            parsed = parse_macro_string(text, letters=EXPLANATION_MACRO_LETTERS, spaces=True)
        except SpfSyntaxError:
            return ""
        expanded = await self._expand(parsed, domain, limit=self.limits.explanation_length)
        # Only printable ASCII goes into an SMTP reply (RFC 5321 §4.2).
        printable = "".join(c if " " <= c <= "~" else "?" for c in expanded)
        return printable[:self.limits.explanation_length]


def _is_checkable(domain: str) -> bool:
    """§4.3: a domain check_host() can look up: a valid multi-label name, not an address
    literal ("[192.0.2.1]")."""
    target = domain_name(domain)
    # labels include the root label: a multi-label name has at least three.
    return not domain.startswith("[") and target is not None and len(target[1].labels) > 2


def _split_sender(sender: str, domain: str) -> tuple[str, str, str]:
    """(sender, local-part, domain) with §4.3's rule: no local-part → "postmaster"."""
    local, at, sender_domain = sender.rpartition("@")
    if not at:
        local, sender_domain = "", sender
    sender_domain = sender_domain or domain
    local = local or "postmaster"
    return f"{local}@{sender_domain}", local, sender_domain


async def check_host(ip: str | IPAddress, domain: str, sender: str, *, helo: str,
                     resolver: dns.asyncresolver.Resolver, limits: SpfLimits = SpfLimits(),
                     receiver: str = "unknown", now: float | None = None) -> SpfResult:
    """RFC 7208 §4 check_host(): the SPF result for client ``ip``, ``domain`` (whose
    record is evaluated) and ``sender`` (the MAIL FROM address, or postmaster@HELO).

    ``helo`` is %{h}, ``receiver`` (our host name) %{r} and ``now`` (Unix time; default
    the clock) %{t}, both for explanations only. Every DNS or record problem gives a
    result (temperror, permerror, none); ValueError only if ``ip`` is not an IP address.
    """
    address = client_address(ip)
    full_sender, local, sender_domain = _split_sender(sender, domain)
    base = SpfResult(SpfStatus.NONE, domain=domain.removesuffix("."), sender=full_sender,
                     helo=helo, ip=str(address))
    if not _is_checkable(domain):
        # §4.3: an address literal, a malformed or a single-label domain: "none".
        return replace(base, problem=f"{_excerpt(domain)!r} is not a domain name")
    timestamp = int(time.time() if now is None else now)
    context = MacroContext(address, full_sender, local, sender_domain,
                           domain.removesuffix("."), helo, receiver=receiver,
                           timestamp=timestamp)
    evaluation = _Evaluation(context, resolver, limits)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.time_budget
    try:
        async with asyncio.timeout_at(deadline):
            decision = await evaluation.check_host(domain)
    except _PermError as exc:
        return _counted(replace(base, result=SpfStatus.PERMERROR, problem=str(exc)),
                        evaluation)
    except _TempError as exc:
        return _counted(replace(base, result=SpfStatus.TEMPERROR, problem=str(exc)),
                        evaluation)
    except TimeoutError:
        return _counted(replace(base, result=SpfStatus.TEMPERROR,
                                problem=f"SPF evaluation took longer than "
                                        f"{limits.time_budget:g}s (RFC 7208 §4.6.4)"),
                        evaluation)
    explanation = ""
    if decision.result is SpfStatus.FAIL and decision.explanation is not None:
        try:
            # What is left of the budget; an explanation that is late is just left out.
            async with asyncio.timeout_at(deadline):
                explanation = await evaluation.explanation(decision.explanation,
                                                           decision.domain)
        except TimeoutError:
            explanation = ""
    problem = f"{domain.removesuffix('.')} has no SPF record" \
        if decision.result is SpfStatus.NONE else ""
    return _counted(replace(base, result=decision.result, explanation=explanation,
                            mechanism=decision.mechanism, problem=problem), evaluation)


def _counted(result: SpfResult, evaluation: _Evaluation) -> SpfResult:
    return replace(result, lookups=evaluation.lookups, void_lookups=evaluation.voids)


async def spf_for_mail_from(ip: str | IPAddress, mail_from: str, *, helo: str,
                            resolver: dns.asyncresolver.Resolver,
                            limits: SpfLimits = SpfLimits(), receiver: str = "unknown",
                            now: float | None = None) -> SpfResult:
    """SPF for the MAIL FROM identity (§2.4). ``mail_from`` is the reverse-path without
    angle brackets; for the null reverse-path ("") the identity is postmaster@``helo``
    (§2.4), so a bounce is checked against the HELO domain's policy."""
    if mail_from:
        domain = mail_from.rpartition("@")[2]
        sender = mail_from
    else:
        domain, sender = helo, f"postmaster@{helo}"
    result = await check_host(ip, domain, sender, helo=helo, resolver=resolver,
                              limits=limits, receiver=receiver, now=now)
    return replace(result, identity="mailfrom")


async def spf_for_helo(ip: str | IPAddress, helo: str, *, resolver: dns.asyncresolver.Resolver,
                       limits: SpfLimits = SpfLimits(), receiver: str = "unknown",
                       now: float | None = None) -> SpfResult:
    """SPF for the HELO identity (§2.3): check_host() with the HELO domain and
    postmaster@HELO. An address literal or a name that is not a domain gives none."""
    result = await check_host(ip, helo, f"postmaster@{helo}", helo=helo, resolver=resolver,
                              limits=limits, receiver=receiver, now=now)
    return replace(result, identity="helo")


# -- Received-SPF (§9.1) --------------------------------------------------------------

def _comment_text(result: SpfResult, receiver: str) -> str:
    sender, ip = result.sender, result.ip
    what = {
        SpfStatus.PASS: f"domain of {sender} designates {ip} as permitted sender",
        SpfStatus.FAIL: f"domain of {sender} does not designate {ip} as permitted sender",
        SpfStatus.SOFTFAIL: f"domain of transitioning {sender} does not designate {ip} "
                            "as permitted sender",
        SpfStatus.NEUTRAL: f"{ip} is neither permitted nor denied by domain of {sender}",
        SpfStatus.NONE: f"domain of {sender} does not publish an SPF record",
        SpfStatus.TEMPERROR: f"temporary error checking domain of {sender}",
        SpfStatus.PERMERROR: f"permanent error in the SPF record of domain of {sender}",
    }[result.result]
    return f"{receiver}: {what}"


def _header_safe(text: str) -> str:
    """No line breaks or other control characters in a header, and a bounded length."""
    cleaned = "".join(c if c >= " " and c != "\x7f" else " " for c in text)
    return cleaned[:HEADER_VALUE_LIMIT]


def _kv_value(text: str) -> str:
    # dot-atom if it is one (RFC 5322 §3.2.3), else a quoted-string (§3.2.4).
    atext = _ALPHANUM | frozenset("!#$%&'*+-/=?^_`{|}~")
    atoms = text.split(".")
    if text and all(atom and set(atom) <= atext for atom in atoms):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def received_spf_header(result: SpfResult, *, receiver: str) -> str:
    """The Received-SPF header field for ``result`` (§9.1), "Received-SPF: " included,
    folded with CRLF + tab before HEADER_LINE_LENGTH where it can be, with no final CRLF.

    ``receiver`` is our host name (the "receiver" key). Values are sanitized: no line
    breaks reach the header, whatever the client sent as HELO or MAIL FROM.
    """
    comment = _header_safe(_comment_text(result, _header_safe(receiver)))
    comment = comment.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    pairs = [("client-ip", result.ip), ("envelope-from", result.sender),
             ("helo", result.helo), ("receiver", receiver), ("identity", result.identity),
             ("mechanism", result.mechanism), ("problem", result.problem)]
    tokens = [f"Received-SPF: {SpfStatus(result.result).value}", *f"({comment})".split(" ")]
    tokens += [f"{key}={_kv_value(_header_safe(value))};" for key, value in pairs if value]
    lines = [tokens[0]]
    for token in tokens[1:]:
        if not token:
            continue
        if len(lines[-1]) + 1 + len(token) <= HEADER_LINE_LENGTH:
            lines[-1] += " " + token
        else:
            lines.append("\t" + token)
    return "\r\n".join(lines)
