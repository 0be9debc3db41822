"""FETCH responses: the untagged ``* n FETCH (...)`` line of one message, byte-exact.

Renders the message data items of RFC 9051 §7.5.2 (RFC 3501 §7.4.2 has the same syntax) for
the fetch attributes of RFC 9051 §6.4.5 that the parser produced
(:class:`mailkeep.imap.commands.FetchAttribute`), from the message's cached MIME index
(:mod:`mailkeep.mime`) and one buffer holding its stored bytes:

* FLAGS, UID, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY, BODYSTRUCTURE;
* BODY[section]<partial> with HEADER, HEADER.FIELDS(.NOT), TEXT and MIME, also of nested
  message/rfc822 parts, and RFC822, RFC822.HEADER, RFC822.TEXT;
* BINARY[section]<partial> and BINARY.SIZE (RFC 3516, now part of RFC 9051);
* MODSEQ (RFC 7162 §3.1.4.1), SAVEDATE (RFC 8514 §4) and PREVIEW (RFC 8970).

The output is what Dovecot 2.3 sends for the same message and items, including the order of
the items (see :func:`render_fetch`), so that clients tuned to Dovecot see nothing new;
``tests/imap/test_imap_fetch_dovecot.py`` compares the two. Where Dovecot departs from the
RFCs we follow the RFC, and the code says so where it happens.

Pure: no I/O, no clock. The stored message is sliced through a memoryview, so a large body is
copied once, into the response; nothing here loops over single bytes in Python.
"""

from __future__ import annotations

import html.entities
import mmap
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from mailkeep.imap.commands import FetchAttribute, Section
from mailkeep.mime.charset import decode_charset
from mailkeep.mime.envelope import Envelope
from mailkeep.mime.header import header_fields
from mailkeep.mime.imap import imap_bodystructure, imap_envelope, imap_string
from mailkeep.mime.structure import Part, index_message
from mailkeep.mime.transfer import decode_base64, decode_body, decode_quoted_printable

if TYPE_CHECKING:
    from mailkeep.store.api import MessageInfo

__all__ = [
    "DEFAULT_FETCH_LIMITS",
    "FetchError",
    "FetchLimits",
    "format_datetime",
    "message_preview",
    "needs_data",
    "needs_structure",
    "render_fetch",
    "sets_seen",
]

#: The stored message: bytes, or a zero-copy view of them (a memoryview or an mmap).
MessageBuffer = bytes | memoryview | mmap.mmap

# RFC 8970 §3.1: a preview is at most 200 characters, and never more than 256 octets.
PREVIEW_MAX_CHARS = 200
PREVIEW_MAX_OCTETS = 256


