"""The DNS records a Mailkeep server needs, as data.

``mailkeep dns records`` prints them as a zone-file snippet (or JSON) and ``mailkeep check``
resolves each one and compares it with what is here, so the two can never disagree. For
a domain D served by the host H (``hostname``):

========================  =====  ==============================================  =========
name                      type   value                                           standard
========================  =====  ==============================================  =========
D                         MX     10 H.                                           RFC 5321 §5.1
H                         A/AAAA the server's public addresses                   RFC 1035
reverse of each address   PTR    H. (set by the address's owner)                 RFC 8601 §2.7.3
D                         TXT    v=spf1 mx -all                                  RFC 7208
H                         TXT    v=spf1 a -all (the HELO identity)               RFC 7208 §2.3
SEL._domainkey.D          TXT    v=DKIM1; k=...; p=... (each selector)           RFC 6376 §3.6
_dmarc.D                  TXT    v=DMARC1; p=...; rua=mailto:...                 RFC 7489 §6
_mta-sts.D                TXT    v=STSv1; id=...                                 RFC 8461 §3.1
mta-sts.D                 CNAME  H. (the policy is served by Mailkeep)           RFC 8461 §3.3
_smtp._tls.D              TXT    v=TLSRPTv1; rua=mailto:...                      RFC 8460 §3
_25._tcp.H                TLSA   3 1 1 SHA-256 of each served key                RFC 7672
_submissions._tcp.D ...   SRV    where mail clients connect                      RFC 6186, 8314
autoconfig.D              CNAME  H. (Thunderbird autoconfiguration)
_autodiscover._tcp.D      SRV    0 1 443 H. (Outlook autodiscover)
D (and H)                 CAA    0 issue "letsencrypt.org"                       RFC 8659
========================  =====  ==============================================  =========

Everything above :func:`dkim_publications` is pure: the configuration, the public DKIM
records and the served certificates go in, records come out. The functions at the end
read those inputs from the data directory (the DKIM keys, the certificate files).

The MTA-STS policy the HTTPS listener serves is built here too
(:func:`mta_sts_policy_text`), with its id derived from its text (:func:`mta_sts_id`), so
the id in DNS changes exactly when the policy does (RFC 8461 §3.1).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailkeep.config.names import display_domain
from mailkeep.config.schema import Config, Listener
from mailkeep.dkim.keys import DkimKeys, txt_strings
from mailkeep.outbound.dane import spki_der

#: TTL of every record printed (seconds). One hour: changes reach resolvers soon enough
#: after a mistake, and the records are small enough that caching them longer gains little.
DEFAULT_TTL = 3600
#: Preference of the MX record (RFC 5321 §5.1: lower is preferred; one MX, any value).
MX_PREFERENCE = 10
#: Where the MTA-STS policy is served (RFC 8461 §3.3).
MTA_STS_PATH = "/.well-known/mta-sts.txt"
#: Characters of the MTA-STS id (RFC 8461 §3.1 allows 1 to 32 letters and digits).
MTA_STS_ID_LENGTH = 20
#: Largest certificate file read for TLSA records (a chain of a few certificates).
MAX_CERT_FILE_BYTES = 256 * 1024

#: Top-level names that never resolve on the public Internet (RFC 2606 §2, RFC 6761 §6,
#: RFC 6762 for .local, RFC 8375 for home.arpa, ICANN's 2024 reservation of .internal).
NON_PUBLIC_SUFFIXES = ("test", "example", "invalid", "localhost", "local", "internal",
                       "home.arpa")

#: The order records are listed in: what mail cannot work without first.
KINDS = ("mx", "address", "ptr", "spf", "spf-host", "dkim", "dmarc", "dmarc-authorization",
         "mta-sts", "mta-sts-host", "tlsrpt", "tlsa", "srv", "autoconfig", "autodiscover",
         "caa")


@dataclass(frozen=True)
class DnsRecord:
    """One record to publish.

    ``name`` is the owner name as a fully qualified domain name in lower-case A-labels,
    without the final dot. ``value`` is the record data in zone-file syntax (absolute
    names end with a dot), except for TXT where it is the text itself, unquoted and
    whole; :attr:`rdata` gives the zone-file form (quoted, cut into strings of at most 255
    octets). ``required``: without it mail breaks (``mailkeep check`` says FAIL when it is
    missing), otherwise it is recommended (WARN). ``kind`` says what the record is for
    (one of :data:`KINDS`).
    """

    name: str
    type: str
    value: str
    comment: str
    required: bool = True
    kind: str = ""
    ttl: int = DEFAULT_TTL

    @property
    def rdata(self) -> str:
        """The record data as a zone file writes it (RFC 1035 §5.1)."""
        if self.type != "TXT":
            return self.value
        strings = [_quoted(part) for part in txt_strings(self.value)]
        if len(strings) == 1:
            return strings[0]
        # RFC 1035 §5.1: parentheses let one record continue over several lines.
        return "(\n    " + "\n    ".join(strings) + " )"

    def zone_line(self) -> str:
        """The whole record as zone-file text, owner name absolute."""
        return f"{self.name}. {self.ttl} IN {self.type} {self.rdata}"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type, "ttl": self.ttl, "value": self.value,
                "rdata": " ".join(_quoted(p) for p in txt_strings(self.value))
                if self.type == "TXT" else self.value, "kind": self.kind,
                "required": self.required, "comment": self.comment}


@dataclass(frozen=True)
class DkimPublication:
    """A DKIM selector's public record, as :meth:`DkimKeys.dns_records` gives it."""

    selector: str
    name: str
    value: str
    active: bool
    algorithm: str = "rsa"


