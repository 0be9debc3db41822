"""The Authentication-Results header field (RFC 8601): building ours, parsing any, and
removing forged ones that claim to be ours.

A receiving server records what it verified (SPF, DKIM, DMARC, ARC, iprev) in one
Authentication-Results field naming itself by its *authserv-id* (§2.5), usually its host
name. Mail filters and mail clients trust that field only because the server removes, on
the way in, every such field that already claims its authserv-id (§5): otherwise a sender
could write "dkim=pass" itself. :func:`strip_our_results` does that removal, and errs on
the side of removing (§5 lets a border MTA remove any instance of the field): a field is
removed when its authserv-id is ours (case-insensitive, quoted or not, after comments,
final dot ignored) or when ours appears as a whole word anywhere before its first ";"
(so a field that a lenient downstream parser could read as ours is removed too).

:func:`build_header` writes the field (§2.2) with every value quoted when it is not a
plain token or address, each result on a line of its own. :func:`parse` reads one (for
the removal, and for tests); it keeps the first comment after a result, which is where
we write details such as ``(p=reject dis=quarantine)``.

Pure functions over bytes and strings: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from mailkeep.trust.dkim_verify import DkimResult
from mailkeep.trust.dmarc import DmarcResult

FIELD_NAME = "Authentication-Results"
#: Longest reason= or comment text written (longer ones are cut with "...").
MAX_REASON_CHARS = 256
#: Longest property value written.
MAX_VALUE_CHARS = 512
#: Lines of the field are folded before this column (RFC 5322 §2.1.1 recommends 78).
FOLD_WIDTH = 78
#: Longest field value :func:`parse` reads; longer ones are not parsed (None).
MAX_PARSE_CHARS = 64 * 1024
#: Most results :func:`parse` returns from one field.
MAX_PARSED_RESULTS = 100

#: Result values per method: RFC 8601 §2.7.1 (dkim), §2.7.2 (spf), §2.7.3 (iprev),
#: RFC 7489 §11.2 (dmarc), RFC 8617 §10.1 (arc).
METHOD_RESULTS: dict[str, frozenset[str]] = {
    "spf": frozenset({"none", "neutral", "pass", "policy", "fail", "softfail", "temperror",
                      "permerror"}),
    "dkim": frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"}),
    "dmarc": frozenset({"none", "pass", "fail", "temperror", "permerror"}),
    "arc": frozenset({"none", "pass", "fail"}),
    "iprev": frozenset({"pass", "fail", "temperror", "permerror"}),
}

# RFC 2045 §5.1 token: printable ASCII except SPACE and tspecials ()<>@,;:\"/[]?=.
_TOKEN_CHARS = r"!#$%&'*+\-.0-9A-Z^_`a-z{|}~"
_TOKEN = re.compile(f"[{_TOKEN_CHARS}]+")
# RFC 5322 atext, for the addr-spec form of a property value (§2.2 pvalue).
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_ADDRESS = re.compile(rf"(?:[{_ATEXT}]+(?:\.[{_ATEXT}]+)*)?@[A-Za-z0-9](?:[A-Za-z0-9-]*"
                      rf"[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?\Z")
# RFC 5321 Keyword = Ldh-str (letters, digits, hyphens; not ending in a hyphen).
_KEYWORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_DIGITS = re.compile(r"[0-9]+")
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_WSP = " \t\r\n"


@dataclass(frozen=True)
class MethodResult:
    """One resinfo (§2.2): ``method=result``, an optional comment, reason and properties.

    ``properties`` are ``(ptype, property, value)``, e.g. ``("header", "d", "example.com")``
    or ``("smtp", "mailfrom", "user@example.com")``.
    """

    method: str
    result: str
    reason: str | None = None
    properties: tuple[tuple[str, str, str], ...] = ()
    comment: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class AuthenticationResults:
    """A parsed field value: who wrote it (authserv-id) and its results."""

    authserv_id: str
    results: tuple[MethodResult, ...]
    version: int | None = None


# -- writing -----------------------------------------------------------------------------


def _printable(text: str, limit: int) -> str:
    """``text`` as printable ASCII (anything else becomes "?"), at most ``limit`` chars.
    Our values come from the network (reasons quote DNS data); no control character,
    line break or 8-bit byte may reach the header."""
    clean = _NOT_PRINTABLE.sub("?", text)
    return clean if len(clean) <= limit else clean[:limit - 3] + "..."


def quote_value(text: str) -> str:
    """RFC 2045 ``value``: the text as a token when it is one, else a quoted-string."""
    if _TOKEN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pvalue(text: str) -> str:
    """§2.2 pvalue: a value, or an addr-spec / @domain written as it is."""
    if _ADDRESS.match(text) and not text.startswith("."):
        return text
    return quote_value(text)


def _comment(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({escaped})"


def _check(result: MethodResult) -> None:
    allowed = METHOD_RESULTS.get(result.method)
    if allowed is None:
        raise ValueError(f"unknown authentication method {result.method!r}")
    if result.result not in allowed:
        raise ValueError(f"{result.result!r} is not a result of {result.method}")
    for ptype, name, _value in result.properties:
        if not _KEYWORD.fullmatch(ptype) or not _KEYWORD.fullmatch(name):
            raise ValueError(f"invalid property name {ptype}.{name}")


def _resinfo_pieces(result: MethodResult) -> list[str]:
    method = result.method + (f"/{result.version}" if result.version is not None else "")
    pieces = [f"{method}={result.result}"]
    if result.comment:
        pieces.append(_comment(_printable(result.comment, MAX_REASON_CHARS)))
    if result.reason is not None:
        pieces.append("reason=" + quote_value(_printable(result.reason, MAX_REASON_CHARS)))
    for ptype, name, value in result.properties:
        pieces.append(f"{ptype}.{name}=" + _pvalue(_printable(value, MAX_VALUE_CHARS)))
    return pieces


def build_header(authserv_id: str, results: Sequence[MethodResult]) -> bytes:
    """The complete Authentication-Results field, CRLF-terminated (RFC 8601 §2.2).

    Each result goes on a line of its own; long lines are folded between the pieces of a
    result. With no results the field says ``none`` (§2.2 no-result). Raises ValueError
    for an unknown method, a result value the method does not have (§2.7) or a malformed
    property name: those are programming errors. Reasons, comments and values may hold
    anything; they are made printable ASCII and quoted as needed.
    """
    for result in results:
        _check(result)
    ident = quote_value(_printable(authserv_id.strip(), MAX_VALUE_CHARS))
    lines: list[str] = [f"{FIELD_NAME}: {ident};" if results else f"{FIELD_NAME}: {ident}; none"]
    for position, result in enumerate(results):
        pieces = _resinfo_pieces(result)
        if position < len(results) - 1:
            pieces[-1] += ";"
        line = "\t" + pieces[0]
        for piece in pieces[1:]:
            if len(line.expandtabs(8)) + 1 + len(piece) > FOLD_WIDTH:
                lines.append(line)
                line = "\t  " + piece
            else:
                line += " " + piece
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


# -- convenience constructors for our verifiers ------------------------------------------


def spf_result(result: str, *, mailfrom: str | None = None, helo: str | None = None,
               reason: str | None = None, comment: str | None = None) -> MethodResult:
    """``spf=`` with smtp.mailfrom (RFC 8601 §2.7.2) and/or smtp.helo."""
    properties = []
    if mailfrom is not None:
        properties.append(("smtp", "mailfrom", mailfrom))
    if helo is not None:
        properties.append(("smtp", "helo", helo))
    return MethodResult("spf", str(result), reason, tuple(properties), comment)


def dkim_result(result: DkimResult) -> MethodResult:
    """``dkim=`` for one verified signature: header.d, header.i, header.s, header.a and
    header.b (RFC 8601 §2.7.1, RFC 6008), with the reason unless it is a plain pass."""
    properties = []
    if result.domain:
        properties.append(("header", "d", result.domain))
        for tag, value in (("i", result.identity), ("s", result.selector),
                           ("a", result.algorithm), ("b", result.header_b)):
            if value:
                properties.append(("header", tag, value))
    plain_pass = (result.result == "pass" and result.covers_whole_body
                  and not result.testing)
    reason = None if plain_pass or not result.reason else result.reason
    return MethodResult("dkim", str(result.result), reason, tuple(properties))


def dmarc_result(result: DmarcResult) -> MethodResult:
    """``dmarc=`` with header.from (RFC 7489 §11.2) and a comment giving the domain's
    policy and our disposition, e.g. ``(p=reject dis=quarantine)``."""
    status = str(result.result)
    comment = None
    if status in ("pass", "fail"):
        comment = f"p={result.policy} dis={result.disposition}"
        if result.sampled_out:
            comment += " pct-sampled-out"
    reason = None if status == "pass" or not result.reason else result.reason
    properties = (("header", "from", result.from_domain),) if result.from_domain else ()
    return MethodResult("dmarc", status, reason, properties, comment)


def iprev_result(result: str, ip: str, *, reason: str | None = None,
                 comment: str | None = None) -> MethodResult:
    """``iprev=`` with policy.iprev, the client address (RFC 8601 §2.7.3, §3)."""
    return MethodResult("iprev", str(result), reason, (("policy", "iprev", ip),), comment)


def arc_result(result: str, *, remote_ip: str | None = None, oldest_pass: int | None = None,
               reason: str | None = None) -> MethodResult:
    """``arc=`` with smtp.remote-ip and header.oldest-pass (RFC 8617 §10.1)."""
    properties = []
    if remote_ip is not None:
        properties.append(("smtp", "remote-ip", remote_ip))
    if oldest_pass is not None:
        properties.append(("header", "oldest-pass", str(oldest_pass)))
    return MethodResult("arc", str(result), reason, tuple(properties))


# -- reading -----------------------------------------------------------------------------


class _SyntaxError(ValueError):
    pass


class _Scanner:
    """A cursor over an unfolded field value with RFC 5322 CFWS and RFC 2045 values."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def cfws(self) -> list[str]:
        """Skip white space and comments (nested, with quoted-pairs); their texts."""
        comments = []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in _WSP:
                self.pos += 1
            elif char == "(":
                comments.append(self._comment())
            else:
                break
        return comments

    def _comment(self) -> str:
        depth, out = 0, []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(text):
                out.append(text[self.pos])
                self.pos += 1
                continue
            if char == "(":
                depth += 1
                if depth == 1:
                    continue
            elif char == ")":
                depth -= 1
                if depth == 0:
                    return "".join(out)
            out.append(char)
        raise _SyntaxError("unterminated comment")

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _SyntaxError(f"expected {char!r} at {self.pos}")
        self.pos += 1

    def match(self, pattern: re.Pattern[str]) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise _SyntaxError(f"unexpected {self.peek()!r} at {self.pos}")
        self.pos = found.end()
        return found.group()

    def quoted_string(self) -> str:
        self.expect('"')
        out = []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(text):
                out.append(text[self.pos])
                self.pos += 1
            elif char == '"':
                return "".join(out)
            else:
                out.append(char)
        raise _SyntaxError("unterminated quoted-string")

    def value(self) -> str:
        """RFC 2045 value: token / quoted-string."""
        return self.quoted_string() if self.peek() == '"' else self.match(_TOKEN)

    def pvalue(self) -> str:
        """§2.2 pvalue: a value, or an addr-spec (the local-part possibly quoted)."""
        if self.peek() == '"':
            quoted = self.quoted_string()
            if self.peek() == "@":
                return quoted + self._bare()
            return quoted
        return self._bare()

    def _bare(self) -> str:
        start = self.pos
        text = self.text
        while self.pos < len(text) and text[self.pos] not in ' \t\r\n;()"':
            self.pos += 1
        if self.pos == start:
            raise _SyntaxError(f"missing value at {start}")
        return text[start:self.pos]