class FetchError(Exception):
    """The FETCH as a whole fails: the session answers ``tag NO [code] text``.

    ``code`` is a response code such as ``UNKNOWN-CTE`` (RFC 3516 §4.3) or None.
    """

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Limits on the work one FETCH item may cause (named settings, see docs/imap.md).

    ``preview_input_bytes``: how much of a text part's encoded body PREVIEW reads. HTML mail
    often starts with tens of kilobytes of style sheet, so this is generous; beyond it a
    preview is made from what was read.
    """

    preview_input_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        value = self.preview_input_bytes
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"FetchLimits.preview_input_bytes must be a positive integer, "
                             f"not {value!r}")


DEFAULT_FETCH_LIMITS = FetchLimits()


# -- what a FETCH needs ----------------------------------------------------------------------


def sets_seen(items: Sequence[FetchAttribute]) -> bool:
    """True if fetching ``items`` sets \\Seen (RFC 9051 §6.4.5): BODY[...] and BINARY[...]
    without .PEEK, RFC822 and RFC822.TEXT. RFC822.HEADER and BINARY.SIZE never do."""
    for item in items:
        name = item.name
        if name in ("RFC822", "RFC822.TEXT"):
            return True
        if name in ("BODY", "BINARY") and item.section is not None and not item.peek:
            return True
    return False


def needs_structure(items: Sequence[FetchAttribute]) -> bool:
    """True if rendering ``items`` needs the MIME index of the message (``structure``).

    A plain BODY[] / BODY.PEEK[] and RFC822 do not: they are the whole stored message.
    """
    for item in items:
        name = item.name
        if name in _STRUCTURE_ITEMS:
            return True
        if name == "BODY":
            section = item.section
            if section is None or section.part or section.text is not None:
                return True
    return False


def needs_data(items: Sequence[FetchAttribute]) -> bool:
    """True if rendering ``items`` needs the stored message bytes (``data``)."""
    return any(item.section is not None or item.name in _DATA_ITEMS for item in items)


_STRUCTURE_ITEMS = frozenset({
    "ENVELOPE", "BODYSTRUCTURE", "PREVIEW", "BINARY", "BINARY.SIZE", "RFC822.HEADER",
    "RFC822.TEXT",
})
_DATA_ITEMS = frozenset({
    "RFC822", "RFC822.HEADER", "RFC822.TEXT", "PREVIEW", "BINARY", "BINARY.SIZE",
})

# Items Dovecot writes into the first part of the response line, before any item that carries
# message content, whatever order the client asked for (imap-fetch.c calls them "buffered").
# Some clients rely on UID coming early; we keep Dovecot's order so responses compare equal.
_LEADING_ITEMS = frozenset({
    "UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "SAVEDATE", "PREVIEW",
})
# Items that appear once however often they are asked for (as in Dovecot). Sections,
# BINARY.SIZE and PREVIEW are repeated: each request may differ.
_ONCE_ITEMS = frozenset({
    "UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "SAVEDATE", "ENVELOPE", "BODY",
    "BODYSTRUCTURE", "RFC822", "RFC822.HEADER", "RFC822.TEXT",
})


# -- the response ----------------------------------------------------------------------------


def render_fetch(
    seq: int,
    items: Sequence[FetchAttribute],
    info: MessageInfo,
    *,
    structure: Part | None,
    data: MessageBuffer | None,
    utf8: bool = False,
    include_uid: bool = False,
    flags: Sequence[str] | None = None,
    limits: FetchLimits = DEFAULT_FETCH_LIMITS,
) -> bytes:
    """The untagged FETCH response for message ``seq`` and the requested ``items``.

    ``structure`` is the message's MIME index and ``data`` its stored bytes; each may be None
    when :func:`needs_structure` / :func:`needs_data` say the items do not need it (a missing
    index is rebuilt from ``data``). ``utf8``: the client enabled UTF8=ACCEPT (RFC 9051
    §6.3.1), so ENVELOPE, BODYSTRUCTURE and PREVIEW may carry UTF-8 in quoted strings.
    ``include_uid``: UID FETCH, whose responses always include UID (RFC 9051 §6.4.9).
    ``flags``: the message's flags after this FETCH set \\Seen, when they differ from
    ``info.flags``; FLAGS then shows them, and if FLAGS was not asked for it is added, since
    a flag change caused by FETCH should be reported with it (RFC 3501 §6.4.5). Pass None
    when \\Seen was already set (Dovecot reports nothing then either).

    Order, as in Dovecot: UID first for UID FETCH; then the small items (UID, FLAGS,
    INTERNALDATE, RFC822.SIZE, MODSEQ, SAVEDATE, PREVIEW) in the order asked; then an implied
    FLAGS; then everything else in the order asked. An item asked twice is sent once, except
    sections, BINARY.SIZE and PREVIEW.

    Raises :class:`FetchError` when an item cannot be served (unknown Content-Transfer-
    Encoding for BINARY, BINARY of a multipart): the FETCH fails with NO.
    """
    ctx = _Render(info, structure, data, utf8, limits)
    leading: list[bytes] = []
    rest: list[list[bytes | memoryview]] = []
    try:
        done: set[str] = set()
        if include_uid:
            leading.append(b"UID %d" % info.uid)
            done.add("UID")
        current_flags = info.flags if flags is None else flags
        for item in items:
            name = item.name
            if name in _ONCE_ITEMS and item.section is None:
                if name in done:
                    continue
                done.add(name)
            if name == "FLAGS":
                leading.append(_flags_item(current_flags))
            elif name in _LEADING_ITEMS:
                leading.append(ctx.leading_item(item))
            else:
                rest.append(ctx.content_item(item))
        if flags is not None and "FLAGS" not in done and sets_seen(items):
            leading.append(_flags_item(flags))

        out: list[bytes | memoryview] = [b"* %d FETCH (" % seq]
        if leading:
            out.append(b" ".join(leading))
        for chunks in rest:
            if len(out) > 1:
                out.append(b" ")
            out.extend(chunks)
        out.append(b")\r\n")
        return b"".join(out)
    finally:
        # Views of an mmap keep it from being closed. Release them now, also when an item
        # failed and a traceback would keep this frame (and its views) alive.
        for chunks in rest:
            for chunk in chunks:
                if isinstance(chunk, memoryview):
                    chunk.release()
        ctx.release()


def format_datetime(timestamp: float) -> bytes:
    """A quoted date-time (RFC 9051 §9) in UTC: ``"01-Feb-2020 01:34:05 +0000"``.

    Used for INTERNALDATE and SAVEDATE. The day has two digits, as Dovecot sends it (the
    grammar allows a leading space or a zero).
    """
    t = time.gmtime(int(timestamp // 1))
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
    )


_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")


def _flags_item(flags: Sequence[str]) -> bytes:
    return b"FLAGS (" + " ".join(flags).encode("utf-8", "replace") + b")"


# ATOM-CHAR of RFC 9051 §9, for echoing HEADER.FIELDS names as the client may have sent them.
_ATOM = re.compile(rb"[^(){ \x00-\x1f\x7f%*\"\\\]\x80-\xff]+")


@lru_cache(maxsize=512)
def _section_spec(section: Section) -> bytes:
    """The section text between the brackets of the response, as RFC 9051 §7.5.2 echoes it."""
    pieces = [str(number) for number in section.part]
    if section.text:
        pieces.append(section.text)
    spec = ".".join(pieces).encode("ascii")
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        names = []
        for name in section.fields:
            raw = name.encode("utf-8", "surrogateescape")
            names.append(raw if _ATOM.fullmatch(raw) else imap_string(raw))
        spec += b" (" + b" ".join(names) + b")"
    return spec


def _literal(content: bytes | memoryview, binary: bool = False) -> list[bytes | memoryview]:
    # Section contents are always sent as literals, as Dovecot does, even when they could be
    # quoted; literal8 (RFC 3516 §4.3) only for BINARY content that contains NUL.
    if binary:
        return [b"~{%d}\r\n" % len(content), content]
    return [b"{%d}\r\n" % len(content), content]


def _searchable(data: MessageBuffer) -> bytes | mmap.mmap:
    """``data`` as an object with ``find`` and slicing: the buffer behind a full memoryview."""
    if isinstance(data, (bytes, mmap.mmap)):
        return data
    if isinstance(data, memoryview):
        owner = data.obj
        if (isinstance(owner, (bytes, mmap.mmap)) and data.c_contiguous
                and data.itemsize == 1 and data.nbytes == len(owner)):
            return owner
        return data.tobytes()
    return bytes(data)


class _Render:
    """One message's data for rendering its items; sections are cut from ``view``."""

    def __init__(self, info: MessageInfo, structure: Part | None, data: MessageBuffer | None,
                 utf8: bool, limits: FetchLimits) -> None:
        self.info = info
        self._structure = structure
        self.data = None if data is None else _searchable(data)
        self.view = None if self.data is None else memoryview(self.data)
        self.slices: list[memoryview] = []
        self.utf8 = utf8
        self.limits = limits

    def release(self) -> None:
        for view in self.slices:
            view.release()
        if self.view is not None:
            self.view.release()

    def _slice(self, start: int, end: int) -> memoryview:
        assert self.view is not None
        view = self.view[start:end]
        self.slices.append(view)
        return view

    # -- inputs --------------------------------------------------------------------------

    @property
    def root(self) -> Part:
        if self._structure is None:
            # The session should pass the cached index (needs_structure); rebuilding it from
            # the bytes keeps a missing index from failing the client's FETCH.
            self._structure = index_message(bytes(self._need_data()))
        return self._structure

    def _need_data(self) -> bytes | mmap.mmap:
        if self.data is None:
            raise ValueError("this FETCH needs the message data; see needs_data()")
        return self.data

    def _range(self, start: int, end: int) -> bytes | memoryview:
        """``data[start:end]`` without copying, NUL replaced as RFC 9051 §4.3 requires."""
        data = self._need_data()
        assert self.view is not None
        if start >= end:
            return b""
        if data.find(b"\x00", start, end) >= 0:
            # No IMAP literal may contain NUL. Dovecot sends 0x80 in its place, which keeps
            # every size and partial offset the client computed from RFC822.SIZE valid.
            return bytes(self._slice(start, end)).replace(b"\x00", b"\x80")
        return self._slice(start, end)

    # -- the small items -----------------------------------------------------------------

    def leading_item(self, item: FetchAttribute) -> bytes:
        info = self.info
        name = item.name
        if name == "UID":
            return b"UID %d" % info.uid
        if name == "INTERNALDATE":
            return b"INTERNALDATE " + format_datetime(info.internal_date)
        if name == "RFC822.SIZE":
            return b"RFC822.SIZE %d" % info.size
        if name == "MODSEQ":
            return b"MODSEQ (%d)" % info.modseq  # RFC 7162 §3.1.4.1
        if name == "SAVEDATE":
            return b"SAVEDATE " + format_datetime(info.save_date)  # RFC 8514 §4
        assert name == "PREVIEW"
        if self.data is None and item.lazy:
            # RFC 8970 §3.1: with LAZY, NIL means "not available now, ask again later".
            return b"PREVIEW NIL"
        text = message_preview(self.root, self._need_data(), limits=self.limits)
        return b"PREVIEW " + imap_string(text.encode("utf-8"), utf8=self.utf8)

    # -- the items that carry message content --------------------------------------------

    def content_item(self, item: FetchAttribute) -> list[bytes | memoryview]:
        name = item.name
        utf8 = self.utf8
        if name == "ENVELOPE":
            return [b"ENVELOPE " + imap_envelope(self.root.envelope or Envelope(), utf8=utf8)]
        if name == "BODYSTRUCTURE":
            return [b"BODYSTRUCTURE " + imap_bodystructure(self.root, True, utf8=utf8)]
        if name == "BODY" and item.section is None:
            return [b"BODY " + imap_bodystructure(self.root, False, utf8=utf8)]
        if name == "BODY":
            assert item.section is not None
            return self._body_section(item.section, item.partial)
        if name == "RFC822":
            data = self._need_data()
            return [b"RFC822 ", *_literal(self._range(0, len(data)))]
        if name == "RFC822.HEADER":
            root = self.root
            return [b"RFC822.HEADER ", *_literal(self._range(root.header_start, root.body_start))]
        if name == "RFC822.TEXT":
            root = self.root
            return [b"RFC822.TEXT ", *_literal(self._range(root.body_start, root.body_end))]
        if name == "BINARY":
            assert item.section is not None
            return self._binary_section(item.section, item.partial)
        if name == "BINARY.SIZE":
            section = item.section or Section()
            content = self._binary_content(section)
            label = b"BINARY.SIZE[" + _section_spec(section) + b"]"
            return [label + b" %d" % len(content)]
        raise FetchError(f"Unknown FETCH item {name}")

    def _body_section(self, section: Section,
                      partial: tuple[int, int] | None) -> list[bytes | memoryview]:
        label = b"BODY[" + _section_spec(section) + b"]"
        if not section.part and section.text is None and self._structure is None:
            # BODY[]: the whole message, no index needed.
            start, end = 0, len(self._need_data())
        else:
            found = _section_range(self.root, section)
            if found is None:
                # A section that does not exist is empty, as in Dovecot (RFC 9051 leaves it
                # open); clients asking for 1.HEADER of a non-message part get "" too.
                return [label + b" ", *_literal(b"")]
            start, end = found
        if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            content: bytes | memoryview = self._header_subset(
                start, end, section.fields, keep=section.text == "HEADER.FIELDS")
            if partial is not None:
                origin, length = partial
                label += b"<%d>" % origin
                content = content[origin:origin + length]
            return [label + b" ", *_literal(content)]
        if partial is not None:
            # RFC 9051 §6.4.5: <origin.length>; the response names only the origin
            # (§7.5.2). Past the end, the content is empty.
            origin, length = partial
            label += b"<%d>" % origin
            start, end = min(start + origin, end), min(start + origin + length, end)
        return [label + b" ", *_literal(self._range(start, end))]

    def _header_subset(self, start: int, end: int, names: Sequence[str], keep: bool) -> bytes:
        """HEADER.FIELDS / HEADER.FIELDS.NOT of the header block ``data[start:end]``.

        RFC 9051 §6.4.5: names match case-insensitively; fields keep their folded lines and
        their order in the message; the blank line that ends the block is included unless
        the block has none (a message without body and blank line). Dovecot adds a blank
        line to top-level HEADER.FIELDS even then; we follow the RFC.
        """
        data = self._need_data()
        block = data[start:end]
        pattern = _fields_pattern(tuple(names))
        if pattern is None:
            content = _header_subset_slow(block, names, keep)
        elif keep:
            content = b"".join(pattern.findall(block))
            if _ends_with_blank_line(block):
                content += b"\r\n"
        else:
            content = pattern.sub(b"", block)  # the blank line, if any, stays
        if b"\x00" in content:
            content = content.replace(b"\x00", b"\x80")
        return content

    # -- BINARY (RFC 3516, RFC 9051 §6.4.5) ------------------------------------------------

    def _binary_section(self, section: Section,
                        partial: tuple[int, int] | None) -> list[bytes | memoryview]:
        label = b"BINARY[" + _section_spec(section) + b"]"
        content = self._binary_content(section)
        if partial is not None:
            # RFC 3516 §4.2: the partial refers to the decoded data. The response names the
            # origin, as RFC 3516 §4.3 and RFC 9051 §7.5.2 describe it and Dovecot sends it
            # (their ABNF omits it; erratum 7246).
            origin, length = partial
            label += b"<%d>" % origin
            content = content[origin:origin + length]
        # RFC 3516 §4.3: a <string> unless the data contains NUL. Dovecot sends literal8
        # whenever it decoded something; either is valid, the RFC prefers ours.
        has_nul = _contains_nul(content)
        return [label + b" ", *_literal(content, binary=has_nul)]

    def _binary_content(self, section: Section) -> bytes | memoryview:
        """The decoded content of a BINARY section: b"" when the part does not exist."""
        root = self.root
        part = _find_part(root, section.part)
        if part is None:
            return b""
        if part.is_multipart or part.message is not None:
            # RFC 9051 §6.4.5: BINARY can only be requested for leaf body parts. (Dovecot
            # decodes every leaf inside instead.)
            raise FetchError(
                "BINARY can only fetch a single body part, not a multipart or an "
                "encapsulated message (RFC 9051 section 6.4.5)", code="CANNOT")
        body = _decode_transfer_encoding(
            self._range_raw(part.body_start, part.body_end), part.encoding)
        if section.part:
            return body
        # BINARY[] of a single-part message: its header, then the decoded body. Like
        # Dovecot, a decoded body gets "Content-Transfer-Encoding: binary" in the header.
        return self._binary_header(part) + bytes(body)

    def _range_raw(self, start: int, end: int) -> memoryview | bytes:
        self._need_data()
        return self._slice(start, end) if start < end else b""

    def _binary_header(self, part: Part) -> bytes:
        data = self._need_data()
        if part.encoding not in ("base64", "quoted-printable"):
            return bytes(data[part.header_start:part.body_start])
        pieces: list[bytes] = []
        fields_end = part.header_start
        for name, field_start, field_end in header_fields(data, part.header_start,
                                                          part.body_start):
            fields_end = field_end
            if name != b"content-transfer-encoding":
                pieces.append(data[field_start:field_end])
        pieces.append(b"Content-Transfer-Encoding: binary\r\n")
        if fields_end < part.body_start:
            pieces.append(b"\r\n")
        return b"".join(pieces)


