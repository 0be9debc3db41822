"""How receivers see the server's addresses: reverse DNS and DNS blocklists.

Reverse DNS: each address must have a PTR record whose name resolves back to the
address (forward-confirmed reverse DNS, the iprev check of RFC 8601 §2.7.3), and that
name should be the hostname, which the server also gives in EHLO. Many receivers refuse
mail from addresses that fail this.

Blocklists (RFC 5782): each address is looked up in the ``[policy.dnsbl]`` blocklists
(the weights below zero are allowlists and are left out), or in a built-in list when
none is configured. A listing is a FAIL with the way off the list.
"""

from __future__ import annotations

import asyncio
import ipaddress

from mailkeep.checker.context import CheckContext
from mailkeep.checker.findings import Finding, Status
from mailkeep.dnsrecords import DEFAULT_TTL
from mailkeep.trust.dnsbl import (
    DnsblChecker,
    DnsblList,
    DnsblSyntaxError,
    parse_postscreen_sites,
    query_name,
)
from mailkeep.trust.iprev import IprevStatus, iprev

#: Blocklists asked when [policy.dnsbl] names none: the ones most receivers use.
BUILTIN_BLOCKLISTS = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")
#: Where each well-known list explains a listing and takes removal requests.
DELIST_PAGES = {
    "zen.spamhaus.org": "https://check.spamhaus.org/",
    "sbl.spamhaus.org": "https://check.spamhaus.org/",
    "xbl.spamhaus.org": "https://check.spamhaus.org/",
    "pbl.spamhaus.org": "https://check.spamhaus.org/",
    "bl.spamcop.net": "https://www.spamcop.net/bl.shtml",
    "b.barracudacentral.org": "https://www.barracudacentral.org/rbl/removal-request",
    "dnsbl.sorbs.net": "http://www.sorbs.net/delisting/",
    "psbl.surriel.com": "https://psbl.org/remove",
}
#: Time budget of the blocklist lookups of one address (seconds).
DNSBL_BUDGET = 10.0
#: Longest listing reason (TXT, RFC 5782 §2.1) quoted.
MAX_REASON = 300


async def check_reverse_dns(ctx: CheckContext, address: str) -> Finding:
    """PTR and forward confirmation of one of the server's addresses."""
    host = ctx.config.hostname
    subject = f"reverse DNS of {address}"
    ptr_line = (f"{ipaddress.ip_address(address).reverse_pointer}. {DEFAULT_TTL} IN PTR "
                f"{host}.")
    owner_fix = (f"ask whoever owns {address} (your hosting provider's control panel) to set "
                 f"its reverse DNS to {host}:\n{ptr_line}")
    result = await iprev(address, ctx.resolver, time_budget=ctx.options.dns_timeout * 3)
    if result.result is IprevStatus.PERMERROR:
        return Finding(Status.FAIL, subject,
                       f"{result.problem}: many receivers refuse mail from addresses without "
                       "reverse DNS", owner_fix, "reverse-dns")
    if result.result is IprevStatus.TEMPERROR:
        return Finding(Status.WARN, subject, f"could not be checked: {result.problem}",
                       f"make sure the reverse zone of {address} answers; its PTR should "
                       f"be:\n{ptr_line}", "reverse-dns")
    if result.result is IprevStatus.FAIL:
        return Finding(Status.FAIL, subject,
                       f"PTR {', '.join(result.ptr_names)}, but {result.problem}: not "
                       "forward-confirmed (RFC 8601 §2.7.3), which receivers treat like no "
                       "reverse DNS",
                       owner_fix + f"\nand make sure {host} has the address {address}",
                       "reverse-dns")
    if host not in result.names:
        return Finding(Status.WARN, subject,
                       f"PTR {', '.join(result.names)} (forward-confirmed), not {host}, the "
                       "name the server gives in EHLO", owner_fix, "reverse-dns")
    return Finding(Status.OK, subject, f"PTR {host}, which resolves back to {address}", "",
                   "reverse-dns")


def blocklists(ctx: CheckContext) -> list[DnsblList]:
    """The blocklists to ask: [policy.dnsbl] sites with positive weights, else the
    built-in ones."""
    try:
        configured = parse_postscreen_sites(", ".join(ctx.config.policy.dnsbl.sites))
    except DnsblSyntaxError:
        configured = []  # the configuration loader refuses this; be safe anyway
    lists = [entry for entry in configured if entry.weight > 0]
    return lists or [DnsblList(zone) for zone in BUILTIN_BLOCKLISTS]


async def _reason(ctx: CheckContext, address: str, zone: str) -> str:
    """The list's TXT text for a listing (RFC 5782 §2.1), or "" when it has none."""
    lookup = await ctx.lookup(query_name(address, zone), "TXT")
    text = " ".join(lookup.texts())
    return text[:MAX_REASON]


async def check_blocklists(ctx: CheckContext, address: str) -> list[Finding]:
    """A FAIL per list that holds ``address``, a WARN per list that could not be asked,
    and one OK naming the lists it is not on."""
    lists = blocklists(ctx)
    checker = DnsblChecker(lists, resolver=ctx.resolver, budget=DNSBL_BUDGET, cache_size=0,
                           skip_non_global=not ctx.config.policy.dnsbl.check_private_addresses)
    result = await checker.score(address)
    subject = f"DNSBL {address}"
    if result.skipped:
        return [Finding(Status.OK, subject,
                        f"{result.skipped} (no public list can hold it)", "", "dnsbl")]
    findings = []
    listed_zones = list(dict.fromkeys(zone for zone, _ in result.listed))
    reasons = await asyncio.gather(*(_reason(ctx, address, zone) for zone in listed_zones))
    for zone, reason in zip(listed_zones, reasons, strict=True):
        codes = ", ".join(answer for z, answer in result.listed if z == zone)
        page = DELIST_PAGES.get(zone)
        where = f"at {page}" if page else f"on the web site of {zone}"
        findings.append(Finding(
            Status.FAIL, f"{subject} in {zone}",
            f"listed ({codes}{'; ' + reason if reason else ''}): receivers using {zone} "
            "refuse mail from this server",
            f"find out why (a compromised account or an open relay sending spam, a dynamic "
            f"address range), fix it, then ask for removal {where}", "dnsbl"))
    for zone, why in result.errors:
        findings.append(Finding(
            Status.WARN, f"{subject} in {zone}", f"could not be checked: {why}",
            "use a resolver of your own (e.g. unbound on this machine, in [delivery] "
            "resolvers or --resolver): many lists refuse queries from public resolvers",
            "dnsbl"))
    problem_zones = set(listed_zones) | {zone for zone, _ in result.errors}
    clean = [entry.zone for entry in lists if entry.zone not in problem_zones]
    if clean:
        findings.append(Finding(Status.OK, subject, f"not listed in {', '.join(clean)}", "",
                                "dnsbl"))
    return findings
