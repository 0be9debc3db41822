"""The certificates the TLS listeners really serve, and whether clients will accept them.

Every TCP listener with TLS is connected to, the way a client would: implicit TLS at
once, or STARTTLS first (RFC 3207 for SMTP and LMTP, RFC 9051 §6.2.1 for IMAP, RFC 2595
§4 for POP3's STLS). The server may hold an ECDSA and an RSA certificate and picks one
per client, so each is asked for in turn (TLS 1.2 with only ECDSA or only RSA cipher
suites); a server with neither is asked once with the defaults.

Each certificate is judged like a client would (RFC 9525): the chain verifies against the
system's trust anchors (plus ``--ca-file``), the hostname is among its names, and it is
within its validity period, with a warning two weeks before it ends. The keys served on
the smtp listeners are compared with the TLSA records of ``_25._tcp.HOST`` (RFC 7672
§3.1.1 DANE-EE, §3.1.2 DANE-TA), since that is what DANE senders will do.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from mailkeep.checker.context import CheckContext
from mailkeep.checker.findings import Finding, Status
from mailkeep.config.schema import Listener
from mailkeep.outbound.dane import TlsaRecord, name_matches, peer_chain_der, verify_chain
from mailkeep.smtp.client import (
    QUIT,
    STARTTLS,
    ClientLimits,
    ReplyError,
    ReplyReader,
    ehlo_command,
    parse_ehlo,
)
from mailkeep.smtp.reply import Reply

CHECK = "tls"
#: A certificate that ends sooner than this is a warning (days).
EXPIRY_WARNING_DAYS = 14
#: The EHLO/LHLO name the checker gives (RFC 2606 .invalid: it names no real host, and it
#: is not our own hostname, which the inbound policy refuses from strangers).
CLIENT_NAME = "mailkeep-check.invalid"
#: Largest line read from a server before TLS, and most lines of one greeting or reply.
MAX_LINE = 4096
MAX_LINES = 100
#: How many listeners are probed at the same time.
PARALLEL_PROBES = 8

#: TLS 1.2 cipher suites that make the server present its ECDSA or its RSA certificate.
_KEY_TYPE_CIPHERS = {
    "ecdsa": "ECDHE+aECDSA+AESGCM:ECDHE+aECDSA+CHACHA20",
    "rsa": "ECDHE+aRSA+AESGCM:ECDHE+aRSA+CHACHA20",
}


class ProbeError(Exception):
    """The listener could not be reached, or its dialogue before TLS went wrong."""


@dataclass(frozen=True)
class ServedCertificate:
    """A certificate a listener presented. ``verify_error`` is why a verifying client
    refused it (None: accepted, including the host name check)."""

    der: bytes
    chain: tuple[bytes, ...]
    verify_error: str | None


@dataclass(frozen=True)
class ProbeResult:
    """What one listener served, or ``error`` when it could not be asked."""

    listener: Listener
    address: tuple[str, int]
    certificates: tuple[ServedCertificate, ...] = ()
    error: str | None = None

    @property
    def label(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port} ({self.listener.protocol})"


def connect_address(listener: Listener) -> tuple[str, int]:
    """Where to reach a listener from this machine: its address, or loopback for a
    wildcard one."""
    assert listener.host is not None and listener.port is not None
    host = listener.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host, listener.port
    if address.is_unspecified:
        host = "::1" if address.version == 6 else "127.0.0.1"
    return host, listener.port


def tls_listeners(listeners: Sequence[Listener]) -> list[Listener]:
    """TCP listeners that speak TLS (implicit or STARTTLS)."""
    return [listener for listener in listeners
            if not listener.is_unix and listener.port is not None and listener.tls != "none"]


# -- talking to the server before TLS -------------------------------------------------------

async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        raise ProbeError(f"the server closed the connection ({exc.partial[:80]!r})") from None
    except asyncio.LimitOverrunError:
        raise ProbeError(f"a line longer than {MAX_LINE} bytes") from None
    return line


async def read_smtp_reply(reader: asyncio.StreamReader, parser: ReplyReader) -> Reply:
    """The next SMTP reply (RFC 5321 §4.2), parsed by the client's sans-IO reader."""
    while True:
        try:
            reply = parser.next_reply()
        except ReplyError as exc:
            raise ProbeError(f"not an SMTP reply: {exc}") from None
        if reply is not None:
            return reply
        parser.receive_data(await _read_line(reader))


