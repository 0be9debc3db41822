"""Byte-offset MIME indexing, so IMAP can answer FETCH without reparsing a message.

At delivery the store calls :func:`index_message` on the stored bytes and keeps
:func:`to_json` of the result. IMAP then answers ENVELOPE (:func:`imap_envelope`),
BODY / BODYSTRUCTURE (:func:`imap_bodystructure`) and BODY[section] (:func:`find_section`,
plus :func:`header_fields` for HEADER.FIELDS) from the index and one read of the file.

Standards: RFC 5322 (message format, address lists), RFC 2045/2046 (MIME, multipart,
message/rfc822), RFC 2047 (encoded-words), RFC 2231 (parameter continuations and charsets),
RFC 6532 (UTF-8 headers, message/global), RFC 9051 §6.4.5 and §7.5.2 (IMAP sections,
ENVELOPE, BODYSTRUCTURE). Everything is pure: no I/O, no clock.
"""

from mailkeep.mime.address_list import Group, Mailbox, parse_address_list
from mailkeep.mime.envelope import Envelope, EnvelopeAddress
from mailkeep.mime.header import decode_header_value, header_fields
from mailkeep.mime.imap import find_section, imap_bodystructure, imap_envelope
from mailkeep.mime.serialize import IndexFormatError, from_json, to_json
from mailkeep.mime.structure import MimeLimits, Part, index_message, iter_parts

__all__ = [
    "Envelope",
    "EnvelopeAddress",
    "Group",
    "IndexFormatError",
    "Mailbox",
    "MimeLimits",
    "Part",
    "decode_header_value",
    "find_section",
    "from_json",
    "header_fields",
    "imap_bodystructure",
    "imap_envelope",
    "index_message",
    "iter_parts",
    "parse_address_list",
    "to_json",
]
