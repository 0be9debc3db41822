"""The outbound SMTP session: one connection to a relayhost or an MX host (RFC 5321).

``ClientSession.connect`` opens the connection and gets it ready for mail: greeting, EHLO
(HELO only where TLS is optional), STARTTLS (RFC 3207) or implicit TLS (RFC 8314),
EHLO again, and AUTH (RFC 4954) when credentials are given. ``send`` delivers one message
from its queue file and reports the outcome per recipient; several messages may share a
connection (RSET between them). ``quit`` ends politely, ``close`` at once.

The protocol decisions live in the sans-IO core ``mailkeep.smtp.client``; this module adds
sockets, TLS (``mailkeep.servers.tlsio``, the same lean layer the servers use), certificate
checks and the RFC 5321 §4.5.3.2 timeouts, so that delivery never hangs.

TLS levels (``TlsRequirement.level``), as Postfix names them:

- ``none``: never STARTTLS.
- ``may``: STARTTLS if offered, certificate not checked (opportunistic, RFC 7435). A
  refused STARTTLS continues in plaintext; a failed handshake raises ``SessionError`` with
  ``tls_failed`` so the caller can retry without TLS.
- ``encrypt``: TLS required, certificate not checked.
- ``verify``: TLS required, PKIX chain to ``ca_file`` (or the system store) and a
  subject alternative name matching one of ``verify_names`` (MTA-STS, relayhost).
- ``dane``: TLS required; ``verify_peer`` (the DANE TLSA check, RFC 7672) decides.
"""

from __future__ import annotations

import asyncio
import functools
import io
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from mailkeep.logfmt import log
from mailkeep.servers import tlsio
from mailkeep.smtp.client import (
    DATA,
    QUIT,
    RSET,
    STARTTLS,
    BodyEncoder,
    ClientLimits,
    Envelope,
    Recipient,
    ReplyError,
    ReplyReader,
    SaslClientError,
    TransactionPlan,
    auth_command,
    auth_mechanisms,
    auth_response,
    bdat_command,
    choose_mechanism,
    decode_challenge,
    ehlo_command,
    helo_command,
    make_sasl_client,
    parse_ehlo,
    plan_transaction,
)
from mailkeep.smtp.reply import Reply

__all__ = [
    "ClientSession",
    "ClientTimeouts",
    "Credentials",
    "MessageFileError",
    "OutboundMessage",
    "OutboundRecipient",
    "Reply",
    "SendResult",
    "SessionError",
    "TlsInfo",
    "TlsLevel",
    "TlsRequirement",
    "certificate_matches",
]

logger = logging.getLogger("mailkeep.outbound")

TlsLevel = Literal["none", "may", "encrypt", "verify", "dane"]
_LEVELS = ("none", "may", "encrypt", "verify", "dane")


@dataclass(frozen=True)
class TlsRequirement:
    """What TLS a connection must have; see the module docstring for the levels."""

    level: TlsLevel = "may"
    verify_names: tuple[str, ...] = ()
    #: DANE: gets the connection's SSLObject, returns an error text or None (verified).
    verify_peer: Callable[[ssl.SSLObject], str | None] | None = None
    ca_file: str | None = None            # None: the system trust store
    implicit: bool = False                # TLS from the first byte (port 465, RFC 8314)

    def __post_init__(self) -> None:
        if self.level not in _LEVELS:
            raise ValueError(f"TLS level must be one of {', '.join(_LEVELS)}, not {self.level!r}")
        if self.level == "dane" and self.verify_peer is None:
            raise ValueError('TLS level "dane" needs a verify_peer callable')
        if self.implicit and self.level == "none":
            raise ValueError('implicit TLS contradicts TLS level "none"')

    @property
    def required(self) -> bool:
        return self.level in ("encrypt", "verify", "dane")


