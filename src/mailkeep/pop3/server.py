"""The sans-IO POP3 server state machine (RFC 1939, with RFC 2449, RFC 2595, RFC 5034 and
RFC 3206).

``ServerConnection`` is fed the bytes a client sent (``receive_data``) and hands back events
(``next_event``). The core answers by itself everything that needs only the message list
fixed at login (STAT, LIST, UIDL, DELE, RSET, NOOP, CAPA) and reports those commands as
informative events. Commands that need the outside world are "decisions" and wait for the
adapter: PASS and AUTH (the SASL layer), RETR and TOP (the message file, streamed through
``begin_message``/``message_data``/``end_message``), STLS (the handshake) and QUIT (the
deletions and ``\\Seen`` flags are committed in the UPDATE state, RFC 1939 §6). The bytes to
write come from ``data_to_send``. No sockets, clocks or files: every behaviour is tested with
plain function calls.

What the core guarantees whatever the input:

* States follow RFC 1939 §3: AUTHORIZATION → TRANSACTION → UPDATE; a command outside its
  state is refused with -ERR, never acted upon.
* Command lines are limited (``SessionConfig.max_line``, RFC 2449 §4 asks for at least 255
  octets); SASL response lines may reach ``MAX_SASL_LINE``. Longer lines are refused and
  discarded up to their end without being buffered.
* Multi-line responses are dot-stuffed and terminated (RFC 1939 §3), also for message
  content that arrives in arbitrary chunks (``MessageStream``).
* Input pipelined after STLS is discarded when STLS is accepted (RFC 2595 §4 requires the
  client to wait; CVE-2011-0411 is what happens when servers keep it).
* Client mistakes are counted; at ``max_errors`` the core says so and closes.
* Replies are in command order whatever the client pipelined (RFC 2449 §6.6).

Lines may end in CRLF or, leniently, in a bare LF as Dovecot accepts: POP3 clients send no
content, so there is nothing to smuggle. Response codes are those of RFC 2449 §8 and
RFC 3206 (``[AUTH]``, ``[SYS/TEMP]``, ``[SYS/PERM]``, ``[IN-USE]``, ``[LOGIN-DELAY]``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

# RFC 5034 §4 sets no limit on SASL response lines, and SCRAM with channel binding or a long
# user name outgrows the 255 octets of RFC 2449 §4; SMTP's RFC 4954 §4 figure is the bound.
MAX_SASL_LINE = 12288
# RFC 2449 §4: response lines are at most 512 octets, CRLF included.
MAX_RESPONSE_LINE = 512
# Message numbers and TOP line counts: more digits than any mailbox needs is refused as
# "no such message" (numbers) or means "all lines" (TOP), without big-integer parsing.
MAX_NUMBER_DIGITS = 10
# RFC 1939 §7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
_UNIQUE_ID = re.compile(r"^[\x21-\x7e]{1,70}$")
# RFC 2449 §8: resp-level = 1*<any CHAR except SP, CR, LF, "[", "]", "/">.
_RESP_CODE = re.compile(r"^[\x21-\x2e\x30-\x5a\x5c\x5e-\x7e]+(?:/[\x21-\x2e\x30-\x5a\x5c\x5e-\x7e]+)*$")
# RFC 2449 §6.3 keyword syntax for the CAPA SASL mechanism list (RFC 4422 §3.1 names).
_MECHANISM = re.compile(r"^[A-Z0-9_-]{1,20}$")
_KEYWORD = re.compile(rb"^[A-Za-z]{3,4}$")
_HTTP_VERBS = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS", b"DELETE"})
# Mechanisms that carry the password itself: only offered and accepted on a secured
# connection (RFC 2595 §2.1 and issue 3: PLAIN and LOGIN only after TLS).
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN"})


class NeedData(enum.Enum):
    """Type of the ``NEED_DATA`` sentinel."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA
"""Returned by ``next_event`` when no event can be produced without more input."""


class UsageError(RuntimeError):
    """The adapter used the API wrongly (a bug in the caller, never caused by a client)."""


class State(enum.Enum):
    """Where the session is (RFC 1939 §3), plus the in-between states of this core."""

    NOT_GREETED = "not-greeted"        # greet() not called yet (implicit TLS handshake)
    AUTHORIZATION = "authorization"
    AUTH = "auth"                      # a SASL exchange waits for the client's response
    TLS_HANDSHAKE = "tls-handshake"    # STLS accepted; waiting for tls_started()
    TRANSACTION = "transaction"
    UPDATE = "update"                  # QUIT in TRANSACTION: the adapter commits
    CLOSED = "closed"


