"""mbox import and export, in the mboxrd flavour (the one that round-trips).

Format (the "mbox" family; mboxrd is the variant documented at
https://www.loc.gov/preservation/digital/formats/fdd/fdd000385.shtml and by qmail's
mbox(5)): messages follow each other, each introduced by a "From_" line
``From <sender> <asctime date>``, each followed by an empty line. Body lines that begin
with "From " — after any number of ">" — get one more ">" on writing and lose one on
reading, so that every message comes back byte for byte. Files have LF line ends; the store
keeps CRLF.

Flags travel in headers, as mutt, Dovecot and Thunderbird write them: ``Status:`` (R = seen,
O = old), ``X-Status:`` (A = answered, F = flagged, T = draft, D = deleted) and
``X-Keywords:``. On import these headers (and Dovecot's X-UID, X-IMAP, X-IMAPbase) are read
and removed from the stored message; Thunderbird's ``X-Mozilla-Status`` is read too but
kept. On export they are written anew at the end of the header.

Layout of an export: one file per mailbox, ``<name>.mbox``, in a directory tree following
the hierarchy: ``INBOX.mbox``, ``Sent.mbox``, ``Archive.mbox`` and ``Archive/2024.mbox``.
Import accepts that tree, Thunderbird's (``Archive.sbd/2024``, files without an extension),
or a single mbox file.
"""

from __future__ import annotations

import calendar
import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mailkeep.progress import Progress
from mailkeep.store.api import INBOX, SEPARATOR, ImportItem, MailboxError, Store, StoreLimits
from mailkeep.store.names import canonical_mailbox_name
from mailkeep.store.transfer import (
    ExportReport,
    ImportBatcher,
    ImportReport,
    clean_keywords,
    crlf_to_lf,
    lf_to_crlf,
    prepare_export_dir,
)

#: Longest line read at once; longer lines are read in pieces (binary attachments without
#: line breaks must not make the reader allocate without bound).
MAX_LINE_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = StoreLimits().max_message_bytes
#: mbox-internal headers removed on import (they describe the mbox, not the message).
MBOX_HEADERS = frozenset({b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imap",
                          b"x-imapbase"})

_QUOTED_FROM = re.compile(rb"^>+From ")
_NEEDS_QUOTING = re.compile(rb"(?m)^(>*From )")
# asctime as written in From_ lines: "Thu Jan  1 00:00:00 1970", maybe with a zone.
_ASCTIME = re.compile(
    rb"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(?P<day>\d{1,2}) +"
    rb"(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?"
    rb"(?: +(?P<tz>[A-Z]{1,5}|[+-]\d{4}))? +(?P<year>\d{4})")
_MONTHS = {m: i for i, m in enumerate(
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
     b"Dec"], start=1)}
_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[ \t]*<([^<>\s]*)>")


@dataclass
class MboxMessage:
    from_line: bytes
    #: The message as stored in the file, with quoting removed (LF or CRLF line ends).
    data: bytes
    #: Byte offset of the From_ line in the file.
    offset: int
    #: True if the message was over the size limit; ``data`` is then empty.
    too_big: bool = False
    size: int = 0


def parse_from_date(from_line: bytes) -> float | None:
    """The date of a From_ line as seconds since the epoch (UTC unless a numeric zone is
    given); None if there is none."""
    match = _ASCTIME.search(from_line)
    if match is None:
        return None
    try:
        stamp = calendar.timegm((int(match["year"]), _MONTHS[match["mon"]], int(match["day"]),
                                 int(match["h"]), int(match["m"]), int(match["s"] or 0)))
    except (ValueError, OverflowError):
        return None
    tz = match["tz"]
    if tz and tz[:1] in (b"+", b"-"):
        offset = int(tz[1:3]) * 3600 + int(tz[3:5]) * 60
        stamp -= offset if tz[:1] == b"+" else -offset
    return float(stamp)


def _is_separator(line: bytes, previous_blank: bool, first: bool) -> bool:
    # In mboxrd every body line starting "From " is quoted, so any such line separates.
    # Files written by sloppier tools are handled by also asking for an empty line before
    # it or a date in it, as most readers do.
    return line.startswith(b"From ") and (first or previous_blank or
                                          _ASCTIME.search(line) is not None)


