"""A lean TLS layer for asyncio connections, and TLS channel bindings for SCRAM-*-PLUS.

Why not ``loop.start_tls``: asyncio's TLS protocol keeps a 256 KiB receive buffer for the
life of every connection, about 2.5 GB for 10,000 idle IMAP sessions. Here
:func:`start_tls` puts a small protocol between the socket transport and the application
protocol (``transport.set_protocol``) that drives :class:`ssl.SSLObject` over two
:class:`ssl.MemoryBIO` and hands the application a :class:`TLSTransport`. Nothing is
preallocated per connection: ciphertext goes into the incoming BIO at most one record's
worth at a time, plaintext comes out in record-sized pieces (RFC 8446 §5.1: at most 2^14
bytes), and writes are encrypted and passed to the socket transport record by record, so
the only buffers a connection keeps are the ones OpenSSL keeps (CPython sets
SSL_MODE_RELEASE_BUFFERS, which frees them while the connection is idle) and the memory
BIOs' spare capacity, which never exceeds about two records.

Semantics follow ``loop.start_tls(..., server_side=True)``: the protocol's
``connection_made`` is not called again, errors after the handshake reach its
``connection_lost(exc)``, ``close()`` sends close_notify (RFC 8446 §6.1). Unlike asyncio,
``eof_received()`` returning true keeps our side open (the TLS 1.3 half-close).

Implicit TLS on a server (RFC 8314): accept with the plain protocol, call
``transport.pause_reading()`` in ``connection_made`` (and apply connection limits there,
before any cryptography is spent), then ``await start_tls(transport, protocol, ...)``.
Clients: :func:`open_tls_connection`.

Channel bindings (:func:`channel_bindings`): "tls-exporter" (RFC 9266) and
"tls-server-end-point" (RFC 5929 §4). Python 3.11's ssl module exposes neither the TLS
exporter nor the server's own certificate, so both come from libssl through ctypes, with
the ``SSL *`` pointer read from CPython's ``_ssl._SSLSocket`` object and cross-checked
against values the ssl module reports; on any mismatch there is no binding (the server
then does not offer the -PLUS mechanisms) rather than a guess.
"""

from __future__ import annotations

import asyncio
import ctypes
import ssl
import sys
from collections.abc import Callable, Iterable
from typing import Any

#: RFC 8446 §5.1 / RFC 5246 §6.2.1: the most plaintext one TLS record carries.
RECORD_SIZE = 16384
#: Decrypted data handed to the application in one ``data_received`` call, at most.
DELIVERY_SIZE = 256 * 1024
#: Encrypted output collected before one write to the socket transport, at most.
WRITE_BATCH = 64 * 1024
#: After sending close_notify, how long to wait for the peer's close_notify or FIN before
#: the socket is aborted (closing a socket with unread input would send an RST that can
#: destroy our last reply in flight).
SHUTDOWN_TIMEOUT = 5.0

_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)


class TLSTransport(asyncio.Transport):
    """What the application protocol writes to; all state lives in the TLS layer."""

    __slots__ = ("_layer",)

    def __init__(self, layer: _TLSLayer):
        # BaseTransport.__init__ would give every connection an ``_extra`` dict; the extra
        # info comes from the layer and the socket transport instead.
        self._layer = layer

    def __repr__(self) -> str:
        state = ("handshake", "open", "closing", "closed")[self._layer._state]
        return f"<TLSTransport {state} {self.get_extra_info('peername')}>"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        layer = self._layer
        sslobj = layer._sslobj
        if name == "ssl_object":
            return sslobj
        if name == "sslcontext":
            return sslobj.context
        if name == "cipher":
            return sslobj.cipher()
        if name == "peercert":
            return sslobj.getpeercert()
        if name == "compression":
            return sslobj.compression()
        return layer._raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._layer._state >= _CLOSING or self._layer._close_requested

    def close(self) -> None:
        self._layer._close()

    def abort(self) -> None:
        self._layer._abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected a bytes-like object, not {type(data).__name__}")
        if data:
            self._layer._write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        # TLS has no "end of data" short of close_notify; as in asyncio, use close().
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS transports cannot write EOF; use close()")

    def is_reading(self) -> bool:
        return self._layer._state == _OPEN and not self._layer._reading_paused

    def pause_reading(self) -> None:
        self._layer._pause_reading()

    def resume_reading(self) -> None:
        self._layer._resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._layer._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._layer._raw.get_write_buffer_limits()

    def get_write_buffer_size(self) -> int:
        layer = self._layer
        return layer._raw.get_write_buffer_size() + sum(len(b) for b in layer._backlog or ())

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._layer._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer._app


