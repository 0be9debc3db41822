"""The MTA-STS policy of our domains (RFC 8461), as sending servers fetch it.

RFC 8461 §3.3: a sender that found a ``_mta-sts`` TXT record for DOMAIN fetches
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``; the answer must be a 200 with media
type text/plain, and redirects are not followed, so the policy is answered directly under
that name on every listener (the http one too: a TLS-terminating proxy in front of
Mailkeep may forward to it). Any other host gets a 404, so the policy of a domain is only
published under the name RFC 8461 gives it.

The text (RFC 8461 §3.2: ``version: STSv1``, ``mode``, one ``mx`` line per MX host,
``max_age``, lines ending in CRLF) is built by :func:`mailkeep.dnsrecords.mta_sts_policy_text`,
the same module that computes the TXT record's ``id`` from it, so the two never disagree.
``[dns] mta_sts_mode = "none"`` still serves a policy, with mode none: that is how a domain
leaves MTA-STS without stranding senders that cached the old one (RFC 8461 §8.3).
"""

from __future__ import annotations

import logging

from aiohttp import web

from mailkeep.config import Config
from mailkeep.dnsrecords import mta_sts_policy_text
from mailkeep.logfmt import log
from mailkeep.web.autoconfig import our_domain

logger = logging.getLogger("mailkeep.http")

#: RFC 8461 §3.3: the policy's well-known path, and the host name prefix it is served on.
POLICY_PATH = "/.well-known/mta-sts.txt"
POLICY_HOST_PREFIX = "mta-sts."


def policy_domain(config: Config, host: str) -> str | None:
    """The domain whose policy host ``host`` is (``mta-sts.DOMAIN``), if it is ours."""
    if not host.startswith(POLICY_HOST_PREFIX):
        return None
    return our_domain(config, host.removeprefix(POLICY_HOST_PREFIX))


async def serve_policy(request: web.Request) -> web.Response:
    from mailkeep.web.server import context_of, request_host

    config = context_of(request).config
    domain = policy_domain(config, request_host(request))
    if domain is None:
        raise web.HTTPNotFound()
    text = mta_sts_policy_text(config)
    log(logger, "mta-sts policy served", logging.DEBUG, domain=domain)
    # RFC 8461 §3.2: the policy is text/plain (its values are ASCII; UTF-8 covers any).
    return web.Response(body=text.encode("utf-8"), content_type="text/plain")


def add_routes(app: web.Application) -> None:
    app.router.add_get(POLICY_PATH, serve_policy)
