"""MimeLimits: hostile nesting, part floods and huge headers stay cheap and lose nothing."""

from __future__ import annotations

import sys
import time

import pytest

from mailkeep.mime import (
    MimeLimits,
    find_section,
    from_json,
    imap_bodystructure,
    index_message,
    iter_parts,
    to_json,
)


def depth_of(root) -> int:
    deepest = 0
    stack = [(root, 0)]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in part.children)
        if part.message is not None:
            stack.append((part.message, depth + 1))
    return deepest


def nested_multiparts(levels: int) -> bytes:
    opening = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--" % i for i in range(levels, -1, -1))
    return (
        b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + opening
        + b"--b%d\r\n\r\nleaf" % levels + closing + b"\r\n"
    )


def nested_messages(levels: int) -> bytes:
    return b"".join(
        b"Subject: level %d\r\nContent-Type: message/rfc822\r\n\r\n" % i for i in range(levels)
    ) + b"Subject: leaf\r\n\r\nbody\r\n"


def test_10000_nested_multiparts_are_cut_at_max_depth() -> None:
    data = nested_multiparts(10_000)
    started = time.perf_counter()
    root = index_message(data)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    assert depth_of(root) == 20
    cut = [p for p in iter_parts(root) if p.defects]
    assert len(cut) == 1
    assert cut[0].content_type == "application/octet-stream"
    assert "deeper than 20" in cut[0].defects[0]
    # The cut part keeps everything below it: no byte of the message is lost.
    assert data[cut[0].body_start : cut[0].body_end].count(b"leaf") == 1
    assert imap_bodystructure(root).count(b'"mixed"') == 20


def test_10000_nested_messages_are_cut_at_max_depth() -> None:
    data = nested_messages(10_000)
    started = time.perf_counter()
    root = index_message(data)
    assert time.perf_counter() - started < 2.0
    assert depth_of(root) == 20
    assert sum(1 for _ in iter_parts(root)) == 21
    # Serialising the result does not recurse either.
    assert from_json(to_json(root)) == root


def test_deeper_limit_does_not_use_the_python_stack() -> None:
    levels = sys.getrecursionlimit() + 200
    data = nested_messages(levels)
    limits = MimeLimits(max_depth=levels + 1, max_parts=levels + 2)
    root = index_message(data, limits)
    assert depth_of(root) == levels
    blob = to_json(root)
    assert from_json(blob).message is not None
    assert imap_bodystructure(root).count(b'"rfc822"') == levels
    start, end = find_section(root, ".".join(["1"] * levels) + ".TEXT")
    assert data[start:end] == b"body\r\n"


def test_100000_parts_are_capped_and_the_rest_kept_in_the_last_part() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        + b"--x\r\n\r\npart\r\n" * 100_000
        + b"--x--\r\n"
    )
    started = time.perf_counter()
    root = index_message(data)
    assert time.perf_counter() - started < 2.0
    assert sum(1 for _ in iter_parts(root)) == 1000
    last = root.children[-1]
    assert "limit of 1000 parts" in last.defects[0]
    assert last.body_end == root.body_end
    assert data[last.body_start : last.body_end].count(b"part") == 100_000 - 998
    assert last.lines == data.count(b"\n", last.body_start, last.body_end)


def test_part_limit_makes_an_unsplit_multipart_opaque() -> None:
    data = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\na\r\n--x--\r\n"
    root = index_message(data, MimeLimits(max_parts=1))
    assert root.content_type == "application/octet-stream"
    assert root.children == []
    assert find_section(root, "1") == (root.body_start, root.body_end)


def test_part_limit_on_encapsulated_message() -> None:
    data = nested_messages(3)
    root = index_message(data, MimeLimits(max_parts=2))
    assert root.message is not None
    assert root.message.content_type == "application/octet-stream"
    assert root.message.message is None


def test_part_limit_extends_through_encapsulated_message() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        b"--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody\r\n"
        b"--x\r\n\r\nmore\r\n--x--\r\n"
    )
    root = index_message(data, MimeLimits(max_parts=3))
    message_part = root.children[0]
    assert len(root.children) == 1
    assert message_part.body_end == message_part.message.body_end == root.body_end


def test_long_header_block_is_cut_into_body() -> None:
    data = b"Subject: x\r\n" + b"X-Filler: " + b"a" * 2000 + b"\r\n" + b"\r\nbody\r\n"
    root = index_message(data, MimeLimits(max_header_bytes=1000))
    assert root.body_start == len(b"Subject: x\r\n")
    assert root.envelope.subject == b"x"
    assert "longer than 1000 bytes" in root.defects[0]


def test_header_field_limit() -> None:
    data = b"".join(b"X-%d: y\r\n" % i for i in range(50)) + b"Subject: late\r\n\r\nbody"
    root = index_message(data, MimeLimits(max_headers=10))
    assert root.envelope.subject is None
    assert any("more than 10 header fields" in d for d in root.defects)
    assert data[root.body_start :] == b"body"  # the body still starts after the blank line


@pytest.mark.parametrize(
    "kwargs",
    [{"max_depth": -1}, {"max_parts": 0}, {"max_headers": 1.5}, {"max_header_bytes": True}],
)
def test_invalid_limits_are_refused(kwargs) -> None:
    with pytest.raises(ValueError, match="MimeLimits"):
        MimeLimits(**kwargs)


def test_large_message_is_linear() -> None:
    attachment = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=QUJDREVGR0hJSktMTU5PUFFSU1RVVldY\r\n" * 150_000
    data = (
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\nSee attached.\r\n"
        + b"--zz\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + attachment + b"--zz\r\nContent-Type: text/plain\r\n\r\n" + attachment + b"--zz--\r\n"
    )
    assert len(data) > 20_000_000
    started = time.perf_counter()
    root = index_message(data)
    assert time.perf_counter() - started < 1.0
    assert [c.content_type for c in root.children] == ["text/plain", "application/zip", "text/plain"]
    # The last line end of the part belongs to the delimiter after it (RFC 2046 §5.1.1).
    assert root.children[2].lines == 150_000 - 1
