"""The lean TLS transport (mailkeep.servers.tlsio) against independent TLS peers.

The server side always runs the way Mailkeep's listeners do (accept in plaintext, pause
reading, ``await start_tls``); the peers are Python's blocking ssl sockets, asyncio's own
TLS transport, hand-driven SSLObjects on plain sockets (to send exactly the bytes a test
needs), and the module's own client. Channel bindings are compared across the two ends
of one connection and with scramp's independent tls-server-end-point computation.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from scramp.core import CBindData

from mailkeep.servers import tlsio
from mailkeep.servers.tls import CertificatePair, server_context

WAIT = 10.0  # upper bound of any single wait in these tests (seconds)
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


# -- certificates ---------------------------------------------------------------------------

def _certificate(directory: Path, name: str, key, algorithm) -> CertificatePair:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(key, algorithm))
    pair = CertificatePair(directory / f"{name}.pem", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pair


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, CertificatePair]:
    directory = tmp_path_factory.mktemp("certs")
    return {
        "rsa": _certificate(directory, "rsa", rsa.generate_private_key(65537, 2048),
                            hashes.SHA256()),
        "ecdsa": _certificate(directory, "ecdsa", ec.generate_private_key(ec.SECP256R1()),
                              hashes.SHA256()),
        "ecdsa384": _certificate(directory, "ecdsa384",
                                 ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
    }


def der_of(pair: CertificatePair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert.read_text())


def client_context(version: ssl.TLSVersion | None = None, ciphers: str | None = None
                   ) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the tests pin the certificate themselves
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    return context


# -- the server side: Mailkeep's listener pattern --------------------------------------------

class ServerSession(asyncio.Protocol):
    """pause_reading in connection_made, then start_tls; echoes, or answers EOF if told."""

    def __init__(self, context: ssl.SSLContext, *, handshake_timeout: float = WAIT,
                 eof_reply: bytes | None = None, write_limit: int | None = None):
        loop = asyncio.get_running_loop()
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.eof_reply = eof_reply
        self.write_limit = write_limit
        self.transport: asyncio.Transport | None = None
        self.tls: asyncio.Transport | None = None
        self.handshake: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.connection_made_calls = 0
        self.received = 0
        self.eof_seen = False
        self.write_pauses = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connection_made_calls += 1
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self.upgrade())

    async def upgrade(self) -> None:
        assert self.transport is not None
        try:
            self.tls = await tlsio.start_tls(self.transport, self, self.context,
                                             handshake_timeout=self.handshake_timeout)
        except BaseException as exc:
            self.handshake.set_exception(exc)
            return
        if self.write_limit is not None:
            self.tls.set_write_buffer_limits(high=self.write_limit)
        self.handshake.set_result(self.tls)

    def data_received(self, data: bytes) -> None:
        assert self.tls is not None, "data before start_tls returned"
        self.received += len(data)
        if self.eof_reply is None:
            self.tls.write(data)

    def eof_received(self) -> bool:
        assert self.tls is not None
        self.eof_seen = True
        if self.eof_reply is None:
            return False  # the TLS layer closes
        # The half-close: the peer is done sending, we still answer, then close.
        self.tls.write(self.eof_reply)
        self.tls.close()
        return True

    def pause_writing(self) -> None:
        # Flow control as a real server does it: stop reading while the peer is slow.
        assert self.tls is not None
        self.write_pauses += 1
        self.tls.pause_reading()

    def resume_writing(self) -> None:
        assert self.tls is not None
        self.tls.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Listener:
    def __init__(self, context: ssl.SSLContext, session_class: type[ServerSession] = ServerSession,
                 **options):
        self.context = context
        self.session_class = session_class
        self.options = options
        self.sessions: list[ServerSession] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Listener:
        def factory() -> ServerSession:
            session = self.session_class(self.context, **self.options)
            self.sessions.append(session)
            return session

        self.server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        assert self.server is not None
        self.server.close()
        for session in self.sessions:
            if session.tls is not None:
                session.tls.abort()
            elif session.transport is not None:
                session.transport.abort()
        await self.server.wait_closed()

    async def session(self, index: int = 0) -> ServerSession:
        async def first() -> ServerSession:
            while len(self.sessions) <= index:
                await asyncio.sleep(0.005)
            return self.sessions[index]
        return await asyncio.wait_for(first(), WAIT)


def _blocking_client(port: int, context: ssl.SSLContext, payload: bytes) -> tuple:
    """Python's blocking TLS socket: send, read the echo, report what it saw."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw, \
            context.wrap_socket(raw, server_hostname="localhost",
                                suppress_ragged_eofs=False) as conn:
        conn.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            echoed += conn.recv(65536)
        return (echoed, conn.version(), conn.cipher()[0], conn.getpeercert(binary_form=True),
                tlsio.channel_bindings(conn))


