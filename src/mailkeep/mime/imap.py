"""IMAP views of a MIME index: ENVELOPE, BODY, BODYSTRUCTURE and section byte ranges.

Produces the FETCH data items of RFC 9051 §7.5.2 (also RFC 3501 §7.4.2, same syntax) from a
:class:`~mailkeep.mime.structure.Part` tree, and resolves section specifications of
RFC 9051 §6.4.5 to byte ranges of the stored message. The output follows what Dovecot sends
for the same message (lower-case media types, ``"charset" "us-ascii"`` added to text parts
without one, a 0-byte text/plain standing in for a multipart that has no parts), so clients
that work with Dovecot work with us.

Strings are sent quoted when they can be, as literals otherwise (CR, LF or 8-bit bytes;
RFC 9051 §4.3). With ``utf8=True`` (the client enabled UTF8=ACCEPT, RFC 9051 §6.3.1 /
RFC 6855) valid UTF-8 is sent quoted too. NUL bytes, which no IMAP string may hold, are
dropped. Nothing here recurses, so a deep tree cannot exhaust the stack.
"""

from __future__ import annotations

import re

from mailkeep.mime.envelope import Envelope, EnvelopeAddress
from mailkeep.mime.structure import MESSAGE_TYPES, Part

NIL = b"NIL"

# RFC 9051 §9: QUOTED-CHAR is any TEXT-CHAR (CHAR except CR and LF) but quoted-specials,
# which are escaped. NUL is excluded from CHAR in practice (RFC 9051 §4.3: no NUL in strings).
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
# RFC 2231 §7: attribute-char, the bytes an extended value may carry unencoded.
_ATTRIBUTE_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
# What Dovecot sends for a multipart without parts: BODYSTRUCTURE needs at least one body.
_EMPTY_TEXT = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'


def _to_bytes(value: str) -> bytes:
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a byte
        return value.encode("utf-8", "replace")


def imap_string(value: bytes, *, utf8: bool = False) -> bytes:
    """``value`` as an IMAP string: quoted if possible, else a literal (RFC 9051 §4.3)."""
    if b"\x00" in value:
        value = value.replace(b"\x00", b"")
    quotable = _QUOTABLE.fullmatch(value) is not None
    if not quotable and utf8 and b"\r" not in value and b"\n" not in value:
        try:
            value.decode("utf-8")
            quotable = True
        except UnicodeDecodeError:
            pass
    if quotable:
        if b"\\" in value or b'"' in value:
            value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + value + b'"'
    return b"{%d}\r\n" % len(value) + value


def imap_nstring(value: bytes | str | None, *, utf8: bool = False) -> bytes:
    """An IMAP nstring: NIL for None, else :func:`imap_string`."""
    if value is None:
        return NIL
    if isinstance(value, str):
        value = _to_bytes(value)
    return imap_string(value, utf8=utf8)


def _one_line(value: bytes | None, utf8: bool) -> bytes:
    # ENVELOPE values are unfolded; a stray CR or LF would force a literal for nothing.
    if value is None:
        return NIL
    if b"\r" in value or b"\n" in value:
        value = value.replace(b"\r", b"").replace(b"\n", b"")
    return imap_string(value, utf8=utf8)


def _address_list(addresses: list[EnvelopeAddress], utf8: bool) -> bytes:
    if not addresses:
        return NIL
    out = bytearray(b"(")
    for a in addresses:
        out += b"(%s %s %s %s)" % (
            _one_line(a.name, utf8), _one_line(a.adl, utf8),
            _one_line(a.mailbox, utf8), _one_line(a.host, utf8),
        )
    out += b")"
    return bytes(out)


def imap_envelope(env: Envelope, *, utf8: bool = False) -> bytes:
    """The ENVELOPE data item (RFC 9051 §7.5.2), parentheses included.

    Sender and Reply-To default to From when empty (RFC 9051 §7.5.2).
    """
    return b"(%s)" % b" ".join((
        _one_line(env.date, utf8),
        _one_line(env.subject, utf8),
        _address_list(env.from_, utf8),
        _address_list(env.sender or env.from_, utf8),
        _address_list(env.reply_to or env.from_, utf8),
        _address_list(env.to, utf8),
        _address_list(env.cc, utf8),
        _address_list(env.bcc, utf8),
        _one_line(env.in_reply_to, utf8),
        _one_line(env.message_id, utf8),
    ))


