"""Header blocks: where they end, which fields they hold, and their values as text.

Follows RFC 5322 §2.2 (header fields, folding) and §3.6, with the obsolete syntax of §4.5
tolerated (white space before the colon), RFC 2047 (encoded-words) and RFC 6532 (raw UTF-8 in
header values). Everything here works on byte offsets into the stored message so that IMAP can
serve HEADER, HEADER.FIELDS and HEADER.FIELDS.NOT without copying or reparsing.

Messages are stored with CRLF line ends, but LF-only data is accepted everywhere: a line ends at
LF, and a CR just before it belongs to the line end.
"""

from __future__ import annotations

import binascii
import re

from mailkeep.mime.charset import decode_charset

# A blank line ends the header block (RFC 5322 §2.1). Matched from the LF that ends the last
# field line, so match.start() + 1 is the end of the fields and match.end() the body start.
_BLANK_LINE = re.compile(rb"\n\r?\n")
_LINE_BREAK = re.compile(rb"\r?\n")
_WSP = b" \t"


def find_header_end(data: bytes, start: int, end: int, max_bytes: int) -> tuple[int, int, bool]:
    """Locate the header block that starts at ``start`` and may extend up to ``end``.

    Returns ``(fields_end, body_start, truncated)``: the fields are ``data[start:fields_end]``,
    the blank line (if any) is ``data[fields_end:body_start]``. Without a blank line the whole
    range is header and the body is empty (RFC 5322 §3.5 makes the body optional). When no
    blank line is found within ``max_bytes``, the header is cut at the last line end before the
    limit, the rest becomes body, and ``truncated`` is True.
    """
    if start >= end:
        return start, start, False
    first = data[start]
    if first == 0x0A:
        return start, start + 1, False
    if first == 0x0D and start + 1 < end and data[start + 1] == 0x0A:
        return start, start + 2, False
    limit = min(end, start + max(max_bytes, 0))
    match = _BLANK_LINE.search(data, start, limit)
    if match is not None:
        return match.start() + 1, match.end(), False
    if limit >= end:
        return end, end, False
    cut = data.rfind(b"\n", start, limit)
    cut = cut + 1 if cut >= 0 else limit
    return cut, cut, True


def collect_fields(
    data: bytes, start: int, end: int, wanted: frozenset[bytes], max_fields: int
) -> tuple[dict[bytes, bytes], bool]:
    """Values of the ``wanted`` fields among the header fields in ``data[start:end]``.

    Names are matched lower-cased; the first occurrence wins. Values are unfolded (CR and LF
    removed, RFC 5322 §2.2.3) with white space around them stripped; otherwise they stay raw
    bytes. Lines that are neither a field nor a continuation are skipped. Returns the values
    and whether more than ``max_fields`` fields were present (the excess is ignored).
    """
    values: dict[bytes, bytes] = {}
    if start >= end:
        return values, False
    block = data[start:end]
    lines = block.split(b"\n")
    count = 0
    if block[0] not in _WSP and b"\n " not in block and b"\n\t" not in block:
        # No folded field: every line stands alone (the common case for MIME part headers).
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not name:
                continue
            count += 1
            if count > max_fields:
                return values, True
            key = name.lower()
            if key[-1] in _WSP:
                key = key.rstrip(_WSP)
            if key in wanted and key not in values:
                values[key] = _clean_value(value)
        return values, False

    current: list[bytes] | None = None
    current_name = b""
    for line in lines:
        if not line:
            continue
        if line[0] in _WSP:
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            values[current_name] = _clean_value(b"".join(current))
            current = None
        name, colon, value = line.partition(b":")
        if not colon or not name:
            continue
        count += 1
        if count > max_fields:
            return values, True
        key = name.lower()
        if key[-1] in _WSP:
            key = key.rstrip(_WSP)
        if key in wanted and key not in values:
            current_name = key
            current = [value]
    if current is not None:
        values[current_name] = _clean_value(b"".join(current))
    return values, False


def _clean_value(value: bytes) -> bytes:
    # Unfolding removes the line breaks and keeps the white space (RFC 5322 §2.2.3); the
    # LFs are already gone (the block was split on them), the CRs go here.
    if b"\r" in value:
        value = value.replace(b"\r", b"")
    return value.strip(_WSP)