#: Longest HEADER.FIELDS list matched with one compiled expression; longer (rare, hostile)
#: lists take the field-by-field path rather than compiling a huge pattern.
MAX_FIELDS_PATTERN_NAMES = 100


def _ends_with_blank_line(block: bytes) -> bool:
    """A header block ends with a blank line, unless the message has neither it nor a body."""
    return block.endswith((b"\n\r\n", b"\n\n")) or block in (b"\r\n", b"\n")


@lru_cache(maxsize=256)
def _fields_pattern(names: tuple[str, ...]) -> re.Pattern[bytes] | None:
    """One field among ``names`` with its continuation lines (RFC 5322 §2.2, §2.2.3).

    A field is a line that starts with its name, optional white space and ":" (the obsolete
    syntax of RFC 5322 §4.5 allows the white space); lines starting with SP or HTAB continue
    it. The same rules as mailkeep.mime.header.header_fields, in one C-speed scan.
    """
    encoded = [name.encode("utf-8", "surrogateescape") for name in names]
    usable = [name for name in encoded if name and b":" not in name and b"\n" not in name]
    if len(usable) > MAX_FIELDS_PATTERN_NAMES:
        return None
    if not usable:
        return re.compile(rb"(?!)")  # matches nothing
    alternatives = b"|".join(re.escape(name) for name in usable)
    return re.compile(rb"^(?:" + alternatives + rb")[ \t]*+:[^\n]*+(?:\n[ \t][^\n]*+)*+\n?",
                      re.IGNORECASE | re.MULTILINE)