async def _smtp_starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         hello: str) -> None:
    parser = ReplyReader(ClientLimits(max_reply_line=MAX_LINE, max_reply_lines=MAX_LINES))
    greeting = await read_smtp_reply(reader, parser)
    if greeting.code != 220:
        raise ProbeError(f"greeting {greeting.code} {' '.join(greeting.lines)[:200]}")
    # RFC 2033 §4.1: LMTP's LHLO has EHLO's syntax.
    writer.write(ehlo_command(CLIENT_NAME) if hello == "EHLO"
                 else f"LHLO {CLIENT_NAME}\r\n".encode("ascii"))
    reply = await read_smtp_reply(reader, parser)
    if reply.code != 250:
        raise ProbeError(f"{hello} refused: {reply.code} {' '.join(reply.lines)[:200]}")
    if "STARTTLS" not in parse_ehlo(reply):
        raise ProbeError("STARTTLS is not offered (RFC 3207)")
    writer.write(STARTTLS)
    reply = await read_smtp_reply(reader, parser)
    if reply.code != 220:
        writer.write(QUIT)
        raise ProbeError(f"STARTTLS refused: {reply.code} {' '.join(reply.lines)[:200]}")


async def _imap_starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _read_line(reader)
    if not greeting.startswith(b"* OK"):
        raise ProbeError(f"greeting {greeting[:200]!r}")
    writer.write(b"c1 STARTTLS\r\n")
    for _ in range(MAX_LINES):
        line = await _read_line(reader)
        if line.startswith(b"c1 "):
            if line.startswith(b"c1 OK"):
                return
            raise ProbeError(f"STARTTLS refused: {line[:200]!r}")
    raise ProbeError("no answer to STARTTLS")


async def _pop3_stls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _read_line(reader)
    if not greeting.startswith(b"+OK"):
        raise ProbeError(f"greeting {greeting[:200]!r}")
    writer.write(b"STLS\r\n")
    line = await _read_line(reader)
    if not line.startswith(b"+OK"):
        raise ProbeError(f"STLS refused: {line[:200]!r}")


async def _before_tls(protocol: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    if protocol in ("smtp", "submission", "submissions"):
        await _smtp_starttls(reader, writer, "EHLO")
    elif protocol == "lmtp":
        await _smtp_starttls(reader, writer, "LHLO")  # RFC 2033 §4.1
    elif protocol in ("imap", "imaps"):
        await _imap_starttls(reader, writer)
    elif protocol in ("pop3", "pop3s"):
        await _pop3_stls(reader, writer)
    else:
        raise ProbeError(f"no STARTTLS for protocol {protocol}")


# -- handshakes ----------------------------------------------------------------------------

async def handshake(listener: Listener, context: ssl.SSLContext, server_name: str,
                    timeout: float) -> tuple[bytes, tuple[bytes, ...]]:
    """Connect to ``listener`` and complete the TLS handshake with ``context``; return the
    server certificate and the chain it sent (DER). Raises ProbeError for everything
    before the handshake, ssl errors for the handshake itself."""
    host, port = connect_address(listener)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if listener.tls == "implicit":
                _reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=server_name, limit=MAX_LINE)
            else:
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
                await _before_tls(listener.protocol, reader, writer)
                await writer.drain()
                await writer.start_tls(context, server_hostname=server_name)
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True)
            chain = tuple(peer_chain_der(ssl_object)) or (der,)
            return der, chain
    except TimeoutError:
        raise ProbeError(f"no TLS session within {timeout:g}s") from None
    except ssl.SSLError:
        raise
    except (OSError, EOFError) as exc:
        raise ProbeError(f"cannot connect: {exc.strerror or exc}" if isinstance(exc, OSError)
                         else str(exc)) from None
    finally:
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (TimeoutError, OSError, ssl.SSLError):
                pass


