"""The maildrop: how ``mailkeep sendmail`` hands a message to the server, as Postfix's
postdrop does.

``data_dir/queue/maildrop/`` has mode 1733: any local user may create a file there, nobody
but the owner of the directory may list it, and the sticky bit stops users from renaming or
removing each other's files. ``sendmail`` writes one file per message (under a temporary
name, fsync'd, then renamed into place and the directory fsync'd), so that its exit status
0 means the message is on disk. The server picks drop files up, queues their content, and
removes them; the file's owner (``stat``, not anything written inside it) tells the server
which local user sent it.

A drop file is one line of JSON (the envelope: sender, recipients and sendmail's options),
a newline, then the message with CRLF line ends. Input is streamed; only the header section
is held in memory (bounded), because ``-t`` takes the recipients from it and the Bcc fields
must go before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mailkeep.durable import fsync_dir
from mailkeep.mime.address_list import Group, Mailbox, parse_address_list
from mailkeep.smtp.address import AddressError, parse_address

#: Mode of the drop box: world-writable, not listable, sticky.
MAILDROP_MODE = 0o1733
#: Drop files are readable by the server, which runs as another user; their names are
#: random and the directory cannot be listed, so other users cannot find them.
DROP_FILE_MODE = 0o644
#: Largest header section kept in memory for -t and Bcc removal.
MAX_HEADER_BYTES = 1024 * 1024
#: Longest header line (RFC 5322 §2.1.1 allows 998 characters; be generous).
MAX_HEADER_LINE = 64 * 1024
#: Most recipients on the command line and in the header together.
MAX_RECIPIENTS = 1000
#: Largest envelope line ``read_drop`` accepts.
MAX_ENVELOPE_BYTES = 1024 * 1024
#: Default largest message (the CLI passes ``[smtp] message_size_limit``).
DEFAULT_MAX_MESSAGE_BYTES = 100 * 1024 * 1024

ENVELOPE_VERSION = 1
_READ_PIECE = 64 * 1024
_TMP_PREFIX = ".tmp-"
# RFC 5322 §3.6.8 field name (printable ASCII except ":"), §4.5 allows WSP before the colon.
_FIELD = re.compile(rb"^[!-9;-~]+[ \t]*:")
_RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")
_RESENT_FIELDS = (b"resent-to", b"resent-cc", b"resent-bcc")
_BLIND_FIELDS = (b"bcc", b"resent-bcc")


class DropError(Exception):
    """The message cannot be dropped; the message says why. ``kind`` maps to sendmail's
    exit status: "usage", "data", "address", "size", "io"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Drop:
    """A drop file read back by the server."""

    path: Path
    #: Owner of the file: the local user who ran sendmail.
    uid: int
    #: -f: the envelope sender ("" for the null sender); None: not given, the server
    #: chooses from the user.
    sender: str | None
    recipients: tuple[str, ...]
    #: -F: the sender's full name, for a From: the server adds if the message has none.
    full_name: str | None
    #: -B: "7BIT" or "8BITMIME"; None: not given.
    body_type: str | None
    #: -V, -R, -N: DSN envelope id, RET, NOTIFY (RFC 3461).
    envid: str | None
    ret: str | None
    notify: tuple[str, ...] | None
    #: -t was given (some recipients came from the header).
    extracted: bool
    #: When the file was dropped (its mtime).
    created: float
    #: Where the message starts in the file, and its size.
    offset: int
    size: int


def ensure_maildrop(maildrop_dir: Path) -> None:
    """Create the drop box with mode 1733 (the umask does not apply), if it is missing."""
    try:
        os.mkdir(maildrop_dir, 0o700)
    except FileExistsError:
        return
    os.chmod(maildrop_dir, MAILDROP_MODE)
    fsync_dir(maildrop_dir.parent)


