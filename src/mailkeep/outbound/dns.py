"""DNS lookups for sending mail: a resolver that asks for DNSSEC status, and one query helper.

Outbound delivery needs three things from DNS beyond the records themselves:

- whether an answer was DNSSEC-validated, because DANE (RFC 7672 §2.1) may only use TLSA
  records from validated answers, and only when the MX and address answers that led to
  them were validated too;
- a clean split between "this name does not exist" (permanent: the message bounces,
  RFC 3463 5.1.2) and "DNS is not working right now" (temporary: the message is retried);
- a denial of existence (NXDOMAIN, NODATA) together with whether *it* was validated,
  since a securely denied TLSA record set means "no DANE" while an unverifiable one means
  "try later" (RFC 7672 §2.2).

Mailkeep does not validate DNSSEC itself. It sets the DO bit (RFC 3225) and reads the AD
flag (RFC 4035 §3.2.3) that a validating resolver puts on answers it has validated. That
flag is only as trustworthy as the path to the resolver: anyone on the path can set it
(RFC 6698 §4.1, RFC 7672 §1.3). The resolver Mailkeep is configured with should therefore
be a validating resolver on the same machine (e.g. Unbound on 127.0.0.1), reached over
loopback; :func:`resolver_is_local` tells whether that is the case.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

#: Default time limit for one lookup, all retries and servers included (seconds).
DEFAULT_TIMEOUT = 5.0
#: Time limit for one try at one server (seconds); the lookup as a whole has ``timeout``.
PER_SERVER_TIMEOUT = 2.0
#: EDNS0 UDP payload size we advertise (the DNS Flag Day 2020 recommendation): large
#: enough for signed answers, small enough to avoid IP fragmentation; bigger answers
#: come over TCP after a truncated reply.
EDNS_PAYLOAD = 1232


class DnsError(Exception):
    """A lookup failed. ``permanent`` and ``enhanced_code`` (RFC 3463) say what it means
    for a message waiting on it: bounce now, or try again later."""

    permanent = False
    enhanced_code = "4.4.3"  # RFC 3463: directory server failure

    def __init__(self, message: str, *, name: str = "", enhanced_code: str | None = None):
        super().__init__(message)
        self.name = name
        if enhanced_code is not None:
            self.enhanced_code = enhanced_code


class DnsTemporaryError(DnsError):
    """No usable answer now: SERVFAIL (including DNSSEC validation failure), REFUSED, a
    timeout, or no server reachable. The lookup should be retried later."""


class DnsNameError(DnsError):
    """The name does not exist (NXDOMAIN), or the name is not a valid domain name.

    ``secure`` is true when the resolver validated the denial of existence.
    """

    permanent = True
    enhanced_code = "5.1.2"  # RFC 3463: bad destination system address

    def __init__(self, message: str, *, name: str = "", enhanced_code: str | None = None,
                 secure: bool = False):
        super().__init__(message, name=name, enhanced_code=enhanced_code)
        self.secure = secure


@dataclass(frozen=True)
class Answer:
    """The records of one lookup and whether the resolver validated them.

    ``records`` is empty for NODATA (the name exists, without records of this type); then
    ``secure`` says whether that denial was validated. ``name`` is the name the records
    belong to after following CNAMEs (RFC 1034 §3.6.2), without the trailing dot, and
    ``aliased`` is true when that differs from the name queried. ``secure`` covers the
    whole answer, CNAMEs included (the AD flag is per response, RFC 4035 §3.2.3).
    """

    records: tuple[Any, ...]
    secure: bool
    name: str
    aliased: bool = False
    ttl: int = 0


def parse_nameserver(text: str, default_port: int = 53) -> tuple[str, int]:
    """(address, port) from "192.0.2.1", "192.0.2.1:5353", "2001:db8::1" or
    "[2001:db8::1]:5353" (the forms ``[delivery] resolvers`` accepts); ValueError if not."""
    value = text.strip()
    address, port = value, default_port
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: expected [IPv6 address]:port")
        address = inside
        if rest:
            port = _port(rest[1:], text)
    elif value.count(":") == 1:
        address, _, port_text = value.partition(":")
        port = _port(port_text, text)
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise ValueError(f"nameserver {text!r} is not an IP address") from None
    return address, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"nameserver {whole!r}: invalid port {text!r}")
    return int(text)


def make_resolver(nameservers: Sequence[str] | None = None, port: int = 53, *,
                  timeout: float = DEFAULT_TIMEOUT,
                  cache_size: int = 0) -> dns.asyncresolver.Resolver:
    """An asyncio resolver that asks for DNSSEC status (DO bit, RFC 3225).

    ``nameservers`` are IP addresses, optionally with their own port ("127.0.0.1:5353",
    "[::1]:5353"; see :func:`parse_nameserver`), else on ``port``; None reads
    /etc/resolv.conf. ``timeout`` bounds each lookup as a whole (all servers and retries).
    ``cache_size`` > 0 keeps that many answers, positive and negative, for their TTL
    (dnspython's LRU cache): the inbound policy asks the same names for every message.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    if nameservers is None:
        resolver = dns.asyncresolver.Resolver(configure=True)
    else:
        if not nameservers:
            raise ValueError("nameservers: give at least one address, or None for "
                             "/etc/resolv.conf")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_nameserver(n, port))
                                for n in nameservers]
    # DO asks a validating resolver to validate and report it with AD (RFC 4035 §3.2.1,
    # RFC 6840 §5.7); setting AD in the query as well asks for the flag without needing
    # to parse RRSIGs (RFC 6840 §5.7).
    resolver.use_edns(0, dns.flags.DO, EDNS_PAYLOAD)
    resolver.flags = dns.flags.RD | dns.flags.AD
    resolver.lifetime = timeout
    resolver.timeout = min(PER_SERVER_TIMEOUT, timeout)
    if cache_size > 0:
        resolver.cache = dns.resolver.LRUCache(cache_size)
    return resolver


