"""DANE (RFC 7672): TLSA lookups through a validating Unbound, and certificate checks on
real TLS handshakes with a local server, as the SMTP client will make them."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.certs import IssuedCert, TestCA
from tests.support.dns import ThrowawayDNS, Zone

from mailkeep.outbound.dane import (
    TlsaRecord,
    TlsaResult,
    dane_verifier,
    lookup_tlsa,
    name_matches,
    peer_chain_der,
    spki_der,
    usable_records,
    verify_chain,
)
from mailkeep.outbound.dns import make_resolver
from mailkeep.outbound.mx import resolve_mx
from mailkeep.servers.tlsio import open_tls_connection


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Pki:
    ca: TestCA
    mx1: IssuedCert        # for mx1.dane.test, DANE-EE
    ta: IssuedCert         # for mx-ta.dane.test, DANE-TA
    expired: IssuedCert    # for mx-ta.dane.test, expired yesterday
    other_ca: TestCA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = TestCA.create(root / "ca")
    return Pki(ca=ca, mx1=ca.issue(["mx1.dane.test"]), ta=ca.issue(["mx-ta.dane.test"]),
               expired=ca.issue(["mx-ta.dane.test"], stem="expired", expired=True),
               other_ca=TestCA.create(root / "other", name="Other CA"))


def dane_zone(pki: Pki) -> str:
    ee = sha256(pki.mx1.spki_der)
    return f"""
