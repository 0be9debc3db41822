"""The POP3 server (RFC 1939, RFC 2449, RFC 2595, RFC 5034): a thin asyncio adapter around
``mailkeep.pop3``.

The sans-IO core decides what the protocol allows and answers everything that needs only
the message list; this module owns what needs I/O: sockets, TLS (implicit on 995, STLS on
110), timeouts, connection limits, the SASL layer (``mailkeep.sasl.Authenticator``) and the
store. One ``POP3Session`` per connection; its ``run`` coroutine is the loop "next event →
decide → write replies → read more", so pipelined commands (RFC 2449 §6.6) are answered in
order.

Semantics (docs/pop3.md): INBOX only; the message list is a snapshot taken at login;
RETR/TOP stream the message file with flow control; QUIT in the TRANSACTION state flags
retrieved messages ``\\Seen`` and expunges the deleted ones, both durable before "+OK"; a
dropped connection changes nothing (RFC 1939 §6). Several sessions of one account may run
at once (as in Dovecot): a message another session removed is reported missing on RETR and
its deletion is a no-op at QUIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailkeep.config.schema import Account, Config, Pop3Config
from mailkeep.logfmt import log
from mailkeep.pop3 import server as core
from mailkeep.sasl import ClientInfo, SaslStep, UnsupportedMechanism
from mailkeep.servers import tlsio
from mailkeep.servers.listener import REFUSALS, ConnectionCounts, SessionListener, is_loopback
from mailkeep.store.api import INBOX, NoSuchAccount, NoSuchMailbox, NoSuchMessage, StoreError

if TYPE_CHECKING:
    from mailkeep.store.api import Store

logger = logging.getLogger("mailkeep.pop3")

# Pause reading from a client that pipelines this much without waiting for our replies.
READ_PAUSE_BYTES = 64 * 1024
# Message files are read and sent in pieces of this size (a 100 MB message never sits in
# memory whole); the transport's write buffer limits bound what waits for the client.
READ_CHUNK = 64 * 1024
# RFC 1939 §3 asks for an autologout timer of at least 10 minutes once logged in; before
# login a client gets this much (issue 3: pre-authentication timeout of 60 s).
PREAUTH_TIMEOUT = 60.0
# Bound on the TLS handshake, whatever the session timeout is.
TLS_HANDSHAKE_TIMEOUT = 60.0


@dataclass
class POP3Context:
    """Everything a session needs from the running server; swapped whole on reload."""

    store: Store
    authenticator: Any  # mailkeep.sasl.Authenticator
    hostname: str
    limits: Pop3Config
    accounts: Mapping[str, Account]
    tls_context: ssl.SSLContext | None
    implicit_tls: bool = False
    #: Treat loopback clients as secured (USER/PASS, PLAIN, LOGIN without TLS); config
    #: ``[auth] allow_plaintext_loopback``.
    allow_plaintext_loopback: bool = False
    listener: str = "pop3"
    preauth_timeout: float = PREAUTH_TIMEOUT


def pop3_context(config: Config, store: Store, authenticator: Any,
                 tls_context: ssl.SSLContext | None, implicit_tls: bool = False,
                 listener: str = "pop3") -> POP3Context:
    """The context of a POP3 listener, from the server configuration."""
    return POP3Context(
        store=store, authenticator=authenticator, hostname=config.hostname,
        limits=config.pop3, accounts=config.accounts, tls_context=tls_context,
        implicit_tls=implicit_tls,
        allow_plaintext_loopback=config.auth.allow_plaintext_loopback, listener=listener,
        preauth_timeout=config.pop3.preauth_timeout)



class LoginTimes:
    """When each account last logged in, for LOGIN-DELAY (RFC 2449 §6.5, §8.1.2).

    Entries older than the delay are dropped as the table grows, so it holds at most the
    accounts that logged in within one delay period.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._next_prune = 1024

    def too_soon(self, account: str, now: float, delay: float) -> bool:
        last = self._last.get(account)
        return delay > 0 and last is not None and now - last < delay

    def record(self, account: str, now: float, delay: float) -> None:
        if delay <= 0:
            return
        self._last[account] = now
        if len(self._last) >= self._next_prune:
            self._last = {a: t for a, t in self._last.items() if now - t < delay}
            self._next_prune = max(1024, 2 * len(self._last))