# -- handshakes and channel bindings ------------------------------------------------------

@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
async def test_handshake_echo_and_channel_bindings(certs, version, kind):
    async with Listener(server_context([certs[kind]])) as listener:
        echoed, negotiated, cipher, peer_der, client_cb = await asyncio.to_thread(
            _blocking_client, listener.port, client_context(version), b"a1 NOOP\r\n")
        session = await listener.session()
        tls = await asyncio.wait_for(session.handshake, WAIT)
        server_cb = tlsio.channel_bindings(tls)

    assert echoed == b"a1 NOOP\r\n"
    assert negotiated == version.name.replace("_", ".")
    assert session.connection_made_calls == 1
    assert tls.get_extra_info("ssl_object").version() == negotiated
    assert tls.get_extra_info("cipher")[0] == cipher
    assert tls.get_extra_info("peername")[0] == "127.0.0.1"
    if version == TLS12:
        assert ("ECDSA" in cipher) == (kind == "ecdsa")
    assert peer_der == der_of(certs[kind])
    # RFC 5929 §4.1: SHA-256 of the certificate (it is signed with SHA-256); scramp's
    # implementation of the same rule agrees.
    expected_end_point = hashlib.sha256(peer_der).digest()
    assert bytes(CBindData.from_der(peer_der)) == expected_end_point
    assert server_cb["tls-server-end-point"] == client_cb["tls-server-end-point"] \
        == expected_end_point
    if version == TLS13:
        # RFC 9266: 32 bytes, the same at both ends; listed first.
        assert list(server_cb) == ["tls-exporter", "tls-server-end-point"]
        assert len(server_cb["tls-exporter"]) == 32
        assert server_cb["tls-exporter"] == client_cb["tls-exporter"]
    else:
        assert list(server_cb) == ["tls-server-end-point"] and list(client_cb) == list(server_cb)


