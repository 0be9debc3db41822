"""A small HTTPS server on 127.0.0.1 for tests (MTA-STS policy hosts, and anything else).

It serves the paths a test registers, each with a chosen status, Content-Type and body,
optionally as a redirect, after a delay, or trickled out slowly, over TLS with a
certificate from :class:`tests.support.certs.TestCA`. Every request is recorded, so a
test can assert how often a client fetched (a cache that works makes no request).

It runs as aiohttp.web inside the test's own event loop::

    async with LocalHTTPS(cert) as server:
        server.serve("/.well-known/mta-sts.txt", Reply(body=b"version: STSv1\\n..."))
        ... server.port ...
        assert server.count("/.well-known/mta-sts.txt") == 1
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from aiohttp import web
from tests.support.certs import IssuedCert
from tests.support.procs import free_port

#: How often start() tries another port if the one free_port() chose was taken meanwhile.
BIND_ATTEMPTS = 5


@dataclass
class Reply:
    """What the server answers on one path.

    ``content_type=None`` leaves the type to aiohttp, which labels a non-empty body
    application/octet-stream (what RFC 9110 §8.3 says a recipient may assume anyway). ``redirect_to`` answers ``status``
    (302 unless set) with that Location. ``delay`` waits before the headers; ``chunk_delay``
    sends the body in ``chunk_size`` pieces with a pause between them (a slow server).
    ``chunked`` sends the body without Content-Length (Transfer-Encoding: chunked).
    """

    status: int = 200
    body: bytes = b""
    content_type: str | None = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    redirect_to: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunk_size: int = 16
    chunked: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    host: str  # the Host header without the port
    path: str
    headers: dict[str, str]
    #: The server name the client sent in TLS SNI (None if it sent none).
    sni: str | None


class LocalHTTPS:
    """An aiohttp HTTPS server with per-(host, path) canned replies; see the module doc."""

    def __init__(self, cert: IssuedCert, *, host: str = "127.0.0.1") -> None:
        self.cert = cert
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self._replies: dict[tuple[str | None, str], Reply] = {}
        self._runner: web.AppRunner | None = None
        self._sni: dict[int, str | None] = {}

    # -- what to serve ------------------------------------------------------------------------

    def serve(self, path: str, reply: Reply, *, host: str | None = None) -> None:
        """Answer ``path`` with ``reply``; ``host`` restricts it to one Host header value."""
        self._replies[(host.lower() if host else None, path)] = reply

    def count(self, path: str | None = None, *, host: str | None = None) -> int:
        """How many requests came (for ``path`` and/or ``host`` if given)."""
        return sum(1 for r in self.requests
                   if (path is None or r.path == path) and (host is None or r.host == host))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert.cert_file, self.cert.key_file)

        def remember_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self._sni[id(sslobj)] = name

        context.sni_callback = remember_sni  # type: ignore[assignment]
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Handlers of a client that hung up are cancelled, and stop() waits at most a
        # second for the rest: a "slow server" must not make the test slow to finish.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        last_error: OSError | None = None
        for _ in range(BIND_ATTEMPTS):
            port = free_port(self.host)
            site = web.TCPSite(self._runner, self.host, port, ssl_context=context)
            try:
                await site.start()
            except OSError as exc:  # someone took the port between free_port and bind
                last_error = exc
                continue
            self.port = port
            return
        await self._runner.cleanup()
        raise RuntimeError(f"LocalHTTPS could not bind a port on {self.host}: {last_error}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalHTTPS:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the handler --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].lower()
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        self.requests.append(RecordedRequest(
            request.method, host, request.path, dict(request.headers),
            self._sni.get(id(sslobj)) if sslobj is not None else None))
        reply = self._replies.get((host, request.path)) or self._replies.get((None, request.path))
        if reply is None:
            return web.Response(status=404, text="not found\n")
        if reply.delay:
            await asyncio.sleep(reply.delay)
        headers = dict(reply.headers)
        if reply.content_type is not None:
            headers["Content-Type"] = reply.content_type
        if reply.redirect_to is not None:
            headers["Location"] = reply.redirect_to
            status = reply.status if 300 <= reply.status < 400 else 302
            return web.Response(status=status, body=reply.body, headers=headers)
        if not reply.chunk_delay and not reply.chunked:
            return web.Response(status=reply.status, body=reply.body, headers=headers)
        stream = web.StreamResponse(status=reply.status, headers=headers)
        if reply.chunked:
            stream.enable_chunked_encoding()
        else:
            stream.content_length = len(reply.body)
        await stream.prepare(request)
        for start in range(0, len(reply.body), reply.chunk_size):
            await stream.write(reply.body[start:start + reply.chunk_size])
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        await stream.write_eof()
        return stream
