"""The byte-offset MIME index of a stored message: its part tree, computed once at delivery.

IMAP FETCH of ENVELOPE, BODY, BODYSTRUCTURE and BODY[section] needs to know where every MIME
part of a message starts and ends. :func:`index_message` finds that out in one pass over the
stored bytes and records offsets only, so the store can keep the index (see
:mod:`mailkeep.mime.serialize`) and serve any section later with a single read.

Follows RFC 2045 (MIME header fields, defaults of §5.2 and §6.1), RFC 2046 §5.1 (multipart
boundaries: a delimiter is "--boundary" at the start of a line, the line end before it belongs
to the delimiter, transport padding may follow it) and §5.2 (message/rfc822), RFC 6532 §3.7
(message/global) and RFC 9051 §6.4.5 (section numbering).

Hostile input is the norm for a mail server, so the indexer never raises, never recurses (an
explicit stack walks the tree) and enforces :class:`MimeLimits`: past a limit it stops
descending or splitting, keeps the remaining bytes in the last part's body and records a
defect. Boundaries are found with ``bytes.find`` and each byte is scanned a bounded number of
times per nesting level, so large messages index in linear time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from mailkeep.mime.envelope import ENVELOPE_FIELDS, Envelope, build_envelope
from mailkeep.mime.header import collect_fields, find_header_end
from mailkeep.mime.params import (
    IDENTITY_ENCODINGS,
    parse_content_type,
    parse_disposition,
    parse_language,
    parse_transfer_encoding,
)

#: Longest multipart boundary accepted. RFC 2046 §5.1.1 allows 70 characters; we are lenient.
MAX_BOUNDARY_LENGTH = 200

MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})

_MIME_FIELDS = frozenset({
    b"content-type", b"content-transfer-encoding", b"content-disposition", b"content-id",
    b"content-description", b"content-md5", b"content-language", b"content-location",
})
_MESSAGE_FIELDS = _MIME_FIELDS | ENVELOPE_FIELDS


@dataclass(frozen=True, slots=True)
class MimeLimits:
    """Hard limits on what the indexer will parse in one message.

    ``max_depth``: nesting levels of multiparts and encapsulated messages below the root.
    ``max_parts``: parts in the whole tree, the root and encapsulated messages included.
    ``max_headers``: header fields read from one header block. ``max_header_bytes``: longest
    header block; a longer one is cut at a line end and the rest is body.
    """

    max_depth: int = 20
    max_parts: int = 1000
    max_headers: int = 1000
    max_header_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_parts", "max_headers", "max_header_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"MimeLimits.{name} must be a non-negative integer, not {value!r}")
        if self.max_parts < 1:
            raise ValueError("MimeLimits.max_parts must be at least 1 (the message itself)")


DEFAULT_LIMITS = MimeLimits()


@dataclass(slots=True)
class Part:
    """One MIME entity of a message, by byte offsets into the whole stored message.

    The header block is ``data[header_start:body_start]`` (blank line included) and the body
    ``data[body_start:body_end]``. For a multipart the body includes preamble and epilogue;
    ``children`` are the parts between the delimiters. For message/rfc822 and message/global,
    ``message`` is the root part of the encapsulated message, covering this part's body.
    ``envelope`` is set on the root of every message (top-level and encapsulated).
    String fields other than parameters hold the raw header value decoded from UTF-8 with
    ``surrogateescape``, so IMAP can send the original bytes back.
    """

    header_start: int
    body_start: int
    body_end: int
    content_type: str = "text/plain"
    params: dict[str, str] = field(default_factory=dict)
    disposition: str | None = None
    disposition_params: dict[str, str] = field(default_factory=dict)
    language: list[str] | None = None
    location: str | None = None
    content_id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    #: The Content-Transfer-Encoding as written when that differs from ``encoding`` (which
    #: is lower-cased for decoding): BODYSTRUCTURE shows it as written, like Dovecot.
    encoding_raw: str | None = None
    md5: str | None = None
    lines: int = 0
    children: list[Part] = field(default_factory=list)
    message: Part | None = None
    envelope: Envelope | None = None
    defects: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Body size in octets, as BODYSTRUCTURE reports it."""
        return self.body_end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.content_type.startswith("multipart/")


def iter_parts(root: Part) -> Iterator[Part]:
    """Every part of the tree in document order: a part, its encapsulated message, its children."""
    stack = [root]
    while stack:
        part = stack.pop()
        yield part
        stack.extend(reversed(part.children))
        if part.message is not None:
            stack.append(part.message)


def _raw_text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")


@dataclass(slots=True)
class _Delimiter:
    line_start: int  # where "--boundary" starts
    line_end: int  # after the line end (or at the end of the multipart body)
    closing: bool


