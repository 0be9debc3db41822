"""The sans-IO SMTP client core (RFC 5321) for outbound delivery and relayhost submission.

Pure pieces that the asyncio session (``mailkeep.outbound.client``) strings together; none
of them touches a socket, a clock or a file:

- ``ReplyReader``: bytes in, ``Reply`` values out. Multi-line replies (RFC 5321 §4.2.1),
  enhanced status codes (RFC 2034, RFC 3463), replies split across reads, and hard limits
  on line length, lines per reply and reply size; anything else is a ``ReplyError``.
- ``parse_ehlo`` and helpers: the EHLO keywords a server announced (RFC 5321 §4.1.1.1).
- ``plan_transaction``: which MAIL/RCPT commands and parameters to send for one message,
  DATA or BDAT, pipelined or lock-step, or a local refusal when the peer cannot take the
  message at all (SIZE RFC 1870, SMTPUTF8 RFC 6531, REQUIRETLS RFC 8689, BINARYMIME
  RFC 3030). PIPELINING (RFC 2920) groups are the plan's commands written in one go.
- ``BodyEncoder``: message content to wire octets: stray CR or LF become CRLF, DATA
  content is dot-stuffed (RFC 5321 §4.5.2) and ends with CRLF "." CRLF; BDAT chunks
  (RFC 3030) are normalized but not stuffed. No bare CR or LF ever leaves this module, so a
  receiver cannot be tricked into seeing a message end where we did not mean it to
  ("SMTP smuggling", see ``mailkeep.smtp.data``).
- SASL clients for AUTH (RFC 4954): SCRAM-SHA-256(-PLUS) (RFC 5802, RFC 7677, via scramp),
  PLAIN (RFC 4616) and LOGIN.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import scramp

from .address import AddressError, parse_address
from .params import xtext_encode
from .reply import Reply

__all__ = [
    "AUTH_PREFERENCE",
    "DATA",
    "NOOP",
    "QUIT",
    "RSET",
    "STARTTLS",
    "BodyEncoder",
    "ClientLimits",
    "Envelope",
    "LoginClient",
    "PlainClient",
    "PlannedRecipient",
    "Recipient",
    "ReplyError",
    "ReplyReader",
    "SaslClient",
    "SaslClientError",
    "ScramClient",
    "TransactionPlan",
    "auth_command",
    "auth_mechanisms",
    "auth_response",
    "bdat_command",
    "choose_mechanism",
    "decode_challenge",
    "ehlo_command",
    "helo_command",
    "mail_command",
    "make_sasl_client",
    "orcpt_parameter",
    "parse_ehlo",
    "plan_transaction",
    "rcpt_command",
    "size_limit",
]


# --- limits ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientLimits:
    """What the client accepts from a peer, and how it cuts message content.

    RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets, but real servers send longer
    ones (long EHLO AUTH lists, verbose policy texts); the defaults accept four times that
    and still bound memory per connection. ``chunk_size`` is both the read size for the
    queue file and the largest BDAT chunk.
    """

    max_reply_line: int = 2048        # octets, CRLF included
    max_reply_lines: int = 200        # lines in one (multi-line) reply
    max_reply_bytes: int = 64 * 1024  # octets in one reply
    chunk_size: int = 64 * 1024       # octets read from the message file at a time
    max_auth_steps: int = 10          # 334 challenges in one AUTH exchange

    def __post_init__(self) -> None:
        if self.max_reply_line < 512:
            raise ValueError("max_reply_line must be at least 512 (RFC 5321 §4.5.3.1.5)")
        if self.max_reply_lines < 1 or self.max_reply_bytes < self.max_reply_line:
            raise ValueError("max_reply_lines must be positive and max_reply_bytes at least "
                             "max_reply_line")
        if self.chunk_size < 1 or self.max_auth_steps < 1:
            raise ValueError("chunk_size and max_auth_steps must be positive")


# --- replies -----------------------------------------------------------------------------------

class ReplyError(ValueError):
    """The peer sent something that is not a valid SMTP reply; the text says what."""


# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39 (1yz is not used by SMTP).
_CODE = re.compile(rb"[2-5][0-5][0-9]")
# RFC 3463 §2 status-code at the start of the text (RFC 2034 §4), class 2, 4 or 5.
_ENHANCED_PREFIX = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")
# Controls other than TAB in reply text become spaces: the text ends up in logs and
# bounces, where a stray CR or escape sequence could forge lines.
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _excerpt(raw: bytes | bytearray, limit: int = 60) -> str:
    return repr(bytes(raw[:limit])) + ("..." if len(raw) > limit else "")


class ReplyReader:
    """Collects replies from the bytes a server sends.

    ``receive_data`` appends input; ``next_reply`` returns the next complete reply or None
    when more input is needed, and raises ``ReplyError`` for input that is not SMTP.
    Lines end with CRLF (RFC 5321 §2.3.8); a bare LF is accepted too, since being liberal
    here cannot change what we send and some appliances do it.
    """

    __slots__ = ("_buffer", "_code", "_lines", "_size", "limits")

    def __init__(self, limits: ClientLimits | None = None) -> None:
        self.limits = limits or ClientLimits()
        self._buffer = bytearray()
        self._code: bytes | None = None     # code of the multi-line reply being collected
        self._lines: list[str] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        """Octets received and not yet returned as part of a reply."""
        return len(self._buffer) + self._size

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def discard_buffered(self) -> int:
        """Forget everything not yet returned; return how many octets that was.

        After "220 Ready to start TLS" anything still buffered was sent in plaintext
        before the handshake and may have been injected by an attacker on the path
        (RFC 3207 §4.2, CVE-2011-0411 seen from the client side): it must not be read as
        replies of the encrypted session.
        """
        dropped = self.buffered
        self._buffer.clear()
        self._code = None
        self._lines = []
        self._size = 0
        return dropped

    def next_reply(self) -> Reply | None:
        limits = self.limits
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > limits.max_reply_line:
                    raise ReplyError(f"reply line longer than {limits.max_reply_line} octets: "
                                     f"{_excerpt(self._buffer)}")
                return None
            raw = bytes(self._buffer[:end + 1])
            del self._buffer[:end + 1]
            if len(raw) > limits.max_reply_line:
                raise ReplyError(f"reply line longer than {limits.max_reply_line} octets: "
                                 f"{_excerpt(raw)}")
            line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            code = line[:3]
            separator = line[3:4]
            if not _CODE.fullmatch(code) or separator not in (b"", b" ", b"-"):
                raise ReplyError(f"not an SMTP reply line: {_excerpt(raw)}")
            if self._code is not None and code != self._code:
                # RFC 5321 §4.2.1: every line of a multi-line reply has the same code.
                raise ReplyError(f"reply code changed within a multi-line reply: "
                                 f"{self._code.decode()} then {_excerpt(raw)}")
            self._size += len(raw)
            if self._size > limits.max_reply_bytes:
                raise ReplyError(f"reply longer than {limits.max_reply_bytes} octets")
            if len(self._lines) >= limits.max_reply_lines:
                raise ReplyError(f"reply has more than {limits.max_reply_lines} lines")
            text = line[4:].decode("utf-8", "replace")
            self._lines.append(_UNSAFE_TEXT.sub(" ", text))
            if separator == b"-":
                self._code = code
                continue
            reply = _make_reply(int(code), self._lines)
            self._code = None
            self._lines = []
            self._size = 0
            return reply


def _make_reply(code: int, lines: list[str]) -> Reply:
    """A Reply with the RFC 3463 code split off the text when it is there and consistent."""
    enhanced = None
    match = _ENHANCED_PREFIX.match(lines[0])
    # RFC 3463 §2: the class digit repeats the first digit of the basic code; a code that
    # does not is left in the text rather than trusted.
    if match and match.group(1) == str(code)[0]:
        enhanced = f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}"
        # RFC 2034 §4: every line carries the code; strip it wherever it is present.
        prefix = match.group(0).rstrip(" ")
        lines = ["" if line == prefix
                 else line[len(prefix) + 1:] if line.startswith(prefix + " ")
                 else line for line in lines]
    text: str | tuple[str, ...] = lines[0] if len(lines) == 1 else tuple(lines)
    return Reply(code, enhanced, text)


# --- EHLO ----------------------------------------------------------------------------------------

# RFC 5321 §4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-").
_EHLO_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """The extensions of a 250 EHLO reply: upper-case keyword -> its parameters ("" if none).

    The first line is the server's name (RFC 5321 §4.1.1.1). Lines that are not a keyword
    (empty lines, junk) are skipped. "AUTH=MECH ..." from servers that predate RFC 2554 is
    used only when no proper AUTH line is present.
    """
    capabilities: dict[str, str] = {}
    legacy_auth: str | None = None
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if _EHLO_KEYWORD.fullmatch(keyword):
            capabilities.setdefault(keyword.upper(), " ".join(params.split()))
        elif keyword.upper().startswith("AUTH=") and legacy_auth is None:
            legacy_auth = " ".join([keyword[5:], *params.split()])
    if "AUTH" not in capabilities and legacy_auth is not None:
        capabilities["AUTH"] = legacy_auth
    return capabilities


def size_limit(capabilities: Mapping[str, str]) -> int | None:
    """The peer's fixed message size limit (RFC 1870 §4), None when unknown or unlimited."""
    params = capabilities.get("SIZE")
    if params is None:
        return None
    digits = params.split(" ", 1)[0]
    # RFC 1870 §4: 0 (or no parameter) means no fixed maximum.
    if not digits.isdigit() or len(digits) > 20 or int(digits) == 0:
        return None
    return int(digits)