def iter_mbox(f: BinaryIO, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
              ) -> Iterator[MboxMessage]:
    """Messages of an mbox file, one at a time (memory: one message)."""
    current: bytearray | None = None
    message: MboxMessage | None = None
    previous_blank = True
    at_line_start = True
    offset = 0
    while True:
        line = f.readline(MAX_LINE_BYTES)
        if not line:
            break
        line_offset = offset
        offset += len(line)
        if at_line_start and _is_separator(line, previous_blank, message is None):
            if message is not None:
                yield _finish(message, current)
            message = MboxMessage(from_line=line.rstrip(b"\r\n"), data=b"", offset=line_offset)
            current = bytearray()
        elif message is not None and current is not None:
            if at_line_start and _QUOTED_FROM.match(line):
                line = line[1:]
            message.size += len(line)
            if message.size > max_message_bytes:
                message.too_big = True
                current = None
            else:
                current += line
        elif message is not None:
            message.size += len(line)
        previous_blank = at_line_start and line in (b"\n", b"\r\n")
        at_line_start = line.endswith(b"\n")
    if message is not None:
        yield _finish(message, current)


def _finish(message: MboxMessage, data: bytearray | None) -> MboxMessage:
    if data is None:
        message.data = b""
        return message
    # The empty line that ends every message in the file is not part of the message.
    if data.endswith(b"\r\n\r\n"):
        del data[-2:]
    elif data.endswith(b"\n\n"):
        del data[-1:]
    message.data = bytes(data)
    message.size = len(message.data)
    return message


def _header_end(lf: bytes) -> int:
    """Index just after the header section's last line (where the empty line starts)."""
    if lf.startswith(b"\n"):
        return 0
    end = lf.find(b"\n\n")
    return len(lf) if end < 0 else end + 1