def _find_delimiter(data: bytes, pattern: bytes, start: int, end: int) -> _Delimiter | None:
    """The first boundary delimiter line in ``data[start:end]`` (RFC 2046 §5.1.1).

    ``start`` must be at the start of a line. A match must start a line and be followed by
    optional "--" (close delimiter), optional transport padding and a line end; a longer
    boundary that merely starts with ours is not a match.
    """
    length = len(pattern)
    pos = start
    while True:
        found = data.find(pattern, pos, end)
        if found < 0:
            return None
        pos = found + 1
        if found != start and data[found - 1] != 0x0A:
            continue
        cursor = found + length
        closing = data.startswith(b"--", cursor, end)
        if closing:
            cursor += 2
        while cursor < end and data[cursor] in (0x20, 0x09):
            cursor += 1
        if cursor >= end:
            return _Delimiter(found, end, closing)
        byte = data[cursor]
        if byte == 0x0A:
            return _Delimiter(found, cursor + 1, closing)
        if byte == 0x0D and (cursor + 1 >= end or data[cursor + 1] == 0x0A):
            return _Delimiter(found, min(cursor + 2, end), closing)


def _end_before(data: bytes, line_start: int, floor: int) -> int:
    """Where the part before a delimiter ends: the line end before it is the delimiter's."""
    end = line_start
    if end > floor and data[end - 1] == 0x0A:
        end -= 1
        if end > floor and data[end - 1] == 0x0D:
            end -= 1
    return end


@dataclass(slots=True)
class _MultipartFrame:
    part: Part
    pattern: bytes
    delimiter: _Delimiter | None  # the delimiter the next child follows; None when done
    depth: int
    child_type: str