@dataclass(frozen=True)
class ClientTimeouts:
    """Seconds to wait for each step; RFC 5321 §4.5.3.2 gives the minimums used here.

    ``starttls`` covers the STARTTLS reply and the handshake; ``auth`` each AUTH round
    trip; ``data_block`` each block of message data being accepted by the peer. ``rset``
    and ``quit`` are Postfix's defaults (smtp_rset_timeout) and a short polite wait.
    """

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    starttls: float = 300.0
    auth: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_done: float = 600.0
    rset: float = 20.0
    quit: float = 10.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"timeout {name} must be positive, not {value!r}")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class OutboundRecipient:
    address: str
    notify: tuple[str, ...] | None = None       # RFC 3461 §4.1
    orcpt: tuple[str, str] | None = None        # RFC 3461 §4.2: (addr-type, address)


@dataclass(frozen=True)
class OutboundMessage:
    """One message to send: the envelope and the queue file holding the content.

    ``content``: the file's bytes when the caller still has them in memory (a message
    just queued); sent from there, without reading the file back.
    """

    sender: str                                  # "" for the null sender
    recipients: tuple[OutboundRecipient, ...]
    path: Path
    size: int
    envid: str | None = None
    ret: str | None = None                       # "FULL" | "HDRS"
    smtputf8: bool = False
    body_type: str | None = None                 # None/"7BIT" | "8BITMIME" | "BINARYMIME"
    requiretls: bool = False
    content: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TlsInfo:
    """The TLS outcome of a connection, for logs and TLS reporting (RFC 8460)."""

    version: str | None                          # "TLSv1.3"; None without TLS
    cipher: str | None
    verified: bool                               # PKIX names (verify) or DANE matched
    level: TlsLevel
    error: str | None                            # e.g. why "may" went on in plaintext


@dataclass
class SendResult:
    """Outcome of ``send``.

    ``recipients``: for each recipient address, the RCPT reply if it was refused there
    (or made up locally when the message could not be offered to this peer at all), else
    the reply that ended the message (end of DATA, the last BDAT, or the refusal of
    DATA/BDAT). ``message_reply``: the reply to the end of the message data, None if the
    data was never sent.
    """

    recipients: dict[str, Reply]
    message_reply: Reply | None


Stage = Literal["connect", "greeting", "ehlo", "starttls", "tls", "auth", "mail", "data",
                "timeout"]


class SessionError(Exception):
    """The connection or session failed as a whole; no recipient outcome is final.

    ``stage``: where it failed. ``reply``: the peer's reply that caused it, if any.
    ``temporary``: try again later (4xx, timeouts, resets, TLS problems); False for 5xx
    to the greeting, EHLO or AUTH and for credentials that cannot be used.
    ``tls_failed``: the TLS handshake or the certificate check failed (for level "may"
    the caller may retry without TLS). ``recipients``: replies already received for
    some recipients before the failure (e.g. permanent RCPT refusals).
    """

    def __init__(self, message: str, *, stage: Stage, reply: Reply | None = None,
                 temporary: bool = True, tls_failed: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.reply = reply
        self.temporary = temporary
        self.tls_failed = tls_failed
        self.recipients: dict[str, Reply] = {}
        # False when the connection can no longer carry a command (timeout, garbage,
        # reset, TLS failure, middle of DATA): then no QUIT is attempted.
        self._in_step = True


def _stream_failure(message: str, *, stage: Stage, tls_failed: bool = False) -> SessionError:
    error = SessionError(message, stage=stage, tls_failed=tls_failed)
    error._in_step = False
    return error


class MessageFileError(OSError):
    """The queue file could not be read; nothing of a half-read message was delivered
    (the connection is dropped before the end of data). An OSError, as local I/O
    failures are; ``error`` is the original one."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"cannot read message file {path}: {error.strerror or error}")
        self.path = path
        self.error = error


# --- certificates ----------------------------------------------------------------------------------

def _dns_name_matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    # RFC 6125 §6.4.3, as RFC 8461 §4.1 (MTA-STS) applies it: "*" only as the whole
    # left-most label, standing for exactly one label.
    if pattern.startswith("*.") and name.endswith(pattern[1:]):
        label = name[: -len(pattern) + 1]
        return bool(label) and "." not in label
    return False


def certificate_matches(der: bytes, names: Iterable[str]) -> bool:
    """True if the certificate's subject alternative names cover one of ``names``.

    DNS names compare case-insensitively (A-labels), with single-label wildcards; IP
    addresses (optionally in brackets) match iPAddress entries. The subject CN is not
    used (RFC 6125 §6.4.4 deprecates it; every public CA sets SANs).
    """
    from cryptography import x509

    try:
        certificate = x509.load_der_x509_certificate(der)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    dns_names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    addresses = san.get_values_for_type(x509.IPAddress)
    for name in names:
        wanted = name.lower().rstrip(".")
        try:
            if ipaddress.ip_address(wanted.strip("[]").removeprefix("ipv6:")) in addresses:
                return True
            continue
        except ValueError:
            pass
        if any(_dns_name_matches(pattern, wanted) for pattern in dns_names):
            return True
    return False


def _file_stamp(path: str | None) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


@functools.lru_cache(maxsize=16)
def _client_context(verify: bool, ca_file: str | None, _stamp: int | None) -> ssl.SSLContext:
    """A client context; cached (loading a trust store costs milliseconds), keyed by the
    CA file's mtime so a replaced file is read again."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2      # RFC 8996
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Names are checked after the handshake against a list (certificate_matches): one
    # server_hostname cannot express "any of these names" (MTA-STS lists several).
    context.check_hostname = False
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        else:
            context.load_default_certs()
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _describe_tls_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, TimeoutError):
        return str(exc) or "handshake timed out"
    return str(exc) or type(exc).__name__


