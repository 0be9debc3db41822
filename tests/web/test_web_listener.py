"""The HTTP(S) listener itself (mailkeep.web.server), in this process on real sockets:
TLS handshakes and the certificate each one gets, security headers on every answer,
refusals before any TLS is spent, and which Host gets which document.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import plistlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import defusedxml.ElementTree as SafeET
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.support.certs import IssuedCert, TestCA

from mailkeep.bans import BanList, BanPolicy
from mailkeep.config import Config, parse_config_text
from mailkeep.dnsrecords import mta_sts_policy_text
from mailkeep.servers.daemon import bind_socket
from mailkeep.servers.tls import CertificatePair, TLSManager
from mailkeep.web import server as web_server
from mailkeep.web.challenges import ChallengeStore
from mailkeep.web.server import WebContext, WebListener

#: Every wait in these tests ends by then.
TIMEOUT = 10.0

CONFIG = """
hostname = "mx.example.test"

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:10993"

[[listeners]]
protocol = "submissions"
address = "127.0.0.1:10465"

[dns]
mta_sts_mode = "testing"
mta_sts_max_age = 86400

[domains."example.test"]
[domains."other.test"]
"""


def config_of(text: str = CONFIG) -> Config:
    return parse_config_text(text, Path("/etc/mailkeep/mailkeep.toml"), label="mailkeep.toml")


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def cert(ca: TestCA) -> IssuedCert:
    return ca.issue(["mx.example.test", "mta-sts.example.test", "autoconfig.example.test"])


@pytest.fixture
def client_tls(ca: TestCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.ca_file))


def manager(cert: IssuedCert) -> TLSManager:
    return TLSManager([CertificatePair(cert.cert_file, cert.key_file)])


@contextlib.asynccontextmanager
async def serving(config: Config, *, tls: TLSManager | None = None,
                  challenges: ChallengeStore | None = None,
                  bans: BanList | None = None) -> AsyncIterator[tuple[WebListener, int]]:
    sock = bind_socket("127.0.0.1:0")
    port = sock.getsockname()[1]
    name = f"{'https' if tls else 'http'}:127.0.0.1:{port}"
    context = WebContext(config=config, tls=tls, challenges=challenges or ChallengeStore(),
                         implicit_tls=tls is not None, listener=name)
    listener = WebListener(name, context)
    listener.enforce_bans(bans, lambda: b"")
    await listener.start(sock)
    try:
        yield listener, port
    finally:
        await asyncio.wait_for(listener.stop(grace=2), TIMEOUT)


async def fetch(port: int, path: str, *, host: str, tls: ssl.SSLContext | None = None,
                method: str = "GET", body: bytes | None = None
                ) -> tuple[int, dict[str, str], bytes]:
    scheme = "https" if tls else "http"
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
            method, f"{scheme}://127.0.0.1:{port}{path}", headers={"Host": host}, data=body,
            ssl=tls if tls else False,
            server_hostname="mx.example.test" if tls else None) as response:
        return response.status, dict(response.headers), await response.read()


async def peer_certificate(port: int, tls: ssl.SSLContext, sni: str = "mx.example.test"
                           ) -> x509.Certificate:
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname=sni), TIMEOUT)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


async def closed_without_a_byte(port: int, send: bytes = b"") -> bool:
    """True when the server closes the connection without sending anything."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                            TIMEOUT)
    try:
        if send:
            writer.write(send)
        data = await asyncio.wait_for(reader.read(1), TIMEOUT)
        return data == b""
    except ConnectionResetError:
        return True
    finally:
        writer.close()


# -- HTTPS ------------------------------------------------------------------------------------


async def test_https_answers_with_the_server_certificate_and_security_headers(cert, client_tls):
    async with serving(config_of(), tls=manager(cert)) as (_listener, port):
        status, headers, body = await fetch(
            port, "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=me@example.test",
            host="example.test", tls=client_tls)
        assert status == 200
        assert headers["Content-Type"] == "application/xml; charset=utf-8"
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        assert SafeET.fromstring(body).tag == "clientConfig"
        served = await peer_certificate(port, client_tls)
        assert served.public_bytes(Encoding.DER) == cert.cert_der


async def test_errors_carry_the_security_headers_too(cert, client_tls):
    async with serving(config_of(), tls=manager(cert)) as (_listener, port):
        for method, path, body, expected in [
                ("GET", "/nothing-here", None, 404),
                ("GET", "/autodiscover/autodiscover.xml", None, 405),
                ("POST", "/autodiscover/autodiscover.xml", b"x" * (web_server.MAX_BODY + 1),
                 413),
                ("GET", "/apple/profile.mobileconfig?email=x@elsewhere.test", None, 404)]:
            status, headers, _ = await fetch(port, path, host="mx.example.test",
                                             tls=client_tls, method=method, body=body)
            assert status == expected, path
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["Strict-Transport-Security"] == "max-age=31536000", path
            assert headers["Cache-Control"] == "no-store", path