def _quoted(text: str) -> str:
    # RFC 1035 §5.1: inside a quoted string, '"' and '\' are escaped with a backslash.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fqdn(name: str) -> str:
    return name.rstrip(".") + "."


# -- inputs from the configuration -------------------------------------------------------

def is_public_name(name: str) -> bool:
    """False for names that cannot be published on the Internet: single labels
    ("localhost") and the special-use top-level names of :data:`NON_PUBLIC_SUFFIXES`."""
    labels = name.rstrip(".").lower().split(".")
    if len(labels) < 2:
        return False
    return not any(name.rstrip(".").lower() == suffix
                   or name.rstrip(".").lower().endswith("." + suffix)
                   for suffix in NON_PUBLIC_SUFFIXES)


def public_addresses(config: Config) -> tuple[str, ...]:
    """The server's public addresses: ``[dns] ipv4`` and ``ipv6``, or when both are empty
    the addresses of the TCP listeners that are global (not a wildcard, loopback,
    private or link-local address: those cannot be published), IPv4 first."""
    configured = (*config.dns.ipv4, *config.dns.ipv6)
    if configured:
        return tuple(dict.fromkeys(configured))
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for listener in config.listeners:
        if listener.host is None:
            continue
        try:
            address = ipaddress.ip_address(listener.host)
        except ValueError:
            continue
        if address.is_global and not address.is_unspecified and address not in found:
            found.append(address)
    found.sort(key=lambda a: (a.version, a))
    return tuple(str(a) for a in found)


def _tcp_listeners(config: Config, protocols: Iterable[str], tls: str) -> list[Listener]:
    wanted = set(protocols)
    chosen = [listener for listener in config.listeners
              if listener.protocol in wanted and listener.tls == tls
              and listener.port is not None and not listener.is_unix]

    def loopback(listener: Listener) -> bool:
        try:
            return ipaddress.ip_address(listener.host or "").is_loopback
        except ValueError:
            return False

    # A listener clients can reach first; loopback ones still count (a test setup).
    chosen.sort(key=loopback)
    return chosen


def _first_port(config: Config, protocols: Iterable[str], tls: str) -> int | None:
    listeners = _tcp_listeners(config, protocols, tls)
    return listeners[0].port if listeners else None


# -- MTA-STS policy (RFC 8461 §3.2) --------------------------------------------------------

def mta_sts_policy_text(config: Config) -> str:
    """The MTA-STS policy this server serves at ``https://mta-sts.D/.well-known/
    mta-sts.txt`` for each of its domains D: its one MX host, the ``[dns]`` mode and
    max_age. Lines end in CRLF (§3.2: LF is allowed too; CRLF is what the RFC shows)."""
    lines = ["version: STSv1", f"mode: {config.dns.mta_sts_mode}", f"mx: {config.hostname}",
             f"max_age: {config.dns.mta_sts_max_age}"]
    return "".join(line + "\r\n" for line in lines)


def mta_sts_id(config: Config) -> str:
    """The id of the ``_mta-sts`` TXT record: a digest of the policy text, so it changes
    whenever the policy changes and senders fetch the new one (RFC 8461 §3.1)."""
    digest = hashlib.sha256(mta_sts_policy_text(config).encode("utf-8")).hexdigest()
    return digest[:MTA_STS_ID_LENGTH]


