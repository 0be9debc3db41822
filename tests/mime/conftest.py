"""Helpers for the MIME tests: a strict reader of the IMAP syntax we produce."""

from __future__ import annotations

from collections.abc import Callable

import pytest

ImapValue = None | bytes | int | list["ImapValue"]


class ImapSyntaxError(ValueError):
    pass


def parse_imap(data: bytes) -> ImapValue:
    """Parse one IMAP value (list, NIL, number, quoted string or literal) strictly.

    Used to check that what we send is well-formed (RFC 9051 §4, §9): strings must be valid
    quoted strings or literals of the announced length, parentheses must balance.
    """
    stack: list[list[ImapValue]] = [[]]
    pos = 0
    n = len(data)
    while pos < n:
        c = data[pos]
        if c == 0x28:  # (
            stack.append([])
            pos += 1
        elif c == 0x29:  # )
            if len(stack) < 2:
                raise ImapSyntaxError(f"unbalanced ) at {pos}")
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif c == 0x20:
            pos += 1
        elif c == 0x22:  # quoted string
            out = bytearray()
            pos += 1
            while True:
                if pos >= n:
                    raise ImapSyntaxError("unterminated quoted string")
                b = data[pos]
                if b == 0x5C:
                    if pos + 1 >= n or data[pos + 1] not in b'\\"':
                        raise ImapSyntaxError("bad escape in quoted string")
                    out.append(data[pos + 1])
                    pos += 2
                    continue
                if b == 0x22:
                    pos += 1
                    break
                if b in (0x0D, 0x0A, 0x00):
                    raise ImapSyntaxError("CR, LF or NUL in a quoted string")
                out.append(b)
                pos += 1
            stack[-1].append(bytes(out))
        elif c == 0x7B:  # literal {n}\r\n
            close = data.index(b"}\r\n", pos)
            length = int(data[pos + 1 : close])
            start = close + 3
            if start + length > n:
                raise ImapSyntaxError("literal longer than the data")
            value = data[start : start + length]
            if b"\x00" in value:
                raise ImapSyntaxError("NUL in a literal")
            stack[-1].append(value)
            pos = start + length
        elif data.startswith(b"NIL", pos):
            stack[-1].append(None)
            pos += 3
        elif 0x30 <= c <= 0x39:
            end = pos
            while end < n and 0x30 <= data[end] <= 0x39:
                end += 1
            stack[-1].append(int(data[pos:end]))
            pos = end
        else:
            raise ImapSyntaxError(f"unexpected byte {bytes([c])!r} at {pos}")
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ImapSyntaxError("not exactly one balanced value")
    return stack[0][0]


@pytest.fixture(scope="session")
def imap_parse() -> Callable[[bytes], ImapValue]:
    return parse_imap

