"""The server ↔ delivery process channel (mailkeep.queue.channel): frames, and a socketpair."""

from __future__ import annotations

import asyncio
import pickle
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.queue.channel import HEADER, MAX_FRAME, Channel, Decoder, FrameError, encode

MESSAGES = st.lists(st.tuples(st.sampled_from(["new", "wake", "log", "local"]),
                              st.integers(), st.text(max_size=50), st.binary(max_size=300)),
                    max_size=8)


@given(MESSAGES, st.data())
def test_messages_come_out_whole_however_the_bytes_are_split(messages, data) -> None:
    wire = b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = Decoder()
    out = []
    start = 0
    for cut in [*cuts, len(wire)]:
        out += decoder.feed(wire[start:cut])
        start = cut
    assert out == messages


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(FrameError):
        Decoder().feed(HEADER.pack(MAX_FRAME + 1))


def test_a_frame_that_is_not_a_named_tuple_is_refused() -> None:
    data = pickle.dumps(["not", "a", "tuple"])
    with pytest.raises(FrameError):
        Decoder().feed(HEADER.pack(len(data)) + data)
    data = pickle.dumps(())
    with pytest.raises(FrameError):
        Decoder().feed(HEADER.pack(len(data)) + data)


def test_both_ends_of_a_socketpair_talk_and_see_the_other_go() -> None:
    async def main() -> None:
        a_sock, b_sock = socket.socketpair()
        got: list = []
        a = await Channel.open(a_sock, lambda m: None)
        b = await Channel.open(b_sock, got.append)
        big = ("new", b"x" * 300_000)  # larger than one socket read
        assert a.send("wake") and a.send(*big)
        for _ in range(200):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert got == [("wake",), big]
        a.close()
        await asyncio.wait_for(b.closed.wait(), 5)
        assert not b.is_open and not b.send("wake")

    asyncio.run(main())


def test_garbage_from_the_other_end_closes_the_channel() -> None:
    async def main() -> None:
        a_sock, b_sock = socket.socketpair()
        got: list = []
        b = await Channel.open(b_sock, got.append)
        a_sock.sendall(HEADER.pack(5) + b"12345")  # not a pickle
        await asyncio.wait_for(b.closed.wait(), 5)
        a_sock.close()
        assert got == []

    asyncio.run(main())