def _header_subset_slow(block: bytes, names: Sequence[str], keep: bool) -> bytes:
    # A line that is not a field has the empty name: no requested name selects it.
    wanted = {name.lower().encode("utf-8", "surrogateescape") for name in names} - {b""}
    pieces: list[bytes] = []
    fields_end = 0
    for field_name, field_start, field_end in header_fields(block, 0, len(block)):
        fields_end = field_end
        if (field_name in wanted) == keep:
            pieces.append(block[field_start:field_end])
    if fields_end < len(block):
        pieces.append(b"\r\n")
    return b"".join(pieces)


def _contains_nul(content: bytes | memoryview) -> bool:
    if isinstance(content, bytes):
        return b"\x00" in content
    return _NUL.search(content) is not None


_NUL = re.compile(rb"\x00")


def _find_part(root: Part, numbers: Sequence[int]) -> Part | None:
    """The part that section numbers name (RFC 9051 §6.4.5), the root for (), or None.

    The parts of a multipart are numbered from 1; a part that is not a multipart has only a
    part 1, itself (so "2.1" is part 2 when part 2 is a leaf, as in Dovecot and UW-IMAP);
    numbers after a message/rfc822 part count the parts of the encapsulated message.
    """
    part = root
    last = len(numbers) - 1
    for index, number in enumerate(numbers):
        if part.is_multipart:
            if number < 1 or number > len(part.children):
                return None
            part = part.children[number - 1]
        elif number != 1 or (index < last and part.message is None):
            return None
        if index < last and part.message is not None:
            part = part.message
    return part


