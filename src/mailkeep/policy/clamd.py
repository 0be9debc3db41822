"""Virus scanning with ClamAV's clamd, over its socket, before the end of DATA is answered.

The SMTP receiver hands each message to clamd before it replies to the final "." (or the
last BDAT chunk), so an infected message is refused while the sending MTA is still
connected and bounces it itself; accepting first and discarding or bouncing later would
either lose mail silently or send backscatter to forged senders (issue 5, seed 004).

Protocol, from clamd(8) "COMMANDS":

* Every command is sent in its ``z`` form (``zINSTREAM\\0``, ``zPING\\0``): the command
  and clamd's reply each end with a NUL byte, which cannot occur inside either, so a
  reply is complete exactly when its NUL arrives.
* INSTREAM: after the command the message follows as chunks, each a 4-byte unsigned
  length in network byte order and that many bytes; a zero-length chunk ends the stream.
  clamd then answers one line: ``stream: OK``, ``stream: <signature> FOUND``, or
  ``<text> ERROR``. A stream longer than clamd's ``StreamMaxLength`` (clamd.conf(5)) is
  answered "INSTREAM size limit exceeded. ERROR" and the connection is closed, possibly
  while we are still sending, so the reply is read concurrently with the sending.
* PING is answered ``PONG``.

clamd decodes mail itself (clamd.conf ``ScanMail``): base64 attachments, nested messages
and archives inside them are scanned, so the message goes as it is, headers included.

Everything that decides something is pure and synchronous here: :func:`parse_clamd_address`,
the framing (:func:`instream_chunk_header`), :func:`parse_instream_reply` and
:func:`clamd_verdict` (what the receiver replies and which header it adds).
:class:`ClamdClient` is the thin asyncio part: one connection per scan, so a scan that
hangs or fails affects only its own message, and every exchange runs under one timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mailkeep.logfmt import log
from mailkeep.smtp.reply import Reply

__all__ = [
    "CLEAN_HEADER",
    "DEFAULT_MAX_SCAN_SIZE",
    "DEFAULT_TIMEOUT",
    "MAX_REPLY_LENGTH",
    "SKIPPED_HEADER",
    "STREAM_CHUNK_SIZE",
    "TEMPFAIL_REPLY",
    "UNAVAILABLE_HEADER",
    "VIRUS_SCAN_HEADER",
    "ClamdAddress",
    "ClamdClient",
    "ClamdResult",
    "ClamdStatus",
    "ClamdVerdict",
    "OnError",
    "clamd_verdict",
    "infected_reply",
    "instream_chunk_header",
    "parse_clamd_address",
    "parse_instream_reply",
]

logger = logging.getLogger("mailkeep.policy.clamd")

#: Seconds one whole exchange (connect, send, scan, reply) may take.
DEFAULT_TIMEOUT = 30.0
#: Largest message sent to clamd (bytes). Debian's clamd.conf sets ``StreamMaxLength 25M``;
#: clamd refuses longer streams, so a larger limit here needs a larger one there.
DEFAULT_MAX_SCAN_SIZE = 25 * 1024 * 1024
#: Bytes per INSTREAM chunk, and so the most of a message held in memory at once when it is
#: streamed from its spool file.
STREAM_CHUNK_SIZE = 64 * 1024
#: Longest reply accepted from clamd (bytes, without the NUL). Real replies are a signature
#: name and a few words; anything longer is not clamd, or not a clamd we understand.
MAX_REPLY_LENGTH = 1024
#: sun_path holds 108 bytes on Linux (unix(7)), one of them the terminating NUL.
MAX_UNIX_SOCKET_PATH = 107
#: Seconds allowed for closing the connection after the exchange; not part of the timeout.
CLOSE_TIMEOUT = 1.0

#: clamd(8): the z prefix makes clamd end its reply with NUL as the command is ended.
INSTREAM_COMMAND = b"zINSTREAM\0"
PING_COMMAND = b"zPING\0"
#: clamd(8) INSTREAM: "Streaming is terminated by sending a zero-length chunk."
INSTREAM_END = b"\0\0\0\0"
_CHUNK_LENGTH = struct.Struct(">I")  # 4-byte unsigned integer in network byte order

#: The header field added to messages that were accepted (one name for every outcome).
VIRUS_SCAN_HEADER = "X-Virus-Scanned"

ClamdStatus = Literal["clean", "infected", "error", "skipped"]
OnError = Literal["tempfail", "accept"]

# ``stream: <signature> FOUND``; with ``ExtendedDetectionInfo yes`` (Debian's default)
# clamd appends the matching hash and size to hash signatures: ``Name(<md5>:<size>)``.
_EXTENDED_INFO = re.compile(r"\((?:[0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64}):\d+\)\Z")
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\[\]]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


# --- addresses ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClamdAddress:
    """Where clamd listens: a Unix socket ``path``, or ``host`` and ``port`` over TCP."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_clamd_address(text: str) -> ClamdAddress:
    """Parse a clamd address: "/run/clamav/clamd.ctl", "127.0.0.1:3310" or "[::1]:3310".

    A Unix socket path starts with "/" (clamd.conf ``LocalSocket``); anything else is
    ``host:port`` (``TCPSocket``/``TCPAddr``), an IPv6 address in brackets. Raises
    ValueError saying what is wrong, for the configuration loader to report.
    """
    text = text.strip()
    if text.startswith("/"):
        if "\0" in text:
            raise ValueError("a clamd socket path cannot contain NUL")
        if len(os.fsencode(text)) > MAX_UNIX_SOCKET_PATH:
            raise ValueError(f"clamd socket path is longer than {MAX_UNIX_SOCKET_PATH} bytes,"
                             " the most a Unix socket address holds")
        return ClamdAddress(path=text)
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a clamd address; use a socket path such as"
                         " /run/clamav/clamd.ctl, or host:port such as 127.0.0.1:3310"
                         " or [::1]:3310")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"clamd port {port} is not between 1 and 65535")
    if match["v6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(match["v6"]))
        except ValueError:
            raise ValueError(f"{match['v6']!r} in brackets is not an IPv6 address") from None
        return ClamdAddress(host=host, port=port)
    host = match["host"]
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IPv4 address")
    return ClamdAddress(host=host, port=port)


# --- the protocol, pure -----------------------------------------------------------------------

def instream_chunk_header(length: int) -> bytes:
    """The 4-byte length that precedes an INSTREAM chunk of ``length`` bytes (clamd(8))."""
    return _CHUNK_LENGTH.pack(length)


@dataclass(frozen=True, slots=True)
class ClamdResult:
    """What a scan found.

    ``status`` is "clean", "infected" (``signature`` names what clamd found), "error"
    (clamd could not be reached, did not answer in time, refused the stream or answered
    something we do not understand; ``detail`` says which) or "skipped" (the message is
    larger than the scan limit and was not sent). ``detail`` is for logs, not for senders.
    """

    status: ClamdStatus
    signature: str | None
    detail: str


def parse_instream_reply(reply: bytes) -> ClamdResult:
    """Interpret clamd's answer to INSTREAM (without its NUL); never raises.

    "stream: OK" is clean, "stream: <name> FOUND" infected with <name> (extended detection
    info, "(<hash>:<size>)", removed), "<text> ERROR" an error quoting clamd, and anything
    else an error saying the reply was not understood.
    """
    text = reply.decode("utf-8", "replace").strip("\r\n\0 ")
    shown = text.encode("unicode_escape").decode("ascii")  # controls visible in logs
    if text.endswith("ERROR"):
        return ClamdResult("error", None, f"clamd: {shown}")
    label, separator, rest = text.partition(": ")
    if separator and label == "stream":
        if rest == "OK":
            return ClamdResult("clean", None, text)
        if rest.endswith(" FOUND"):
            signature = _EXTENDED_INFO.sub("", rest.removesuffix(" FOUND")).strip()
            if signature and signature.isprintable():
                return ClamdResult("infected", signature, text)
    return ClamdResult("error", None, f"unparseable reply from clamd: {shown!r}")


# --- what the receiver does with a result -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClamdVerdict:
    """What the SMTP receiver does after a scan.

    ``reply`` is the reply to the end of DATA that refuses the message (550 for a virus, 451
    when clamd failed and the choice is to try again later), or None to go on. ``header`` is
    the complete ``X-Virus-Scanned`` field, CRLF-terminated, to add to an accepted message,
    or None.
    """

    reply: Reply | None
    header: bytes | None


def _header(value: str) -> bytes:
    return f"{VIRUS_SCAN_HEADER}: {value}\r\n".encode("ascii")


#: Replies and header fields for each outcome; named so that docs and tests can quote them.
TEMPFAIL_REPLY = Reply(451, "4.7.1", "Virus scanner unavailable, try again later")
CLEAN_HEADER = _header("clamd; clean")
UNAVAILABLE_HEADER = _header("clamd; unavailable, message not scanned")
SKIPPED_HEADER = _header("clamd; skipped, message larger than the scan limit")


def infected_reply(signature: str) -> Reply:
    """550 5.7.1: RFC 3463 §3.8 X.7.1, "delivery not authorized, message refused"."""
    return Reply(550, "5.7.1", f"Message refused: virus {signature} found")


def clamd_verdict(result: ClamdResult, on_error: OnError) -> ClamdVerdict:
    """Turn a scan result and the configured ``on_error`` choice into the receiver's action.

    * infected: refuse with 550 5.7.1 naming the virus (the sender's MTA bounces it to its
      user, who learns why);
    * error: with "tempfail", 451 4.7.1, so the sending MTA keeps the message and retries
      (RFC 5321 §4.2.5: nothing is lost while clamd is down); with "accept", accept it and
      say in the header that it was not scanned;
    * skipped (too large to scan): accept and say so in the header;
    * clean: accept with "clamd; clean".
    """
    if result.status == "infected":
        return ClamdVerdict(infected_reply(result.signature or "unknown"), None)
    if result.status == "clean":
        return ClamdVerdict(None, CLEAN_HEADER)
    if result.status == "skipped":
        return ClamdVerdict(None, SKIPPED_HEADER)
    if on_error == "accept":
        return ClamdVerdict(None, UNAVAILABLE_HEADER)
    return ClamdVerdict(TEMPFAIL_REPLY, None)


# --- the client -------------------------------------------------------------------------------

class _ExchangeError(Exception):
    """The exchange failed in a way that has its own detail text."""


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """Read one NUL-terminated reply of at most MAX_REPLY_LENGTH bytes (without the NUL).

    A reply that ends with the connection instead of a NUL is taken as it is: it can only
    be understood if it is whole, and parse_instream_reply() says so if it is not.
    """
    buffer = bytearray()
    while True:
        data = await reader.read(MAX_REPLY_LENGTH + 1)
        if not data:
            if not buffer:
                raise _ExchangeError("clamd closed the connection without a reply")
            return bytes(buffer)
        buffer += data
        end = buffer.find(b"\0")
        if end >= 0:
            if end > MAX_REPLY_LENGTH:
                break
            return bytes(buffer[:end])
        if len(buffer) > MAX_REPLY_LENGTH:
            break
    raise _ExchangeError(f"clamd reply longer than {MAX_REPLY_LENGTH} bytes")


class _TooLarge(Exception):
    """The spool file grew past the scan limit while it was being sent."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _chunks(message: bytes | Path, limit: int) -> Iterator[memoryview | bytes]:
    """The message in STREAM_CHUNK_SIZE pieces; _TooLarge once more than ``limit`` came.

    A spool file is read with plain reads: 64 KiB from a local file takes microseconds,
    less than handing it to a thread would cost, and the sender awaits clamd between
    chunks, so the event loop is never held for long. The file is closed as soon as the
    sender stops iterating (CPython finalizes the generator then).
    """
    if isinstance(message, Path):
        try:
            spool = message.open("rb")
        except OSError as exc:
            raise _ExchangeError(f"cannot read the message file: {_describe(exc)}") from exc
        with spool:
            sent = 0
            while True:
                try:
                    chunk = spool.read(STREAM_CHUNK_SIZE)
                except OSError as exc:
                    raise _ExchangeError(
                        f"cannot read the message file: {_describe(exc)}") from exc
                if not chunk:
                    return
                sent += len(chunk)
                if sent > limit:
                    raise _TooLarge(sent)
                yield chunk
    view = memoryview(message)
    for start in range(0, len(view), STREAM_CHUNK_SIZE):
        yield view[start:start + STREAM_CHUNK_SIZE]


class ClamdClient:
    """An asyncio client for clamd's INSTREAM and PING commands.

    ``address`` is a Unix socket path or ``host:port`` (see :func:`parse_clamd_address`;
    a bad address raises ValueError here, at configuration time). ``timeout`` bounds each
    whole exchange; messages larger than ``max_scan_size`` bytes are not sent at all.
    Neither :meth:`scan` nor :meth:`ping` raises for anything clamd or the network does.
    """

    def __init__(self, address: str, *, timeout: float = DEFAULT_TIMEOUT,
                 max_scan_size: int = DEFAULT_MAX_SCAN_SIZE) -> None:
        if not timeout > 0:
            raise ValueError("the clamd timeout must be positive")
        if max_scan_size < 0:
            raise ValueError("the clamd scan size limit cannot be negative")
        self.address = parse_clamd_address(address)
        self.timeout = float(timeout)
        self.max_scan_size = max_scan_size

    def __repr__(self) -> str:
        return f"ClamdClient({str(self.address)!r}, timeout={self.timeout:g})"

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.address.path is not None:
            return await asyncio.open_unix_connection(self.address.path)
        return await asyncio.open_connection(self.address.host, self.address.port)

    async def scan(self, message: bytes | Path) -> ClamdResult:
        """Scan ``message`` (its bytes, or the path of its spool file) with INSTREAM.

        A file is streamed in STREAM_CHUNK_SIZE pieces, never read whole. Returns the
        result; problems with clamd, the network or the spool file give status "error".
        """
        started = time.monotonic()
        try:
            size = message.stat().st_size if isinstance(message, Path) else len(message)
        except OSError as exc:
            return self._failed(f"cannot read the message file: {_describe(exc)}", started)
        if size > self.max_scan_size:
            return self._skipped(size)
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._instream(message)
        except _TooLarge as exc:
            return self._skipped(exc.size)
        except TimeoutError:
            return self._failed(f"no answer from clamd within {self.timeout:g}s", started)
        except _ExchangeError as exc:
            return self._failed(str(exc), started)
        except OSError as exc:
            return self._failed(_describe(exc), started)
        result = parse_instream_reply(reply)
        if result.status == "error":
            return self._failed(result.detail, started)
        log(logger, "message scanned", logging.DEBUG, clamd=str(self.address),
            status=result.status, signature=result.signature, size=size,
            elapsed=round(time.monotonic() - started, 3))
        return result

    async def _instream(self, message: bytes | Path) -> bytes:
        reader, writer = await self._connect()
        # clamd may answer before the stream ends (StreamMaxLength exceeded) and close the
        # connection; reading all along keeps that answer even when sending then fails.
        reply_task = asyncio.create_task(_read_reply(reader))
        clean_close = False
        try:
            try:
                writer.write(INSTREAM_COMMAND)
                for chunk in _chunks(message, self.max_scan_size):
                    if reply_task.done():
                        break
                    writer.write(instream_chunk_header(len(chunk)))
                    writer.write(chunk)
                    await writer.drain()
                else:
                    writer.write(INSTREAM_END)
                    await writer.drain()
            except ConnectionError as exc:
                # The reply, if clamd sent one before closing, says why; else say this.
                await asyncio.wait([reply_task])
                if reply_task.cancelled() or reply_task.exception() is not None:
                    raise _ExchangeError(
                        f"clamd closed the connection while the message was being sent"
                        f" ({_describe(exc)}); is the message larger than clamd's"
                        f" StreamMaxLength?") from exc
            reply = await reply_task
            clean_close = True
            return reply
        finally:
            if not reply_task.done():
                reply_task.cancel()
                await asyncio.wait([reply_task])
            elif not reply_task.cancelled():
                reply_task.exception()  # retrieved, so asyncio does not log it as lost
            await _close(writer, clean_close)

    async def ping(self) -> bool:
        """True if clamd answers PING with PONG within the timeout (for health checks)."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect()
                try:
                    writer.write(PING_COMMAND)
                    await writer.drain()
                    reply = await _read_reply(reader)
                finally:
                    await _close(writer, True)
        except TimeoutError:
            error = f"no answer within {self.timeout:g}s"
        except OSError as exc:
            error = _describe(exc)
        except _ExchangeError as exc:
            error = str(exc)
        else:
            if reply == b"PONG":
                return True
            error = f"unexpected reply {reply[:80]!r}"
        log(logger, "clamd ping failed", logging.WARNING, clamd=str(self.address), error=error)
        return False

    def _failed(self, detail: str, started: float) -> ClamdResult:
        log(logger, "virus scan failed", logging.WARNING, clamd=str(self.address),
            detail=detail, elapsed=round(time.monotonic() - started, 3))
        return ClamdResult("error", None, detail)

    def _skipped(self, size: int) -> ClamdResult:
        detail = f"message of {size} bytes is larger than the scan limit of" \
                 f" {self.max_scan_size} bytes"
        log(logger, "virus scan skipped", logging.INFO, clamd=str(self.address),
            size=size, limit=self.max_scan_size)
        return ClamdResult("skipped", None, detail)


def _describe(exc: OSError) -> str:
    """The error as a log reads it: "connection refused", "no such file or directory"."""
    # asyncio's connect errors carry "Connect call failed (address)" as their text; the
    # errno says what happened, and the address is logged on its own.
    text = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


async def _close(writer: asyncio.StreamWriter, flush: bool) -> None:
    """Close the connection; after a failure, abort it rather than flush unsent data."""
    if flush:
        writer.close()
    else:
        writer.transport.abort()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
