"""Address lists of From, To, Cc and friends (RFC 5322 §3.4), as IMAP ENVELOPE needs them.

Handles mailboxes with and without display names, groups (``team: a@x, b@y;``), comments
(``user@example.com (Real Name)``), quoted strings, domain literals and the obsolete forms of
RFC 5322 §4.4 (source routes ``<@relay:user@host>``, CFWS around dots, empty list elements).
Raw UTF-8 (RFC 6532) is accepted in every word. Values stay bytes: display names keep their
RFC 2047 encoded-words, because IMAP sends them that way (RFC 9051 §7.5.2); use
:func:`mailkeep.mime.header.decode_header_value` to display them.

The parser is tolerant and never raises: a missing ">" or ";" is assumed, a missing comma
between two addresses is recovered, junk characters are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Most addresses (group members included) kept from one header value.
MAX_ADDRESSES = 5000
#: Most tokens read from one header value, so a huge value cannot use unbounded memory.
MAX_TOKENS = 100_000
#: Longest header value parsed as an address list; the rest is ignored.
MAX_LIST_BYTES = 256 * 1024

# Token kinds.
_ATOM = 0  # atext run (dot-atom pieces), 8-bit bytes included (RFC 6532)
_QUOTED = 1  # quoted-string, content unescaped
_LITERAL = 2  # domain-literal, brackets kept
_COMMENT = 3  # comment, content unescaped
_SPECIAL = 4  # one of ( ) < > @ , ; : . [ ] \ and stray bytes

_TOKENS = re.compile(
    rb"""
      (?P<ws>[ \t\r\n]+)
    | "(?P<q>(?:[^"\\]++|\\.)*+)"?
    | (?P<lit>\[(?:[^\]\\]++|\\.)*+\]?)
    | (?P<atom>[^\s"(),.:;<>@\[\]\\]++)
    | (?P<special>.)
    """,
    re.X | re.S,
)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)

# Fast path for the lists almost every message has: "Name <local@domain>", "local@domain",
# '"Quoted Name" <local@domain>', comma-separated. Anything else goes to the full parser.
# The result is the same as the full parser's; only the common case is cheaper.
_ATEXT = rb"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff"
# Possessive quantifiers throughout: no backtracking, so hostile input costs linear time.
_DOT_ATOM = rb"[" + _ATEXT + rb"]++(?:\.[" + _ATEXT + rb"]++)*+"
_SIMPLE_MAILBOX = re.compile(
    rb"[ \t\r\n]*+(?:"
    rb"(?:\"(?P<quoted>[^\"\\\r\n]*+)\"[ \t\r\n]*+|(?P<name>[" + _ATEXT + rb". \t\r\n]*+))"
    rb"<(?P<local1>" + _DOT_ATOM + rb")@(?P<domain1>" + _DOT_ATOM + rb")>"
    rb"|(?P<local2>" + _DOT_ATOM + rb")@(?P<domain2>" + _DOT_ATOM + rb"))"
    rb"[ \t\r\n]*+(?:,[ \t\r\n]*+|\Z)"
)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One mailbox (RFC 5322 §3.4): raw bytes, quotes and escapes removed."""

    name: bytes | None
    route: bytes | None
    local_part: bytes | None
    domain: bytes | None

    @property
    def addr_spec(self) -> bytes:
        """``local@domain`` as far as it is known."""
        local = self.local_part or b""
        return local + b"@" + self.domain if self.domain is not None else local


@dataclass(frozen=True, slots=True)
class Group:
    """A named group of mailboxes (RFC 5322 §3.4), possibly empty (``undisclosed:;``)."""

    name: bytes
    members: tuple[Mailbox, ...]


@dataclass(slots=True)
class _Token:
    kind: int
    value: bytes
    space_before: bool


def _tokenize(raw: bytes, limit: int = MAX_TOKENS) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    n = len(raw)
    space = False
    while pos < n and len(tokens) < limit:
        if raw[pos] == 0x28:  # "(": comments nest (RFC 5322 §3.2.2)
            depth = 0
            start = pos + 1
            while pos < n:
                c = raw[pos]
                if c == 0x5C:
                    pos += 2
                    continue
                if c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                    if depth == 0:
                        break
                pos += 1
            body = raw[start : min(pos, n)]
            pos += 1
            tokens.append(_Token(_COMMENT, _QUOTED_PAIR.sub(rb"\1", body), space))
            space = True  # a comment separates words like white space does
            continue
        match = _TOKENS.match(raw, pos)
        assert match is not None  # the last alternative matches any byte
        pos = match.end()
        kind = match.lastgroup
        if kind == "ws":
            space = True
            continue
        if kind == "q":
            tokens.append(_Token(_QUOTED, _QUOTED_PAIR.sub(rb"\1", match.group("q")), space))
        elif kind == "lit":
            tokens.append(_Token(_LITERAL, match.group(0), space))
        elif kind == "atom":
            tokens.append(_Token(_ATOM, match.group(0), space))
        else:
            tokens.append(_Token(_SPECIAL, match.group(0), space))
        space = False
    return tokens


def _phrase(tokens: list[_Token]) -> bytes | None:
    """A display name: words joined as they were spaced, comments left out (RFC 5322 §3.2.5)."""
    out = bytearray()
    for token in tokens:
        if token.kind == _COMMENT:
            continue
        if out and token.space_before:
            out += b" "
        out += token.value
    return bytes(out) if out else None


def _word_run(tokens: list[_Token]) -> tuple[list[_Token], list[_Token]]:
    """Split words before "@" into (display-ish words, local-part words).

    The local part is the last run of words joined by dots (RFC 5322 §3.4.1, obs-local-part
    §4.4); words before it, which are invalid there, are kept as a display name.
    """
    end = len(tokens)
    start = end
    expect_word = True
    while start > 0:
        token = tokens[start - 1]
        if token.kind == _COMMENT:
            start -= 1
            continue
        if expect_word and token.kind in (_ATOM, _QUOTED):
            start -= 1
            expect_word = False
            continue
        if not expect_word and token.kind == _SPECIAL and token.value == b".":
            start -= 1
            expect_word = True
            continue
        break
    # Comments before the first word belong to what precedes the local part.
    while start < end and tokens[start].kind == _COMMENT:
        start += 1
    return tokens[:start], tokens[start:]


def _joined(tokens: list[_Token]) -> bytes | None:
    out = b"".join(t.value for t in tokens if t.kind != _COMMENT)
    return out or None


def _first_comment(tokens: list[_Token]) -> bytes | None:
    for token in tokens:
        if token.kind == _COMMENT:
            text = b" ".join(token.value.split())
            if text:
                return text
    return None


class _Parser:
    def __init__(self, tokens: list[_Token], limit: int) -> None:
        self.tokens = tokens
        self.pos = 0
        self.limit = limit
        self.count = 0
        self.truncated = False

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def at_special(self, chars: bytes) -> bool:
        token = self.peek()
        return token is not None and token.kind == _SPECIAL and token.value in chars

    def parse(self) -> list[Mailbox | Group]:
        result: list[Mailbox | Group] = []
        group_name: bytes | None = None
        members: list[Mailbox] = []
        while self.pos < len(self.tokens):
            if self.count >= self.limit:
                self.truncated = True
                break
            token = self.tokens[self.pos]
            if token.kind == _SPECIAL and token.value in b",>":
                self.pos += 1  # empty list element (obs-addr-list, RFC 5322 §4.4)
                continue
            if token.kind == _SPECIAL and token.value == b";":
                self.pos += 1
                if group_name is not None:
                    result.append(Group(group_name, tuple(members)))
                    group_name, members = None, []
                continue
            before = self.pos
            item = self.mailbox_or_group_start(in_group=group_name is not None)
            if self.pos == before:
                self.pos += 1  # cannot happen with the grammar above; never loop forever
            if isinstance(item, bytes):
                group_name, members = item, []
                self.count += 1
            elif item is not None:
                self.count += 1
                if group_name is not None:
                    members.append(item)
                else:
                    result.append(item)
        if group_name is not None:
            result.append(Group(group_name, tuple(members)))  # ";" missing at the end
        return result

    def mailbox_or_group_start(self, in_group: bool) -> Mailbox | bytes | None:
        """Parse one mailbox, or a group's "name:" (returned as the name bytes)."""
        words: list[_Token] = []
        start = self.pos
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            if token.kind != _SPECIAL:
                words.append(token)
                self.pos += 1
                continue
            value = token.value
            if value == b"<":
                self.pos += 1
                return self.angle_addr(_phrase(words))
            if value == b"@":
                self.pos += 1
                return self.addr_spec(words)
            if value == b":" and not in_group:
                self.pos += 1
                return _phrase(words) or b""
            if value in b",;":
                break
            if value == b".":
                words.append(token)
            self.pos += 1  # ">", "[", "\\", stray ":" in a group: junk, skipped
        if self.pos == start:
            return None
        # No "@" and no "<": a bare word list, such as a local user name.
        names, local = _word_run(words)
        if not local:
            return None
        return Mailbox(_phrase(names) or _first_comment(words), None, _joined(local), None)

    def addr_spec(self, before_at: list[_Token]) -> Mailbox:
        names, local = _word_run(before_at)
        domain, comments = self.domain()
        name = _phrase(names) or _first_comment(before_at) or _first_comment(comments)
        return Mailbox(name, None, _joined(local), domain)

    def domain(self) -> tuple[bytes | None, list[_Token]]:
        """A dot-atom or domain-literal (RFC 5322 §3.4.1), with CFWS around dots tolerated.

        Stops at a word that follows another word without a dot: that is the next address
        of a list whose comma is missing.
        """
        pieces: list[bytes] = []
        comments: list[_Token] = []
        expect_word = True
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            if token.kind == _COMMENT:
                comments.append(token)
            elif token.kind in (_ATOM, _LITERAL, _QUOTED):
                if not expect_word:
                    break
                pieces.append(token.value)
                expect_word = False
            elif token.value == b".":
                pieces.append(b".")
                expect_word = True
            else:
                break
            self.pos += 1
        return (b"".join(pieces) or None), comments

    def angle_addr(self, name: bytes | None) -> Mailbox:
        """The part after "<": optional obs-route, addr-spec, ">" (RFC 5322 §3.4, §4.4)."""
        route: bytes | None = None
        if self.at_special(b"@"):
            # obs-route = obs-domain-list ":" ; kept as "@a,@b" for ENVELOPE's addr-adl.
            route_start = self.pos
            pieces: list[bytes] = []
            while self.pos < len(self.tokens):
                token = self.tokens[self.pos]
                if token.kind == _SPECIAL and token.value in b":>;":
                    break
                if token.kind != _COMMENT:
                    pieces.append(token.value)
                self.pos += 1
            if self.at_special(b":"):
                self.pos += 1
                route = b"".join(pieces) or None
            else:
                # "<@host>" without a colon: not a route, just a broken address.
                self.pos = route_start
        words: list[_Token] = []
        local: bytes | None = None
        domain: bytes | None = None
        while self.pos < len(self.tokens):
            token = self.tokens[self.pos]
            if token.kind == _SPECIAL and token.value == b"@":
                self.pos += 1
                domain, _ = self.domain()
                continue
            if token.kind == _SPECIAL and token.value in b">,;":
                break
            if token.kind == _SPECIAL and token.value != b".":
                self.pos += 1
                continue
            if domain is None:
                words.append(token)
            self.pos += 1
        _, local_words = _word_run(words)
        local = _joined(local_words)
        if self.at_special(b">"):
            self.pos += 1
        # CFWS after the angle-addr; a comment there is not a name (one is given or not).
        while self.pos < len(self.tokens) and self.tokens[self.pos].kind == _COMMENT:
            self.pos += 1
        return Mailbox(name, route, local, domain)


def _parse_simple(raw: bytes, limit: int) -> list[Mailbox | Group] | None:
    out: list[Mailbox | Group] = []
    pos = 0
    end = len(raw)
    while pos < end:
        if len(out) >= limit:
            return None
        match = _SIMPLE_MAILBOX.match(raw, pos)
        if match is None:
            return None
        local = match.group("local1")
        if local is None:
            out.append(Mailbox(None, None, match.group("local2"), match.group("domain2")))
        else:
            name = match.group("quoted")
            if name is None:
                name = b" ".join(match.group("name").split())
            out.append(Mailbox(name or None, None, local, match.group("domain1")))
        pos = match.end()
    return out


def parse_address_list_limited(
    raw: bytes, max_addresses: int = MAX_ADDRESSES
) -> tuple[list[Mailbox | Group], bool]:
    """Like :func:`parse_address_list`, also telling whether the list was cut at a limit."""
    cut = len(raw) > MAX_LIST_BYTES
    if cut:
        raw = raw[:MAX_LIST_BYTES]
    else:
        simple = _parse_simple(raw, max_addresses)
        if simple is not None:
            return simple, False
    tokens = _tokenize(raw)
    parser = _Parser(tokens, max_addresses)
    result = parser.parse()
    return result, cut or parser.truncated or len(tokens) >= MAX_TOKENS


def parse_address_list(raw: bytes) -> list[Mailbox | Group]:
    """Parse an address list (RFC 5322 §3.4) such as the value of To; never raises.

    Returns mailboxes and groups in order. At most :data:`MAX_ADDRESSES` entries are kept,
    from at most :data:`MAX_LIST_BYTES` of the value.
    Display names keep their encoded-words; a comment after a bare addr-spec serves as the
    name (``user@example.com (Real Name)``), as IMAP servers traditionally do.
    """
    return parse_address_list_limited(raw)[0]