# -- report addresses ------------------------------------------------------------------

def dmarc_report_address(config: Config, domain: str) -> str:
    """Where aggregate DMARC reports for ``domain`` go: ``[dmarc] report_address`` (which
    Mailkeep reads), else postmaster@domain (RFC 5321 §4.5.1: it always exists)."""
    return config.dmarc.report_address or f"postmaster@{domain}"


def tlsrpt_address(config: Config, domain: str) -> str:
    """Where TLS reports (RFC 8460) go: ``[dns] tlsrpt_address``, else the DMARC one."""
    return config.dns.tlsrpt_address or dmarc_report_address(config, domain)


def mailto(address: str) -> str:
    """A mailto URI for ``address`` (RFC 6068 §2): the local part percent-encoded where
    needed; ',' and '!' too, because DMARC uses them as separators (RFC 7489 §6.4)."""
    local, _, domain = address.rpartition("@")
    safe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_+=~'*$&/?^{}|#`"
    return f"mailto:{urllib.parse.quote(local, safe=safe)}@{domain}"


def _organizational(domain: str) -> str:
    # Imported here: the public suffix list takes a moment to load and only this needs it.
    from mailkeep.trust.dmarc import organizational_domain

    return organizational_domain(domain)


# -- the records -----------------------------------------------------------------------

def tlsa_value(cert_der: bytes) -> str:
    """TLSA ``3 1 1`` data for a certificate (RFC 7671 §5.1 DANE-EE, RFC 6698 §2.1: the
    SHA-256 of its SubjectPublicKeyInfo, byte for byte as in the certificate)."""
    return "3 1 1 " + hashlib.sha256(spki_der(cert_der)).hexdigest()


def host_records(config: Config, *, tls_certificates: Sequence[bytes] = ()) -> list[DnsRecord]:
    """The records of the server itself, shared by all its domains: its addresses, their
    reverse names, its HELO SPF record, TLSA for its served keys, and CAA when the host
    is not inside one of its domains (where the domain's CAA covers it)."""
    host = config.hostname
    records: list[DnsRecord] = []
    for text in public_addresses(config):
        address = ipaddress.ip_address(text)
        records.append(DnsRecord(
            host, "A" if address.version == 4 else "AAAA", text,
            f"{host} is the server's name: senders connect to this address (RFC 5321 §5.1)",
            kind="address"))
    for text in public_addresses(config):
        address = ipaddress.ip_address(text)
        records.append(DnsRecord(
            address.reverse_pointer, "PTR", _fqdn(host),
            f"reverse DNS of {text}: set by whoever owns the address (your hosting "
            "provider's control panel), not in your zone; receivers refuse mail from "
            "addresses whose name does not resolve back to them (RFC 8601 §2.7.3)",
            kind="ptr"))
    records.append(DnsRecord(
        host, "TXT", "v=spf1 a -all",
        f"SPF for the HELO name {host}: only its own addresses send with it (RFC 7208 §2.3)",
        required=False, kind="spf-host"))
    for der in dict.fromkeys(tls_certificates):
        records.append(DnsRecord(
            f"_25._tcp.{host}", "TLSA", tlsa_value(der),
            "DANE: senders check the key port 25 presents against this (RFC 7672); used "
            "only when the zone is DNSSEC-signed. Publish the new value before the key "
            "changes", required=False, kind="tlsa"))
    if not any(host == d or host.endswith("." + d) for d in config.domains):
        records += _caa_records(config, host)
    return records