def header_fields(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The fields of the header block in ``data[start:end]``, for HEADER.FIELDS (RFC 9051 §6.4.5).

    Each entry is ``(lower-case name, field start, field end)`` where the range covers the
    field including its folded continuation lines and its final line end. The blank line that
    ends the block is not a field, and nothing after it is looked at. A line that is not a
    field (no colon) is reported with the empty name, so HEADER.FIELDS.NOT keeps it and
    HEADER.FIELDS never selects it.
    """
    fields: list[tuple[bytes, int, int]] = []
    pos = start
    while pos < end:
        newline = data.find(b"\n", pos, end)
        line_end = end if newline < 0 else newline + 1
        first = data[pos]
        if first == 0x0A or (first == 0x0D and line_end == pos + 2 and newline >= 0):
            break
        if first in (0x20, 0x09):
            if fields:
                name, field_start, _ = fields[-1]
                fields[-1] = (name, field_start, line_end)
            else:
                fields.append((b"", pos, line_end))
        else:
            colon = data.find(b":", pos, line_end)
            name = data[pos:colon].rstrip(_WSP).lower() if colon > pos else b""
            fields.append((name, pos, line_end))
        pos = line_end
    return fields


def unfold(raw: bytes) -> bytes:
    """Remove the line breaks of a folded value, keeping the white space (RFC 5322 §2.2.3)."""
    return _LINE_BREAK.sub(b"", raw)


# RFC 2047 §2: =?charset?encoding?encoded-text?=. The charset may carry an RFC 2231 §5
# language ("utf-8*en"). Encoded text may not contain "?"; white space inside it is invalid but
# produced by some mailers, so it is tolerated.
_ENCODED_WORD = re.compile(rb"=\?([^?\s*]{1,64})(?:\*[^?\s]{0,64})?\?([bBqQ])\?([^?]*)\?=")
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


def _decode_b(text: bytes) -> bytes | None:
    # RFC 2047 §4.1; be lenient about padding and stray characters, as mail clients are.
    cleaned = _BASE64_JUNK.sub(b"", text)
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return binascii.a2b_base64(cleaned)
    except (binascii.Error, ValueError):
        return None


def _decode_q(text: bytes) -> bytes:
    # RFC 2047 §4.2: "_" is a space, "=XX" a byte; invalid escapes are kept as they are.
    return binascii.a2b_qp(text, header=True)


def decode_header_value(raw: bytes) -> str:
    """A header value as text for display or search; never raises.

    Unfolds (RFC 5322 §2.2.3), decodes RFC 2047 encoded-words (white space between adjacent
    encoded-words is dropped, §6.2; adjacent words in the same charset are joined before
    decoding, so a character split across two words survives) and accepts raw UTF-8
    (RFC 6532 §3). Unknown charsets and invalid bytes become U+FFFD. Leading and trailing white
    space is removed.
    """
    text = unfold(raw)
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    pos = 0
    previous_was_word = False
    for match in _ENCODED_WORD.finditer(text):
        between = text[pos : match.start()]
        if between and not (previous_was_word and not between.strip(_WSP)):
            if pending:
                out.append(decode_charset(bytes(pending), pending_charset))
                pending.clear()
            out.append(between.decode("utf-8", "replace"))
        charset = match.group(1).decode("ascii", "replace").lower()
        encoding = match.group(2)
        payload = _decode_b(match.group(3)) if encoding in b"bB" else _decode_q(match.group(3))
        if payload is None:
            if pending:
                out.append(decode_charset(bytes(pending), pending_charset))
                pending.clear()
            out.append(match.group(0).decode("ascii", "replace"))
            previous_was_word = False
        else:
            if pending and charset != pending_charset:
                out.append(decode_charset(bytes(pending), pending_charset))
                pending.clear()
            pending_charset = charset
            pending += payload
            previous_was_word = True
        pos = match.end()
    if pending:
        out.append(decode_charset(bytes(pending), pending_charset))
    out.append(text[pos:].decode("utf-8", "replace"))
    return "".join(out).strip(" \t")