def _restricted(context: ssl.SSLContext, key_type: str) -> ssl.SSLContext:
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_KEY_TYPE_CIPHERS[key_type])
    return context


def unverified_context() -> ssl.SSLContext:
    """A TLS client context that accepts any certificate (to look at it, not trust it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _served(ctx: CheckContext, listener: Listener, key_type: str | None
                  ) -> ServedCertificate | None:
    """The certificate served to a client limited to ``key_type`` (None: no limit); None
    when the server has no certificate of that type."""
    host = ctx.config.hostname
    timeout = ctx.options.connect_timeout
    if listener.protocol == "smtp":
        # The inbound policy may hold the greeting back (the pregreet test) this long.
        timeout += ctx.config.policy.greet_wait
    verifying = ctx.client_context()
    if key_type is not None:
        verifying = _restricted(verifying, key_type)
    try:
        der, chain = await handshake(listener, verifying, host, timeout)
        return ServedCertificate(der, chain, None)
    except ssl.SSLCertVerificationError as exc:
        verify_error = exc.verify_message or str(exc)
    except ssl.SSLError:
        if key_type is not None:
            return None  # no certificate of this key type ("no shared cipher")
        raise
    # Refused by a verifying client: ask again without verification to see what it is.
    unverified = unverified_context()
    if key_type is not None:
        unverified = _restricted(unverified, key_type)
    der, chain = await handshake(listener, unverified, host, timeout)
    return ServedCertificate(der, chain, verify_error)


async def probe(ctx: CheckContext, listener: Listener) -> ProbeResult:
    """Every certificate ``listener`` serves, or why it could not be asked."""
    address = connect_address(listener)
    found: list[ServedCertificate] = []
    try:
        for key_type in _KEY_TYPE_CIPHERS:
            served = await _served(ctx, listener, key_type)
            if served is not None:
                found.append(served)
        if not found:
            served = await _served(ctx, listener, None)
            if served is not None:
                found.append(served)
    except ProbeError as exc:
        return ProbeResult(listener, address, error=str(exc))
    except ssl.SSLError as exc:
        return ProbeResult(listener, address, error=f"TLS handshake failed: {exc}")
    return ProbeResult(listener, address, tuple(found))


async def probe_all(ctx: CheckContext) -> list[ProbeResult]:
    """:func:`probe` for every TLS listener, a few at a time, in configuration order."""
    limit = asyncio.Semaphore(PARALLEL_PROBES)

    async def one(listener: Listener) -> ProbeResult:
        async with limit:
            return await probe(ctx, listener)

    return list(await asyncio.gather(*(one(listener) for listener in tls_listeners(ctx.config.listeners))))


# -- judging -------------------------------------------------------------------------------

def key_type(certificate: x509.Certificate) -> str:
    """"ecdsa P-256", "rsa 2048", "ed25519"... for messages."""
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ecdsa {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ed448"
    return type(key).__name__


def dns_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names of the subjectAltName (RFC 9525 §6.3: the common name is not used)."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in extension.value.get_values_for_type(x509.DNSName)]


_TRUST_FIX = ("get a certificate from a public CA: turn on [acme] (docs/certificates.md), or "
              "set [tls] cert and key to the files your CA issued, with the intermediate "
              "certificates after the server certificate in the cert file")


def judge_certificate(served: ServedCertificate, hostname: str, now: datetime.datetime,
                      where: str) -> Finding:
    """The verdict on one served certificate (``where`` lists the listeners serving it)."""
    try:
        certificate = x509.load_der_x509_certificate(served.der)
    except ValueError as exc:
        return Finding(Status.FAIL, "TLS certificate", f"{where}: unreadable certificate "
                       f"({exc})", _TRUST_FIX, CHECK)
    kind = key_type(certificate)
    subject = f"TLS certificate ({kind})"
    not_after = certificate.not_valid_after_utc
    names = dns_names(certificate)
    end = f"{not_after:%Y-%m-%d %H:%M} UTC"
    if now > not_after:
        return Finding(Status.FAIL, subject,
                       f"{where}: expired on {end}; clients refuse it",
                       "renew it: with [acme], run 'mailkeep cert renew'; with [tls] files, "
                       "replace them (the server reloads them by itself)", CHECK)
    if now < certificate.not_valid_before_utc:
        return Finding(Status.FAIL, subject,
                       f"{where}: not valid before "
                       f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                       "check this machine's clock, or replace the certificate", CHECK)
    if not any(name_matches(name, hostname) for name in names):
        return Finding(Status.FAIL, subject,
                       f"{where}: not valid for {hostname} (it names "
                       f"{', '.join(names) or 'no DNS name'})",
                       f"get a certificate that includes {hostname} ([acme] always includes "
                       "the hostname)", CHECK)
    if served.verify_error is not None:
        return Finding(Status.FAIL, subject,
                       f"{where}: not trusted by clients: {served.verify_error}",
                       _TRUST_FIX, CHECK)
    left = not_after - now
    if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return Finding(Status.WARN, subject,
                       f"{where}: expires in {left.days} days ({end})",
                       "renew it now: with [acme], check 'mailkeep cert status' and the log "
                       "for renewal errors; with [tls] files, replace them", CHECK)
    issuer = certificate.issuer.rfc4514_string()
    return Finding(Status.OK, subject,
                   f"{where}: trusted, valid for {hostname} until {end} ({left.days} days), "
                   f"issued by {issuer}", "", CHECK)


def judge_probes(results: Sequence[ProbeResult], hostname: str,
                 now: datetime.datetime | None = None) -> list[Finding]:
    """One finding per listener that could not be asked, and one per distinct certificate
    (with the listeners that serve it)."""
    now = now or datetime.datetime.now(datetime.UTC)
    findings = []
    served: dict[tuple[bytes, str | None], tuple[ServedCertificate, list[str]]] = {}
    for result in results:
        if result.error is not None:
            findings.append(Finding(
                Status.FAIL, f"TLS on {result.label}", result.error,
                "start the server ('mailkeep serve'), and check this listener in "
                "[[listeners]] (address, tls)", CHECK))
            continue
        for certificate in result.certificates:
            key = (certificate.der, certificate.verify_error)
            served.setdefault(key, (certificate, []))[1].append(result.label)
    for certificate, labels in served.values():
        findings.append(judge_certificate(certificate, hostname, now, ", ".join(labels)))
    return findings


async def check_served_tlsa(ctx: CheckContext, results: Sequence[ProbeResult]) -> list[Finding]:
    """Do the TLSA records of ``_25._tcp.HOST`` match what the smtp listeners serve?"""
    host = ctx.config.hostname
    name = f"_25._tcp.{host}"
    chains = {c.chain or (c.der,) for r in results if r.listener.protocol == "smtp"
              for c in r.certificates}
    if not chains:
        return []
    lookup = await ctx.lookup(name, "TLSA")
    if lookup.error is not None:
        # RFC 7672 §2.2: DANE senders defer mail when the TLSA lookup fails.
        return [Finding(Status.FAIL, f"{name} TLSA (served key)",
                        f"the lookup failed: {lookup.error}; DANE senders defer mail to "
                        f"{host} until it works (RFC 7672 §2.2)",
                        f"make sure the name servers of {host} answer for {name} TLSA",
                        CHECK)]
    if not lookup.records:
        return []  # no DANE: the records check says whether TLSA should be published
    records = [TlsaRecord(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
               for r in lookup.records]
    problems = [problem for chain in sorted(chains)
                if (problem := verify_chain(chain, records, names=[host])) is not None]
    if problems:
        status = Status.FAIL if lookup.secure else Status.WARN
        consequence = ("DANE senders refuse to deliver (RFC 7672 §2.2)" if lookup.secure
                       else "the zone is not DNSSEC-signed, so senders ignore it for now")
        return [Finding(status, f"{name} TLSA (served key)",
                        f"the key port 25 serves does not match: {problems[0]}; "
                        f"{consequence}",
                        f"publish the records from 'mailkeep dns records' for {name} (keep "
                        "the old ones until the new key is served everywhere)", CHECK)]
    return [Finding(Status.OK, f"{name} TLSA (served key)",
                    "matches every key port 25 serves" + ("" if lookup.secure else
                                                          " (not DNSSEC-signed)"), "", CHECK)]