def write_drop(maildrop_dir: Path, sender: str | None, recipients: Iterable[str],
               message_stream: BinaryIO, *, extract_recipients: bool = False,
               full_name: str | None = None, ignore_dots: bool = False,
               body_type: str | None = None, envid: str | None = None,
               ret: str | None = None, notify: tuple[str, ...] | None = None,
               max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Path:
    """Read a message from ``message_stream`` and drop it, durably; return the file.

    Line ends (LF, CR or CRLF) become CRLF. A line holding only "." ends the input unless
    ``ignore_dots`` (sendmail -i/-oi). With ``extract_recipients`` (sendmail -t) the
    recipients of To, Cc and Bcc (or of Resent-To/Cc/Bcc if the message has any, RFC 5322
    §3.6.6) are added to ``recipients``. Bcc and Resent-Bcc fields are always removed.

    Raises DropError (bad address, no recipient, too large, header too large, disk).
    """
    command_line = [_check_recipient(r) for r in recipients]
    if sender is not None:
        sender = _check_sender(sender)
    if body_type is not None and body_type not in ("7BIT", "8BITMIME"):
        raise DropError(f"body type must be 7BIT or 8BITMIME, not {body_type}", "usage")
    lines = _normalized_lines(message_stream, ignore_dots)
    header, body_first = _read_header(lines)
    extracted: list[str] = []
    if extract_recipients:
        extracted = _header_recipients(header)
    kept_header = _without_blind_fields(header)
    all_recipients = list(dict.fromkeys([*command_line, *extracted]))
    if not all_recipients:
        raise DropError("no recipient addresses found" + (
            " in the message header" if extract_recipients else ""), "usage")
    if len(all_recipients) > MAX_RECIPIENTS:
        raise DropError(f"too many recipients (at most {MAX_RECIPIENTS})", "usage")
    envelope = {
        "version": ENVELOPE_VERSION, "sender": sender, "recipients": all_recipients,
        "full_name": full_name, "body_type": body_type, "envid": envid, "ret": ret,
        "notify": list(notify) if notify is not None else None,
        "extracted": extract_recipients,
    }
    envelope_line = json.dumps(envelope, ensure_ascii=True).encode("ascii") + b"\n"

    name = f"{time.time_ns():020d}-{secrets.token_hex(8)}"
    tmp = maildrop_dir / f"{_TMP_PREFIX}{name}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     DROP_FILE_MODE)
    except FileNotFoundError:
        raise DropError(f"the mail drop directory {maildrop_dir} does not exist; has the "
                        "Mailkeep server been started?", "io") from None
    except OSError as exc:
        raise DropError(f"cannot write to {maildrop_dir}: {exc.strerror}", "io") from None
    try:
        os.fchmod(fd, DROP_FILE_MODE)  # whatever the umask
        with os.fdopen(os.dup(fd), "wb", buffering=_READ_PIECE) as out:
            out.write(envelope_line)
            size = 0
            for line in kept_header:
                size += len(line)
                out.write(line)
            if body_first is not None:
                size += len(body_first)
                _check_size(size, max_bytes)
                out.write(body_first)
            for piece in lines:
                size += len(piece)
                _check_size(size, max_bytes)
                out.write(piece)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, maildrop_dir / name)
        fsync_dir(maildrop_dir)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise DropError(f"cannot write the message to {maildrop_dir}: {exc.strerror}",
                            "io") from None
        raise
    return maildrop_dir / name


def list_drops(maildrop_dir: Path) -> list[Path]:
    """Complete drop files, oldest first (names start with the time)."""
    try:
        names = os.listdir(maildrop_dir)
    except FileNotFoundError:
        return []
    return [maildrop_dir / n for n in sorted(names) if not n.startswith(_TMP_PREFIX)]