class _Indexer:
    def __init__(self, data: bytes, limits: MimeLimits) -> None:
        self.data = data
        self.limits = limits
        self.count = 0
        self.stack: list[_MultipartFrame] = []

    def run(self) -> Part:
        root = self.entity(0, len(self.data), "text/plain", message=True)
        self.descend(root, 0)
        while self.stack:
            self.step(self.stack[-1])
        return root

    def count_lines(self, part: Part) -> None:
        part.lines = self.data.count(b"\n", part.body_start, part.body_end)

    def entity(self, start: int, end: int, default_type: str, message: bool) -> Part:
        """Parse the header of the entity in ``data[start:end]`` into a Part (no descent)."""
        self.count += 1
        limits = self.limits
        fields_end, body_start, truncated = find_header_end(
            self.data, start, end, limits.max_header_bytes
        )
        values, too_many = collect_fields(
            self.data, start, fields_end, _MESSAGE_FIELDS if message else _MIME_FIELDS,
            limits.max_headers,
        )
        part = Part(start, body_start, end)
        defects = part.defects
        if truncated:
            defects.append(
                f"header block longer than {limits.max_header_bytes} bytes; the rest is body"
            )
        if too_many:
            defects.append(f"more than {limits.max_headers} header fields; the rest ignored")

        raw_type = values.get(b"content-type")
        if raw_type is None:
            part.content_type = default_type
        else:
            media_type, params, more = parse_content_type(raw_type)
            defects.extend(more)
            if media_type is None:
                # RFC 2045 §5.2: an unusable Content-Type means text/plain; charset=us-ascii.
                part.content_type = "text/plain"
            else:
                part.content_type = media_type
                part.params = params

        if len(values) > (raw_type is not None):  # anything besides Content-Type?
            raw_encoding = values.get(b"content-transfer-encoding")
            if raw_encoding is not None:
                encoding = parse_transfer_encoding(raw_encoding)
                if encoding is None:
                    defects.append("invalid Content-Transfer-Encoding; 7bit assumed")
                else:
                    part.encoding = encoding
                    written = raw_encoding.strip().decode("ascii", "replace")
                    if written != encoding and written.lower() == encoding:
                        part.encoding_raw = written

            raw_disposition = values.get(b"content-disposition")
            if raw_disposition is not None:
                disposition, params, more = parse_disposition(raw_disposition)
                defects.extend(more)
                part.disposition = disposition
                if disposition is not None:
                    part.disposition_params = params

            raw_language = values.get(b"content-language")
            if raw_language is not None:
                part.language = parse_language(raw_language)
            part.location = _raw_text(values.get(b"content-location"))
            part.content_id = _raw_text(values.get(b"content-id"))
            part.description = _raw_text(values.get(b"content-description"))
            part.md5 = _raw_text(values.get(b"content-md5"))

        if message:
            envelope, more = build_envelope(values)
            part.envelope = envelope
            defects.extend(more)
        return part

    def make_opaque(self, part: Part, reason: str) -> None:
        """Stop interpreting a container: it becomes an opaque application/octet-stream."""
        part.defects.append(f"{part.content_type} {reason}; kept as application/octet-stream")
        part.content_type = "application/octet-stream"
        part.params = {}
        part.lines = 0

    def descend(self, part: Part, depth: int) -> None:
        """Look inside a container part: open a multipart, or parse an encapsulated message."""
        limits = self.limits
        while True:
            media_type = part.content_type
            if media_type.startswith("multipart/"):
                boundary = part.params.get("boundary", "")
                pattern = b"--" + boundary.encode("utf-8", "surrogateescape")
                if not boundary or len(boundary) > MAX_BOUNDARY_LENGTH:
                    # RFC 2045 §5.2: a multipart without a usable boundary is treated as text.
                    part.defects.append(f"{media_type} without a usable boundary; read as text")
                    part.content_type, part.params = "text/plain", {}
                    self.count_lines(part)
                    return
                if depth >= limits.max_depth:
                    self.make_opaque(part, f"nested deeper than {limits.max_depth} levels")
                    return
                first = _find_delimiter(self.data, pattern, part.body_start, part.body_end)
                if first is None:
                    # No delimiter at all: show the body as text rather than as nothing.
                    part.defects.append(f"{media_type} has no boundary delimiter; read as text")
                    part.content_type, part.params = "text/plain", {}
                    self.count_lines(part)
                    return
                child_type = "message/rfc822" if media_type == "multipart/digest" else "text/plain"
                self.stack.append(_MultipartFrame(part, pattern, first, depth, child_type))
                return
            if media_type in MESSAGE_TYPES:
                if part.encoding not in IDENTITY_ENCODINGS:
                    # RFC 2046 §5.2.1: only 7bit, 8bit or binary; an encoded message has no
                    # byte offsets to index.
                    self.make_opaque(part, f"with {part.encoding} encoding is not parsed")
                    return
                if depth >= limits.max_depth:
                    self.make_opaque(part, f"nested deeper than {limits.max_depth} levels")
                    return
                if self.count >= limits.max_parts:
                    self.make_opaque(part, f"exceeds the limit of {limits.max_parts} parts")
                    return
                self.count_lines(part)
                inner = self.entity(part.body_start, part.body_end, "text/plain", message=True)
                part.message = inner
                part, depth = inner, depth + 1
                continue
            if media_type.startswith("text/"):
                self.count_lines(part)
            return

    def step(self, frame: _MultipartFrame) -> None:
        """Make the next child of the multipart on top of the stack, or finish it."""
        delimiter = frame.delimiter
        multipart = frame.part
        if delimiter is None or delimiter.closing:
            self.stack.pop()
            return
        if self.count >= self.limits.max_parts:
            self.stack.pop()
            reason = f"the limit of {self.limits.max_parts} parts"
            if multipart.children:
                self.extend_last(multipart.children[-1], multipart.body_end, reason)
            else:
                self.make_opaque(multipart, f"exceeds {reason}")
            return
        start = delimiter.line_end
        following = _find_delimiter(self.data, frame.pattern, start, multipart.body_end)
        if following is None:
            end = multipart.body_end
            multipart.defects.append("multipart not terminated by a close delimiter")
        else:
            end = _end_before(self.data, following.line_start, start)
        child = self.entity(start, end, frame.child_type, message=False)
        multipart.children.append(child)
        frame.delimiter = following
        self.descend(child, frame.depth + 1)

    def extend_last(self, part: Part, end: int, reason: str) -> None:
        """Past the part limit, the rest of a multipart joins the body of its last child."""
        part.defects.append(f"{reason} reached; the rest of the multipart is in this body")
        while True:
            part.body_end = end
            if part.content_type.startswith("text/") or part.content_type in MESSAGE_TYPES:
                self.count_lines(part)
            if part.message is None:
                return
            part = part.message  # an encapsulated message covers its container's body


def _fallback(data: bytes, error: BaseException) -> Part:
    part = Part(0, 0, len(data), content_type="application/octet-stream")
    part.envelope = Envelope()
    part.defects.append(f"message could not be indexed ({type(error).__name__}); kept whole")
    return part


def index_message(data: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> Part:
    """Index a whole stored message: its MIME part tree with byte offsets; never raises.

    ``data`` is the message exactly as stored (CRLF line ends normally; LF-only data is
    handled too, with offsets into the data as given). Malformed structure is repaired the way
    mail clients do and noted in the ``defects`` of the affected part.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    try:
        return _Indexer(data, limits).run()
    except Exception as error:  # pragma: no cover - a bug; keep the message servable
        return _fallback(data, error)