async def test_plain_http_has_no_hsts_header():
    async with serving(config_of()) as (_listener, port):
        status, headers, _ = await fetch(port, "/.well-known/mta-sts.txt",
                                         host="mta-sts.example.test")
        assert status == 200
        assert "Strict-Transport-Security" not in headers
        assert headers["X-Content-Type-Options"] == "nosniff"


def replace_files(target: IssuedCert, source: IssuedCert) -> None:
    """Put ``source``'s certificate and key where ``target``'s are, each file replaced
    atomically, with a later mtime (as certbot or the ACME client renew them)."""
    for src, dst in ((source.key_file, target.key_file), (source.cert_file, target.cert_file)):
        tmp = dst.with_suffix(".new")
        tmp.write_bytes(src.read_bytes())
        stat = dst.stat()
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
        tmp.replace(dst)


async def test_renewed_certificates_apply_to_new_handshakes_and_keep_open_connections(
        ca, client_tls, tmp_path):
    first = ca.issue(["mx.example.test"], stem="renewed")
    second = ca.issue(["mx.example.test"], stem="second")
    third = ca.issue(["mx.example.test"], stem="third")
    tls = TLSManager([CertificatePair(first.cert_file, first.key_file)])
    first_der = first.cert_der
    async with serving(config_of(), tls=tls) as (listener, port):
        assert (await peer_certificate(port, client_tls)).serial_number == \
            x509.load_der_x509_certificate(first_der).serial_number
        # A keep-alive connection opened on the old certificate.
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls,
                                                       server_hostname="mx.example.test")
        request = (b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n"
                   b"\r\n")
        writer.write(request)
        assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"HTTP/1.1 200")

        # The files change on disk (renewal) and the manager notices (the daemon polls).
        replace_files(first, second)
        assert tls.reload_if_changed()
        assert (await peer_certificate(port, client_tls)).serial_number == \
            x509.load_der_x509_certificate(second.cert_der).serial_number

        # A new manager (a reload that changed [tls] cert/key) reaches the listener too.
        listener.update(WebContext(config=listener.context.config, tls=manager(third),
                                   challenges=listener.context.challenges,
                                   implicit_tls=True, listener=listener.name))
        assert (await peer_certificate(port, client_tls)).serial_number == \
            x509.load_der_x509_certificate(third.cert_der).serial_number

        # The connection from before still works, on its original session.
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        await asyncio.wait_for(reader.readexactly(len(mta_sts_policy_text(config_of()))),
                               TIMEOUT)
        writer.write(request)
        assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"HTTP/1.1 200")
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert peer == first_der
        writer.close()


async def test_tls_alpn_01_challenge_is_answered_for_its_name_only(ca, cert, client_tls):
    challenge = ca.issue(["acme.example.test"], stem="alpn")
    alpn = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    alpn.load_cert_chain(challenge.cert_file, challenge.key_file)
    alpn.set_alpn_protocols(["acme-tls/1"])
    store = ChallengeStore()
    store.add_tls_alpn("acme.example.test", alpn)
    async with serving(config_of(), tls=manager(cert), challenges=store) as (_listener, port):
        client = ssl.create_default_context(cafile=str(ca.ca_file))
        client.set_alpn_protocols(["acme-tls/1"])
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="acme.example.test")
        sslobj = writer.get_extra_info("ssl_object")
        assert sslobj.selected_alpn_protocol() == "acme-tls/1"
        assert sslobj.getpeercert(binary_form=True) == challenge.cert_der
        # Nothing is served over the challenge certificate: the connection is closed.
        assert await asyncio.wait_for(_reader.read(1), TIMEOUT) == b""
        writer.close()
        # Any other name gets the server's certificate.
        assert (await peer_certificate(port, client_tls)).serial_number == \
            x509.load_der_x509_certificate(cert.cert_der).serial_number
        # A browser that asks for the pending name meanwhile (no acme-tls/1) gets no
        # HTTP over the challenge certificate either.
        browser = ssl.create_default_context(cafile=str(ca.ca_file))
        browser.set_alpn_protocols(["http/1.1"])
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=browser, server_hostname="acme.example.test")
            writer.write(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(100), TIMEOUT) == b""
            writer.close()


# -- refusals before TLS ------------------------------------------------------------------------

CLIENT_HELLO_START = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03"