def auth_mechanisms(capabilities: Mapping[str, str]) -> tuple[str, ...]:
    """The SASL mechanisms the peer announced with AUTH (RFC 4954 §3), upper-case."""
    return tuple(dict.fromkeys(m.upper() for m in capabilities.get("AUTH", "").split()))


# --- commands ------------------------------------------------------------------------------------

RSET = b"RSET\r\n"
DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
STARTTLS = b"STARTTLS\r\n"
NOOP = b"NOOP\r\n"

_COMMAND_TEXT = re.compile(r"[^\x00-\x1f\x7f]*")


def _safe(text: str, what: str) -> str:
    """Refuse text that could end a command line early or forge another command."""
    if not _COMMAND_TEXT.fullmatch(text):
        raise ValueError(f"{what} contains control characters: {text[:80]!r}")
    return text


def _line(text: str) -> bytes:
    return text.encode("utf-8") + b"\r\n"


def ehlo_command(name: str) -> bytes:
    """EHLO with our name (RFC 5321 §4.1.1.1); the name must be a domain or literal."""
    if not name or " " in name or not _COMMAND_TEXT.fullmatch(name):
        raise ValueError(f"the EHLO name must be a domain without spaces, not {name!r}")
    return _line(f"EHLO {name}")


def helo_command(name: str) -> bytes:
    ehlo_command(name)
    return _line(f"HELO {name}")