# --- the connection ----------------------------------------------------------------------------------

class _ClientProtocol(asyncio.Protocol):
    """Feeds the reply reader and wakes whoever waits for replies or for write space."""

    def __init__(self, limits: ClientLimits) -> None:
        self.reader = ReplyReader(limits)
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set in connection_made
        self.lost = False
        self.eof = False
        self._reply_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._write_paused = False
        self._read_paused = False
        # Unread replies beyond this pause reading: a peer cannot fill our memory with
        # replies nobody asked for.
        self._read_limit = 4 * limits.max_reply_bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Looked up once: asyncio.get_running_loop() costs a getpid() system call on
        # Python 3.11, and a reply is waited for several times per message.
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.reader.receive_data(data)
        if self.reader.buffered > self._read_limit and not self._read_paused:
            self._read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        self._release_writers()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_writers()

    def _wake(self) -> None:
        waiter = self._reply_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release_writers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def next_reply(self) -> Reply:
        """The next reply; ReplyError for garbage, ConnectionResetError if the peer left."""
        while True:
            reply = self.reader.next_reply()
            if reply is not None:
                return reply
            if self._read_paused and self.transport is not None:
                self._read_paused = False
                self.transport.resume_reading()
            if self.lost or self.eof:
                raise ConnectionResetError("the server closed the connection")
            self._reply_waiter = self._loop.create_future()
            try:
                await self._reply_waiter
            finally:
                self._reply_waiter = None

    async def drain(self) -> None:
        while self._write_paused and not self.lost:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.lost:
            raise ConnectionResetError("the server closed the connection")