class _TLSLayer(asyncio.Protocol):
    """The socket transport's protocol: TLS records below, the application above."""

    __slots__ = (
        "_app", "_app_connected", "_app_eof_done", "_app_lost", "_backlog",
        "_close_requested", "_delivering", "_fatal_exc", "_incoming", "_loop", "_outgoing",
        "_peer_closed", "_raw", "_raw_pending", "_reading_paused", "_sslobj", "_state",
        "_tcp_eof", "_timer", "_transport", "_waiter", "_writing_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, raw: asyncio.Transport,
                 app: asyncio.Protocol, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO, waiter: asyncio.Future):
        self._loop = loop
        self._raw = raw
        self._app = app
        self._sslobj = sslobj
        self._incoming = incoming
        self._outgoing = outgoing
        self._waiter: asyncio.Future | None = waiter
        self._transport = TLSTransport(self)
        self._state = _HANDSHAKE
        self._timer: asyncio.TimerHandle | None = None
        # Ciphertext received but not yet given to the incoming BIO (fed a record at a
        # time so the BIO never grows to the size of one socket read).
        self._raw_pending: memoryview | None = None
        # Application data SSL_write could not take yet (it needs to read first; only
        # possible during a TLS 1.2 renegotiation, which the server contexts disable).
        self._backlog: list[bytes] | None = None
        self._app_connected = False   # start_tls returned: the app owns the transport
        self._delivering = False      # decrypted data may go to the app
        self._reading_paused = False  # the app paused reading
        self._writing_paused = False  # the socket transport paused our writing
        self._tcp_eof = False
        self._peer_closed = False     # the peer's close_notify arrived
        self._app_eof_done = False
        self._app_lost = False
        self._close_requested = False
        self._fatal_exc: BaseException | None = None

    # -- the handshake ----------------------------------------------------------------

    def _begin(self, timeout: float) -> None:
        self._timer = self._loop.call_later(timeout, self._handshake_timed_out, timeout)
        self._do_handshake()  # a client's ClientHello goes out now

    def _do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_outgoing()
            return
        except (ssl.SSLError, ssl.CertificateError, ValueError) as exc:
            self._flush_outgoing()  # our alert, so the peer learns why
            self._handshake_failed(exc, close=True)
            return
        self._flush_outgoing()  # Finished, and TLS 1.3 session tickets
        self._state = _OPEN
        self._cancel_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _handshake_timed_out(self, timeout: float) -> None:
        self._timer = None
        self._handshake_failed(TimeoutError(
            f"TLS handshake not completed within {timeout:g} seconds"), close=False)

    def _handshake_failed(self, exc: BaseException, *, close: bool) -> None:
        if self._state != _HANDSHAKE:
            return
        self._state = _CLOSED
        self._cancel_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if close:
            self._raw.close()  # lets the alert already written reach the peer
        else:
            self._raw.abort()

    def _start_delivery(self) -> None:
        """Called once the coroutine that awaited start_tls holds the new transport."""
        if self._state == _CLOSED:
            return
        self._delivering = True
        if self._writing_paused:
            self._app.pause_writing()
        if self._state == _OPEN:
            self._read_app_data()

    # -- asyncio.Protocol callbacks from the socket transport ---------------------------

    def data_received(self, data: bytes) -> None:
        if self._state == _CLOSED:
            return
        if self._raw_pending is not None:
            self._raw_pending = memoryview(bytes(self._raw_pending) + data)
        elif len(data) <= RECORD_SIZE + 512:
            self._incoming.write(data)
        else:
            self._raw_pending = memoryview(data)
        if self._state == _HANDSHAKE:
            while True:
                self._do_handshake()
                if self._state != _HANDSHAKE or not self._feed_pending():
                    break
        elif self._state == _OPEN:
            if self._delivering and not self._reading_paused:
                self._read_app_data()
        else:
            self._drain_for_close()

    def eof_received(self) -> bool:
        self._tcp_eof = True
        if self._state == _HANDSHAKE:
            self._handshake_failed(ConnectionResetError(
                "connection closed during the TLS handshake"), close=True)
            return False
        if self._state == _OPEN:
            if self._delivering and not self._reading_paused:
                self._read_app_data()
            return True  # we decide when to close: after the app saw the EOF
        return False  # closing: the peer is gone, let the socket transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _HANDSHAKE:
            self._handshake_failed(exc or ConnectionResetError(
                "connection lost during the TLS handshake"), close=False)
        self._state = _CLOSED
        self._cancel_timer()
        self._raw_pending = None
        self._backlog = None
        if self._app_connected and not self._app_lost:
            self._app_lost = True
            self._app.connection_lost(self._fatal_exc or exc)  # type: ignore[arg-type]

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._delivering:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._delivering:
            self._app.resume_writing()

    # -- reading --------------------------------------------------------------------------

    def _feed_pending(self) -> bool:
        """Move the next record's worth of pending ciphertext into the BIO; False if none."""
        pending = self._raw_pending
        if pending is None:
            return False
        self._incoming.write(pending[:RECORD_SIZE])
        rest = pending[RECORD_SIZE:]
        self._raw_pending = rest if len(rest) else None
        return True

    def _read_app_data(self) -> None:
        sslobj = self._sslobj
        drained = False
        while self._state == _OPEN and self._delivering and not self._reading_paused:
            chunks: list[bytes] = []
            size = 0
            try:
                while size < DELIVERY_SIZE:
                    try:
                        chunk = sslobj.read(RECORD_SIZE)
                    except ssl.SSLWantReadError:
                        if self._feed_pending():
                            continue
                        drained = True
                        break
                    if not chunk:
                        # CPython returns b"" instead of raising for a close_notify
                        # while ours is not sent yet.
                        raise ssl.SSLZeroReturnError
                    chunks.append(chunk)
                    size += len(chunk)
            except ssl.SSLZeroReturnError:
                # RFC 8446 §6.1: close_notify, the peer sends nothing more.
                self._peer_closed = drained = True
                self._raw_pending = None
            except ssl.SSLError as exc:
                self._fatal(exc)
                return
            self._flush_outgoing()  # e.g. the answer to a TLS 1.3 KeyUpdate
            if chunks:
                self._app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if drained or not chunks:
                break
        if self._state != _OPEN:
            return
        if self._backlog:
            self._retry_backlog()
        if (drained and (self._tcp_eof or self._peer_closed) and not self._app_eof_done
                and not self._reading_paused):
            self._deliver_eof()

    def _deliver_eof(self) -> None:
        self._app_eof_done = True
        keep_open = self._app.eof_received()
        if self._state == _OPEN and not keep_open:
            self._close()

    def _pause_reading(self) -> None:
        if self._reading_paused:
            return
        self._reading_paused = True
        if self._state == _OPEN:
            self._raw.pause_reading()

    def _resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._state == _OPEN:
            if not self._tcp_eof:
                self._raw.resume_reading()
            if self._delivering:
                # Not from inside the caller (often the app's own data_received).
                self._loop.call_soon(self._read_app_data)

    # -- writing --------------------------------------------------------------------------

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN or self._close_requested:
            return  # like asyncio: writing to a closing transport is ignored
        if self._backlog is not None:
            self._backlog.append(bytes(data))
            return
        self._encrypt(memoryview(data).cast("B"))

    def _encrypt(self, view: memoryview) -> None:
        sslobj, outgoing = self._sslobj, self._outgoing
        batch: list[bytes] = []
        batched = 0
        offset = 0
        try:
            while offset < len(view):
                # One record per SSL_write keeps the outgoing BIO at one record's size.
                offset += sslobj.write(view[offset:offset + RECORD_SIZE])
                out = outgoing.read()
                batch.append(out)
                batched += len(out)
                if batched >= WRITE_BATCH:
                    self._raw.write(b"".join(batch))
                    batch, batched = [], 0
        except ssl.SSLWantReadError:
            self._backlog = [bytes(view[offset:])]
        except ssl.SSLError as exc:
            self._fatal(exc)
            return
        finally:
            if batch and self._state != _CLOSED:
                self._raw.write(b"".join(batch))

    def _retry_backlog(self) -> None:
        backlog, self._backlog = self._backlog, None
        if backlog:
            self._encrypt(memoryview(b"".join(backlog)))
        if self._backlog is None and self._close_requested:
            self._start_shutdown()

    def _flush_outgoing(self) -> None:
        if self._outgoing.pending:
            self._raw.write(self._outgoing.read())

    # -- closing --------------------------------------------------------------------------

    def _close(self) -> None:
        if self._state != _OPEN or self._close_requested:
            return
        self._close_requested = True
        if self._backlog:
            # Finish what the app wrote first; bounded by the shutdown timeout.
            self._timer = self._loop.call_later(SHUTDOWN_TIMEOUT, self._raw.abort)
            return
        self._start_shutdown()

    def _start_shutdown(self) -> None:
        self._state = _CLOSING
        self._cancel_timer()
        try:
            self._sslobj.unwrap()  # writes our close_notify (RFC 8446 §6.1)
        except (ssl.SSLError, ValueError):
            pass  # SSLWantReadError: the peer's close_notify is not here yet
        self._flush_outgoing()
        if self._tcp_eof or self._peer_closed:
            self._raw.close()
            return
        # Read until the peer answers with close_notify or FIN, so closing does not
        # reset the connection under our last data; never longer than SHUTDOWN_TIMEOUT.
        self._raw.resume_reading()
        if self._raw.can_write_eof():
            try:
                self._raw.write_eof()
            except OSError:  # the peer is already gone (ENOTCONN): nothing left to say
                self._raw.abort()
                return
        self._timer = self._loop.call_later(SHUTDOWN_TIMEOUT, self._raw.abort)
        self._drain_for_close()

    def _drain_for_close(self) -> None:
        while True:
            try:
                if self._sslobj.read(RECORD_SIZE):
                    continue  # application data now goes nowhere
                raise ssl.SSLZeroReturnError  # b"": the close_notify
            except ssl.SSLWantReadError:
                if not self._feed_pending():
                    return
            except ssl.SSLZeroReturnError:
                self._peer_closed = True
                self._raw.close()
                return
            except ssl.SSLError:
                self._raw.abort()
                return

    def _abort(self) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._cancel_timer()
        self._raw.abort()

    def _fatal(self, exc: BaseException) -> None:
        """A TLS error after the handshake: drop the connection, tell the app why."""
        if self._fatal_exc is None:
            self._fatal_exc = exc
        self._abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def start_tls(transport: asyncio.Transport, protocol: asyncio.Protocol,
                    context: ssl.SSLContext, *, handshake_timeout: float,
                    server_side: bool = True,
                    server_hostname: str | None = None) -> asyncio.Transport:
    """Run a TLS handshake on ``transport``; return the transport ``protocol`` uses next.

    Same contract as ``loop.start_tls(transport, protocol, context,
    server_side=server_side, ssl_handshake_timeout=handshake_timeout)``: the protocol's
    ``connection_made`` is not called; decrypted data reaches its ``data_received`` from
    the next event-loop iteration on. Raises ssl.SSLError, TimeoutError (no handshake
    within ``handshake_timeout`` seconds), ConnectionError or OSError; the connection is
    then closed.
    """
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"context: expected ssl.SSLContext, not {type(context).__name__}")
    if handshake_timeout <= 0:
        raise ValueError("handshake_timeout must be positive")
    loop = asyncio.get_running_loop()
    if transport.is_closing():
        raise ConnectionResetError("connection closed before the TLS handshake")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = context.wrap_bio(incoming, outgoing, server_side=server_side,
                              server_hostname=None if server_side else server_hostname)
    waiter = loop.create_future()
    layer = _TLSLayer(loop, transport, protocol, sslobj, incoming, outgoing, waiter)
    transport.set_protocol(layer)
    try:
        layer._begin(handshake_timeout)
        transport.resume_reading()
        await waiter
    except BaseException:
        # Cancelled: abort. Failed: the layer has already closed (letting its alert out)
        # or aborted the connection, and this does nothing.
        layer._handshake_failed(ConnectionAbortedError("TLS handshake cancelled"),
                                close=False)
        raise
    if layer._state == _CLOSED:
        # Lost between the handshake and now: nobody would ever tell the protocol.
        raise ConnectionResetError("connection lost right after the TLS handshake")
    layer._app_connected = True
    # The caller runs on until its next await with the new transport in hand; decrypted
    # data (e.g. a TLS 1.3 client's first command, sent with its Finished) waits for it.
    loop.call_soon(layer._start_delivery)
    return layer._transport