def mail_command(sender: str, parameters: Sequence[str] = ()) -> bytes:
    """MAIL FROM:<sender> [parameters] (RFC 5321 §4.1.1.2); "" is the null path."""
    text = f"MAIL FROM:<{_safe(sender, 'sender')}>"
    for parameter in parameters:
        text += " " + _safe(parameter, "MAIL parameter")
    return _line(text)


def rcpt_command(recipient: str, parameters: Sequence[str] = ()) -> bytes:
    """RCPT TO:<recipient> [parameters] (RFC 5321 §4.1.1.3)."""
    if not recipient:
        raise ValueError("a recipient cannot be the null path")
    text = f"RCPT TO:<{_safe(recipient, 'recipient')}>"
    for parameter in parameters:
        text += " " + _safe(parameter, "RCPT parameter")
    return _line(text)


def bdat_command(size: int, last: bool) -> bytes:
    """RFC 3030 §2: BDAT chunk-size [LAST]; the chunk's octets follow the CRLF directly."""
    if size < 0:
        raise ValueError("a chunk size cannot be negative")
    return f"BDAT {size}{' LAST' if last else ''}\r\n".encode("ascii")


def auth_command(mechanism: str, initial_response: bytes | None) -> bytes:
    """AUTH mechanism [initial-response] (RFC 4954 §4); "=" stands for an empty one."""
    _safe(mechanism, "mechanism")
    if initial_response is None:
        return _line(f"AUTH {mechanism}")
    encoded = base64.b64encode(initial_response).decode("ascii") or "="
    return _line(f"AUTH {mechanism} {encoded}")


