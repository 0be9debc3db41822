"""Relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4): the spec's own examples, dkimpy
as the reference for random bodies, and independence from how the body is chunked."""

from __future__ import annotations

import hashlib
import time
import tracemalloc

from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.dkim.canon import RelaxedBodyHasher, relaxed_body, relaxed_header


def reference_body(body: bytes) -> bytes:
    """dkimpy's relaxed body, for the body a receiver sees: an SMTP client ends DATA with
    CRLF (RFC 5321 §4.1.1.4), so a body without a final CRLF arrives with one."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return Relaxed.canonicalize_body(body)


def chunked_canonical(body: bytes, cuts: list[int]) -> bytes:
    collected: list[bytes] = []

    class Collect:
        def update(self, data: bytes) -> None:
            collected.append(bytes(data))

        def digest(self) -> bytes:
            return b"".join(collected)

    hasher = RelaxedBodyHasher(Collect)
    start = 0
    for cut in sorted(set(cuts)):
        hasher.update(body[start:cut])
        start = cut
    hasher.update(body[start:])
    return hasher.digest()


# -- RFC 6376 §3.4.5 examples --------------------------------------------------------------

def test_rfc6376_example_headers():
    assert relaxed_header(b"A", b" X") == b"a:X\r\n"
    assert relaxed_header(b"B ", b" Y\t\r\n\tZ  ") == b"b:Y Z\r\n"


def test_rfc6376_example_body():
    assert relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"


def test_empty_bodies_canonicalize_to_nothing():
    for body in (b"", b"\r\n", b"\r\n\r\n", b" \t\r\n\r\n", b"   "):
        assert relaxed_body(body) == b"", body


def test_unterminated_last_line_is_canonicalized_as_the_receiver_sees_it():
    # The SMTP client adds CRLF before the final dot, so trailing whitespace of that line
    # is trailing whitespace at the receiver.
    assert relaxed_body(b"abc  ") == b"abc\r\n"
    assert relaxed_body(b"abc\r\n  ") == b"abc\r\n"
    assert relaxed_body(b"a\r\n\r\nb") == b"a\r\n\r\nb\r\n"


def test_bare_cr_and_lf_are_ordinary_characters():
    assert relaxed_body(b"a \n b\r\n") == reference_body(b"a \n b\r\n") == b"a \n b\r\n"
    assert relaxed_body(b"a\r \r\n") == b"a\r\r\n"


# -- against dkimpy ------------------------------------------------------------------------

# Bodies made mostly of the bytes canonicalization cares about.
_TRICKY = st.binary().map(bytes) | st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b" ", b"\t", b"x", b"  \t ", b"\r\n\r\n", b"\xff"]),
    max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(body=_TRICKY, cuts=st.lists(st.integers(min_value=0, max_value=250), max_size=12))
def test_relaxed_body_equals_dkimpy_in_any_chunking(body: bytes, cuts: list[int]):
    expected = reference_body(body)
    assert chunked_canonical(body, cuts) == expected
    hasher = RelaxedBodyHasher()
    for index in range(len(body)):  # one byte at a time: every boundary split
        hasher.update(body[index:index + 1])
    assert hasher.digest() == hashlib.sha256(expected).digest()


@settings(max_examples=200, deadline=None)
@given(name=st.from_regex(rb"\A[!-9;-~]{1,20}\Z"),
       value=st.lists(st.sampled_from([b" ", b"\t", b"\r\n ", b"\r\n\t", b"a", b"B:", b"\xc3\xa9"]),
                      max_size=30).map(b"".join))
def test_relaxed_header_equals_dkimpy(name: bytes, value: bytes):
    [(ref_name, ref_value)] = Relaxed.canonicalize_headers([(name, value)])
    assert relaxed_header(name, value) == ref_name + b":" + ref_value


# -- streaming -----------------------------------------------------------------------------

def test_long_whitespace_runs_and_lines_stay_fast_and_small():
    # A line of 4 MB of spaces then one character, a 4 MB line and a million empty lines:
    # linear time, and neither the space run nor the long line is buffered whole.
    body = b" " * (4 << 20) + b"x\r\n" + b"y" * (4 << 20) + b"\r\n" * (1 << 20) + b"z"
    started = time.monotonic()
    hasher = RelaxedBodyHasher()
    tracemalloc.start()
    try:
        for start in range(0, len(body), 65536):
            hasher.update(body[start:start + 65536])
        digest = hasher.digest()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 1 << 20, f"peak {peak} bytes while hashing 64 KiB chunks"
    # Written out by hand: dkimpy's regular expressions take minutes on such input.
    expected = b" x\r\n" + b"y" * (4 << 20) + b"\r\n" * (1 << 20) + b"z\r\n"
    assert digest == hashlib.sha256(expected).digest()


def test_memory_does_not_grow_with_the_body():
    # 48 MiB fed in 1 MiB chunks (the signer's read size): base64 lines, text, and lines
    # full of whitespace runs.
    lines = (b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5\r\n" * 9
             + b"Some text, as people write it.  Two spaces here.\r\n"
             + b"  \t indented \t\t and trailing  \t \r\n")
    chunk = (lines * (1 + (1 << 20) // len(lines)))[:1 << 20]
    hasher = RelaxedBodyHasher()
    tracemalloc.start()
    try:
        for _ in range(48):
            hasher.update(chunk)
        hasher.digest()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"peak {peak} bytes while hashing 48 MiB"


def test_feeding_after_digest_is_refused():
    hasher = RelaxedBodyHasher()
    hasher.update(b"a\r\n")
    hasher.digest()
    try:
        hasher.update(b"b")
    except ValueError as exc:
        assert "already finished" in str(exc)
    else:
        raise AssertionError("update after digest was accepted")
