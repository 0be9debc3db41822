"""The HTTP and HTTPS listeners: one aiohttp application per listener, on a socket bound
before privileges were dropped.

What they serve comes from the modules in :data:`ROUTE_MODULES`; each exposes
``add_routes(app: aiohttp.web.Application) -> None``. A handler reads the current
:class:`WebContext` with :func:`context_of` at request time, so a config reload or a
renewed certificate applies to the next request without dropping connections.

TLS (``https``): the listening context only picks, at each ClientHello, the context that
answers it (:meth:`WebContext.tls_context_for`): a pending ACME TLS-ALPN-01 challenge for
the name asked (RFC 8737 §3), else the server's current certificates.

Limits: connections in total and per client address (the [imap] connection limits, the
same order of magnitude a web endpoint for a mail server needs), request line and header
sizes (aiohttp's 8 KiB), request bodies (:data:`MAX_BODY` — Outlook's autodiscover POST is
the only body we read), keep-alive and TLS handshake timeouts. Banned clients are closed
at connect, as on every other listener.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mailkeep.bans import BanList, client_key
from mailkeep.config import Config
from mailkeep.logfmt import log
from mailkeep.servers.listener import ConnectionCounts
from mailkeep.servers.tlsio import start_tls

logger = logging.getLogger("mailkeep.http")

#: Modules whose ``add_routes(app)`` fill every HTTP(S) listener's application.
ROUTE_MODULES: list[str] = [
    "mailkeep.web.challenges",   # /.well-known/acme-challenge/ (ACME HTTP-01)
    "mailkeep.web.mta_sts",      # /.well-known/mta-sts.txt on mta-sts.DOMAIN (RFC 8461)
    "mailkeep.web.autoconfig",   # Thunderbird, Outlook and Apple client autoconfiguration
    "mailkeep.web.metrics_route",  # /metrics (Prometheus)
]

MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 1000
#: Per client: an IPv4 address, or an IPv6 /64 (mailkeep.bans.client_key).
MAX_CONNECTIONS_PER_IP = 50
#: New connections per client per minute (loopback and [auth] ban_allow exempt).
MAX_CONNECTION_RATE_PER_IP = 300
#: How long a request body may take to arrive (a slow POST holds a connection slot).
BODY_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 15.0
HANDSHAKE_TIMEOUT = 10.0
#: Set on a handshake's SSL object when it was answered with an ACME challenge context.
CHALLENGE_MARK = "_mailkeep_acme_challenge"
#: The application key under which a listener keeps itself (for :func:`context_of`).
LISTENER_KEY: web.AppKey[WebListener] = web.AppKey("mailkeep.listener")


@dataclass
class WebContext:
    """What a request is answered with: the config snapshot and the server's shared
    parts. ``services`` holds optional providers by name ("metrics", "store", ...), set by
    the daemon; a route whose provider is absent answers 404."""

    config: Config
    tls: Any = None                     # servers.tls.TLSManager, for https
    challenges: Any = None              # web.challenges.ChallengeStore
    services: dict[str, Any] = field(default_factory=dict)
    implicit_tls: bool = False
    listener: str = ""

    def tls_context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name and self.challenges is not None:
            alpn = self.challenges.tls_alpn_context(server_name)
            if alpn is not None:
                return alpn
        return self.tls.context if self.tls is not None else None


def context_of(request: web.Request) -> WebContext:
    """The context current for ``request`` (the listener's, as of now)."""
    return request.app[LISTENER_KEY].context


def client_ip(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return peer[0] if isinstance(peer, tuple) else "local"


def client_in(request: web.Request, networks: tuple[str, ...]) -> bool:
    """True when the client's address is in one of ``networks`` (CIDR strings)."""
    try:
        address = ipaddress.ip_address(client_ip(request))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


def request_host(request: web.Request) -> str:
    """The Host header's name, lower case, without port or trailing dot."""
    host = (request.host or "").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


@web.middleware
async def _security_headers(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # Errors (404, 405, 413, ...) are raised, not returned: they get the headers too.
        _add_security_headers(request, exc)
        raise
    _add_security_headers(request, response)
    return response


def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # No program or version for scanners to match against (aiohttp would add its own).
    response.headers["Server"] = "Mailkeep"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    if context_of(request).implicit_tls:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")


def build_application() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_security_headers])
    for name in ROUTE_MODULES:
        importlib.import_module(name).add_routes(app)
    return app


class _Counted(asyncio.Protocol):
    """Sits between the transport and aiohttp's request handler to count the connection
    against the limits, and to refuse banned or excess clients before any parsing — and,
    on https, before the TLS handshake, so neither costs a refused client any cryptography.
    TLS runs on :mod:`mailkeep.servers.tlsio` (as IMAPS and POP3S do), which keeps no
    large buffer per connection."""

    def __init__(self, listener: WebListener) -> None:
        self.listener = listener
        self.inner: Any = None
        self.ip = ""
        self.counted = False
        self.handshake: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self.listener
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else "local"
        bans = listener.bans
        if bans is not None and bans.is_banned(address) is not None:
            transport.close()
            bans.note_refusal(address, listener.name)
            return
        # Counted per client key, so one IPv6 /64 cannot fill the table with addresses.
        self.ip = client_key(address) or address
        refused = listener.counts.admit(self.ip, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP,
                                        MAX_CONNECTION_RATE_PER_IP)
        if refused is not None:
            log(logger, "connection refused", logging.WARNING, client=self.ip,
                limit=refused, listener=listener.name)
            transport.close()
            return
        self.counted = True
        listener.open.add(self)
        if listener.context.implicit_tls:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
            self.handshake = asyncio.get_running_loop().create_task(self._start_tls(transport))
            return
        self._serve(transport)

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        try:
            secured = await start_tls(transport, self, self.listener._front_context(),
                                      handshake_timeout=HANDSHAKE_TIMEOUT)
        except BaseException as exc:
            # Failed, timed out or cancelled (stop): start_tls has closed the connection
            # (with an alert where there was one), and nobody calls connection_lost.
            self.handshake = None
            self._release()
            if not isinstance(exc, (OSError, ValueError)):  # ssl.SSLError is an OSError
                raise
            log(logger, "TLS handshake failed", logging.DEBUG, client=self.ip,
                listener=self.listener.name, error=str(exc) or type(exc).__name__)
            return
        self.handshake = None
        ssl_object = secured.get_extra_info("ssl_object")
        if getattr(ssl_object, CHALLENGE_MARK, False):
            # An ACME TLS-ALPN-01 handshake (RFC 8737 §3): the validator only looks at the
            # certificate. Nothing is served over the challenge certificate, also not to a
            # browser that happened to ask for that name meanwhile.
            secured.close()
            return
        self._serve(secured)

    def _serve(self, transport: asyncio.BaseTransport) -> None:
        self.inner = self.listener.handler_factory()
        self.inner.connection_made(transport)

    def _release(self) -> None:
        if self.counted:
            self.counted = False
            self.listener.counts.release(self.ip)
            self.listener.open.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self.inner is None:
            return
        self.inner.connection_lost(exc)
        self.inner = None


class WebListener:
    """One HTTP or HTTPS listening socket; the same interface as the mail listeners
    (start, update, stop, enforce_bans) so the daemon runs it alike."""

    def __init__(self, name: str, context: WebContext) -> None:
        self.name = name
        self.context = context
        self.counts = ConnectionCounts()
        self.open: set[_Counted] = set()
        self.bans: BanList | None = None
        self.app = build_application()
        self.app[LISTENER_KEY] = self
        self.runner: web.AppRunner | None = None
        self.server: asyncio.base_events.Server | None = None
        self.handler_factory: Callable[[], Any] = lambda: None
        self._front: ssl.SSLContext | None = None

    def enforce_bans(self, bans: BanList | None, refusal: Callable[[], bytes]) -> None:
        self.bans = bans
        self.counts.bans = bans  # its allow-list is exempt from the connection rate

    def _front_context(self) -> ssl.SSLContext:
        """The context every handshake starts with: it only hands the handshake, at the
        ClientHello, to the context that answers it (:meth:`WebContext.tls_context_for`)."""
        if self._front is not None:
            return self._front
        front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        front.minimum_version = ssl.TLSVersion.TLSv1_2

        def pick(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            context = self.context
            chosen = context.tls_context_for(server_name)
            if chosen is not None:
                sslobj.context = chosen
                if context.tls is None or chosen is not context.tls.context:
                    setattr(sslobj, CHALLENGE_MARK, True)
            return None

        front.sni_callback = pick
        self._front = front
        return front

    async def start(self, sock: socket.socket) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                    keepalive_timeout=KEEPALIVE_TIMEOUT)
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        self.handler_factory = server
        loop = asyncio.get_running_loop()
        # TLS (https) is started by each connection once it is admitted (_Counted).
        self.server = await loop.create_server(lambda: _Counted(self), sock=sock)

    def update(self, context: WebContext) -> None:
        self.context = context

    async def stop(self, grace: float = 10.0) -> None:
        if self.server is not None:
            self.server.close()
        if self.runner is not None:
            # Requests in flight finish (within the grace period); idle keep-alive
            # connections are closed.
            if self.runner.server is not None:
                await self.runner.server.shutdown(grace)
            await self.runner.cleanup()
        for conn in list(self.open):
            if conn.handshake is not None:
                conn.handshake.cancel()  # start_tls aborts the connection
            elif conn.inner is not None and getattr(conn.inner, "transport", None):
                conn.inner.transport.abort()