def auth_response(data: bytes | None) -> bytes:
    """A client line answering a 334 challenge; None cancels the exchange ("*")."""
    if data is None:
        return b"*\r\n"
    return base64.b64encode(data) + b"\r\n"


def decode_challenge(reply: Reply) -> bytes:
    """The data of a 334 challenge (RFC 4954 §4: base64, possibly empty)."""
    text = reply.lines[0].strip()
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslClientError(f"the server's challenge is not base64: {text[:60]!r}",
                              temporary=True) from None


def orcpt_parameter(addr_type: str, address: str) -> str:
    """ORCPT=addr-type;xtext (RFC 3461 §4.2); non-ASCII addresses use the "utf-8" type
    with \\x{HEX} escapes (RFC 6533 §3, utf-8-addr-xtext), which is plain ASCII."""
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+", addr_type):
        raise ValueError(f"bad ORCPT address type {addr_type!r}")
    if address.isascii():
        return f"ORCPT={addr_type};{xtext_encode(address)}"
    escaped = "".join(ch if ch.isascii() else f"\\x{{{ord(ch):X}}}" for ch in address)
    return f"ORCPT=utf-8;{xtext_encode(escaped)}"


# --- planning a transaction ----------------------------------------------------------------------

@dataclass(frozen=True)
class Recipient:
    """One envelope recipient, with its DSN parameters (RFC 3461 §4.1-4.2)."""

    address: str
    notify: tuple[str, ...] | None = None     # ("NEVER",) or some of SUCCESS/FAILURE/DELAY
    orcpt: tuple[str, str] | None = None      # (addr-type, original address)


@dataclass(frozen=True)
class Envelope:
    """What the planner needs to know about a message (not its content)."""

    sender: str                                # "" for the null reverse path
    recipients: tuple[Recipient, ...]
    size: int                                  # octets of the message file
    body: str | None = None                    # None/"7BIT", "8BITMIME" or "BINARYMIME"
    smtputf8: bool = False                     # RFC 6531: UTF-8 headers or addresses
    ret: str | None = None                     # RFC 3461 §4.3: "FULL" or "HDRS"
    envid: str | None = None                   # RFC 3461 §4.4
    requiretls: bool = False                   # RFC 8689 §4


@dataclass(frozen=True)
class PlannedRecipient:
    address: str          # as given in the Envelope (the key of the results)
    command: bytes        # the RCPT TO line


@dataclass(frozen=True)
class TransactionPlan:
    """What to send for one message, decided from the peer's EHLO keywords.

    ``refused`` holds replies made up locally for recipients that cannot be sent at all
    (every recipient, when the whole message cannot go to this peer). ``recipients`` are
    the RCPT commands to send, in order. ``use_bdat``: CHUNKING instead of DATA.
    ``pipelined``: MAIL, all RCPTs and DATA go out as one group (RFC 2920 §3.1).
    ``binary``: BODY=BINARYMIME, content sent exactly as stored.
    """

    mail: bytes
    recipients: tuple[PlannedRecipient, ...]
    refused: dict[str, Reply] = field(default_factory=dict)
    use_bdat: bool = False
    pipelined: bool = False
    binary: bool = False


def _local(code: int, enhanced: str, text: str) -> Reply:
    # Replies made up here say so, so a bounce cannot be mistaken for the peer's words.
    return Reply(code, enhanced, f"{text} (not sent; decided by the sending server)")


_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _notify_parameter(notify: tuple[str, ...]) -> str:
    values = tuple(v.upper() for v in notify)
    # RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY.
    if values != ("NEVER",) and (not values or not set(values) <= _NOTIFY_VALUES
                                 or len(set(values)) != len(values)):
        raise ValueError(f"bad NOTIFY {notify!r}")
    return "NOTIFY=" + ",".join(values)