class _Parked(asyncio.Protocol):
    """Holds a new client connection still until start_tls takes it over."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()


async def open_tls_connection(
        protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int,
        context: ssl.SSLContext, *, server_hostname: str | None = None,
        handshake_timeout: float = 60.0,
        local_addr: tuple[str, int] | None = None,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """A TLS client connection over the lean layer (like ``loop.create_connection(ssl=)``).

    The protocol's ``connection_made`` is called with the TLS transport once the
    handshake is done.
    """
    loop = asyncio.get_running_loop()
    raw, _ = await loop.create_connection(_Parked, host, port, local_addr=local_addr)
    protocol = protocol_factory()
    try:
        transport = await start_tls(raw, protocol, context, handshake_timeout=handshake_timeout,
                                    server_side=False,
                                    server_hostname=server_hostname or host)
    except BaseException:
        raw.abort()
        raise
    protocol.connection_made(transport)
    return transport, protocol


# -- channel bindings (RFC 5056) ------------------------------------------------------------

#: RFC 9266 §2: the label of the "tls-exporter" channel binding, and its length.
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32

_TLS_VERSION_CODES = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def channel_bindings(connection: Any) -> dict[str, bytes]:
    """The channel bindings of a TLS connection, by RFC 5056 channel-binding name.

    ``connection`` is a transport (this module's or asyncio's), an ssl.SSLObject or an
    ssl.SSLSocket, client or server side. TLS 1.3 gives "tls-exporter" (RFC 9266, listed
    first) and "tls-server-end-point"; TLS 1.2 only "tls-server-end-point" (RFC 9266 §3
    defines the exporter binding for 1.2 only with extended master secret, which Python
    cannot confirm). ``{}`` when the connection is not TLS, the handshake is not
    complete, or a value cannot be determined with certainty.
    """
    if isinstance(connection, (ssl.SSLObject, ssl.SSLSocket)):
        sslobj = connection
    elif isinstance(connection, asyncio.BaseTransport):
        sslobj = connection.get_extra_info("ssl_object")
        if not isinstance(sslobj, (ssl.SSLObject, ssl.SSLSocket)):
            return {}
    else:
        return {}
    try:
        version = sslobj.version()
    except (ValueError, OSError):
        return {}
    if version not in _TLS_VERSION_CODES:
        return {}
    bindings: dict[str, bytes] = {}
    if version == "TLSv1.3":
        exported = tls_exporter(sslobj)
        if exported is not None:
            bindings["tls-exporter"] = exported
    end_point = tls_server_end_point(sslobj)
    if end_point is not None:
        bindings["tls-server-end-point"] = end_point
    return bindings


def tls_exporter(sslobj: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """RFC 9266 §2: TLS-Exporter("EXPORTER-Channel-Binding", no context, 32 bytes)."""
    lib = _libssl()
    ssl_ptr = _ssl_pointer(sslobj) if lib is not None else None
    if lib is None or ssl_ptr is None:
        return None
    out = ctypes.create_string_buffer(EXPORTER_LENGTH)
    # use_context=0: RFC 9266 §2 uses no context value (which differs from an empty one).
    ok = lib.SSL_export_keying_material(ssl_ptr, out, EXPORTER_LENGTH, EXPORTER_LABEL,
                                        len(EXPORTER_LABEL), None, 0, 0)
    return out.raw if ok == 1 else None


def tls_server_end_point(sslobj: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """RFC 5929 §4.1: the hash of the server's certificate, as the server sent it."""
    der = _own_certificate(sslobj) if sslobj.server_side else sslobj.getpeercert(binary_form=True)
    return certificate_hash(der) if der else None


