"""The IMAP server: a thin asyncio adapter around the sans-IO IMAP core.

``mailkeep.imap.parser`` turns bytes into commands (``mailkeep.imap.commands``);
``mailkeep.imap.selected`` keeps the session's view of its selected mailbox;
``mailkeep.imap.fetch`` and ``mailkeep.imap.search`` answer FETCH and SEARCH from the
store's cached structure. This module owns what needs I/O: sockets, TLS, COMPRESS, timeouts,
connection limits, the store calls, and the order in which responses go out.

Both IMAP4rev2 (RFC 9051) and IMAP4rev1 (RFC 3501) are spoken: a client is rev1 until it
sends ``ENABLE IMAP4rev2`` (RFC 9051 §6.3.1), which switches on UTF-8 mailbox names, ESEARCH
answers to SEARCH, the LIST response in SELECT, and drops RECENT.

One ``IMAPSession`` per connection; its ``run`` coroutine reads one parser event at a time
and awaits its handler, so commands are executed in order (RFC 9051 §5.5 allows
concurrency, which clients rarely use and which would complicate the sequence-number rules
for little gain).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import mmap
import re
import ssl
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mailkeep import __version__ as MAILKEEP_VERSION
from mailkeep.config.schema import Config
from mailkeep.imap import commands as C
from mailkeep.imap import fetch as F
from mailkeep.imap import response as R
from mailkeep.imap.parser import CommandParser
from mailkeep.imap.search import SearchContext, SearchError, search
from mailkeep.imap.selected import BadSequence, SelectedMailbox, ViewOptions
from mailkeep.imap.sort import format_threads, sort, thread
from mailkeep.logfmt import log
from mailkeep.mime import from_json
from mailkeep.sasl import ClientInfo, UnsupportedMechanism
from mailkeep.servers import tlsio
from mailkeep.servers.listener import REFUSALS, ConnectionCounts, SessionListener, is_loopback
from mailkeep.store import api as S

logger = logging.getLogger("mailkeep.imap")

SEPARATOR = S.SEPARATOR
# Output is flushed to the socket in pieces of about this size during long responses.
WRITE_CHUNK = 256 * 1024
# Messages read whole into memory up to this size; larger ones are mapped.
READ_WHOLE_LIMIT = 1 << 20
# Parsed MIME structures kept in the process (FETCH of headers then bodies, several
# clients of one account): about 2-10 KB each.
STRUCTURE_CACHE = 4096
_STRUCTURES: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
# SEARCH/SORT/THREAD over more messages than this run in a thread, off the event loop.
SEARCH_THREAD_THRESHOLD = 2000

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
                "RECENT", "HIGHESTMODSEQ", "APPENDLIMIT")
ENABLEABLE = ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "IMAP4REV2")





@dataclass
class IMAPContext:
    """Everything a session needs from the running server; swapped whole on reload."""

    config: Config
    store: Any  # mailkeep.store.api.Store
    authenticator: Any  # mailkeep.sasl.Authenticator
    tls_context: ssl.SSLContext | None
    implicit_tls: bool = False
    listener: str = "imap"
    fts: Any = None  # mailkeep.store.fts.FullTextIndex


class SessionEnd(Exception):
    """Stop the session after what was written (BYE already sent)."""


class IMAPSession(asyncio.Protocol):
    def __init__(self, ctx: IMAPContext, counts: ConnectionCounts,
                 registry: set[IMAPSession]):
        self.ctx = ctx
        self.counts = counts
        self.registry = registry
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        limits = ctx.config.imap
        self.parser = CommandParser(C.ParserLimits(
            max_line=limits.max_line,
            max_literal_unauthenticated=limits.max_literal_unauthenticated,
            max_literal=limits.append_limit,
            max_depth=limits.max_depth,
            max_command_bytes=max(limits.append_limit, C.ParserLimits.max_command_bytes),
        ))
        self.client_ip = "unknown"
        self.tls_version: str | None = None
        self.account: str | None = None
        self.selected: SelectedMailbox | None = None
        self.options = ViewOptions()
        self.utf8 = False
        self.rev2 = False
        self.enabled: set[str] = set()
        self.task: asyncio.Task | None = None
        self._wakeup: asyncio.Future | None = None
        self._lost = False
        self._counted = False
        self._account_counted = False
        self._shutdown = False
        self._idling = False
        self._dirty = False
        self._mailboxes_changed = False
        self._subscription: Any = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._can_write: asyncio.Event | None = None
        self._deflate: Any = None
        self._inflate: Any = None
        self._errors = 0
        self._tokens = float(limits.max_commands_per_second)
        self._token_time = time.monotonic()
        self.stats: Counter = Counter()
        self.started = time.monotonic()
        self._end_reason = "logout"

    # -- asyncio.Protocol callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:
            return  # a TLS upgrade hands us the new transport in _upgrade
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "local"
        limits = self.ctx.config.imap
        refused = self.counts.admit(self.client_ip, limits.max_connections,
                                    limits.max_connections_per_ip,
                                    limits.max_connection_rate_per_ip)
        if refused is not None:
            self._refuse(REFUSALS[refused], refused)
            return
        self._counted = True
        self.registry.add(self)
        if self.ctx.implicit_tls:
            transport.pause_reading()
        self.task = self.loop.create_task(self.run())

    def _refuse(self, text: str, reason: str) -> None:
        assert self.transport is not None
        self.transport.write(R.bye(text, "UNAVAILABLE"))
        self.transport.close()
        log(logger, "connection refused", logging.WARNING, client=self.client_ip,
            reason=reason)

    def data_received(self, data: bytes) -> None:
        self.stats["bytes_in"] += len(data)
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                self._lost = True
                if self.transport is not None:
                    self.transport.abort()
                self._wake()
                return
        self.parser.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self._lost = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._release()
        if self._can_write is not None:
            self._can_write.set()
        self._wake()

    def pause_writing(self) -> None:
        if self._can_write is None:
            self._can_write = asyncio.Event()
        self._can_write.clear()

    def resume_writing(self) -> None:
        if self._can_write is not None:
            self._can_write.set()

    def _release(self) -> None:
        self.registry.discard(self)
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._account_counted and self.account:
            self._account_counted = False
            self.counts.release_account(self.account)
        if self._counted:
            self._counted = False
            self.counts.release(self.client_ip)

    def request_shutdown(self) -> None:
        self._shutdown = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- output ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._out_size = 0
        if self._lost or self.transport is None:
            return
        self.stats["bytes_out"] += len(data)
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(data)

    async def drain(self) -> None:
        """Flush and wait while the client is slow to read (flow control)."""
        self.flush()
        if self._can_write is not None and not self._can_write.is_set() and not self._lost:
            await self._can_write.wait()

    async def maybe_drain(self) -> None:
        if self._out_size >= WRITE_CHUNK:
            await self.drain()

    # -- the session loop --------------------------------------------------------------

    def _timeout(self) -> float:
        limits = self.ctx.config.imap
        return limits.autologout if self.account else limits.preauth_timeout

    async def _next_event(self) -> Any:
        """The next parser event, waiting for input as needed (with the session timeout)."""
        while True:
            event = self.parser.next_event()
            if event is not None:
                return event
            if self._lost:
                raise SessionEnd()
            if self._shutdown:
                self.send(R.bye("Server shutting down", "UNAVAILABLE"))
                self._end_reason = "shutdown"
                raise SessionEnd()
            self.flush()
            if self._idling and (self._dirty or self._mailboxes_changed):
                await self._push_updates()
                self.flush()
                continue
            self._wakeup = wakeup = self.loop.create_future()
            try:
                await asyncio.wait_for(wakeup, self._timeout())
            except TimeoutError:
                self.send(R.bye("Autologout; idle for too long"
                                if self.account else "Login timeout"))
                self._end_reason = "timeout"
                raise SessionEnd() from None
            finally:
                self._wakeup = None

    async def run(self) -> None:
        assert self.transport is not None
        try:
            if self.ctx.implicit_tls and not await self._upgrade():
                return
            self.send(R.untagged(b"OK [CAPABILITY " + self._capabilities() + b"] "
                                 + self.ctx.config.hostname.encode() + b" Mailkeep ready"))
            while True:
                event = await self._next_event()
                await self._throttle()
                await self._dispatch(event)
                if self._lost:
                    break
        except SessionEnd:
            pass
        except Exception:
            logger.exception("IMAP session failed", extra={"client": self.client_ip})
            self._end_reason = "error"
            with contextlib.suppress(Exception):
                self.send(R.bye("Internal server error, closing connection"))
        finally:
            with contextlib.suppress(Exception):
                self.flush()
            if self.transport is not None and not self._lost:
                with contextlib.suppress(OSError, RuntimeError):
                    self.transport.close()
            self._release()
            log(logger, "session", client=self.client_ip, account=self.account or "",
                tls=self.tls_version or "no", commands=self.stats["commands"],
                fetched=self.stats["fetched"], bytes_in=self.stats["bytes_in"],
                bytes_out=self.stats["bytes_out"],
                duration=f"{time.monotonic() - self.started:.3f}", end=self._end_reason)

    async def _throttle(self) -> None:
        """Commands per second (a token bucket): a flood is slowed down, not refused."""
        rate = self.ctx.config.imap.max_commands_per_second
        now = time.monotonic()
        self._tokens = min(float(rate), self._tokens + (now - self._token_time) * rate)
        self._token_time = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / rate)
            self._tokens = 1
        self._tokens -= 1

    async def _dispatch(self, event: Any) -> None:
        if isinstance(event, C.ContinuationRequest):
            self.send(R.continuation(event.text))
            self.flush()
            return
        if isinstance(event, C.ParseError):
            self._bad(event.tag, event.text, event.code)
            if event.fatal:
                self.send(R.bye("Too much invalid input"))
                self._end_reason = "bad-input"
                raise SessionEnd()
            return
        if isinstance(event, (C.IdleDone, C.SaslResponse)):
            # Only expected inside IDLE/AUTHENTICATE, which read them themselves.
            self._bad("*", "Unexpected line")
            return
        assert isinstance(event, C.Command)
        self.stats["commands"] += 1
        handler = self._handler_for(event)
        if handler is None:
            return
        try:
            await handler(event)
        except S.StoreIOError as exc:
            log(logger, "store error", logging.ERROR, client=self.client_ip,
                account=self.account or "", error=str(exc))
            self.send(R.tagged(event.tag, "NO", "Temporary server failure, try again",
                               "SERVERBUG"))
        except S.NoSuchAccount:
            self.send(R.bye("Account removed"))
            self._end_reason = "account-removed"
            raise SessionEnd() from None
        except BadSequence as exc:
            self._bad(event.tag, str(exc))
        if not self._lost:
            self.flush()

    def _bad(self, tag: str, text: str, code: str | None = None) -> None:
        self._errors += 1
        self.send(R.tagged(tag or "*", "BAD", text, code))
        if self._errors >= self.ctx.config.imap.max_errors:
            self.send(R.bye("Too many invalid commands"))
            self._end_reason = "errors"
            raise SessionEnd()

    # Commands allowed in each state (RFC 9051 §6).
    _ANY: ClassVar[dict[type, str]] = {C.Capability: "capability", C.Noop: "noop", C.Logout: "logout", C.Id: "id"}
    _NOT_AUTH: ClassVar[dict[type, str]] = {C.StartTLS: "starttls", C.Authenticate: "authenticate", C.Login: "login"}
    _AUTH: ClassVar[dict[type, str]] = {C.Enable: "enable", C.Select: "select", C.Create: "create", C.Delete: "delete",
             C.Rename: "rename", C.Subscribe: "subscribe", C.Unsubscribe: "unsubscribe",
             C.List: "list", C.Lsub: "lsub", C.Namespace: "namespace", C.Status: "status",
             C.Append: "append", C.Idle: "idle", C.GetQuota: "getquota",
             C.GetQuotaRoot: "getquotaroot", C.SetQuota: "setquota",
             C.Compress: "compress"}
    _SELECTED: ClassVar[dict[type, str]] = {C.Check: "check", C.Close: "close", C.Unselect: "unselect",
                 C.Expunge: "expunge", C.Search: "search", C.Fetch: "fetch",
                 C.Store: "store", C.Copy: "copy", C.Move: "move", C.Sort: "sort",
                 C.Thread: "thread"}

    def _handler_for(self, cmd: C.Command) -> Callable[[Any], Awaitable[None]] | None:
        kind = type(cmd)
        name = self._ANY.get(kind)
        if name is None:
            name = self._NOT_AUTH.get(kind)
            if name is not None and self.account is not None:
                self._bad(cmd.tag, "Already authenticated")
                return None
        if name is None:
            name = self._AUTH.get(kind)
            if name is not None and self.account is None:
                self._bad(cmd.tag, "Log in first")
                return None
        if name is None:
            name = self._SELECTED.get(kind)
            if name is not None and self.account is None:
                self._bad(cmd.tag, "Log in first")
                return None
            if name is not None and self.selected is None:
                self._bad(cmd.tag, "No mailbox selected")
                return None
        if name is None:
            self._bad(cmd.tag, "Unknown command")
            return None
        return getattr(self, "cmd_" + name)

    # -- capabilities ------------------------------------------------------------------

    def _secured(self) -> bool:
        if self.tls_version:
            return True
        return self.ctx.config.auth.allow_plaintext_loopback and (
            self.client_ip == "local" or is_loopback(self.client_ip))

    def _client_info(self) -> Any:
        bindings: dict[str, bytes] = {}
        if self.tls_version and self.transport is not None:
            bindings = tlsio.channel_bindings(self.transport)
        return ClientInfo(protocol="imap", ip=self.client_ip, secured=self._secured(),
                          tls_version=self.tls_version, channel_bindings=bindings)

    def _capabilities(self) -> bytes:
        caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "ID", "ENABLE", "IDLE", "LITERAL+"]
        if self.account is None:
            if self.ctx.tls_context is not None and not self.tls_version:
                caps.append("STARTTLS")
            if not self._secured():
                caps.append("LOGINDISABLED")
            caps += ["AUTH=" + m for m in self.ctx.authenticator.mechanisms(self._client_info())]
            return " ".join(caps).encode()
        limits = self.ctx.config.imap
        caps += ["NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "SPECIAL-USE",
                 "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "CHILDREN",
                 "ESEARCH", "SEARCHRES", "CONDSTORE", "QRESYNC", "STATUS=SIZE",
                 f"APPENDLIMIT={limits.append_limit}", "QUOTA", "QUOTA=RES-STORAGE",
                 "QUOTA=RES-MESSAGE", "BINARY", "MULTIAPPEND", "UTF8=ACCEPT", "SORT",
                 "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "WITHIN",
                 "SAVEDATE", "PREVIEW"]
        if self._deflate is None:
            caps.append("COMPRESS=DEFLATE")
        return " ".join(caps).encode()

    # -- any state ---------------------------------------------------------------------

    async def cmd_capability(self, cmd: C.Capability) -> None:
        self.send(R.untagged(b"CAPABILITY " + self._capabilities()))
        self.send(R.tagged(cmd.tag, "OK", "CAPABILITY completed"))

    async def cmd_noop(self, cmd: C.Noop) -> None:
        await self._push_updates(force=True)
        self.send(R.tagged(cmd.tag, "OK", "NOOP completed"))

    async def cmd_logout(self, cmd: C.Logout) -> None:
        self.send(R.bye("Logging out"))
        self.send(R.tagged(cmd.tag, "OK", "LOGOUT completed"))
        self._end_reason = "logout"
        raise SessionEnd()

    async def cmd_id(self, cmd: C.Id) -> None:
        if cmd.params:
            shown = " ".join(f"{k.decode(errors='replace')}={(v or b'').decode(errors='replace')}"
                             for k, v in cmd.params[:30])
            log(logger, "client id", logging.DEBUG, client=self.client_ip, id=shown[:500])
        self.send(R.untagged(b'ID ("name" "Mailkeep" "version" "'
                             + MAILKEEP_VERSION.encode() + b'")'))
        self.send(R.tagged(cmd.tag, "OK", "ID completed"))

    # -- not authenticated -------------------------------------------------------------

    async def cmd_starttls(self, cmd: C.StartTLS) -> None:
        if self.ctx.tls_context is None or self.tls_version:
            self.send(R.tagged(cmd.tag, "BAD", "TLS is not available here"))
            return
        # RFC 9051 §6.2.1: anything the client pipelined after STARTTLS was sent in
        # plaintext and must be dropped (CVE-2011-0411, "NO STARTTLS" 2021).
        dropped = self.parser.discard_buffer()
        if dropped:
            log(logger, "plaintext after STARTTLS dropped", logging.WARNING,
                client=self.client_ip, bytes=dropped)
        self.send(R.tagged(cmd.tag, "OK", "Begin TLS negotiation now"))
        self.flush()
        if not await self._upgrade():
            raise SessionEnd()

    async def _upgrade(self) -> bool:
        transport = self.transport
        assert transport is not None and self.ctx.tls_context is not None
        try:
            new = await tlsio.start_tls(transport, self, self.ctx.tls_context,
                                      handshake_timeout=60.0)
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError) as exc:
            log(logger, "TLS handshake failed", logging.INFO, client=self.client_ip,
                error=str(exc) or type(exc).__name__)
            self._lost = True
            transport.abort()
            self._release()
            return False
        self.transport = new
        ssl_object = new.get_extra_info("ssl_object")
        self.tls_version = ssl_object.version() if ssl_object is not None else "TLS"
        return True

    async def cmd_login(self, cmd: C.Login) -> None:
        if not self._secured():
            # RFC 9051 §6.2.3, LOGINDISABLED: never a password in the clear.
            self.send(R.tagged(cmd.tag, "NO", "Plaintext authentication is disabled "
                               "without TLS; use STARTTLS or port 993", "PRIVACYREQUIRED"))
            return
        result = await self.ctx.authenticator.login(cmd.username, cmd.password,
                                                    self._client_info())
        await self._finish_auth(cmd.tag, result)

    async def cmd_authenticate(self, cmd: C.Authenticate) -> None:
        try:
            exchange = self.ctx.authenticator.start(cmd.mechanism, self._client_info())
        except UnsupportedMechanism:
            self.send(R.tagged(cmd.tag, "NO", f"Unsupported mechanism {cmd.mechanism}",
                               None if self._secured() else "PRIVACYREQUIRED"))
            return
        response: bytes | None = None
        if cmd.initial_response is not None:
            response = self._decode_b64(cmd.initial_response)
            if response is None:
                self._bad(cmd.tag, "Invalid base64 in the initial response")
                return
        step = await exchange.step(response)
        while step.kind == "challenge" or (step.kind == "success" and step.data):
            final = step.kind == "success"
            self.send(R.continuation(base64.b64encode(step.data).decode("ascii")))
            self.parser.expect_sasl_response()
            event = await self._next_event()
            if not isinstance(event, C.SaslResponse):
                self._bad(cmd.tag, "Expected an authentication response")
                return
            if event.cancelled:
                exchange.cancel()
                self._bad(cmd.tag, "Authentication cancelled")
                return
            data = self._decode_b64(event.data)
            if data is None:
                self._bad(cmd.tag, "Invalid base64 in the authentication response")
                return
            if final:
                if data:
                    self.send(R.tagged(cmd.tag, "NO", "Unexpected data after success",
                                       "AUTHENTICATIONFAILED"))
                    return
                break
            step = await exchange.step(data)
        await self._finish_auth(cmd.tag, step)

    @staticmethod
    def _decode_b64(text: bytes) -> bytes | None:
        if text == b"=":
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None

    async def _finish_auth(self, tag: str, step: Any) -> None:
        if step.kind != "success" or not step.account:
            code = {"throttled": "UNAVAILABLE", "unavailable": "UNAVAILABLE",
                    "malformed": "AUTHENTICATIONFAILED"}.get(step.reason,
                                                             "AUTHENTICATIONFAILED")
            text = step.message or "Authentication failed"
            self.send(R.tagged(tag, "NO", text, code))
            return
        account = step.account
        config = self.ctx.config
        settings = config.accounts.get(account)
        if settings is None or settings.relay_only:
            self.send(R.tagged(tag, "NO", "This account has no mailbox",
                               "AUTHORIZATIONFAILED"))
            return
        if self.counts.account_full(account, config.imap.max_connections_per_account):
            self.send(R.tagged(tag, "NO", "Too many connections for this account",
                               "LIMIT"))
            return
        self.account = account
        self.counts.add_account(account)
        self._account_counted = True
        self.parser.authenticated = True
        self._subscription = self.ctx.store.subscribe(account, self._on_store_event)
        log(logger, "login", client=self.client_ip, account=account,
            tls=self.tls_version or "no")
        self.send(R.tagged(tag, "OK", "Logged in", "CAPABILITY " +
                           self._capabilities().decode()))

    # -- store notifications -----------------------------------------------------------

    def _on_store_event(self, event: Any) -> None:
        sel = self.selected
        if isinstance(event, S.MailboxesChanged):
            if sel is not None and event.change == "renamed" and event.names \
                    and event.names[0] == sel.name:
                sel.name = event.names[1]
            elif sel is not None and event.change in ("deleted", "account-deleted"):
                self._mailboxes_changed = True
            else:
                return
        elif sel is None or getattr(event, "mailbox", None) != sel.name:
            return
        self._dirty = True
        if self._idling:
            self._wake()

    async def _refresh(self) -> bool:
        """Read what changed in the selected mailbox; False if it is gone."""
        sel = self.selected
        if sel is None or self.account is None:
            return True
        self._dirty = False
        store = self.ctx.store
        try:
            info = store.get_mailbox(self.account, sel.name)
        except S.NoSuchMailbox:
            return False
        if info.uidvalidity != sel.uidvalidity:
            return False
        if info.highestmodseq <= sel.synced_modseq:
            return True
        changed = store.list_messages(self.account, sel.name, since_modseq=sel.synced_modseq)
        vanished = store.vanished_since(self.account, sel.name, sel.synced_modseq)
        sel.apply_changes(changed, vanished, info.highestmodseq)
        return True

    async def _push_updates(self, *, force: bool = False, allow_expunge: bool = True) -> None:
        """Tell the client what changed in the selected mailbox (RFC 9051 §7.5.1 rules
        are the caller's: ``allow_expunge`` is False during FETCH, STORE and SEARCH)."""
        sel = self.selected
        if sel is None:
            self._dirty = False
            self._mailboxes_changed = False
            return
        if self._dirty or force or self._mailboxes_changed:
            self._mailboxes_changed = False
            if not await self._refresh():
                self.send(R.bye("The selected mailbox was deleted or renamed away"))
                self._end_reason = "mailbox-gone"
                raise SessionEnd()
        for line in sel.take_updates(allow_expunge=allow_expunge):
            self.send(line)

    # -- authenticated: mailbox names --------------------------------------------------

    def _name(self, raw: bytes) -> str:
        """A mailbox name from the wire, in the store's form (RFC 9051 §5.1)."""
        name = R.decode_mailbox_name(raw, self.utf8)
        if name.upper() == "INBOX" or name.upper().startswith("INBOX" + SEPARATOR):
            name = "INBOX" + name[5:]
        return name

    def _wire_name(self, name: str) -> bytes:
        return R.mailbox_name(name, self.utf8)

    def _store_error(self, tag: str, exc: S.StoreError, *, append: bool = False) -> None:
        if isinstance(exc, S.NoSuchMailbox):
            code = "TRYCREATE" if append else "NONEXISTENT"
            self.send(R.tagged(tag, "NO", "No such mailbox", code))
        elif isinstance(exc, S.MailboxExists):
            self.send(R.tagged(tag, "NO", "Mailbox already exists", "ALREADYEXISTS"))
        elif isinstance(exc, S.QuotaExceeded):
            self.send(R.tagged(tag, "NO", str(exc) or "Quota exceeded", "OVERQUOTA"))
        elif isinstance(exc, S.MessageTooLarge):
            self.send(R.tagged(tag, "NO", str(exc) or "Message too large", "TOOBIG"))
        elif isinstance(exc, S.InvalidFlag):
            self.send(R.tagged(tag, "BAD", str(exc) or "Invalid flag"))
        elif isinstance(exc, S.MailboxError):
            code = {"special-use": "USEATTR", "too-many": "LIMIT",
                    "bad-special-use": "USEATTR"}.get(exc.reason, "CANNOT")
            self.send(R.tagged(tag, "NO", str(exc), code))
        else:
            raise exc

    def _valid_name(self, tag: str, raw: bytes) -> str | None:
        try:
            return self._name(raw)
        except ValueError:
            # The command parsed (RFC 9051 §9 allows UTF-8 in quoted strings): a name this
            # session cannot use is an operational NO, not a protocol BAD. It matters to
            # sync clients: mbsync 1.4 sends local folder names as raw UTF-8, and on BAD it
            # abandons the whole store, on NO only that folder (as with Dovecot).
            # RFC 5530 §3: CANNOT, e.g. a name with characters the server cannot accept.
            self.send(R.tagged(tag, "NO", "Invalid mailbox name: use modified UTF-7 "
                               "(RFC 3501 section 5.1.3), or UTF-8 after ENABLE UTF8=ACCEPT",
                               "CANNOT"))
            return None

    # -- authenticated commands --------------------------------------------------------

    async def cmd_enable(self, cmd: C.Enable) -> None:
        done = []
        for cap in cmd.capabilities:
            upper = cap.upper()
            if upper not in ENABLEABLE or upper in self.enabled:
                continue
            self.enabled.add(upper)
            done.append(cap if upper != "IMAP4REV2" else "IMAP4rev2")
            if upper in ("CONDSTORE", "QRESYNC"):
                self.options.condstore = True
            if upper == "QRESYNC":
                self.options.qresync = True
            if upper in ("UTF8=ACCEPT", "IMAP4REV2"):
                self.utf8 = True
            if upper == "IMAP4REV2":
                self.rev2 = True
        self.send(R.untagged(("ENABLED " + " ".join(done)).rstrip().encode()))
        self.send(R.tagged(cmd.tag, "OK", "ENABLE completed"))

    async def cmd_select(self, cmd: C.Select) -> None:
        name = self._valid_name(cmd.tag, cmd.mailbox)
        if name is None:
            return
        verb = "EXAMINE" if cmd.readonly else "SELECT"
        if self.selected is not None:
            self.selected = None
            # RFC 7162 §3.2.11: a client using QRESYNC learns the old mailbox is closed.
            if self.options.qresync:
                self.send(R.untagged(b"OK [CLOSED] Previous mailbox closed"))
        if cmd.qresync is not None and not self.options.qresync:
            self._bad(cmd.tag, "QRESYNC is not enabled")
            return
        if cmd.condstore:
            self.options.condstore = True
        assert self.account is not None
        store = self.ctx.store
        try:
            info = store.get_mailbox(self.account, name)
            messages = store.list_messages(self.account, name)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc)
            return
        sel = SelectedMailbox(info.name, info.uidvalidity, messages, readonly=cmd.readonly,
                              synced_modseq=info.highestmodseq, options=self.options)
        self.selected = sel
        self._dirty = False
        flags = list(SYSTEM_FLAGS) + list(info.keywords)
        self.send(R.untagged(b"FLAGS " + R.flag_list(flags)))
        self.send(R.untagged(b"OK [PERMANENTFLAGS " + R.flag_list(
            [] if cmd.readonly else [*flags, "\\*"]) + b"] Flags permitted"))
        self.send(R.untagged(b"%d EXISTS" % sel.exists))
        if not self.rev2:
            self.send(R.untagged(b"0 RECENT"))
            unseen = sel.unseen_first()
            if unseen is not None:
                self.send(R.untagged(b"OK [UNSEEN %d] First unseen" % unseen))
        else:
            self.send(R.untagged(b"LIST () \"/\" " + self._wire_name(info.name)))
        self.send(R.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % info.uidvalidity))
        self.send(R.untagged(b"OK [UIDNEXT %d] Predicted next UID" % info.uidnext))
        if self.options.condstore:
            self.send(R.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % info.highestmodseq))
        if cmd.qresync is not None and cmd.qresync.uidvalidity == info.uidvalidity:
            await self._qresync(sel, cmd.qresync)
        self.send(R.tagged(cmd.tag, "OK", f"{verb} completed",
                           "READ-ONLY" if cmd.readonly else "READ-WRITE"))

    async def _qresync(self, sel: SelectedMailbox, q: C.QResyncParameters) -> None:
        """RFC 7162 §3.2.5.1: VANISHED (EARLIER) and FETCH for what changed since."""
        assert self.account is not None
        known: list[tuple[int, int]] | None = None
        if q.known_uids is not None:
            top = sel.uids[-1] if sel.uids else 0
            top = max(top, max((b for _a, b in q.known_uids.ranges if b), default=0))
            known = R.resolve_sequence_set(q.known_uids, top)
        vanished = self.ctx.store.vanished_since(self.account, sel.name, q.modseq)
        if known is not None:
            vanished = [u for u in vanished if R.in_sequence_ranges(known, u)]
        if vanished:
            self.send(R.untagged(b"VANISHED (EARLIER) " + R.sequence_set(vanished)))
        for seq, uid in enumerate(sel.uids, start=1):
            info = sel.infos[uid]
            if info.modseq > q.modseq and (known is None
                                           or R.in_sequence_ranges(known, uid)):
                self.send(sel.fetch_flags_response(seq, info, uid=True))

    async def cmd_create(self, cmd: C.Create) -> None:
        name = self._valid_name(cmd.tag, cmd.mailbox)
        if name is None:
            return
        name = name.rstrip(SEPARATOR)  # RFC 9051 §6.3.4: a trailing separator is a hint
        if len(cmd.special_use) > 1:
            self.send(R.tagged(cmd.tag, "NO", "One special use per mailbox", "USEATTR"))
            return
        special = cmd.special_use[0] if cmd.special_use else None
        assert self.account is not None
        try:
            self.ctx.store.create_mailbox(self.account, name, special)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc)
            return
        self.send(R.tagged(cmd.tag, "OK", "CREATE completed"))

    def _mailbox_call(self, tag: str, raw: bytes, operation: Callable[[str, str], Any]
                      ) -> str | None:
        """Run a store operation on a named mailbox of this account; the mailbox name, or
        None when it failed (the tagged reply is already written)."""
        name = self._valid_name(tag, raw)
        if name is None:
            return None
        assert self.account is not None
        try:
            operation(self.account, name)
        except S.StoreError as exc:
            self._store_error(tag, exc)
            return None
        return name

    async def cmd_delete(self, cmd: C.Delete) -> None:
        name = self._mailbox_call(cmd.tag, cmd.mailbox, self.ctx.store.delete_mailbox)
        if name is None:
            return
        if self.selected is not None and self.selected.name == name:
            self.selected = None
            self.send(R.untagged(b"BYE The selected mailbox was deleted"))
            self.send(R.tagged(cmd.tag, "OK", "DELETE completed"))
            self._end_reason = "mailbox-deleted"
            raise SessionEnd()
        self.send(R.tagged(cmd.tag, "OK", "DELETE completed"))

    async def cmd_rename(self, cmd: C.Rename) -> None:
        old = self._valid_name(cmd.tag, cmd.old)
        new = self._valid_name(cmd.tag, cmd.new) if old is not None else None
        if old is None or new is None:
            return
        assert self.account is not None
        try:
            self.ctx.store.rename_mailbox(self.account, old, new)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc)
            return
        sel = self.selected
        if sel is not None and old != "INBOX":
            if sel.name == old:
                sel.name = new
            elif sel.name.startswith(old + SEPARATOR):
                sel.name = new + sel.name[len(old):]
        self.send(R.tagged(cmd.tag, "OK", "RENAME completed"))

    async def cmd_subscribe(self, cmd: C.Subscribe) -> None:
        if self._mailbox_call(cmd.tag, cmd.mailbox, self.ctx.store.subscribe_mailbox) is not None:
            self.send(R.tagged(cmd.tag, "OK", "SUBSCRIBE completed"))

    async def cmd_unsubscribe(self, cmd: C.Unsubscribe) -> None:
        if self._mailbox_call(cmd.tag, cmd.mailbox, self.ctx.store.unsubscribe_mailbox) is not None:
            self.send(R.tagged(cmd.tag, "OK", "UNSUBSCRIBE completed"))

    async def cmd_namespace(self, cmd: C.Namespace) -> None:
        # RFC 2342: one personal namespace, no other users', no shared ones.
        self.send(R.untagged(b'NAMESPACE (("" "/")) NIL NIL'))
        self.send(R.tagged(cmd.tag, "OK", "NAMESPACE completed"))

    # LIST (RFC 9051 §6.3.9, RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154)

    def _pattern_regex(self, reference: str, pattern: str) -> re.Pattern[str]:
        full = reference + pattern if reference else pattern
        out = []
        for ch in full:
            if ch == "*":
                out.append(".*")
            elif ch == "%":
                out.append("[^/]*")
            else:
                out.append(re.escape(ch))
        text = "".join(out)
        # INBOX is case-insensitive (RFC 9051 §5.1), and so is a pattern naming it.
        if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in "/*%"):
            text = "INBOX" + "".join(out[5:])
        return re.compile(text + r"\Z", re.DOTALL)

    async def cmd_list(self, cmd: C.List) -> None:
        assert self.account is not None
        try:
            reference = self._name(cmd.reference) if cmd.reference else ""
            patterns = [R.decode_mailbox_name(p, self.utf8) for p in cmd.patterns]
        except ValueError:
            self._bad(cmd.tag, "Invalid mailbox name encoding")
            return
        if len(patterns) == 1 and patterns[0] == "" and not cmd.extended:
            # RFC 9051 §6.3.9: the hierarchy delimiter and root of the reference.
            self.send(R.untagged(b'LIST (\\Noselect) "/" ""'))
            self.send(R.tagged(cmd.tag, "OK", "LIST completed"))
            return
        regexes = [self._pattern_regex(reference, p) for p in patterns if p != ""]
        store = self.ctx.store
        boxes = {m.name: m for m in store.list_mailboxes(self.account)}
        subscribed = set(store.list_subscriptions(self.account))
        selection = set(cmd.selection)
        returns = set(cmd.returns)
        if "RECURSIVEMATCH" in selection and not (selection - {"RECURSIVEMATCH", "REMOTE"}):
            self._bad(cmd.tag, "RECURSIVEMATCH needs another selection option")
            return
        want_subscribed = "SUBSCRIBED" in selection
        want_special = "SPECIAL-USE" in selection
        show_subscribed = want_subscribed or "SUBSCRIBED" in returns
        parents = set()
        for name in boxes:
            parts = name.split(SEPARATOR)
            for i in range(1, len(parts)):
                parents.add(SEPARATOR.join(parts[:i]))
        candidates: list[str]
        candidates = sorted(subscribed) if want_subscribed else sorted(boxes)
        lines = []
        matched: set[str] = set()
        for name in candidates:
            if not any(r.match(name) for r in regexes):
                continue
            box = boxes.get(name)
            if want_special and (box is None or not box.special_use):
                continue
            matched.add(name)
            attrs = []
            if box is None:
                attrs.append("\\NonExistent")
            else:
                attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
                if box.special_use:
                    attrs.append(box.special_use)
            if show_subscribed and name in subscribed:
                attrs.append("\\Subscribed")
            lines.append((name, attrs, b""))
        if "RECURSIVEMATCH" in selection and want_subscribed:
            # RFC 5258 §3.5: parents that match, whose children are subscribed.
            for sub_name in subscribed:
                parts = sub_name.split(SEPARATOR)
                for i in range(1, len(parts)):
                    parent = SEPARATOR.join(parts[:i])
                    if parent in matched or not any(r.match(parent) for r in regexes):
                        continue
                    matched.add(parent)
                    box = boxes.get(parent)
                    attrs = [] if box else ["\\NonExistent"]
                    if parent in subscribed:
                        attrs.append("\\Subscribed")
                    lines.append((parent, attrs, b' ("CHILDINFO" ("SUBSCRIBED"))'))
            lines.sort(key=lambda x: x[0])
        for name, attrs, extra in lines:
            self.send(R.untagged(b"LIST (" + " ".join(attrs).encode() + b') "/" '
                                 + self._wire_name(name) + extra))
            if cmd.status_items and name in boxes:
                self._status_line(boxes[name], cmd.status_items)
        self.send(R.tagged(cmd.tag, "OK", "LIST completed"))

    async def cmd_lsub(self, cmd: C.Lsub) -> None:
        assert self.account is not None
        try:
            reference = self._name(cmd.reference) if cmd.reference else ""
            pattern = R.decode_mailbox_name(cmd.pattern, self.utf8)
        except ValueError:
            self._bad(cmd.tag, "Invalid mailbox name encoding")
            return
        if pattern == "":
            self.send(R.untagged(b'LSUB (\\Noselect) "/" ""'))
            self.send(R.tagged(cmd.tag, "OK", "LSUB completed"))
            return
        regex = self._pattern_regex(reference, pattern)
        store = self.ctx.store
        boxes = {m.name for m in store.list_mailboxes(self.account)}
        for name in sorted(store.list_subscriptions(self.account)):
            if regex.match(name):
                attrs = b"" if name in boxes else b"\\Noselect"
                self.send(R.untagged(b"LSUB (" + attrs + b') "/" ' + self._wire_name(name)))
        self.send(R.tagged(cmd.tag, "OK", "LSUB completed"))

    def _status_line(self, box: S.MailboxInfo, items: Sequence[str]) -> None:
        values = []
        for item in items:
            value = {
                "MESSAGES": box.messages, "UIDNEXT": box.uidnext,
                "UIDVALIDITY": box.uidvalidity, "UNSEEN": box.unseen,
                "DELETED": box.deleted, "SIZE": box.size, "RECENT": 0,
                "HIGHESTMODSEQ": box.highestmodseq,
                "APPENDLIMIT": self.ctx.config.imap.append_limit,
            }.get(item)
            if value is None:
                continue
            if item == "RECENT" and self.rev2:
                continue
            values.append(f"{item} {value}")
        self.send(R.untagged(b"STATUS " + self._wire_name(box.name) + b" ("
                             + " ".join(values).encode() + b")"))

    async def cmd_status(self, cmd: C.Status) -> None:
        name = self._valid_name(cmd.tag, cmd.mailbox)
        if name is None:
            return
        for item in cmd.items:
            if item not in STATUS_ITEMS:
                self._bad(cmd.tag, f"Unknown STATUS item {item}")
                return
        if "HIGHESTMODSEQ" in cmd.items:
            self.options.condstore = True
        assert self.account is not None
        try:
            box = self.ctx.store.get_mailbox(self.account, name)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc)
            return
        self._status_line(box, cmd.items)
        self.send(R.tagged(cmd.tag, "OK", "STATUS completed"))

    def _quota_limits(self) -> tuple[int | None, int | None]:
        assert self.account is not None
        settings = self.ctx.config.accounts.get(self.account)
        if settings is None:
            return None, None
        return (settings.quota or None), (settings.quota_messages or None)

    async def cmd_append(self, cmd: C.Append) -> None:
        name = self._valid_name(cmd.tag, cmd.mailbox)
        if name is None:
            return
        assert self.account is not None
        store = self.ctx.store
        quota_bytes, quota_messages = self._quota_limits()
        limit = self.ctx.config.imap.append_limit
        for message in cmd.messages:
            if len(message.data) > limit:
                self.send(R.tagged(cmd.tag, "NO", f"Message larger than {limit} bytes",
                                   "TOOBIG"))
                return
            if not message.data:
                self.send(R.tagged(cmd.tag, "NO", "Empty message"))
                return
        try:
            box = store.get_mailbox(self.account, name)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc, append=True)
            return
        uids: list[int] = []
        try:
            for message in cmd.messages:
                date = message.internal_date.timestamp() if message.internal_date else None
                uid = await store.append(self.account, name, message.data,
                                         [f for f in message.flags if f != "\\Recent"],
                                         date, quota_bytes=quota_bytes,
                                         quota_messages=quota_messages)
                uids.append(uid)
        except S.StoreError as exc:
            if uids:
                # RFC 3502 §6: MULTIAPPEND is all or nothing; take back what went in.
                with contextlib.suppress(S.StoreError):
                    await store.store_flags(self.account, name, uids, ["\\Deleted"], "add")
                    await store.expunge(self.account, name, uids)
            self._store_error(cmd.tag, exc, append=True)
            return
        self.stats["appended"] += len(uids)
        if self.selected is not None and self.selected.name == name:
            await self._push_updates(force=True)
        self.send(R.tagged(cmd.tag, "OK", "APPEND completed",
                           f"APPENDUID {box.uidvalidity} {R.sequence_set(uids).decode()}"))

    async def cmd_idle(self, cmd: C.Idle) -> None:
        await self._push_updates(force=True)
        self.send(R.continuation("idling"))
        self.parser.expect_idle_done()
        self._idling = True
        try:
            event = await self._next_event()
        finally:
            self._idling = False
        if not isinstance(event, C.IdleDone):
            self._bad(cmd.tag, "Expected DONE")
            return
        self.send(R.tagged(cmd.tag, "OK", "IDLE terminated"))

    async def cmd_getquota(self, cmd: C.GetQuota) -> None:
        if cmd.root not in (b"", b'""'):
            self.send(R.tagged(cmd.tag, "NO", "No such quota root", "NONEXISTENT"))
            return
        self._quota_line()
        self.send(R.tagged(cmd.tag, "OK", "GETQUOTA completed"))

    def _quota_line(self) -> None:
        assert self.account is not None
        quota_bytes, quota_messages = self._quota_limits()
        usage = self.ctx.store.usage(self.account)
        parts = []
        if quota_bytes:
            # RFC 9208 §5.1: STORAGE is in units of 1024 octets.
            parts.append(f"STORAGE {(usage.bytes + 1023) // 1024} {quota_bytes // 1024}")
        if quota_messages:
            parts.append(f"MESSAGE {usage.messages} {quota_messages}")
        self.send(R.untagged(('QUOTA "" (' + " ".join(parts) + ")").encode()))

    async def cmd_getquotaroot(self, cmd: C.GetQuotaRoot) -> None:
        name = self._valid_name(cmd.tag, cmd.mailbox)
        if name is None:
            return
        assert self.account is not None
        try:
            self.ctx.store.get_mailbox(self.account, name)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc)
            return
        self.send(R.untagged(b"QUOTAROOT " + self._wire_name(name) + b' ""'))
        self._quota_line()
        self.send(R.tagged(cmd.tag, "OK", "GETQUOTAROOT completed"))

    async def cmd_setquota(self, cmd: C.SetQuota) -> None:
        self.send(R.tagged(cmd.tag, "NO", "Quotas are set by the administrator "
                           "(mailkeep account)", "NOPERM"))

    async def cmd_compress(self, cmd: C.Compress) -> None:
        if cmd.mechanism.upper() != "DEFLATE":
            self._bad(cmd.tag, "Unknown compression mechanism")
            return
        if self._deflate is not None:
            self.send(R.tagged(cmd.tag, "NO", "Compression already active",
                               "COMPRESSIONACTIVE"))
            return
        self.send(R.tagged(cmd.tag, "OK", "DEFLATE active"))
        self.flush()
        # RFC 4978 §3: raw DEFLATE (no zlib header) both ways, from the next byte on.
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 8)
        self._inflate = zlib.decompressobj(-15)
        pending = self.parser.discard_buffer()
        if pending:
            # Bytes after the command already arrived compressed: feed them back through.
            log(logger, "data pipelined after COMPRESS", logging.DEBUG, client=self.client_ip)

    # -- selected state ----------------------------------------------------------------

    async def cmd_check(self, cmd: C.Check) -> None:
        await self._push_updates(force=True)
        self.send(R.tagged(cmd.tag, "OK", "CHECK completed"))

    async def cmd_close(self, cmd: C.Close) -> None:
        sel = self.selected
        assert sel is not None and self.account is not None
        self.selected = None
        if not sel.readonly:
            with contextlib.suppress(S.NoSuchMailbox):
                # RFC 9051 §6.4.1: expunge silently, no EXPUNGE responses.
                await self.ctx.store.expunge(self.account, sel.name)
        self.send(R.tagged(cmd.tag, "OK", "CLOSE completed"))

    async def cmd_unselect(self, cmd: C.Unselect) -> None:
        self.selected = None
        self.send(R.tagged(cmd.tag, "OK", "UNSELECT completed"))

    def _writable(self, tag: str, sel: SelectedMailbox) -> bool:
        """False (and NO [READ-ONLY] written) for a mailbox opened with EXAMINE."""
        if sel.readonly:
            self.send(R.tagged(tag, "NO", "Mailbox is read-only", "READ-ONLY"))
        return not sel.readonly

    async def cmd_expunge(self, cmd: C.Expunge) -> None:
        sel = self.selected
        assert sel is not None and self.account is not None
        if not self._writable(cmd.tag, sel):
            return
        uids = None
        if cmd.uids is not None:
            uids = [u for _s, u in sel.resolve(cmd.uids, uid=True)]
        try:
            gone = await self.ctx.store.expunge(self.account, sel.name, uids)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc)
            return
        sel.note_expunged(gone)
        await self._push_updates(force=True)
        code = None
        if self.options.condstore:
            code = f"HIGHESTMODSEQ {sel.synced_modseq}"
        self.send(R.tagged(cmd.tag, "OK", "EXPUNGE completed", code))

    # FETCH (RFC 9051 §6.4.5)

    def _structure(self, uid: int, blob: bytes | None = None) -> Any:
        sel = self.selected
        assert sel is not None and self.account is not None
        # Messages never change (RFC 9051 §2.3.1.1) and (account, UIDVALIDITY, UID) names
        # one for good, so parsed structures are shared by every session of the process.
        key = (self.account, sel.uidvalidity, uid)
        cached = _STRUCTURES.get(key)
        if cached is not None:
            _STRUCTURES.move_to_end(key)
            return cached
        if blob is None:
            blob = self.ctx.store.get_structure(self.account, sel.name, uid)
        part = from_json(blob)
        _STRUCTURES[key] = part
        if len(_STRUCTURES) > STRUCTURE_CACHE:
            _STRUCTURES.popitem(last=False)
        return part

    def _message_data(self, uid: int, size: int, path: Any = None) -> Any:
        sel = self.selected
        assert sel is not None and self.account is not None
        opened = open(path, "rb") if path is not None else \
            self.ctx.store.open_message(self.account, sel.name, uid)
        with opened as f:
            if size <= READ_WHOLE_LIMIT:
                return f.read()
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):
                return f.read()

    async def cmd_fetch(self, cmd: C.Fetch) -> None:
        sel = self.selected
        assert sel is not None and self.account is not None
        items = list(cmd.items)
        if cmd.vanished and (not cmd.uid or cmd.changed_since is None
                             or not self.options.qresync):
            self._bad(cmd.tag, "VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC")
            return
        if cmd.changed_since is not None or any(i.name == "MODSEQ" for i in items):
            self.options.condstore = True
        if self.options.condstore and cmd.changed_since is not None and \
                not any(i.name == "MODSEQ" for i in items):
            items.append(C.FetchAttribute("MODSEQ"))
        await self._push_updates(allow_expunge=cmd.uid)
        targets = sel.resolve(cmd.sequence_set, uid=cmd.uid)
        if cmd.vanished and cmd.changed_since is not None:
            gone = self.ctx.store.vanished_since(self.account, sel.name, cmd.changed_since)
            # "*" covers every expunged UID above the range start (RFC 7162 §3.2.6).
            top = max([*(b for _a, b in cmd.sequence_set.ranges if b), *gone,
                       *sel.uids[-1:]], default=0)
            ranges = R.resolve_sequence_set(cmd.sequence_set, top)
            vanished = [u for u in gone if R.in_sequence_ranges(ranges, u)]
            if vanished:
                self.send(R.untagged(b"VANISHED (EARLIER) " + R.sequence_set(vanished)))
        if cmd.changed_since is not None:
            targets = [(s, u) for s, u in targets
                       if sel.infos[u].modseq > cmd.changed_since]
        if F.sets_seen(items) and not sel.readonly:
            unseen = [u for _s, u in targets if "\\Seen" not in sel.infos[u].flags
                      and u not in sel.expunged]
            if unseen:
                result = await self.ctx.store.store_flags(self.account, sel.name, unseen,
                                                          ["\\Seen"], "add")
                changed = {pair[1].uid for pair in sel.note_flags(result.updated)}
            else:
                changed = set()
        else:
            changed = set()
        want_structure = F.needs_structure(items)
        want_data = F.needs_data(items)
        expunged_issue = False
        utf8 = self.utf8
        # One lookup for every message's file and structure instead of one per message.
        files = self.ctx.store.message_files(self.account, sel.name,
                                             [u for _s, u in targets]) \
            if (want_structure or want_data) and targets else None
        for seq, uid in targets:
            info = sel.infos[uid]
            structure = data = None
            try:
                if files is not None and uid not in files:
                    raise S.NoSuchMessage("expunged")
                path, blob = files[uid] if files is not None else (None, None)
                if want_structure:
                    structure = self._structure(uid, blob)
                if want_data:
                    data = self._message_data(uid, info.size, path)
            except (S.NoSuchMessage, FileNotFoundError):
                expunged_issue = True
                continue
            try:
                # An implicit \Seen is reported with the new FLAGS (RFC 9051 §6.4.5).
                line = F.render_fetch(seq, items, info, structure=structure, data=data,
                                      utf8=utf8, include_uid=cmd.uid,
                                      flags=info.flags if uid in changed else None)
            except F.FetchError as exc:
                self.send(R.tagged(cmd.tag, "NO", str(exc) or "FETCH failed", exc.code))
                return
            finally:
                if isinstance(data, mmap.mmap):
                    data.close()
            self.send(line)
            self.stats["fetched"] += 1
            await self.maybe_drain()
        if expunged_issue:
            self.send(R.tagged(cmd.tag, "NO", "Some messages were expunged meanwhile",
                               "EXPUNGEISSUED"))
            return
        self.send(R.tagged(cmd.tag, "OK", "FETCH completed"))

    async def cmd_store(self, cmd: C.Store) -> None:
        sel = self.selected
        assert sel is not None and self.account is not None
        if not self._writable(cmd.tag, sel):
            return
        if any(f == "\\Recent" for f in cmd.flags):
            self._bad(cmd.tag, "\\Recent cannot be stored")
            return
        if cmd.unchanged_since is not None:
            self.options.condstore = True
        await self._push_updates(allow_expunge=cmd.uid)
        targets = sel.resolve(cmd.sequence_set, uid=cmd.uid)
        uids = [u for _s, u in targets if u not in sel.expunged]
        try:
            result = await self.ctx.store.store_flags(
                self.account, sel.name, uids, cmd.flags, cmd.mode,
                unchanged_since=cmd.unchanged_since)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc)
            return
        for seq, update in sel.note_flags(result.updated):
            # RFC 9051 §6.4.6: the new flags, unless .SILENT; RFC 7162 §3.1.3: with
            # UNCHANGEDSINCE a silent STORE still reports changes by others (none here).
            if cmd.silent and update.changed:
                continue
            if not update.changed and cmd.silent:
                continue
            parts = [b"FLAGS " + R.flag_list(update.flags)]
            if cmd.uid or self.options.qresync:
                parts.insert(0, b"UID %d" % update.uid)
            if self.options.condstore:
                parts.append(b"MODSEQ (%d)" % update.modseq)
            self.send(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
        code = None
        if result.modified:
            if cmd.uid:
                code = "MODIFIED " + R.sequence_set(result.modified).decode()
            else:
                seqs = [sel.seq_of(u) for u in result.modified]
                code = "MODIFIED " + R.sequence_set(s for s in seqs if s).decode()
        self.send(R.tagged(cmd.tag, "OK", "STORE completed", code))

    async def _copy_or_move(self, cmd: C.Copy | C.Move, move: bool) -> None:
        sel = self.selected
        assert sel is not None and self.account is not None
        dest = self._valid_name(cmd.tag, cmd.mailbox)
        if dest is None:
            return
        if move and not self._writable(cmd.tag, sel):
            return
        await self._push_updates(allow_expunge=cmd.uid)
        targets = sel.resolve(cmd.sequence_set, uid=cmd.uid)
        uids = [u for _s, u in targets if u not in sel.expunged]
        store = self.ctx.store
        try:
            store.get_mailbox(self.account, dest)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc, append=True)
            return
        if not uids:
            self.send(R.tagged(cmd.tag, "OK", "Nothing to do"))
            return
        verb = "MOVE" if move else "COPY"
        try:
            if move:
                result = await store.move(self.account, sel.name, uids, dest)
            else:
                quota_bytes, quota_messages = self._quota_limits()
                result = await store.copy(self.account, sel.name, uids, dest,
                                          quota_bytes=quota_bytes,
                                          quota_messages=quota_messages)
        except S.StoreError as exc:
            self._store_error(cmd.tag, exc, append=True)
            return
        code = None
        if result.uids:
            code = (f"COPYUID {result.uidvalidity} "
                    f"{_uid_list([a for a, _b in result.uids])} "
                    f"{_uid_list([b for _a, b in result.uids])}")
        if move:
            # RFC 6851 §4.3: COPYUID in an untagged OK, then the expunges, then OK.
            if code:
                self.send(R.untagged(f"OK [{code}] Moved".encode()))
            sel.note_expunged([a for a, _b in result.uids])
            await self._push_updates(force=dest == sel.name)
            self.send(R.tagged(cmd.tag, "OK", f"{verb} completed"))
            return
        if dest == sel.name:
            await self._push_updates(force=True, allow_expunge=cmd.uid)
        self.send(R.tagged(cmd.tag, "OK", f"{verb} completed", code))

    async def cmd_copy(self, cmd: C.Copy) -> None:
        await self._copy_or_move(cmd, move=False)

    async def cmd_move(self, cmd: C.Move) -> None:
        await self._copy_or_move(cmd, move=True)

    # SEARCH, SORT, THREAD (RFC 9051 §6.4.4, RFC 4731, RFC 5182, RFC 5256)

    def _search_context(self) -> Any:
        sel = self.selected
        assert sel is not None and self.account is not None
        return SearchContext(store=self.ctx.store, account=self.account, mailbox=sel.name,
                             messages=sel.messages(), saved=list(sel.saved_search),
                             now=time.time(), fts=self.ctx.fts)

    async def _run_search(self, func: Callable[..., Any], *args: Any) -> Any:
        sel = self.selected
        assert sel is not None
        if sel.exists > SEARCH_THREAD_THRESHOLD:
            return await asyncio.to_thread(func, *args)
        return func(*args)

    @staticmethod
    def _uses_modseq(key: C.SearchKey) -> bool:
        stack = [key]
        while stack:
            k = stack.pop()
            if k.kind == "MODSEQ":
                return True
            if k.kind in ("AND", "OR", "NOT"):
                stack.extend(k.args)
        return False

    async def cmd_search(self, cmd: C.Search) -> None:
        sel = self.selected
        assert sel is not None
        modseq_search = self._uses_modseq(cmd.key)
        if modseq_search:
            self.options.condstore = True
        await self._push_updates(allow_expunge=cmd.uid)
        ctx = self._search_context()
        try:
            uids = await self._run_search(search, ctx, cmd.key, cmd.charset)
        except SearchError as exc:
            self.send(R.tagged(cmd.tag, "NO", str(exc) or "SEARCH failed", exc.code))
            return
        self._answer_search(cmd.tag, cmd.uid, uids, cmd.returns, "SEARCH",
                            modseq_search)

    def _answer_search(self, tag: str, uid: bool, uids: list[int],
                       returns: tuple[str, ...] | None, verb: str,
                       modseq_search: bool, ordered: bool = False) -> None:
        sel = self.selected
        assert sel is not None
        numbers = uids if uid else [sel.seq_of(u) or 0 for u in uids]
        highest = None
        if modseq_search and uids:
            highest = max(sel.infos[u].modseq for u in uids if u in sel.infos)
        if returns is None and not self.rev2:
            text = b"SEARCH" if verb == "SEARCH" else b"SORT"
            if numbers:
                text += b" " + b" ".join(b"%d" % n for n in numbers)
            if highest is not None:
                text += b" (MODSEQ %d)" % highest
            self.send(R.untagged(text))
            self.send(R.tagged(tag, "OK", f"{verb} completed"))
            return
        opts = set(returns or ()) or {"ALL"}
        if "SAVE" in opts:
            sel.saved_search = list(uids)
            opts.discard("SAVE")
            if not opts and returns:
                # RFC 5182 §2.1: RETURN (SAVE) alone gives no ESEARCH response.
                self.send(R.tagged(tag, "OK", f"{verb} completed, result saved"))
                return
        parts = [b'(TAG "' + tag.encode() + b'")']
        if uid:
            parts.append(b"UID")
        if numbers:
            if "MIN" in opts:
                parts.append(b"MIN %d" % min(numbers))
            if "MAX" in opts:
                parts.append(b"MAX %d" % max(numbers))
            if "ALL" in opts:
                if ordered:
                    parts.append(b"ALL " + b",".join(b"%d" % n for n in numbers))
                else:
                    parts.append(b"ALL " + R.sequence_set(numbers))
        if "COUNT" in opts:
            parts.append(b"COUNT %d" % len(numbers))
        if highest is not None:
            parts.append(b"MODSEQ %d" % highest)
        self.send(R.untagged(b"ESEARCH " + b" ".join(parts)))
        self.send(R.tagged(tag, "OK", f"{verb} completed"))

    async def cmd_sort(self, cmd: C.Sort) -> None:
        modseq_search = self._uses_modseq(cmd.key)
        if modseq_search:
            self.options.condstore = True
        await self._push_updates(allow_expunge=cmd.uid)
        ctx = self._search_context()
        try:
            uids = await self._run_search(sort, ctx, cmd.criteria, cmd.charset, cmd.key)
        except SearchError as exc:
            self.send(R.tagged(cmd.tag, "NO", str(exc) or "SORT failed", exc.code))
            return
        sel = self.selected
        assert sel is not None
        numbers = uids if cmd.uid else [sel.seq_of(u) or 0 for u in uids]
        text = b"SORT"
        if numbers:
            text += b" " + b" ".join(b"%d" % n for n in numbers)
        if modseq_search and uids:
            text += b" (MODSEQ %d)" % max(sel.infos[u].modseq for u in uids)
        self.send(R.untagged(text))
        self.send(R.tagged(cmd.tag, "OK", "SORT completed"))

    async def cmd_thread(self, cmd: C.Thread) -> None:
        await self._push_updates(allow_expunge=cmd.uid)
        ctx = self._search_context()
        try:
            threads = await self._run_search(thread, ctx, cmd.algorithm, cmd.charset,
                                             cmd.key)
        except SearchError as exc:
            self.send(R.tagged(cmd.tag, "NO", str(exc) or "THREAD failed", exc.code))
            return
        sel = self.selected
        assert sel is not None
        number = (lambda u: u) if cmd.uid else (lambda u: sel.seq_of(u) or 0)
        body = format_threads(threads, number)
        self.send(R.untagged(b"THREAD" + (b" " + body if body else b"")))
        self.send(R.tagged(cmd.tag, "OK", "THREAD completed"))


def _uid_list(uids: Iterable[int]) -> str:
    """COPYUID sets keep the order of the pairs (RFC 4315 §3), so no sorting here."""
    out: list[str] = []
    run_start = prev = None
    for u in uids:
        if prev is not None and u == prev + 1:
            prev = u
            continue
        if run_start is not None:
            out.append(str(run_start) if run_start == prev else f"{run_start}:{prev}")
        run_start = prev = u
    if run_start is not None:
        out.append(str(run_start) if run_start == prev else f"{run_start}:{prev}")
    return ",".join(out)


class IMAPListener(SessionListener):
    """One listening socket speaking IMAP (STARTTLS) or IMAPS (implicit TLS)."""

    def __init__(self, name: str, context: IMAPContext, counts: ConnectionCounts):
        super().__init__(name, context)
        self.counts = counts

    def new_session(self) -> IMAPSession:
        return IMAPSession(self.context, self.counts, self.sessions)


__all__ = ["ConnectionCounts", "IMAPContext", "IMAPListener", "IMAPSession"]