# --- replies -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A single-line status response: "+OK" or "-ERR", an optional response code in
    brackets (RFC 2449 §8, RFC 3206) and human text."""

    ok: bool
    text: str = ""
    code: str | None = None

    def __post_init__(self) -> None:
        if self.code is not None and not _RESP_CODE.match(self.code):
            raise ValueError(f"bad response code {self.code!r} (RFC 2449 §8)")

    def to_bytes(self) -> bytes:
        parts = ["+OK" if self.ok else "-ERR"]
        if self.code is not None:
            parts.append(f"[{self.code}]")
        text = _printable(self.text)
        if text:
            parts.append(text)
        line = " ".join(parts).encode("utf-8")
        # RFC 2449 §4: 512 octets with the CRLF. Cut on a character boundary.
        if len(line) > MAX_RESPONSE_LINE - 2:
            line = line[: MAX_RESPONSE_LINE - 2].decode("utf-8", "ignore").encode("utf-8")
        return line + b"\r\n"


def _printable(text: str) -> str:
    """Text safe to put in a response line: no CR, LF or other controls."""
    return "".join(c if c >= " " and c != "\x7f" else " " for c in text).strip()


def ok(text: str = "", code: str | None = None) -> Reply:
    return Reply(True, text, code)


def err(text: str, code: str | None = None) -> Reply:
    return Reply(False, text, code)


ERR_UNKNOWN = err("Unknown command")
ERR_STATE = err("Command not valid in this state")
ERR_TOO_LONG = err("Line too long")
ERR_TOO_MANY_ERRORS = err("Too many errors, closing connection")
ERR_NO_SUCH_MESSAGE = err("No such message")
ERR_NOT_POP3 = err("This is a POP3 server")
ERR_PLAINTEXT = err("Plaintext authentication disallowed on non-secure connections, "
                    "use STLS first", "AUTH")
ERR_BAD_BASE64 = err("Invalid base64 data", "AUTH")
ERR_CANCELLED = err("Authentication cancelled", "AUTH")


def _syntax(usage: str) -> Reply:
    return err(f"Syntax: {usage}")


# --- the message list -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListedMessage:
    """One message of the maildrop as fixed at login (RFC 1939 §5: numbers stay valid for
    the whole session). ``uid`` is the store's UID: the core only hands it back."""

    uid: int
    #: RFC 1939 §5 LIST: the exact size in octets (stored messages are already CRLF).
    size: int
    #: RFC 1939 §7 UIDL: stable across sessions, never reused.
    unique_id: str


# --- events -------------------------------------------------------------------------------------


class Event:
    """Base class of everything ``next_event`` returns (except ``NEED_DATA``)."""

    __slots__ = ()
    decision = False          # True: the adapter must answer before the next event


@dataclass(frozen=True, slots=True)
class User(Event):
    """USER, already answered +OK; PASS must follow (RFC 1939 §7)."""

    name: str


@dataclass(frozen=True, slots=True)
class Pass(Event):
    """PASS after a USER. Decision: ``login`` or ``err``."""

    username: str
    password: bytes = field(repr=False)
    decision = True


@dataclass(frozen=True, slots=True)
class Auth(Event):
    """AUTH mechanism [initial-response] (RFC 5034 §4). ``initial`` is the decoded
    initial response, b"" for "=", None if the client sent none. ``mechanism`` was
    advertised. Decision: ``auth_challenge``, ``login`` or ``err``."""

    mechanism: str
    initial: bytes | None = field(repr=False)
    decision = True


@dataclass(frozen=True, slots=True)
class AuthResponse(Event):
    """The client's line after a "+ " challenge: decoded ``data``, or ``cancelled`` for
    "*" (RFC 5034 §4, which the adapter must answer with ``err``). Decision like Auth."""

    data: bytes = field(repr=False)
    cancelled: bool = False
    decision = True


@dataclass(frozen=True, slots=True)
class Capa(Event):
    """CAPA, answered (RFC 2449 §5)."""


@dataclass(frozen=True, slots=True)
class Stat(Event):
    """STAT, answered."""


@dataclass(frozen=True, slots=True)
class List(Event):
    """LIST [n], answered."""

    number: int | None = None


@dataclass(frozen=True, slots=True)
class Uidl(Event):
    """UIDL [n], answered."""

    number: int | None = None


@dataclass(frozen=True, slots=True)
class Dele(Event):
    """DELE n, answered: the message is marked and removed at QUIT (RFC 1939 §5)."""

    number: int
    message: ListedMessage


@dataclass(frozen=True, slots=True)
class Noop(Event):
    """NOOP, answered."""


@dataclass(frozen=True, slots=True)
class Rset(Event):
    """RSET, answered: every deletion mark is gone."""


@dataclass(frozen=True, slots=True)
class Retr(Event):
    """RETR n of an existing, undeleted message. Decision: ``begin_message``, then
    ``message_data`` with the file's content, then ``end_message``; or ``err`` before
    ``begin_message`` when the message cannot be read."""

    number: int
    message: ListedMessage
    decision = True


