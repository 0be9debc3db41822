"""The sans-IO SMTP and LMTP server state machine (RFC 5321, RFC 2033).

``ServerConnection`` is fed the bytes a client sent (``receive_data``) and hands back
events (``next_event``). Events that need an answer ("decisions": HELO, MAIL, RCPT, DATA,
end of message, STARTTLS, AUTH) wait until the adapter calls ``accept``/``reject`` (or
``lmtp_replies``, ``auth_challenge``); everything else the core answers itself. The bytes to
write come from ``data_to_send``. The core never touches a socket, a clock or a file, so
every behaviour here is tested with plain function calls (docs/architecture.md).

Extensions: ENHANCEDSTATUSCODES (RFC 2034, always on), PIPELINING (RFC 2920), SIZE
(RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461), CHUNKING and
BINARYMIME (RFC 3030), STARTTLS (RFC 3207), AUTH (RFC 4954; the SASL mechanisms live
elsewhere), REQUIRETLS (RFC 8689, parameter only).

Strictness is deliberate: only CRLF ends a command line or a DATA line, and the end of
DATA is CRLF "." CRLF exactly (see ``data.py`` on SMTP smuggling); bytes pipelined after
STARTTLS are thrown away (RFC 3207 §4.2, CVE-2011-0411); malformed input never raises, it
becomes a reply and counts toward the error limit.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import deque
from dataclasses import dataclass, field

from . import reply as replies
from .address import Address, AddressError, canonical_domain, parse_path, split_path
from .data import BodyScanner, DataReader, problem_reply
from .params import (
    NONE_ADVERTISED,
    Advertised,
    MailParams,
    ParamError,
    RcptParams,
    parse_mail_params,
    parse_rcpt_params,
)
from .reply import Reply

__all__ = [
    "NEED_DATA",
    "AuthResponse",
    "AuthStart",
    "BodyData",
    "BodyEnd",
    "ClientError",
    "ConnectionClosed",
    "DataStart",
    "Event",
    "Hello",
    "MailFrom",
    "NeedData",
    "Quit",
    "RcptTo",
    "Reset",
    "ServerConnection",
    "SessionConfig",
    "StartTLS",
    "State",
    "Transaction",
    "UsageError",
    "command_line_limit",
]

# RFC 4954 §4: servers must accept AUTH lines (command and responses) of 12288 octets.
AUTH_LINE_LIMIT = 12288
# How many octets of a BDAT size we read; 20 digits is more than any disk (RFC 3030 §2
# leaves the size unbounded, the adapter's timeouts bound the transfer).
MAX_BDAT_SIZE_DIGITS = 20
# Input kept from a client that talks before the greeting (the adapter may delay greet()
# to catch such clients, as Postfix's postscreen does); beyond this it is dropped.
MAX_PREGREET_BUFFER = 64 * 1024
# Longest HELO/EHLO argument kept (RFC 5321 §4.5.3.1.2: a domain is at most 255 octets;
# an address literal is shorter).
MAX_HELLO_ARGUMENT = 255

# Per-extension growth of the MAIL/RCPT command line (RFC 1869 §4.1.2 lets each extension
# lengthen it). Values are what the parameters can add, including the separating space:
# SIZE 26 (RFC 1870 §3), BODY=BINARYMIME 16 (RFC 6152/3030), SMTPUTF8 10 (RFC 6531 §3.1),
# AUTH=<mailbox xtext> 500 (RFC 4954 §5), RET and ENVID 110 (RFC 3461 §4.3-4.4: ENVID
# ≤100), NOTIFY and ORCPT 540 (RFC 3461 §4.1-4.2: ORCPT ≤500), REQUIRETLS 11 (RFC 8689).
_GROWTH_SIZE = 26
_GROWTH_BODY = 16
_GROWTH_SMTPUTF8 = 10
_GROWTH_AUTH = 500
_GROWTH_DSN_MAIL = 110
_GROWTH_DSN_RCPT = 540
_GROWTH_REQUIRETLS = 11

_HTTP_VERBS = frozenset({"GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE"})
_NOT_IMPLEMENTED = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"})
# RFC 4954 §4: responses are BASE64 (RFC 4648 §4, padded), so length is a multiple of 4.
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
_HELLO_ARGUMENT = re.compile(r"^[\x20-\x7e\u00a0-\ud7ff\ue000-\U0010ffff]+$")
# RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CR LF.
_BDAT_ARGS = re.compile(rf"^([0-9]{{1,{MAX_BDAT_SIZE_DIGITS}}})(?: (LAST))?$", re.IGNORECASE)


class NeedData(enum.Enum):
    """Type of the ``NEED_DATA`` sentinel."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA
"""Returned by ``next_event`` when no event can be produced without more input."""


class UsageError(RuntimeError):
    """The adapter used the API wrongly (a bug in the caller, never caused by a client)."""


class State(enum.Enum):
    """Where the session is; for logging and for the adapter's timeouts."""

    NOT_GREETED = "not-greeted"        # greet() not called yet
    REFUSED = "refused"                # 554 greeting sent; only QUIT is useful (RFC 5321 §3.1)
    CONNECTED = "connected"            # greeted; the client has not said HELO/EHLO/LHLO
    READY = "ready"                    # no mail transaction
    TRANSACTION = "transaction"        # MAIL accepted (maybe RCPTs, maybe BDAT chunks)
    DATA = "data"                      # reading a DATA body
    BDAT = "bdat"                      # reading the octets of a BDAT chunk
    AUTH = "auth"                      # waiting for a SASL response line
    TLS_HANDSHAKE = "tls-handshake"    # STARTTLS accepted; waiting for tls_started()
    CLOSED = "closed"


