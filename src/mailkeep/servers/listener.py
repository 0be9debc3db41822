"""What every listener shares: serve sessions on a bound socket, swap the context on
reload, and stop gracefully.

A session (an ``asyncio.Protocol``) registers itself in ``sessions`` and exposes ``task``
(its running coroutine), ``transport``, ``_lost`` and ``request_shutdown()``. Stopping asks
every session to end at its next safe point — a delivery, an APPEND or a POP3 QUIT in
flight completes and is acknowledged, idle sessions are told to come back later at once —
and drops whatever is still busy after the grace period.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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
}


@dataclass
class ConnectionCounts:
    """Open connections of one server kind, in total, per client IP and per logged-in
    account; shared by that kind's listeners so the limits hold for the whole server.
    A Unix-socket client ("local") is not limited per IP."""

    total: int = 0
    per_ip: Counter = field(default_factory=Counter)
    per_account: Counter = field(default_factory=Counter)

    def admit(self, ip: str, max_total: int, max_per_ip: int) -> str | None:
        """Count a new connection; or, without counting it, name the limit it exceeds."""
        if self.total >= max_total:
            return "max_connections"
        if ip != "local" and self.per_ip[ip] >= max_per_ip:
            return "max_connections_per_ip"
        self.total += 1
        self.per_ip[ip] += 1
        return None

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


class SessionListener:
    """One listening socket (TCP or Unix). Subclasses make their sessions in
    :meth:`new_session`, from ``self.context`` as it is when the client connects."""

    def __init__(self, name: str, context: Any) -> None:
        self.name = name
        self.context = context
        self.server: asyncio.base_events.Server | None = None
        self.sessions: set[Any] = set()

    def new_session(self) -> asyncio.Protocol:
        raise NotImplementedError

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound socket (bound before privileges were dropped). TLS,
        implicit or by STARTTLS, is started by each session, so every handshake uses the
        certificate current at that moment (renewals apply at once)."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            self.server = await loop.create_unix_server(self.new_session, sock=sock)
        else:
            self.server = await loop.create_server(self.new_session, sock=sock)

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
