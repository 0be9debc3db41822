"""The channel between the server and its delivery process: framed messages on a socketpair.

A message is a tuple whose first item names it (``("wake",)``, ``("new", entries)``...;
the vocabulary is in mailkeep.queue.agent). On the wire each is a 4-byte big-endian length
and the pickled tuple. Pickle is safe here and only here: both ends are the same program
running as the same user, and the socketpair is created by the server and inherited by the
one child it starts; nothing else can write to it.

``encode`` and ``Decoder`` are the sans-IO core; ``Channel`` carries them over an asyncio
transport. A frame longer than ``MAX_FRAME`` is a bug or corruption: the channel closes
(each side then acts as if the other had gone away).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

from mailkeep.logfmt import log

logger = logging.getLogger("mailkeep.queue")

HEADER = struct.Struct("!I")
#: Largest message accepted (a batch of queue entries or a config is far smaller).
MAX_FRAME = 64 << 20


class FrameError(ValueError):
    """The peer sent something that is not a frame of this protocol."""


def encode(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_FRAME:
        raise FrameError(f"message {message[0]!r} is {len(data)} bytes (limit {MAX_FRAME})")
    return HEADER.pack(len(data)) + data


class Decoder:
    """Bytes in, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[Any, ...]] = []
        start = 0
        while len(buffer) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, start)
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes (limit {MAX_FRAME})")
            end = start + HEADER.size + length
            if len(buffer) < end:
                break
            message = pickle.loads(memoryview(buffer)[start + HEADER.size:end])
            if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
                raise FrameError(f"not a message: {type(message).__name__}")
            out.append(message)
            start = end
        if start:
            del buffer[:start]
        return out


class Channel(asyncio.Protocol):
    """One end of the socketpair. ``on_message`` runs on the loop for each message;
    ``closed`` is set when the other end has gone (EOF, error, or a bad frame)."""

    def __init__(self, on_message: Callable[[tuple[Any, ...]], None]) -> None:
        self.on_message = on_message
        self.closed = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self._decoder = Decoder()

    @classmethod
    async def open(cls, sock: socket.socket,
                   on_message: Callable[[tuple[Any, ...]], None]) -> Channel:
        loop = asyncio.get_running_loop()
        _, channel = await loop.create_unix_connection(lambda: cls(on_message), sock=sock)
        return channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except Exception as exc:  # FrameError, or a pickle that does not load
            log(logger, "delivery channel: bad frame, closing", logging.ERROR,
                error=repr(exc))
            self.close()
            return
        for message in messages:
            try:
                self.on_message(message)
            except Exception:
                logger.exception("delivery channel: handling %s failed", message[0])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closed.set()

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, *message: Any) -> bool:
        """Queue one message for the other end; False when the channel is closed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(encode(message))
        return True

    def buffered(self) -> int:
        """Bytes written but not yet taken by the other end."""
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
