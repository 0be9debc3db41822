"""Where to deliver mail for a domain: MX lookup (RFC 5321 §5.1) with null MX (RFC 7505).

:func:`resolve_mx` turns a recipient domain into an ordered list of hosts, each with its
addresses, and says whether the answers were DNSSEC-validated (which decides whether DANE
may apply to a host, RFC 7672 §2.2). The scheduler tries the hosts in order and each
host's addresses in order.

The rules, with the section they come from:

- MX records sorted by preference, lowest first; hosts of equal preference in random
  order, to spread the load (RFC 5321 §5.1).
- No MX records: the domain itself is the one host, with preference 0 ("implicit MX",
  RFC 5321 §5.1).
- A single MX record with the root name "." is a null MX: the domain accepts no mail, and
  the message bounces at once with 5.1.10 (RFC 7505 §3, §4.1). A "." among other MX
  records is ignored: it names no host.
- Our own host among the MX hosts: it and all hosts of the same or higher preference value
  are dropped, or mail would go round in a loop (RFC 5321 §5.1).
- MX hosts whose name does not exist or has no addresses are skipped; a host whose lookup
  failed temporarily is kept (with ``error`` set) so that the message is retried rather
  than bounced while its best MX is briefly unresolvable.
- An address literal ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3) is
  delivered to directly, without DNS.

Errors: :class:`~mailkeep.outbound.dns.DnsNameError` (permanent; its ``enhanced_code`` is
5.1.2 for a domain that does not exist, 5.4.4 when no host has an address, 5.4.6 for a
loop) and :class:`~mailkeep.outbound.dns.DnsTemporaryError` (retry later).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.name

from mailkeep.logfmt import log
from mailkeep.outbound.dns import (
    DnsError,
    DnsNameError,
    DnsTemporaryError,
    name_text,
    parse_name,
    query,
)

logger = logging.getLogger("mailkeep.outbound")

#: Most MX hosts looked up and tried for one domain (the best ones by preference).
DEFAULT_MAX_HOSTS = 10
#: Most addresses kept per host, over all address families.
DEFAULT_MAX_ADDRESSES = 8
#: Address families in the order they are tried on each host.
DEFAULT_FAMILIES = ("ipv6", "ipv4")

_FAMILY_RDTYPE = {"ipv6": "AAAA", "ipv4": "A"}


class MxLoopError(DnsNameError):
    """This server is the best MX for the domain: delivering would send mail to itself."""

    enhanced_code = "5.4.6"  # RFC 3463: routing loop detected


@dataclass(frozen=True)
class MxHost:
    """One host to try, with its addresses in the order to try them.

    ``secure``: the MX answer naming this host and all of its address answers were
    DNSSEC-validated (RFC 7672 §2.2.1, §2.2.2), so its TLSA records may be looked up.
    ``expanded_name``: where ``name`` led when it was an alias (CNAME); the TLSA base
    domain is tried there first (RFC 7672 §2.2.3). ``error``: an address lookup failed
    temporarily (``addresses`` then holds what the other family gave, maybe nothing).
    """

    name: str
    preference: int
    addresses: tuple[str, ...]
    secure: bool
    expanded_name: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class MxResult:
    """The hosts for ``domain``, best first.

    ``null_mx``: the domain accepts no mail (RFC 7505); ``hosts`` is empty. ``implicit``:
    no MX records, the domain's own addresses are used. ``secure``: the MX answer (or the
    validated denial of MX records, for an implicit MX) was DNSSEC-validated.
    ``expanded_domain``: the domain's CNAME target, when it is an alias. ``skipped``: MX
    hosts left out, with the reason, for the log.
    """

    domain: str
    hosts: tuple[MxHost, ...]
    null_mx: bool
    implicit: bool
    secure: bool
    ip_literal: bool = False
    expanded_domain: str | None = None
    skipped: tuple[str, ...] = ()


def order_mx(records: Iterable[tuple[int, str]], rng: random.Random | None = None
             ) -> list[tuple[int, str]]:
    """Sort (preference, host) pairs per RFC 5321 §5.1: ascending preference, random order
    among equal preferences. A host listed twice keeps its lowest preference."""
    best: dict[str, int] = {}
    for preference, host in records:
        key = host.lower()
        if key not in best or preference < best[key]:
            best[key] = preference
    chooser = rng or random.SystemRandom()
    by_preference: dict[int, list[str]] = {}
    for host, preference in best.items():
        by_preference.setdefault(preference, []).append(host)
    ordered: list[tuple[int, str]] = []
    for preference in sorted(by_preference):
        hosts = sorted(by_preference[preference])  # a stable start, so rng alone decides
        chooser.shuffle(hosts)
        ordered += [(preference, h) for h in hosts]
    return ordered


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    result = tuple(families)
    if not result:
        raise ValueError("families: give at least one of 'ipv6', 'ipv4'")
    for family in result:
        if family not in _FAMILY_RDTYPE:
            raise ValueError(f"families: unknown address family {family!r} "
                             "(expected 'ipv6' or 'ipv4')")
    if len(set(result)) != len(result):
        raise ValueError(f"families: {result} lists a family twice")
    return result


def _address_literal(domain: str, families: Sequence[str]) -> MxResult:
    """RFC 5321 §4.1.3: "[" IPv4-address "]" or "[IPv6:" IPv6-address "]"."""
    inner = domain[1:-1] if domain.endswith("]") else None
    if inner is None:
        raise DnsNameError(f"invalid address literal {domain!r}: no closing ']'", name=domain)
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if inner[:5].lower() == "ipv6:":
            address = ipaddress.IPv6Address(inner[5:])
            family = "ipv6"
        else:
            address = ipaddress.IPv4Address(inner)
            family = "ipv4"
    except ValueError:
        raise DnsNameError(f"invalid address literal {domain!r}", name=domain) from None
    if family not in families:
        raise DnsNameError(f"cannot deliver to {domain}: {family} delivery is disabled",
                           name=domain, enhanced_code="5.4.4")
    host = MxHost(name=domain, preference=0, addresses=(str(address),), secure=False)
    return MxResult(domain=domain, hosts=(host,), null_mx=False, implicit=True, secure=False,
                    ip_literal=True)


async def _host_addresses(resolver: dns.asyncresolver.Resolver, name: dns.name.Name,
                          families: Sequence[str], max_addresses: int,
                          rng: random.Random | None
                          ) -> tuple[tuple[str, ...], bool, str | None, str | None, bool]:
    """(addresses, all answers secure, expanded name, temporary error, name exists)."""
    results = await asyncio.gather(*(query(resolver, name, _FAMILY_RDTYPE[f]) for f in families),
                                   return_exceptions=True)
    addresses: list[str] = []
    secure = True
    expanded: str | None = None
    errors: list[str] = []
    exists = True
    chooser = rng or random.SystemRandom()
    for result in results:
        if isinstance(result, DnsNameError):
            exists = False
            secure = secure and result.secure
            continue
        if isinstance(result, DnsError):
            errors.append(str(result))
            secure = False
            continue
        if isinstance(result, BaseException):
            raise result
        secure = secure and result.secure
        if result.aliased:
            expanded = result.name
        found = [str(r.address) for r in result.records]
        # Load spreading among a host's addresses of one family, as among equal MX
        # preferences (RFC 5321 §5.1); the family order stays as configured.
        found.sort()
        chooser.shuffle(found)
        addresses += found[: max(0, max_addresses - len(addresses))]
    error = "; ".join(errors) if errors else None
    return tuple(addresses), secure and not errors, expanded, error, exists


async def resolve_mx(resolver: dns.asyncresolver.Resolver, domain: str, *,
                     families: Sequence[str] = DEFAULT_FAMILIES,
                     max_hosts: int = DEFAULT_MAX_HOSTS,
                     max_addresses: int = DEFAULT_MAX_ADDRESSES,
                     own_names: Collection[str] = (),
                     rng: random.Random | None = None) -> MxResult:
    """The hosts that receive mail for ``domain``, best first (see the module docstring).

    ``families`` orders (and limits) the address families per host; ``max_hosts`` and
    ``max_addresses`` (per host) bound the work for a domain with many records;
    ``own_names`` are this server's host names (for loop detection); ``rng`` makes the
    shuffling of equal preferences reproducible in tests.
    """
    families = _check_families(families)
    if max_hosts < 1 or max_addresses < 1:
        raise ValueError("max_hosts and max_addresses must be at least 1")
    if domain.startswith("["):
        return _address_literal(domain, families)
    qname = parse_name(domain)
    shown = name_text(qname)
    try:
        mx = await query(resolver, qname, "MX")
    except DnsNameError as exc:
        raise DnsNameError(f"{shown}: domain does not exist (NXDOMAIN)", name=shown,
                           secure=exc.secure) from None
    expanded_domain = mx.name if mx.aliased else None

    if not mx.records:
        return await _implicit_mx(resolver, qname, shown, mx.secure, expanded_domain,
                                  families, max_addresses, rng)

    exchanges = [(int(r.preference), r.exchange) for r in mx.records]
    if len(exchanges) == 1 and exchanges[0][1] == dns.name.root:
        # RFC 7505 §3: one MX record, exchange ".", is the null MX. (§3 says its
        # preference is 0; another preference changes nothing: "." names no host.)
        return MxResult(domain=shown, hosts=(), null_mx=True, implicit=False,
                        secure=mx.secure, expanded_domain=expanded_domain)
    candidates = [(p, name_text(x)) for p, x in exchanges if x != dns.name.root]
    ordered = order_mx(candidates, rng)
    own = {n.rstrip(".").lower() for n in own_names}
    if own:
        mine = [p for p, host in ordered if host in own]
        if mine:
            # RFC 5321 §5.1: drop our own entry and every one no better than it.
            ordered = [(p, h) for p, h in ordered if p < min(mine)]
            if not ordered:
                raise MxLoopError(f"mail for {shown} loops back to myself (this server is "
                                  "its best MX host)", name=shown)
    skipped = [f"{h}: beyond the limit of {max_hosts} MX hosts" for _, h in ordered[max_hosts:]]
    ordered = ordered[:max_hosts]

    lookups = await asyncio.gather(*(
        _host_addresses(resolver, dns.name.from_text(host + "."), families, max_addresses, rng)
        for _, host in ordered))
    hosts: list[MxHost] = []
    for (preference, host), (addresses, secure, expanded, error, exists) in zip(
            ordered, lookups, strict=True):
        if error is None and not addresses:
            reason = "no such host" if not exists else "no address records"
            skipped.append(f"{host}: {reason}")
            continue
        hosts.append(MxHost(name=host, preference=preference, addresses=addresses,
                            secure=mx.secure and secure, expanded_name=expanded, error=error))
    for reason in skipped:
        log(logger, "MX host skipped", logging.INFO, event="mx-skip", domain=shown,
            reason=reason)
    if hosts and not any(h.addresses for h in hosts):
        # Every remaining host failed temporarily: nothing to connect to until DNS works.
        raise DnsTemporaryError(f"no address for any MX host of {shown}: "
                                + "; ".join(f"{h.name}: {h.error}" for h in hosts), name=shown)
    if not hosts:
        raise DnsNameError(f"no MX host of {shown} has an address: " + "; ".join(skipped),
                           name=shown, enhanced_code="5.4.4")
    return MxResult(domain=shown, hosts=tuple(hosts), null_mx=False, implicit=False,
                    secure=mx.secure, expanded_domain=expanded_domain, skipped=tuple(skipped))


async def _implicit_mx(resolver: dns.asyncresolver.Resolver, qname: dns.name.Name, shown: str,
                       mx_secure: bool, expanded_domain: str | None, families: Sequence[str],
                       max_addresses: int, rng: random.Random | None) -> MxResult:
    """RFC 5321 §5.1: no MX records, so the domain is its own mail host (preference 0)."""
    addresses, secure, expanded, error, exists = await _host_addresses(
        resolver, qname, families, max_addresses, rng)
    if error is None and not addresses:
        if not exists:
            raise DnsNameError(f"{shown}: domain does not exist (NXDOMAIN)", name=shown)
        raise DnsNameError(f"{shown} has no MX and no address records: it cannot receive "
                           "mail", name=shown)
    if error is not None and not addresses:
        raise DnsTemporaryError(error, name=shown)
    host = MxHost(name=shown, preference=0, addresses=addresses, secure=mx_secure and secure,
                  expanded_name=expanded, error=error)
    return MxResult(domain=shown, hosts=(host,), null_mx=False, implicit=True, secure=mx_secure,
                    expanded_domain=expanded_domain or expanded)
