"""ESMTP parameters of MAIL FROM and RCPT TO, and the xtext encoding they use.

Keywords and values follow RFC 5321 §4.1.2 (esmtp-param); the parameters understood are
SIZE (RFC 1870), BODY (RFC 6152 8BITMIME, RFC 3030 BINARYMIME), SMTPUTF8 (RFC 6531),
RET/ENVID/NOTIFY/ORCPT (RFC 3461 DSN), AUTH (RFC 4954 §5) and REQUIRETLS (RFC 8689).
A parameter is only accepted if the server advertised its extension in this session
(``Advertised``); anything else is answered 555 5.5.4 (RFC 5321 §4.1.1.11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .reply import Reply

__all__ = [
    "Advertised",
    "MailParams",
    "ParamError",
    "RcptParams",
    "parse_mail_params",
    "parse_rcpt_params",
    "xtext_decode",
    "xtext_encode",
]

# Named limits. RFC 3461 §4.4: ENVID at most 100 characters; §4.2: ORCPT at most 500.
MAX_ENVID = 100
MAX_ORCPT = 500
MAX_PARAMS = 16            # far more than any real client sends on one command
MAX_SIZE_DIGITS = 20       # RFC 1870 §3: size-value = 1*20DIGIT

PARAM_ERROR = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameters not recognized or not implemented")


class ParamError(ValueError):
    """A parameter that is unknown, not advertised, duplicated or malformed."""

    def __init__(self, message: str, reply: Reply = PARAM_ERROR) -> None:
        super().__init__(message)
        self.reply = Reply(reply.code, reply.enhanced, message)


@dataclass(frozen=True)
class Advertised:
    """Which extensions this session announced; decides which parameters are legal.

    After HELO (not EHLO) nothing was announced, so every parameter is refused
    (RFC 5321 §4.1.1.1: extensions exist only after EHLO).
    """

    size: bool = False
    eightbitmime: bool = False
    binarymime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    auth: bool = False
    requiretls: bool = False


NONE_ADVERTISED = Advertised()


@dataclass(frozen=True)
class MailParams:
    """Parameters of MAIL FROM, decoded."""

    size: int | None = None           # RFC 1870 declared size
    body: str | None = None           # "7BIT" | "8BITMIME" | "BINARYMIME"
    smtputf8: bool = False            # RFC 6531 §3.4
    ret: str | None = None            # RFC 3461 §4.3: "FULL" | "HDRS"
    envid: str | None = None          # RFC 3461 §4.4, xtext-decoded
    auth: str | None = None           # RFC 4954 §5, xtext-decoded mailbox or "<>"
    requiretls: bool = False          # RFC 8689 §4.1
    extra: tuple[tuple[str, str | None], ...] = ()   # keywords the caller allowed through


@dataclass(frozen=True)
class RcptParams:
    """Parameters of RCPT TO, decoded."""

    notify: tuple[str, ...] | None = None     # RFC 3461 §4.1: ("NEVER",) or SUCCESS/FAILURE/DELAY
    orcpt: tuple[str, str] | None = None      # RFC 3461 §4.2: (addr-type, decoded address)
    extra: tuple[tuple[str, str | None], ...] = ()


# RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
# esmtp-value = 1*(%d33-60 / %d62-126), and RFC 6531 §3.3 adds UTF8-non-ascii.
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e\u00a0-\ud7ff\ue000-\U0010ffff]+$")
# RFC 3461 §4: hexchar = "+" 2(%x30-39 / %x41-46). Lower-case hex is accepted too: being
# lenient here cannot change the meaning of anything.
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
_XCHAR_OK = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*$")
# RFC 3461 §4.2: addr-type = atom; RFC 6533 §3 utf-8-addr-xtext uses \x{HEX}.
_ADDR_TYPE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$")
_UNICODE_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def xtext_encode(text: str) -> str:
    """Encode as RFC 3461 §4 xtext: "+", "=", controls, space and non-ASCII become +XX.

    Non-ASCII characters are encoded octet by octet from their UTF-8 form.
    """
    out = []
    for byte in text.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 §4 xtext. Raises ValueError on malformed input or invalid UTF-8."""
    if not _XCHAR_OK.match(text):
        raise ValueError("malformed xtext")
    raw = _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ValueError("xtext does not decode to UTF-8") from None


def _split(params_text: str) -> list[tuple[str, str | None]]:
    """Split "KEY=value KEY2" into (upper-case keyword, value) pairs, checking the grammar."""
    pairs: list[tuple[str, str | None]] = []
    if not params_text:
        return pairs
    words = params_text.split(" ")
    if len(words) > MAX_PARAMS:
        raise ParamError("too many parameters")
    seen: set[str] = set()
    for word in words:
        if not word:
            continue      # tolerate runs of spaces between parameters
        keyword, sep, value = word.partition("=")
        if not _KEYWORD.match(keyword):
            raise ParamError(f"malformed parameter {keyword[:40]!r}")
        if sep and not _VALUE.match(value):
            raise ParamError(f"malformed value for {keyword.upper()[:40]}")
        upper = keyword.upper()
        if upper in seen:
            raise ParamError(f"duplicate parameter {upper[:40]}")
        seen.add(upper)
        pairs.append((upper, value if sep else None))
    return pairs


def _require_value(keyword: str, value: str | None) -> str:
    if value is None:
        raise ParamError(f"{keyword} requires a value")
    return value


def _forbid_value(keyword: str, value: str | None) -> None:
    if value is not None:
        raise ParamError(f"{keyword} takes no value")


