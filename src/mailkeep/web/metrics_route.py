"""``GET /metrics``: the server's Prometheus metrics (``mailkeep.metrics``) on its HTTP(S)
listeners.

Answers 404 when ``[metrics] enabled = false`` (or the server has no metrics), 403 to a
client outside ``[metrics] allow`` (loopback by default: the numbers say how busy the
server is and who fails to log in, nothing for the Internet), else the text exposition
format 0.0.4, compressed when the scraper accepts gzip.
"""

from __future__ import annotations

from aiohttp import web

from mailkeep.metrics import CONTENT_TYPE
from mailkeep.web.server import client_in, context_of

PATH = "/metrics"


async def _metrics(request: web.Request) -> web.StreamResponse:
    context = context_of(request)
    provider = context.services.get("metrics")
    if not context.config.metrics.enabled or provider is None:
        raise web.HTTPNotFound()
    if not client_in(request, context.config.metrics.allow):
        raise web.HTTPForbidden(text="metrics are not available to this address "
                                     "([metrics] allow)\n")
    text = await provider.exposition()
    response = web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})
    response.enable_compression()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, _metrics)