def domain_records(config: Config, domain: str, *,
                   dkim_keys: Sequence[DkimPublication] = ()) -> list[DnsRecord]:
    """The records of one domain ``domain`` (a canonical A-label name)."""
    host = _fqdn(config.hostname)
    records = [
        DnsRecord(domain, "MX", f"{MX_PREFERENCE} {host}",
                  f"mail for {display_domain(domain)} is delivered to {config.hostname} "
                  "(RFC 5321 §5.1)", kind="mx"),
        DnsRecord(domain, "TXT", "v=spf1 mx -all",
                  "SPF: only the MX hosts send mail from this domain, everything else fails "
                  "(RFC 7208)", kind="spf"),
    ]
    for key in dkim_keys:
        value = key.value
        if config.dns.dkim_testing:
            # RFC 6376 §3.6.1 t=y: verifiers treat failures like unsigned mail.
            value = value.replace("; p=", "; t=y; p=", 1)
        if key.active:
            comment = (f"DKIM public key of selector {key.selector} ({key.algorithm}); "
                       "outgoing mail is signed with it (RFC 6376 §3.6.2)")
        else:
            comment = (f"DKIM key of retired selector {key.selector}: keep it until "
                       "'mailkeep dkim list' says it can be removed")
        records.append(DnsRecord(key.name, "TXT", value, comment, required=key.active,
                                 kind="dkim"))
    report = dmarc_report_address(config, domain)
    records.append(DnsRecord(
        f"_dmarc.{domain}", "TXT",
        f"v=DMARC1; p={config.dns.dmarc_policy}; rua={mailto(report)}",
        "DMARC: what receivers do with mail that fails SPF and DKIM alignment, and where "
        "they send daily reports (RFC 7489 §6.3)", kind="dmarc"))
    report_domain = report.rpartition("@")[2]
    if _organizational(report_domain) != _organizational(domain):
        records.append(DnsRecord(
            f"{domain}._report._dmarc.{report_domain}", "TXT", "v=DMARC1",
            f"lets {report_domain} receive DMARC reports for {domain}; published in the "
            f"zone of {report_domain} (RFC 7489 §7.1)", required=False,
            kind="dmarc-authorization"))
    https_port = _first_port(config, ("https",), "implicit")
    if https_port is not None:
        records += [
            DnsRecord(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={mta_sts_id(config)}",
                      f"MTA-STS: senders must use verified TLS to {config.hostname} (mode "
                      f"{config.dns.mta_sts_mode}); the id changes with the policy "
                      "(RFC 8461 §3.1)", required=False, kind="mta-sts"),
            DnsRecord(f"mta-sts.{domain}", "CNAME", host,
                      f"Mailkeep serves the MTA-STS policy at https://mta-sts.{domain}"
                      f"{MTA_STS_PATH}; its certificate must include this name "
                      "(RFC 8461 §3.3)", required=False, kind="mta-sts-host"),
        ]
    records.append(DnsRecord(
        f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua={mailto(tlsrpt_address(config, domain))}",
        "TLS reporting: where senders report failed TLS connections (RFC 8460 §3)",
        required=False, kind="tlsrpt"))
    records += _srv_records(config, domain)
    if _first_port(config, ("http",), "none") is not None or https_port is not None:
        records.append(DnsRecord(
            f"autoconfig.{domain}", "CNAME", host,
            "Thunderbird and other clients fetch their settings from "
            f"autoconfig.{domain}, served by Mailkeep", required=False, kind="autoconfig"))
    if https_port is not None:
        records.append(DnsRecord(
            f"_autodiscover._tcp.{domain}", "SRV", f"0 1 {https_port} {host}",
            "Outlook autodiscover: ask the server itself, whose certificate it already "
            "trusts (no autodiscover.DOMAIN certificate needed)", required=False,
            kind="autodiscover"))
    records += _caa_records(config, domain)
    return records


def expected_records(config: Config, domain: str, *,
                     dkim_keys: Sequence[DkimPublication] = (),
                     tls_certificates: Sequence[bytes] = ()) -> list[DnsRecord]:
    """Every record ``domain`` needs, the server's own records included, in the order of
    :data:`KINDS` (the order the zone snippet lists them in)."""
    records = (domain_records(config, domain, dkim_keys=dkim_keys)
               + host_records(config, tls_certificates=tls_certificates))
    return sort_records(records)


def sort_records(records: Iterable[DnsRecord]) -> list[DnsRecord]:
    """``records`` in :data:`KINDS` order (stable within a kind), duplicates removed."""
    unique = list(dict.fromkeys(records))
    return sorted(unique, key=lambda r: KINDS.index(r.kind) if r.kind in KINDS else len(KINDS))


#: (implicit TLS service, STARTTLS service, listener protocols) of each mail service with
#: SRV records (RFC 6186 §3, RFC 8314 §5.1 for _submissions).
_SRV_SERVICES = (
    ("submissions", "submission", ("submission", "submissions")),
    ("imaps", "imap", ("imap", "imaps")),
    ("pop3s", "pop3", ("pop3", "pop3s")),
)