@                   MX 10 mx1
@                   MX 20 mx-ta
mx1                 A 127.0.0.1
_25._tcp.mx1        TLSA 3 1 1 {ee}
mx-ta               A 127.0.0.1
_25._tcp.mx-ta      TLSA 2 0 1 {sha256(pki.ca.cert_der)}
mx-wrong            A 127.0.0.1
_25._tcp.mx-wrong   TLSA 3 1 1 {"00" * 32}
mx-pkix             A 127.0.0.1
_25._tcp.mx-pkix    TLSA 0 0 1 {sha256(pki.ca.cert_der)}
_25._tcp.mx-pkix    TLSA 1 1 1 {ee}
mx-none             A 127.0.0.1
mx-alias            CNAME mx-target
mx-target           A 127.0.0.1
_25._tcp.mx-target  TLSA 3 1 1 {ee}
_25._tcp.mx-alias   TLSA 3 1 1 {"11" * 32}
mx-alias2           CNAME mx-target2
mx-target2          A 127.0.0.1
_25._tcp.mx-alias2  TLSA 3 1 1 {ee}
mx-tlsacname        A 127.0.0.1
_25._tcp.mx-tlsacname CNAME _25._tcp.mx1
mx-insecure-tlsa    A 127.0.0.1
_25._tcp.mx-insecure-tlsa CNAME _25._tcp.mx.plain.test.
mx-bogus-tlsa       A 127.0.0.1
_25._tcp.mx-bogus-tlsa CNAME _25._tcp.mx.bogus.test.
mx-lame-tlsa        A 127.0.0.1
_25._tcp.mx-lame-tlsa CNAME _25._tcp.mx.lame.test.
toplain             MX 10 mx.plain.test.
_587._tcp.mx1       TLSA 3 1 1 {ee}
"""


@pytest.fixture(scope="module")
def dns_server(pki: Pki) -> Iterator[ThrowawayDNS]:
    ee = sha256(pki.mx1.spki_der)
    zones = [
        Zone("dane.test", dane_zone(pki), signed=True),
        # Correct records, but in an unsigned zone: they must not be used.
        Zone("plain.test", f"mx A 127.0.0.1\n_25._tcp.mx TLSA 3 1 1 {ee}"),
        Zone("bogus.test", f"mx A 127.0.0.1\n_25._tcp.mx TLSA 3 1 1 {ee}", signed=True,
             expired=True),
    ]
    with ThrowawayDNS(zones, lame_zones=["lame.test"]) as server:
        yield server


@pytest.fixture
def resolver(dns_server: ThrowawayDNS):
    host, port = dns_server.resolver_address
    return make_resolver([host], port, timeout=5.0)


# -- a real TLS server ---------------------------------------------------------------------


class _Client(asyncio.Protocol):
    pass


@pytest.fixture
async def tls_server() -> AsyncIterator:
    """start(cert_file, key_file) -> port of a TLS server on 127.0.0.1 that presents it."""
    servers: list[asyncio.Server] = []

    async def start(cert_file: Path, key_file: Path) -> int:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read()
            except (ConnectionError, ssl.SSLError):
                pass
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def handshake(port: int, server_name: str) -> ssl.SSLObject:
    """A TLS handshake the way the SMTP client makes one for DANE: no PKIX checks (the
    TLSA records decide), SNI set to the TLSA base domain (RFC 7672 §8.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    transport, _ = await open_tls_connection(_Client, "127.0.0.1", port, context,
                                             server_hostname=server_name,
                                             handshake_timeout=5.0)
    sslobj = transport.get_extra_info("ssl_object")
    transport.abort()
    return sslobj


def only_leaf(directory: Path, issued: IssuedCert) -> Path:
    """A copy of ``issued``'s certificate file without the CA (a server sending no chain)."""
    path = directory / f"{issued.cert_file.stem}-leaf.pem"
    path.write_bytes(x509.load_der_x509_certificate(issued.cert_der)
                     .public_bytes(serialization.Encoding.PEM))
    return path


# -- TLSA lookups ----------------------------------------------------------------------------


async def test_secure_tlsa_for_mx_host_means_dane(resolver, pki: Pki) -> None:
    mx = await resolve_mx(resolver, "dane.test")
    host = mx.hosts[0]
    assert host.name == "mx1.dane.test" and host.secure
    result = await lookup_tlsa(resolver, host, next_hop="dane.test")
    assert result.tls_level == "dane" and result.secure and result.error is None
    assert result.records == (TlsaRecord(3, 1, 1, bytes.fromhex(sha256(pki.mx1.spki_der))),)
    assert result.base_domain == "mx1.dane.test"
    assert result.names == ("mx1.dane.test", "dane.test")


async def test_port_selects_the_tlsa_name(resolver) -> None:
    submission = await lookup_tlsa(resolver, "mx1.dane.test", 587)
    assert submission.tls_level == "dane"
    other = await lookup_tlsa(resolver, "mx1.dane.test", 465)
    assert other.tls_level == "may" and other.secure  # securely nonexistent


async def test_only_pkix_records_mean_encrypt_without_authentication(resolver) -> None:
    result = await lookup_tlsa(resolver, "mx-pkix.dane.test")
    assert result.secure and len(result.records) == 2
    assert result.usable == () and result.tls_level == "encrypt"
    with pytest.raises(ValueError, match="no usable TLSA record"):
        dane_verifier(result.records, names=result.names)


async def test_no_tlsa_records_means_no_dane(resolver) -> None:
    result = await lookup_tlsa(resolver, "mx-none.dane.test")
    assert result.records == () and result.tls_level == "may"


async def test_tlsa_in_unsigned_zone_is_not_used(resolver) -> None:
    # The MX host in the unsigned zone: not even looked up (RFC 7672 §2.2.2).
    mx = await resolve_mx(resolver, "toplain.dane.test")
    assert mx.secure and not mx.hosts[0].secure
    result = await lookup_tlsa(resolver, mx.hosts[0])
    assert result.records == () and result.tls_level == "may"
    # Named directly, its address is insecure as well: no DANE.
    direct = await lookup_tlsa(resolver, "mx.plain.test")
    assert direct.tls_level == "may"
    # A secure host whose TLSA name leads (CNAME) into the unsigned zone: insecure TLSA.
    leading = await lookup_tlsa(resolver, "mx-insecure-tlsa.dane.test")
    assert not leading.secure and leading.tls_level == "may"


async def test_bogus_or_failing_tlsa_lookup_defers_the_host(resolver) -> None:
    bogus = await lookup_tlsa(resolver, "mx-bogus-tlsa.dane.test")
    assert bogus.tls_level == "defer" and "SERVFAIL" in (bogus.error or "")
    lame = await lookup_tlsa(resolver, "mx-lame-tlsa.dane.test")
    assert lame.tls_level == "defer"


async def test_cname_expanded_name_is_tried_first(resolver, pki: Pki) -> None:
    mx_like = await lookup_tlsa(resolver, "mx-alias.dane.test")
    assert mx_like.base_domain == "mx-target.dane.test"
    assert mx_like.records[0].data == bytes.fromhex(sha256(pki.mx1.spki_der))
    assert mx_like.names[:2] == ("mx-target.dane.test", "mx-alias.dane.test")
    # Nothing at the expanded name: the original name's records apply (RFC 7672 §2.2.3).
    fallback = await lookup_tlsa(resolver, "mx-alias2.dane.test")
    assert fallback.base_domain == "mx-alias2.dane.test" and fallback.tls_level == "dane"


async def test_tlsa_records_behind_a_cname(resolver) -> None:
    result = await lookup_tlsa(resolver, "mx-tlsacname.dane.test")
    assert result.tls_level == "dane" and result.records[0].usage == 3


# -- certificate checks on real handshakes -----------------------------------------------------


async def test_dane_ee_spki_match_authenticates(resolver, pki: Pki, tls_server) -> None:
    result = await lookup_tlsa(resolver, "mx1.dane.test")
    port = await tls_server(pki.mx1.cert_file, pki.mx1.key_file)
    sslobj = await handshake(port, result.base_domain)
    verify = dane_verifier(result.records, names=result.names)
    assert verify(sslobj) is None
    # The chain the server sent, as sent: its certificate, then the CA.
    assert peer_chain_der(sslobj) == [pki.mx1.cert_der, pki.ca.cert_der]


async def test_dane_ee_ignores_names_and_dates(pki: Pki, tls_server) -> None:
    # The expired certificate for another name still authenticates by its key.
    port = await tls_server(pki.expired.cert_file, pki.expired.key_file)
    sslobj = await handshake(port, "mx1.dane.test")
    for selector, mtype, data in [(0, 1, sha256(pki.expired.cert_der)),
                                  (1, 2, hashlib.sha512(pki.expired.spki_der).hexdigest()),
                                  (0, 0, pki.expired.cert_der.hex())]:
        record = TlsaRecord(3, selector, mtype, bytes.fromhex(data))
        assert dane_verifier([record], names=["mx1.dane.test"])(sslobj) is None


async def test_mismatched_tlsa_is_refused_with_a_reason(resolver, pki: Pki, tls_server) -> None:
    result = await lookup_tlsa(resolver, "mx-wrong.dane.test")
    port = await tls_server(pki.mx1.cert_file, pki.mx1.key_file)
    sslobj = await handshake(port, result.base_domain)
    problem = dane_verifier(result.records, names=result.names)(sslobj)
    assert problem is not None
    assert "no TLSA record matches the server certificate" in problem
    assert sha256(pki.mx1.spki_der) in problem  # what the operator needs to fix it


async def test_dane_ta_on_the_ca_with_the_right_name(resolver, pki: Pki, tls_server) -> None:
    mx = await resolve_mx(resolver, "dane.test")
    ta_host = next(h for h in mx.hosts if h.name == "mx-ta.dane.test")
    result = await lookup_tlsa(resolver, ta_host, next_hop="dane.test")
    assert result.tls_level == "dane" and result.records[0].usage == 2
    port = await tls_server(pki.ta.cert_file, pki.ta.key_file)
    sslobj = await handshake(port, result.base_domain)
    assert dane_verifier(result.records, names=result.names)(sslobj) is None


async def test_dane_ta_refuses_a_certificate_for_another_name(resolver, pki: Pki,
                                                              tls_server) -> None:
    result = await lookup_tlsa(resolver, "mx-ta.dane.test")
    # Same CA, but the server presents mx1's certificate: the anchor alone is not enough.
    port = await tls_server(pki.mx1.cert_file, pki.mx1.key_file)
    sslobj = await handshake(port, result.base_domain)
    problem = dane_verifier(result.records, names=result.names)(sslobj)
    assert problem is not None and "names mx1.dane.test, not mx-ta.dane.test" in problem


async def test_dane_ta_checks_dates_below_the_anchor(pki: Pki, tls_server) -> None:
    record = TlsaRecord(2, 0, 1, bytes.fromhex(sha256(pki.ca.cert_der)))
    port = await tls_server(pki.expired.cert_file, pki.expired.key_file)
    sslobj = await handshake(port, "mx-ta.dane.test")
    problem = dane_verifier([record], names=["mx-ta.dane.test"])(sslobj)
    assert problem is not None and "expired on" in problem


async def test_dane_ta_needs_the_anchor_in_the_chain(pki: Pki, tls_server,
                                                     tmp_path: Path) -> None:
    port = await tls_server(only_leaf(tmp_path, pki.ta), pki.ta.key_file)
    sslobj = await handshake(port, "mx-ta.dane.test")
    assert peer_chain_der(sslobj) == [pki.ta.cert_der]
    by_digest = TlsaRecord(2, 0, 1, bytes.fromhex(sha256(pki.ca.cert_der)))
    problem = dane_verifier([by_digest], names=["mx-ta.dane.test"])(sslobj)
    assert problem is not None and "does not chain to a DANE-TA trust anchor" in problem
    # "2 1 0" carries the anchor's whole key: the leaf's signature is checked against it.
    ca_spki = spki_der(pki.ca.cert_der)
    bare_key = TlsaRecord(2, 1, 0, ca_spki)
    assert dane_verifier([bare_key], names=["mx-ta.dane.test"])(sslobj) is None
    other_key = TlsaRecord(2, 1, 0, spki_der(pki.other_ca.cert_der))
    assert dane_verifier([other_key], names=["mx-ta.dane.test"])(sslobj) is not None


async def test_pkix_records_never_authenticate(pki: Pki, tls_server) -> None:
    port = await tls_server(pki.mx1.cert_file, pki.mx1.key_file)
    sslobj = await handshake(port, "mx1.dane.test")
    pkix = TlsaRecord(1, 1, 1, bytes.fromhex(sha256(pki.mx1.spki_der)))
    ee = TlsaRecord(3, 1, 1, bytes(32))
    # The PKIX-EE record would match, but only the (wrong) DANE-EE record counts.
    assert dane_verifier([pkix, ee], names=["mx1.dane.test"])(sslobj) is not None


# -- the chain logic without TLS -------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool,
          names: list[str] | None = None) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm).public_bytes(serialization.Encoding.DER)