class ClientSession:
    """One SMTP client connection, ready for mail after ``connect``."""

    def __init__(self, protocol: _ClientProtocol, *, host: str, port: int, peer: str,
                 helo_name: str, tls: TlsRequirement, timeouts: ClientTimeouts,
                 limits: ClientLimits) -> None:
        self._protocol = protocol
        self._host = host
        self._port = port
        self.peer = peer
        self._helo_name = helo_name
        self._tls = tls
        self._timeouts = timeouts
        self._limits = limits
        self.capabilities: dict[str, str] = {}
        self.tls_info = TlsInfo(None, None, False, tls.level, None)
        self.authenticated_as: str | None = None
        self.auth_mechanism: str | None = None
        self.messages_sent = 0
        self._channel_binding = False
        self._need_rset = False
        self._broken = False
        self._closed = False

    # --- opening ----------------------------------------------------------------------

    @classmethod
    async def connect(cls, host: str, port: int, *, address: str | None = None,
                      helo_name: str, tls: TlsRequirement,
                      credentials: Credentials | None = None,
                      timeouts: ClientTimeouts | None = None,
                      source_address: str | None = None,
                      limits: ClientLimits | None = None,
                      channel_binding: bool = False) -> ClientSession:
        """Connect to ``address`` (or ``host``) and get the session ready for mail.

        ``host`` is the server's name (certificate checks, SNI, logs); ``address`` the IP
        address to connect to when the caller resolved it (MX delivery).
        ``channel_binding``: use SCRAM-SHA-256-PLUS (tls-server-end-point) when offered;
        off by default, see ``choose_mechanism``. Raises ``SessionError``; ``ValueError``
        for arguments that can never work.
        """
        ehlo_command(helo_name)                      # a bad name is our bug: fail early
        timeouts = timeouts or ClientTimeouts()
        limits = limits or ClientLimits()
        target = (address or host).strip("[]")
        where = f"{host}[{target}]:{port}" if address else f"{host}:{port}"
        protocol = _ClientProtocol(limits)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeouts.connect):
                await loop.create_connection(
                    lambda: protocol, target, port,
                    local_addr=(source_address, 0) if source_address else None)
        except TimeoutError:
            raise SessionError(f"cannot connect to {where}: no answer within "
                               f"{timeouts.connect:g} s", stage="timeout") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise SessionError(f"cannot connect to {where}: {reason}",
                               stage="connect") from None
        assert protocol.transport is not None
        peername = protocol.transport.get_extra_info("peername")
        peer = f"{host}[{peername[0]}]:{peername[1]}" if peername else where
        session = cls(protocol, host=host, port=port, peer=peer, helo_name=helo_name,
                      tls=tls, timeouts=timeouts, limits=limits)
        session._channel_binding = channel_binding
        try:
            await session._open(credentials)
        except SessionError as exc:
            # RFC 5321 §3.1/§4.1.1.10: a server still in step with us gets a QUIT.
            session._abandon(polite=exc._in_step)
            log(logger, "connection failed", logging.INFO, peer=peer, stage=exc.stage,
                temporary=exc.temporary, error=str(exc))
            raise
        except BaseException:
            session.close()
            raise
        info = session.tls_info
        log(logger, "connected", logging.DEBUG, peer=peer, tls=info.version or "none",
            cipher=info.cipher, verified=info.verified, tls_error=info.error,
            auth=session.auth_mechanism)
        return session

    async def _open(self, credentials: Credentials | None) -> None:
        if self._tls.implicit:
            await self._start_tls()
        greeting = await self._read(self._timeouts.greeting, "greeting", "the greeting")
        if greeting.code != 220:
            raise self._refused("greeting", greeting, "the connection (greeting)")
        await self._hello(credentials is not None)
        if not self._tls.implicit:
            await self._maybe_starttls(credentials is not None)
        if credentials is not None:
            await self._authenticate(credentials)

    async def _hello(self, need_esmtp: bool) -> None:
        reply = await self._command(ehlo_command(self._helo_name), self._timeouts.ehlo,
                                    "ehlo", "EHLO")
        if reply.code == 250:
            self.capabilities = parse_ehlo(reply)
            return
        # RFC 5321 §4.1.4: a server that does not know EHLO says 5xx; HELO then, but only
        # where nothing needs an extension (TLS optional, no AUTH).
        if reply.is_permanent and self._tls.level in ("none", "may") and not need_esmtp \
                and self.tls_info.version is None:
            helo = await self._command(helo_command(self._helo_name), self._timeouts.ehlo,
                                       "ehlo", "HELO")
            if helo.code == 250:
                self.capabilities = {}
                return
            reply = helo
        raise self._refused("ehlo", reply, "EHLO")

    async def _maybe_starttls(self, need_esmtp: bool) -> None:
        level = self._tls.level
        if level == "none":
            return
        if "STARTTLS" not in self.capabilities:
            if level == "may":
                return
            raise SessionError(f"{self.peer} does not offer STARTTLS, and TLS is required "
                               f"(level {level})", stage="starttls")
        reply = await self._command(STARTTLS, self._timeouts.starttls, "starttls", "STARTTLS")
        if reply.code != 220:
            if level == "may":
                # RFC 7435: opportunistic TLS that the peer refuses goes on in plaintext.
                self.tls_info = TlsInfo(None, None, False, level, f"STARTTLS refused: {reply}")
                log(logger, "STARTTLS refused, continuing without TLS", logging.INFO,
                    peer=self.peer, reply=str(reply))
                return
            raise SessionError(f"{self.peer} refused STARTTLS: {reply}", stage="starttls",
                               reply=reply)
        # Anything that came with or after the 220 was sent in plaintext and is no reply
        # of the TLS session (response injection, cf. CVE-2011-0411): drop it.
        dropped = self._protocol.reader.discard_buffered()
        if dropped:
            log(logger, "discarded plaintext received after 220 to STARTTLS",
                logging.WARNING, peer=self.peer, octets=dropped)
        await self._start_tls()
        # RFC 3207 §4.2: everything learnt before TLS is forgotten; EHLO again.
        self.capabilities = {}
        await self._hello(need_esmtp)

    def _sni(self) -> str | None:
        if self._tls.verify_names:
            return self._tls.verify_names[0]
        return None if _is_ip(self._host) else self._host

    async def _start_tls(self) -> None:
        tls = self._tls
        protocol = self._protocol
        assert protocol.transport is not None
        try:
            context = _client_context(tls.level == "verify", tls.ca_file,
                                      _file_stamp(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise SessionError(f"cannot load the CA file {tls.ca_file}: {exc}",
                               stage="tls", tls_failed=True) from None
        try:
            transport = await tlsio.start_tls(
                protocol.transport, protocol, context, server_side=False,
                handshake_timeout=self._timeouts.starttls, server_hostname=self._sni())
        except (OSError, TimeoutError, ValueError) as exc:     # ssl.SSLError is an OSError
            raise _stream_failure(f"TLS handshake with {self.peer} failed: "
                                  f"{_describe_tls_error(exc)}", stage="tls",
                                  tls_failed=True) from None
        protocol.transport = transport
        sslobj = transport.get_extra_info("ssl_object")
        verified = False
        error: str | None = None
        if tls.level == "verify":
            names = tls.verify_names or (self._host,)
            der = sslobj.getpeercert(binary_form=True)
            if not der or not certificate_matches(der, names):
                error = (f"the certificate of {self.peer} is not valid for "
                         f"{', '.join(names)}")
            verified = error is None
        elif tls.level == "dane":
            assert tls.verify_peer is not None
            try:
                error = tls.verify_peer(sslobj)
            except Exception as exc:  # the checker's failure must not look like success
                error = f"DANE check failed: {type(exc).__name__}: {exc}"
            verified = error is None
        if error is not None:
            transport.abort()
            raise _stream_failure(error, stage="tls", tls_failed=True)
        cipher = sslobj.cipher()
        self.tls_info = TlsInfo(sslobj.version(), cipher[0] if cipher else None, verified,
                                tls.level, None)

    async def _authenticate(self, credentials: Credentials) -> None:
        user = credentials.username
        if self.tls_info.version is None:
            raise SessionError(f"refusing to send the password of {user} to {self.peer} "
                               "over an unencrypted connection", stage="auth", temporary=False)
        offered = auth_mechanisms(self.capabilities)
        if not offered:
            raise SessionError(f"{self.peer} does not offer AUTH; cannot log in as {user}",
                               stage="auth", temporary=False)
        binding: bytes | None = None
        if self._channel_binding:
            binding = tlsio.channel_bindings(self._protocol.transport).get("tls-server-end-point")
        mechanism = choose_mechanism(offered, channel_binding=binding is not None)
        if mechanism is None:
            raise SessionError(f"no AUTH mechanism in common with {self.peer}: it offers "
                               f"{' '.join(offered)}; Mailkeep uses SCRAM-SHA-256, PLAIN, "
                               "LOGIN", stage="auth", temporary=False)
        try:
            client = make_sasl_client(
                mechanism, user, credentials.password,
                channel_binding=("tls-server-end-point", binding) if binding else None)
            line = auth_command(mechanism, client.initial_response())
        except (SaslClientError, ValueError) as exc:
            raise SessionError(f"cannot log in as {user}: {exc}", stage="auth",
                               temporary=False) from None
        what = f"AUTH {mechanism}"
        for _ in range(self._limits.max_auth_steps + 1):
            reply = await self._command(line, self._timeouts.auth, "auth", what)
            if reply.code == 235:
                try:
                    client.finish()
                except SaslClientError as exc:
                    raise SessionError(f"{what} with {self.peer}: {exc}", stage="auth",
                                       reply=reply, temporary=exc.temporary) from None
                self.authenticated_as = user
                self.auth_mechanism = mechanism
                return
            if reply.code != 334:
                raise self._refused("auth", reply, f"{what} as {user}")
            try:
                line = auth_response(client.respond(decode_challenge(reply)))
            except SaslClientError as exc:
                # RFC 4954 §4: "*" cancels the exchange; the server answers 501.
                self._write(auth_response(None))
                try:
                    await self._read(self._timeouts.auth, "auth", f"{what} cancellation")
                except SessionError:
                    pass
                raise SessionError(f"{what} with {self.peer}: {exc}", stage="auth",
                                   reply=reply, temporary=exc.temporary) from None
        raise SessionError(f"{what} with {self.peer}: more than "
                           f"{self._limits.max_auth_steps} challenges", stage="auth")

    # --- sending ------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        """Offer one message; per-recipient outcomes in the result.

        Raises ``SessionError`` when the connection fails (the session is then closed),
        ``MessageFileError`` when the queue file cannot be read, ``ValueError`` for an
        envelope that can never be sent (bad NOTIFY/RET values).
        """
        if self._broken or self._closed or self._protocol.lost:
            raise SessionError(f"the connection to {self.peer} is no longer usable",
                               stage="mail")
        envelope = Envelope(
            message.sender,
            tuple(Recipient(r.address, r.notify, r.orcpt) for r in message.recipients),
            message.size, message.body_type, message.smtputf8, message.ret, message.envid,
            message.requiretls)
        # RFC 8689 §4.2.1: a verified certificate, by PKIX names or DANE.
        requiretls_ok = self.tls_info.verified and self.tls_info.level in ("verify", "dane")
        plan = plan_transaction(self.capabilities, envelope, requiretls_ok=requiretls_ok)
        results: dict[str, Reply] = dict(plan.refused)
        if not plan.recipients:
            return SendResult(results, None)
        try:
            file: BinaryIO = (io.BytesIO(message.content) if message.content is not None
                              else open(message.path, "rb"))
        except OSError as exc:
            raise MessageFileError(message.path, exc) from None
        try:
            with file:
                result = await self._transaction(plan, file, results, message.path)
        except SessionError as exc:
            exc.recipients = dict(results)
            self._abandon(polite=exc._in_step)
            log(logger, "delivery failed", logging.INFO, peer=self.peer,
                stage=exc.stage, temporary=exc.temporary, error=str(exc))
            raise
        except BaseException:
            # A file error or a cancellation half-way: the peer must not see an end of
            # data, so the connection is dropped, never finished.
            self._abandon(polite=False)
            raise
        self.messages_sent += 1
        final = result.message_reply
        log(logger, "message offered", logging.DEBUG, peer=self.peer,
            recipients=len(plan.recipients),
            accepted=sum(1 for r in result.recipients.values() if r.code // 100 == 2),
            reply=str(final) if final else None)
        return result

    async def _transaction(self, plan: TransactionPlan, file: BinaryIO,
                           results: dict[str, Reply], path: Path) -> SendResult:
        t = self._timeouts
        accepted: list[str] = []
        reset_first = self._need_rset
        # Whatever happens below, the next message starts from a clean state (RSET also
        # shows that a reused connection still works).
        self._need_rset = True
        data_in_group = plan.pipelined and not plan.use_bdat
        if plan.pipelined:
            # RFC 2920 §3.1: RSET, MAIL, every RCPT and DATA may go in one group; the
            # replies come back in the same order.
            group = [RSET] if reset_first else []
            group += [plan.mail, *(r.command for r in plan.recipients)]
            if data_in_group:
                group.append(DATA)
            self._write(b"".join(group))
            if reset_first:
                await self._expect_reset(await self._read(t.rset, "mail", "RSET"))
            mail_reply = await self._read(t.mail, "mail", "MAIL FROM")
            for recipient in plan.recipients:
                reply = await self._read(t.rcpt, "mail", f"RCPT TO:<{recipient.address}>")
                self._record(results, accepted, recipient.address, mail_reply, reply)
        else:
            if reset_first:
                await self._expect_reset(await self._command(RSET, t.rset, "mail", "RSET"))
            mail_reply = await self._command(plan.mail, t.mail, "mail", "MAIL FROM")
            for recipient in plan.recipients:
                if mail_reply.code // 100 == 2:
                    reply = await self._command(recipient.command, t.rcpt, "mail",
                                                f"RCPT TO:<{recipient.address}>")
                else:
                    reply = mail_reply
                self._record(results, accepted, recipient.address, mail_reply, reply)
        if data_in_group:
            data_reply = await self._read(t.data_init, "data", "DATA")
            if data_reply.code == 354 and not accepted:
                # RFC 2920 §3.1: DATA accepted although no recipient was: send an empty
                # message, which the server must then refuse.
                self._write(b".\r\n")
                await self._read(t.data_done, "data", "end of data")
                return SendResult(results, None)
        if not accepted:
            return SendResult(results, None)      # RFC 5321 §3.3: no data without RCPT
        if plan.use_bdat:
            final = await self._send_bdat(plan, file, path)
        else:
            if not data_in_group:
                data_reply = await self._command(DATA, t.data_init, "data", "DATA")
            if data_reply.code != 354:
                for address in accepted:
                    results[address] = data_reply
                return SendResult(results, None)
            final = await self._send_data(file, path)
        for address in accepted:
            results[address] = final
        return SendResult(results, final)

    @staticmethod
    def _record(results: dict[str, Reply], accepted: list[str], address: str,
                mail_reply: Reply, reply: Reply) -> None:
        # After a refused MAIL, the RCPT replies (503 bad sequence) say nothing useful.
        if mail_reply.code // 100 != 2:
            results[address] = mail_reply
            return
        results[address] = reply
        if reply.code // 100 == 2:
            accepted.append(address)

    async def _expect_reset(self, reply: Reply) -> None:
        if reply.code // 100 != 2:
            raise SessionError(f"{self.peer} answered RSET with {reply}", stage="mail",
                               reply=reply, temporary=True)

    def _read_piece(self, file: BinaryIO, path: Path) -> bytes:
        try:
            return file.read(self._limits.chunk_size)
        except OSError as exc:
            raise MessageFileError(path, exc) from None

    async def _send_data(self, file: BinaryIO, path: Path) -> Reply:
        encoder = BodyEncoder(dot_stuff=True)
        # Each piece is written once the next one is read, so that the last one goes
        # out with the end of data: a message of one piece costs one write.
        pending = encoder.encode(self._read_piece(file, path))
        while piece := self._read_piece(file, path):
            self._write(pending)
            await self._drain("DATA")
            pending = encoder.encode(piece)
        self._write(pending + encoder.finish())
        await self._drain("DATA")
        return await self._read(self._timeouts.data_done, "data", "end of data")

    async def _send_bdat(self, plan: TransactionPlan, file: BinaryIO, path: Path) -> Reply:
        """RFC 3030 §2: the content in BDAT chunks, the last one marked LAST."""
        t = self._timeouts
        encoder = BodyEncoder(dot_stuff=False, binary=plan.binary)
        chunks = 0
        current = encoder.encode(self._read_piece(file, path))
        while True:
            piece = self._read_piece(file, path)
            if not piece:
                current += encoder.finish()
                self._write(bdat_command(len(current), last=True) + current)
                chunks += 1
                break
            if current:
                self._write(bdat_command(len(current), last=False) + current)
                chunks += 1
                if not plan.pipelined:
                    reply = await self._read(t.data_block, "data", "BDAT")
                    if reply.code // 100 != 2:
                        return reply
                await self._drain("BDAT")
            current = encoder.encode(piece)
        await self._drain("BDAT")
        if not plan.pipelined:
            return await self._read(t.data_done, "data", "BDAT LAST")
        # Pipelined chunks (RFC 3030 §4.2): one reply each; the first failure decides.
        failure: Reply | None = None
        for index in range(chunks):
            last = index == chunks - 1
            reply = await self._read(t.data_done if last else t.data_block, "data",
                                     "BDAT LAST" if last else "BDAT")
            if failure is None and (reply.code // 100 != 2 or last):
                failure = reply
        assert failure is not None
        return failure

    # --- closing ------------------------------------------------------------------------------

    async def quit(self) -> None:
        """Say QUIT (RFC 5321 §4.1.1.10), wait briefly for 221, close."""
        if self._closed:
            return
        if not self._broken and not self._protocol.lost:
            try:
                self._write(QUIT)
                async with asyncio.timeout(self._timeouts.quit):
                    await self._protocol.next_reply()
            except (SessionError, ReplyError, ConnectionError, TimeoutError):
                pass
        self.close()

    def close(self) -> None:
        """Close now (TLS close_notify if possible), without QUIT."""
        if self._closed:
            return
        self._closed = True
        transport = self._protocol.transport
        if transport is not None:
            if self._broken:
                transport.abort()
            else:
                transport.close()

    def _abandon(self, *, polite: bool) -> None:
        """After a failure: never reuse this connection. ``polite`` sends QUIT first
        (only between commands; never in the middle of message data)."""
        self._broken = True
        transport = self._protocol.transport
        if polite and transport is not None and not self._protocol.lost:
            transport.write(QUIT)
            self._closed = True
            transport.close()         # flushes QUIT, then closes
            return
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self._protocol.transport
        if self._protocol.lost or transport is None or transport.is_closing():
            raise _stream_failure(f"{self.peer} closed the connection", stage="data")
        transport.write(data)

    async def _drain(self, what: str) -> None:
        protocol = self._protocol
        if not protocol._write_paused and not protocol.lost:
            return  # nothing to wait for: no timer to set up
        try:
            async with asyncio.timeout(self._timeouts.data_block):
                await self._protocol.drain()
        except TimeoutError:
            raise _stream_failure(f"{self.peer} accepted no {what} data for "
                                  f"{self._timeouts.data_block:g} s", stage="timeout") from None
        except ConnectionError:
            raise _stream_failure(f"{self.peer} closed the connection during {what}",
                                  stage="data") from None

    async def _command(self, line: bytes, timeout: float, stage: Stage, what: str) -> Reply:
        self._write(line)
        return await self._read(timeout, stage, what)

    async def _read(self, timeout: float, stage: Stage, what: str) -> Reply:
        # Pipelined replies mostly arrive together: those already here need no timer.
        try:
            reply = self._protocol.reader.next_reply()
        except ReplyError as exc:
            raise _stream_failure(f"{self.peer} sent an invalid reply to {what}: {exc}",
                                  stage=stage) from None
        if reply is not None:
            return reply
        try:
            async with asyncio.timeout(timeout):
                return await self._protocol.next_reply()
        except TimeoutError:
            raise _stream_failure(f"{self.peer} did not answer {what} within {timeout:g} s",
                                  stage="timeout") from None
        except ReplyError as exc:
            raise _stream_failure(f"{self.peer} sent an invalid reply to {what}: {exc}",
                                  stage=stage) from None
        except ConnectionError:
            raise _stream_failure(f"{self.peer} closed the connection (waiting for the "
                                  f"reply to {what})", stage=stage) from None

    def _refused(self, stage: Stage, reply: Reply, what: str) -> SessionError:
        # 5xx is final for the greeting, EHLO and AUTH; 4xx and nonsense codes are not.
        return SessionError(f"{self.peer} refused {what}: {reply}", stage=stage, reply=reply,
                            temporary=not reply.is_permanent)