def resolver_is_local(resolver: dns.resolver.BaseResolver) -> bool:
    """True if every server ``resolver`` asks is on loopback, so its AD flags can be
    trusted (RFC 7672 §1.3): nothing between us and it can forge them."""
    addresses = []
    for server in resolver.nameservers:
        if isinstance(server, str):
            addresses.append(server)
        elif isinstance(server, dns.nameserver.Do53Nameserver):
            addresses.append(server.address)
        else:
            return False  # DoH/DoT/DoQ: not a loopback path as far as we can tell
    try:
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    except ValueError:
        return False


def parse_name(name: str) -> dns.name.Name:
    """``name`` as an absolute DNS name; DnsNameError (permanent) if it cannot be one.

    Internationalized names are converted to A-labels (IDNA 2008, RFC 5891).
    """
    text = name.strip()
    if not text or text == ".":
        raise DnsNameError(f"empty domain name {name!r}", name=name)
    try:
        parsed = dns.name.from_text(text if text.endswith(".") else text + ".")
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DnsNameError(f"invalid domain name {name!r}: {exc}", name=name) from None
    if parsed == dns.name.root:
        raise DnsNameError(f"empty domain name {name!r}", name=name)
    return parsed


def name_text(name: dns.name.Name) -> str:
    """The presentation form of ``name`` (A-labels), lower case, without the final dot."""
    return name.to_text(omit_final_dot=True).lower()


def _secure(response: dns.message.Message | None) -> bool:
    return response is not None and bool(response.flags & dns.flags.AD)


def _failure_text(errors: Sequence[tuple[Any, ...]]) -> str:
    """Why each server failed, with the Extended DNS Error (RFC 8914) when there is one:
    Unbound says "DNSSEC Bogus" or "Signature Expired" there, which is what the operator
    reading the log needs to know."""
    parts = []
    for error in errors:
        server, problem = error[0], error[3]
        response = error[4] if len(error) > 4 else None
        text = f"{server} answered {problem}" if response is not None else f"{server}: {problem}"
        if isinstance(response, dns.message.Message):
            # EDEOption.to_text(): "EDE 7 (Signature Expired): <resolver's text>".
            details = [e.to_text() for e in response.extended_errors()]
            if details:
                text += " [" + "; ".join(details) + "]"
        parts.append(text)
    return "; ".join(parts) or "no server answered"


async def query(resolver: dns.asyncresolver.Resolver, name: str | dns.name.Name,
                rdtype: str | dns.rdatatype.RdataType) -> Answer:
    """Look up ``rdtype`` records of ``name``; follow CNAMEs; report DNSSEC status.

    Returns an :class:`Answer` (empty records for NODATA). Raises DnsNameError for
    NXDOMAIN or an invalid name, DnsTemporaryError for SERVFAIL (a bogus answer from a
    validating resolver is a SERVFAIL, RFC 4035 §5.5), REFUSED, timeouts and unreachable
    servers.
    """
    qname = name if isinstance(name, dns.name.Name) else parse_name(name)
    shown = name_text(qname)
    type_text = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
    try:
        answer = await resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN as exc:
        responses = list(exc.responses().values()) if exc.kwargs.get("responses") else []
        secure = bool(responses) and all(_secure(r) for r in responses)
        raise DnsNameError(f"{shown}: no such domain (NXDOMAIN for {type_text})", name=shown,
                           secure=secure) from None
    except dns.resolver.NoNameservers as exc:
        errors = exc.kwargs.get("errors") or []
        raise DnsTemporaryError(f"{shown} {type_text} lookup failed: {_failure_text(errors)}",
                                name=shown) from None
    except dns.resolver.LifetimeTimeout as exc:
        errors = exc.kwargs.get("errors") or []
        raise DnsTemporaryError(
            f"{shown} {type_text} lookup timed out after {resolver.lifetime:g}s"
            + (f": {_failure_text(errors)}" if errors else ""), name=shown) from None
    except dns.resolver.YXDOMAIN:
        raise DnsNameError(f"{shown}: the name is too long after DNAME substitution",
                           name=shown) from None
    except dns.exception.DNSException as exc:
        # Anything else (a malformed response, a name too long after CNAME expansion...)
        # is a fault of the DNS data or the path to it, which may be fixed later.
        raise DnsTemporaryError(f"{shown} {type_text} lookup failed: {exc}",
                                name=shown) from None
    records = tuple(answer.rrset) if answer.rrset is not None else ()
    ttl = answer.rrset.ttl if answer.rrset is not None else 0
    canonical = name_text(answer.canonical_name)
    return Answer(records=records, secure=_secure(answer.response), name=canonical,
                  aliased=canonical != shown, ttl=ttl)