def _section_range(root: Part, section: Section) -> tuple[int, int] | None:
    """The byte range of a BODY section (RFC 9051 §6.4.5), or None if it does not exist.

    For HEADER.FIELDS(.NOT) it is the whole header block; the caller picks the fields.
    """
    part = _find_part(root, section.part)
    if part is None:
        return None
    text = section.text
    if text is None:
        if not section.part:
            return part.header_start, part.body_end  # BODY[]: header and body
        return part.body_start, part.body_end
    if text == "MIME":
        if not section.part:
            return None  # MIME needs a part number (RFC 9051 §6.4.5)
        return part.header_start, part.body_start
    if section.part:
        # HEADER and TEXT after part numbers are those of an encapsulated message.
        if part.message is None:
            return None
        part = part.message
    if text == "TEXT":
        return part.body_start, part.body_end
    return part.header_start, part.body_start


# -- Content-Transfer-Encoding (RFC 2045 §6) --------------------------------------------------

def _decode_transfer_encoding(raw: bytes | memoryview, encoding: str) -> bytes | memoryview:
    """Remove the transfer encoding of a body; raises FetchError UNKNOWN-CTE (RFC 3516 §4.3).

    Damaged encodings are decoded leniently (mailkeep.mime.transfer) rather than failing
    the FETCH as Dovecot does ("NO [PARSE]").
    """
    decoded = decode_body(raw, encoding)
    if decoded is None:
        raise FetchError(f"Unknown Content-Transfer-Encoding {encoding}", code="UNKNOWN-CTE")
    return decoded


