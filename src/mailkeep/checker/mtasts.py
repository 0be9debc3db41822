"""Is the MTA-STS policy of a domain fetchable, and does it fit its MX records?

The policy is fetched exactly as a sending MTA would (RFC 8461 §3.3): through
:class:`mailkeep.outbound.mta_sts.MtaStsResolver`, the code Mailkeep itself delivers
with, so the ``_mta-sts`` TXT record is read first, ``mta-sts.DOMAIN`` is resolved with
the checker's resolver, the certificate is verified for that name, redirects are not
followed, and the media type and size are checked. Then (§4.1) every MX host of the
domain must match the policy's ``mx`` patterns, or senders that enforce the policy
refuse to deliver to it; and the policy should be the one Mailkeep serves.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import dns.name

from mailkeep.checker.context import CheckContext
from mailkeep.checker.findings import Finding, Status
from mailkeep.dnsrecords import MTA_STS_PATH, mta_sts_policy_text
from mailkeep.outbound.mta_sts import MtaStsResolver, parse_policy

CHECK = "mta-sts"
#: Time limit of the policy fetch (seconds); RFC 8461 §3.3 suggests at most a minute.
FETCH_TIMEOUT = 15.0
#: Shorter max_age than this defeats the point of the policy (§3.2 suggests weeks).
MIN_USEFUL_MAX_AGE = 86400


async def check_policy(ctx: CheckContext, domain: str) -> Finding:
    """One finding on the policy of ``domain``."""
    port = ctx.config.delivery.mta_sts_port
    url = f"https://mta-sts.{domain}{'' if port == 443 else f':{port}'}{MTA_STS_PATH}"
    subject = f"MTA-STS policy {url}"
    ca_file = str(ctx.ca_file) if ctx.ca_file is not None else None
    with tempfile.TemporaryDirectory(prefix="mailkeep-check-") as cache:
        sts = MtaStsResolver(ctx.resolver, Path(cache), https_port=port, ca_file=ca_file,
                             fetch_timeout=min(FETCH_TIMEOUT, ctx.options.total_timeout),
                             refresh_after=None)
        try:
            decision = await sts.policy_for(domain)
        finally:
            await sts.aclose()
    if decision.policy is None:
        if decision.error is None:
            return Finding(Status.WARN, subject,
                           f"not fetched: _mta-sts.{domain} has no MTA-STS record, so senders "
                           "never ask for the policy",
                           f"publish the _mta-sts.{domain} TXT record from 'mailkeep dns "
                           f"records {domain}'", CHECK)
        return Finding(Status.FAIL, subject,
                       f"senders cannot get the policy: {decision.error}",
                       f"make sure mta-sts.{domain} points at this server (CNAME to "
                       f"{ctx.config.hostname}), that an https listener runs on port 443, and "
                       f"that its certificate includes mta-sts.{domain} (with [acme], it does "
                       "by default)", CHECK)
    policy = decision.policy
    mx = await ctx.lookup(domain, "MX")
    hosts = sorted({r.exchange.to_text(omit_final_dot=True).lower() for r in mx.records
                    if r.exchange != dns.name.root})
    unlisted = [host for host in hosts if not policy.matches(host)]
    if unlisted and policy.mode != "none":
        consequence = ("senders refuse to deliver to them" if policy.mode == "enforce"
                       else "senders report failures for them")
        return Finding(Status.FAIL if policy.mode == "enforce" else Status.WARN, subject,
                       f"the MX hosts {', '.join(unlisted)} are not in the policy "
                       f"(mx: {', '.join(policy.mx)}): {consequence} (RFC 8461 §4.1)",
                       "make the MX records and the policy agree: point the MX at "
                       f"{ctx.config.hostname}, and mta-sts.{domain} at this server", CHECK)
    ours = parse_policy(mta_sts_policy_text(ctx.config))
    if policy != ours:
        return Finding(Status.WARN, subject,
                       f"mode {policy.mode}, mx {', '.join(policy.mx) or 'none'}, max_age "
                       f"{policy.max_age}: not the policy Mailkeep serves (mode {ours.mode}, "
                       f"mx {', '.join(ours.mx)}, max_age {ours.max_age})",
                       f"point mta-sts.{domain} at this server (CNAME to "
                       f"{ctx.config.hostname}), so that the policy follows mailkeep.toml",
                       CHECK)
    if policy.mode != "none" and policy.max_age < MIN_USEFUL_MAX_AGE:
        return Finding(Status.WARN, subject,
                       f"max_age {policy.max_age}s: the policy protects little, since "
                       "senders forget it within a day (RFC 8461 §3.2 suggests weeks)",
                       "set [dns] mta_sts_max_age = \"7d\" or more", CHECK)
    if policy.mode == "testing":
        return Finding(Status.WARN, subject,
                       "mode testing: senders report TLS failures but deliver anyway",
                       "once TLS reports show no failures, set [dns] mta_sts_mode = "
                       "\"enforce\" and publish the new id from 'mailkeep dns records'", CHECK)
    return Finding(Status.OK, subject,
                   f"mode {policy.mode}, mx {', '.join(policy.mx)}, max_age {policy.max_age}; "
                   "fetched with a valid certificate, and every MX host is listed", "", CHECK)