def _rfc2231_value(value: str) -> bytes:
    raw = _to_bytes(value)
    return b"utf-8''" + b"".join(
        bytes((c,)) if c in _ATTRIBUTE_CHARS else b"%%%02X" % c for c in raw
    )


def _parameters(params: dict[str, str], default_charset: bool, utf8: bool) -> bytes:
    """body-fld-param: ("name" "value" ...) or NIL (RFC 9051 §9)."""
    items: list[bytes] = []
    seen_charset = False
    for name, value in params.items():
        if name == "charset":
            seen_charset = True
        encoded = _to_bytes(value)
        if not utf8 and not encoded.isascii():
            # 8-bit text outside UTF8=ACCEPT: send it the 7-bit way MIME defines for
            # parameters (RFC 2231 §4), which clients decode as they do for Dovecot.
            items.append(imap_string(_to_bytes(name + "*")))
            items.append(imap_string(_rfc2231_value(value)))
        else:
            items.append(imap_string(_to_bytes(name), utf8=utf8))
            items.append(imap_string(encoded, utf8=utf8))
    if default_charset and not seen_charset:
        # RFC 2046 §4.1.2: text without a charset parameter is us-ascii.
        items.append(b'"charset" "us-ascii"')
    if not items:
        return NIL
    return b"(" + b" ".join(items) + b")"