# -- PREVIEW (RFC 8970) ----------------------------------------------------------------------


def message_preview(root: Part, data: MessageBuffer,
                    limits: FetchLimits = DEFAULT_FETCH_LIMITS) -> str:
    """The PREVIEW text of a message (RFC 8970 §3.1): "" when it has no text to show.

    The text part is chosen as Dovecot does: the message itself if it is text/*; in a
    multipart/alternative its text/plain child, else its last text/html, else its last
    other text/*; in other multiparts the first usable part, depth first. Encapsulated
    messages are not looked into (a forwarded message is not this message's text).
    HTML is reduced to its text, lines quoted with ">" are left out (unless nothing else is
    left), white space is collapsed, and the result is cut to 200 characters and 256 octets.
    """
    part = _preview_part(root)
    if part is None:
        return ""
    end = min(part.body_end, part.body_start + limits.preview_input_bytes)
    with memoryview(_searchable(data)) as view, view[part.body_start:end] as encoded:
        if part.encoding == "base64":
            raw = decode_base64(encoded)
        elif part.encoding == "quoted-printable":
            raw = decode_quoted_printable(encoded)
        else:
            raw = bytes(encoded)
    text = decode_charset(raw, part.params.get("charset"))
    if part.content_type == "text/html":
        text = _html_to_text(text)
    return _snippet(text)


