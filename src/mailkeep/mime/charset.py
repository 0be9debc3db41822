"""Turning bytes in a charset named by a message into text, safely and without ever raising.

Messages name their charsets in Content-Type (RFC 2046 §4.1.2), in encoded-words (RFC 2047 §2)
and in extended parameters (RFC 2231 §4). The names are often wrong or unknown, so this module
maps a label to a Python text codec with a few well-known aliases, refuses codecs that are not
mail charsets (``idna``, ``punycode``, ``unicode_escape`` and friends would turn attacker data
into something other than text), and falls back to UTF-8 with U+FFFD replacement characters.
"""

from __future__ import annotations

import codecs
from functools import lru_cache

#: Longest charset label we look up; real labels are short (RFC 2978 names are at most 40).
MAX_CHARSET_LABEL = 64

# Labels seen in real mail that Python does not know, or knows under a narrower meaning.
# gb2312/gbk are decoded as gb18030 (a superset) and latin-1/us-ascii as windows-1252, as
# web browsers do (WHATWG Encoding Standard), because mislabelled cp1252 text is common.
_ALIASES: dict[str, str] = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "x-sjis": "shift_jis",
    "x-euc-jp": "euc_jp",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cn-gb": "gb18030",
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "unicode-1-1-utf-7": "utf_7",
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "us-ascii": "ascii",
    "ascii": "ascii",
    "ansi_x3.4-1968": "ascii",
    "x-unknown": "utf-8",
    "unknown": "utf-8",
    "unknown-8bit": "utf-8",
    "x-user-defined": "utf-8",
    "default": "utf-8",
    "utf8": "utf-8",
}

# Python codecs that are not character sets a message may legitimately use.
_REFUSED_CODECS = frozenset({
    "idna", "punycode", "raw-unicode-escape", "unicode-escape", "undefined", "mbcs", "oem",
    "charmap", "palmos",
})


def codec_for(label: str) -> str | None:
    """The Python codec name for a charset label, or None if it is unknown or refused."""
    # RFC 2231 §5 lets an encoded-word carry a language after "*": "us-ascii*en".
    name = label.partition("*")[0].strip().strip('"').lower()
    if not name or len(name) > MAX_CHARSET_LABEL:
        return None  # checked before the cache, so hostile labels never fill it
    return _lookup(name)


@lru_cache(maxsize=256)
def _lookup(name: str) -> str | None:
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _REFUSED_CODECS:
        return None
    # Bytes-to-bytes codecs (zlib, base64, ...) are not text encodings.
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_charset(data: bytes, label: str | None) -> str:
    """Decode ``data`` as the charset ``label``; never raises.

    Unknown or refused labels decode as UTF-8. Bytes that are invalid in the charset become
    U+FFFD. Text labelled ASCII that is not ASCII is tried as UTF-8 first, since that is what
    mislabelled mail usually is.
    """
    codec = codec_for(label) if label else None
    if codec == "ascii":
        if data.isascii():
            return data.decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            codec = "cp1252"
    if codec is None:
        codec = "utf-8"
    try:
        return data.decode(codec, "replace")
    except Exception:  # a stateful codec can still fail on hostile input (e.g. utf-7)
        return data.decode("utf-8", "replace")
