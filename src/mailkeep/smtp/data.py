"""Message content readers: DATA (RFC 5321 §4.1.1.4, §4.5.2) and BDAT (RFC 3030 §2) bodies.

``DataReader`` finds the end of a DATA body and undoes dot-stuffing; ``BodyScanner``
checks content from either command: size (RFC 1870), line endings, line length and NUL.

The end of DATA is recognised only as CRLF "." CRLF, with CR and LF each standing for
exactly one octet. Every other spelling (LF "." LF, CR "." CR, LF "." CRLF, CRLF "." LF, a
NUL beside the dot...) is ordinary content. Servers that accept a sloppier terminator let an
attacker hide a second message inside the first one ("SMTP smuggling", CVE-2023-51764,
CVE-2023-51765, CVE-2023-51766); so this reader accepts nothing else, and by default
refuses messages that contain bare CR or LF at all (RFC 5321 §2.3.8).

In "normalize" mode a bare CR or LF is turned into CRLF as content, but it never starts a
line for the protocol: the end of DATA and dot-unstuffing (RFC 5321 §4.5.2) still need a
real CRLF before the dot. A line after a bare LF that starts with "." keeps its dot, so
nothing the client sent is ever dropped.

A NUL octet is reported ("nul") rather than stored silently: RFC 5322 §2.3 and RFC 6152
exclude it from 7-bit and 8-bit text, and IMAP clients cannot be handed it (RFC 3501
§4.3). Under BODY=BINARYMIME only the size is checked.

Both readers work on whole buffers with ``bytes.find``/``count``/``replace``: their cost
per call is a few C-level scans, whatever the number of lines.
"""

from __future__ import annotations

import re

from . import reply as replies
from .reply import Reply

__all__ = [
    "BARE_NEWLINE",
    "LINE_TOO_LONG",
    "NUL",
    "TOO_BIG",
    "BodyScanner",
    "DataReader",
    "problem_reply",
]

# BodyEnd.problem values, in order of precedence (the first that applies is reported).
TOO_BIG = "too-big"               # more octets than max_message_size (RFC 1870 §6.3)
BARE_NEWLINE = "bare-newline"     # CR or LF not part of CRLF (RFC 5321 §2.3.8)
LINE_TOO_LONG = "line-too-long"   # a line longer than max_data_line (RFC 5321 §4.5.3.1.6)
NUL = "nul"                       # NUL octet in a non-binary body (RFC 5322 §3.5, RFC 6152 §2)
PRECEDENCE = (TOO_BIG, BARE_NEWLINE, LINE_TOO_LONG, NUL)

_PROBLEM_REPLIES: dict[str, Reply] = {
    TOO_BIG: replies.MESSAGE_TOO_BIG,
    BARE_NEWLINE: replies.BARE_NEWLINE_IN_BODY,
    LINE_TOO_LONG: replies.DATA_LINE_TOO_LONG,
    NUL: replies.NUL_IN_BODY,
}

_TERMINATOR = b"\r\n.\r\n"
# Longest first: the tail of a buffer that could be the start of a terminator.
_TERMINATOR_PREFIXES = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


def problem_reply(problem: str) -> Reply:
    """The reply the core recommends for a BodyEnd problem."""
    return _PROBLEM_REPLIES[problem]