def test_dane_ta_through_an_intermediate_of_another_key_type() -> None:
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mid_key = ed25519.Ed25519PrivateKey.generate()
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("Root", root_key, "Root", root_key, ca=True)
    mid = _cert("Mid", mid_key, "Root", root_key, ca=True)
    leaf = _cert("mx.example", leaf_key, "Mid", mid_key, ca=False, names=["*.example"])
    anchor = TlsaRecord(2, 0, 1, hashlib.sha256(root).digest())
    assert verify_chain([leaf, mid, root], [anchor], names=["mx.example"]) is None
    # Wildcards stand for exactly one label.
    assert verify_chain([leaf, mid, root], [anchor], names=["a.mx.example"]) is not None
    # The intermediate as anchor (selector 1: its key) works too, the root need not be sent.
    mid_anchor = TlsaRecord(2, 1, 1, hashlib.sha256(spki_der(mid)).digest())
    assert verify_chain([leaf, mid], [mid_anchor], names=["mx.example"]) is None
    # An intermediate that is not a CA cannot issue certificates.
    fake_mid = _cert("Mid", mid_key, "Root", root_key, ca=False)
    problem = verify_chain([leaf, fake_mid, root], [anchor], names=["mx.example"])
    assert problem is not None and "does not chain" in problem
    # The chain order as sent does not matter, only the signatures.
    assert verify_chain([leaf, root, mid], [anchor], names=["mx.example"]) is None


