"""A message the caller still holds in memory (``OutboundMessage.content``, a message
just queued) goes out byte for byte as from its file, without reading the file; checked
against Postfix's smtp-sink, which dumps what it received."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from tests.support.sink import SmtpSink, split_dump

from mailkeep.outbound.client import (
    ClientSession,
    OutboundMessage,
    OutboundRecipient,
    TlsRequirement,
)

pytestmark = pytest.mark.interop

WAIT = 30.0


def lf_lines(content: bytes) -> bytes:
    """What smtp-sink stores: every line break one LF, a final one added."""
    content = re.sub(rb"\r\n|\r|\n", b"\n", content)
    return content if content.endswith(b"\n") else content + b"\n"


def tricky(marker: str, lines: int) -> bytes:
    filler = b"".join(b".%05d dotted filler line\r\n" % i for i in range(lines))
    return (f"X-Marker: {marker}\r\nSubject: dots\r\n\r\n".encode()
            + b".\r\n..\r\nsmuggle\n.\nMAIL FROM:<x@evil>\r\nbare\rcr\r\n" + filler
            + b".no final newline")


@pytest.mark.parametrize("lines", [3, 6000], ids=["one-piece", "several-pieces"])
async def test_content_in_memory_is_sent_as_the_file_would_be(tmp_path: Path,
                                                              lines: int) -> None:
    sink = SmtpSink(tmp_path / "sink").start()
    try:
        content = tricky(f"memory-{lines}", lines)
        on_disk = tmp_path / "queued"
        on_disk.write_bytes(tricky(f"file-{lines}", lines))
        missing = tmp_path / "never-written"
        session = await asyncio.wait_for(ClientSession.connect(
            "relay.example.test", sink.port, address="127.0.0.1",
            helo_name="client.mailkeep.test", tls=TlsRequirement("none")), WAIT)
        rcpt = (OutboundRecipient("a@example.net"),)
        from_memory = await session.send(OutboundMessage(
            "sender@example.org", rcpt, missing, len(content), content=content))
        from_file = await session.send(OutboundMessage(
            "sender@example.org", rcpt, on_disk, on_disk.stat().st_size))
        await session.quit()
        assert from_memory.message_reply is not None and from_memory.message_reply.code == 250
        assert from_file.message_reply is not None and from_file.message_reply.code == 250
        received = [split_dump(raw)[1] for raw in sink.wait_for(2)]
        bodies = sorted(r.split(b"\n", 3)[3] for r in received)  # after smtp-sink's Received
        assert bodies == sorted([lf_lines(content) + b"\n",
                                 lf_lines(on_disk.read_bytes()) + b"\n"])
    finally:
        sink.cleanup()
