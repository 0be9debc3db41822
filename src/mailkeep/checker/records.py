"""Are the records of :mod:`mailkeep.dnsrecords` published, and do they do their job?

Each expected record is looked up and judged by what it is for, not only by its text:
an SPF record that allows the server's addresses through ``ip4:`` or ``a`` is as good as
``v=spf1 mx -all`` (it is evaluated with the real SPF code, RFC 7208 §4), a DMARC policy
stricter than the configured one is fine, a CNAME or the right addresses both do for
``mta-sts.DOMAIN``. What is wrong comes with the record to publish instead.

A missing record that mail needs (``DnsRecord.required``) is a FAIL; a missing
recommended one a WARN. A lookup that fails (timeout, SERVFAIL, REFUSED) is reported as
such, with the record it was looking for.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Sequence

import dns.name

from mailkeep.checker.context import CheckContext, Lookup
from mailkeep.checker.findings import Finding, Status, worst
from mailkeep.config.names import display_domain
from mailkeep.dnsrecords import DnsRecord, public_addresses
from mailkeep.outbound.mta_sts import MtaStsSyntaxError, select_sts_record
from mailkeep.trust import dmarc
from mailkeep.trust.dkim_verify import KeyRecordError, parse_key_record
from mailkeep.trust.spf import SpfStatus, check_host, is_spf_record

CHECK = "dns"
#: Addresses from the documentation ranges (RFC 5737, RFC 3849): SPF must not pass them.
OUTSIDERS = ("192.0.2.1", "198.51.100.1", "2001:db8::1")


def _subject(record: DnsRecord) -> str:
    return f"{record.name} {record.type}"


def _add(*records: DnsRecord) -> str:
    return "add:\n" + "\n".join(r.zone_line() for r in records)


def _replace(record: DnsRecord, what: str | None = None) -> str:
    what = what or f"the {record.type} record"
    return f"replace {what} of {record.name} with:\n{record.zone_line()}"


def _absent(record: DnsRecord, lookup: Lookup) -> Finding:
    status = Status.FAIL if record.required else Status.WARN
    if lookup.error is not None:
        return Finding(status, _subject(record), f"could not be checked: {lookup.error}",
                       f"make sure the name servers of {record.name} answer; the record "
                       f"should be:\n{record.zone_line()}", CHECK)
    return Finding(status, _subject(record), f"missing: {lookup.describe_absence()}",
                   _add(record), CHECK)


def _absent_all(records: Sequence[DnsRecord], lookup: Lookup) -> Finding:
    """:func:`_absent` for records of one name and type, the fix adding all of them."""
    finding = _absent(records[0], lookup)
    return Finding(finding.status, finding.subject, finding.message, _add(*records), CHECK)


def _ok(record: DnsRecord, message: str) -> Finding:
    return Finding(Status.OK, _subject(record), message, "", CHECK)


def _bad(record: DnsRecord) -> Status:
    return Status.FAIL if record.required else Status.WARN


def _host(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


# -- the domain as a whole -----------------------------------------------------------------

async def check_domain_exists(ctx: CheckContext, domain: str) -> Finding | None:
    """One clear FAIL when ``domain`` has no DNS at all, or its name servers do not
    answer (then checking each record would only repeat it); None when it resolves."""
    lookup = await ctx.lookup(domain, "SOA")
    shown = display_domain(domain)
    if lookup.nxdomain:
        return Finding(Status.FAIL, f"{domain} DNS",
                       f"{shown} has no DNS: NXDOMAIN, the name does not exist",
                       f"register {shown} (or check its spelling in mailkeep.toml) and "
                       "delegate it to name servers, then publish the records of "
                       f"'mailkeep dns records {domain}'", CHECK)
    if lookup.error is not None:
        return Finding(Status.FAIL, f"{domain} DNS",
                       f"the DNS of {shown} does not answer: {lookup.error}",
                       f"make sure the name servers of {shown} are up and answer for it "
                       "(its delegation at the registrar, DNSSEC signatures that have not "
                       "expired); then run 'mailkeep check' again", CHECK)
    return None


# -- one judge per kind of record -----------------------------------------------------------

async def _mx(ctx: CheckContext, record: DnsRecord) -> Finding:
    lookup = await ctx.lookup(record.name, "MX")
    if not lookup.records:
        return _absent(record, lookup)
    host = ctx.config.hostname
    exchanges = [(r.preference, r.exchange) for r in lookup.records]
    if all(exchange == dns.name.root for _, exchange in exchanges):
        # RFC 7505 §3: a null MX says the domain accepts no mail at all.
        return Finding(Status.FAIL, _subject(record),
                       "null MX (\"0 .\"): the domain says it accepts no mail (RFC 7505)",
                       _replace(record, "the MX records"), CHECK)
    names = sorted({_host(exchange) for _, exchange in exchanges if exchange != dns.name.root})
    if host not in names:
        return Finding(Status.FAIL, _subject(record),
                       f"mail for {record.name} goes to {', '.join(names)}, not to {host}",
                       _replace(record, "the MX records"), CHECK)
    others = [name for name in names if name != host]
    if others:
        return Finding(Status.WARN, _subject(record),
                       f"besides {host}, mail also goes to {', '.join(others)}: it reaches "
                       "Mailkeep only if that host forwards it",
                       f"remove the MX records of {record.name} that name "
                       f"{', '.join(others)}, unless they are backup servers that forward "
                       f"to {host}", CHECK)
    return _ok(record, f"mail for {record.name} goes to {host}")


async def _addresses(ctx: CheckContext, records: Sequence[DnsRecord]) -> Finding:
    first = records[0]
    lookup = await ctx.lookup(first.name, first.type)
    subject = _subject(first)
    expected = {ipaddress.ip_address(r.value) for r in records}
    if lookup.error is not None:
        return Finding(Status.FAIL, subject, f"could not be checked: {lookup.error}",
                       f"make sure the name servers of {first.name} answer; the records "
                       "should be:\n" + "\n".join(r.zone_line() for r in records), CHECK)
    published = {ipaddress.ip_address(r.address) for r in lookup.records}
    missing = [r for r in records if ipaddress.ip_address(r.value) not in published]
    extra = sorted(published - expected)
    shown = ", ".join(map(str, sorted(published))) or "none"
    if missing:
        fix = _add(*missing)
        if extra:
            fix += "\nand remove " + ", ".join(f"{first.name} {first.type} {a}" for a in extra)
        return Finding(Status.FAIL, subject,
                       f"{first.name} has {first.type} {shown}; senders cannot reach this "
                       f"server at {', '.join(r.value for r in missing)}", fix, CHECK)
    if extra:
        key = "ipv4" if first.type == "A" else "ipv6"
        return Finding(Status.WARN, subject,
                       f"also {', '.join(map(str, extra))}, which is not one of this server's "
                       f"addresses ([dns] {key}): senders may connect there",
                       "remove " + ", ".join(f"{first.name} {first.type} {a}" for a in extra)
                       + f", or add it to [dns] {key} if it is this server", CHECK)
    return Finding(Status.OK, subject, f"{first.name} has {first.type} {shown}", "", CHECK)


async def check_host_resolves(ctx: CheckContext) -> Finding:
    """When ``[dns]`` names no address: does the hostname resolve at all?"""
    host = ctx.config.hostname
    addresses = await ctx.host_addresses()
    problems = [lookup.error for lookup in
                [await ctx.lookup(host, "A"), await ctx.lookup(host, "AAAA")]
                if lookup.error is not None]
    if not addresses:
        detail = f" ({'; '.join(problems)})" if problems else ""
        return Finding(Status.FAIL, f"{host} A/AAAA",
                       f"{host} has no address{detail}: senders cannot reach the server",
                       f"add {host}. 3600 IN A <this server's public IPv4 address> (and AAAA "
                       "for IPv6), and set [dns] ipv4 / ipv6 to the same addresses", CHECK)
    return Finding(Status.WARN, f"{host} A/AAAA",
                   f"{host} resolves to {', '.join(addresses)}; [dns] ipv4 and ipv6 are not "
                   "set, so whether that is this server cannot be checked",
                   f"set [dns] ipv4 (and ipv6) in mailkeep.toml to this server's public "
                   f"addresses, e.g. ipv4 = [\"{addresses[0]}\"]", CHECK)


async def check_other_family(ctx: CheckContext, rdtype: str) -> Finding | None:
    """When the server has no address of one family (no AAAA expected, say), the
    hostname must not have one either: senders of that family would connect to some
    other machine (a hosting provider's default AAAA, typically)."""
    host = ctx.config.hostname
    lookup = await ctx.lookup(host, rdtype)
    if not lookup.records:
        return None
    found = ", ".join(r.address for r in lookup.records)
    key = "ipv6" if rdtype == "AAAA" else "ipv4"
    return Finding(Status.WARN, f"{host} {rdtype}",
                   f"{host} has {rdtype} {found}, but [dns] {key} is empty: senders that use "
                   f"{'IPv6' if rdtype == 'AAAA' else 'IPv4'} connect there",
                   f"remove {host} {rdtype} {found}, or add it to [dns] {key} if it is this "
                   "server", CHECK)


async def _spf(ctx: CheckContext, record: DnsRecord) -> Finding:
    lookup = await ctx.lookup(record.name, "TXT")
    policies = [text for text in lookup.texts() if is_spf_record(text)]
    if not policies:
        return _absent(record, lookup)
    bad = _bad(record)
    if len(policies) > 1:
        # RFC 7208 §4.5: more than one record is a permerror for every receiver.
        return Finding(bad, _subject(record),
                       f"{len(policies)} SPF records: receivers treat that as an error "
                       "(RFC 7208 §4.5)", _replace(record, "all SPF records"), CHECK)
    published = policies[0]
    addresses, _configured = await ctx.server_addresses()
    if not addresses:
        return Finding(Status.WARN, _subject(record),
                       f"{published!r}: no address of this server is known, so whether it "
                       "allows the server cannot be checked",
                       "set [dns] ipv4 / ipv6 in mailkeep.toml", CHECK)
    host = ctx.config.hostname

    async def evaluate(ip: str) -> SpfStatus:
        result = await check_host(ip, record.name, f"postmaster@{record.name}", helo=host,
                                  resolver=ctx.resolver, receiver=host)
        return result.result

    results = await asyncio.gather(*(evaluate(ip) for ip in addresses))
    failing = [(ip, result) for ip, result in zip(addresses, results, strict=True)
               if result is not SpfStatus.PASS]
    if failing:
        hard = any(result in (SpfStatus.FAIL, SpfStatus.PERMERROR, SpfStatus.NONE)
                   for _, result in failing)
        status = bad if hard else Status.WARN
        details = ", ".join(f"{ip}: {result}" for ip, result in failing)
        return Finding(status, _subject(record),
                       f"{published!r} does not allow this server ({details}); mail from it "
                       "fails SPF", _replace(record, "the SPF record"), CHECK)
    outsider = next(ip for ip in OUTSIDERS if ip not in addresses)
    if await evaluate(outsider) is SpfStatus.PASS:
        return Finding(Status.WARN, _subject(record),
                       f"{published!r} allows any address (it passes for {outsider} too): "
                       "anyone can send as this domain", _replace(record, "the SPF record"),
                       CHECK)
    return _ok(record, f"{published!r} allows {', '.join(addresses)}")


async def _dkim(ctx: CheckContext, record: DnsRecord) -> Finding:
    lookup = await ctx.lookup(record.name, "TXT")
    if not lookup.records:
        return _absent(record, lookup)
    expected = parse_key_record(record.value.encode("ascii"))
    selector = record.name.partition("._domainkey.")[0]
    bad = _bad(record)
    keys, problems = [], []
    for text in lookup.texts():
        try:
            keys.append(parse_key_record(text.encode("utf-8")))
        except KeyRecordError as exc:
            problems.append(str(exc))
    if not keys:
        return Finding(bad, _subject(record),
                       f"no usable DKIM key record: {'; '.join(problems)}; every signature "
                       "of selector " + selector + " fails", _replace(record), CHECK)
    if len(lookup.records) > 1:
        return Finding(bad, _subject(record),
                       f"{len(lookup.records)} TXT records: verifiers may pick any of them "
                       "(RFC 6376 §3.6.2.2)", _replace(record, "all TXT records"), CHECK)
    key = keys[0]
    if key.revoked:
        return Finding(bad, _subject(record),
                       f"the key of selector {selector} is revoked (empty p=)",
                       _replace(record), CHECK)
    if key.key_type != expected.key_type or key.public_key != expected.public_key:
        return Finding(bad, _subject(record),
                       f"the published key is not the one Mailkeep signs with for selector "
                       f"{selector}: every signature fails (RFC 6376 §6.1.2)",
                       _replace(record), CHECK)
    if key.testing and not expected.testing:
        return Finding(Status.WARN, _subject(record),
                       "published with t=y (testing): receivers treat failing mail like "
                       "unsigned mail (RFC 6376 §3.6.1)",
                       "when testing is over, " + _replace(record), CHECK)
    return _ok(record, f"matches the {expected.key_type} key of selector {selector}")


async def _dmarc(ctx: CheckContext, record: DnsRecord) -> Finding:
    lookup = await ctx.lookup(record.name, "TXT")
    policies = [text for text in lookup.texts() if dmarc.is_dmarc_record(text)]
    if not policies:
        return _absent(record, lookup)
    if len(policies) > 1:
        # RFC 7489 §6.6.3 step 5: several records end policy discovery.
        return Finding(Status.FAIL, _subject(record),
                       f"{len(policies)} DMARC records: receivers apply none of them "
                       "(RFC 7489 §6.6.3)", _replace(record, "all DMARC records"), CHECK)
    parsed = dmarc.parse_record(policies[0])
    if not parsed.usable or parsed.policy is None:
        return Finding(Status.FAIL, _subject(record),
                       f"{policies[0]!r} cannot be used: {parsed.problem}",
                       _replace(record), CHECK)
    issues: list[tuple[Status, str]] = []
    order = list(dmarc.Policy)
    wanted = dmarc.Policy(ctx.config.dns.dmarc_policy)
    if order.index(parsed.policy) < order.index(wanted):
        issues.append((Status.WARN, f"p={parsed.policy} is weaker than the configured "
                                    f"p={wanted}: mail that fails DMARC is still delivered"))
    if not parsed.rua:
        issues.append((Status.WARN, "no rua=: nobody receives the daily aggregate reports"))
    if parsed.pct < 100:
        issues.append((Status.WARN, f"pct={parsed.pct}: the policy applies to "
                                    f"{parsed.pct}% of failing mail only"))
    if issues:
        return Finding(worst(s for s, _ in issues), _subject(record),
                       f"{policies[0]!r}: " + "; ".join(text for _, text in issues),
                       _replace(record), CHECK)
    reports = ", ".join(uri.uri for uri in parsed.rua)
    return _ok(record, f"p={parsed.policy}, reports to {reports}")


async def _dmarc_authorization(ctx: CheckContext, record: DnsRecord) -> Finding:
    lookup = await ctx.lookup(record.name, "TXT")
    if not any(dmarc.is_dmarc_record(text) for text in lookup.texts()):
        return _absent(record, lookup)
    return _ok(record, "reports for this domain may be sent there (RFC 7489 §7.1)")


async def _mta_sts(ctx: CheckContext, record: DnsRecord) -> Finding:
    lookup = await ctx.lookup(record.name, "TXT")
    try:
        found = select_sts_record(lookup.texts())
    except MtaStsSyntaxError as exc:
        return Finding(Status.FAIL, _subject(record),
                       f"unusable MTA-STS record ({exc}): senders ignore MTA-STS",
                       _replace(record, "the v=STSv1 TXT record"), CHECK)
    if found is None:
        return _absent(record, lookup)
    expected_id = record.value.rpartition("id=")[2]
    if found.id != expected_id:
        return Finding(Status.WARN, _subject(record),
                       f"id={found.id} is not the id of the current policy ({expected_id}): "
                       "senders that have the old policy keep using it (RFC 8461 §3.1)",
                       _replace(record), CHECK)
    return _ok(record, f"id={found.id} matches the policy Mailkeep serves")


async def _alias_of_host(ctx: CheckContext, record: DnsRecord) -> Finding:
    """``mta-sts.D`` and ``autoconfig.D``: a CNAME to the host, or its addresses."""
    host = ctx.config.hostname
    lookups = [await ctx.lookup(record.name, "A"), await ctx.lookup(record.name, "AAAA")]
    published = {r.address for lookup in lookups for r in lookup.records}
    if not published:
        failed = next((lookup for lookup in lookups if lookup.error), lookups[0])
        return _absent(record, failed)
    if any(lookup.canonical == host for lookup in lookups if lookup.records):
        return _ok(record, f"an alias of {host}")
    ours = set(await ctx.host_addresses()) | set(public_addresses(ctx.config))
    if published <= ours:
        return _ok(record, f"resolves to this server ({', '.join(sorted(published))})")
    return Finding(Status.WARN, _subject(record),
                   f"{record.name} resolves to {', '.join(sorted(published))}, not to "
                   f"{host}: what Mailkeep serves there is not what clients get",
                   _replace(record, "the A, AAAA or CNAME records"), CHECK)


async def _tlsrpt(ctx: CheckContext, record: DnsRecord) -> Finding:
    lookup = await ctx.lookup(record.name, "TXT")
    reports = [text for text in lookup.texts() if text.startswith("v=TLSRPTv1")]
    if not reports:
        return _absent(record, lookup)
    if len(reports) > 1:
        # RFC 8460 §3: more than one record means no reporting at all.
        return Finding(Status.WARN, _subject(record),
                       f"{len(reports)} TLSRPT records: senders send no reports (RFC 8460 §3)",
                       _replace(record, "all v=TLSRPTv1 records"), CHECK)
    fields = dict(part.strip().partition("=")[::2] for part in reports[0].split(";"))
    rua = fields.get("rua", "")
    if not any(uri.strip().startswith(("mailto:", "https:")) for uri in rua.split(",")):
        return Finding(Status.WARN, _subject(record),
                       f"{reports[0]!r} has no usable rua= (mailto: or https:, RFC 8460 §3)",
                       _replace(record), CHECK)
    return _ok(record, f"reports go to {rua}")


def _tlsa_text(rdata: object) -> str:
    return (f"{rdata.usage} {rdata.selector} {rdata.mtype} "  # type: ignore[attr-defined]
            f"{bytes(rdata.cert).hex()}")  # type: ignore[attr-defined]


async def _tlsa(ctx: CheckContext, records: Sequence[DnsRecord]) -> Finding:
    first = records[0]
    lookup = await ctx.lookup(first.name, "TLSA")
    if not lookup.records:
        return _absent_all(records, lookup)
    published = {_tlsa_text(r) for r in lookup.records}
    missing = [r for r in records if r.value.lower() not in published]
    if missing:
        status = Status.FAIL if lookup.secure else Status.WARN
        return Finding(status, _subject(first),
                       "no TLSA record matches the key in the certificate file; once senders "
                       "see that key, DANE makes them refuse to deliver (RFC 7672 §2.2)",
                       _add(*missing) + "\nand remove the old records once the new key is "
                       "served", CHECK)
    if not lookup.secure:
        return Finding(Status.WARN, _subject(first),
                       "matches the certificate, but the answer is not DNSSEC-signed: senders "
                       "ignore TLSA records without DNSSEC (RFC 7672 §2.2)",
                       f"sign the zone of {ctx.config.hostname} with DNSSEC (ask your DNS "
                       "provider), or remove the TLSA records", CHECK)
    return Finding(Status.OK, _subject(first),
                   "matches the certificate file's key, DNSSEC-signed", "", CHECK)


async def _srv(ctx: CheckContext, record: DnsRecord) -> Finding:
    lookup = await ctx.lookup(record.name, "SRV")
    if not lookup.records:
        return _absent(record, lookup)
    _priority, _weight, port, target = record.value.split()
    if target == ".":
        if all(r.target == dns.name.root for r in lookup.records):
            return _ok(record, "says the service is not offered, as intended")
        return Finding(Status.WARN, _subject(record),
                       "points clients at a service Mailkeep does not offer there",
                       _replace(record, "the SRV records"), CHECK)
    wanted_target = target.rstrip(".")
    if any(_host(r.target) == wanted_target and r.port == int(port) for r in lookup.records):
        return _ok(record, f"clients connect to {wanted_target} port {port}")
    shown = ", ".join(f"{_host(r.target) or '.'}:{r.port}" for r in lookup.records)
    return Finding(Status.WARN, _subject(record),
                   f"points clients at {shown}, not at {wanted_target}:{port}",
                   _replace(record, "the SRV records"), CHECK)


async def _caa(ctx: CheckContext, records: Sequence[DnsRecord]) -> Finding:
    first = records[0]
    lookup = await ctx.lookup(first.name, "CAA")
    if not lookup.records:
        return _absent_all(records, lookup)
    issuers = {bytes(r.value).decode("ascii", "replace").partition(";")[0].strip().lower()
               for r in lookup.records if r.tag.lower() == b"issue"}
    missing = [r for r in records if r.value.split('"')[1] not in issuers]
    if missing:
        # With ACME on, a CAA record that leaves the CA out stops every renewal.
        status = Status.FAIL if ctx.config.acme.enabled else Status.WARN
        names = ", ".join(r.value.split('"')[1] for r in missing)
        return Finding(status, _subject(first),
                       f"CAA allows {', '.join(sorted(issuers)) or 'no CA'}, not {names}: "
                       f"{names} refuses to issue certificates (RFC 8659 §4)",
                       _add(*missing), CHECK)
    return _ok(first, f"only {', '.join(sorted(issuers))} may issue certificates")


Judge = Callable[[CheckContext, DnsRecord], Awaitable[Finding]]
GroupJudge = Callable[[CheckContext, Sequence[DnsRecord]], Awaitable[Finding]]

_JUDGES: dict[str, Judge] = {
    "mx": _mx, "spf": _spf, "spf-host": _spf, "dkim": _dkim, "dmarc": _dmarc,
    "dmarc-authorization": _dmarc_authorization, "mta-sts": _mta_sts,
    "mta-sts-host": _alias_of_host, "autoconfig": _alias_of_host, "tlsrpt": _tlsrpt,
    "srv": _srv, "autodiscover": _srv,
}
#: Kinds judged as a set: all records of one name and type together.
_GROUP_JUDGES: dict[str, GroupJudge] = {"address": _addresses, "tlsa": _tlsa, "caa": _caa}
#: PTR records are checked with forward confirmation, in mailkeep.checker.reputation.
SKIPPED_KINDS = frozenset({"ptr"})


async def check_records(ctx: CheckContext, records: Sequence[DnsRecord]) -> list[Finding]:
    """A finding for each record (one per name and type for addresses, TLSA and CAA), in
    the order of ``records``; the lookups run concurrently."""
    jobs: list[Awaitable[Finding]] = []
    grouped: dict[tuple[str, str, str], list[DnsRecord]] = {}
    for record in records:
        if record.kind in _GROUP_JUDGES:
            key = (record.kind, record.name, record.type)
            if key not in grouped:
                grouped[key] = []
                jobs.append(_GROUP_JUDGES[record.kind](ctx, grouped[key]))
            grouped[key].append(record)
        elif record.kind in _JUDGES:
            jobs.append(_JUDGES[record.kind](ctx, record))
        elif record.kind not in SKIPPED_KINDS:
            raise ValueError(f"no check for records of kind {record.kind!r}")
    return list(await asyncio.gather(*jobs))