async def test_banned_client_is_closed_before_any_tls(cert):
    bans = BanList(None, BanPolicy(allow=()))
    bans.ban("127.0.0.1", "test", 3600, "test")
    async with serving(config_of(), tls=manager(cert), bans=bans) as (listener, port):
        # Not even a ServerHello: the connection closes at once, with nothing sent.
        assert await closed_without_a_byte(port, CLIENT_HELLO_START)
        assert listener.counts.total == 0


async def test_connection_limit_per_address_applies_before_the_handshake(cert, monkeypatch):
    monkeypatch.setattr(web_server, "MAX_CONNECTIONS_PER_IP", 3)
    async with serving(config_of(), tls=manager(cert)) as (listener, port):
        held = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                for _ in range(3)]
        try:
            # Three connections sit in their TLS handshake (sending nothing) and count.
            for _ in range(200):
                if listener.counts.total == 3:
                    break
                await asyncio.sleep(0.01)
            assert listener.counts.total == 3
            assert await closed_without_a_byte(port)
        finally:
            for sock in held:
                sock.close()
        for _ in range(200):
            if listener.counts.total == 0:
                break
            await asyncio.sleep(0.01)
        assert listener.counts.total == 0


async def test_a_stalled_handshake_times_out_and_frees_its_place(cert, monkeypatch):
    monkeypatch.setattr(web_server, "HANDSHAKE_TIMEOUT", 0.3)
    async with serving(config_of(), tls=manager(cert)) as (listener, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
        writer.close()
        assert listener.counts.total == 0


async def test_stop_ends_connections_in_their_handshake(cert):
    async with serving(config_of(), tls=manager(cert)) as (listener, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(200):
            if listener.counts.total == 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(listener.stop(grace=1), TIMEOUT)
        assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
        assert listener.counts.total == 0
        writer.close()


async def test_not_tls_on_the_https_port_is_refused(cert):
    async with serving(config_of(), tls=manager(cert)) as (listener, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: mx.example.test\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        assert b"HTTP/1.1" not in data  # at most a TLS alert, never an HTTP answer
        writer.close()
        assert listener.counts.total == 0


# -- which host gets what ---------------------------------------------------------------------


async def test_mta_sts_policy_only_on_the_policy_host_of_our_domains():
    config = config_of()
    async with serving(config) as (_listener, port):
        status, headers, body = await fetch(port, "/.well-known/mta-sts.txt",
                                            host="MTA-STS.example.test:8443")
        assert status == 200
        assert headers["Content-Type"] == "text/plain"
        assert body.decode() == mta_sts_policy_text(config)
        assert body == (b"version: STSv1\r\nmode: testing\r\nmx: mx.example.test\r\n"
                        b"max_age: 86400\r\n")
        for host in ("mx.example.test", "example.test", "mta-sts.elsewhere.test",
                     "mta-sts.", "mta-sts.mta-sts.example.test", "127.0.0.1"):
            status, _, _ = await fetch(port, "/.well-known/mta-sts.txt", host=host)
            assert status == 404, host


async def test_mode_none_still_serves_a_policy():
    config = config_of(CONFIG.replace('mta_sts_mode = "testing"', 'mta_sts_mode = "none"'))
    async with serving(config) as (_listener, port):
        status, _, body = await fetch(port, "/.well-known/mta-sts.txt",
                                      host="mta-sts.other.test")
        assert status == 200
        assert b"mode: none\r\n" in body and body.startswith(b"version: STSv1\r\n")


@pytest.mark.parametrize(("path", "host", "expected", "domain"), [
    ("/mail/config-v1.1.xml?emailaddress=me%40example.test", "autoconfig.example.test",
     200, "example.test"),
    ("/mail/config-v1.1.xml", "autoconfig.other.test", 200, "other.test"),
    ("/mail/config-v1.1.xml?emailaddress=me%40other.test", "autoconfig.example.test",
     200, "other.test"),
    ("/mail/config-v1.1.xml?emailaddress=me%40example.test", "mx.example.test", 404, None),
    ("/mail/config-v1.1.xml", "autoconfig.elsewhere.test", 404, None),
    ("/mail/config-v1.1.xml?emailaddress=me%40elsewhere.test", "autoconfig.example.test",
     404, None),
    ("/mail/config-v1.1.xml?emailaddress=%3Cscript%3E", "autoconfig.example.test", 404, None),
    ("/.well-known/autoconfig/mail/config-v1.1.xml", "example.test", 200, "example.test"),
    ("/.well-known/autoconfig/mail/config-v1.1.xml", "autoconfig.other.test", 200,
     "other.test"),
    ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=me%40other.test",
     "mx.example.test", 200, "other.test"),
    ("/.well-known/autoconfig/mail/config-v1.1.xml", "mx.example.test", 404, None),
    ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=me%40elsewhere.test",
     "example.test", 404, None),
])
async def test_thunderbird_document_by_host_and_address(path, host, expected, domain):
    async with serving(config_of()) as (_listener, port):
        status, _, body = await fetch(port, path, host=host)
        assert status == expected
        if domain is not None:
            provider = SafeET.fromstring(body).find("emailProvider")
            assert provider is not None and provider.get("id") == domain


async def test_no_documents_when_there_is_nothing_to_configure():
    config = config_of(CONFIG.replace('protocol = "submissions"', 'protocol = "smtp"'))
    async with serving(config) as (_listener, port):
        status, _, _ = await fetch(port, "/.well-known/autoconfig/mail/config-v1.1.xml",
                                   host="example.test")
        assert status == 404
        status, _, _ = await fetch(port, "/apple/profile.mobileconfig?email=me@example.test",
                                   host="mx.example.test")
        assert status == 404
        status, _, body = await fetch(
            port, "/autodiscover/autodiscover.xml", host="mx.example.test", method="POST",
            body=b"<Autodiscover><Request><EMailAddress>me@example.test</EMailAddress>"
                 b"</Request></Autodiscover>")
        assert status == 200 and b"<ErrorCode>501</ErrorCode>" in body


async def test_apple_profile_is_the_same_whether_or_not_the_account_exists():
    config = config_of(CONFIG + '\n[accounts."me@example.test"]\n')
    async with serving(config) as (_listener, port):
        answers = {}
        for local in ("me", "nobody-here"):
            status, headers, body = await fetch(
                port, f"/apple/profile.mobileconfig?email={local}@example.test",
                host="mx.example.test")
            assert status == 200
            assert headers["Content-Type"] == "application/x-apple-aspen-config"
            assert headers["Content-Disposition"] == \
                'attachment; filename="example.test.mobileconfig"'
            profile = plistlib.loads(body)
            (mail,) = profile["PayloadContent"]
            answers[local] = {k: v for k, v in mail.items()
                              if "UUID" not in k and "Identifier" not in k}
            answers[local] = {k: (v.replace(local, "L") if isinstance(v, str) else v)
                              for k, v in answers[local].items()}
        assert answers["me"] == answers["nobody-here"]



async def test_a_request_never_completed_is_closed_and_frees_its_place(monkeypatch):
    # A client that connects and trickles a request it never finishes (slowloris) is
    # closed after the keep-alive timeout, like an idle one.
    monkeypatch.setattr(web_server, "KEEPALIVE_TIMEOUT", 0.5)
    async with serving(config_of()) as (listener, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-")
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            writer.write(b"s")  # a byte at a time keeps the socket busy, not the request
            try:
                data = await asyncio.wait_for(reader.read(1), 0.1)
                break
            except TimeoutError:
                assert loop.time() - started < TIMEOUT, "the connection was never closed"
        assert data == b""
        writer.close()
        assert listener.counts.total == 0


async def test_server_header_names_no_program_version():
    async with serving(config_of()) as (_listener, port):
        for path in ("/.well-known/mta-sts.txt", "/nothing-here"):
            _status, headers, _body = await fetch(port, path, host="mta-sts.example.test")
            assert headers["Server"] == "Mailkeep"


async def test_ipv6_clients_are_counted_per_64(monkeypatch):
    from mailkeep.web.server import _Counted

    class Transport:
        def __init__(self, ip: str) -> None:
            self.ip, self.closed = ip, False

        def get_extra_info(self, name: str):
            return (self.ip, 4711, 0, 0) if name == "peername" else None

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(web_server, "MAX_CONNECTIONS_PER_IP", 2)
    listener = WebListener("http:test", WebContext(config=config_of()))
    listener.handler_factory = lambda: type("Inner", (), {
        "connection_made": lambda self, t: None, "connection_lost": lambda self, e: None})()
    transports = [Transport(f"2001:db8:1:2::{n:x}") for n in range(1, 4)]
    for transport in transports:
        _Counted(listener).connection_made(transport)
    # Three addresses of one /64 are one client: the third is over its limit of two.
    assert [t.closed for t in transports] == [False, False, True]
    other = Transport("2001:db8:1:3::1")
    _Counted(listener).connection_made(other)
    assert not other.closed


async def test_a_request_body_that_never_arrives_gets_408(monkeypatch):
    monkeypatch.setattr(web_server, "BODY_TIMEOUT", 0.3)
    async with serving(config_of()) as (_listener, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000\r\n\r\n<Autodiscover")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
