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
import socket
from typing import Any


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