@dataclass(frozen=True)
class SessionConfig:
    """Per-connection settings; every limit has a safe default.

    ``max_command_line`` is the RFC 5321 §4.5.3.1.4 limit (512, CRLF included); the core
    adds the growth that each advertised extension's parameters allow (RFC 1869 §4.1.2),
    see ``command_line_limit``. ``max_data_line`` counts the CRLF. ``bare_newlines`` is
    "reject" (bare CR or LF in a body makes BodyEnd report "bare-newline") or "normalize"
    (they become CRLF). ``binarymime`` and ``requiretls`` are opt-in: BINARYMIME content
    cannot be served over IMAP without conversion, and REQUIRETLS promises a relay
    behaviour the outbound side must honour; REQUIRETLS is only advertised under TLS.
    """

    hostname: str
    lmtp: bool = False
    max_message_size: int = 100 * 1024 * 1024
    max_recipients: int = 100
    max_command_line: int = 512
    max_data_line: int = 1_000_000
    bare_newlines: str = "reject"
    starttls_available: bool = False
    tls_active: bool = False
    auth_mechanisms: tuple[str, ...] = ()
    chunking: bool = True
    smtputf8: bool = True
    dsn: bool = True
    eightbitmime: bool = True
    pipelining: bool = True
    binarymime: bool = False
    requiretls: bool = False
    max_commands: int = 1000
    soft_error_limit: int = 3
    hard_error_limit: int = 5
    greeting_text: str = "ESMTP Mailkeep"

    def __post_init__(self) -> None:
        if not self.hostname or any(c in self.hostname for c in " \r\n\t\x00"):
            raise ValueError(f"hostname {self.hostname!r} must be a non-empty name without spaces")
        if self.bare_newlines not in ("reject", "normalize"):
            raise ValueError('bare_newlines must be "reject" or "normalize"')
        for name in ("max_message_size", "max_recipients", "max_data_line", "max_commands",
                     "hard_error_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_command_line < 512:
            # RFC 5321 §4.5.3.1.4: servers must accept 512-octet command lines.
            raise ValueError("max_command_line must be at least 512")
        if self.soft_error_limit < 0:
            raise ValueError("soft_error_limit cannot be negative")
        if any(not m or not m.replace("-", "").replace("_", "").isalnum()
               for m in self.auth_mechanisms):
            raise ValueError("auth_mechanisms must be SASL mechanism names such as PLAIN")


def command_line_limit(config: SessionConfig, advertised: Advertised | None = None) -> int:
    """Longest command line accepted (octets, CRLF included) for what was advertised.

    ``advertised`` None means "everything the configuration could advertise", which is
    what the line reader uses before it knows the command.
    """
    if advertised is None:
        advertised = _advertised_for(config, esmtp=True)
    mail = rcpt = config.max_command_line
    if advertised.size:
        mail += _GROWTH_SIZE
    if advertised.eightbitmime or advertised.binarymime:
        mail += _GROWTH_BODY
    if advertised.smtputf8:
        mail += _GROWTH_SMTPUTF8
    if advertised.auth:
        mail += _GROWTH_AUTH
    if advertised.dsn:
        mail += _GROWTH_DSN_MAIL
        rcpt += _GROWTH_DSN_RCPT
    if advertised.requiretls:
        mail += _GROWTH_REQUIRETLS
    return max(mail, rcpt)


def _advertised_for(config: SessionConfig, *, esmtp: bool) -> Advertised:
    if not esmtp:
        return NONE_ADVERTISED
    return Advertised(
        size=True,
        eightbitmime=config.eightbitmime,
        binarymime=config.binarymime and config.chunking,
        smtputf8=config.smtputf8,
        dsn=config.dsn,
        auth=bool(config.auth_mechanisms),
        requiretls=config.requiretls and config.tls_active,
    )


def _postmaster_domain(config: SessionConfig) -> str | None:
    """Domain that "<Postmaster>" (RFC 5321 §4.5.1) stands for: our own hostname."""
    try:
        return canonical_domain(config.hostname)
    except ValueError:
        return None


# --- events ---------------------------------------------------------------------------------

class Event:
    """Base class of everything ``next_event`` returns (except ``NEED_DATA``)."""

    __slots__ = ()
    decision = False          # True: needs exactly one accept()/reject() before continuing


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """HELO, EHLO or LHLO. Decision: accept() sends 250 (with extensions for EHLO/LHLO)."""

    verb: str
    domain: str
    decision = True


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """MAIL FROM; ``sender`` None is the null reverse path <>. Decision: default 250 2.1.0."""

    sender: Address | None
    params: MailParams
    decision = True


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """RCPT TO. Decision: default 250 2.1.5."""

    recipient: Address
    params: RcptParams
    decision = True


@dataclass(frozen=True, slots=True)
class DataStart(Event):
    """DATA, or the first BDAT of a transaction (``chunking`` True).

    Decision: for DATA accept() sends 354 and the core reads the body; for BDAT accept()
    sends nothing (the chunk's own reply follows it). reject() refuses the message; a
    rejected BDAT's octets are still read and thrown away so the session stays in step.
    """

    chunking: bool = False
    decision = True


@dataclass(frozen=True, slots=True)
class BodyData(Event):
    """Message content, in order: DATA already dot-unstuffed, BDAT as sent."""

    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"BodyData(<{len(self.data)} octets>)"


@dataclass(frozen=True, slots=True)
class BodyEnd(Event):
    """End of the message content. Decision: SMTP accept()/reject(); LMTP lmtp_replies().

    ``problem``: None for a clean message, else "too-big", "bare-newline",
    "line-too-long" or "nul" (see ``data.py``); ``suggested`` is the reply the core
    recommends for it. ``size``: content octets received. The transaction ends with the
    answer (RFC 5321 §4.1.1.4).
    """

    problem: str | None
    suggested: Reply | None
    size: int
    decision = True


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """The transaction was abandoned (RSET, which the core already answered 250, or a new
    HELO/EHLO). The adapter discards whatever it kept for it, such as a spool file."""


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STARTTLS. Decision: accept() queues 220; the adapter flushes ``data_to_send``,
    runs the handshake and calls ``tls_started``."""

    decision = True


@dataclass(frozen=True, slots=True)
class AuthStart(Event):
    """AUTH. ``initial_response`` is the base64 text, "" for "=" (RFC 4954 §4), or None.

    Decision: ``auth_challenge(b64)``, accept() (235 2.7.0) or reject().
    """

    mechanism: str
    initial_response: str | None = field(repr=False)
    decision = True


@dataclass(frozen=True, slots=True)
class AuthResponse(Event):
    """A client's base64 line answering a 334 challenge. Decision like AuthStart."""

    line: str = field(repr=False)
    decision = True


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT; the core queued 221 and the connection is now closed."""


@dataclass(frozen=True, slots=True)
class ClientError(Event):
    """The core answered a client mistake with ``reply``; ``count`` errors so far.

    The adapter delays its next read when ``count`` exceeds ``soft_error_limit``; at
    ``hard_error_limit`` the core has already queued 421 4.7.0 and closed.
    """

    reply: Reply
    count: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """Nothing more will happen: after QUIT, end of input, or a fatal error."""


@dataclass(frozen=True)
class Transaction:
    """Snapshot of the current mail transaction (RFC 5321 §3.3)."""

    sender: Address | None
    params: MailParams
    recipients: tuple[Address, ...]
    recipient_params: tuple[RcptParams, ...]


class _Txn:
    """Mutable transaction state inside the connection."""

    __slots__ = ("bdat_failed", "body_mode", "params", "rcpt_params", "recipients", "sender")

    def __init__(self, sender: Address | None, params: MailParams):
        self.sender = sender
        self.params = params
        self.recipients: list[Address] = []
        self.rcpt_params: list[RcptParams] = []
        self.body_mode: str | None = None     # None, "DATA" or "BDAT"
        self.bdat_failed = False              # a BDAT was refused; discard until RSET


_CLOSED = ConnectionClosed()


class ServerConnection:
    """One SMTP or LMTP server session, without I/O. See the module docstring."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self._state = State.NOT_GREETED
        self._buffer = bytearray()
        self._pos = 0                          # start of unconsumed input in _buffer
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending: Event | None = None
        self._eof = False
        self._discarding_line = False          # dropping the rest of an erroneous line
        self._error_count = 0
        self._command_count = 0
        self._hello: Hello | None = None
        self._esmtp = False
        self._advertised = NONE_ADVERTISED
        self._authenticated = False
        self._txn: _Txn | None = None
        self._reader: DataReader | None = None
        self._scanner: BodyScanner | None = None
        self._bdat_remaining = 0               # octets of the current chunk still to read
        self._bdat_chunk_size = 0
        self._bdat_last = False
        self._bdat_discard_reply: Reply | None = None   # reply owed after a discarded chunk
        self._bdat_discard_is_error = False
        self._line_limit = command_line_limit(config)
        self._postmaster = _postmaster_domain(config)
        self.early_talker = False              # input arrived before greet()
        self.discarded_after_starttls = 0      # octets dropped between STARTTLS and TLS

    # --- properties -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def error_count(self) -> int:
        return self._error_count

    @property
    def authenticated(self) -> bool:
        """An AUTH exchange ended with the adapter's accept()."""
        return self._authenticated

    @property
    def hello(self) -> Hello | None:
        """The client's accepted HELO/EHLO/LHLO, if any."""
        return self._hello

    @property
    def has_unread_input(self) -> bool:
        """Input beyond the command being decided is already here: the client sent it
        without waiting for our reply (what PIPELINING allows, RFC 2920 §3.1)."""
        return len(self._buffer) > self._pos

    @property
    def pending(self) -> Event | None:
        """The decision event waiting for an answer, if any."""
        return self._pending

    @property
    def transaction(self) -> Transaction | None:
        """The current mail transaction, or None outside one."""
        txn = self._txn
        if txn is None:
            return None
        return Transaction(txn.sender, txn.params, tuple(txn.recipients), tuple(txn.rcpt_params))

    # --- I/O boundary -----------------------------------------------------------------------

    def greet(self) -> None:
        """Queue the 220 greeting (RFC 5321 §4.3.1); commands are processed from now on."""
        if self._state is not State.NOT_GREETED:
            raise UsageError("greet() or refuse_greeting() was already called")
        text = self.config.greeting_text
        if self.config.lmtp and text == "ESMTP Mailkeep":
            text = "LMTP Mailkeep"
        self._send(replies.greeting(self.config.hostname, text))
        self._state = State.CONNECTED

    def refuse_greeting(self, reply: Reply) -> None:
        """Greet with a refusal instead of 220.

        A 4xx (normally 421) closes the session at once. A 5xx (normally 554) keeps it open
        as RFC 5321 §3.1 requires: the client is expected to QUIT, and every other command
        gets 503 (and counts toward the error limit, which closes in the end).
        """
        if self._state is not State.NOT_GREETED:
            raise UsageError("greet() or refuse_greeting() was already called")
        if reply.code < 400:
            raise ValueError("refuse_greeting needs a 4xx or 5xx reply")
        self._send(reply)
        if reply.is_transient:
            self._close()
        else:
            self._state = State.REFUSED

    def close(self, reply: Reply | None = None) -> None:
        """End the session from the server side (timeout, shutdown), optionally saying why
        (for example ``reply.TIMEOUT`` or ``reply.SHUTTING_DOWN``)."""
        if self.closed:
            return
        if reply is not None:
            self._send(reply)
        self._pending = None
        self._close()

    def receive_data(self, data: bytes) -> None:
        """Hand over bytes read from the client.

        Read from the socket only after ``next_event`` returned NEED_DATA: that keeps the
        buffered input to one read plus one incomplete line. After accepting StartTLS,
        pass only bytes that came through TLS; they are kept until ``tls_started``.
        """
        if self._state is State.CLOSED or not data:
            return
        if self._state is State.NOT_GREETED:
            self.early_talker = True
            data = data[: max(0, MAX_PREGREET_BUFFER - len(self._buffer))]
        self._buffer += data

    def receive_eof(self) -> None:
        """The client closed its side; complete commands already received still count."""
        self._eof = True

    def data_to_send(self) -> bytes:
        """Everything queued for the client so far, and forget it."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA when more input is needed.

        Raises UsageError while a decision is unanswered.
        """
        if self._pending is not None:
            raise UsageError(f"answer {type(self._pending).__name__} before asking for more")
        while not self._events:
            if self._state is State.CLOSED:
                return _CLOSED
            if not self._step():
                if self._eof:
                    self._close()
                    continue
                self._compact()
                return NEED_DATA
        event = self._events.popleft()
        if event.decision:
            self._pending = event
        return event

    # --- answering decisions -------------------------------------------------------------------

    def accept(self, reply: Reply | None = None) -> None:
        """Answer the pending decision positively, with its default reply or ``reply``."""
        if reply is not None:
            _check_accept_reply(self._pending, reply)
        event = self._take_pending()
        if isinstance(event, Hello):
            self._accept_hello(event, reply)
        elif isinstance(event, MailFrom):
            self._txn = _Txn(event.sender, event.params)
            self._state = State.TRANSACTION
            self._send(reply or replies.SENDER_OK)
        elif isinstance(event, RcptTo):
            assert self._txn is not None
            self._txn.recipients.append(event.recipient)
            self._txn.rcpt_params.append(event.params)
            self._send(reply or replies.RECIPIENT_OK)
        elif isinstance(event, DataStart):
            self._accept_data_start(event, reply)
        elif isinstance(event, BodyEnd):
            if self.config.lmtp:
                self._finish_message([reply or replies.MESSAGE_ACCEPTED] * self._rcpt_count())
            else:
                self._finish_message([reply or replies.MESSAGE_ACCEPTED])
        elif isinstance(event, StartTLS):
            self._send(reply or replies.READY_FOR_TLS)
            self._state = State.TLS_HANDSHAKE
            # CVE-2011-0411: whatever the client pipelined after STARTTLS is discarded.
            self.discarded_after_starttls += len(self._buffer) - self._pos
            self._drop_input()
        elif isinstance(event, AuthStart | AuthResponse):
            self._authenticated = True
            self._state = State.READY
            self._send(reply or replies.AUTH_SUCCEEDED)

    def reject(self, reply: Reply, *, count_error: bool = False) -> None:
        """Answer the pending decision negatively with ``reply`` (4xx or 5xx).

        Policy refusals do not count toward the error limit unless ``count_error``.
        """
        if reply.is_positive:
            raise ValueError("reject() needs a 4xx or 5xx reply; use accept()")
        event = self._take_pending()
        if isinstance(event, Hello):
            self._hello = None
            self._esmtp = False
            self._advertised = NONE_ADVERTISED
            self._state = State.CONNECTED
            self._send(reply)
        elif isinstance(event, DataStart) and event.chunking:
            # RFC 3030 §2: the chunk is read and discarded; its reply follows it.
            assert self._txn is not None
            self._txn.bdat_failed = True
            self._bdat_discard_reply = reply
            self._bdat_discard_is_error = count_error     # counted once the chunk is read
            self._state = State.BDAT
            return
        elif isinstance(event, BodyEnd):
            self._finish_message([reply] * (self._rcpt_count() if self.config.lmtp else 1))
        elif isinstance(event, AuthStart | AuthResponse):
            self._state = State.READY
            self._send(reply)
        else:       # MailFrom, RcptTo, DataStart (DATA), StartTLS: state is unchanged
            self._send(reply)
        if count_error:
            self._count_error(reply)

    def lmtp_replies(self, replies_in_order: list[Reply]) -> None:
        """LMTP: answer BodyEnd with one reply per accepted recipient, in RCPT order
        (RFC 2033 §4.2)."""
        if not self.config.lmtp:
            raise UsageError("lmtp_replies() is only for LMTP sessions")
        if not isinstance(self._pending, BodyEnd):
            raise UsageError("lmtp_replies() answers BodyEnd")
        if len(replies_in_order) != self._rcpt_count():
            raise ValueError(
                f"need {self._rcpt_count()} replies, one per accepted recipient, "
                f"not {len(replies_in_order)}"
            )
        self._take_pending()
        self._finish_message(list(replies_in_order))

    def auth_challenge(self, b64: str) -> None:
        """Answer a pending AuthStart/AuthResponse with a 334 challenge (RFC 4954 §4)."""
        if not isinstance(self._pending, AuthStart | AuthResponse):
            raise UsageError("auth_challenge() answers AuthStart or AuthResponse")
        if not _BASE64.match(b64):
            raise ValueError("the challenge must be base64 text")
        self._take_pending()
        self._state = State.AUTH
        self._send(Reply(334, None, b64))

    def tls_started(self, config: SessionConfig | None = None) -> None:
        """The adapter finished the TLS handshake after STARTTLS.

        RFC 3207 §4.2: the session starts over (the client must EHLO again) and nothing
        learnt before counts, including any authentication. ``config`` replaces the
        session settings (for example to offer AUTH now); ``tls_active`` is forced True.

        Plaintext received after the STARTTLS line was discarded when StartTLS was
        accepted (CVE-2011-0411). Bytes passed to ``receive_data`` since then are kept:
        they came through TLS. That matters with asyncio, whose ``start_tls`` may deliver
        the client's first encrypted command (often in the same packet as its Finished
        message) before the awaiting coroutine gets to call this method.
        """
        if self._state is not State.TLS_HANDSHAKE:
            raise UsageError("tls_started() follows an accepted StartTLS")
        new = config or self.config
        if not new.tls_active:
            new = dataclasses.replace(new, tls_active=True)
        self.config = new
        self._line_limit = command_line_limit(new)
        self._postmaster = _postmaster_domain(new)
        self._hello = None
        self._esmtp = False
        self._advertised = NONE_ADVERTISED
        self._authenticated = False
        self._txn = None
        self._state = State.CONNECTED

    # --- internals: plumbing ------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _close(self) -> None:
        self._state = State.CLOSED
        self._txn = None
        self._drop_input()

    def _drop_input(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._discarding_line = False

    def _compact(self) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0

    def _take_pending(self) -> Event:
        event = self._pending
        if event is None:
            raise UsageError("there is no decision to answer")
        self._pending = None
        return event

    def _rcpt_count(self) -> int:
        return len(self._txn.recipients) if self._txn else 0

    def _client_error(self, reply: Reply) -> None:
        """Answer a client mistake and count it (Postfix-style soft/hard limits)."""
        self._send(reply)
        self._count_error(reply)

    def _count_error(self, reply: Reply) -> None:
        self._error_count += 1
        self._events.append(ClientError(reply, self._error_count))
        if self._error_count >= self.config.hard_error_limit:
            self._send(replies.TOO_MANY_ERRORS)
            self._close()

    # --- internals: the input loop --------------------------------------------------------------

    def _step(self) -> bool:
        """Make progress on buffered input; False when nothing more can be done now."""
        state = self._state
        if state is State.DATA:
            return self._step_data()
        if state is State.BDAT:
            return self._step_bdat()
        if state in (State.NOT_GREETED, State.TLS_HANDSHAKE, State.CLOSED):
            return False
        start = self._pos
        events = len(self._events)
        line = self._read_line()
        if line is not None:
            self._handle_line(line)
            return True
        return self._pos != start or len(self._events) != events or self.closed

    def _read_line(self) -> bytes | None:
        """The next complete command line without its CRLF, or None.

        None means more input is needed, or that input was consumed without yielding a
        usable line (the rest of a refused line, or a line refused before its end).
        """
        buffer = self._buffer
        pos = self._pos
        limit = self._read_limit()
        end = buffer.find(b"\r\n", pos)
        if self._discarding_line:
            if end < 0:
                # Keep a final CR: it may be the first half of the CRLF we wait for.
                self._pos = max(pos, len(buffer) - (1 if buffer.endswith(b"\r") else 0))
                return None
            self._pos = end + 2
            self._discarding_line = False
            return None
        # Only CRLF ends a line (RFC 5321 §2.3.8). Inside a line any LF is bare, and so is
        # any CR: a CR followed by LF would have ended the line. Before the CRLF has
        # arrived, the last octet may still be the CR of it and proves nothing yet.
        # The checks below give the same verdict whatever way the input was split up:
        # bare CR/LF within the first limit-1 octets wins over "too long".
        scan_end = end if end >= 0 else len(buffer) - 1
        bare = buffer.find(b"\n", pos, scan_end + (0 if end >= 0 else 1))
        bare_cr = buffer.find(b"\r", pos, scan_end)
        if bare_cr >= 0 and (bare < 0 or bare_cr < bare):
            bare = bare_cr
        bare_early = bare >= 0 and bare - pos < limit - 1
        if end < 0:
            if bare_early:
                self._refuse_partial_line(replies.BARE_NEWLINE_IN_COMMAND)
            elif len(buffer) - pos >= limit:
                self._refuse_partial_line(self._too_long_reply())
            return None
        self._pos = end + 2
        length = end - pos + 2
        if (
            not bare_early
            and length > self._line_limit
            and self._state is not State.AUTH
            and buffer[pos:pos + 5].upper() != b"AUTH "
        ):
            limit = 0       # only AUTH lines may use the RFC 4954 allowance
        if bare_early or length > limit:
            self._command_count += 1
            self._refuse_line(
                replies.BARE_NEWLINE_IN_COMMAND if bare_early else self._too_long_reply()
            )
            return None
        return bytes(buffer[pos:end])

    def _read_limit(self) -> int:
        """Longest line to read before refusing it unseen. RFC 4954 §4: AUTH command and
        response lines may reach 12288 octets, so that is the bound when AUTH is offered;
        other commands are held to ``_line_limit`` once their line is complete."""
        if self._state is State.AUTH or (self.config.auth_mechanisms and self._esmtp):
            return max(AUTH_LINE_LIMIT, self._line_limit)
        return self._line_limit

    def _too_long_reply(self) -> Reply:
        return replies.AUTH_LINE_TOO_LONG if self._state is State.AUTH else replies.LINE_TOO_LONG

    def _refuse_partial_line(self, reply: Reply) -> None:
        """Refuse a line before its end and drop the rest of it up to the next CRLF."""
        self._discarding_line = True
        self._pos = len(self._buffer) - (1 if self._buffer.endswith(b"\r") else 0)
        self._command_count += 1
        self._refuse_line(reply)

    def _refuse_line(self, reply: Reply) -> None:
        if self._state is State.AUTH:
            self._state = State.READY       # the exchange is over (RFC 4954 §4)
        self._client_error(reply)

    # --- internals: commands ------------------------------------------------------------------

    def _handle_line(self, raw: bytes) -> None:
        self._command_count += 1
        if self._command_count > self.config.max_commands:
            self._send(replies.TOO_MANY_COMMANDS)
            self._close()
            return
        if b"\x00" in raw:
            self._refuse_line(replies.NUL_IN_COMMAND)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse_line(replies.NOT_UTF8_COMMAND)
            return
        if self._state is State.AUTH:
            self._auth_line(line)
            return
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if self._state is State.REFUSED:
            if verb == "QUIT":
                self._quit()
            else:
                self._client_error(replies.BAD_SEQUENCE)
            return
        handler = _HANDLERS.get(verb)
        if handler is not None:
            handler(self, arg)
        elif verb in _NOT_IMPLEMENTED:
            self._client_error(replies.NOT_IMPLEMENTED)
        elif verb in _HTTP_VERBS:
            # Cross-protocol requests (a browser or proxy pointed at port 25): stop talking.
            self._fatal_client_error(replies.NOT_SMTP)
        else:
            self._client_error(replies.UNKNOWN_COMMAND)

    def _fatal_client_error(self, reply: Reply) -> None:
        """Answer a mistake after which the session cannot go on, and close."""
        self._send(reply)
        self._error_count += 1
        self._events.append(ClientError(reply, self._error_count))
        self._close()

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _syntax(self, text: str) -> None:
        self._client_error(Reply(501, "5.5.4", f"Syntax: {text}"))

    def _sequence(self, text: str) -> None:
        self._client_error(Reply(503, "5.5.1", text))

    def _cmd_helo(self, arg: str) -> None:
        self._hello_command("HELO", arg)

    def _cmd_ehlo(self, arg: str) -> None:
        self._hello_command("EHLO", arg)

    def _cmd_lhlo(self, arg: str) -> None:
        self._hello_command("LHLO", arg)

    def _hello_command(self, verb: str, arg: str) -> None:
        # RFC 2033 §4.1: LMTP has LHLO and neither HELO nor EHLO; SMTP has no LHLO.
        if (verb == "LHLO") != self.config.lmtp:
            self._client_error(replies.UNKNOWN_COMMAND)
            return
        domain = arg.strip(" ")
        if not domain or len(domain) > MAX_HELLO_ARGUMENT or not _HELLO_ARGUMENT.match(domain):
            self._syntax(f"{verb} hostname")
            return
        # RFC 5321 §4.1.4: HELO/EHLO in a session clears any transaction, like RSET.
        if self._txn is not None:
            self._txn = None
            self._state = State.READY
            self._emit(Reset())
        self._emit(Hello(verb, domain))

    def _accept_hello(self, event: Hello, reply: Reply | None) -> None:
        self._hello = event
        self._esmtp = event.verb != "HELO"
        self._advertised = _advertised_for(self.config, esmtp=self._esmtp)
        self._state = State.READY
        if reply is None:
            if self._esmtp:
                reply = replies.ehlo_reply(self.config.hostname, self.extension_keywords())
            else:
                reply = replies.helo_reply(self.config.hostname)
        self._send(reply)

    def extension_keywords(self) -> list[str]:
        """The EHLO/LHLO keywords this session offers (RFC 5321 §4.1.1.1), in order."""
        config = self.config
        keywords = []
        if config.pipelining or config.lmtp:      # RFC 2033 §5: LMTP requires PIPELINING
            keywords.append("PIPELINING")
        keywords.append(f"SIZE {config.max_message_size}")
        if config.eightbitmime:
            keywords.append("8BITMIME")
        keywords.append("ENHANCEDSTATUSCODES")
        if config.chunking:
            keywords.append("CHUNKING")
            if config.binarymime:
                keywords.append("BINARYMIME")
        if config.smtputf8:
            keywords.append("SMTPUTF8")
        if config.dsn:
            keywords.append("DSN")
        if config.starttls_available and not config.tls_active:
            keywords.append("STARTTLS")
        if config.auth_mechanisms:
            keywords.append("AUTH " + " ".join(m.upper() for m in config.auth_mechanisms))
        if config.requiretls and config.tls_active:
            keywords.append("REQUIRETLS")
        return keywords

    def _cmd_mail(self, arg: str) -> None:
        if self._hello is None:
            self._sequence("Send HELO/EHLO first" if not self.config.lmtp else "Send LHLO first")
            return
        if self._txn is not None:
            self._sequence("Nested MAIL command")     # RFC 5321 §4.1.1.2
            return
        if arg[:5].upper() != "FROM:":
            self._syntax("MAIL FROM:<address> [parameters]")
            return
        try:
            path, params_text = split_path(arg[5:].lstrip(" "))
            params = parse_mail_params(params_text, self._advertised)
            sender = parse_path(path, smtputf8=params.smtputf8, allow_null=True)
        except AddressError as exc:
            # RFC 3463 §3.2: X.1.7 is the sender's counterpart of X.1.3.
            bad = exc.reply
            if bad.enhanced == "5.1.3":
                bad = Reply(bad.code, "5.1.7", bad.text)
            self._client_error(bad)
            return
        except ParamError as exc:
            self._client_error(exc.reply)
            return
        if params.size is not None and params.size > self.config.max_message_size:
            # RFC 1870 §6.1: a declared size over the limit is refused at MAIL.
            self._send(replies.MESSAGE_TOO_BIG)
            return
        self._emit(MailFrom(sender, params))

    def _cmd_rcpt(self, arg: str) -> None:
        txn = self._txn
        if txn is None:
            self._sequence("Need MAIL before RCPT")
            return
        if txn.body_mode is not None or txn.bdat_failed:
            self._sequence("RCPT not allowed after BDAT")
            return
        if arg[:3].upper() != "TO:":
            self._syntax("RCPT TO:<address> [parameters]")
            return
        if len(txn.recipients) >= self.config.max_recipients:
            self._send(replies.TOO_MANY_RECIPIENTS)     # RFC 5321 §4.5.3.1.10
            return
        try:
            path, params_text = split_path(arg[3:].lstrip(" "))
            params = parse_rcpt_params(
                params_text, self._advertised, smtputf8=txn.params.smtputf8
            )
            recipient = parse_path(
                path, smtputf8=txn.params.smtputf8, postmaster_domain=self._postmaster
            )
        except (AddressError, ParamError) as exc:
            self._client_error(exc.reply)
            return
        assert recipient is not None
        self._emit(RcptTo(recipient, params))

    def _cmd_data(self, arg: str) -> None:
        if arg.strip(" "):
            self._syntax("DATA")                     # RFC 5321 §4.1.1.4: no arguments
            return
        txn = self._txn
        if txn is None:
            self._sequence("Need MAIL command")
            return
        if txn.body_mode == "BDAT" or txn.bdat_failed:
            self._sequence("DATA not allowed after BDAT")   # RFC 3030 §2
            return
        if txn.params.body == "BINARYMIME":
            self._sequence("BODY=BINARYMIME requires BDAT")  # RFC 3030 §3
            return
        if not txn.recipients:
            self._client_error(replies.NO_VALID_RECIPIENTS)  # RFC 5321 §3.3
            return
        self._emit(DataStart(chunking=False))

    def _accept_data_start(self, event: DataStart, reply: Reply | None) -> None:
        txn = self._txn
        assert txn is not None
        config = self.config
        scanner = BodyScanner(
            max_size=config.max_message_size,
            max_line=config.max_data_line,
            normalize=config.bare_newlines == "normalize",
            binary=txn.params.body == "BINARYMIME",
        )
        self._scanner = scanner
        if event.chunking:
            txn.body_mode = "BDAT"
            self._state = State.BDAT
            return
        if reply is not None and reply.code != 354:
            raise ValueError("DATA is accepted with a 354 reply")
        txn.body_mode = "DATA"
        self._reader = DataReader(scanner)
        self._state = State.DATA
        self._send(reply or replies.START_MAIL_INPUT)

    def _cmd_bdat(self, arg: str) -> None:
        match = _BDAT_ARGS.match(arg)
        if match is None:
            # The octets that follow cannot be located, so nothing after this line can be
            # trusted to be a command: refuse and close (RFC 3030 §2 offers no recovery).
            self._fatal_client_error(
                Reply(501, "5.5.4", "Syntax: BDAT size [LAST]; closing connection")
            )
            return
        self._bdat_chunk_size = self._bdat_remaining = int(match.group(1))
        self._bdat_last = match.group(2) is not None
        txn = self._txn
        refusal: Reply | None = None
        if not (self.config.chunking and self._esmtp):
            refusal = Reply(503, "5.5.1", "CHUNKING not offered; send EHLO first")
        elif txn is None:
            refusal = Reply(503, "5.5.1", "Need MAIL command")
        elif txn.bdat_failed:
            # RFC 3030 §2: chunks pipelined after a failed BDAT are accepted and discarded.
            refusal = Reply(503, "5.5.1", "Previous BDAT failed; send RSET")
        elif not txn.recipients:
            refusal = replies.NO_VALID_RECIPIENTS
        if refusal is not None:
            # Read and drop the chunk so its content is never taken for commands.
            if txn is not None:
                txn.bdat_failed = True
            self._bdat_discard_reply = refusal
            self._bdat_discard_is_error = True
            self._state = State.BDAT
            return
        assert txn is not None
        self._bdat_discard_reply = None
        if txn.body_mode is None:
            self._emit(DataStart(chunking=True))      # first chunk: the adapter decides
            return
        self._state = State.BDAT

    def _cmd_rset(self, arg: str) -> None:
        if arg.strip(" "):
            self._syntax("RSET")
            return
        self._txn = None
        self._state = State.READY if self._hello else State.CONNECTED
        self._send(replies.RESET_OK)
        self._emit(Reset())

    def _cmd_noop(self, arg: str) -> None:
        self._send(replies.OK)          # RFC 5321 §4.1.1.9: any argument is ignored

    def _cmd_quit(self, arg: str) -> None:
        self._quit()

    def _quit(self) -> None:
        self._send(replies.BYE)
        self._emit(Quit())
        self._close()

    def _cmd_vrfy(self, arg: str) -> None:
        if not arg.strip(" "):
            self._syntax("VRFY address")
            return
        # RFC 5321 §3.5.3: 252, never confirming or denying that a user exists.
        self._send(replies.CANNOT_VRFY)

    def _cmd_help(self, arg: str) -> None:
        self._send(replies.LMTP_HELP if self.config.lmtp else replies.HELP)

    def _cmd_starttls(self, arg: str) -> None:
        if arg.strip(" "):
            self._syntax("STARTTLS")                  # RFC 3207 §4: no parameters
            return
        if self.config.tls_active:
            self._sequence("TLS already active")
            return
        if not self.config.starttls_available:
            self._client_error(replies.TLS_NOT_AVAILABLE)
            return
        if self._txn is not None:
            self._sequence("STARTTLS not allowed during a mail transaction")
            return
        self._emit(StartTLS())

    def _cmd_auth(self, arg: str) -> None:
        config = self.config
        if not config.auth_mechanisms:
            self._sequence("AUTH not available")
            return
        if not self._esmtp:
            self._sequence("Send EHLO first")          # RFC 4954 §4
            return
        if self._authenticated:
            self._sequence("Already authenticated")    # RFC 4954 §4
            return
        if self._txn is not None:
            self._sequence("AUTH not allowed during a mail transaction")   # RFC 4954 §4
            return
        words = arg.split(" ")
        if not words[0] or len(words) > 2:
            self._syntax("AUTH mechanism [initial-response]")
            return
        mechanism = words[0].upper()
        if mechanism not in (m.upper() for m in config.auth_mechanisms):
            self._client_error(replies.AUTH_UNKNOWN_MECHANISM)
            return
        initial: str | None = None
        if len(words) == 2:
            # RFC 4954 §4: "=" stands for an empty initial response.
            if words[1] != "=" and (not words[1] or not _BASE64.match(words[1])):
                self._client_error(replies.AUTH_BAD_BASE64)
                return
            initial = "" if words[1] == "=" else words[1]
        self._emit(AuthStart(mechanism, initial))

    def _auth_line(self, line: str) -> None:
        if line == "*":
            self._state = State.READY
            self._send(replies.AUTH_CANCELLED)           # RFC 4954 §4
            return
        if not _BASE64.match(line):
            self._state = State.READY
            self._client_error(replies.AUTH_BAD_BASE64)
            return
        self._emit(AuthResponse(line))

    # --- internals: message content -----------------------------------------------------------

    def _step_data(self) -> bool:
        reader = self._reader
        assert reader is not None
        start = self._pos
        content, self._pos, finished = reader.feed(self._buffer, start)
        if content:
            self._emit(BodyData(content))
        if finished:
            self._reader = None
            self._end_body()
            return True
        return self._pos != start or bool(content)

    def _step_bdat(self) -> bool:
        take = min(len(self._buffer) - self._pos, self._bdat_remaining)
        if take:
            start = self._pos
            self._pos += take
            self._bdat_remaining -= take
            if self._bdat_discard_reply is None:
                assert self._scanner is not None
                content = self._scanner.scan(bytes(self._buffer[start:self._pos]))
                if content:
                    self._emit(BodyData(content))
        if self._bdat_remaining:
            return take > 0
        # The whole chunk is in (RFC 3030 §2: the reply follows the chunk).
        refusal = self._bdat_discard_reply
        if refusal is not None:
            self._bdat_discard_reply = None
            if self._txn is not None:
                self._state = State.TRANSACTION
            else:
                self._state = State.READY if self._hello else State.CONNECTED
            if self._bdat_discard_is_error:
                self._client_error(refusal)
            else:
                self._send(refusal)
        elif self._bdat_last:
            self._end_body()
        else:
            self._state = State.TRANSACTION
            self._send(Reply(250, "2.0.0", f"{self._bdat_chunk_size} octets received"))
        return True

    def _end_body(self) -> None:
        scanner = self._scanner
        assert scanner is not None
        tail = scanner.finish()
        if tail:
            self._emit(BodyData(tail))
        problem = scanner.problem
        suggested = problem_reply(problem) if problem else None
        self._state = State.TRANSACTION
        self._emit(BodyEnd(problem, suggested, scanner.size))

    def _finish_message(self, answers: list[Reply]) -> None:
        for answer in answers:
            self._send(answer)
        if any(answer.code < 300 for answer in answers):
            # Postfix semantics: the error limit counts errors made without delivering mail.
            self._error_count = 0
        # RFC 5321 §4.1.1.4: the end of the message ends the transaction, whatever the answer.
        self._txn = None
        self._scanner = None
        self._state = State.READY


_HANDLERS = {
    "HELO": ServerConnection._cmd_helo,
    "EHLO": ServerConnection._cmd_ehlo,
    "LHLO": ServerConnection._cmd_lhlo,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "QUIT": ServerConnection._cmd_quit,
    "VRFY": ServerConnection._cmd_vrfy,
    "HELP": ServerConnection._cmd_help,
    "STARTTLS": ServerConnection._cmd_starttls,
    "AUTH": ServerConnection._cmd_auth,
}


def _check_accept_reply(event: Event | None, reply: Reply) -> None:
    """The reply given to accept() must fit the decision it answers."""
    if isinstance(event, DataStart) and not event.chunking:
        wanted: tuple[int, ...] = (354,)      # RFC 5321 §4.1.1.4
    elif isinstance(event, StartTLS):
        wanted = (220,)                       # RFC 3207 §4
    elif isinstance(event, AuthStart | AuthResponse):
        wanted = (235,)                       # RFC 4954 §6
    else:
        wanted = (250, 251, 252)
    if reply.code not in wanted:
        raise ValueError(
            f"accept() for {type(event).__name__} needs a {'/'.join(map(str, wanted))} reply"
        )