class _SessionEnd(Exception):
    """The session must stop now (the peer is gone or stopped reading)."""


class POP3Session(asyncio.Protocol):
    def __init__(self, ctx: POP3Context, counter: ConnectionCounts,
                 registry: set[POP3Session] | None = None,
                 login_times: LoginTimes | None = None):
        self.ctx = ctx
        self.counter = counter
        self.registry = registry if registry is not None else set()
        self.login_times = login_times if login_times is not None else LoginTimes()
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: core.ServerConnection | None = None
        self.client_ip = "unknown"
        self.tls_version: str | None = None
        self.channel_bindings: dict[str, bytes] = {}
        self.account: str | None = None
        self.task: asyncio.Task | None = None
        self.outcome: str | None = None
        self.stats: Counter = Counter()
        self.started = time.monotonic()
        self._exchange: Any = None            # the SaslExchange in progress
        self._success: SaslStep | None = None  # success whose data still needs an answer
        self._wakeup: asyncio.Future | None = None
        self._drain_waiter: asyncio.Future | None = None
        self._write_paused = False
        self._read_paused = False
        self._unread = 0
        self._lost = False
        self._counted = False
        self._shutdown = False

    # -- asyncio.Protocol callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.conn is not None:
            return  # start_tls() hands us the new transport in _upgrade, not here
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "local"
        self.conn = core.ServerConnection(self._session_config())
        limits = self.ctx.limits
        refused = self.counter.admit(self.client_ip, limits.max_connections,
                                     limits.max_connections_per_ip,
                                     limits.max_connection_rate_per_ip)
        if refused is not None:
            self._refuse(REFUSALS[refused], refused)
            return
        self._counted = True
        self.registry.add(self)
        if self.ctx.implicit_tls:
            # RFC 8314: TLS from the first byte; run() handshakes before the greeting.
            transport.pause_reading()
        else:
            self.conn.greet()
            transport.write(self.conn.data_to_send())
        self.task = self.loop.create_task(self.run())

    def _refuse(self, text: str, reason: str) -> None:
        assert self.conn is not None and self.transport is not None
        self.conn.refuse(core.Reply(False, text, "SYS/TEMP"))
        refusal = self.conn.data_to_send()
        if not self.ctx.implicit_tls:  # a POP3S client expects TLS, not a plaintext line
            self.transport.write(refusal)
        self.transport.close()
        log(logger, "connection refused", logging.WARNING, client=self.client_ip,
            reason=reason)

    def _release(self) -> None:
        """Give back this connection's slots; safe to call more than once."""
        self.registry.discard(self)
        if self._counted:
            self._counted = False
            self.counter.release(self.client_ip)
            if self.account is not None:
                self.counter.release_account(self.account)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            return
        self.conn.receive_data(data)
        self._unread += len(data)
        if self._unread > READ_PAUSE_BYTES and not self._read_paused and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.conn.receive_eof()
        self._wake()
        return True  # keep our side open: replies to pipelined commands still go out

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._release()
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def request_shutdown(self) -> None:
        """End the session at the next safe point (not in the middle of a QUIT commit)."""
        self._shutdown = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- helpers ------------------------------------------------------------------------------

    def _secured(self) -> bool:
        return self.tls_version is not None or (
            self.ctx.allow_plaintext_loopback and is_loopback(self.client_ip))

    def client_info(self) -> ClientInfo:
        return ClientInfo(protocol="pop3", ip=self.client_ip, secured=self._secured(),
                          tls_version=self.tls_version,
                          channel_bindings=dict(self.channel_bindings))

    def _session_config(self) -> core.SessionConfig:
        ctx, limits = self.ctx, self.ctx.limits
        client = self.client_info()
        tls = self.tls_version is not None
        return core.SessionConfig(
            hostname=ctx.hostname,
            max_line=limits.max_line,
            max_errors=limits.max_errors,
            stls_available=ctx.tls_context is not None and not tls and not ctx.implicit_tls,
            tls_active=tls,
            plaintext_allowed=ctx.authenticator.plaintext_allowed(client),
            sasl_mechanisms=tuple(m.upper() for m in ctx.authenticator.mechanisms(client)),
            login_delay=limits.login_delay,
        )

    def _timeout(self) -> float:
        limits = self.ctx.limits
        if self.account is None:
            return min(self.ctx.preauth_timeout, limits.timeout)
        return limits.timeout

    def _flush(self) -> None:
        assert self.conn is not None and self.transport is not None
        out = self.conn.data_to_send()
        if out and not self._lost:
            self.transport.write(out)

    async def _drain(self) -> None:
        """Wait until the client has taken our output (flow control), or end the session
        if it stops reading for longer than the timeout."""
        while self._write_paused and not self._lost:
            self._drain_waiter = waiter = self.loop.create_future()
            timer = self.loop.call_later(self._timeout(), _expire, waiter)
            try:
                await waiter
            except TimeoutError:
                self.outcome = "timeout"
                log(logger, "timeout", logging.INFO, client=self.client_ip, state="writing")
                # close() would wait for the unread output forever: drop it.
                self._lost = True
                if self.transport is not None:
                    self.transport.abort()
                raise _SessionEnd from None
            finally:
                timer.cancel()
                self._drain_waiter = None
        if self._lost:
            raise _SessionEnd

    async def _wait_for_input(self) -> bool:
        """Flush replies, then wait for more input. False when the session must end."""
        conn, transport = self.conn, self.transport
        assert conn is not None and transport is not None
        self._flush()
        if conn.closed or self._lost:
            return False
        if self._shutdown:
            # Between commands nothing is in flight; nothing is committed (RFC 1939 §6).
            conn.close(core.Reply(False, "Server shutting down, try again later", "SYS/TEMP"))
            self.outcome = "shutdown"
            return False
        self._unread = 0
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        self._wakeup = wakeup = self.loop.create_future()
        timer = self.loop.call_later(self._timeout(), _expire, wakeup)
        try:
            await wakeup
        except TimeoutError:
            # RFC 1939 §3: the autologout timer closes without entering UPDATE.
            conn.close(core.Reply(False, "Disconnected for inactivity"))
            self.outcome = "timeout"
            log(logger, "timeout", logging.INFO, client=self.client_ip,
                state=conn.state.value)
            return False
        finally:
            timer.cancel()
            self._wakeup = None
        return not self._lost

    # -- the session loop -------------------------------------------------------------------

    async def run(self) -> None:
        conn = self.conn
        assert conn is not None and self.transport is not None
        try:
            if self.ctx.implicit_tls:
                if not await self._upgrade():
                    return
                conn.update_config(self._session_config())
                conn.greet()
            while True:
                event = conn.next_event()
                if event is core.NEED_DATA:
                    if not await self._wait_for_input():
                        break
                    continue
                if isinstance(event, core.ConnectionClosed):
                    break
                await self._handle(event)
                # Out at once: pipelined commands with long answers (LIST, UIDL) must not
                # pile up here; the transport's buffer limits pause us (flow control).
                self._flush()
                if self._write_paused:
                    await self._drain()
        except _SessionEnd:
            pass
        except Exception:
            self.outcome = "internal-error"
            logger.exception("pop3 session failed", extra={"client": self.client_ip})
            conn.close(core.Reply(False, "Internal error, closing connection", "SYS/TEMP"))
        finally:
            with contextlib.suppress(Exception):
                self._flush()
            if not self._lost:
                # The peer may be gone already: closing must not fail the session task.
                with contextlib.suppress(OSError):
                    self.transport.close()
            self._release()
            self._log_session()

    def _log_session(self) -> None:
        conn = self.conn
        assert conn is not None
        outcome = self.outcome
        if outcome is None:
            if conn.error_count >= self.ctx.limits.max_errors:
                outcome = "errors"
            else:
                outcome = "dropped" if self.account else "disconnected"
        log(logger, "session", client=self.client_ip, listener=self.ctx.listener,
            account=self.account or "", tls=self.tls_version or "none",
            retrieved=self.stats["retrieved"], top=self.stats["top"],
            deleted=self.stats["deleted"], bytes=self.stats["bytes"],
            auth_failures=self.stats["auth_failures"], errors=conn.error_count,
            outcome=outcome, seconds=round(time.monotonic() - self.started, 3))

    async def _handle(self, event: core.Event) -> None:
        match event:
            case core.Pass(username=username, password=password):
                try:
                    step = await self.ctx.authenticator.login(username, password,
                                                              self.client_info())
                except Exception:
                    logger.exception("authenticator failed", extra={"client": self.client_ip})
                    step = SaslStep("failure", reason="unavailable")
                await self._auth_outcome(step)
            case core.Auth(mechanism=mechanism, initial=initial):
                await self._auth_start(mechanism, initial)
            case core.AuthResponse(data=data, cancelled=cancelled):
                await self._auth_response(data, cancelled)
            case core.Retr() | core.Top():
                await self._send_message(event)
            case core.Stls():
                await self._stls()
            case core.Quit():
                await self._quit(event)
            case core.ClientError():
                self._exchange = self._success = None   # a broken SASL exchange is over
            case _:
                pass  # answered by the core

    # -- authentication -----------------------------------------------------------------------

    async def _auth_start(self, mechanism: str, initial: bytes | None) -> None:
        conn = self.conn
        assert conn is not None
        self._success = None
        try:
            self._exchange = self.ctx.authenticator.start(mechanism, self.client_info())
        except UnsupportedMechanism:
            self._exchange = None
            conn.err("Unsupported authentication mechanism", count_error=True)
            return
        await self._auth_step(initial)

    async def _auth_response(self, data: bytes, cancelled: bool) -> None:
        conn = self.conn
        assert conn is not None
        exchange, success = self._exchange, self._success
        if success is not None:
            # RFC 5034 §4: the server sent its success data as a challenge; the client
            # must answer with an empty line before the final +OK.
            self._success = None
            if cancelled or data:
                await self._auth_outcome(SaslStep("failure", reason="malformed"))
            else:
                await self._login(success)
            return
        if exchange is None:
            conn.err("No authentication in progress", "AUTH", count_error=True)
            return
        if cancelled:
            # RFC 5034 §4: "*" cancels; the server must answer -ERR.
            self._exchange = None
            step = exchange.cancel()
            self.stats["auth_failures"] += 1
            conn.err(step.message or "Authentication cancelled", "AUTH")
            return
        await self._auth_step(data)

    async def _auth_step(self, response: bytes | None) -> None:
        conn = self.conn
        assert conn is not None and self._exchange is not None
        step = await self._exchange.step(response)  # never raises (SaslExchange.step)
        if step.kind == "challenge":
            conn.auth_challenge(step.data)
            return
        self._exchange = None
        if step.kind == "success" and step.data:
            self._success = step
            conn.auth_challenge(step.data)
            return
        await self._auth_outcome(step)

    async def _auth_outcome(self, step: SaslStep) -> None:
        conn = self.conn
        assert conn is not None
        if step.kind == "success" and step.account:
            await self._login(step)
            return
        self.stats["auth_failures"] += 1
        # RFC 3206 §4: [AUTH] says the credentials were refused (the client asks its user
        # again); [SYS/TEMP] that the server cannot check them now (the client retries).
        code = "SYS/TEMP" if step.reason in ("throttled", "unavailable") else "AUTH"
        conn.err(step.message or "Authentication failed", code, count_error=True)

    async def _login(self, step: SaslStep) -> None:
        conn = self.conn
        assert conn is not None and step.account is not None
        account_name = step.account
        account = self.ctx.accounts.get(account_name)
        if account is None or account.relay_only:
            # Relay-only accounts authenticate (for submission) but have no mailbox.
            self.stats["auth_failures"] += 1
            log(logger, "login refused", logging.INFO, client=self.client_ip,
                account=account_name, reason="no mailbox")
            conn.err("This account has no mailbox", "AUTH", count_error=True)
            return
        if self.counter.account_full(account_name, self.ctx.limits.max_connections_per_account):
            log(logger, "login refused", logging.INFO, client=self.client_ip,
                account=account_name, reason="max_connections_per_account")
            conn.err("Too many sessions for this account", "IN-USE")
            return
        delay = self.ctx.limits.login_delay
        now = time.monotonic()
        if self.login_times.too_soon(account_name, now, delay):
            # RFC 2449 §8.1.2: checked after the credentials, so it reveals nothing.
            conn.err("Minimum time between mail checks violated", "LOGIN-DELAY")
            return
        try:
            messages = await asyncio.to_thread(self._maildrop, account_name)
        except (NoSuchAccount, NoSuchMailbox) as exc:
            log(logger, "mailbox unavailable", logging.WARNING, client=self.client_ip,
                account=account_name, error=str(exc))
            conn.err("Mailbox unavailable", "SYS/PERM")
            return
        except StoreError as exc:
            log(logger, "mailbox unavailable", logging.WARNING, client=self.client_ip,
                account=account_name, error=str(exc))
            conn.err("Mailbox temporarily unavailable, try again later", "SYS/TEMP")
            return
        self.login_times.record(account_name, now, delay)
        self.account = account_name
        if self._counted:
            self.counter.add_account(account_name)
        self.stats["messages"] = len(messages)
        conn.login(messages, f"Logged in, {len(messages)} messages")

    def _maildrop(self, account: str) -> list[core.ListedMessage]:
        """The INBOX snapshot of this session (RFC 1939 §5: fixed for the session). The
        unique-id is "<UIDVALIDITY>.<UID>": neither is ever reused (store contract)."""
        store = self.ctx.store
        uidvalidity = store.get_mailbox(account, INBOX).uidvalidity
        return [core.ListedMessage(uid=m.uid, size=m.size, unique_id=f"{uidvalidity}.{m.uid}")
                for m in store.list_messages(account, INBOX)]

    # -- RETR and TOP --------------------------------------------------------------------------

    async def _send_message(self, event: core.Retr | core.Top) -> None:
        conn, transport = self.conn, self.transport
        assert conn is not None and transport is not None and self.account is not None
        try:
            source = self.ctx.store.open_message(self.account, INBOX, event.message.uid)
        except NoSuchMessage:
            conn.err(f"Message {event.number} was removed by another session")
            return
        except (StoreError, OSError) as exc:
            log(logger, "cannot open message", logging.WARNING, client=self.client_ip,
                account=self.account, uid=event.message.uid, error=str(exc))
            conn.err("Cannot read the message now", "SYS/TEMP")
            return
        with source:
            conn.begin_message()
            while True:
                try:
                    chunk = source.read(READ_CHUNK)
                except OSError as exc:
                    # Half a response is out: the client cannot be told; end the session.
                    log(logger, "cannot read message", logging.ERROR, client=self.client_ip,
                        account=self.account, uid=event.message.uid, error=str(exc))
                    self.outcome = "read-error"
                    conn.close()
                    raise _SessionEnd from None
                if not chunk:
                    break
                more = conn.message_data(chunk)
                self._flush()
                if self._write_paused:
                    await self._drain()
                else:
                    # A fast client never pauses us: still let the other sessions run.
                    await asyncio.sleep(0)
                if self._lost:
                    raise _SessionEnd
                if not more:
                    break
            sent = conn.end_message()
        self.stats["bytes"] += sent
        self.stats["retrieved" if isinstance(event, core.Retr) else "top"] += 1

    # -- STLS ------------------------------------------------------------------------------------

    async def _stls(self) -> None:
        conn = self.conn
        assert conn is not None
        if self.ctx.tls_context is None or self.tls_version is not None:
            conn.err("STLS is not available")
            return
        conn.ok()
        # No await between the +OK and the handshake: nothing the client pipelined in
        # plaintext may reach the core (the core already dropped what it had buffered).
        self._flush()
        if not await self._upgrade():
            conn.close()
            raise _SessionEnd
        # RFC 2595 §4: the client must discard what it knew; the offer changes with TLS.
        conn.tls_started(self._session_config())

    async def _upgrade(self) -> bool:
        """TLS handshake on the current transport; False if the session must end."""
        transport = self.transport
        assert transport is not None and self.ctx.tls_context is not None
        try:
            new_transport = await tlsio.start_tls(transport, self, self.ctx.tls_context,
                                                  handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError) as exc:
            log(logger, "TLS handshake failed", logging.INFO, client=self.client_ip,
                error=str(exc) or type(exc).__name__)
            self.outcome = "tls-failed"
            self._lost = True
            transport.abort()
            self._release()  # the TLS layer may never report connection_lost to us
            return False
        self.transport = new_transport
        ssl_object = new_transport.get_extra_info("ssl_object")
        self.tls_version = (ssl_object.version() if ssl_object is not None else None) or "TLS"
        self.channel_bindings = tlsio.channel_bindings(new_transport)
        return True

    # -- QUIT: the UPDATE state --------------------------------------------------------------

    async def _quit(self, event: core.Quit) -> None:
        conn = self.conn
        assert conn is not None
        if self.account is None or not (event.deleted or event.seen):
            conn.ok()
            self.outcome = "quit"
            return
        store, account = self.ctx.store, self.account
        seen = [m.uid for m in event.seen]
        deleted = [m.uid for m in event.deleted]
        try:
            # RFC 1939 §6: both durable before +OK. Messages another session removed
            # meanwhile are ignored by the store.
            if seen:
                await store.store_flags(account, INBOX, seen, ["\\Seen"], "add")
            if deleted:
                await store.store_flags(account, INBOX, deleted, ["\\Deleted"], "add")
                await store.expunge(account, INBOX, deleted)
        except StoreError as exc:
            log(logger, "update failed", logging.ERROR, client=self.client_ip,
                account=account, error=str(exc))
            self.outcome = "update-failed"
            conn.err("Some deleted messages not removed", "SYS/TEMP")
            return
        self.stats["deleted"] = len(deleted)
        self.outcome = "quit"
        conn.ok(f"Logging out, {len(deleted)} messages deleted" if deleted else None)


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class POP3Listener(SessionListener):
    """One listening socket speaking POP3 (STLS) or POP3S (implicit TLS)."""

    def __init__(self, name: str, context: POP3Context,
                 counter: ConnectionCounts | None = None,
                 login_times: LoginTimes | None = None):
        super().__init__(name, context)
        # Share ``counter`` (and ``login_times``) between the 110 and 995 listeners so
        # that [pop3] limits and LOGIN-DELAY hold for the server as a whole.
        self.counter = counter if counter is not None else ConnectionCounts()
        self.login_times = login_times if login_times is not None else LoginTimes()

    def new_session(self) -> POP3Session:
        return POP3Session(self.context, self.counter, self.sessions, self.login_times)
