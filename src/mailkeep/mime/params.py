"""Structured MIME header values: Content-Type, Content-Disposition and their parameters.

Implements RFC 2045 §5.1 (``type "/" subtype *(";" parameter)``, tokens and quoted strings,
with RFC 822 comments allowed between tokens), RFC 2183 §2 (Content-Disposition), RFC 2231
(parameter value continuations ``name*0``, ``name*1``, and charset/language-tagged values
``name*=utf-8'en'%E2%82%AC``), RFC 2045 §6.1 (Content-Transfer-Encoding) and RFC 3282
(Content-Language).

Parsing is tolerant, as mail demands: a parameter without the ";" before it, an unquoted value
containing spaces, an unterminated quoted string or comment are all accepted. Nothing here
raises on any input. Plain parameter values are decoded from bytes as UTF-8 with
``surrogateescape`` so that no byte is lost and IMAP can send them back exactly as received;
RFC 2231 values are decoded from their declared charset.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from mailkeep.mime.charset import decode_charset

#: Most parameters read from one header value; the rest are ignored. RFC 2231 continuations
#: count one each, so a long file name split in 40 sections still fits comfortably.
MAX_PARAMETERS = 256
#: Highest RFC 2231 continuation section number accepted.
MAX_SECTION = 999
#: Longest structured MIME field value parsed; real ones are far shorter, even with RFC 2231
#: file names. The rest of a longer value is ignored (and noted as a defect).
MAX_VALUE_BYTES = 64 * 1024
#: Most Content-Language tags kept.
MAX_LANGUAGES = 64
#: After this many problems in one value, the parser stops reading it.
MAX_DEFECTS = 16

# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>.
_TOKEN = re.compile(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# Parameter names are tokens; we also let through 8-bit bytes rather than lose the parameter.
_NAME = re.compile(rb"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f]+")
# An unquoted value, tolerantly: up to ";", stopping before a comment or a quote.
_LOOSE_VALUE = re.compile(rb"[^;\"(\s]+(?:[ \t]+[^;\"(\s]+)*")
_QUOTED = re.compile(rb'"((?:[^"\\]++|\\.)*+)("?)', re.S)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)
_SPACE = re.compile(rb"[ \t\r\n]*")
_CFWS_START = frozenset(b" \t\r\n(")

IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})

# Fast path for the plain form nearly every part uses: "type/subtype; name=value; ..." with
# tokens or simple quoted strings, no comments, no RFC 2231. The full parser gives the same
# result for these; it is only slower.
_T = rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]++"
_SIMPLE_VALUE = rb"(?:" + _T + rb'|"[^"\\\r\n]*+")'
# Possessive quantifiers: no backtracking, so hostile input costs linear time.
_SIMPLE_PARAMETERS = rb"((?:;[ \t]*+" + _T + rb"=" + _SIMPLE_VALUE + rb"[ \t]*+)*+);?[ \t]*+\Z"
_SIMPLE_TYPE = re.compile(rb"[ \t]*+(" + _T + rb")/(" + _T + rb")[ \t]*+" + _SIMPLE_PARAMETERS)
_SIMPLE_DISPOSITION = re.compile(rb"[ \t]*+(" + _T + rb")[ \t]*+" + _SIMPLE_PARAMETERS)
_SIMPLE_PARAMETER = re.compile(rb";[ \t]*(" + _T + rb')=(?:(' + _T + rb')|"([^"]*)")')


def _simple_parameters(text: bytes) -> dict[str, str] | None:
    """Parameters matched by the fast-path patterns, unless RFC 2231 or too many."""
    if b"*" in text or text.count(b";") > MAX_PARAMETERS:
        return None
    params: dict[str, str] = {}
    for name, token, quoted in _SIMPLE_PARAMETER.findall(text):
        key = name.decode("ascii").lower()
        if key not in params:
            params[key] = (token or quoted).decode("utf-8", "surrogateescape")
    return params


def _skip_cfws(value: bytes, pos: int) -> int:
    """Skip white space and (nested) comments (RFC 5322 §3.2.2) from ``pos``."""
    n = len(value)
    if pos >= n or value[pos] not in _CFWS_START:
        return pos
    while True:
        pos = _SPACE.match(value, pos).end()
        if pos >= n or value[pos] != 0x28:  # "("
            return pos
        depth = 0
        while pos < n:
            c = value[pos]
            if c == 0x5C:  # quoted-pair inside a comment
                pos += 2
                continue
            if c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    pos += 1
                    break
            pos += 1
        else:
            return n


def _read_parameters(value: bytes, pos: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Read ``*(";" attribute "=" value)`` from ``pos``: raw (lower-case name, value) pairs."""
    params: list[tuple[str, bytes]] = []
    defects: list[str] = []
    n = len(value)
    while len(defects) < MAX_DEFECTS:
        pos = _skip_cfws(value, pos)
        if pos >= n:
            break
        if value[pos] == 0x3B:  # ";"
            pos = _skip_cfws(value, pos + 1)
            if pos >= n:
                break
        else:
            defects.append("parameter without ';' before it")
        name_match = _NAME.match(value, pos)
        if name_match is None:
            # Garbage: skip to the next ";" and try again.
            defects.append("unparsable parameter skipped")
            semicolon = value.find(b";", pos + 1)
            if semicolon < 0:
                break
            pos = semicolon
            continue
        name = name_match.group(0).decode("utf-8", "surrogateescape").lower()
        pos = _skip_cfws(value, name_match.end())
        if pos >= n or value[pos] != 0x3D:  # "="
            defects.append(f"parameter {name!r} without a value")
            semicolon = value.find(b";", pos)
            if semicolon < 0:
                break
            pos = semicolon
            continue
        pos = _skip_cfws(value, pos + 1)
        if pos < n and value[pos] == 0x22:  # quoted-string
            quoted = _QUOTED.match(value, pos)
            assert quoted is not None  # the pattern always matches at a quote
            raw = _QUOTED_PAIR.sub(rb"\1", quoted.group(1))
            if not quoted.group(2):
                defects.append(f"unterminated quoted value of {name!r}")
            pos = quoted.end()
        else:
            loose = _LOOSE_VALUE.match(value, pos)
            raw = loose.group(0) if loose else b""
            pos = loose.end() if loose else pos
        if len(params) >= MAX_PARAMETERS:
            defects.append(f"more than {MAX_PARAMETERS} parameters; the rest are ignored")
            break
        params.append((name, raw))
    return params, defects


