"""Modified UTF-7, the mailbox-name encoding of IMAP4rev1 (RFC 3501 §5.1.3).

Used here for Maildir++ folder names, which Dovecot writes in this encoding on disk. The
IMAP server will need the same codec for clients that do not enable UTF8=ACCEPT
(RFC 6855); it may move to the IMAP package then.

The rules (RFC 3501 §5.1.3): printable US-ASCII (0x20-0x7E) except "&" stands for itself;
"&" is written "&-"; every other character is encoded as UTF-16 in modified BASE64 (RFC
2045 BASE64 with "," instead of "/", no "=" padding) between "&" and "-".
"""

from __future__ import annotations

import base64
import binascii

_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _is_direct(char: str) -> bool:
    return 0x20 <= ord(char) <= 0x7E


def encode(name: str) -> str:
    """Encode a Unicode mailbox name; raises ValueError for lone surrogates."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if not pending:
            return
        try:
            raw = "".join(pending).encode("utf-16-be")
        except UnicodeEncodeError:
            raise ValueError("a mailbox name cannot contain lone surrogates") from None
        text = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
        out.append(f"&{text}-")
        pending.clear()

    for char in name:
        if _is_direct(char):
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode(text: str, *, strict: bool = True) -> str:
    """Decode a modified UTF-7 name; raises ValueError if it is not well formed.

    ``strict`` also refuses non-canonical spellings that RFC 3501 §5.1.3 forbids (printable
    ASCII inside a BASE64 run, two adjacent runs, non-zero padding bits); ``strict=False``
    accepts them, which is useful for names written by lenient software.
    """
    out: list[str] = []
    i = 0
    length = len(text)
    while i < length:
        char = text[i]
        if not _is_direct(char):
            raise ValueError(f"character {char!r} cannot appear in modified UTF-7")
        if char != "&":
            out.append(char)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated '&' sequence in modified UTF-7")
        chunk = text[i + 1:end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if not set(chunk) <= _BASE64_CHARS:
            raise ValueError(f"invalid characters in modified UTF-7 sequence &{chunk}-")
        padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
        try:
            raw = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"invalid BASE64 in modified UTF-7 sequence &{chunk}-") from None
        if len(raw) % 2:
            raise ValueError(f"modified UTF-7 sequence &{chunk}- is not whole UTF-16 units")
        try:
            decoded = raw.decode("utf-16-be")
        except UnicodeDecodeError:
            raise ValueError(f"modified UTF-7 sequence &{chunk}- is not valid UTF-16") from None
        out.append(decoded)
    result = "".join(out)
    if strict and encode(result) != text:
        raise ValueError(f"{text!r} is not canonical modified UTF-7")
    return result