def plan_transaction(capabilities: Mapping[str, str], envelope: Envelope, *,
                     requiretls_ok: bool = False) -> TransactionPlan:
    """Decide how to send ``envelope`` to a peer that announced ``capabilities``.

    ``requiretls_ok``: the connection meets RFC 8689 §4.2.1 (TLS with a verified
    certificate, by PKIX or DANE); the peer must also announce REQUIRETLS.
    """
    has = capabilities.__contains__
    refused: dict[str, Reply] = {}
    everyone = [r.address for r in envelope.recipients]

    def refuse_all(reply: Reply) -> TransactionPlan:
        return TransactionPlan(b"", (), dict.fromkeys(everyone, reply))

    sender = ""
    utf8_address = False
    if envelope.sender:
        try:
            parsed = parse_address(envelope.sender, smtputf8=True)
        except AddressError as exc:
            return refuse_all(_local(550, "5.1.7", f"Bad sender address syntax: {exc}"))
        sender = str(parsed)
        utf8_address = parsed.utf8
    planned: list[tuple[str, str, Recipient]] = []
    seen: set[str] = set()
    for recipient in envelope.recipients:
        if recipient.address in seen:
            continue
        seen.add(recipient.address)
        try:
            parsed = parse_address(recipient.address, smtputf8=True)
        except AddressError as exc:
            refused[recipient.address] = _local(550, "5.1.3",
                                                f"Bad recipient address syntax: {exc}")
            continue
        utf8_address = utf8_address or parsed.utf8
        planned.append((recipient.address, str(parsed), recipient))

    body = (envelope.body or "7BIT").upper()
    needs_utf8 = envelope.smtputf8 or utf8_address
    # The checks below refuse the whole message for this peer, before any command.
    if needs_utf8 and not has("SMTPUTF8"):
        # RFC 6531 §3.2: no SMTPUTF8 transaction with a peer that does not offer it.
        # X.6.7 when an address needs it, X.6.9 when only the header does (§3.7.x codes).
        if utf8_address:
            return refuse_all(_local(553, "5.6.7", "Non-ASCII address, and the receiving "
                                     "server does not support SMTPUTF8"))
        return refuse_all(_local(554, "5.6.9", "UTF-8 message header, and the receiving "
                                 "server does not support SMTPUTF8"))
    if envelope.requiretls and not (requiretls_ok and has("REQUIRETLS")):
        # RFC 8689 §4.2.1: only over verified TLS to a peer that announces REQUIRETLS;
        # §5: 5.7.30 "REQUIRETLS support required".
        why = ("the receiving server does not announce REQUIRETLS" if requiretls_ok
               else "the connection's TLS certificate was not verified (PKIX or DANE)")
        return refuse_all(_local(550, "5.7.30", f"REQUIRETLS support required: {why}"))
    if body == "BINARYMIME" and not (has("BINARYMIME") and has("CHUNKING")):
        # RFC 3030 §3: binary content needs BINARYMIME with BDAT; we do not convert.
        return refuse_all(_local(554, "5.6.3", "Binary message, and the receiving server "
                                 "does not support BINARYMIME"))
    limit = size_limit(capabilities)
    if limit is not None and envelope.size > limit:
        # RFC 1870 §6.1: do not send what the server said it will not accept.
        return refuse_all(_local(552, "5.3.4", f"Message size {envelope.size} exceeds the "
                                 f"receiving server's limit of {limit}"))

    parameters: list[str] = []
    if has("SIZE"):
        parameters.append(f"SIZE={max(envelope.size, 0)}")
    if body == "BINARYMIME":
        parameters.append("BODY=BINARYMIME")
    elif body == "8BITMIME" and has("8BITMIME"):
        # Without 8BITMIME the body goes anyway, unlabelled, as Postfix does by default
        # (RFC 6152 §3 would have us convert; real servers take 8-bit data regardless).
        parameters.append("BODY=8BITMIME")
    if needs_utf8:
        parameters.append("SMTPUTF8")
    dsn = has("DSN")
    if dsn and envelope.ret:
        ret = envelope.ret.upper()
        if ret not in ("FULL", "HDRS"):
            raise ValueError(f"bad RET {envelope.ret!r}")
        parameters.append(f"RET={ret}")
    if dsn and envelope.envid:
        parameters.append(f"ENVID={xtext_encode(envelope.envid)}")
    if envelope.requiretls:
        parameters.append("REQUIRETLS")
    mail = mail_command(sender, parameters)

    commands = []
    for key, address, recipient in planned:
        rcpt_parameters = []
        if dsn and recipient.notify:
            rcpt_parameters.append(_notify_parameter(recipient.notify))
        if dsn and recipient.orcpt:
            rcpt_parameters.append(orcpt_parameter(*recipient.orcpt))
        commands.append(PlannedRecipient(key, rcpt_command(address, rcpt_parameters)))

    # BDAT needs no dot-stuffing and lets the server size buffers; but an 8-bit body to a
    # peer without 8BITMIME goes by DATA, the path such (old) peers have always taken
    # for unlabelled 8-bit mail, rather than in BDAT chunks implicitly declared 7-bit.
    use_bdat = body == "BINARYMIME" or (
        has("CHUNKING") and not (body == "8BITMIME" and not has("8BITMIME")))
    return TransactionPlan(mail, tuple(commands), refused, use_bdat=use_bdat,
                           pipelined=has("PIPELINING"), binary=body == "BINARYMIME")


