"""Fix-ups of submitted messages (RFC 6409 §8): what a submission server adds or removes.

A message from a mail client is not yet fit to travel: it may lack Message-ID or Date
(RFC 6409 §8.2-8.3 let the submission server add them), and it may carry headers that
reveal the sender's software and network (X-Originating-IP, User-Agent, X-Mailer: seeds
001 and 004 strip them with Postfix header_checks). Only the header block is rewritten;
the body is never read here, so a 100 MB message costs no more memory than a small one.

Pure functions over bytes: ``read_header_block`` finds the header block of a spooled
message, ``fix_headers`` returns the new block and what the policy needs from it (the
From: addresses for the sender login map, the DKIM signing domain).
"""

from __future__ import annotations

import email.utils
import os
from dataclasses import dataclass
from pathlib import Path

from mailkeep.mime.address_list import Group, Mailbox, parse_address_list_limited
from mailkeep.mime.header import find_header_end, header_fields, unfold

#: The largest header block read from a submitted message. Real headers are a few KB;
#: beyond this the message is refused (552 5.3.4) rather than parsed.
MAX_HEADER_BLOCK = 1024 * 1024
#: Addresses read from one From:/Sender: field (RFC 5322 allows a list in From:).
MAX_FROM_ADDRESSES = 50


class HeaderTooLarge(ValueError):
    """No end of the header block within MAX_HEADER_BLOCK."""


@dataclass(frozen=True)
class FixedHeader:
    #: The rewritten header block, including the blank line that ends it.
    header: bytes
    #: Where the body starts in the original message.
    body_offset: int
    #: Addresses of the From: field (lower-cased domains; local parts as written).
    from_addresses: tuple[str, ...]
    sender_address: str | None
    added: tuple[str, ...]
    removed: tuple[str, ...]


def read_header_block(source: bytes | Path, limit: int = MAX_HEADER_BLOCK) -> tuple[bytes, int]:
    """The header block of ``source`` (with its blank line) and the offset of the body.

    A message without a blank line is all header (RFC 5322 §3.5: the body is optional).
    """
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            data = fh.read(limit + 4)
        total = os.path.getsize(source)
    else:
        data = source[:limit + 4]
        total = len(source)
    fields_end, body_start, truncated = find_header_end(data, 0, len(data), limit)
    if truncated or (body_start == fields_end and len(data) < total):
        raise HeaderTooLarge(f"no end of the header block within {limit} octets")
    return data[:body_start], body_start


def _addresses(raw: bytes) -> list[str]:
    parsed, _cut = parse_address_list_limited(unfold(raw), MAX_FROM_ADDRESSES)
    out: list[str] = []
    for item in parsed:
        members = item.members if isinstance(item, Group) else (item,)
        for mailbox in members:
            if isinstance(mailbox, Mailbox) and mailbox.domain is not None and mailbox.local_part:
                out.append(mailbox.addr_spec.decode("utf-8", "replace"))
    return out


def fix_headers(header: bytes, *, hostname: str, message_id_stem: str,
                remove: frozenset[str], now: float | None = None) -> tuple[bytes, list[str],
                                                                          list[str]]:
    """Remove privacy-leaking fields and add Message-ID and Date when missing.

    Returns the new block (blank line included), the names removed and the names added.
    Added fields go at the end of the block, where MUAs' own fields are (RFC 5322 §3.6 puts
    no order on them).
    """
    end = len(header)
    fields = header_fields(header, 0, end)
    fields_end = fields[-1][2] if fields else 0
    kept: list[bytes] = []
    removed: list[str] = []
    present: set[bytes] = set()
    for name, start, stop in fields:
        if name.decode("latin-1") in remove:
            removed.append(name.decode("latin-1"))
            continue
        present.add(name)
        kept.append(header[start:stop])
    added: list[str] = []
    if b"message-id" not in present:
        kept.append(f"Message-ID: <{message_id_stem}@{hostname}>\r\n".encode())
        added.append("Message-ID")
    if b"date" not in present:
        kept.append(f"Date: {email.utils.formatdate(now, localtime=True)}\r\n".encode())
        added.append("Date")
    # The last kept field must end with CRLF before the blank line.
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += b"\r\n"
    blank = header[fields_end:] or b"\r\n"
    return b"".join(kept) + blank, removed, added


def submitted_header(source: bytes | Path, *, hostname: str, message_id_stem: str,
                     remove: frozenset[str], now: float | None = None) -> FixedHeader:
    """Read, check and rewrite the header block of a submitted message."""
    header, body_offset = read_header_block(source)
    new_header, removed, added = fix_headers(header, hostname=hostname,
                                             message_id_stem=message_id_stem,
                                             remove=remove, now=now)
    from_addresses: list[str] = []
    sender: str | None = None
    for name, start, stop in header_fields(new_header, 0, len(new_header)):
        value = new_header[start:stop].partition(b":")[2]
        if name == b"from" and not from_addresses:
            from_addresses = _addresses(value)
        elif name == b"sender" and sender is None:
            found = _addresses(value)
            sender = found[0] if found else None
    return FixedHeader(new_header, body_offset, tuple(from_addresses), sender,
                       tuple(added), tuple(removed))


def signing_domain(fixed: FixedHeader) -> str | None:
    """The domain a DKIM signature should carry: the From: domain (DMARC alignment,
    RFC 7489 §3.1), when From: names exactly one mailbox."""
    if len(fixed.from_addresses) != 1:
        return None
    return fixed.from_addresses[0].rpartition("@")[2].lower() or None