def _srv_records(config: Config, domain: str) -> list[DnsRecord]:
    """SRV records for mail clients (RFC 6186), steering them to implicit TLS.

    RFC 8314 §5.1 prefers implicit TLS for submission and asks for the ``_submissions``
    service; RFC 6186 §3.4 has clients take the lowest priority value first. So the
    implicit-TLS service gets priority 0. ``_submission`` (587 with STARTTLS) is still
    published, at priority 10, because many devices only speak it and Mailkeep requires
    TLS there before any login. ``_imap`` and ``_pop3`` get the "service not available"
    target "." (RFC 6186 §4, RFC 2782) when the implicit-TLS service exists, so clients
    that follow SRV never start IMAP or POP3 in cleartext (RFC 8314 §4.1).
    """
    host = _fqdn(config.hostname)
    records = []
    for implicit, starttls, protocols in _SRV_SERVICES:
        implicit_port = _first_port(config, protocols, "implicit")
        starttls_port = _first_port(config, protocols, "starttls")
        if implicit_port is not None:
            records.append(DnsRecord(
                f"_{implicit}._tcp.{domain}", "SRV", f"0 1 {implicit_port} {host}",
                f"mail clients find {implicit} (implicit TLS) here (RFC 6186, RFC 8314 §5.1)",
                required=False, kind="srv"))
        else:
            records.append(_null_srv(implicit, domain, "Mailkeep has no listener for it"))
        if starttls_port is not None and (starttls == "submission" or implicit_port is None):
            priority = 10 if implicit_port is not None else 0
            records.append(DnsRecord(
                f"_{starttls}._tcp.{domain}", "SRV", f"{priority} 1 {starttls_port} {host}",
                f"{starttls} with STARTTLS, for clients without {implicit} "
                "(RFC 6186 §3.4: the lower priority value is tried first)",
                required=False, kind="srv"))
        else:
            reason = ("clients use " + implicit + " instead (RFC 8314 §4.1)"
                      if starttls_port is not None else "Mailkeep has no listener for it")
            records.append(_null_srv(starttls, domain, reason))
    return records


def _null_srv(service: str, domain: str, reason: str) -> DnsRecord:
    return DnsRecord(f"_{service}._tcp.{domain}", "SRV", "0 0 0 .",
                     f"{service}: not offered, {reason} (target \".\": RFC 6186 §4)",
                     required=False, kind="srv")


def _caa_records(config: Config, name: str) -> list[DnsRecord]:
    return [DnsRecord(name, "CAA", f"0 issue {_quoted(issuer)}",
                      f"CAA: only {issuer} may issue certificates for {name} (RFC 8659 §4.2)",
                      required=False, kind="caa")
            for issuer in config.dns.caa_issuers]


# -- notes ------------------------------------------------------------------------------

def domain_notes(config: Config, domain: str, *,
                 dkim_keys: Sequence[DkimPublication] = ()) -> list[str]:
    """What the records of ``domain`` leave out, and why, for the person publishing them."""
    notes = []
    if not is_public_name(domain):
        notes.append(f"{display_domain(domain)} is not a public domain name: these records "
                     "cannot be published on the Internet (fine for a test setup)")
    if not any(k.active for k in dkim_keys):
        notes.append(f"{display_domain(domain)} has no DKIM keys: create them with "
                     f"'mailkeep dkim keygen {domain}'")
    return notes


def host_notes(config: Config, *, tls_certificates: Sequence[bytes] = ()) -> list[str]:
    """What the server's own records leave out, and why."""
    notes = []
    if not is_public_name(config.hostname):
        notes.append(f"hostname {config.hostname!r} is not a public name: set hostname to "
                     "the server's name in DNS, such as mail.example.com")
    if not public_addresses(config):
        notes.append("no public address known: no A/AAAA or PTR records. Set [dns] ipv4 "
                     "and ipv6 to the server's public addresses")
    if not tls_certificates:
        notes.append("no certificate file found: no TLSA record (start the server once, "
                     "or configure [tls] or [acme])")
    if _first_port(config, ("https",), "implicit") is None:
        notes.append("no https listener: no MTA-STS or autodiscover records (MTA-STS needs "
                     "the policy served on port 443)")
    return notes


def zone_notes(config: Config, domain: str, *, dkim_keys: Sequence[DkimPublication] = (),
               tls_certificates: Sequence[bytes] = ()) -> list[str]:
    """:func:`domain_notes` and :func:`host_notes` together (what
    :func:`expected_records` leaves out)."""
    return (domain_notes(config, domain, dkim_keys=dkim_keys)
            + host_notes(config, tls_certificates=tls_certificates))