# --- message content -----------------------------------------------------------------------------

_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


class BodyEncoder:
    """Message content to wire octets, piece by piece, never holding the whole message.

    ``encode(piece)`` returns the octets to send for the next piece of the file;
    ``finish()`` the rest: a CRLF if the content did not end with one, then for DATA the
    terminating "." CRLF (RFC 5321 §4.1.1.4). Every CR or LF that is not part of a CRLF
    becomes CRLF (RFC 5321 §2.3.8); a CR at the end of a piece waits for the next one,
    which may start with its LF. With ``dot_stuff`` (DATA), a line that starts with "."
    gets another one (RFC 5321 §4.5.2). ``binary`` (BDAT with BODY=BINARYMIME) passes the
    content through untouched.
    """

    __slots__ = ("_at_line_start", "_binary", "_dot_stuff", "_held_cr")

    def __init__(self, *, dot_stuff: bool, binary: bool = False) -> None:
        if binary and dot_stuff:
            raise ValueError("binary content cannot be sent with DATA")
        self._dot_stuff = dot_stuff
        self._binary = binary
        self._held_cr = False
        # The CRLF that ended the DATA command starts the first line (RFC 5321 §4.5.2).
        self._at_line_start = True

    def encode(self, piece: bytes) -> bytes:
        if self._binary or not piece:
            return piece
        if self._held_cr:
            piece = b"\r" + piece
            self._held_cr = False
        if piece.endswith(b"\r"):
            self._held_cr = True
            piece = piece[:-1]
            if not piece:
                return b""
        crlf = piece.count(b"\r\n")
        if piece.count(b"\r") != crlf or piece.count(b"\n") != crlf:
            piece = _ANY_NEWLINE.sub(b"\r\n", piece)
        if self._dot_stuff:
            if self._at_line_start and piece.startswith(b"."):
                piece = b"." + piece
            if b"\r\n." in piece:
                piece = piece.replace(b"\r\n.", b"\r\n..")
        self._at_line_start = piece.endswith(b"\r\n")
        return piece

    def finish(self) -> bytes:
        tail = b""
        if not self._binary and (self._held_cr or not self._at_line_start):
            tail = b"\r\n"
        self._held_cr = False
        self._at_line_start = True
        if self._dot_stuff:
            tail += b".\r\n"
        return tail


# --- AUTH (RFC 4954) -------------------------------------------------------------------------------