def certificate_hash(der: bytes) -> bytes | None:
    """RFC 5929 §4.1: hash a DER certificate with its signature's hash function.

    MD5 and SHA-1 are replaced by SHA-256; a signature with no single hash function
    (Ed25519, Ed448) has no "tls-server-end-point" binding: None.
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_der_x509_certificate(der)
        algorithm = cert.signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der)
    return digest.finalize()


# -- libssl through ctypes ------------------------------------------------------------

_lib: ctypes.CDLL | None = None
_lib_loaded = False


def _libssl() -> ctypes.CDLL | None:
    """The libssl the ssl module runs on, or None if it cannot be matched with certainty."""
    global _lib, _lib_loaded
    if _lib_loaded:
        return _lib
    _lib_loaded = True
    if sys.implementation.name != "cpython":
        return None
    path = getattr(ssl._ssl, "__file__", None)  # type: ignore[attr-defined]
    try:
        # dlsym on _ssl's own handle searches _ssl and the libraries it was linked with,
        # so the symbols are those of the libssl/libcrypto the ssl module uses (None:
        # _ssl is built into the interpreter, whose global namespace then has them).
        lib = ctypes.CDLL(path)
        c_void_p, c_int, c_size_t, c_ulong = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t,
                                              ctypes.c_ulong)
        lib.OpenSSL_version_num.restype = c_ulong
        lib.OpenSSL_version_num.argtypes = []
        lib.SSL_version.restype = c_int
        lib.SSL_version.argtypes = [c_void_p]
        lib.SSL_is_server.restype = c_int
        lib.SSL_is_server.argtypes = [c_void_p]
        lib.SSL_get_SSL_CTX.restype = c_void_p
        lib.SSL_get_SSL_CTX.argtypes = [c_void_p]
        lib.SSL_get_certificate.restype = c_void_p
        lib.SSL_get_certificate.argtypes = [c_void_p]
        lib.i2d_X509.restype = c_int
        lib.i2d_X509.argtypes = [c_void_p, ctypes.POINTER(c_void_p)]
        lib.SSL_export_keying_material.restype = c_int
        lib.SSL_export_keying_material.argtypes = [
            c_void_p, ctypes.c_char_p, c_size_t, ctypes.c_char_p, c_size_t, ctypes.c_char_p,
            c_size_t, c_int]
        if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            return None
    except (OSError, AttributeError):
        return None
    _lib = lib
    return lib


def _ssl_pointer(sslobj: ssl.SSLObject | ssl.SSLSocket) -> int | None:
    """The ``SSL *`` behind an SSLObject/SSLSocket, or None unless every check agrees.

    CPython's ``PySSLSocket`` starts with PyObject_HEAD, then ``PyObject *Socket``, then
    ``SSL *ssl``, then ``PySSLContext *ctx``; ``PySSLContext`` starts with PyObject_HEAD,
    then ``SSL_CTX *ctx``. The ``ctx`` field must be the context object the ssl module
    reports, and libssl must agree that this SSL belongs to that SSL_CTX, has the
    negotiated version and the same role.
    """
    lib = _libssl()
    inner = getattr(sslobj, "_sslobj", None)
    if lib is None or type(inner) is not ssl._ssl._SSLSocket:  # type: ignore[attr-defined]
        return None
    head = object.__basicsize__
    word = ctypes.sizeof(ctypes.c_void_p)
    context = inner.context
    if (type(inner).__basicsize__ < head + 3 * word
            or not isinstance(context, ssl._ssl._SSLContext)  # type: ignore[attr-defined]
            or type(context).__basicsize__ < head + word):
        return None
    base = id(inner)
    ssl_ptr = ctypes.c_void_p.from_address(base + head + word).value
    ctx_obj = ctypes.c_void_p.from_address(base + head + 2 * word).value
    if not ssl_ptr or ctx_obj != id(context):
        return None
    ssl_ctx = ctypes.c_void_p.from_address(id(context) + head).value
    if not ssl_ctx or lib.SSL_get_SSL_CTX(ssl_ptr) != ssl_ctx:
        return None
    if lib.SSL_version(ssl_ptr) != _TLS_VERSION_CODES.get(sslobj.version() or "", -1):
        return None
    if bool(lib.SSL_is_server(ssl_ptr)) != bool(sslobj.server_side):
        return None
    return ssl_ptr


def _own_certificate(sslobj: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """DER of the certificate this side sent (the one OpenSSL chose, e.g. RSA or ECDSA)."""
    lib = _libssl()
    ssl_ptr = _ssl_pointer(sslobj) if lib is not None else None
    if lib is None or ssl_ptr is None:
        return None
    x509 = lib.SSL_get_certificate(ssl_ptr)
    if not x509:
        return None
    size = lib.i2d_X509(x509, None)
    if size <= 0:
        return None
    buffer = ctypes.create_string_buffer(size)
    cursor = ctypes.c_void_p(ctypes.addressof(buffer))
    if lib.i2d_X509(x509, ctypes.byref(cursor)) != size:
        return None
    return buffer.raw