@dataclass(frozen=True, slots=True)
class Top(Event):
    """TOP n lines (RFC 1939 §7): like Retr, the core cuts the content after the header
    and ``lines`` body lines."""

    number: int
    message: ListedMessage
    lines: int
    decision = True


@dataclass(frozen=True, slots=True)
class Stls(Event):
    """STLS (RFC 2595 §4). Decision: ``ok`` queues "+OK" and discards buffered input; the
    adapter flushes, runs the handshake and calls ``tls_started``. ``err`` refuses."""

    decision = True


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT. Decision: in TRANSACTION the session is in UPDATE (RFC 1939 §6): the adapter
    removes ``deleted`` and flags ``seen`` (retrieved with RETR, not deleted), then answers
    ``ok`` when that is durable or ``err`` if it failed. Either closes the session.
    In AUTHORIZATION both tuples are empty."""

    deleted: tuple[ListedMessage, ...] = ()
    seen: tuple[ListedMessage, ...] = ()
    decision = True


@dataclass(frozen=True, slots=True)
class ClientError(Event):
    """The core refused a client mistake with ``reply``; ``count`` errors so far. At the
    configured maximum the core has already said so and closed."""

    reply: Reply
    count: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """Nothing more will happen: after QUIT, end of input, an error limit or ``close``."""


_CLOSED = ConnectionClosed()


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionConfig:
    """Per-connection settings; every limit has a safe default.

    ``plaintext_allowed``: USER/PASS and the PLAIN/LOGIN mechanisms may be used (TLS is
    active, or the adapter's policy treats the client as secured). ``sasl_mechanisms`` is
    what CAPA and AUTH offer, strongest first. ``max_line`` counts the CRLF.
    """

    hostname: str
    max_line: int = 512
    max_errors: int = 10
    stls_available: bool = False
    tls_active: bool = False
    plaintext_allowed: bool = False
    sasl_mechanisms: tuple[str, ...] = ()
    #: RFC 2449 §6.5 LOGIN-DELAY announced, seconds; 0 announces nothing.
    login_delay: int = 0
    implementation: str = "Mailkeep"

    def __post_init__(self) -> None:
        if not self.hostname or any(c in self.hostname for c in " \r\n\t\x00"):
            raise ValueError(f"hostname {self.hostname!r} must be a non-empty name without spaces")
        if self.max_line < 255:
            raise ValueError("max_line must be at least 255 (RFC 2449 §4)")
        if self.max_errors < 1:
            raise ValueError("max_errors must be at least 1")
        if self.login_delay < 0:
            raise ValueError("login_delay cannot be negative")
        for mechanism in self.sasl_mechanisms:
            if not _MECHANISM.match(mechanism):
                raise ValueError(f"{mechanism!r} is not an upper-case SASL mechanism name")
        if not _printable(self.implementation) or " " in self.implementation:
            raise ValueError("implementation must be one printable word")


# --- streaming message content ----------------------------------------------------------------


class MessageStream:
    """The content of a RETR or TOP response, dot-stuffed as it streams (RFC 1939 §3).

    ``feed`` takes the message file in chunks of any size and returns what to send; every
    line that starts with "." gets one more. ``finish`` returns the end: a CRLF if the
    content did not end with one, then ".\\r\\n". With ``body_lines`` (TOP, RFC 1939 §7) only
    the header, the empty line after it and that many body lines are passed; ``done`` then
    says the rest of the file is not needed. A message without an empty line is all header.
    The output does not depend on how the content was split into chunks.
    """

    __slots__ = ("_at_line_start", "_body_left", "_done", "_in_header", "_last", "_tail",
                 "octets")

    def __init__(self, body_lines: int | None = None) -> None:
        if body_lines is not None and body_lines < 0:
            raise ValueError("body_lines cannot be negative")
        self._body_left = body_lines
        self._in_header = body_lines is not None
        self._at_line_start = True
        self._done = False
        self._last = b""          # the last two octets passed on (for the final CRLF)
        # Header phase: the last octets seen, to find "\n\r\n" or "\n\n" across chunks.
        self._tail = b"\n"        # the start of the message is a line start
        #: Content octets passed on (before stuffing).
        self.octets = 0

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> bytes:
        if self._done or not data:
            return b""
        if self._in_header:
            data = self._cut_header(data)
        elif self._body_left is not None:
            data = self._cut_body(data)
        return self._stuff(data)

    def finish(self) -> bytes:
        self._done = True
        if not self._last or self._last.endswith(b"\r\n"):
            return b".\r\n"
        if self._last.endswith(b"\r"):
            return b"\n.\r\n"
        return b"\r\n.\r\n"

    def _cut_header(self, data: bytes) -> bytes:
        """Pass the header; switch to the body after the empty line that ends it."""
        probe = self._tail + data
        shift = len(self._tail)
        ends = [i for i in (probe.find(b"\n\r\n"), probe.find(b"\n\n")) if i >= 0]
        if not ends:
            self._tail = probe[-2:]
            return data
        i = min(ends)
        # The empty line ends after its LF; positions in ``probe`` are shifted by ``shift``.
        end = i + (3 if probe[i:i + 3] == b"\n\r\n" else 2) - shift
        self._in_header = False
        head, rest = data[:end], data[end:]
        if self._body_left == 0:
            self._done = True
            return head
        return head + self._cut_body(rest) if rest else head

    def _cut_body(self, data: bytes) -> bytes:
        assert self._body_left is not None
        left = self._body_left
        count = data.count(b"\n")
        if count < left:
            self._body_left = left - count
            return data
        pos = -1
        for _ in range(left):
            pos = data.find(b"\n", pos + 1)
        self._body_left = 0
        self._done = True
        return data[:pos + 1]

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return b""
        self.octets += len(data)
        out = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[:1] == b".":
            out = b"." + out
        self._at_line_start = data.endswith(b"\n")
        self._last = (self._last + data)[-2:]
        return out


def multiline(lines: Sequence[str | bytes]) -> bytes:
    """The body and terminator of a multi-line response made of short lines (RFC 1939 §3)."""
    out = []
    for line in lines:
        raw = line.encode("utf-8") if isinstance(line, str) else line
        if raw.startswith(b"."):
            raw = b"." + raw
        out.append(raw + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)


# --- the connection ---------------------------------------------------------------------------


class ServerConnection:
    """One POP3 server session, without I/O. See the module docstring."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self._state = State.NOT_GREETED
        self._buffer = bytearray()
        self._pos = 0
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending: Event | None = None
        self._eof = False
        self._discarding_line = False
        self._error_count = 0
        self._user: str | None = None
        self._messages: tuple[ListedMessage, ...] = ()
        self._deleted: set[int] = set()           # indexes into _messages
        self._retrieved: set[int] = set()
        self._live_count = 0
        self._live_octets = 0
        self._stream: MessageStream | None = None
        self._authenticated = False
        #: Octets of plaintext dropped when STLS was accepted (CVE-2011-0411).
        self.discarded_after_stls = 0

    # --- properties -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def error_count(self) -> int:
        return self._error_count

    @property
    def pending(self) -> Event | None:
        """The decision waiting for an answer, if any."""
        return self._pending

    @property
    def messages(self) -> tuple[ListedMessage, ...]:
        """The maildrop as fixed at login, deleted messages included."""
        return self._messages

    @property
    def deleted(self) -> tuple[ListedMessage, ...]:
        return tuple(self._messages[i] for i in sorted(self._deleted))

    @property
    def retrieved(self) -> tuple[ListedMessage, ...]:
        """Messages sent completely with RETR (they get ``\\Seen`` at QUIT)."""
        return tuple(self._messages[i] for i in sorted(self._retrieved))

    # --- I/O boundary ---------------------------------------------------------------------------

    def greet(self, text: str | None = None) -> None:
        """Queue the greeting (RFC 1939 §4); commands are processed from now on."""
        if self._state is not State.NOT_GREETED:
            raise UsageError("greet() or refuse() was already called")
        self._send(ok(text or f"{self.config.hostname} {self.config.implementation} POP3 ready"))
        self._state = State.AUTHORIZATION

    def refuse(self, reply: Reply) -> None:
        """Greet with -ERR (too many connections ...) and close."""
        if self._state is not State.NOT_GREETED:
            raise UsageError("greet() or refuse() was already called")
        if reply.ok:
            raise ValueError("refuse() needs an -ERR reply")
        self._send(reply)
        self._close()

    def close(self, reply: Reply | None = None) -> None:
        """End the session from the server side (timeout, shutdown), optionally saying why.
        Nothing is committed: RFC 1939 §6, only QUIT enters the UPDATE state."""
        if self.closed:
            return
        if reply is not None:
            self._send(reply)
        self._pending = None
        self._stream = None
        self._close()

    def receive_data(self, data: bytes) -> None:
        """Hand over bytes read from the client. After accepting Stls, pass only bytes that
        came through TLS; they are kept for after ``tls_started``."""
        if self._state is State.CLOSED or not data:
            return
        self._buffer += data

    def receive_eof(self) -> None:
        """The client closed its side; complete lines already received still count."""
        self._eof = True

    def data_to_send(self) -> bytes:
        """Everything queued for the client so far, and forget it."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA. Raises UsageError while a decision is unanswered."""
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

    # --- answering decisions ----------------------------------------------------------------------

    def ok(self, text: str | None = None) -> None:
        """Answer a pending Stls or Quit positively."""
        event = self._pending
        if isinstance(event, Stls):
            self._take_pending()
            self._send(ok(text or "Begin TLS negotiation"))
            self._state = State.TLS_HANDSHAKE
            # RFC 2595 §4 / CVE-2011-0411: whatever was pipelined after STLS is dropped.
            self.discarded_after_stls += len(self._buffer) - self._pos
            self._drop_input()
        elif isinstance(event, Quit):
            self._take_pending()
            if text is None:
                text = "Logging out"
                if event.deleted:
                    text += f", {len(event.deleted)} messages deleted"
            self._send(ok(text))
            self._close()
        else:
            raise UsageError("ok() answers Stls or Quit; use login() or begin_message()")

    def err(self, text: str, code: str | None = None, *, count_error: bool = False) -> None:
        """Answer the pending decision with "-ERR [code] text".

        PASS/AUTH failures return to AUTHORIZATION; a refused RETR/TOP or STLS leaves the
        state as it was; a failed QUIT commit (RFC 1939 §6: "some deleted messages not
        removed") closes. ``count_error`` counts it toward ``max_errors``.
        """
        event = self._pending
        if event is None:
            raise UsageError("there is no decision to answer")
        if self._stream is not None:
            raise UsageError("the response has begun; finish it or close()")
        reply = err(text, code)
        self._take_pending()
        self._send(reply)
        if isinstance(event, Pass | Auth | AuthResponse):
            self._state = State.AUTHORIZATION
        elif isinstance(event, Quit):
            self._close()
            return
        if count_error:
            self._count_error(reply)

    def auth_challenge(self, data: bytes) -> None:
        """Continue a SASL exchange: send "+ base64" (RFC 5034 §4) and wait for a line."""
        if not isinstance(self._pending, Auth | AuthResponse):
            raise UsageError("auth_challenge() answers Auth or AuthResponse")
        self._take_pending()
        self._out.append(b"+ " + base64.b64encode(data) + b"\r\n")
        self._state = State.AUTH

    def login(self, messages: Sequence[ListedMessage], text: str | None = None) -> None:
        """Answer a pending Pass/Auth/AuthResponse: authenticated, with this maildrop.

        Enters TRANSACTION (RFC 1939 §4). The list is fixed for the session: numbers are
        1..n in the given order.
        """
        if not isinstance(self._pending, Pass | Auth | AuthResponse):
            raise UsageError("login() answers Pass, Auth or AuthResponse")
        listed = tuple(messages)
        for message in listed:
            if not _UNIQUE_ID.match(message.unique_id):
                raise ValueError(f"unique-id {message.unique_id!r} breaks RFC 1939 §7")
            if message.size < 0:
                raise ValueError("a message size cannot be negative")
        self._take_pending()
        self._messages = listed
        self._deleted.clear()
        self._retrieved.clear()
        self._live_count = len(listed)
        self._live_octets = sum(m.size for m in listed)
        self._authenticated = True
        self._state = State.TRANSACTION
        self._send(ok(text or "Logged in"))

    def begin_message(self) -> None:
        """Start the answer to a pending Retr or Top: "+OK" (with the size for RETR)."""
        event = self._pending
        if self._stream is not None:
            raise UsageError("begin_message() was already called")
        if isinstance(event, Retr):
            self._send(ok(f"{event.message.size} octets"))
            self._stream = MessageStream()
        elif isinstance(event, Top):
            self._send(ok("Top of message follows"))
            self._stream = MessageStream(event.lines)
        else:
            raise UsageError("begin_message() answers Retr or Top")

    def message_data(self, data: bytes) -> bool:
        """Queue a chunk of the message file; False once TOP needs no more of it."""
        stream = self._stream
        if stream is None:
            raise UsageError("call begin_message() first")
        out = stream.feed(data)
        if out:
            self._out.append(out)
        return not stream.done

    def end_message(self) -> int:
        """The file is complete (or TOP has enough): terminate the response. Returns the
        octets of message content sent (before dot-stuffing)."""
        stream = self._stream
        if stream is None:
            raise UsageError("call begin_message() first")
        self._out.append(stream.finish())
        self._stream = None
        event = self._take_pending()
        if isinstance(event, Retr):
            self._retrieved.add(event.number - 1)
        return stream.octets

    def tls_started(self, config: SessionConfig | None = None) -> None:
        """The handshake after STLS succeeded: back to AUTHORIZATION with ``config`` (which
        now offers what TLS allows); ``tls_active`` is forced True and STLS is no longer
        offered. Bytes received since Stls was accepted came through TLS and are kept."""
        if self._state is not State.TLS_HANDSHAKE:
            raise UsageError("tls_started() follows an accepted Stls")
        new = config or self.config
        if not new.tls_active or new.stls_available:
            new = dataclasses.replace(new, tls_active=True, stls_available=False)
        self.config = new
        self._user = None
        self._state = State.AUTHORIZATION

    def update_config(self, config: SessionConfig) -> None:
        """Change what is offered (for example after the adapter learnt the TLS details of
        an implicit-TLS connection, before greeting)."""
        self.config = config

    # --- internals: plumbing -----------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _close(self) -> None:
        self._state = State.CLOSED
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

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _client_error(self, reply: Reply) -> None:
        self._send(reply)
        self._count_error(reply)

    def _count_error(self, reply: Reply) -> None:
        self._error_count += 1
        self._emit(ClientError(reply, self._error_count))
        if self._error_count >= self.config.max_errors and not self.closed:
            self._send(ERR_TOO_MANY_ERRORS)
            self._close()

    # --- internals: reading lines ---------------------------------------------------------------

    def _step(self) -> bool:
        """Make progress on buffered input; False when nothing more can be done now."""
        if self._state not in (State.AUTHORIZATION, State.AUTH, State.TRANSACTION):
            return False
        line = self._read_line()
        if line is None:
            return False
        if isinstance(line, bytes):
            self._handle_line(line)
        return True

    def _line_limit(self) -> int:
        return max(MAX_SASL_LINE, self.config.max_line) if self._state is State.AUTH \
            else self.config.max_line

    def _read_line(self) -> bytes | object | None:
        """The next line without its line end; ``_SKIPPED`` when input was consumed
        without a usable line; None when more input is needed."""
        buffer, pos = self._buffer, self._pos
        end = buffer.find(b"\n", pos)
        if self._discarding_line:
            if end < 0:
                self._pos = len(buffer)
                return None
            self._pos = end + 1
            self._discarding_line = False
            return _SKIPPED
        limit = self._line_limit()
        if end < 0:
            if len(buffer) - pos >= limit:
                # Already longer than allowed with its CRLF: refuse now rather than buffer
                # without bound, and drop the rest of the line when it comes.
                self._pos = len(buffer)
                self._discarding_line = True
                self._too_long()
                return _SKIPPED
            return None
        self._pos = end + 1
        has_cr = end > pos and buffer[end - 1] == 0x0D
        stop = end - 1 if has_cr else end
        # The limit counts a CRLF (RFC 2449 §4); a bare LF is counted as if it were one.
        if stop - pos + 2 > limit:
            self._too_long()
            return _SKIPPED
        return bytes(buffer[pos:stop])

    def _too_long(self) -> None:
        if self._state is State.AUTH:
            self._state = State.AUTHORIZATION     # the exchange is over (RFC 5034 §4)
        self._client_error(ERR_TOO_LONG)

    # --- internals: commands --------------------------------------------------------------------

    def _handle_line(self, line: bytes) -> None:
        if self._state is State.AUTH:
            self._auth_line(line)
            return
        keyword, _, rest = line.partition(b" ")
        if keyword.upper() in _HTTP_VERBS:
            # A browser or proxy pointed at us (cross-protocol attacks, ALPACA 2021).
            self._send(ERR_NOT_POP3)
            self._error_count += 1
            self._emit(ClientError(ERR_NOT_POP3, self._error_count))
            self._close()
            return
        if not _KEYWORD.match(keyword):
            self._client_error(ERR_UNKNOWN)
            return
        verb = keyword.decode("ascii").upper()
        handlers = (_TRANSACTION_COMMANDS if self._state is State.TRANSACTION
                    else _AUTHORIZATION_COMMANDS)
        handler = handlers.get(verb)
        if handler is None:
            if verb in _ALL_COMMANDS:
                self._client_error(ERR_STATE)
            elif verb == "APOP":
                # RFC 1939 §7 APOP needs the password in clear on the server: not offered.
                self._client_error(err("APOP is not supported"))
            else:
                self._client_error(ERR_UNKNOWN)
            return
        handler(self, rest)

    def _args(self, rest: bytes, minimum: int, maximum: int, usage: str) -> list[bytes] | None:
        args = rest.split()
        if not minimum <= len(args) <= maximum:
            self._client_error(_syntax(usage))
            return None
        return args

    def _message_index(self, arg: bytes) -> int | None:
        """RFC 1939 §3: a message-number is 1..n and may not refer to a deleted message."""
        if not arg.isdigit():
            self._client_error(err("Invalid message number"))
            return None
        number = int(arg) if len(arg) <= MAX_NUMBER_DIGITS else 0
        if not 0 < number <= len(self._messages):
            self._client_error(ERR_NO_SUCH_MESSAGE)
            return None
        if number - 1 in self._deleted:
            self._client_error(err(f"Message {number} already deleted"))
            return None
        return number - 1

    # AUTHORIZATION

    def _cmd_capa(self, rest: bytes) -> None:
        if self._args(rest, 0, 0, "CAPA") is None:
            return
        self._send(ok("Capability list follows"))
        self._out.append(multiline(self.capabilities()))
        self._emit(Capa())

    def capabilities(self) -> list[str]:
        """The CAPA lines for the current state (RFC 2449 §5, §6)."""
        config = self.config
        lines = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
        if self._state is not State.TRANSACTION:
            if config.plaintext_allowed:
                lines.append("USER")
            mechanisms = self._offered_mechanisms()
            if mechanisms:
                lines.append("SASL " + " ".join(mechanisms))
            if config.stls_available and not config.tls_active:
                lines.append("STLS")
        if config.login_delay:
            lines.append(f"LOGIN-DELAY {config.login_delay}")
        # RFC 2449 §6.7: the server never deletes messages by itself.
        lines.append("EXPIRE NEVER")
        lines.append(f"IMPLEMENTATION {config.implementation}")
        return lines

    def _offered_mechanisms(self) -> list[str]:
        return [m for m in self.config.sasl_mechanisms
                if self.config.plaintext_allowed or m not in PLAINTEXT_MECHANISMS]

    def _cmd_user(self, rest: bytes) -> None:
        self._user = None
        if not self.config.plaintext_allowed:
            # Refused before the client sends its password in the clear.
            self._client_error(ERR_PLAINTEXT)
            return
        name = _text_argument(rest)
        if name is None:
            self._client_error(_syntax("USER name"))
            return
        self._user = name
        self._send(ok("Send the password with PASS"))
        self._emit(User(name))

    def _cmd_pass(self, rest: bytes) -> None:
        user, self._user = self._user, None
        if user is None:
            # RFC 1939 §7: PASS only immediately after a successful USER.
            self._client_error(err("Send USER first"))
            return
        # RFC 1939 §7: the argument is the rest of the line, spaces included.
        self._emit(Pass(user, rest))

    def _cmd_auth(self, rest: bytes) -> None:
        self._user = None
        args = rest.split()
        if not args:
            # Listing the mechanisms for AUTH without argument predates CAPA (RFC 1734);
            # Outlook still asks that way.
            self._send(ok("Supported mechanisms follow"))
            self._out.append(multiline(self._offered_mechanisms()))
            return
        if len(args) > 2:
            self._client_error(_syntax("AUTH mechanism [initial-response]"))
            return
        mechanism = args[0].decode("ascii", "replace").upper()
        if mechanism in PLAINTEXT_MECHANISMS and not self.config.plaintext_allowed:
            self._client_error(ERR_PLAINTEXT)
            return
        if mechanism not in self._offered_mechanisms():
            self._client_error(err("Unsupported authentication mechanism"))
            return
        initial: bytes | None = None
        if len(args) == 2:
            # RFC 5034 §4: "=" is an empty initial response.
            initial = b"" if args[1] == b"=" else _decode_base64(args[1])
            if initial is None:
                self._client_error(ERR_BAD_BASE64)
                return
        self._emit(Auth(mechanism, initial))

    def _auth_line(self, line: bytes) -> None:
        self._state = State.AUTHORIZATION     # until the adapter continues the exchange
        if line.strip() == b"*":
            self._emit(AuthResponse(b"", cancelled=True))
            return
        data = _decode_base64(line.strip())
        if data is None:
            self._client_error(ERR_BAD_BASE64)
            return
        self._emit(AuthResponse(data))

    def _cmd_stls(self, rest: bytes) -> None:
        self._user = None
        if self._args(rest, 0, 0, "STLS") is None:
            return
        if self.config.tls_active:
            self._client_error(err("Command not permitted when TLS active"))
            return
        if not self.config.stls_available:
            self._client_error(err("STLS is not available"))
            return
        self._emit(Stls())

    def _cmd_quit(self, rest: bytes) -> None:
        if self._args(rest, 0, 0, "QUIT") is None:
            return
        if self._state is State.TRANSACTION:
            self._state = State.UPDATE
            deleted = self.deleted
            seen = tuple(self._messages[i] for i in sorted(self._retrieved - self._deleted))
            self._emit(Quit(deleted, seen))
        else:
            self._emit(Quit())

    # TRANSACTION

    def _cmd_stat(self, rest: bytes) -> None:
        if self._args(rest, 0, 0, "STAT") is None:
            return
        # RFC 1939 §5: "+OK nn mm", deleted messages not counted.
        self._send(ok(f"{self._live_count} {self._live_octets}"))
        self._emit(Stat())

    def _cmd_list(self, rest: bytes) -> None:
        args = self._args(rest, 0, 1, "LIST [message]")
        if args is None:
            return
        if args:
            index = self._message_index(args[0])
            if index is None:
                return
            self._send(ok(f"{index + 1} {self._messages[index].size}"))
            self._emit(List(index + 1))
            return
        self._send(ok(f"{self._live_count} messages ({self._live_octets} octets)"))
        self._out.append(multiline([f"{i + 1} {m.size}" for i, m in enumerate(self._messages)
                                    if i not in self._deleted]))
        self._emit(List())

    def _cmd_uidl(self, rest: bytes) -> None:
        args = self._args(rest, 0, 1, "UIDL [message]")
        if args is None:
            return
        if args:
            index = self._message_index(args[0])
            if index is None:
                return
            self._send(ok(f"{index + 1} {self._messages[index].unique_id}"))
            self._emit(Uidl(index + 1))
            return
        self._send(ok("Unique-ID listing follows"))
        self._out.append(multiline([f"{i + 1} {m.unique_id}"
                                    for i, m in enumerate(self._messages)
                                    if i not in self._deleted]))
        self._emit(Uidl())

    def _cmd_retr(self, rest: bytes) -> None:
        args = self._args(rest, 1, 1, "RETR message")
        if args is None:
            return
        index = self._message_index(args[0])
        if index is not None:
            self._emit(Retr(index + 1, self._messages[index]))

    def _cmd_top(self, rest: bytes) -> None:
        args = self._args(rest, 2, 2, "TOP message lines")
        if args is None:
            return
        if not args[1].isdigit():
            # RFC 1939 §7: the line count is a non-negative number.
            self._client_error(_syntax("TOP message lines"))
            return
        index = self._message_index(args[0])
        if index is None:
            return
        # More lines than the body has means the whole message (RFC 1939 §7).
        lines = int(args[1]) if len(args[1]) <= MAX_NUMBER_DIGITS else 10 ** MAX_NUMBER_DIGITS
        self._emit(Top(index + 1, self._messages[index], lines))

    def _cmd_dele(self, rest: bytes) -> None:
        args = self._args(rest, 1, 1, "DELE message")
        if args is None:
            return
        index = self._message_index(args[0])
        if index is None:
            return
        self._deleted.add(index)
        message = self._messages[index]
        self._live_count -= 1
        self._live_octets -= message.size
        self._send(ok(f"Message {index + 1} deleted"))
        self._emit(Dele(index + 1, message))

    def _cmd_noop(self, rest: bytes) -> None:
        if self._args(rest, 0, 0, "NOOP") is None:
            return
        self._send(ok())
        self._emit(Noop())

    def _cmd_rset(self, rest: bytes) -> None:
        if self._args(rest, 0, 0, "RSET") is None:
            return
        self._deleted.clear()
        self._live_count = len(self._messages)
        self._live_octets = sum(m.size for m in self._messages)
        self._send(ok(f"Maildrop has {self._live_count} messages ({self._live_octets} octets)"))
        self._emit(Rset())


_SKIPPED = object()   # _read_line consumed input without producing a line


def _text_argument(rest: bytes) -> str | None:
    """A USER name: UTF-8 text without controls."""
    try:
        text = rest.decode("utf-8").strip(" ")
    except UnicodeDecodeError:
        return None
    if not text or any(c < " " or c == "\x7f" for c in text):
        return None
    return text


def _decode_base64(data: bytes) -> bytes | None:
    """Strict base64 (RFC 4648 §4, padded), as RFC 5034 §4 requires; None if invalid."""
    if len(data) % 4:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


_AUTHORIZATION_COMMANDS = {
    "CAPA": ServerConnection._cmd_capa,
    "USER": ServerConnection._cmd_user,
    "PASS": ServerConnection._cmd_pass,
    "AUTH": ServerConnection._cmd_auth,
    "STLS": ServerConnection._cmd_stls,
    "QUIT": ServerConnection._cmd_quit,
}
_TRANSACTION_COMMANDS = {
    "CAPA": ServerConnection._cmd_capa,
    "STAT": ServerConnection._cmd_stat,
    "LIST": ServerConnection._cmd_list,
    "UIDL": ServerConnection._cmd_uidl,
    "RETR": ServerConnection._cmd_retr,
    "TOP": ServerConnection._cmd_top,
    "DELE": ServerConnection._cmd_dele,
    "NOOP": ServerConnection._cmd_noop,
    "RSET": ServerConnection._cmd_rset,
    "QUIT": ServerConnection._cmd_quit,
}
_ALL_COMMANDS = frozenset(_AUTHORIZATION_COMMANDS) | frozenset(_TRANSACTION_COMMANDS)