class BodyScanner:
    """Checks message content as it streams past; optionally repairs bare line endings.

    ``scan(piece)`` returns the octets to store (possibly rewritten, empty once the message
    is too big so a hostile client cannot fill the spool); ``finish()`` returns what was
    held back at the end. ``normalize``: turn bare CR and bare LF into CRLF instead of
    reporting them. ``binary``: BODY=BINARYMIME (RFC 3030 §3), where line endings, line
    length and NUL mean nothing and only the size is checked.
    """

    __slots__ = ("_binary", "_held_cr", "_line_len", "_max_line", "_max_size", "_normalize",
                 "problems", "size")

    def __init__(self, *, max_size: int, max_line: int, normalize: bool, binary: bool = False):
        self._max_size = max_size
        self._max_line = max_line
        self._normalize = normalize
        self._binary = binary
        self._held_cr = False
        self._line_len = 0
        self.size = 0                       # content octets seen, after unstuffing/repair
        self.problems: set[str] = set()

    @property
    def problem(self) -> str | None:
        """The most important problem found, or None for a clean message."""
        for problem in PRECEDENCE:
            if problem in self.problems:
                return problem
        return None

    def scan(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if not data:
            return b""
        if TOO_BIG in self.problems:
            self.size += len(data)
            return b""
        if not self._binary:
            if data[-1] == 0x0D:
                # A CR at the end of a BDAT chunk may pair with an LF at the start of the next.
                self._held_cr = True
                data = data[:-1]
                if not data:
                    return b""
            data = self._check_text(data)
        self.size += len(data)
        if self.size > self._max_size:
            self.problems.add(TOO_BIG)
            return b""
        return data

    def finish(self) -> bytes:
        """End of content: settle a held-back CR and the last line's length."""
        tail = b""
        if self._held_cr:
            self._held_cr = False
            if self._normalize:
                tail = b"\r\n"
            else:
                self.problems.add(BARE_NEWLINE)
                tail = b"\r"
            if TOO_BIG not in self.problems:
                self.size += len(tail)
                if self.size > self._max_size:
                    self.problems.add(TOO_BIG)
                    tail = b""
            else:
                tail = b""
        return tail

    def _check_text(self, data: bytes) -> bytes:
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
            if self._normalize:
                data = _ANY_NEWLINE.sub(b"\r\n", data)
            else:
                self.problems.add(BARE_NEWLINE)
        if b"\x00" in data:
            self.problems.add(NUL)
        self._check_lines(data)
        return data

    def _check_lines(self, data: bytes) -> None:
        # Line lengths include the line ending; only LF is looked at, which is exact for
        # CRLF text and errs towards shorter lines when bare CRs are present (which are
        # reported anyway).
        limit = self._max_line
        first = data.find(b"\n")
        if first < 0:
            self._line_len += len(data)
        else:
            if self._line_len + first + 1 > limit:
                self.problems.add(LINE_TOO_LONG)
            elif len(data) - first - 1 > limit:
                # Only a piece longer than the limit can hold a long line in its middle;
                # split() keeps the work in C.
                last = data.rfind(b"\n")
                if max(map(len, data[first + 1:last].split(b"\n"))) + 1 > limit:
                    self.problems.add(LINE_TOO_LONG)
            self._line_len = len(data) - data.rfind(b"\n") - 1
        if self._line_len > limit:
            self.problems.add(LINE_TOO_LONG)


class DataReader:
    """Reads one DATA body out of a receive buffer (RFC 5321 §4.1.1.4).

    ``feed(buffer, start)`` consumes as much as can be decided from ``buffer[start:]`` and
    returns ``(content, new_start, finished)``. ``content`` is unstuffed, checked message
    content (never split inside a CRLF); after ``finished`` the octets from ``new_start``
    on belong to the next command.
    """

    __slots__ = ("_at_start", "scanner")

    def __init__(self, scanner: BodyScanner):
        self.scanner = scanner
        # The CRLF that ended the DATA line counts as the start of the first line, so
        # "." CRLF right away is an empty message.
        self._at_start = True

    def feed(self, buffer: bytearray, start: int) -> tuple[bytes, int, bool]:
        end_of_buffer = len(buffer)
        skip = 0
        if self._at_start:
            head = bytes(buffer[start:start + 3])
            if len(head) < 3 and b".\r\n".startswith(head):
                return b"", start, False          # cannot decide yet
            self._at_start = False
            if head == b".\r\n":
                return self.scanner.finish(), start + 3, True
            if head[:1] == b".":
                skip = 1                          # RFC 5321 §4.5.2: drop the stuffed dot
        found = buffer.find(_TERMINATOR, start + skip)
        if found >= 0:
            # The terminator's first CRLF ends the last line of the content.
            raw = bytes(buffer[start + skip:found + 2])
            new_start = found + len(_TERMINATOR)
            finished = True
        else:
            keep = 0
            for prefix in _TERMINATOR_PREFIXES:
                if buffer.endswith(prefix):
                    keep = len(prefix)
                    break
            new_start = max(start + skip, end_of_buffer - keep)
            raw = bytes(buffer[start + skip:new_start])
            finished = False
        # RFC 5321 §4.5.2: a line starting with "." had one added by the client. Only a
        # true CRLF starts a line; held-back tails guarantee no CRLF "." is split.
        if b"\r\n." in raw:
            raw = raw.replace(b"\r\n.", b"\r\n")
        content = self.scanner.scan(raw)
        if finished:
            content += self.scanner.finish()
        return content, new_start, finished