def unfold(value: str | bytes) -> str:
    """A field value with its line breaks removed (RFC 5322 §2.2.3); bytes are read as
    UTF-8 with invalid sequences replaced."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text.replace("\r\n", "").replace("\n", "").replace("\r", "")


def parse(value: str | bytes) -> AuthenticationResults | None:
    """Parse an Authentication-Results field value (after the colon; RFC 8601 §2.2).

    Returns None when the value does not follow the grammar; never raises. Comments
    are skipped, except the first one after a result (kept as ``comment``).
    """
    text = unfold(value)
    if len(text) > MAX_PARSE_CHARS:
        return None
    scanner = _Scanner(text)
    try:
        scanner.cfws()
        authserv_id = scanner.value()
        scanner.cfws()
        version = None
        if scanner.peek().isdigit():
            version = int(scanner.match(_DIGITS)[:9])
            scanner.cfws()
        results: list[MethodResult] = []
        first = True
        while not scanner.at_end():
            scanner.expect(";")
            scanner.cfws()
            method = scanner.match(_KEYWORD)
            scanner.cfws()
            if first and method.lower() == "none" and scanner.at_end():
                break  # §2.2 no-result
            first = False
            results.append(_resinfo(scanner, method))
            if len(results) > MAX_PARSED_RESULTS:
                return None
    except _SyntaxError:
        return None
    return AuthenticationResults(authserv_id, tuple(results), version)


def _resinfo(scanner: _Scanner, method: str) -> MethodResult:
    method_version = None
    if scanner.peek() == "/":
        scanner.pos += 1
        scanner.cfws()
        method_version = int(scanner.match(_DIGITS)[:9])
        scanner.cfws()
    scanner.expect("=")
    scanner.cfws()
    result = scanner.match(_KEYWORD)
    comments = scanner.cfws()
    reason = None
    properties: list[tuple[str, str, str]] = []
    while not scanner.at_end() and scanner.peek() != ";":
        word = scanner.match(_KEYWORD)
        scanner.cfws()
        if word.lower() == "reason" and scanner.peek() == "=" and not properties \
                and reason is None:
            scanner.pos += 1
            scanner.cfws()
            reason = scanner.value()
        else:
            scanner.expect(".")
            scanner.cfws()
            name = scanner.match(_KEYWORD)
            scanner.cfws()
            scanner.expect("=")
            scanner.cfws()
            properties.append((word, name, scanner.pvalue()))
        scanner.cfws()
    return MethodResult(method.lower(), result.lower(), reason, tuple(properties),
                        comments[0] if comments else None, method_version)


def authserv_id_of(value: str | bytes) -> str | None:
    """The authserv-id of a field value (quotes and comments removed), None if there is
    none to be found."""
    scanner = _Scanner(unfold(value)[:MAX_PARSE_CHARS])
    try:
        scanner.cfws()
        return scanner.value()
    except _SyntaxError:
        return None


# -- removing forged fields (§5) ---------------------------------------------------------


def _id_key(text: str) -> str:
    return text.strip().lower().rstrip(".")


def claims_authserv_id(value: str | bytes, authserv_id: str) -> bool:
    """True if a field value claims ``authserv_id`` (see the module text for the rule)."""
    ours = _id_key(authserv_id)
    if not ours:
        return False
    # Latin-1 maps every byte to one character: nothing is lost or merged on the way.
    text = unfold(value.decode("latin-1") if isinstance(value, bytes) else value)
    found = authserv_id_of(text)
    if found is not None and _id_key(found) == ours:
        return True
    # Our id as a whole word before the first ";": what a lenient reader could take for
    # the authserv-id (inside a comment, after junk, with odd quoting).
    head = text.split(";", 1)[0].lower()
    return _word_pattern(ours).search(head) is not None


@lru_cache(maxsize=16)
def _word_pattern(word: str) -> re.Pattern[str]:
    # Not preceded by a name character or dot, not followed by one (a final dot is fine):
    # "mx.example.com" must not match inside "mx.example.com.evil.example".
    return re.compile(r"(?<![a-z0-9.\-])" + re.escape(word)
                      + r"\.?(?![a-z0-9\-]|\.[a-z0-9])")


_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
_NAME = re.compile(rb"([^:\s]+)[ \t]*:")


def _fields(header_block: bytes) -> Iterable[tuple[bytes | None, bytes]]:
    """``(name, raw bytes)`` per field in order, continuation lines included; the blank
    line and anything after it, or a line that is no field, come with name None."""
    current: bytearray | None = None
    name: bytes | None = None
    for match in _LINE.finditer(header_block):
        line = match.group()
        if line[:1] in (b" ", b"\t") and current is not None:
            current.extend(line)
            continue
        if current is not None:
            yield name, bytes(current)
            current = None
        if line in (b"\r\n", b"\n"):
            yield None, header_block[match.start():]
            return
        found = _NAME.match(line)
        if found is None:
            yield None, line
            continue
        name, current = found.group(1), bytearray(line)
    if current is not None:
        yield name, bytes(current)


def strip_our_results(header_block: bytes, authserv_id: str) -> bytes:
    """``header_block`` without the Authentication-Results fields that claim
    ``authserv_id`` (RFC 8601 §5); everything else is kept byte for byte.

    Field names match case-insensitively, folded fields are handled, and white space
    before the colon (RFC 5322 §4.5 obsolete syntax) is accepted. ARC-Authentication-
    Results fields are left alone: they are sealed by their ARC signer (RFC 8617).
    """
    wanted = FIELD_NAME.lower().encode("ascii")
    out = []
    for name, raw in _fields(header_block):
        if name is not None and name.lower() == wanted:
            value = raw.split(b":", 1)[1]
            if claims_authserv_id(value, authserv_id):
                continue
        out.append(raw)
    return b"".join(out)


__all__ = [
    "FIELD_NAME", "METHOD_RESULTS", "AuthenticationResults", "MethodResult", "arc_result",
    "authserv_id_of", "build_header", "claims_authserv_id", "dkim_result", "dmarc_result",
    "iprev_result", "parse", "quote_value", "spf_result", "strip_our_results", "unfold",
]