def read_drop(path: Path) -> Drop:
    """Read a drop file's envelope. Raises DropError("data") for anything that is not a
    drop file as ``write_drop`` makes them (never follows a symlink, never blocks on a
    FIFO, refuses hard links, so a user cannot make the server read someone else's file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise DropError(f"cannot open drop file {path.name}: {exc.strerror}", "data") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DropError(f"drop file {path.name} is not a regular file", "data")
        if info.st_nlink != 1:
            raise DropError(f"drop file {path.name} has {info.st_nlink} links", "data")
        with os.fdopen(os.dup(fd), "rb") as f:
            line = f.readline(MAX_ENVELOPE_BYTES + 1)
    finally:
        os.close(fd)
    if not line.endswith(b"\n"):
        raise DropError(f"drop file {path.name} has no envelope line", "data")
    try:
        envelope = json.loads(line)
    except ValueError:
        raise DropError(f"drop file {path.name} has a malformed envelope", "data") from None
    try:
        return _drop_from(path, info, envelope, len(line))
    except (KeyError, TypeError, ValueError) as exc:
        raise DropError(f"drop file {path.name} has an invalid envelope: {exc}",
                        "data") from None


def remove_drop(path: Path) -> None:
    """Remove a drop file once its message is queued (durably, so it is not queued twice
    after a crash)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(path.parent)


# -- helpers -----------------------------------------------------------------------------


def _drop_from(path: Path, info: os.stat_result, envelope: dict, offset: int) -> Drop:
    if not isinstance(envelope, dict) or envelope.get("version") != ENVELOPE_VERSION:
        raise ValueError("unknown envelope version")
    sender = envelope["sender"]
    recipients = envelope["recipients"]
    if sender is not None and not isinstance(sender, str):
        raise TypeError("sender must be a string")
    if not isinstance(recipients, list) or not recipients \
            or not all(isinstance(r, str) and r for r in recipients):
        raise TypeError("recipients must be a non-empty list of addresses")
    notify = envelope.get("notify")
    return Drop(
        path=path, uid=info.st_uid, sender=sender, recipients=tuple(recipients),
        full_name=_optional_str(envelope, "full_name"),
        body_type=_optional_str(envelope, "body_type"),
        envid=_optional_str(envelope, "envid"), ret=_optional_str(envelope, "ret"),
        notify=tuple(notify) if isinstance(notify, list) else None,
        extracted=bool(envelope.get("extracted")), created=info.st_mtime,
        offset=offset, size=info.st_size - offset)


def _optional_str(envelope: dict, key: str) -> str | None:
    value = envelope.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise DropError(f"message larger than the limit of {limit} bytes", "size")


def _check_recipient(text: str) -> str:
    address = text.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    try:
        return str(parse_address(address))
    except AddressError as exc:
        raise DropError(f"bad recipient address {text!r}: {exc}", "address") from None


def _check_sender(text: str) -> str:
    address = text.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if address == "":
        return ""  # the null sender (-f '<>'), for programs that send notifications
    try:
        return str(parse_address(address))
    except AddressError as exc:
        raise DropError(f"bad sender address {text!r}: {exc}", "address") from None


def _normalized_lines(stream: BinaryIO, ignore_dots: bool) -> Iterator[bytes]:
    """The message as CRLF-terminated pieces: each is a whole line, or a part of a line
    longer than the read size (then the next piece continues it). Stops at a line holding
    only "." unless ``ignore_dots``; a last line without a line end gets one."""
    at_line_start = True
    # A "." read at the start of a line whose end is not read yet: maybe the terminator.
    dot_held = False
    # The content of a line whose CR was the last byte of a read: an LF may follow.
    cr_held: bytes | None = None

    def complete(content: bytes) -> bytes | None:
        """The line ``content`` ends: its CRLF form, or None if it ends the input."""
        nonlocal at_line_start, dot_held
        if dot_held:
            content, dot_held = b"." + content, False
        if at_line_start and content == b"." and not ignore_dots:
            return None
        at_line_start = True
        return content + b"\r\n"

    while True:
        raw = stream.readline(_READ_PIECE)
        piece = raw
        if cr_held is not None:
            if piece.startswith(b"\n"):
                piece = piece[1:]
            line = complete(cr_held)
            cr_held = None
            if line is None:
                return
            yield line
        if not raw:
            if dot_held:  # "." and the end of the input: the terminator, unless -i
                if ignore_dots:
                    yield b".\r\n"
            elif not at_line_start:
                yield b"\r\n"
            return
        if not piece:
            continue
        ends = piece.endswith(b"\n")
        content = piece[:-1] if ends else piece
        if ends and content.endswith(b"\r"):
            content = content[:-1]
        hold_last = not ends and content.endswith(b"\r")
        if hold_last:
            content = content[:-1]
        # A bare CR ends a line too: RFC 5322 §2.3 allows CR and LF only together.
        parts = content.split(b"\r")
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if last and hold_last:
                cr_held = part
                break
            if not last or ends:
                line = complete(part)
                if line is None:
                    return
                yield line
            elif part:
                if at_line_start and not dot_held and part == b".":
                    dot_held = True
                    continue
                if dot_held:
                    dot_held = False
                    yield b"."
                yield part
                at_line_start = False


