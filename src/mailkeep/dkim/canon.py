"""DKIM "relaxed" canonicalization (RFC 6376 §3.4.2 headers, §3.4.4 body).

The body side is a streaming hasher: a 100 MB message in a spool file is fed through in
chunks and never held in memory, and the result is the same whatever the chunk boundaries
are (a CRLF, a whitespace run or a line may be split across two chunks).

Pure code: no files, no clock. The signer (``mailkeep.dkim.sign``) does the reading.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

CRLF = b"\r\n"

# RFC 6376 §2.8: WSP = SP / HTAB. Runs that already are a single SP are left alone:
# they are most of the whitespace in text, and replacing each one costs time and memory.
_WSP_RUN = re.compile(rb"(?:\t| [ \t])[ \t]*")
#: The body is canonicalized in slices of at most this many bytes, whatever the caller's
#: chunk size: it bounds the temporary memory of the substitutions.
BODY_SLICE = 64 * 1024
# Held-back empty lines are hashed this many at a time.
_EMPTY_LINES_BLOCK = 4096
_CRLF_BLOCK = CRLF * _EMPTY_LINES_BLOCK
# Header unfolding (RFC 5322 §2.2.3 / RFC 6376 §3.4.2): line breaks inside a field are
# removed. A bare LF is removed too, so that a header block with LF line ends (which the
# submission path should have normalized) still canonicalizes the way a receiver will
# after its MTA has turned it into CRLF.
_LINE_BREAK = re.compile(rb"\r?\n")


def _compress(data: bytes) -> bytes:
    """§3.4.4 (b) and §3.4.2: every run of WSP becomes a single SP."""
    if b"\t" not in data and b"  " not in data:
        # Nothing to do, as in base64 attachments and most text: two substring searches
        # cost a tenth of what a regular expression scan does.
        return data
    return _WSP_RUN.sub(b" ", data)


def _trailing_crlf_count(data: bytes) -> int:
    """How many CRLF pairs ``data`` ends with (a CRLF cannot overlap another, so counting
    from the end is unambiguous)."""
    # Only the run of CRs and LFs at the very end can hold them. Inside that run the
    # pairs end where two equal characters meet; the rest is plain string searching,
    # because a regular expression over "(CRLF)*" needs memory per repetition.
    tail = data[len(data.rstrip(b"\r\n")):]
    if not tail.endswith(b"\n"):
        return 0
    alternating = tail[max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1:]
    if alternating.startswith(b"\n"):
        alternating = alternating[1:]  # an LF that ends nothing: part of the line before
    return len(alternating) // 2


class RelaxedBodyHasher:
    """Hash of the relaxed-canonicalized body (RFC 6376 §3.4.4), fed in arbitrary chunks.

    §3.4.4: (a) whitespace at the end of a line is ignored and other WSP runs become one
    SP; (b) empty lines at the end of the body are ignored; a non-empty body that does not
    end with CRLF gets one. So an empty body, or one of empty lines only, canonicalizes
    to nothing (unlike "simple", where it becomes one CRLF, §3.4.3).

    A final line without CRLF is treated as if the CRLF were there, trailing whitespace
    included: that is what the receiver sees, because an SMTP client must end DATA with
    CRLF before the final dot (RFC 5321 §4.1.1.4), so that is what it will verify.
    """

    def __init__(self, hash_factory: Callable[[], Any] = hashlib.sha256) -> None:
        self._hash = hash_factory()
        self._carry = b""        # undecided bytes at the end of the current line
        self._empty_lines = 0    # empty lines seen but not yet hashed: dropped if trailing
        self._in_line = False    # part of the current line has already been hashed
        self._finished = False

    def _emit(self, data: bytes | memoryview) -> None:
        if data:
            self._hash.update(data)

    def _flush_empty_lines(self) -> None:
        # In blocks: a body of a million empty lines and then text must not cost 2 MB.
        while self._empty_lines:
            count = min(self._empty_lines, _EMPTY_LINES_BLOCK)
            self._emit(_CRLF_BLOCK[:2 * count])
            self._empty_lines -= count

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Feed the next part of the body."""
        if self._finished:
            raise ValueError("the body hash was already finished")
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), BODY_SLICE):
            self._update(bytes(view[start:start + BODY_SLICE]))

    def _update(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        cut = data.rfind(CRLF)
        if cut >= 0:
            self._complete_lines(data[:cut + 2])
            data = data[cut + 2:]
        self._partial_line(data)

    def _complete_lines(self, lines: bytes) -> None:
        """Lines that all end with CRLF; the first may continue a line already begun."""
        # (a): compress first, then a single SP before CRLF is the trailing whitespace.
        canonical = _compress(lines).replace(b" \r\n", CRLF)
        crlfs = _trailing_crlf_count(canonical)
        head = memoryview(canonical)[:len(canonical) - 2 * crlfs]  # no copy of a large chunk
        if head or self._in_line:
            # Content before the final CRLF run: the run's first CRLF ends that content's
            # last line; the rest are empty lines, held back in case nothing follows (b).
            self._flush_empty_lines()
            self._emit(head)
            self._emit(CRLF)
            self._empty_lines = crlfs - 1
        else:
            self._empty_lines += crlfs
        self._in_line = False

    def _partial_line(self, data: bytes) -> None:
        """The start of a line whose CRLF has not arrived yet."""
        if not data:
            return
        # Held back: a whitespace run (trailing whitespace if a CRLF follows, or the start
        # of a longer run) and a final CR (maybe the first half of a CRLF). rstrip rather
        # than a regex search anchored at the end, which is quadratic on long WSP runs.
        end = len(data) - 1 if data.endswith(b"\r") else len(data)
        decided_length = len(data[:end].rstrip(b" \t"))
        decided = data[:decided_length]
        if decided:
            self._flush_empty_lines()
            self._emit(_compress(decided))
            self._in_line = True
        # A whitespace run compresses to one SP whatever follows, so the carry stays small
        # even for a megabyte of spaces.
        self._carry = _compress(data[decided_length:])

    def digest(self) -> bytes:
        """The hash of the whole canonicalized body; no more data may be fed after it."""
        if not self._finished:
            if self._carry or self._in_line:
                # §3.4.4: a non-empty body that does not end with CRLF gets one.
                carry, self._carry = self._carry, b""
                self._complete_lines(carry + CRLF)
            # Whatever empty lines are still held back are trailing ones: ignored (b).
            self._empty_lines = 0
            self._finished = True
        return bytes(self._hash.digest())


def relaxed_body(body: bytes) -> bytes:
    """The relaxed-canonicalized form of a whole body held in memory (for tests and small
    bodies; the signer streams with :class:`RelaxedBodyHasher`)."""
    collected: list[bytes] = []

    class _Collect:
        def update(self, data: bytes | memoryview) -> None:
            collected.append(bytes(data))

        def digest(self) -> bytes:
            return b"".join(collected)

    hasher = RelaxedBodyHasher(_Collect)
    hasher.update(body)
    return hasher.digest()


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header field in relaxed canonical form, CRLF-terminated (RFC 6376 §3.4.2).

    ``name`` is the field name as written, ``value`` everything after the colon. The name
    is lower-cased; the value is unfolded, WSP runs become one SP, and WSP at its start
    and end (i.e. around the colon and at the end) is removed.
    """
    canonical_name = name.strip(b" \t").lower()
    canonical_value = _compress(_LINE_BREAK.sub(b"", value)).strip(b" \t")
    return canonical_name + b":" + canonical_value + CRLF