# -- output -----------------------------------------------------------------------------

def zone_text(records: Sequence[DnsRecord], *, notes: Sequence[str] = (),
              title: str | None = None) -> str:
    """The records as a BIND-style zone-file snippet: a ``;`` comment before each record,
    owner names absolute, long TXT values as several strings in parentheses."""
    lines = []
    if title:
        lines.append(f"; {title}")
    for note in notes:
        lines.append(f"; NOTE: {note}")
    if lines:
        lines.append("")
    for record in records:
        label = "" if record.required else "(recommended) "
        lines.append(f"; {record.kind}: {label}{record.comment}")
        lines.append(record.zone_line())
    return "\n".join(lines) + "\n"


def records_json(records: Sequence[DnsRecord], *, notes: Sequence[str] = ()) -> str:
    """The records as a JSON document: ``{"records": [...], "notes": [...]}``."""
    return json.dumps({"records": [r.to_json() for r in records], "notes": list(notes)},
                      indent=2, ensure_ascii=False) + "\n"


# -- inputs from the data directory (these read files) ------------------------------------

def dkim_publications(keys: DkimKeys, domain: str) -> list[DkimPublication]:
    """The DKIM records ``domain`` must publish (active selectors first). Raises
    DkimKeyError if the key files are damaged."""
    selectors = {s.dns_name: s for s in keys.selectors(domain)}
    publications = []
    for name, value in keys.dns_records(domain):
        selector = selectors[name]
        publications.append(DkimPublication(selector.name, name, value,
                                            selector.status == "active", selector.algorithm))
    return publications


def served_certificate_files(config: Config) -> list[Path]:
    """The certificate files the TLS listeners serve, chosen as the server chooses them
    (mailkeep.servers.tls): ``[tls] cert``; else, with [acme] on, the ACME certificate
    in use of each key type, or the self-signed one of a type ACME has not issued yet;
    else the self-signed ones in data_dir/tls. Files that do not exist are left out;
    nothing is created."""
    self_signed = {kind: config.tls_dir / f"selfsigned-{kind}.pem" for kind in ("ecdsa", "rsa")}
    if config.tls.cert is not None:
        candidates = [Path(config.tls.cert)]
    elif config.acme.enabled:
        from mailkeep.acme.storage import AcmeStorage

        storage = AcmeStorage(config.data_dir)
        issued = {kind: storage.current(kind) for kind in config.acme.key_types}
        if any(issued.values()):
            candidates = [stored.cert_file if stored is not None else self_signed[kind]
                          for kind, stored in issued.items() if stored or kind in self_signed]
        else:
            candidates = list(self_signed.values())
    else:
        candidates = list(self_signed.values())
    return [path for path in candidates if path.is_file()]


def load_certificate_der(path: Path) -> bytes:
    """The first (leaf) certificate of a PEM file, as DER. ValueError if there is none;
    OSError if the file cannot be read."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    with open(path, "rb") as handle:
        data = handle.read(MAX_CERT_FILE_BYTES + 1)
    if len(data) > MAX_CERT_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_CERT_FILE_BYTES} bytes")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path}: no PEM certificate ({exc})") from None
    return certificates[0].public_bytes(Encoding.DER)


def local_records(config: Config, domain: str) -> tuple[list[DnsRecord], list[str]]:
    """:func:`expected_records` and :func:`zone_notes` of ``domain``, with the DKIM keys
    and served certificates read from the data directory (what ``mailkeep dns records``
    prints for one domain). Raises DkimKeyError if the DKIM keys are damaged."""
    keys = dkim_publications(DkimKeys.for_data_dir(config.data_dir), domain)
    certificates = served_certificates(config)
    return (expected_records(config, domain, dkim_keys=keys, tls_certificates=certificates),
            zone_notes(config, domain, dkim_keys=keys, tls_certificates=certificates))


def served_certificates(config: Config) -> list[bytes]:
    """The leaf certificates (DER) of :func:`served_certificate_files`; unreadable files
    are skipped (the checker reports what the listeners really serve)."""
    certificates = []
    for path in served_certificate_files(config):
        try:
            certificates.append(load_certificate_der(path))
        except (OSError, ValueError):
            continue
    return certificates
