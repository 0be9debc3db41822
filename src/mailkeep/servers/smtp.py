"""The SMTP and LMTP receivers: a thin asyncio adapter around ``mailkeep.smtp``.

The sans-IO core decides what the protocol allows; this module owns what needs I/O:
sockets, TLS handshakes, timeouts, connection limits, buffering the message body, and
asking the delivery pipeline. One ``SMTPSession`` per connection; its ``run`` coroutine is
the loop "next event → decide → write replies → read more".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from mailkeep.config.schema import SmtpConfig
from mailkeep.delivery.pipeline import (
    AcceptedRecipient,
    Envelope,
    Pipeline,
    SessionInfo,
    combine_smtp_reply,
    new_message_id,
)
from mailkeep.logfmt import log
from mailkeep.servers import tlsio
from mailkeep.servers.listener import REFUSALS, ConnectionCounts, SessionListener
from mailkeep.smtp import server as core
from mailkeep.smtp.reply import Reply

logger = logging.getLogger("mailkeep.smtp")

# Pause reading from a client that sends this much without waiting for our replies.
READ_PAUSE_BYTES = 1 << 20
# Bodies up to this size stay in memory; larger ones stream to a spool file.
MEMORY_BODY_LIMIT = 1 << 20


@dataclass
class ReceiverContext:
    """Everything a session needs from the running server; swapped whole on reload."""

    pipeline: Pipeline
    session_config: core.SessionConfig
    limits: SmtpConfig  # the [smtp] section: connection counts, timeouts, error limits
    tls_context: ssl.SSLContext | None
    spool_dir: Path
    lmtp: bool = False
    listener: str = "smtp"
    implicit_tls: bool = False


class SpooledBody:
    """The message body as it arrives: in memory while small, then in a spool file."""

    def __init__(self, spool_dir: Path):
        self._spool_dir = spool_dir
        self._buffer = bytearray()
        self._file = None
        self.path: Path | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._buffer += data
        if len(self._buffer) > MEMORY_BODY_LIMIT:
            fd, name = tempfile.mkstemp(prefix="in-", dir=self._spool_dir)
            self.path = Path(name)
            self._file = os.fdopen(fd, "wb", buffering=1 << 16)
            self._file.write(self._buffer)
            self._buffer = bytearray()

    def finish(self) -> bytes | Path:
        """The complete body: bytes, or the path of a flushed spool file."""
        if self._file is not None:
            self._file.close()
            self._file = None
            assert self.path is not None
            return self.path
        return bytes(self._buffer)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        self._buffer = bytearray()



class SMTPSession(asyncio.Protocol):
    def __init__(self, ctx: ReceiverContext, counter: ConnectionCounts,
                 registry: set[SMTPSession] | None = None):
        self.ctx = ctx
        self.counter = counter
        self.registry = registry if registry is not None else set()
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: core.ServerConnection | None = None
        self._wakeup: asyncio.Future | None = None
        self._unread = 0
        self._paused = False
        self._lost = False
        self._counted = False
        self._shutdown = False
        # While the session task waits for input ("parked"), data_received handles the
        # events that need no waiting itself: no task switch, future or timer per command.
        self._parked = False
        self._pending_event: object | None = None
        self._last_activity = 0.0
        self.info = SessionInfo(client_ip="unknown", listener=ctx.listener,
                                protocol="LMTP" if ctx.lmtp else "ESMTP")
        self.envelope: Envelope | None = None
        self.mail_size_hint: int | None = None  # MAIL FROM's SIZE=, for the quota check
        self.body: SpooledBody | None = None
        self.task: asyncio.Task | None = None
        self.stats = Counter()
        self.started = time.monotonic()

    # -- asyncio.Protocol callbacks: feed the core, wake the session loop ---------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.conn is not None:
            return  # start_tls() hands us the new transport in _upgrade, not here
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.info.client_ip, self.info.client_port = peer[0], peer[1]
        else:
            self.info.client_ip = "local"
        self.conn = core.ServerConnection(self.ctx.session_config)
        limits = self.ctx.limits
        refused = self.counter.admit(self.info.client_ip, limits.max_connections,
                                     limits.max_connections_per_ip)
        if refused is not None:
            self._refuse(Reply(421, "4.7.0", f"{self.ctx.session_config.hostname} "
                               f"{REFUSALS[refused]}"), refused)
            return
        self._counted = True
        self.registry.add(self)
        if self.ctx.implicit_tls:
            # RFC 8314: TLS from the first byte. Nothing may reach the core before the
            # handshake; run() performs it with the certificate current at that moment.
            transport.pause_reading()
        else:
            self.conn.greet()
            transport.write(self.conn.data_to_send())
        self.task = self.loop.create_task(self.run())

    def _release(self) -> None:
        """Give back this connection's slots; safe to call more than once."""
        self.registry.discard(self)
        if self._counted:
            self._counted = False
            self.counter.release(self.info.client_ip)

    def _refuse(self, reply: Reply, reason: str) -> None:
        assert self.conn is not None and self.transport is not None
        self.conn.refuse_greeting(reply)
        self.transport.write(self.conn.data_to_send())
        self.transport.close()
        log(logger, "connection refused", logging.WARNING, client=self.info.client_ip,
            reason=reason)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            return
        self.conn.receive_data(data)
        self._last_activity = self.loop.time()
        if self._parked:
            self._drive()
            return
        self._unread += len(data)
        if self._unread > READ_PAUSE_BYTES and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def _drive(self) -> None:
        """Handle ready events synchronously; give the first that must wait to the task."""
        conn = self.conn
        assert conn is not None
        try:
            while True:
                event = conn.next_event()
                if event is core.NEED_DATA:
                    self._flush()
                    if conn.closed:
                        self._wake()
                    return
                if not self._handle_now(event):
                    self._pending_event = event
                    self._wake()
                    return
        except Exception as exc:  # never let a bug escape into asyncio's transport
            self._pending_event = exc
            self._wake()

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.conn.receive_eof()
        self._wake()
        # Keep our side open: a client that half-closes after a pipelined transaction
        # still gets its replies (run() closes the transport when the session ends).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._release()
        self._wake()

    def request_shutdown(self) -> None:
        """End the session at the next safe point (never in the middle of a delivery)."""
        self._shutdown = True
        self._wake()

    def _wake(self) -> None:
        self._parked = False
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _check_idle(self, wakeup: asyncio.Future) -> None:
        """The idle timer: expire, or re-arm for the time left since the last input."""
        if wakeup.done():
            return
        timeout = (self.ctx.limits.data_timeout if self.body is not None
                   else self.ctx.limits.command_timeout)
        left = self._last_activity + timeout - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._check_idle, wakeup)
        else:
            wakeup.set_exception(TimeoutError())

    # -- the session loop -----------------------------------------------------------------

    async def _wait_for_input(self) -> bool:
        """Flush replies, then wait for more input. False when the session must end."""
        assert self.conn is not None and self.transport is not None
        self._flush()
        if self.conn.closed or self._lost:
            return False
        if self._shutdown:
            # Between commands nothing is in flight: tell the client to come back later.
            self.transport.write(Reply(421, "4.3.2", f"{self.ctx.session_config.hostname} "
                                       "Service shutting down, try again later").to_bytes())
            return False
        self._unread = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._wakeup = wakeup = self.loop.create_future()
        in_body = self.body is not None
        timeout = self.ctx.limits.data_timeout if in_body else self.ctx.limits.command_timeout
        self._last_activity = self.loop.time()
        self._timer = self.loop.call_later(timeout, self._check_idle, wakeup)
        self._parked = True
        try:
            await wakeup
        except TimeoutError:
            in_body = self.body is not None
            self.transport.write(Reply(421, "4.4.2", f"{self.ctx.session_config.hostname} "
                                       "Error: timeout exceeded").to_bytes())
            log(logger, "timeout", logging.INFO, client=self.info.client_ip,
                state="data" if in_body else "command")
            return False
        finally:
            self._parked = False
            self._timer.cancel()
            self._wakeup = None
        return not self._lost

    def _flush(self) -> None:
        assert self.conn is not None and self.transport is not None
        out = self.conn.data_to_send()
        if out and not self._lost:
            self.transport.write(out)

    async def run(self) -> None:
        conn = self.conn
        assert conn is not None and self.transport is not None
        log(logger, "connect", logging.DEBUG, client=self.info.client_ip,
            listener=self.ctx.listener)
        try:
            if self.ctx.implicit_tls:
                if not await self._upgrade():
                    return
                conn.greet()
            while True:
                if self._pending_event is not None:
                    event, self._pending_event = self._pending_event, None
                    if isinstance(event, Exception):
                        raise event
                else:
                    event = conn.next_event()
                if event is core.NEED_DATA:
                    if not await self._wait_for_input():
                        break
                    continue
                if isinstance(event, core.ConnectionClosed):
                    break
                if not self._handle_now(event):
                    await self._handle_later(event)
        except Exception:
            logger.exception("session failed", extra={"client": self.info.client_ip})
            with contextlib.suppress(Exception):
                self.transport.write(Reply(421, "4.3.0", "Internal error, closing connection")
                                     .to_bytes())
        finally:
            if self.body is not None:
                self.body.discard()
                self.body = None
            with contextlib.suppress(Exception):
                self._flush()
            if not self._lost:
                self.transport.close()
            self._release()
            log(logger, "disconnect", client=self.info.client_ip, helo=self.info.helo,
                tls=bool(self.info.tls), messages=self.stats["messages"],
                rejected=self.stats["rejected"], errors=conn.error_count,
                seconds=round(time.monotonic() - self.started, 3))

    def _handle_now(self, event: object) -> bool:
        """Handle an event that needs no waiting; False if it must go to _handle_later."""
        conn = self.conn
        assert conn is not None
        match event:
            case core.Hello(domain=domain):
                self.info.helo = domain
                conn.accept()
            case core.MailFrom() if self._shutdown:
                # Stopping: no new transaction may start (a 4xx makes the sender retry).
                conn.close(Reply(421, "4.3.2", f"{self.ctx.session_config.hostname} "
                                 "Service shutting down, try again later"))
            case core.MailFrom(sender=sender, params=params):
                self.envelope = Envelope(sender=sender, smtputf8=params.smtputf8,
                                         body_type=params.body, envid=params.envid,
                                         ret=params.ret)
                self.mail_size_hint = params.size
                conn.accept()
            case core.RcptTo(recipient=recipient, params=params):
                assert self.envelope is not None
                reply, targets = self.ctx.pipeline.recipient_decision(
                    recipient, self.mail_size_hint)
                if reply.code < 300:
                    self.envelope.recipients.append(AcceptedRecipient(
                        recipient, targets, notify=params.notify, orcpt=params.orcpt))
                    conn.accept(reply)
                else:
                    self.stats["rejected"] += 1
                    log(logger, "recipient rejected", client=self.info.client_ip,
                        helo=self.info.helo, to=str(recipient),
                        from_=str(self.envelope.sender or ""), code=reply.code,
                        reason=reply.text)
                    # Counted like Postfix does, so guessing addresses is slowed down and
                    # then disconnected by the error limits.
                    conn.reject(reply, count_error=True)
            case core.DataStart():
                self.body = SpooledBody(self.ctx.spool_dir)
                conn.accept()
            case core.BodyData(data=data):
                if self.body is not None:
                    self.body.write(data)
            case core.Reset():
                self._reset()
            case core.AuthStart():
                conn.reject(Reply(503, "5.5.1", "Error: authentication not enabled"))
            case core.ClientError(count=count):
                if count > self.ctx.limits.soft_error_limit and not conn.closed:
                    return False  # needs the error sleep
                self.stats["errors"] += 1
            case core.BodyEnd() | core.StartTLS() | core.ConnectionClosed():
                return False
            case _:
                pass  # Quit and purely informative events
        return True

    async def _handle_later(self, event: object) -> None:
        """Events that wait: storing the message, the TLS handshake, the error sleep."""
        conn = self.conn
        assert conn is not None
        match event:
            case core.BodyEnd():
                await self._end_of_data(event)
            case core.StartTLS():
                await self._start_tls()
            case core.ClientError():
                self.stats["errors"] += 1
                # Postfix's smtpd_error_sleep_time: slow down clients that keep erring.
                self._flush()
                await asyncio.sleep(self.ctx.limits.error_sleep)

    def _reset(self) -> None:
        if self.body is not None:
            self.body.discard()
            self.body = None
        self.envelope = None

    async def _end_of_data(self, event: core.BodyEnd) -> None:
        conn = self.conn
        assert conn is not None
        body, envelope = self.body, self.envelope
        self.body, self.envelope = None, None
        msg_id = new_message_id()
        if body is None or envelope is None or not envelope.recipients:
            if body is not None:
                body.discard()
            conn.reject(Reply(503, "5.5.1", "Error: no valid recipients"))
            return
        recipients = [str(r.address) for r in envelope.recipients]
        if event.problem is not None:
            body.discard()
            reply = event.suggested or Reply(554, "5.6.0", "Message refused")
            self._answer_end(conn, [reply] * len(envelope.recipients))
            self.stats["rejected"] += 1
            log(logger, "message refused", logging.WARNING, id=msg_id,
                client=self.info.client_ip, from_=str(envelope.sender or ""),
                to=",".join(recipients), size=body.size, problem=event.problem,
                code=reply.code)
            return
        source = body.finish()
        try:
            replies = await self.ctx.pipeline.deliver(self.info, envelope, source, body.size,
                                                      msg_id)
        finally:
            body.discard()
        self._answer_end(conn, replies)
        self.stats["messages"] += 1
        outcome = "delivered" if all(r.code < 300 for r in replies) else "partial"
        if all(r.code >= 300 for r in replies):
            outcome = "failed"
        dsn = {}
        if envelope.envid or envelope.ret:
            dsn = {"envid": envelope.envid, "ret": envelope.ret}
        notify = [",".join(r.notify) for r in envelope.recipients if r.notify]
        if notify:
            dsn["notify"] = ";".join(notify)
        log(logger, "message", id=msg_id, client=self.info.client_ip, helo=self.info.helo,
            tls=self.info.tls or "none", from_=str(envelope.sender or ""),
            to=",".join(recipients), size=body.size, outcome=outcome,
            codes=",".join(str(r.code) for r in replies), **dsn)

    def _answer_end(self, conn: core.ServerConnection, replies: list[Reply]) -> None:
        if self.ctx.lmtp:
            conn.lmtp_replies(replies)  # RFC 2033 §4.2: one reply per accepted recipient
            return
        reply = combine_smtp_reply(replies)
        if reply.code < 300:
            conn.accept(reply)
        else:
            conn.reject(reply)

    async def _upgrade(self) -> bool:
        """TLS handshake on the current transport; False if the session must end."""
        transport = self.transport
        assert transport is not None and self.ctx.tls_context is not None
        try:
            new_transport = await tlsio.start_tls(
                transport, self, self.ctx.tls_context,
                handshake_timeout=min(self.ctx.limits.command_timeout, 60.0))
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError) as exc:
            log(logger, "TLS handshake failed", logging.INFO, client=self.info.client_ip,
                error=str(exc) or type(exc).__name__)
            new_transport = None
        if new_transport is None:
            self._lost = True
            transport.abort()
            self._release()  # the TLS layer may never report connection_lost to us
            return False
        self.transport = new_transport
        self._note_tls()
        return True

    async def _start_tls(self) -> None:
        conn, transport = self.conn, self.transport
        assert conn is not None and transport is not None
        if self.ctx.tls_context is None or self.info.tls:
            conn.reject(Reply(454, "4.7.0", "TLS not available"))
            return
        conn.accept()
        self._flush()
        if not await self._upgrade():
            return
        # RFC 3207 §4.2: forget everything from before TLS; the core also drops any
        # plaintext that was pipelined after STARTTLS (CVE-2011-0411).
        self._reset()
        self.info.helo = ""
        conn.tls_started(replace(self.ctx.session_config, tls_active=True,
                                 starttls_available=False))

    def _note_tls(self) -> None:
        assert self.transport is not None
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        cipher = ssl_object.cipher()
        if cipher:
            self.info.tls = f"{ssl_object.version()} with cipher {cipher[0]} ({cipher[2]}/{cipher[2]} bits)"
        else:
            self.info.tls = str(ssl_object.version())
        self.info.protocol = "LMTPS" if self.ctx.lmtp else "ESMTPS"


class SMTPListener(SessionListener):
    """One listening socket (TCP or Unix) speaking SMTP or LMTP."""

    def __init__(self, name: str, context: ReceiverContext):
        super().__init__(name, context)
        self.counter = ConnectionCounts()

    def new_session(self) -> SMTPSession:
        return SMTPSession(self.context, self.counter, self.sessions)