@pytest.mark.parametrize("cipher,kind", [("ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
                                         ("ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa")])
async def test_end_point_binding_names_the_certificate_actually_used(certs, cipher, kind):
    # Both an RSA and an ECDSA certificate are loaded (as with the self-signed pair); the
    # cipher suite the client allows decides which one OpenSSL sends.
    context = server_context([certs["ecdsa"], certs["rsa"]])
    async with Listener(context) as listener:
        _, _, negotiated_cipher, peer_der, client_cb = await asyncio.to_thread(
            _blocking_client, listener.port, client_context(TLS12, cipher), b"x")
        tls = await asyncio.wait_for((await listener.session()).handshake, WAIT)
        server_cb = tlsio.channel_bindings(tls)
    assert negotiated_cipher == cipher
    assert peer_der == der_of(certs[kind])
    assert server_cb == client_cb == {"tls-server-end-point": hashlib.sha256(peer_der).digest()}


async def test_end_point_hash_follows_the_signature_hash(certs):
    # RFC 5929 §4.1: a certificate signed with SHA-384 is hashed with SHA-384.
    async with Listener(server_context([certs["ecdsa384"]])) as listener:
        _, _, _, peer_der, client_cb = await asyncio.to_thread(
            _blocking_client, listener.port, client_context(TLS13), b"x")
        server_cb = tlsio.channel_bindings(await (await listener.session()).handshake)
    assert server_cb["tls-server-end-point"] == client_cb["tls-server-end-point"] \
        == hashlib.sha384(peer_der).digest() == bytes(CBindData.from_der(peer_der))


SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")  # OID 1.2.840.113549.1.1.11


@pytest.mark.parametrize("last_arc", [5, 4], ids=["sha1WithRSA", "md5WithRSA"])
def test_certificate_hash_replaces_sha1_and_md5_by_sha256(certs, last_arc):
    # cryptography no longer signs with SHA-1 or MD5, so relabel the signature algorithm
    # (both copies, RFC 5280 §4.1.1.2) of a SHA-256 certificate: same-length OIDs.
    der = der_of(certs["rsa"])
    assert der.count(SHA256_WITH_RSA) == 2
    relabelled = der.replace(SHA256_WITH_RSA, SHA256_WITH_RSA[:-1] + bytes([last_arc]))
    name = x509.load_der_x509_certificate(relabelled).signature_hash_algorithm.name
    assert name == ("sha1" if last_arc == 5 else "md5")
    assert tlsio.certificate_hash(relabelled) == hashlib.sha256(relabelled).digest()


def test_certificate_hash_undefined_cases(tmp_path):
    # Ed25519 signs without a separate hash function: RFC 5929 defines no binding.
    ed = _certificate(tmp_path, "ed", ed25519.Ed25519PrivateKey.generate(), None)
    assert tlsio.certificate_hash(der_of(ed)) is None
    assert tlsio.certificate_hash(b"not a certificate") is None


async def test_exporter_differs_per_connection_and_matches_lean_client(certs):
    class Client(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

    async with Listener(server_context([certs["ecdsa"]])) as listener:
        values = []
        for index in range(2):
            transport, _ = await tlsio.open_tls_connection(
                Client, "127.0.0.1", listener.port, client_context(TLS13),
                handshake_timeout=WAIT)
            server_tls = await asyncio.wait_for((await listener.session(index)).handshake, WAIT)
            client_cb = tlsio.channel_bindings(transport)
            assert client_cb == tlsio.channel_bindings(server_tls)
            values.append(client_cb["tls-exporter"])
            transport.close()
    assert values[0] != values[1]


async def test_no_bindings_without_tls(certs):
    class Plain(asyncio.Protocol):
        pass

    server = await asyncio.get_running_loop().create_server(Plain, "127.0.0.1", 0)
    try:
        transport, _ = await asyncio.get_running_loop().create_connection(
            Plain, "127.0.0.1", server.sockets[0].getsockname()[1])
        assert tlsio.channel_bindings(transport) == {}
        transport.close()
    finally:
        server.close()
    # An SSLObject whose handshake has not happened has no bindings either.
    unfinished = client_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    assert tlsio.channel_bindings(unfinished) == {}
    assert tlsio.channel_bindings(object()) == {}


# -- data, flow control, closing -----------------------------------------------------------

async def test_large_echo_both_directions_with_flow_control(certs):
    """8 MiB through the lean layer at both ends while the client reads nothing at first.

    The server's write buffer fills, it gets pause_writing and stops reading; the client's
    write buffer then fills too. Once the client reads, everything flows and arrives intact.
    """
    payload = os.urandom(8 << 20)

    class Client(asyncio.Protocol):
        def __init__(self):
            self.received = bytearray()
            self.done = asyncio.get_running_loop().create_future()
            self.paused = asyncio.Event()
            self.resumed = asyncio.Event()

        def connection_made(self, transport):
            self.transport = transport
            transport.pause_reading()

        def data_received(self, data):
            self.received += data
            if len(self.received) >= len(payload) and not self.done.done():
                self.done.set_result(None)

        def pause_writing(self):
            self.paused.set()

        def resume_writing(self):
            self.resumed.set()

    async with Listener(server_context([certs["ecdsa"]]), write_limit=64 * 1024) as listener:
        transport, client = await tlsio.open_tls_connection(
            Client, "127.0.0.1", listener.port, client_context(TLS13), handshake_timeout=WAIT)
        transport.set_write_buffer_limits(high=256 * 1024)
        transport.write(payload)
        session = await listener.session()
        await asyncio.wait_for(client.paused.wait(), WAIT)
        await asyncio.sleep(0.1)
        assert session.write_pauses >= 1
        stalled_at = session.received
        await asyncio.sleep(0.2)
        # The server stopped reading (the rest waits in its kernel buffer and ours).
        assert 0 < session.received == stalled_at < len(payload)
        transport.resume_reading()
        await asyncio.wait_for(client.done, WAIT)
        await asyncio.wait_for(client.resumed.wait(), WAIT)
        assert hashlib.sha256(client.received).digest() == hashlib.sha256(payload).digest()
        assert transport.get_write_buffer_size() == 0
        transport.close()
        assert await asyncio.wait_for(session.lost, WAIT) is None


def _sslobject_client(port: int, version: ssl.TLSVersion, script) -> bytes:
    """A TLS client driven by hand over a plain socket; ``script`` gets (send, recv)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(version).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        def pump_in() -> bool:
            data = sock.recv(65536)
            if not data:
                return False
            incoming.write(data)
            return True

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                assert pump_in(), "server closed during the handshake"
        sock.sendall(outgoing.read())
        return script(tls, sock, outgoing, pump_in)


def _read_to_close_notify(tls, pump_in) -> bytes:
    received = b""
    while True:
        try:
            chunk = tls.read(65536)
        except ssl.SSLWantReadError:
            assert pump_in(), "TCP closed without close_notify"
            continue
        except ssl.SSLZeroReturnError:
            return received
        if not chunk:  # CPython's answer to a close_notify before we sent ours
            return received
        received += chunk


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
async def test_close_sends_close_notify_after_the_data(certs, version):
    def script(tls, sock, outgoing, pump_in):
        tls.write(b"QUIT\r\n")
        sock.sendall(outgoing.read())
        return _read_to_close_notify(tls, pump_in)

    class Bye(ServerSession):
        def data_received(self, data):
            self.tls.write(b"+OK bye\r\n" * 1000)
            self.tls.close()
            assert self.tls.is_closing()
            self.tls.write(b"ignored after close")

    async with Listener(server_context([certs["ecdsa"]]), Bye) as listener:
        received = await asyncio.to_thread(_sslobject_client, listener.port, version, script)
        session = await listener.session()
        assert await asyncio.wait_for(session.lost, WAIT) is None
    assert received == b"+OK bye\r\n" * 1000


@pytest.mark.parametrize("how", ["close_notify", "tcp_fin"])
@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
async def test_half_close_peer_done_sending_still_gets_the_answer(certs, version, how):
    def script(tls, sock, outgoing, pump_in):
        tls.write(b"last command\r\n")
        if how == "close_notify":
            try:
                tls.unwrap()  # our close_notify; the server's is still to come
            except ssl.SSLWantReadError:
                pass
            sock.sendall(outgoing.read())
        else:
            sock.sendall(outgoing.read())
            sock.shutdown(socket.SHUT_WR)
        return _read_to_close_notify(tls, pump_in)

    async with Listener(server_context([certs["ecdsa"]]), eof_reply=b"answer after EOF\r\n"
                        ) as listener:
        received = await asyncio.to_thread(_sslobject_client, listener.port, version, script)
        session = await listener.session()
        assert await asyncio.wait_for(session.lost, WAIT) is None
    assert received == b"answer after EOF\r\n"
    assert session.eof_seen and session.received == len(b"last command\r\n")


class Recorder(ServerSession):
    def data_received(self, data):
        self.received += len(data)


async def test_peer_fin_without_close_notify_is_an_eof_and_we_close_cleanly(certs):
    def script(tls, sock, outgoing, pump_in):
        tls.write(b"ping")
        sock.sendall(outgoing.read())
        sock.shutdown(socket.SHUT_WR)  # a FIN, no close_notify (a truncation to TLS)
        return _read_to_close_notify(tls, pump_in)

    async with Listener(server_context([certs["ecdsa"]]), Recorder) as listener:
        received = await asyncio.to_thread(_sslobject_client, listener.port, TLS13, script)
        session = await listener.session()
        assert await asyncio.wait_for(session.lost, WAIT) is None
    # eof_received returned False: the layer answered with close_notify and closed.
    assert received == b""
    assert session.eof_seen and session.received == 4


async def test_corrupt_record_after_handshake_reaches_connection_lost(certs):
    async with Listener(server_context([certs["ecdsa"]])) as listener:
        def script(tls, sock, outgoing, pump_in):
            # An application-data record whose authentication tag cannot verify.
            sock.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
            return sock.recv(100)

        await asyncio.to_thread(_sslobject_client, listener.port, TLS13, script)
        exc = await asyncio.wait_for((await listener.session()).lost, WAIT)
    assert isinstance(exc, ssl.SSLError)


# -- handshake failures ------------------------------------------------------------------------

async def test_handshake_timeout(certs):
    async with Listener(server_context([certs["ecdsa"]]), handshake_timeout=0.3) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        session = await listener.session()
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(session.handshake, WAIT)
        assert 0.2 < time.monotonic() - began < 3.0
        # The connection is gone: the client reads EOF (or a reset), not silence.
        try:
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
        except ConnectionResetError:
            pass
        writer.close()
        assert not session.lost.done()  # the app never owned a TLS transport


async def test_garbage_instead_of_client_hello(certs):
    async with Listener(server_context([certs["ecdsa"]])) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"EHLO client.example\r\n")
        session = await listener.session()
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(session.handshake, WAIT)
        answer = await asyncio.wait_for(reader.read(), WAIT)
        # Nothing but (at most) a TLS alert record comes back, then the connection closes.
        assert answer == b"" or answer[:1] == b"\x15"
        writer.close()


async def test_client_closes_mid_handshake(certs):
    # The first 40 bytes of a real ClientHello, then FIN: the server gives up at once
    # rather than waiting for the handshake timeout.
    hello_bio = ssl.MemoryBIO()
    probe = client_context().wrap_bio(ssl.MemoryBIO(), hello_bio)
    with pytest.raises(ssl.SSLWantReadError):
        probe.do_handshake()
    partial_hello = hello_bio.read()[:40]
    async with Listener(server_context([certs["ecdsa"]])) as listener:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(partial_hello)
        await writer.drain()
        writer.close()
        session = await listener.session()
        began = time.monotonic()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(session.handshake, WAIT)
        assert time.monotonic() - began < 2.0


async def test_start_tls_on_a_closed_transport():
    class Plain(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

    server = await asyncio.get_running_loop().create_server(Plain, "127.0.0.1", 0)
    try:
        transport, protocol = await asyncio.get_running_loop().create_connection(
            Plain, "127.0.0.1", server.sockets[0].getsockname()[1])
        transport.close()
        with pytest.raises(ConnectionResetError):
            await tlsio.start_tls(transport, protocol, client_context(), handshake_timeout=1,
                                  server_side=False)
    finally:
        server.close()


# -- memory --------------------------------------------------------------------------------------

IDLE_CONNECTIONS = 1000
#: Measured: about 19 KiB per idle TLS 1.3 connection (OpenSSL's own state is ~16.5 KiB of
#: it; plain TCP costs ~1.3 KiB); asyncio's stock TLS transport costs ~278 KiB.
IDLE_LIMIT_KIB = 40

_IDLE_SERVER = textwrap.dedent("""
    import asyncio, ssl, sys
    from mailkeep.servers import tlsio
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])

    class Idle(asyncio.Protocol):
        tls = None
        def connection_made(self, transport):
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self.upgrade(transport))
        async def upgrade(self, transport):
            self.tls = await tlsio.start_tls(transport, self, context, handshake_timeout=30)
            self.tls.write(b"* OK ready\\r\\n")
        def data_received(self, data):
            self.tls.write(data)

    async def main():
        server = await asyncio.get_running_loop().create_server(
            Idle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
""")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_idle_connections_stay_small(certs):
    """1000 idle TLS sessions add less than IDLE_LIMIT_KIB each to the server's RSS."""
    server = subprocess.Popen(
        [sys.executable, "-c", _IDLE_SERVER, str(certs["ecdsa"].cert), str(certs["ecdsa"].key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    transports: list[asyncio.Transport] = []
    try:
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), WAIT)
        port = int(line)
        context = client_context(TLS13)

        class Client(asyncio.Protocol):
            def __init__(self):
                self.greeted = asyncio.get_running_loop().create_future()

            def data_received(self, data):
                if not self.greeted.done():
                    self.greeted.set_result(data)

        async def connect(limit: asyncio.Semaphore) -> None:
            async with limit:
                transport, client = await tlsio.open_tls_connection(
                    Client, "127.0.0.1", port, context, handshake_timeout=30)
                transports.append(transport)
                assert await asyncio.wait_for(client.greeted, 30) == b"* OK ready\r\n"

        limit = asyncio.Semaphore(50)
        await asyncio.gather(*(connect(limit) for _ in range(20)))  # warm-up
        await asyncio.sleep(0.2)
        before = _rss_kib(server.pid)
        await asyncio.wait_for(asyncio.gather(
            *(connect(limit) for _ in range(IDLE_CONNECTIONS))), 60)
        await asyncio.sleep(0.3)
        per_connection = (_rss_kib(server.pid) - before) / IDLE_CONNECTIONS
    finally:
        for transport in transports:
            transport.abort()
        server.kill()
        server.wait(WAIT)
    print(f"{per_connection:.1f} KiB per idle TLS connection")
    assert 0 < per_connection < IDLE_LIMIT_KIB