def _combine_rfc2231(raw: list[tuple[str, bytes]]) -> tuple[dict[str, str], list[str]]:
    """Merge RFC 2231 continuations and decode extended values (RFC 2231 §3, §4)."""
    plain: dict[str, str] = {}
    # base name -> section -> (value bytes, extended?)
    sections: dict[str, dict[int, tuple[bytes, bool]]] = {}
    order: list[str] = []
    defects: list[str] = []
    for name, value in raw:
        extended = name.endswith("*")
        stem = name[:-1] if extended else name
        base, star, number = stem.rpartition("*")
        if star and number.isdigit() and number.isascii() and base:
            section = int(number)
            if section > MAX_SECTION or (len(number) > 1 and number[0] == "0"):
                defects.append(f"bad continuation section in {name!r}")
                continue
        elif extended:
            base, section = stem, -1  # a single, unsplit extended value
        else:
            if name not in plain:
                plain[name] = value.decode("utf-8", "surrogateescape")
                if name not in order:
                    order.append(name)
            continue
        parts = sections.setdefault(base, {})
        if section not in parts:
            parts[section] = (value, extended)
        if base not in order:
            order.append(base)

    result: dict[str, str] = {}
    for base in order:
        parts = sections.get(base)
        if not parts:
            result[base] = plain[base]
            continue
        if -1 in parts:
            pieces = [(-1, *parts[-1])]
        else:
            pieces = []
            expected = 0
            while expected in parts:
                pieces.append((expected, *parts[expected]))
                expected += 1
            if len(pieces) != len(parts):
                defects.append(f"gap in RFC 2231 continuations of {base!r}")
        if not pieces:
            if base in plain:
                result[base] = plain[base]
            continue
        charset: str | None = None
        buffer = bytearray()
        for index, (_, value, extended) in enumerate(pieces):
            if extended:
                if index == 0:
                    # RFC 2231 §4: charset'language'percent-encoded-value
                    head, quote1, rest = value.partition(b"'")
                    _, quote2, encoded = rest.partition(b"'")
                    if quote1 and quote2:
                        charset = head.decode("latin-1") or None
                        value = encoded
                    else:
                        defects.append(f"RFC 2231 value of {base!r} without charset")
                buffer += unquote_to_bytes(value)
            else:
                buffer += value
        if charset is None and not pieces[0][2]:
            # Plain continuations (RFC 2231 §3) carry raw bytes, like a plain value.
            result[base] = bytes(buffer).decode("utf-8", "surrogateescape")
        else:
            result[base] = decode_charset(bytes(buffer), charset or "us-ascii")
    return result, defects