def split_mbox_headers(lf: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """Remove the mbox-internal headers from an LF message; return it and their values
    (by lower-case name). Folded continuation lines go with their field."""
    end = _header_end(lf)
    header, rest = lf[:end], lf[end:]
    kept: list[bytes] = []
    found: dict[bytes, bytes] = {}
    dropping = False
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name, sep, value = line.partition(b":")
        lname = name.strip().lower()
        dropping = bool(sep) and lname in MBOX_HEADERS
        if sep and (dropping or lname == b"x-mozilla-status"):
            found[lname] = value.strip()
        if not dropping:
            kept.append(line)
    return b"".join(kept) + rest, found


def flags_from_headers(found: dict[bytes, bytes]) -> list[str]:
    flags: list[str] = []
    status = found.get(b"status", b"")
    x_status = found.get(b"x-status", b"")
    if b"R" in status:
        flags.append("\\Seen")
    for letter, flag in ((b"A", "\\Answered"), (b"F", "\\Flagged"), (b"T", "\\Draft"),
                         (b"D", "\\Deleted")):
        if letter in x_status:
            flags.append(flag)
    mozilla = found.get(b"x-mozilla-status")
    if mozilla:
        try:
            bits = int(mozilla, 16)
        except ValueError:
            bits = 0
        # Thunderbird's nsMsgMessageFlags: Read, Replied, Marked, Expunged, Forwarded.
        for bit, flag in ((0x1, "\\Seen"), (0x2, "\\Answered"), (0x4, "\\Flagged"),
                          (0x8, "\\Deleted"), (0x1000, "$Forwarded")):
            if bits & bit and flag not in flags:
                flags.append(flag)
    keywords = found.get(b"x-keywords", b"").decode("utf-8", "replace")
    flags.extend(k for k in clean_keywords(re.split(r"[,\s]+", keywords)) if k)
    return flags


# -- import -------------------------------------------------------------------------------


def mbox_files(source: Path) -> list[tuple[str, Path]]:
    """(mailbox name, file) for a single mbox file or every mbox in a directory tree."""
    if source.is_file():
        return [(INBOX, source)]
    found = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(source)
        levels = [p[:-4] if p.endswith(".sbd") else p for p in rel_dir.parts]
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if filename.startswith("."):
                continue
            if filename.endswith(".mbox"):
                name = filename[:-5]
            elif "." not in filename and _starts_like_mbox(path):
                name = filename  # Thunderbird: "Inbox", "Sent"
            else:
                continue
            found.append((SEPARATOR.join([*levels, name]), path))
    return found


def _starts_like_mbox(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(5) == b"From "
    except OSError:
        return False


async def import_mbox(store: Store, account: str, source: Path, *,
                      progress: Progress | None = None, limit: int | None = None,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                      mailbox: str | None = None) -> ImportReport:
    """Import an mbox file or tree into ``account``; resumable, never imports a message
    twice (each is keyed by its mailbox and a hash of its From_ line and content).

    A single file goes to INBOX, or to ``mailbox``; with a tree, ``mailbox`` is a prefix.
    ``progress`` counts bytes of the source.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    files = mbox_files(source)
    report = ImportReport()
    if progress is not None:
        progress.set_total(sum(path.stat().st_size for _, path in files))
    batcher = ImportBatcher(store, account, report, progress=progress, limit=limit)
    for name, path in files:
        if mailbox is not None:
            name = mailbox if source.is_file() else f"{mailbox}{SEPARATOR}{name}"
        try:
            target = canonical_mailbox_name(name)
        except MailboxError as exc:
            report.error(f"{path} skipped: {exc}")
            continue
        fallback_date = path.stat().st_mtime
        with path.open("rb") as f:
            position = 0
            # Keys are looked up a chunk at a time: one query per 100 messages.
            chunk: list[tuple[str, MboxMessage]] = []
            for message in iter_mbox(f, max_message_bytes):
                if progress is not None:
                    progress.update(message.offset - position)
                    position = message.offset
                if message.too_big:
                    report.error(f"{path} at byte {message.offset}: message of {message.size}"
                                 f" bytes is over the limit of {max_message_bytes}")
                    continue
                digest = hashlib.sha256(message.from_line + b"\n" + message.data).hexdigest()
                chunk.append((f"mbox:{target}:{digest}", message))
                if len(chunk) >= 100:
                    await _import_chunk(batcher, report, target, chunk, fallback_date)
                    chunk = []
                    if report.incomplete:
                        break
            if chunk and not report.incomplete:
                await _import_chunk(batcher, report, target, chunk, fallback_date)
            if progress is not None:
                progress.update(f.tell() - position)
        if report.incomplete:
            break
    await batcher.finish()
    return report


async def _import_chunk(batcher: ImportBatcher, report: ImportReport, mailbox: str,
                        chunk: list[tuple[str, MboxMessage]], fallback_date: float) -> None:
    done = batcher.already_imported([key for key, _ in chunk])
    for key, message in chunk:
        if key in done:
            report.skipped += 1
            continue
        if batcher.full:
            report.incomplete = True
            return
        lf, found = split_mbox_headers(crlf_to_lf(message.data))
        await batcher.add(ImportItem(
            mailbox=mailbox, source=lf_to_crlf(lf), flags=tuple(flags_from_headers(found)),
            internal_date=parse_from_date(message.from_line) or fallback_date, key=key))


# -- export -------------------------------------------------------------------------------


def mailbox_path(dest: Path, name: str) -> Path:
    """Where a mailbox goes in an export tree: "Archive/2024" -> dest/Archive/2024.mbox."""
    levels = name.split(SEPARATOR)
    return dest.joinpath(*levels[:-1], levels[-1] + ".mbox")


def format_message(data: bytes, flags: tuple[str, ...], internal_date: float) -> bytes:
    """One stored (CRLF) message as an mboxrd entry: From_ line, quoted LF message with
    flag headers, and the empty line that ends it."""
    lf = crlf_to_lf(data)
    lf, _ = split_mbox_headers(lf)
    lowered = {f.lower() for f in flags}
    status = b"Status: RO\n" if "\\seen" in lowered else b"Status: O\n"
    x_status = b"".join(letter for letter, flag in (
        (b"A", "\\answered"), (b"F", "\\flagged"), (b"T", "\\draft"), (b"D", "\\deleted"))
        if flag in lowered)
    extra = status + (b"X-Status: " + x_status + b"\n" if x_status else b"")
    keywords = [f for f in flags if not f.startswith("\\")]
    if keywords:
        extra += b"X-Keywords: " + " ".join(keywords).encode() + b"\n"
    end = _header_end(lf)
    if end == len(lf) and lf and not lf.endswith(b"\n"):
        lf += b"\n"
        end = len(lf)
    lf = lf[:end] + extra + lf[end:]
    sender = b"MAILER-DAEMON"
    match = _RETURN_PATH.search(lf[:end])
    if match and match.group(1):
        sender = match.group(1)
    from_line = b"From " + sender + b" " + time.asctime(time.gmtime(internal_date)).encode()
    body = _NEEDS_QUOTING.sub(rb">\1", lf)
    if not body.endswith(b"\n"):
        body += b"\n"
    return from_line + b"\n" + body + b"\n"


def export_mbox(store: Store, account: str, dest: Path, *,
                progress: Progress | None = None) -> ExportReport:
    """Write every mailbox of ``account`` as mboxrd files under ``dest`` (which must not
    exist or be empty). Consistent: taken from one snapshot of the store."""
    dest = prepare_export_dir(dest)
    report = ExportReport()
    with store.snapshot(account) as snap:
        mailboxes = snap.list_mailboxes()
        if progress is not None:
            progress.set_total(sum(m.messages for m in mailboxes))
        for box in mailboxes:
            path = mailbox_path(dest, box.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                for info in snap.iter_messages(box.name):
                    with snap.open_message(box.name, info.uid) as f:
                        out.write(format_message(f.read(), info.flags, info.internal_date))
                    report.exported += 1
                    if progress is not None:
                        progress.update(1)
                out.flush()
                os.fsync(out.fileno())
            report.mailboxes += 1
    return report