def parse_mail_params(
    params_text: str,
    advertised: Advertised,
    *,
    allow_extra: frozenset[str] = frozenset(),
) -> MailParams:
    """Parse the parameters after ``MAIL FROM:<...>``. Raises ParamError (555 5.5.4).

    ``allow_extra``: upper-case keywords of further extensions the caller advertises;
    they are returned undecoded in ``extra``.
    """
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    requiretls = False
    extra: list[tuple[str, str | None]] = []
    for keyword, value in _split(params_text):
        if keyword == "SIZE" and advertised.size:
            text = _require_value(keyword, value)
            # RFC 1870 §3: size-value = 1*20DIGIT.
            if not text.isdigit() or not text.isascii() or len(text) > MAX_SIZE_DIGITS:
                raise ParamError("SIZE must be a number")
            size = int(text)
        elif keyword == "BODY" and (advertised.eightbitmime or advertised.binarymime):
            text = _require_value(keyword, value).upper()
            # RFC 6152 §2: BODY=7BIT|8BITMIME; RFC 3030 §3: BODY=BINARYMIME.
            allowed = {"7BIT"}
            if advertised.eightbitmime:
                allowed.add("8BITMIME")
            if advertised.binarymime:
                allowed.add("BINARYMIME")
            if text not in allowed:
                raise ParamError(f"BODY must be one of {', '.join(sorted(allowed))}")
            body = text
        elif keyword == "SMTPUTF8" and advertised.smtputf8:
            _forbid_value(keyword, value)     # RFC 6531 §3.4: no value
            smtputf8 = True
        elif keyword == "RET" and advertised.dsn:
            text = _require_value(keyword, value).upper()
            if text not in ("FULL", "HDRS"):     # RFC 3461 §4.3
                raise ParamError("RET must be FULL or HDRS")
            ret = text
        elif keyword == "ENVID" and advertised.dsn:
            text = _require_value(keyword, value)
            try:
                decoded = xtext_decode(text)
            except ValueError as exc:
                raise ParamError(f"ENVID: {exc}") from None
            # RFC 3461 §4.4: at most 100 characters, printable US-ASCII only.
            if len(decoded) > MAX_ENVID or not all(0x20 <= ord(c) < 0x7F for c in decoded):
                raise ParamError("ENVID must be at most 100 printable ASCII characters")
            envid = decoded
        elif keyword == "AUTH" and advertised.auth:
            text = _require_value(keyword, value)
            try:
                # RFC 4954 §5: AUTH=<> or AUTH=xtext(mailbox).
                auth = text if text == "<>" else xtext_decode(text)
            except ValueError as exc:
                raise ParamError(f"AUTH: {exc}") from None
        elif keyword == "REQUIRETLS" and advertised.requiretls:
            _forbid_value(keyword, value)     # RFC 8689 §4.1
            requiretls = True
        elif keyword in allow_extra:
            extra.append((keyword, value))
        else:
            raise ParamError(f"{keyword[:40]} not supported")
    return MailParams(size, body, smtputf8, ret, envid, auth, requiretls, tuple(extra))


def _decode_orcpt(value: str, smtputf8: bool) -> tuple[str, str]:
    """RFC 3461 §4.2 ORCPT=addr-type;xtext, with RFC 6533 §3 utf-8 address escapes."""
    addr_type, sep, encoded = value.partition(";")
    if not sep or not _ADDR_TYPE.match(addr_type) or not encoded:
        raise ParamError("ORCPT must be addr-type;address")
    if len(value) > MAX_ORCPT:
        raise ParamError("ORCPT longer than 500 characters")
    addr_type_upper = addr_type.upper()
    if not encoded.isascii():
        # RFC 6533 §3: raw UTF-8 (utf-8-addr-unitext) only in SMTPUTF8 transactions.
        if not (smtputf8 and addr_type_upper == "UTF-8"):
            raise ParamError("ORCPT contains non-ASCII characters")
        return addr_type_upper, encoded
    try:
        decoded = xtext_decode(encoded)
    except ValueError as exc:
        raise ParamError(f"ORCPT: {exc}") from None
    if addr_type_upper == "UTF-8":
        try:
            decoded = _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), decoded)
        except (ValueError, OverflowError):
            raise ParamError("ORCPT: bad \\x{} escape") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in decoded):
        raise ParamError("ORCPT contains control characters")
    return addr_type_upper, decoded


def parse_rcpt_params(
    params_text: str,
    advertised: Advertised,
    *,
    smtputf8: bool = False,
    allow_extra: frozenset[str] = frozenset(),
) -> RcptParams:
    """Parse the parameters after ``RCPT TO:<...>``. Raises ParamError (555 5.5.4).

    ``smtputf8``: the transaction's MAIL FROM carried SMTPUTF8 (allows raw UTF-8 in ORCPT).
    """
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    extra: list[tuple[str, str | None]] = []
    for keyword, value in _split(params_text):
        if keyword == "NOTIFY" and advertised.dsn:
            items = _require_value(keyword, value).upper().split(",")
            # RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY, each once.
            if items == ["NEVER"]:
                notify = ("NEVER",)
            elif (
                all(item in ("SUCCESS", "FAILURE", "DELAY") for item in items)
                and len(set(items)) == len(items)
            ):
                notify = tuple(items)
            else:
                raise ParamError("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
        elif keyword == "ORCPT" and advertised.dsn:
            orcpt = _decode_orcpt(_require_value(keyword, value), smtputf8)
        elif keyword in allow_extra:
            extra.append((keyword, value))
        else:
            raise ParamError(f"{keyword[:40]} not supported")
    return RcptParams(notify, orcpt, tuple(extra))