class SaslClientError(Exception):
    """An AUTH exchange cannot go on: the server's data is malformed, or it failed to prove
    its identity (SCRAM). ``temporary``: worth trying again later."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


class SaslClient(Protocol):
    """The client side of one SASL mechanism (RFC 4422 §3), without I/O or base64."""

    mechanism: str

    def initial_response(self) -> bytes | None:
        """Data for the AUTH command itself (RFC 4954 §4), or None to wait for a 334."""

    def respond(self, challenge: bytes) -> bytes:
        """The answer to a 334 challenge; raises SaslClientError."""

    def finish(self) -> None:
        """The server said 235; raises SaslClientError if it did not prove itself."""


class PlainClient:
    """PLAIN (RFC 4616): authzid empty, authcid and password in the initial response."""

    mechanism = "PLAIN"

    def __init__(self, username: str, password: str) -> None:
        if "\0" in username or "\0" in password:
            raise ValueError("PLAIN credentials cannot contain NUL")
        self._message = b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")
        self._sent = False

    def initial_response(self) -> bytes | None:
        self._sent = True
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        # A server that ignores initial responses sends an empty 334 first (RFC 4954 §4).
        if self._sent or challenge:
            raise SaslClientError("unexpected PLAIN challenge", temporary=True)
        self._sent = True
        return self._message

    def finish(self) -> None:
        return None


class LoginClient:
    """LOGIN (draft-murchison-sasl-login): user name, then password, each on request.

    The prompts' text ("Username:", "Password:") is not standardised; the order is.
    """

    mechanism = "LOGIN"

    def __init__(self, username: str, password: str) -> None:
        self._answers = [username.encode("utf-8"), password.encode("utf-8")]

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise SaslClientError("unexpected third LOGIN challenge", temporary=True)
        return self._answers.pop(0)

    def finish(self) -> None:
        return None


class ScramClient:
    """SCRAM-SHA-256 and -PLUS (RFC 5802, RFC 7677) on top of scramp's message logic.

    SCRAM is mutual: the server's final message proves it knows the password verifier,
    and ``finish`` refuses a 235 that came without that proof (RFC 5802 §5).
    ``channel_binding`` (type, data) is required for -PLUS; for plain SCRAM-SHA-256 it is
    left out, so the GS2 header says "n" (RFC 5802 §6: the client does not bind).
    """

    def __init__(self, mechanism: str, username: str, password: str,
                 channel_binding: tuple[str, bytes] | None = None) -> None:
        if mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"):
            raise ValueError(f"unsupported SCRAM mechanism {mechanism}")
        if mechanism.endswith("-PLUS") and channel_binding is None:
            raise ValueError(f"{mechanism} needs channel-binding data")
        self.mechanism = mechanism
        try:
            self._scram = scramp.ScramClient(
                [mechanism], username, password,
                channel_binding=channel_binding if mechanism.endswith("-PLUS") else None)
        except scramp.ScramException as exc:
            raise SaslClientError(f"cannot use these credentials with SCRAM: {exc}",
                                  temporary=False) from None
        self._step = 0
        self._verified = False

    def initial_response(self) -> bytes | None:
        self._step = 1
        return self._scram.get_client_first().encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        try:
            text = challenge.decode("utf-8")
            if self._step == 1:
                self._scram.set_server_first(text)
                self._step = 2
                return self._scram.get_client_final().encode("utf-8")
            if self._step == 2:
                self._scram.set_server_final(text)
                self._step = 3
                self._verified = True
                return b""                         # RFC 4954 §4: empty line, then 235
        except UnicodeDecodeError:
            raise SaslClientError("SCRAM challenge is not UTF-8", temporary=True) from None
        except scramp.ScramException as exc:
            # A wrong server signature means the server does not hold our verifier: not
            # something time will fix. A malformed message may be a glitch.
            permanent = self._step == 2
            raise SaslClientError(f"SCRAM: {exc}", temporary=not permanent) from None
        raise SaslClientError("unexpected SCRAM challenge after the server's final message",
                              temporary=True)

    def finish(self) -> None:
        if not self._verified:
            raise SaslClientError("the server accepted SCRAM without proving that it knows "
                                  "the password (no server signature)", temporary=False)


#: Mechanisms we use, most preferred first. SCRAM never shows the password to the server;
#: PLAIN and LOGIN do, which is acceptable only under TLS (the session enforces that).
AUTH_PREFERENCE = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN", "LOGIN")


def choose_mechanism(offered: Sequence[str], *, channel_binding: bool = False) -> str | None:
    """The best mechanism both sides support, or None.

    -PLUS only with ``channel_binding``: the binding type we can compute with scramp is
    "tls-server-end-point", which a server announcing SCRAM-SHA-256-PLUS need not support
    (RFC 9266 makes "tls-exporter" the default for TLS 1.3), and a refused attempt would
    count as a failed login against the account.
    """
    offered_upper = {m.upper() for m in offered}
    for mechanism in AUTH_PREFERENCE:
        if mechanism.endswith("-PLUS") and not channel_binding:
            continue
        if mechanism in offered_upper:
            return mechanism
    return None


def make_sasl_client(mechanism: str, username: str, password: str, *,
                     channel_binding: tuple[str, bytes] | None = None) -> SaslClient:
    if mechanism == "PLAIN":
        return PlainClient(username, password)
    if mechanism == "LOGIN":
        return LoginClient(username, password)
    return ScramClient(mechanism, username, password, channel_binding)
