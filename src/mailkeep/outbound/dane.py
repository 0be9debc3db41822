"""DANE for SMTP (RFC 7672): TLSA lookup for an MX host and verification of its certificate.

A destination that publishes DNSSEC-signed TLSA records for its MX hosts tells senders
two things: TLS is mandatory (no delivery in cleartext, no downgrade by a stripped
STARTTLS), and which certificate or trust anchor the server must present. The scheduler
uses this module in two steps:

1. :func:`lookup_tlsa` for each MX host, after :func:`~mailkeep.outbound.mx.resolve_mx`.
   Its result's ``tls_level`` says what to do with the host (RFC 7672 §2.2):

   - ``"dane"``: secure, usable TLSA records: TLS required, certificate checked against
     them with :func:`dane_verifier`;
   - ``"encrypt"``: secure TLSA records but none usable (only PKIX-TA/PKIX-EE, unknown
     parameters): TLS required, no authentication (§2.2, §3.1.3);
   - ``"may"``: no DANE (insecure or securely denied records, or the MX/address answers
     were not validated): opportunistic TLS as usual, or whatever MTA-STS says;
   - ``"defer"``: the TLSA lookup failed (SERVFAIL, a bogus answer, a timeout): the host
     must not be used now, not even in cleartext, since an attacker can cause exactly
     that failure (§2.2). Try another host, or later.

2. :func:`dane_verifier` gives the SMTP client a ``verify_peer(ssl_object)`` callback to
   run after the TLS handshake (made with certificate verification off, since the checks
   are these instead: ``ssl.CERT_NONE``, ``check_hostname=False``, SNI set to the result's
   ``base_domain``, RFC 7672 §8.1). It returns None if the server is authenticated,
   otherwise the reason, which the client logs before quitting the session.

Certificate checks (RFC 7672 §3.1, RFC 7671 §5):

- DANE-EE(3): the server's own certificate (selector 0) or its public key (selector 1)
  matches; names and dates are not checked (RFC 7672 §3.1.1, RFC 7671 §5.1).
- DANE-TA(2): a certificate the server sent (or, for "2 1 0", the bare public key in the
  record) matches; the server certificate must chain up to it with valid signatures, the
  certificates below the anchor must be within their validity period, intermediates
  must be CAs, and the server certificate must carry one of the reference names (RFC
  7672 §3.1.2, §3.2.2; RFC 7671 §5.2).
- PKIX-TA(0) and PKIX-EE(1) are not used with SMTP (RFC 7672 §3.1.3) and are ignored.

The DNSSEC status comes from the resolver's AD flag (see :mod:`mailkeep.outbound.dns`):
DANE is only as good as the path to a validating resolver on this host.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from mailkeep.logfmt import log
from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, query
from mailkeep.outbound.mx import MxHost

logger = logging.getLogger("mailkeep.outbound")

# RFC 6698 §7.2-7.4 registries.
PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
SELECTOR_CERT, SELECTOR_SPKI = 0, 1
MATCH_FULL, MATCH_SHA256, MATCH_SHA512 = 0, 1, 2

_DIGEST_SIZE = {MATCH_SHA256: 32, MATCH_SHA512: 64}
_USAGE_NAMES = {PKIX_TA: "PKIX-TA", PKIX_EE: "PKIX-EE", DANE_TA: "DANE-TA", DANE_EE: "DANE-EE"}

#: Most TLSA records used for one host; more is a misconfiguration (each costs hashing).
MAX_TLSA_RECORDS = 32
#: Most certificates of the server's chain examined.
MAX_PEER_CHAIN = 10
#: Longest issuer path from the server certificate to a DANE-TA trust anchor.
MAX_CHAIN_DEPTH = 8

TlsLevel = Literal["dane", "encrypt", "may", "defer"]


@dataclass(frozen=True)
class TlsaRecord:
    """One TLSA record (RFC 6698 §2.1): usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @property
    def usable(self) -> bool:
        """RFC 7672 §3.1.3: only DANE-TA and DANE-EE apply to SMTP; RFC 6698 §2.1 and
        RFC 7671 §5: unknown selectors or matching types, and digests of the wrong length,
        are unusable."""
        if self.usage not in (DANE_TA, DANE_EE):
            return False
        if self.selector not in (SELECTOR_CERT, SELECTOR_SPKI):
            return False
        if self.mtype == MATCH_FULL:
            return bool(self.data)
        return len(self.data) == _DIGEST_SIZE.get(self.mtype, -1)


