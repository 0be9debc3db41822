"""The SMTP and LMTP receivers: a thin asyncio adapter around ``mailkeep.smtp``.

The sans-IO core decides what the protocol allows; this module owns what needs I/O:
sockets, TLS handshakes, timeouts, connection limits, buffering the message body, and
asking the delivery pipeline. One ``SMTPSession`` per connection; its ``run`` coroutine is
the loop "next event → decide → write replies → read more".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mailkeep.config.schema import SmtpConfig
from mailkeep.delivery.pipeline import (
    AcceptedRecipient,
    Envelope,
    Pipeline,
    SessionInfo,
    combine_smtp_reply,
    new_message_id,
)
from mailkeep.delivery.submission import EIGHT_BIT_REFUSED, SubmitRequest
from mailkeep.logfmt import log
from mailkeep.policy.inbound import DataVerdict, cleanup_source
from mailkeep.sasl import ClientInfo, SaslStep, UnsupportedMechanism
from mailkeep.servers import tlsio
from mailkeep.servers.listener import REFUSALS, ConnectionCounts, SessionListener, is_loopback
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
    #: Submission listeners (587/465): the submission service and the SASL layer. AUTH
    #: is offered only here, never on port 25, and only once the connection is secured.
    submission: Any = None        # mailkeep.delivery.submission.Submission
    authenticator: Any = None     # mailkeep.sasl.Authenticator
    allow_plaintext_loopback: bool = False
    #: Port 25: the inbound policy (mailkeep.policy.inbound.InboundPolicy) and this
    #: listener's rules (None: no policy, e.g. ``policy = "none"``); the queue holds
    #: messages a rule put on HOLD.
    policy: Any = None
    policy_rules: tuple[Any, ...] | None = None
    queue: Any = None
    #: DMARC aggregate reports received at ``report_address`` are read into this store
    #: (mailkeep.reports.dmarc_store.DmarcStore) and delivered as usual.
    dmarc_store: Any = None
    dmarc_report_address: str | None = None
    #: Messages received by outcome are counted here (mailkeep.metrics.ServerMetrics).
    metrics: Any = None


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
        # Submission: the account that authenticated, the SASL exchange in progress, the
        # TLS channel bindings, and whether the body so far is 7-bit.
        self.account: str | None = None
        self._exchange: Any = None
        self._success: SaslStep | None = None
        self._channel_bindings: dict[str, bytes] = {}
        self._tls_version: str | None = None
        self._eight_bit = False
        self.policy: Any = None   # mailkeep.policy.inbound.PolicySession (port 25)

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
        self.conn = core.ServerConnection(self._session_config())
        limits = self.ctx.limits
        refused = self.counter.admit(self.info.client_ip, limits.max_connections,
                                     limits.max_connections_per_ip,
                                     limits.max_connection_rate_per_ip)
        if refused is not None:
            self._refuse(Reply(421, "4.7.0", f"{self.ctx.session_config.hostname} "
                               f"{REFUSALS[refused]}"), refused)
            return
        self._counted = True
        self.registry.add(self)
        ctx = self.ctx
        if ctx.policy is not None and ctx.policy_rules is not None and ctx.submission is None:
            sockname = transport.get_extra_info("sockname")
            local_ip = sockname[0] if isinstance(sockname, tuple) else None
            session = ctx.policy.start(ctx.policy_rules, self.info.client_ip, local_ip)
            if session.active:
                self.policy = session
            else:
                session.close()
        if self.ctx.implicit_tls:
            # RFC 8314: TLS from the first byte. Nothing may reach the core before the
            # handshake; run() performs it with the certificate current at that moment.
            transport.pause_reading()
        elif self.policy is None or not self._greeting_test_needed():
            self.conn.greet()
            transport.write(self.conn.data_to_send())
        self.task = self.loop.create_task(self.run())

    def _greeting_test_needed(self) -> bool:
        return self.policy.greet_wait() > 0 or self.policy.drop_possible()

    # -- submission: who may authenticate, and how --------------------------------------

    def client_info(self) -> ClientInfo:
        secured = self._tls_version is not None or (
            self.ctx.allow_plaintext_loopback and is_loopback(self.info.client_ip))
        return ClientInfo(protocol="smtp", ip=self.info.client_ip, secured=secured,
                          tls_version=self._tls_version,
                          channel_bindings=dict(self._channel_bindings))

    def _session_config(self, tls_active: bool = False) -> core.SessionConfig:
        config = self.ctx.session_config
        if self.ctx.submission is None or self.ctx.authenticator is None:
            return config
        # RFC 4954 §4 / RFC 8314: mechanisms only on a secured connection (STARTTLS done,
        # implicit TLS, or loopback when the policy trusts it).
        client = self.client_info()
        mechanisms = tuple(self.ctx.authenticator.mechanisms(client) if client.secured else ())
        # REQUIRETLS (RFC 8689): the queue honours it (verified TLS or a bounce), so
        # submission offers it; the core advertises it only under TLS.
        return replace(config, auth_mechanisms=mechanisms,
                       tls_active=tls_active or config.tls_active,
                       starttls_available=config.starttls_available and not tls_active,
                       bare_newlines="normalize", requiretls=True)

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
                conn.config = self._session_config(tls_active=True)
                conn.greet()
            elif (self.policy is not None and self._greeting_test_needed()
                  and not await self._greeting_tests()):
                return
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
            if self.policy is not None:
                self.policy.close()
            with contextlib.suppress(Exception):
                self._flush()
            if not self._lost:
                self.transport.close()
            self._release()
            log(logger, "disconnect", client=self.info.client_ip, helo=self.info.helo,
                tls=bool(self.info.tls), messages=self.stats["messages"],
                rejected=self.stats["rejected"], errors=conn.error_count,
                seconds=round(time.monotonic() - self.started, 3))

    async def _greeting_tests(self) -> bool:
        """postscreen's tests before the greeting: a DNSBL-listed client is dropped with
        521 when the action is drop (the lookup started at connect, so the wait is short
        or none), then a client that talks during the "220-" wait is flagged
        (reject_pregreet). False when the session ends here."""
        conn, transport, policy = self.conn, self.transport, self.policy
        assert conn is not None and transport is not None and policy is not None
        refusal = await policy.drop_at_greeting()
        if refusal is not None:
            self._refuse(refusal, "dnsbl")
            return False
        wait = policy.greet_wait()
        if wait > 0:
            transport.write(f"220-{self.ctx.session_config.hostname} ESMTP\r\n".encode())
            deadline = self.loop.time() + wait
            while self.loop.time() < deadline and not conn.early_talker and not self._lost:
                self._wakeup = self.loop.create_future()
                timer = self.loop.call_later(deadline - self.loop.time(),
                                             self._wake)
                try:
                    await self._wakeup
                finally:
                    timer.cancel()
                    self._wakeup = None
            if self._lost:
                return False
            policy.pregreet_result(conn.early_talker)
        conn.greet()
        self._flush()
        return True

    def _handle_now(self, event: object) -> bool:
        """Handle an event that needs no waiting; False if it must go to _handle_later."""
        conn = self.conn
        assert conn is not None
        match event:
            case core.Hello(verb=verb, domain=domain):
                self.info.helo = domain
                if self.policy is not None:
                    self.policy.hello(verb, domain)
                    if conn.has_unread_input:
                        self.policy.command_with_input_after()
                conn.accept()
            case core.MailFrom() if self._shutdown:
                # Stopping: no new transaction may start (a 4xx makes the sender retry).
                conn.close(Reply(421, "4.3.2", f"{self.ctx.session_config.hostname} "
                                 "Service shutting down, try again later"))
            case core.MailFrom(sender=sender, params=params):
                if self.ctx.submission is not None:
                    refusal = self.ctx.submission.mail_from(self.account, sender)
                    if refusal is not None:
                        log(logger, "sender refused", client=self.info.client_ip,
                            account=self.account or "", from_=str(sender or ""),
                            code=refusal.code)
                        conn.reject(refusal, count_error=self.account is None)
                        return True
                self.envelope = Envelope(sender=sender, smtputf8=params.smtputf8,
                                         body_type=params.body, envid=params.envid,
                                         ret=params.ret, requiretls=params.requiretls)
                self.mail_size_hint = params.size
                if self.policy is not None:
                    if conn.has_unread_input:
                        self.policy.command_with_input_after()
                    self.policy.mail_from(str(sender or ""))
                conn.accept()
            case core.RcptTo() if self.policy is not None:
                return False   # the policy may look things up (DNS, greylist)
            case core.RcptTo(recipient=recipient, params=params):
                assert self.envelope is not None
                if self.ctx.submission is not None:
                    reply, accepted = self.ctx.submission.rcpt_to(
                        self.account, recipient, self.mail_size_hint,
                        len(self.envelope.recipients))
                    targets = accepted.targets if accepted is not None else ()
                else:
                    reply, targets = self.ctx.pipeline.recipient_decision(
                        recipient, self.mail_size_hint)
                self._answer_rcpt(recipient, params, reply, targets)
            case core.DataStart():
                if self.policy is not None:
                    if conn.has_unread_input:
                        self.policy.data_with_input_after()
                    refusal = self.policy.data_start()
                    if refusal is not None:
                        self.stats["rejected"] += 1
                        self._count_message("rejected")
                        log(logger, "data refused", logging.INFO, client=self.info.client_ip,
                            code=refusal.code, reason=refusal.text)
                        conn.reject(refusal, count_error=True)
                        return True
                self.body = SpooledBody(self.ctx.spool_dir)
                self._eight_bit = False
                conn.accept()
            case core.BodyData(data=data):
                if self.body is not None:
                    self.body.write(data)
                    if not self._eight_bit and not data.isascii():
                        self._eight_bit = True
            case core.Reset():
                self._reset()
            case core.AuthStart() | core.AuthResponse() if self.ctx.submission is not None:
                return False
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

    def _answer_rcpt(self, recipient: Any, params: Any, reply: Reply, targets: Any) -> None:
        conn = self.conn
        assert conn is not None and self.envelope is not None
        if reply.code < 300:
            self.envelope.recipients.append(AcceptedRecipient(
                recipient, targets, notify=params.notify, orcpt=params.orcpt))
            conn.accept(reply)
            return
        self.stats["rejected"] += 1
        log(logger, "recipient rejected", client=self.info.client_ip,
            helo=self.info.helo, to=str(recipient),
            from_=str(self.envelope.sender or ""), code=reply.code, reason=reply.text)
        # Counted like Postfix does, so guessing addresses is slowed down and then
        # disconnected by the error limits.
        conn.reject(reply, count_error=True)

    async def _policy_rcpt(self, recipient: Any, params: Any) -> None:
        """RCPT on port 25 with a policy: ours first (relay, unknown user, quota: no
        lookups), then the policy's rules for a recipient we would take."""
        conn = self.conn
        assert conn is not None and self.policy is not None
        if conn.has_unread_input:
            self.policy.command_with_input_after()
        reply, targets = self.ctx.pipeline.recipient_decision(recipient, self.mail_size_hint)
        if reply.code < 300:
            refusal = await self.policy.check_recipient(str(recipient))
            if refusal is not None:
                reply, targets = refusal, ()
        if self.envelope is None:   # the session was reset while we waited
            conn.reject(Reply(503, "5.5.1", "Error: need MAIL command"))
            return
        self._answer_rcpt(recipient, params, reply, targets)

    async def _handle_later(self, event: object) -> None:
        """Events that wait: storing the message, the TLS handshake, the error sleep."""
        conn = self.conn
        assert conn is not None
        match event:
            case core.RcptTo(recipient=recipient, params=params):
                await self._policy_rcpt(recipient, params)
            case core.BodyEnd():
                await self._end_of_data(event)
            case core.StartTLS():
                await self._start_tls()
            case core.AuthStart(mechanism=mechanism, initial_response=initial):
                await self._auth_start(mechanism, initial)
            case core.AuthResponse(line=line):
                await self._auth_response(line)
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
        if self.policy is not None:
            self.policy.reset()

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
            self._count_message("rejected")
            log(logger, "message refused", logging.WARNING, id=msg_id,
                client=self.info.client_ip, from_=str(envelope.sender or ""),
                to=",".join(recipients), size=body.size, problem=event.problem,
                code=reply.code)
            return
        if (self.ctx.submission is not None and self._eight_bit and not envelope.smtputf8
                and envelope.body_type not in ("8BITMIME", "BINARYMIME")):
            # RFC 6152 §3 / RFC 6409 §8: 8-bit content needs BODY=8BITMIME; a submission
            # server refuses rather than pass on a message peers may mangle.
            body.discard()
            self._answer_end(conn, [EIGHT_BIT_REFUSED])
            self.stats["rejected"] += 1
            self._count_message("rejected")
            log(logger, "message refused", logging.INFO, id=msg_id, client=self.info.client_ip,
                account=self.account or "", problem="8bit-undeclared", code=554)
            return
        source = body.finish()
        verdict = None
        try:
            if self.ctx.submission is not None:
                reply = await self.ctx.submission.submit(SubmitRequest(
                    session=self.info, account=self.account, envelope=envelope,
                    source=source, size=body.size, msg_id=msg_id))
                replies = [reply] * len(envelope.recipients)
            elif self.policy is not None:
                verdict = await self.policy.check_message(
                    source, body.size, msg_id=msg_id, recipients=recipients,
                    spool_dir=self.ctx.spool_dir)
                replies = await self._deliver_judged(envelope, source, body.size, msg_id,
                                                     verdict)
            else:
                replies = await self.ctx.pipeline.deliver(self.info, envelope, source,
                                                          body.size, msg_id)
            await self._ingest_dmarc_report(envelope, source, msg_id, replies)
        finally:
            body.discard()
            if verdict is not None:
                cleanup_source(source, verdict.source)
            if self.policy is not None:
                self.policy.reset()
        self._answer_end(conn, replies)
        self.stats["messages"] += 1
        outcome = "delivered" if all(r.code < 300 for r in replies) else "partial"
        if all(r.code >= 300 for r in replies):
            outcome = "failed"
        self._count_message(_received_outcome(replies, verdict))
        dsn = {}
        if envelope.envid or envelope.ret:
            dsn = {"envid": envelope.envid, "ret": envelope.ret}
        notify = [",".join(r.notify) for r in envelope.recipients if r.notify]
        if notify:
            dsn["notify"] = ";".join(notify)
        # The policy's verdict, so that the trace of a message says why it went where.
        judged = {} if verdict is None else {
            "verdict": "reject" if verdict.reply is not None else verdict.disposition}
        log(logger, "message", id=msg_id, client=self.info.client_ip, helo=self.info.helo,
            tls=self.info.tls or "none", from_=str(envelope.sender or ""),
            to=",".join(recipients), size=body.size, outcome=outcome,
            codes=",".join(str(r.code) for r in replies), **judged, **dsn)

    def _count_message(self, outcome: str) -> None:
        metrics = self.ctx.metrics
        if metrics is not None:
            protocol = ("lmtp" if self.ctx.lmtp else
                        "submission" if self.ctx.submission is not None else "smtp")
            metrics.message_received(protocol, outcome)

    async def _ingest_dmarc_report(self, envelope: Envelope, source: bytes | Path,
                                   msg_id: str, replies: list[Reply]) -> None:
        address = self.ctx.dmarc_report_address
        if self.ctx.dmarc_store is None or address is None:
            return
        if not any(str(r.address).lower() == address and reply.code < 300
                   for r, reply in zip(envelope.recipients, replies, strict=True)):
            return
        from mailkeep.reports.dmarc_ingest import ingest_message

        outcome = await asyncio.to_thread(
            ingest_message, source, self.ctx.dmarc_store, source=msg_id,
            our_domains=set(self.ctx.pipeline.config.domains))
        log(logger, "dmarc report", id=msg_id, outcome=str(getattr(outcome, "status", outcome)))

    async def _deliver_judged(self, envelope: Envelope, source: bytes | Path, size: int,
                              msg_id: str, verdict: DataVerdict) -> list[Reply]:
        """Carry out the policy's verdict: refuse, discard, hold, or store (maybe in
        Junk) with the policy's header fields on top."""
        count = len(envelope.recipients)
        if verdict.reply is not None:
            self.stats["rejected"] += 1
            return [verdict.reply] * count
        final = verdict.source if verdict.source is not None else source
        final_size = verdict.size if verdict.size is not None else size
        notes = verdict.notes
        if verdict.disposition == "discard":
            log(logger, "discarded", id=msg_id, client=self.info.client_ip,
                from_=str(envelope.sender or ""), **notes)
            return [Reply(250, "2.0.0", f"OK id={msg_id}")] * count
        if verdict.disposition == "hold" and self.ctx.queue is not None:
            return await self._hold(envelope, final, msg_id, verdict.headers)
        folder = "Junk" if verdict.disposition == "junk" else None
        if notes or folder:
            log(logger, "verified", logging.DEBUG, id=msg_id, client=self.info.client_ip,
                folder=folder or "", **notes)
        return await self.ctx.pipeline.deliver(self.info, envelope, final, final_size, msg_id,
                                               extra_headers=verdict.headers, folder=folder)

    async def _hold(self, envelope: Envelope, source: bytes | Path, msg_id: str,
                    headers: bytes) -> list[Reply]:
        """HOLD (access or header_checks): the queue keeps the message held until
        ``mailkeep queue release``; then it is delivered here as usual."""
        from mailkeep.queue.store import NewMessage, QueuedRecipient

        single = envelope.recipients[0].address if len(envelope.recipients) == 1 else None
        prefix = self.ctx.pipeline.received_header(self.info, envelope, msg_id, single) + headers
        message = NewMessage(
            queue_id=msg_id, sender=str(envelope.sender or ""),
            recipients=[QueuedRecipient(str(r.address), orcpt=r.orcpt, notify=r.notify)
                        for r in envelope.recipients],
            prefix=prefix, source=source, envid=envelope.envid, ret=envelope.ret,
            smtputf8=envelope.smtputf8, body_type=envelope.body_type, hold=True)
        try:
            await self.ctx.queue.enqueue([message])
        except Exception as exc:
            log(logger, "queue failed", logging.ERROR, id=msg_id, error=str(exc))
            return [Reply(451, "4.3.0", "Temporary local problem, please try again later")] \
                * len(envelope.recipients)
        log(logger, "held", id=msg_id, client=self.info.client_ip,
            from_=str(envelope.sender or ""))
        return [Reply(250, "2.0.0", f"OK id={msg_id}")] * len(envelope.recipients)

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
        ssl_object = new_transport.get_extra_info("ssl_object")
        self._tls_version = ssl_object.version() if ssl_object is not None else "TLS"
        if self.ctx.submission is not None:
            self._channel_bindings = tlsio.channel_bindings(new_transport)
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
        conn.tls_started(replace(self._session_config(tls_active=True), tls_active=True,
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

    # -- AUTH (submission only) -----------------------------------------------------------

    async def _auth_start(self, mechanism: str, initial: str | None) -> None:
        conn = self.conn
        assert conn is not None
        try:
            self._exchange = self.ctx.authenticator.start(mechanism, self.client_info())
        except UnsupportedMechanism:
            self._exchange = None
            conn.reject(Reply(504, "5.5.4", "Unrecognized authentication type"),
                        count_error=True)
            return
        if initial is None:
            await self._auth_step(None)
            return
        await self._auth_step(b"" if initial == "" else _b64decode(initial))

    async def _auth_response(self, line: str) -> None:
        conn = self.conn
        assert conn is not None
        exchange, success = self._exchange, self._success
        if line == "*":
            # RFC 4954 §4: the client cancelled; 501.
            self._exchange = self._success = None
            if exchange is not None:
                exchange.cancel()
            conn.reject(Reply(501, "5.7.0", "Authentication cancelled"))
            return
        data = _b64decode(line)
        if success is not None:
            # RFC 4954 §4: after "additional data with success" sent as a 334 challenge,
            # the client answers with an empty line and then gets 235.
            self._success = None
            self._auth_outcome(success if data == b"" else
                               SaslStep("failure", reason="malformed"))
            return
        if exchange is None:
            conn.reject(Reply(503, "5.5.1", "No authentication in progress"))
            return
        if data is None:
            self._exchange = None
            conn.reject(Reply(501, "5.5.2", "Cannot decode response"), count_error=True)
            return
        await self._auth_step(data)

    async def _auth_step(self, response: bytes | None) -> None:
        conn = self.conn
        assert conn is not None and self._exchange is not None
        step = await self._exchange.step(response)  # never raises (SaslExchange.step)
        if step.kind == "challenge":
            conn.auth_challenge(base64.b64encode(step.data).decode())
            return
        self._exchange = None
        if step.kind == "success" and step.data:
            self._success = step
            conn.auth_challenge(base64.b64encode(step.data).decode())
            return
        self._auth_outcome(step)

    def _auth_outcome(self, step: SaslStep) -> None:
        conn = self.conn
        assert conn is not None
        if step.kind == "success" and step.account:
            self.account = step.account
            self.info.authenticated = step.account
            self.info.protocol = "ESMTPSA" if self.info.tls else "ESMTPA"
            conn.accept(Reply(235, "2.7.0", "Authentication successful"))
            return
        if step.reason in ("throttled", "unavailable"):
            conn.reject(Reply(454, "4.7.0", step.message or "Temporary authentication failure"))
        elif step.reason == "malformed":
            conn.reject(Reply(501, "5.5.2", step.message or "Malformed authentication data"),
                        count_error=True)
        else:
            conn.reject(Reply(535, "5.7.8", "Authentication credentials invalid"),
                        count_error=True)


def _received_outcome(replies: list[Reply], verdict: DataVerdict | None) -> str:
    """The outcome a received message is counted under: what the policy decided for it
    when it was taken (discarded, held, junk), else what the replies say."""
    if all(r.code < 300 for r in replies):
        if verdict is not None and verdict.disposition in ("discard", "hold", "junk"):
            return {"discard": "discarded", "hold": "held", "junk": "junk"}[verdict.disposition]
        return "accepted"
    if all(r.code >= 500 for r in replies):
        return "rejected"
    return "deferred"


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class SMTPListener(SessionListener):
    """One listening socket (TCP or Unix) speaking SMTP or LMTP."""

    def __init__(self, name: str, context: ReceiverContext):
        super().__init__(name, context)
        self.counter = ConnectionCounts()

    def new_session(self) -> SMTPSession:
        return SMTPSession(self.context, self.counter, self.sessions)