def _bounded(value: bytes) -> tuple[bytes, list[str]]:
    if len(value) <= MAX_VALUE_BYTES:
        return value, []
    return value[:MAX_VALUE_BYTES], [f"value longer than {MAX_VALUE_BYTES} bytes; the rest ignored"]


def parse_content_type(value: bytes) -> tuple[str | None, dict[str, str], list[str]]:
    """Parse a Content-Type value (RFC 2045 §5.1).

    Returns ``("type/subtype", params, defects)`` with the media type lower-cased, or
    ``(None, {}, defects)`` when the type is unusable, in which case RFC 2045 §5.2 says to
    treat the part as text/plain; charset=us-ascii.
    """
    simple = _SIMPLE_TYPE.match(value) if len(value) <= MAX_VALUE_BYTES else None
    if simple is not None:
        params = _simple_parameters(simple.group(3))
        if params is not None:
            media_type = (simple.group(1) + b"/" + simple.group(2)).decode("ascii").lower()
            return media_type, params, []
    value, defects = _bounded(value)
    pos = _skip_cfws(value, 0)
    main = _TOKEN.match(value, pos)
    if main is None:
        return None, {}, [*defects, "Content-Type without a media type"]
    pos = _skip_cfws(value, main.end())
    if pos >= len(value) or value[pos] != 0x2F:  # "/"
        return None, {}, [*defects, "Content-Type without a subtype"]
    pos = _skip_cfws(value, pos + 1)
    sub = _TOKEN.match(value, pos)
    if sub is None:
        return None, {}, [*defects, "Content-Type without a subtype"]
    media_type = (main.group(0) + b"/" + sub.group(0)).decode("ascii").lower()
    raw, more = _read_parameters(value, sub.end())
    combined, even_more = _combine_rfc2231(raw)
    return media_type, combined, defects + more + even_more


def parse_disposition(value: bytes) -> tuple[str | None, dict[str, str], list[str]]:
    """Parse a Content-Disposition value (RFC 2183 §2): lower-cased type and parameters."""
    simple = _SIMPLE_DISPOSITION.match(value) if len(value) <= MAX_VALUE_BYTES else None
    if simple is not None:
        params = _simple_parameters(simple.group(2))
        if params is not None:
            return simple.group(1).decode("ascii").lower(), params, []
    value, defects = _bounded(value)
    pos = _skip_cfws(value, 0)
    kind = _TOKEN.match(value, pos)
    if kind is None:
        return None, {}, [*defects, "Content-Disposition without a type"]
    raw, more = _read_parameters(value, kind.end())
    combined, even_more = _combine_rfc2231(raw)
    return kind.group(0).decode("ascii").lower(), combined, defects + more + even_more


def parse_transfer_encoding(value: bytes) -> str | None:
    """The lower-cased Content-Transfer-Encoding token (RFC 2045 §6.1), or None if invalid."""
    if len(value) > MAX_VALUE_BYTES:
        return None
    pos = _skip_cfws(value, 0)
    token = _TOKEN.match(value, pos)
    if token is None:
        return None
    if _skip_cfws(value, token.end()) != len(value):
        return None
    return token.group(0).decode("ascii").lower()


def parse_language(value: bytes) -> list[str] | None:
    """Language tags of a Content-Language value (RFC 3282 §2), or None if there are none.

    At most :data:`MAX_LANGUAGES` tags are kept; comments are skipped.
    """
    value, _ = _bounded(value)
    tags: list[str] = []
    pos = 0
    n = len(value)
    while pos < n and len(tags) < MAX_LANGUAGES:
        comment = value.find(b"(", pos)
        stop = n if comment < 0 else comment
        for token in _TOKEN.finditer(value, pos, stop):
            tags.append(token.group(0).decode("ascii"))
            if len(tags) >= MAX_LANGUAGES:
                break
        pos = stop if comment < 0 else _skip_cfws(value, comment)
    return tags or None
