"""One ``mailkeep check`` run: every check, concurrently, within one time limit.

The run is cut into sections (each domain's records, the host's records, reverse DNS,
TLS, blocklists, the relay test) that run at the same time. A section that is still
running when ``total_timeout`` is up is cancelled and reported as a FAIL naming it; one
that raises (a bug) is reported as a FAIL with the error, so the user always gets a
complete report and never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

import dns.asyncresolver

from mailkeep.checker.context import CheckContext, CheckOptions
from mailkeep.checker.findings import Finding, Status
from mailkeep.checker.keys import check_dkim_keys
from mailkeep.checker.mtasts import check_policy
from mailkeep.checker.records import (
    check_domain_exists,
    check_host_resolves,
    check_other_family,
    check_records,
)
from mailkeep.checker.relay import check_open_relay
from mailkeep.checker.reputation import check_blocklists, check_reverse_dns
from mailkeep.checker.tls import check_served_tlsa, judge_probes, probe_all
from mailkeep.config.schema import Config
from mailkeep.dkim.keys import DkimKeyError, DkimKeys
from mailkeep.dnsrecords import (
    DkimPublication,
    dkim_publications,
    domain_records,
    host_records,
    public_addresses,
    served_certificates,
)
from mailkeep.logfmt import log

logger = logging.getLogger("mailkeep.check")


async def _domain(ctx: CheckContext, domain: str, keys: DkimKeys) -> list[Finding]:
    gone = await check_domain_exists(ctx, domain)
    if gone is not None:
        return [gone]
    findings: list[Finding] = []
    publications: list[DkimPublication] = []
    try:
        publications = dkim_publications(keys, domain)
    except DkimKeyError:
        pass  # check_dkim_keys reports it
    records = domain_records(ctx.config, domain, dkim_keys=publications)
    findings += await check_records(ctx, records)
    findings += check_dkim_keys(keys, domain)
    if any(record.kind == "mta-sts" for record in records):
        findings.append(await check_policy(ctx, domain))
    return findings


async def _host(ctx: CheckContext, certificates: Sequence[bytes]) -> list[Finding]:
    findings = []
    if not public_addresses(ctx.config):
        findings.append(await check_host_resolves(ctx))
    findings += await check_records(ctx, host_records(ctx.config, tls_certificates=certificates))
    dns_settings = ctx.config.dns
    if dns_settings.ipv4 or dns_settings.ipv6:
        for rdtype, configured in (("A", dns_settings.ipv4), ("AAAA", dns_settings.ipv6)):
            if not configured and (stray := await check_other_family(ctx, rdtype)):
                findings.append(stray)
    return findings


async def _reverse_dns(ctx: CheckContext) -> list[Finding]:
    addresses, _configured = await ctx.server_addresses()
    return list(await asyncio.gather(*(check_reverse_dns(ctx, a) for a in addresses)))


async def _blocklists(ctx: CheckContext) -> list[Finding]:
    addresses, _configured = await ctx.server_addresses()
    results = await asyncio.gather(*(check_blocklists(ctx, a) for a in addresses))
    return [finding for findings in results for finding in findings]


async def _tls(ctx: CheckContext) -> list[Finding]:
    probes = await probe_all(ctx)
    return judge_probes(probes, ctx.config.hostname) + await check_served_tlsa(ctx, probes)


async def run_checks(config: Config, domains: Sequence[str], options: CheckOptions, *,
                     resolver: dns.asyncresolver.Resolver | None = None) -> list[Finding]:
    """Check ``domains`` (canonical names of configured domains) and the server itself;
    the findings come in a fixed order: each domain, then the host's records, reverse
    DNS, TLS, blocklists and the relay test."""
    ctx = CheckContext(config, options, resolver)
    keys = DkimKeys.for_data_dir(config.data_dir)
    certificates = served_certificates(config)
    sections: list[tuple[str, Awaitable[list[Finding]]]] = [
        (f"checks of {domain}", _domain(ctx, domain, keys)) for domain in domains]
    sections += [
        (f"records of {config.hostname}", _host(ctx, certificates)),
        ("reverse DNS", _reverse_dns(ctx)),
        ("TLS", _tls(ctx)),
        ("DNS blocklists", _blocklists(ctx)),
    ]
    if options.relay_test:
        sections.append(("open relay test", check_open_relay(ctx)))
    tasks = [asyncio.ensure_future(job) for _, job in sections]
    try:
        _done, pending = await asyncio.wait(tasks, timeout=options.total_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await ctx.close()
    findings: list[Finding] = []
    for (name, _job), task in zip(sections, tasks, strict=True):
        if task.cancelled():
            findings.append(Finding(
                Status.FAIL, name, f"did not finish within {options.total_timeout:g}s, so "
                "these checks were not done", "find the slow part (a DNS server that does "
                "not answer, a listener that hangs) and run 'mailkeep check' again", "check"))
        elif task.exception() is not None:
            error = task.exception()
            log(logger, "check failed unexpectedly", logging.ERROR, section=name,
                error=f"{type(error).__name__}: {error}")
            findings.append(Finding(
                Status.FAIL, name, f"the check itself failed: {type(error).__name__}: {error}",
                "please report this as a bug in Mailkeep, with this output", "check"))
        else:
            findings += task.result()
    return findings