def usable_records(records: Iterable[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    """The records that can authenticate an SMTP server. If a secure TLSA record set has
    none, the host still gets mandatory, unauthenticated TLS (RFC 7672 §2.2)."""
    return tuple(r for r in records if r.usable)


@dataclass(frozen=True)
class TlsaResult:
    """The outcome of a TLSA lookup for one host (see ``tls_level``).

    ``records``: all records found (usable or not) at ``base_domain``, the TLSA base
    domain they came from (use it as the TLS SNI name, RFC 7672 §8.1). ``secure``: the
    records were DNSSEC-validated. ``error``: why the lookup failed (then ``tls_level``
    is "defer"). ``names``: the reference identifiers a DANE-TA certificate must match
    (RFC 7672 §3.2.2).
    """

    records: tuple[TlsaRecord, ...]
    secure: bool
    error: str | None = None
    base_domain: str = ""
    names: tuple[str, ...] = ()

    @property
    def usable(self) -> tuple[TlsaRecord, ...]:
        return usable_records(self.records) if self.secure else ()

    @property
    def tls_level(self) -> TlsLevel:
        if self.error is not None:
            return "defer"
        if not self.secure or not self.records:
            return "may"
        return "dane" if self.usable else "encrypt"


def _tlsa_name(base: str, port: int) -> str:
    return f"_{port}._tcp.{base}"  # RFC 6698 §3, RFC 7672 §2.2.2


async def lookup_tlsa(resolver: dns.asyncresolver.Resolver, host: str | MxHost,
                      port: int = 25, *, next_hop: str | None = None,
                      max_records: int = MAX_TLSA_RECORDS) -> TlsaResult:
    """Look up the TLSA records of ``host`` for SMTP on ``port`` (RFC 7672 §2.2).

    Given an :class:`MxHost`, no lookup is made unless its MX and address answers were
    validated (``host.secure``, RFC 7672 §2.2.1-2.2.2); if its name was a CNAME alias, the
    expanded name is tried first and the original name second (§2.2.3). Given a plain
    name (a relay host), its address records are looked up first for the same checks.
    ``next_hop``, the recipient domain, is added to the names a DANE-TA certificate may
    carry (§3.2.2). The lookup never raises for DNS failures: see ``TlsaResult.error``.
    """
    if isinstance(host, MxHost):
        original, expanded, secure_path = host.name, host.expanded_name, host.secure
    else:
        original, expanded, secure_path, error = await _relay_host_path(resolver, host)
        if error is not None:
            return TlsaResult(records=(), secure=False, error=error,
                              base_domain=original.rstrip(".").lower())
    original = original.rstrip(".").lower()
    candidates = [original]
    if expanded and expanded.rstrip(".").lower() != original:
        candidates.insert(0, expanded.rstrip(".").lower())
    extra = [next_hop.rstrip(".").lower()] if next_hop else []
    names = tuple(dict.fromkeys([*candidates, *extra]))
    if not secure_path:
        # RFC 7672 §2.2.2: insecure MX or address records mean no DANE for the host.
        return TlsaResult(records=(), secure=False, base_domain=original, names=names)
    for position, base in enumerate(candidates):
        last = position == len(candidates) - 1
        qname = _tlsa_name(base, port)
        try:
            answer = await query(resolver, qname, "TLSA")
        except DnsNameError as exc:
            if exc.secure or not last:
                continue  # RFC 7672 §2.2.3: no TLSA at the expanded name, try the original
            return TlsaResult(records=(), secure=False, base_domain=base, names=names)
        except DnsTemporaryError as exc:
            # RFC 7672 §2.2: a failed lookup may be an attacker hiding the records: the
            # host is unusable for now (no fallback to the next name, nor to cleartext).
            log(logger, "TLSA lookup failed", logging.WARNING, event="dane-lookup-failed",
                host=original, name=qname, error=str(exc))
            return TlsaResult(records=(), secure=False, error=str(exc), base_domain=base,
                              names=names)
        if not answer.secure or not answer.records:
            if not last:
                continue
            # Insecure records are ignored, and a secure NODATA means none (RFC 7672 §2.2).
            return TlsaResult(records=(), secure=answer.secure, base_domain=base, names=names)
        records = tuple(TlsaRecord(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))
                        for r in answer.records)
        if len(records) > max_records:
            log(logger, "TLSA records beyond the limit ignored", logging.WARNING,
                event="dane-too-many", host=original, found=len(records), limit=max_records)
            records = records[:max_records]
        return TlsaResult(records=records, secure=True, base_domain=base, names=names)
    return TlsaResult(records=(), secure=True, base_domain=candidates[-1], names=names)


async def _relay_host_path(resolver: dns.asyncresolver.Resolver, host: str
                           ) -> tuple[str, str | None, bool, str | None]:
    """For a host named directly (a relay host, not from an MX answer): whether its
    address answer was validated, and its CNAME expansion. (name, expanded, secure,
    temporary error)."""
    try:
        answer = await query(resolver, host, "A")
        if not answer.records:
            answer = await query(resolver, host, "AAAA")
    except DnsNameError:
        return host, None, False, None  # no such host: the connection fails anyway
    except DnsTemporaryError as exc:
        return host, None, False, str(exc)
    return host, answer.name if answer.aliased else None, answer.secure, None


# -- certificates ----------------------------------------------------------------------


def peer_chain_der(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent, server certificate first, as DER.

    This is OpenSSL's SSL_get_peer_cert_chain, which the ssl module exposes as
    ``get_unverified_chain`` (public from Python 3.13, on the internal ``_sslobj`` since
    3.10): no trust checks have been applied, which is what DANE needs. Where neither
    exists, only the server certificate is available, which suffices for DANE-EE.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        chain = getter() or []
        return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                for c in chain]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the DER element at ``offset``."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def spki_der(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo of a DER certificate, byte for byte as in the certificate
    (RFC 6698 §1.1.3: selector 1 matches these bytes; re-encoding the key could differ).

    RFC 5280 §4.1: Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    OPTIONAL, serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo...
    """
    _, cert_start, _ = _der_element(cert_der, 0)
    tag, position, tbs_end = _der_element(cert_der, cert_start)
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, _, end = _der_element(cert_der, position)
    if tag == 0xA0:  # explicit [0] version
        position = end
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        _, _, position = _der_element(cert_der, position)
    tag, _, end = _der_element(cert_der, position)
    if tag != 0x30 or end > tbs_end:
        raise ValueError("no SubjectPublicKeyInfo")
    return cert_der[position:end]


def _matches(record: TlsaRecord, cert_der: bytes, spki: bytes) -> bool:
    """RFC 6698 §2.1.2-2.1.3: select the certificate or its key, hash, compare."""
    selected = cert_der if record.selector == SELECTOR_CERT else spki
    if record.mtype == MATCH_SHA256:
        selected = hashlib.sha256(selected).digest()
    elif record.mtype == MATCH_SHA512:
        selected = hashlib.sha512(selected).digest()
    return selected == record.data


def _signed_by(cert: x509.Certificate, key: object) -> bool:
    """True if ``cert``'s signature verifies with ``key`` (any algorithm we can check)."""
    try:
        signature, tbs = cert.signature, cert.tbs_certificate_bytes
        if isinstance(key, rsa.RSAPublicKey):
            padding = cert.signature_algorithm_parameters
            algorithm = cert.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(signature, tbs, padding, algorithm)  # type: ignore[arg-type]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, tbs, cert.signature_algorithm_parameters)  # type: ignore[arg-type]
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, tbs)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    try:
        key = issuer.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return False
    return _signed_by(child, key)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _presented_names(cert: x509.Certificate) -> list[str]:
    """DNS names in subjectAltName; the subject CN only when there are none (RFC 6125
    §6.4.4, as RFC 7672 §3.2.3 allows)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    if dns_names:
        return [n.lower().rstrip(".") for n in dns_names]
    return [str(a.value).lower().rstrip(".")
            for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def name_matches(presented: str, reference: str) -> bool:
    """RFC 7672 §3.2.3 / RFC 6125 §6.4.3: exact match, or a wildcard that is the whole
    left-most label and stands for exactly one label."""
    presented = presented.lower().rstrip(".")
    reference = reference.lower().rstrip(".")
    if presented == reference:
        return True
    if presented.startswith("*.") and "*" not in presented[2:]:
        label, _, rest = reference.partition(".")
        return bool(label) and bool(rest) and rest == presented[2:]
    return False


def _not_valid(cert: x509.Certificate, now: datetime.datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}"
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
    return None


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except ValueError:
        return "(unprintable subject)"


def _dane_ta(chain: list[x509.Certificate], ders: list[bytes], spkis: list[bytes],
             records: Sequence[TlsaRecord], names: Sequence[str],
             now: datetime.datetime) -> str | None:
    """RFC 7671 §5.2: the server certificate chains to a DANE-TA anchor and carries one of
    ``names``. None on success, else why not."""
    anchors = {i for i in range(len(chain))
               if any(_matches(r, ders[i], spkis[i]) for r in records)}
    # "2 1 0" carries the anchor's whole public key: the server need not send the anchor.
    bare_keys = []
    for record in records:
        if record.selector == SELECTOR_SPKI and record.mtype == MATCH_FULL:
            try:
                bare_keys.append(serialization.load_der_public_key(record.data))
            except (ValueError, UnsupportedAlgorithm):
                pass
    path = [0]
    found = 0 in anchors
    while not found:
        current = chain[path[-1]]
        if any(_signed_by(current, key) for key in bare_keys):
            break
        issuers = [i for i in range(len(chain)) if i not in path and _issued(current, chain[i])]
        anchor = next((i for i in issuers if i in anchors), None)
        if anchor is not None:
            path.append(anchor)
            found = True
            break
        onward = next((i for i in issuers if _is_ca(chain[i])), None)
        if onward is None or len(path) >= MAX_CHAIN_DEPTH:
            return ("the server certificate does not chain to a DANE-TA trust anchor "
                    f"(chain: {' <- '.join(_subject(chain[i]) for i in path)})")
        path.append(onward)
    below_anchor = path[:-1] if found else path
    for i in below_anchor:
        problem = _not_valid(chain[i], now)
        if problem:
            return f"certificate {_subject(chain[i])} is {problem}"
    presented = _presented_names(chain[0])
    if not any(name_matches(p, r) for p in presented for r in names):
        return ("the server certificate chains to a DANE-TA trust anchor but names "
                f"{', '.join(presented) or 'nothing'}, not {', '.join(names)} "
                "(RFC 7672 §3.2.2)")
    return None


def verify_chain(chain_der: Sequence[bytes], records: Iterable[TlsaRecord], *,
                 names: Sequence[str], now: datetime.datetime | None = None) -> str | None:
    """Check a server's certificate chain (server certificate first) against TLSA records.

    None if some usable record authenticates it, else a one-line reason for the log.
    """
    usable = usable_records(records)
    if not usable:
        return "no usable TLSA record (only PKIX-TA/PKIX-EE or unknown parameters)"
    if not chain_der:
        return "the server sent no certificate"
    ders = list(chain_der[:MAX_PEER_CHAIN])
    try:
        leaf_spki = spki_der(ders[0])
    except ValueError as exc:
        return f"the server certificate cannot be parsed: {exc}"
    # RFC 7672 §3.1.1: DANE-EE authenticates the key alone; no name or date checks.
    if any(_matches(r, ders[0], leaf_spki) for r in usable if r.usage == DANE_EE):
        return None
    problems = []
    ta_records = [r for r in usable if r.usage == DANE_TA]
    if ta_records:
        chain: list[x509.Certificate] = []
        spkis: list[bytes] = []
        for der in ders:
            try:
                chain.append(x509.load_der_x509_certificate(der))
                spkis.append(spki_der(der))
            except ValueError as exc:
                if not chain:
                    return f"the server certificate cannot be parsed: {exc}"
                break  # use the part of the chain before the bad certificate
        moment = now or datetime.datetime.now(datetime.UTC)
        try:
            problem = _dane_ta(chain, ders[: len(chain)], spkis, ta_records, names, moment)
        except ValueError as exc:  # cryptography parses extensions and names lazily
            problem = f"the server's certificate chain cannot be checked: {exc}"
        if problem is None:
            return None
        problems.append(problem)
    shown = ", ".join(f"{_USAGE_NAMES[r.usage]} {r.usage} {r.selector} {r.mtype} "
                      f"{r.data.hex()[:16]}..." for r in usable[:4])
    digest = hashlib.sha256(leaf_spki).hexdigest()
    text = (f"no TLSA record matches the server certificate (its public key's SHA-256 is "
            f"{digest}; records: {shown}{', ...' if len(usable) > 4 else ''})")
    return "; ".join([text, *problems])


def dane_verifier(records: Iterable[TlsaRecord], *, names: Sequence[str],
                  clock: Callable[[], datetime.datetime] | None = None
                  ) -> Callable[[ssl.SSLObject], str | None]:
    """A ``verify_peer`` callback for the SMTP client: checks the server's chain against
    ``records`` after the handshake (see :func:`verify_chain`); ``names`` are the
    reference identifiers for DANE-TA (``TlsaResult.names``).

    Raises ValueError if no record is usable: that host gets level "encrypt" instead.
    """
    usable = usable_records(records)
    if not usable:
        raise ValueError("no usable TLSA record: use mandatory unauthenticated TLS "
                         "(RFC 7672 §2.2) instead of a DANE verifier")
    if not names:
        raise ValueError("names: the TLSA base domain at least")
    reference = tuple(n.rstrip(".").lower() for n in names)

    def verify_peer(ssl_object: ssl.SSLObject) -> str | None:
        try:
            return verify_chain(peer_chain_der(ssl_object), usable, names=reference,
                                now=clock() if clock else None)
        except Exception as exc:
            # Fail closed: an unforeseen problem with the peer's certificates must end the
            # session (RFC 7672 §2.2), with a reason in the log, not a traceback.
            log(logger, "DANE verification error", logging.ERROR, event="dane-error",
                names=",".join(reference), error=repr(exc))
            return f"DANE verification failed: {exc!r}"

    return verify_peer
