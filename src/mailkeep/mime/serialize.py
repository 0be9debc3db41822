"""The stored form of a MIME index: compact, versioned JSON that round-trips exactly.

The store keeps one blob per message (in SQLite) so that FETCH BODYSTRUCTURE never reparses
the message. The format is ``{"v": 1, "p": [part, ...]}`` where the parts are listed in
document order (a part, then its encapsulated message, then its children) and each part is an
object with short keys, defaults left out:

====  =====================================  =======================
key   Part field                             default (omitted)
====  =====================================  =======================
h b e header_start, body_start, body_end     always present
t     content_type                           "text/plain"
p     params                                 {}
d dp  disposition, disposition_params        None, {}
g     language                               None
lc    location                               None
id    content_id                             None
ds    description                            None
x     encoding                               "7bit"
md    md5                                    None
l     lines                                  0
c     number of children                     0
m     1 if an encapsulated message follows   absent
ev    envelope: [date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to,
      message-id]; bytes as text (UTF-8, surrogateescape), addresses as 4-lists
df    defects                                []
====  =====================================  =======================

Bytes that are not UTF-8 survive as lone surrogates, written as ``\\udcXX`` JSON escapes, so
the blob is always valid UTF-8 JSON. The tree is flattened, so neither writing nor reading
recurses, however deep the tree.
"""

from __future__ import annotations

import json
from typing import Any

from mailkeep.mime.envelope import Envelope, EnvelopeAddress
from mailkeep.mime.structure import Part, iter_parts

FORMAT_VERSION = 1


class IndexFormatError(ValueError):
    """A stored index blob is not one this version can read; reindex the message."""


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise IndexFormatError("expected a string or null in the envelope")
    return value.encode("utf-8", "surrogateescape")


def _addresses_out(addresses: list[EnvelopeAddress]) -> list[list[str | None]]:
    return [[_text(a.name), _text(a.adl), _text(a.mailbox), _text(a.host)] for a in addresses]


def _addresses_in(value: Any) -> list[EnvelopeAddress]:
    if not isinstance(value, list):
        raise IndexFormatError("expected a list of addresses")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 4:
            raise IndexFormatError("an address must be a list of four")
        out.append(EnvelopeAddress(*(_bytes(v) for v in item)))
    return out


def _envelope_out(envelope: Envelope) -> list[Any]:
    return [
        _text(envelope.date), _text(envelope.subject),
        _addresses_out(envelope.from_), _addresses_out(envelope.sender),
        _addresses_out(envelope.reply_to), _addresses_out(envelope.to),
        _addresses_out(envelope.cc), _addresses_out(envelope.bcc),
        _text(envelope.in_reply_to), _text(envelope.message_id),
    ]


def _envelope_in(value: Any) -> Envelope:
    if not isinstance(value, list) or len(value) != 10:
        raise IndexFormatError("an envelope must be a list of ten")
    return Envelope(
        date=_bytes(value[0]), subject=_bytes(value[1]),
        from_=_addresses_in(value[2]), sender=_addresses_in(value[3]),
        reply_to=_addresses_in(value[4]), to=_addresses_in(value[5]),
        cc=_addresses_in(value[6]), bcc=_addresses_in(value[7]),
        in_reply_to=_bytes(value[8]), message_id=_bytes(value[9]),
    )


def _part_out(part: Part) -> dict[str, Any]:
    row: dict[str, Any] = {"h": part.header_start, "b": part.body_start, "e": part.body_end}
    if part.content_type != "text/plain":
        row["t"] = part.content_type
    if part.params:
        row["p"] = part.params
    if part.disposition is not None:
        row["d"] = part.disposition
    if part.disposition_params:
        row["dp"] = part.disposition_params
    if part.language is not None:
        row["g"] = part.language
    if part.location is not None:
        row["lc"] = part.location
    if part.content_id is not None:
        row["id"] = part.content_id
    if part.description is not None:
        row["ds"] = part.description
    if part.encoding != "7bit":
        row["x"] = part.encoding
    if part.encoding_raw is not None:
        row["xr"] = part.encoding_raw
    if part.md5 is not None:
        row["md"] = part.md5
    if part.lines:
        row["l"] = part.lines
    if part.children:
        row["c"] = len(part.children)
    if part.message is not None:
        row["m"] = 1
    if part.envelope is not None:
        row["ev"] = _envelope_out(part.envelope)
    if part.defects:
        row["df"] = part.defects
    return row


