"""iprev: is the connecting client's reverse DNS name confirmed by forward DNS?
(RFC 8601 §2.7.3 and §3, first defined in RFC 5451.)

The check, and what each result means (RFC 8601 §2.7.3):

1. Look up the PTR records of the client's address (``in-addr.arpa`` / ``ip6.arpa``).
   NXDOMAIN or no PTR records: **permerror** (no reverse data; asking again will not
   help). A DNS failure: **temperror**.
2. For each PTR name, at most :data:`IPREV_NAME_LIMIT` of them (RFC 8601 §3 asks for a
   limit, as RFC 7208 §4.6.4 does for SPF's ``ptr``, because the client's owner controls
   how many there are), look up its addresses of the client's family (A for IPv4, AAAA
   for IPv6).
3. A name whose addresses include the client's is *confirmed*: **pass**. No name
   confirmed, but one of the forward lookups failed: **temperror** (a later try could
   pass). Otherwise: **fail**.

An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is the IPv4 client it stands for
(RFC 4291 §2.5.5.2): a dual-stack listener sees IPv4 clients that way.

The forward lookups run concurrently and the whole check is bounded by a time budget
(temperror when exceeded), so a client with slow reverse DNS cannot stall the SMTP
session for longer than that. SPF's ``ptr`` mechanism and ``%{p}`` macro (RFC 7208 §5.5,
§7.3) use the same reverse-then-forward idea with their own error rules; they share
:func:`client_address` and :func:`reverse_name` from here.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

import dns.asyncresolver
import dns.name
import dns.reversename

from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, name_text, query

#: At most this many PTR names are forward-checked (RFC 8601 §3; same figure as
#: RFC 7208 §4.6.4's limit for SPF's ``ptr``). Further names are ignored.
IPREV_NAME_LIMIT = 10
#: Time limit for the whole check, all lookups included (seconds); exceeded: temperror.
IPREV_TIME_BUDGET = 20.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class IprevStatus(StrEnum):
    """RFC 8601 §2.7.3 result values; equal to their names as strings."""

    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class IprevResult:
    """The outcome of :func:`iprev`.

    ``names`` are the PTR names that forward-confirmed the address (non-empty exactly
    when ``result`` is pass), in PTR answer order; ``ptr_names`` are all PTR names that
    were checked (at most the limit). ``problem`` says why the result is not pass, for
    logs and for the comment of an Authentication-Results ``iprev`` entry.
    """

    result: IprevStatus
    names: tuple[str, ...] = ()
    ptr_names: tuple[str, ...] = ()
    ip: str = ""
    problem: str = ""


def client_address(ip: str | IPAddress) -> IPAddress:
    """``ip`` as an address object, an IPv4-mapped IPv6 address as the IPv4 address it
    maps (RFC 4291 §2.5.5.2; RFC 7208 §5 asks the same for SPF). ValueError if ``ip`` is
    not an IP address."""
    address = ip if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) \
        else ipaddress.ip_address(ip.strip())
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:
            # A zone index names a local interface, not a DNS-visible address.
            return ipaddress.IPv6Address(int(address))
    return address


def reverse_name(ip: IPAddress) -> dns.name.Name:
    """The PTR owner name of ``ip``: ``d.c.b.a.in-addr.arpa`` (RFC 1035 §3.5) or the
    nibble form under ``ip6.arpa`` (RFC 3596 §2.5)."""
    return dns.reversename.from_address(str(ip))


async def forward_addresses(resolver: dns.asyncresolver.Resolver, name: dns.name.Name,
                            version: int) -> frozenset[IPAddress]:
    """The A (``version`` 4) or AAAA (6) addresses of ``name``; empty for NXDOMAIN and
    NODATA. Raises DnsTemporaryError when DNS fails."""
    try:
        answer = await query(resolver, name, "A" if version == 4 else "AAAA")
    except DnsNameError:
        return frozenset()
    return frozenset(ipaddress.ip_address(record.address) for record in answer.records)


async def iprev(ip: str | IPAddress, resolver: dns.asyncresolver.Resolver, *,
                name_limit: int = IPREV_NAME_LIMIT,
                time_budget: float = IPREV_TIME_BUDGET) -> IprevResult:
    """Forward-confirmed reverse DNS of ``ip`` (RFC 8601 §2.7.3); see the module text.

    Never raises for anything DNS does; ValueError only if ``ip`` is not an IP address.
    """
    address = client_address(ip)
    shown = str(address)
    try:
        async with asyncio.timeout(time_budget):
            return await _check(address, resolver, name_limit)
    except TimeoutError:
        return IprevResult(IprevStatus.TEMPERROR, ip=shown,
                           problem=f"reverse DNS of {shown} not resolved within "
                                   f"{time_budget:g}s")


async def _check(address: IPAddress, resolver: dns.asyncresolver.Resolver,
                 name_limit: int) -> IprevResult:
    shown = str(address)
    try:
        answer = await query(resolver, reverse_name(address), "PTR")
    except DnsNameError:
        return IprevResult(IprevStatus.PERMERROR, ip=shown,
                           problem=f"no PTR record for {shown} (NXDOMAIN)")
    except DnsTemporaryError as exc:
        return IprevResult(IprevStatus.TEMPERROR, ip=shown, problem=str(exc))
    targets: list[dns.name.Name] = []
    for record in answer.records:
        # A PTR to the root names no host; duplicates would only cost lookups.
        if record.target != dns.name.root and record.target not in targets:
            targets.append(record.target)
    if not targets:
        return IprevResult(IprevStatus.PERMERROR, ip=shown,
                           problem=f"no PTR record for {shown}")
    targets = targets[:max(name_limit, 0)]
    outcomes = await asyncio.gather(
        *(_confirms(resolver, target, address) for target in targets))
    names = tuple(name_text(t) for t in targets)
    confirmed = tuple(name for name, outcome in zip(names, outcomes, strict=True)
                      if outcome is True)
    if confirmed:
        return IprevResult(IprevStatus.PASS, names=confirmed, ptr_names=names, ip=shown)
    failures = [outcome for outcome in outcomes if isinstance(outcome, str)]
    if failures:
        return IprevResult(IprevStatus.TEMPERROR, ptr_names=names, ip=shown,
                           problem="; ".join(failures))
    return IprevResult(IprevStatus.FAIL, ptr_names=names, ip=shown,
                       problem=f"{', '.join(names)} do not resolve to {shown}"
                       if len(names) > 1 else f"{names[0]} does not resolve to {shown}")


async def _confirms(resolver: dns.asyncresolver.Resolver, name: dns.name.Name,
                    address: IPAddress) -> bool | str:
    """True if ``name`` resolves to ``address``, False if not, the error text if the
    forward lookup failed temporarily."""
    try:
        return address in await forward_addresses(resolver, name, address.version)
    except DnsTemporaryError as exc:
        return str(exc)
