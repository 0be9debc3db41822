"""Content-Transfer-Encoding decoding (RFC 2045 §6), shared by FETCH BINARY/PREVIEW and the
full-text index so that what a client reads and what SEARCH matches are the same bytes.

Damaged encodings are decoded the robust way RFC 2045 recommends (§6.7 note 2: keep a bad
"=XY" as it is; §6.7 rule 3: trailing white space on an encoded line is transport padding;
§6.8: ignore characters outside the base64 alphabet) rather than failing.
"""

from __future__ import annotations

import binascii
import re

from mailkeep.mime.params import IDENTITY_ENCODINGS

# RFC 2045 §6.7 rule (3): white space at the end of an encoded line is transport padding and
# is deleted when decoding; this also turns "= " before a line end into a soft line break.
_QP_TRAILING_SPACE = re.compile(rb"[ \t]+(?=\r?\n|\Z)")
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


def decode_base64(raw: bytes | memoryview) -> bytes:
    try:
        return binascii.a2b_base64(raw)
    except (binascii.Error, ValueError):
        # Incorrect padding: decode the complete groups and what can be made of the rest.
        cleaned = _BASE64_JUNK.sub(b"", raw)
        if len(cleaned) % 4 == 1:
            cleaned = cleaned[:-1]
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            return binascii.a2b_base64(cleaned)
        except (binascii.Error, ValueError):  # pragma: no cover - cleaned is valid base64
            return b""


def decode_quoted_printable(raw: bytes | memoryview) -> bytes:
    return binascii.a2b_qp(_QP_TRAILING_SPACE.sub(b"", raw))


def decode_body(raw: bytes | memoryview, encoding: str) -> bytes | memoryview | None:
    """A body without its transfer encoding (``encoding`` lower-cased); None when the
    encoding is unknown (IMAP: UNKNOWN-CTE, RFC 3516 §4.3)."""
    if encoding in IDENTITY_ENCODINGS:
        return raw
    if encoding == "base64":
        return decode_base64(raw)
    if encoding == "quoted-printable":
        return decode_quoted_printable(raw)
    return None