def to_json(part: Part) -> bytes:
    """Serialize a part tree (normally the root from ``index_message``) for storage."""
    document = {"v": FORMAT_VERSION, "p": [_part_out(p) for p in iter_parts(part)]}
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), check_circular=False)
    # Lone surrogates (bytes that were not UTF-8) cannot be encoded; written as \udcXX they
    # are exactly the JSON escape that reads back as the same surrogate.
    return text.encode("utf-8", "backslashreplace")


def _int(row: dict[str, Any], key: str, default: int | None = None) -> int:
    value = row.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IndexFormatError(f"field {key!r} must be a non-negative integer")
    return value


def _opt_str(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise IndexFormatError(f"field {key!r} must be a string")
    return value


def _str(row: dict[str, Any], key: str, default: str) -> str:
    value = row.get(key, default)
    if not isinstance(value, str):
        raise IndexFormatError(f"field {key!r} must be a string")
    return value


def _str_dict(row: dict[str, Any], key: str) -> dict[str, str]:
    value = row.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise IndexFormatError(f"field {key!r} must map strings to strings")
    return dict(value)


def _str_list(row: dict[str, Any], key: str, default: list[str] | None) -> list[str] | None:
    value = row.get(key, default)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IndexFormatError(f"field {key!r} must be a list of strings")
    return list(value)


def _part_in(row: Any) -> tuple[Part, int, bool]:
    if not isinstance(row, dict):
        raise IndexFormatError("a part must be an object")
    part = Part(_int(row, "h"), _int(row, "b"), _int(row, "e"))
    if not part.header_start <= part.body_start <= part.body_end:
        raise IndexFormatError("part offsets out of order")
    part.content_type = _str(row, "t", "text/plain")
    part.params = _str_dict(row, "p")
    part.disposition = _opt_str(row, "d")
    part.disposition_params = _str_dict(row, "dp")
    part.language = _str_list(row, "g", None)
    part.location = _opt_str(row, "lc")
    part.content_id = _opt_str(row, "id")
    part.description = _opt_str(row, "ds")
    part.encoding = _str(row, "x", "7bit")
    part.encoding_raw = _opt_str(row, "xr")
    part.md5 = _opt_str(row, "md")
    part.lines = _int(row, "l", 0)
    if "ev" in row:
        part.envelope = _envelope_in(row["ev"])
    part.defects = _str_list(row, "df", []) or []
    return part, _int(row, "c", 0), bool(row.get("m"))


def from_json(blob: bytes) -> Part:
    """Read back a tree written by :func:`to_json`.

    Raises :class:`IndexFormatError` (a ValueError) if the blob is damaged or of an unknown
    version; the caller should then reindex the message from its stored bytes.
    """
    try:
        document = json.loads(blob)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise IndexFormatError(f"index is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("v") != FORMAT_VERSION:
        version = document.get("v") if isinstance(document, dict) else None
        raise IndexFormatError(f"unsupported index format version {version!r}")
    rows = document.get("p")
    if not isinstance(rows, list) or not rows:
        raise IndexFormatError("index has no parts")

    root, children, has_message = _part_in(rows[0])
    # Each open entry: [part, children still expected, encapsulated message still expected].
    open_parts: list[list[Any]] = [[root, children, has_message]]
    for row in rows[1:]:
        while open_parts and not open_parts[-1][2] and open_parts[-1][1] == 0:
            open_parts.pop()
        if not open_parts:
            raise IndexFormatError("index has more parts than its tree")
        parent = open_parts[-1]
        part, children, has_message = _part_in(row)
        if parent[2]:
            parent[0].message = part
            parent[2] = False
        else:
            parent[0].children.append(part)
            parent[1] -= 1
        if children or has_message:
            open_parts.append([part, children, has_message])
    if any(entry[1] or entry[2] for entry in open_parts):
        raise IndexFormatError("index has fewer parts than its tree")
    return root
