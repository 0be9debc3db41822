"""ACME challenge responses, shared by the ACME client and the HTTP(S) listeners.

HTTP-01 (RFC 8555 §8.3): ``GET /.well-known/acme-challenge/TOKEN`` on port 80 answers the
key authorization as ``application/octet-stream``, whatever the Host. TLS-ALPN-01
(RFC 8737 §3): a handshake on port 443 that names a pending domain is answered with the
challenge's self-signed certificate and the ``acme-tls/1`` protocol.
"""

from __future__ import annotations

import re
import ssl
import threading

from aiohttp import web

# RFC 8555 §8.1: a token is base64url, no padding.
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")


class ChallengeStore:
    """Pending challenges: tokens for HTTP-01, TLS contexts for TLS-ALPN-01."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http01: dict[str, str] = {}
        self._alpn: dict[str, ssl.SSLContext] = {}

    def add_http01(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._http01[token] = key_authorization

    def remove_http01(self, token: str) -> None:
        with self._lock:
            self._http01.pop(token, None)

    def http01(self, token: str) -> str | None:
        return self._http01.get(token)

    def add_tls_alpn(self, name: str, context: ssl.SSLContext) -> None:
        with self._lock:
            self._alpn[name.lower().rstrip(".")] = context

    def remove_tls_alpn(self, name: str) -> None:
        with self._lock:
            self._alpn.pop(name.lower().rstrip("."), None)

    def tls_alpn_context(self, name: str) -> ssl.SSLContext | None:
        if not self._alpn:
            return None
        return self._alpn.get(name.lower().rstrip("."))


#: Where :func:`standalone_application` keeps its store (the listeners' applications use
#: their WebContext instead).
STORE_KEY: web.AppKey[ChallengeStore] = web.AppKey("mailkeep.acme_challenges")


async def _http01(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    store = request.app.get(STORE_KEY)
    if store is None:
        from mailkeep.web.server import context_of

        store = context_of(request).challenges
    answer = store.http01(token) if store is not None and TOKEN.fullmatch(token) else None
    if answer is None:
        raise web.HTTPNotFound()
    return web.Response(body=answer.encode("ascii"), content_type="application/octet-stream")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/.well-known/acme-challenge/{token}", _http01)


def standalone_application(store: ChallengeStore) -> web.Application:
    """An application that answers HTTP-01 challenges from ``store`` and nothing else (for
    obtaining certificates before the server runs)."""
    app = web.Application(client_max_size=1024)
    app[STORE_KEY] = store
    add_routes(app)
    return app
