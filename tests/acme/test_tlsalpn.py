"""The TLS-ALPN-01 response certificate (RFC 8737 §3), checked in a real handshake."""

from __future__ import annotations

import asyncio
import hashlib
import ssl

from cryptography import x509

from mailkeep.acme.tlsalpn import (
    ACME_IDENTIFIER_OID,
    ACME_TLS_PROTOCOL,
    acme_identifier_value,
    challenge_certificate,
    challenge_context,
)

KEY_AUTHORIZATION = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_identifier_value_is_a_der_octet_string_of_the_digest():
    value = acme_identifier_value(KEY_AUTHORIZATION)
    digest = hashlib.sha256(KEY_AUTHORIZATION.encode()).digest()
    assert value == bytes([0x04, 32]) + digest


def _check_certificate(cert: x509.Certificate, name: str) -> None:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [name]
    assert len(list(san.value)) == 1  # "no other entries"
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert ext.value.value == acme_identifier_value(KEY_AUTHORIZATION)


def test_certificate_has_only_the_name_and_the_critical_extension():
    cert_pem, key_pem = challenge_certificate("mx.example.org", KEY_AUTHORIZATION)
    _check_certificate(x509.load_pem_x509_certificate(cert_pem), "mx.example.org")
    assert b"PRIVATE KEY" in key_pem


async def test_handshake_offers_acme_tls_1_and_the_challenge_certificate():
    server_context = challenge_context("mx.example.org", KEY_AUTHORIZATION)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0,
                                        ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # self-signed by design; the CA checks the extension
    client.set_alpn_protocols([ACME_TLS_PROTOCOL])
    try:
        async with asyncio.timeout(10):
            _reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="mx.example.org")
            sslobj = writer.get_extra_info("ssl_object")
            assert sslobj.selected_alpn_protocol() == ACME_TLS_PROTOCOL
            assert sslobj.version() in ("TLSv1.2", "TLSv1.3")
            der = sslobj.getpeercert(binary_form=True)
            _check_certificate(x509.load_der_x509_certificate(der), "mx.example.org")
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