def _extension(part: Part, utf8: bool) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc (RFC 9051 §9)."""
    if part.disposition is None:
        disposition = NIL
    else:
        disposition = b"(%s %s)" % (
            imap_string(_to_bytes(part.disposition), utf8=utf8),
            _parameters(part.disposition_params, False, utf8),
        )
    if part.language:
        language = b"(" + b" ".join(imap_nstring(tag, utf8=utf8) for tag in part.language) + b")"
    else:
        language = NIL
    return b"%s %s %s" % (disposition, language, imap_nstring(part.location, utf8=utf8))


def _media(content_type: str, utf8: bool) -> tuple[bytes, bytes, bytes]:
    main, _, sub = content_type.partition("/")
    main_quoted = imap_string(_to_bytes(main), utf8=utf8)
    sub_quoted = imap_string(_to_bytes(sub), utf8=utf8)
    return main.lower().encode("ascii", "replace"), main_quoted, sub_quoted


def _body_fields(part: Part, text: bool, utf8: bool) -> bytes:
    """body-fields: params, id, description, encoding, octets (RFC 9051 §9)."""
    return b"%s %s %s %s %d" % (
        _parameters(part.params, text, utf8),
        imap_nstring(part.content_id, utf8=utf8),
        imap_nstring(part.description, utf8=utf8),
        imap_string(_to_bytes(part.encoding_raw or part.encoding or "7bit"), utf8=utf8),
        part.size,
    )


def _expand(part: Part, extended: bool, utf8: bool) -> list[Part | bytes]:
    """One level of a body structure: bytes, with sub-bodies left as Parts to expand."""
    content_type = part.content_type
    if content_type.startswith("multipart/"):
        _, _, sub = _media(content_type, utf8)
        tail = b" " + sub
        if extended:
            tail += b" %s %s" % (_parameters(part.params, False, utf8), _extension(part, utf8))
        tail += b")"
        if not part.children:
            empty = _EMPTY_TEXT + (b" NIL NIL NIL NIL)" if extended else b")")
            return [b"(" + empty + tail]
        return [b"(", *part.children, tail]

    ext = b""
    if extended:
        ext = b" %s %s" % (imap_nstring(part.md5, utf8=utf8), _extension(part, utf8))
    if content_type in MESSAGE_TYPES and part.message is not None:
        _, main_quoted, sub_quoted = _media(content_type, utf8)
        inner = part.message
        head = b"(%s %s %s %s " % (
            main_quoted, sub_quoted, _body_fields(part, False, utf8),
            imap_envelope(inner.envelope or Envelope(), utf8=utf8),
        )
        return [head, inner, b" %d%s)" % (part.lines, ext)]
    if content_type in MESSAGE_TYPES or "/" not in content_type:
        # An encapsulated message we did not parse cannot be described as one: RFC 9051
        # requires its envelope and body. A type without subtype is not a type.
        content_type = "application/octet-stream"
    main, main_quoted, sub_quoted = _media(content_type, utf8)
    text = main == b"text"
    out = b"(%s %s %s" % (main_quoted, sub_quoted, _body_fields(part, text, utf8))
    if text:
        out += b" %d" % part.lines
    return [out + ext + b")"]


def imap_bodystructure(part: Part, extended: bool = True, *, utf8: bool = False) -> bytes:
    """The BODYSTRUCTURE (``extended=True``) or BODY data item of RFC 9051 §7.5.2.

    ``part`` is normally the root from ``index_message``; the result includes the outer
    parentheses. Extension data (MD5, disposition, language, location; for multiparts the
    parameters first) is included only for BODYSTRUCTURE.
    """
    out = bytearray()
    work: list[Part | bytes] = [part]
    while work:
        item = work.pop()
        if isinstance(item, bytes):
            out += item
        else:
            work.extend(reversed(_expand(item, extended, utf8)))
    return bytes(out)


# Section text of RFC 9051 §6.4.5 after the part numbers.
_SECTION_WORDS = frozenset({"", "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"})
_PART_NUMBER = re.compile(r"[1-9][0-9]{0,8}")


def _parts_of_message(root: Part) -> list[Part]:
    # RFC 9051 §6.4.5: a message that is not multipart has only a part 1, its body.
    return root.children if root.content_type.startswith("multipart/") else [root]


def _subparts(part: Part) -> list[Part]:
    if part.message is not None:
        return _parts_of_message(part.message)
    if part.content_type.startswith("multipart/"):
        return part.children
    return []


def find_section(root: Part, section: str) -> tuple[int, int] | None:
    """The byte range ``(start, end)`` of an IMAP section spec (RFC 9051 §6.4.5), or None.

    ``section`` is what is between the brackets of BODY[...]: "" (the whole message),
    "HEADER", "TEXT", "1", "1.2", "1.2.MIME", "3.HEADER", "3.TEXT", and "HEADER.FIELDS" /
    "HEADER.FIELDS.NOT" with or without the field list, for which the range of the header
    block is returned and the caller picks the fields (see ``header_fields``). HEADER and TEXT
    after part numbers need a message/rfc822 or message/global part and refer to the
    encapsulated message. None means that the section does not exist in this message.
    """
    spec = section.strip()
    for stop in (" ", "("):
        cut = spec.find(stop)
        if cut >= 0:
            spec = spec[:cut]
    spec = spec.strip().upper()
    pieces = spec.split(".") if spec else []
    if "" in pieces:
        return None  # "1.", ".TEXT", "1..2"
    numbers: list[int] = []
    index = 0
    while index < len(pieces) and pieces[index][:1].isdigit():
        if not _PART_NUMBER.fullmatch(pieces[index]):
            return None
        numbers.append(int(pieces[index]))
        index += 1
    word = ".".join(pieces[index:])
    if word not in _SECTION_WORDS:
        return None

    if not numbers:
        if word == "":
            return root.header_start, root.body_end
        if word == "TEXT":
            return root.body_start, root.body_end
        if word.startswith("HEADER"):
            return root.header_start, root.body_start
        return None  # MIME needs a part number

    candidates = _parts_of_message(root)
    part: Part | None = None
    for number in numbers:
        if number > len(candidates):
            return None
        part = candidates[number - 1]
        candidates = _subparts(part)
    assert part is not None
    if word == "":
        return part.body_start, part.body_end
    if word == "MIME":
        return part.header_start, part.body_start
    inner = part.message
    if inner is None:
        return None
    if word == "TEXT":
        return inner.body_start, inner.body_end
    return inner.header_start, inner.body_start