def test_spki_bytes_are_the_certificates_own() -> None:
    for key in (rsa.generate_private_key(public_exponent=65537, key_size=2048),
                ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()):
        der = _cert("x", key, "x", key, ca=False)
        expected = key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        assert spki_der(der) == expected


def test_usable_records() -> None:
    good = [TlsaRecord(3, 1, 1, bytes(32)), TlsaRecord(2, 0, 2, bytes(64)),
            TlsaRecord(3, 0, 0, b"\x30\x00")]
    bad = [TlsaRecord(0, 0, 1, bytes(32)), TlsaRecord(1, 1, 1, bytes(32)),
           TlsaRecord(3, 1, 1, bytes(31)), TlsaRecord(3, 2, 1, bytes(32)),
           TlsaRecord(3, 1, 3, bytes(32)), TlsaRecord(4, 1, 1, bytes(32)),
           TlsaRecord(3, 1, 0, b"")]
    assert usable_records(good + bad) == tuple(good)
    assert TlsaResult(records=tuple(bad), secure=True).tls_level == "encrypt"
    assert TlsaResult(records=tuple(good), secure=False).tls_level == "may"
    assert TlsaResult(records=(), secure=False, error="x").tls_level == "defer"


def test_name_matching() -> None:
    assert name_matches("MX.Example.", "mx.example")
    assert name_matches("*.example", "mx.example")
    assert not name_matches("*.example", "example")
    assert not name_matches("*.example", "a.b.example")
    assert not name_matches("m*.example", "mx.example")
    assert not name_matches("*.*.example", "a.b.example")


def test_verify_chain_reports_unusable_input() -> None:
    record = TlsaRecord(3, 1, 1, bytes(32))
    assert verify_chain([], [record], names=["x"]) == "the server sent no certificate"
    assert "cannot be parsed" in (verify_chain([b"\x30\x03\x02\x01\x00"], [record],
                                               names=["x"]) or "")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=3),
       st.sampled_from([TlsaRecord(3, 1, 1, bytes(32)), TlsaRecord(2, 0, 1, bytes(32)),
                        TlsaRecord(2, 1, 0, b"\x30\x03\x02\x01\x00")]))
def test_garbage_certificates_give_a_reason_not_an_exception(chain, record) -> None:
    problem = verify_chain(chain, [record], names=["mx.example"])
    assert isinstance(problem, str) and problem