def _read_header(lines: Iterator[bytes]) -> tuple[list[bytes], bytes | None]:
    """The header section as whole CRLF lines (the blank line that ends it included), and
    the first body line if reading it was how the header's end was found."""
    header: list[bytes] = []
    total = 0
    current = b""
    first = True
    for piece in lines:
        current += piece
        if len(current) > MAX_HEADER_LINE:
            if (current[:1] in (b" ", b"\t") and header) or _FIELD.match(current):
                raise DropError(f"a header line is longer than {MAX_HEADER_LINE} bytes",
                                "data")
            # A very long line that is no field: the header has ended, this is body.
            return [*header, b"\r\n"], current
        if not current.endswith(b"\r\n"):
            continue
        line, current = current, b""
        if first and line.startswith(b"From ") and not _FIELD.match(line):
            first = False
            continue  # a Unix mbox "From " line, which sendmail has always dropped
        first = False
        if line == b"\r\n":
            header.append(line)
            return header, None
        if line[:1] in (b" ", b"\t") and header:
            pass  # continuation of the previous field
        elif not _FIELD.match(line):
            # Not a header field: the header ended without a blank line; add one so the
            # body does not become part of the header (RFC 5322 §2.1).
            header.append(b"\r\n")
            return header, line
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise DropError(f"message header larger than {MAX_HEADER_BYTES} bytes", "data")
        header.append(line)
    if current:  # cannot happen: pieces always end with a complete line at the end
        header.append(current)
    return header, None


def _fields(header: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """Group header lines into fields: (lower-case name, lines)."""
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in header:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
        elif line == b"\r\n":
            fields.append((b"", [line]))
        else:
            name = line.split(b":", 1)[0].rstrip(b" \t").lower()
            fields.append((name, [line]))
    return fields


def _header_recipients(header: list[bytes]) -> list[str]:
    fields = _fields(header)
    names = {name for name, _ in fields}
    wanted = _RESENT_FIELDS if names & set(_RESENT_FIELDS) else _RECIPIENT_FIELDS
    out: list[str] = []
    for name, lines in fields:
        if name not in wanted:
            continue
        value = b"".join(lines).split(b":", 1)[1].replace(b"\r\n", b"")
        for item in parse_address_list(value):
            members = item.members if isinstance(item, Group) else (item,)
            for mailbox in members:
                out.append(_header_address(mailbox))
    return out


def _header_address(mailbox: Mailbox) -> str:
    try:
        text = mailbox.addr_spec.decode("utf-8")
    except UnicodeDecodeError:
        raise DropError("an address in the message header is not valid UTF-8",
                        "address") from None
    if mailbox.domain is None:
        raise DropError(f"address {text!r} in the message header has no domain", "address")
    try:
        return str(parse_address(text))
    except AddressError as exc:
        raise DropError(f"bad address {text!r} in the message header: {exc}",
                        "address") from None


def _without_blind_fields(header: list[bytes]) -> list[bytes]:
    """The header without Bcc and Resent-Bcc: blind recipients must stay blind."""
    return [line for name, lines in _fields(header) if name not in _BLIND_FIELDS
            for line in lines]