def _preview_part(root: Part) -> Part | None:
    stack = [root]
    while stack:
        part = stack.pop()
        content_type = part.content_type
        if content_type.startswith("text/"):
            return part
        if not part.is_multipart:
            continue
        if content_type == "multipart/alternative":
            # The plain text version is the best preview; only direct children count.
            html_part = text_part = None
            for child in part.children:
                if child.content_type == "text/plain":
                    return child
                if child.content_type == "text/html":
                    html_part = child
                elif child.content_type.startswith("text/"):
                    text_part = child
            chosen = html_part or text_part
            if chosen is not None:
                return chosen
            continue
        stack.extend(reversed(part.children))
    return None


# White space as C's isspace() knows it: NBSP and other Unicode spaces are kept, as Dovecot
# keeps them.
_SPACE = re.compile(r"[ \t\n\v\f\r]+")


def _snippet(text: str) -> str:
    if "\x00" in text or "\ufeff" in text:
        text = text.replace("\x00", "").replace("\ufeff", "")
    normal: list[str] = []
    quoted: list[str] = []
    for line in text.split("\n"):
        if line.startswith(">"):
            quoted.append(line[1:])
        else:
            normal.append(line)
    preview = _SPACE.sub(" ", "\n".join(normal)).strip(" ")
    if not preview:
        # Only quoted text: show it, marked as a quote (as Dovecot does).
        rest = _SPACE.sub(" ", "\n".join(quoted)).strip(" ")
        preview = ">" + rest if rest else ""
    preview = preview[:PREVIEW_MAX_CHARS].rstrip(" ")
    encoded = preview.encode("utf-8", "replace")
    if len(encoded) > PREVIEW_MAX_OCTETS:
        # RFC 8970 §3.1 caps the octets too; Dovecot counts only characters.
        preview = encoded[:PREVIEW_MAX_OCTETS].decode("utf-8", "ignore").rstrip(" ")
    return preview


