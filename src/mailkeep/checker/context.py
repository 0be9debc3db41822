"""What every check of ``mailkeep check`` shares: the options, the resolver, and one DNS
lookup helper that never raises and asks each question only once per run."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncresolver

from mailkeep.config.schema import Config
from mailkeep.dnsrecords import public_addresses
from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, make_resolver, query

#: Time limit of one DNS lookup, all servers and retries included (seconds).
DNS_TIMEOUT = 5.0
#: Time limit of one TCP connection and its TLS handshake or SMTP dialogue (seconds).
CONNECT_TIMEOUT = 10.0
#: Time limit of the whole run (seconds): checks still running then are reported as such.
TOTAL_TIMEOUT = 120.0


@dataclass(frozen=True)
class CheckOptions:
    """How ``mailkeep check`` runs. ``resolver`` is "IP" or "IP:PORT" ("[IPv6]:PORT");
    None means ``[delivery] resolvers``, else /etc/resolv.conf. ``ca_file`` adds trust
    anchors (PEM) to the system's for certificate checks, besides ``[delivery] ca_file``.
    """

    resolver: str | None = None
    relay_test: bool = True
    ca_file: Path | None = None
    dns_timeout: float = DNS_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    total_timeout: float = TOTAL_TIMEOUT


@dataclass(frozen=True)
class Lookup:
    """The answer to one DNS question, or why there is none.

    ``records`` is empty for NXDOMAIN (``nxdomain``), NODATA, and failures (``error``
    says what failed: a timeout, SERVFAIL, REFUSED). ``canonical`` is the name the
    records belong to after CNAMEs; ``secure`` whether the resolver validated them.
    """

    name: str
    rdtype: str
    records: tuple[Any, ...] = ()
    secure: bool = False
    nxdomain: bool = False
    error: str | None = None
    canonical: str = ""

    def texts(self) -> list[str]:
        """TXT records, each one's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self.records]

    def describe_absence(self) -> str:
        """Why there are no records, in words."""
        if self.error is not None:
            return f"the lookup failed: {self.error}"
        if self.nxdomain:
            return f"{self.name} does not exist (NXDOMAIN)"
        return f"{self.name} has no {self.rdtype} record"


class CheckContext:
    """The state of one ``mailkeep check`` run."""

    def __init__(self, config: Config, options: CheckOptions,
                 resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self.config = config
        self.options = options
        if resolver is None:
            if options.resolver:
                servers: list[str] | None = [options.resolver]
            else:
                servers = list(config.delivery.resolvers) or None
            resolver = make_resolver(servers, timeout=options.dns_timeout)
        self.resolver = resolver
        self._lookups: dict[tuple[str, str], asyncio.Task[Lookup]] = {}

    @property
    def ca_file(self) -> Path | None:
        return self.options.ca_file or self.config.delivery.ca_file

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that checks certificates against the system's trust
        anchors plus ``ca_file``, with the host name checked."""
        context = ssl.create_default_context()
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def lookup(self, name: str, rdtype: str) -> Lookup:
        """``rdtype`` records of ``name``; asked once per run, never raises."""
        key = (name.rstrip(".").lower(), rdtype)
        task = self._lookups.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup(*key))
            self._lookups[key] = task
        return await asyncio.shield(task)

    async def _lookup(self, name: str, rdtype: str) -> Lookup:
        try:
            answer = await query(self.resolver, name, rdtype)
        except DnsNameError as exc:
            if "NXDOMAIN" in str(exc):
                return Lookup(name, rdtype, nxdomain=True, secure=exc.secure)
            return Lookup(name, rdtype, error=str(exc))
        except DnsTemporaryError as exc:
            return Lookup(name, rdtype, error=str(exc))
        return Lookup(name, rdtype, records=answer.records, secure=answer.secure,
                      canonical=answer.name)

    async def host_addresses(self) -> tuple[str, ...]:
        """The A and AAAA addresses of the hostname in DNS (IPv4 first)."""
        found = []
        for rdtype in ("A", "AAAA"):
            lookup = await self.lookup(self.config.hostname, rdtype)
            found += [r.address for r in lookup.records]
        return tuple(dict.fromkeys(found))

    async def server_addresses(self) -> tuple[tuple[str, ...], bool]:
        """The addresses the server sends from and receives on, and whether they come from
        the configuration (True) or, when it names none, from the hostname's DNS (False)."""
        configured = public_addresses(self.config)
        if configured:
            return configured, True
        return await self.host_addresses(), False

    async def close(self) -> None:
        for task in self._lookups.values():
            task.cancel()
        await asyncio.gather(*self._lookups.values(), return_exceptions=True)
