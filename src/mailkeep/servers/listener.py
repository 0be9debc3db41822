"""What every listener shares: serve sessions on a bound socket, swap the context on
reload, and stop gracefully.

A session (an ``asyncio.Protocol``) registers itself in ``sessions`` and exposes ``task``
(its running coroutine), ``transport``, ``_lost`` and ``request_shutdown()``. Stopping asks
every session to end at its next safe point — a delivery, an APPEND or a POP3 QUIT in
flight completes and is acknowledged, idle sessions are told to come back later at once —
and drops whatever is still busy after the grace period.

Two defences act before a session exists or counts: a client on the server's ban list
(``mailkeep.bans``) is refused at connect with one line and closed, and each server kind
limits the connection rate per client address (``max_connection_rate_per_ip``, Postfix's
``smtpd_client_connection_rate_limit``) next to its concurrency limits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailkeep.bans import BanList, client_key


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


#: What a refused client is told, by the limit that refused it.
REFUSALS = {
    "max_connections": "Too many connections, try again later",
    "max_connections_per_ip": "Too many connections from your address",
    "max_connection_rate_per_ip": "Too many connections from your address per minute, "
                                  "try again later",
}

#: The period of ``max_connection_rate_per_ip`` (Postfix's anvil_rate_time_unit).
RATE_PERIOD = 60.0
#: Client addresses whose connection rate is tracked at most, per server kind; the least
#: recently seen are forgotten first (which can only let a client in, never lock it out).
MAX_RATE_TRACKED = 10_000


class ConnectionRate:
    """A token bucket per client address (IPv6 per /64): a client may open ``limit``
    connections at once, and the bucket refills at ``limit`` per ``RATE_PERIOD``, so over
    a long time no more than ``limit`` a minute get through. Memory per address is
    constant, whatever the limit; refused attempts take no token."""

    def __init__(self, max_tracked: int = MAX_RATE_TRACKED,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tracked = max_tracked
        self.clock = clock
        # key -> (tokens, time of the last update); ordered by last use.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, ip: str, limit: int) -> bool:
        """Take a token for a new connection from ``ip``; False if none is left."""
        key = client_key(ip)
        if key is None or limit <= 0:
            return True
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(limit), now))
        tokens = min(float(limit), tokens + (now - last) * limit / RATE_PERIOD)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        self._buckets.move_to_end(key)
        self._forget(now)
        return allowed

    def tracked(self) -> int:
        return len(self._buckets)

    def _forget(self, now: float) -> None:
        # A bucket untouched for a whole period is full again: forgetting it changes
        # nothing. The front holds the least recently used.
        while self._buckets:
            key, (_tokens, last) = next(iter(self._buckets.items()))
            if now - last < RATE_PERIOD and len(self._buckets) <= self.max_tracked:
                break
            del self._buckets[key]


@dataclass
class ConnectionCounts:
    """Open connections of one server kind, in total, per client IP and per logged-in
    account, and the connection rate per client; shared by that kind's listeners so the
    limits hold for the whole server. A Unix-socket client ("local") is not limited per
    IP. ``bans`` (the server's ban list) supplies the allow-list exempt from the rate;
    without it, loopback is exempt."""

    total: int = 0
    per_ip: Counter = field(default_factory=Counter)
    per_account: Counter = field(default_factory=Counter)
    bans: BanList | None = None
    rate: ConnectionRate = field(default_factory=ConnectionRate)
    #: Where opened and refused connections are counted (mailkeep.metrics.ConnectionStats).
    stats: Any = None

    def admit(self, ip: str, max_total: int, max_per_ip: int,
              max_rate_per_ip: int = 0) -> str | None:
        """Count a new connection; or, without counting it, name the limit it exceeds.
        ``max_rate_per_ip``: connections per minute from one address, 0 for no limit."""
        refused = None
        if self.total >= max_total:
            refused = "max_connections"
        elif ip != "local" and self.per_ip[ip] >= max_per_ip:
            refused = "max_connections_per_ip"
        elif max_rate_per_ip > 0 and not self._rate_exempt(ip) \
                and not self.rate.allow(ip, max_rate_per_ip):
            refused = "max_connection_rate_per_ip"
        stats = self.stats
        if refused is not None:
            if stats is not None:
                stats.refuse(refused)
            return refused
        if stats is not None:
            stats.opened.value += 1
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def _rate_exempt(self, ip: str) -> bool:
        if self.bans is not None:
            return self.bans.allowed(ip)
        return ip == "local" or is_loopback(ip)

    def release(self, ip: str) -> None:
        self.total -= 1
        _decrement(self.per_ip, ip)

    def account_full(self, account: str, limit: int) -> bool:
        return self.per_account[account] >= limit

    def add_account(self, account: str) -> None:
        self.per_account[account] += 1

    def release_account(self, account: str) -> None:
        _decrement(self.per_account, account)


def _decrement(counter: Counter, key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class _BanGate(asyncio.Protocol):
    """Stands in for a session until the client's address is known (asyncio makes the
    protocol before it has the peer): a banned client gets the refusal line and is closed
    before any session, parser or task exists for it; anyone else is handed to a new
    session, which takes over the transport as if it had been there from the start."""

    __slots__ = ("listener",)

    def __init__(self, listener: SessionListener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self.listener
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "local"
        bans = listener.bans
        if bans is not None and bans.is_banned(ip) is not None:
            try:
                refusal = listener.ban_refusal() if listener.ban_refusal else b""
            except Exception:  # a refusal we cannot build is no reason to let them in
                refusal = b""
            if refusal and isinstance(transport, asyncio.WriteTransport):
                transport.write(refusal)
            transport.close()
            bans.note_refusal(ip, listener.name)
            return
        session = listener.new_session()
        transport.set_protocol(session)
        session.connection_made(transport)


class SessionListener:
    """One listening socket (TCP or Unix). Subclasses make their sessions in
    :meth:`new_session`, from ``self.context`` as it is when the client connects."""

    def __init__(self, name: str, context: Any) -> None:
        self.name = name
        self.context = context
        self.server: asyncio.base_events.Server | None = None
        self.sessions: set[Any] = set()
        self.bans: BanList | None = None
        self.ban_refusal: Callable[[], bytes] | None = None

    def new_session(self) -> asyncio.Protocol:
        raise NotImplementedError

    def enforce_bans(self, bans: BanList | None, refusal: Callable[[], bytes]) -> None:
        """Refuse clients on ``bans`` at connect: they are sent ``refusal()`` (the
        protocol's "come back later" line, empty for implicit TLS) and disconnected."""
        self.bans = bans
        self.ban_refusal = refusal

    def _accept(self) -> asyncio.Protocol:
        """The protocol for a new connection: the session itself when nobody is banned
        (no cost at all), else a gate that looks at the address first."""
        bans = self.bans
        if bans is None or not bans.has_active:
            return self.new_session()
        return _BanGate(self)

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound socket (bound before privileges were dropped). TLS,
        implicit or by STARTTLS, is started by each session, so every handshake uses the
        certificate current at that moment (renewals apply at once)."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            self.server = await loop.create_unix_server(self._accept, sock=sock)
        else:
            self.server = await loop.create_server(self._accept, sock=sock)

    def update(self, context: Any) -> None:
        """New sessions use the new context (config reload); running ones keep theirs."""
        self.context = context

    async def stop(self, grace: float = 10.0) -> None:
        if self.server is not None:
            self.server.close()
        tasks = [s.task for s in self.sessions if s.task is not None and not s.task.done()]
        for session in list(self.sessions):
            session.request_shutdown()
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for session in list(self.sessions):
            if session.transport is not None and not session._lost:
                # Still busy after the grace period (e.g. a client that stopped reading):
                # its unsent output is dropped.
                session.transport.abort()
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