# HTML to text for previews, the way Dovecot's html2text does it: tags become white space;
# comments, scripts and style sheets vanish; CDATA is text; blockquotes (quoted replies) are
# left out; character references are decoded. Possessive quantifiers keep hostile markup
# linear.
_HTML_TOKEN = re.compile(
    r"<!--.*?(?:--[ \t\r\n]*+>|\Z)"
    r"|<(?P<raw>script|style)(?=[ \t\r\n>]).*?(?:</(?P=raw)>|\Z)"
    r"|<!\[CDATA\[(?P<cdata>.*?)(?:\]\]>|\Z)"
    r"|(?P<tag><(?:\"[^\"]*+\"?|'[^']*+'?|[^>\"']++)*+>?)"
    r"|&(?:(?P<entity>[^ \t\r\n;&<]{0,9});)?",
    re.IGNORECASE | re.DOTALL,
)
_BLOCKQUOTE_OPEN = re.compile(r"<blockquote[ \t\r\n>]", re.IGNORECASE)
_NUMERIC_ENTITY = re.compile(r"#(?:([0-9]{1,8})|x([0-9a-fA-F]{1,7}))")
# Case-insensitive fallback (Dovecot matches names case-insensitively); on a clash such as
# &EACUTE; the lower-case entity wins, since it sorts last.
_ENTITIES_FOLDED = {name.lower(): code for name, code in
                    sorted(html.entities.name2codepoint.items())}


def _html_entity(name: str) -> str:
    code = html.entities.name2codepoint.get(name)
    if code is None:
        code = _ENTITIES_FOLDED.get(name.lower())
    if code is None:
        numeric = _NUMERIC_ENTITY.fullmatch(name)
        if numeric is None:
            return ""  # unknown entities vanish
        code = int(numeric.group(1)) if numeric.group(1) else int(numeric.group(2), 16)
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return ""
    return chr(code)


def _html_to_text(markup: str) -> str:
    out: list[str] = []
    quote_level = 0
    position = 0
    for match in _HTML_TOKEN.finditer(markup):
        if quote_level == 0 and match.start() > position:
            out.append(markup[position:match.start()])
        position = match.end()
        token = match.group(0)
        if token.startswith("&"):
            entity = match.group("entity")
            if entity is not None and quote_level == 0:
                out.append(_html_entity(entity))
            # A bare "&" is dropped, as Dovecot does.
        elif match.group("tag") is not None:
            if _BLOCKQUOTE_OPEN.match(token):
                quote_level += 1
            elif quote_level and token[:13].lower() == "</blockquote>":
                quote_level -= 1
            out.append(" ")
        elif match.group("raw") is not None:
            out.append(" ")
        elif match.group("cdata") is not None and quote_level == 0:
            out.append(match.group("cdata"))
    if quote_level == 0:
        out.append(markup[position:])
    return "".join(out)
