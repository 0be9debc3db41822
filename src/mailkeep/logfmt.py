"""Structured logs: one line per event, in logfmt (default) or JSON, to files, standard
error, syslog or the systemd journal.

Every event carries a subsystem (``smtp``, ``lmtp``, ``store``, ``delivery``, ...) and
key/value fields, so a message's path is traceable by its id (``mailkeep log trace ID``):

    ts=2026-11-20T23:59:01.123Z level=info subsystem=smtp msg=message id=8f3c... from=<a@b> ...

Use :func:`log` rather than formatting strings yourself.

Where lines go ([log] in docs/configuration.md, docs/operations.md):

- ``file``: one file, or one file per subsystem in ``dir`` (``smtp.log``, ``queue.log``,
  ...; the subsystem is the first part of the logger name after ``mailkeep.``), with
  ``[log.files]`` sending chosen subsystems elsewhere. Files are reopened when logrotate
  moves them, and rotated by size when ``rotate_size`` is set (``smtp.log`` →
  ``smtp.log.1`` → ... ``smtp.log.<rotate_keep>``, each step one atomic rename).
- ``stderr``.
- ``syslog``: datagrams to ``/dev/log`` in the format the C library's syslog(3) uses
  there (RFC 3164 §4.1: ``<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG``), facility ``mail``, TAG
  ``mailkeep/<subsystem>``, as Postfix's ``postfix/smtpd``.
- ``journald``: the journal's native protocol (systemd.journal-fields(7), "Native
  Protocol" of the journal's documentation) over its datagram socket: MESSAGE, PRIORITY,
  SYSLOG_IDENTIFIER, SYSLOG_FACILITY and one ``MAILKEEP_<KEY>`` field per key, so that
  ``journalctl MAILKEEP_ID=...`` finds a message's lines. Falls back to syslog, then to
  standard error, when the journal's socket does not exist.

The server writes from background threads (``buffered``): a busy server logs several lines
per message, and formatting them through ``logging`` and writing each with its own system
call cost as much as a fifth of the event loop. Lines are written every
``FLUSH_INTERVAL``; lines at warning and above are written at once, after whatever was
pending, so the order of lines is kept; a ``kill -9`` can lose at most the last
``FLUSH_INTERVAL`` of info lines. Syslog and journal records are even formatted in the
background thread. A line that cannot be written where it should goes to standard error;
if even that fails, or the backlog passes ``MAX_BACKLOG``, it is counted
(:func:`dropped_lines`, the metric ``mailkeep_log_lines_dropped_total``) and dropped.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

LOG_TARGETS: tuple[str, ...] = ("stderr", "file", "syslog", "journald")
DEFAULT_SYSLOG_SOCKET = "/dev/log"
DEFAULT_JOURNALD_SOCKET = "/run/systemd/journal/socket"
#: syslog(3) facilities by name (RFC 5424 §6.2.1, table 1).
FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
#: Severities (RFC 5424 §6.2.1, table 2) by logging level.
SEVERITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}

#: How often buffered lines are written (``setup_logging(buffered=True)``).
FLUSH_INTERVAL = 0.05
#: Pending lines beyond which the writer is woken at once (a burst stays bounded).
MAX_PENDING_LINES = 10_000
#: Pending lines beyond which new ones are dropped (and counted): the target is stuck.
MAX_BACKLOG = 200_000
#: Longest syslog datagram (rsyslog's default maxMessageSize); longer ones are cut.
MAX_SYSLOG_BYTES = 8192
#: RFC 3164 §4.1.3: the TAG is at most 32 characters.
MAX_SYSLOG_TAG = 32
#: Seconds before a rotation that failed (a rename refused) is tried again.
ROTATE_RETRY = 60.0
#: Longest wait for a datagram socket that is full (a stalled syslog daemon).
SEND_TIMEOUT = 1.0
#: Journal field names: at most 64 characters, upper case, digits and underscores.
MAX_JOURNAL_FIELD_NAME = 64
#: Permissions of log files we create: they name people (addresses, client IPs).
FILE_MODE = 0o640
DIR_MODE = 0o750


# -- formatting ----------------------------------------------------------------------------

# Values made only of these characters are written bare; anything else is quoted.
_BARE = re.compile(r"[!#-<>-\[\]-~]+")


def _logfmt_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def parse_logfmt(line: str) -> dict[str, str]:
    """The fields of a logfmt line as :func:`log` writes them (the inverse of its
    quoting). Text that is not ``key=value`` is skipped."""
    fields: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        start = i
        while i < n and line[i] not in " =":
            i += 1
        key = line[start:i]
        if i >= n or line[i] != "=":
            continue  # a bare word: not a field
        i += 1
        if i < n and line[i] == '"':
            i += 1
            out = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    out.append(_UNESCAPE.get(line[i + 1], line[i + 1]))
                    i += 2
                else:
                    out.append(line[i])
                    i += 1
            i += 1  # the closing quote
            value = "".join(out)
        else:
            start = i
            while i < n and line[i] != " ":
                i += 1
            value = line[start:i]
        if key:
            fields[key] = value
    return fields


_last_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    global _last_second
    second = int(created)
    if second != _last_second[0]:  # strftime once per second, not once per line
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int(created % 1 * 1000):03d}Z"


def subsystem_of(logger_name: str) -> str:
    """The ``subsystem`` field of a logger: ``mailkeep.policy.clamd`` → ``policy.clamd``,
    ``mailkeep`` → ``main``; loggers of libraries keep their name (``asyncio``)."""
    if logger_name == "mailkeep":
        return "main"
    return logger_name.removeprefix("mailkeep.")


def file_key(logger_name: str) -> str:
    """The per-subsystem file a logger writes to with ``[log] dir``: the first part of
    its subsystem (``policy.clamd`` → ``policy``)."""
    return subsystem_of(logger_name).split(".", 1)[0]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname.lower(),
        "subsystem": subsystem_of(record.name),
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _RESERVED and not key.startswith("_"):
            fields[key] = value
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


# -- lines that could not be written ---------------------------------------------------------

_dropped = 0
_dropped_lock = threading.Lock()
_fallback_noticed: set[str] = set()


def dropped_lines() -> int:
    """Lines dropped since the process started (see the module docstring)."""
    return _dropped


def _drop(count: int) -> None:
    global _dropped
    with _dropped_lock:
        _dropped += count


def _to_stderr(text: str, count: int, failure: str | None = None) -> None:
    """Write lines whose target failed to standard error (once with the reason)."""
    try:
        if failure is not None and failure not in _fallback_noticed:
            _fallback_noticed.add(failure)
            sys.stderr.write(f"mailkeep: {failure}; writing log lines to standard error\n")
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        _drop(count)


# -- buffered writers ------------------------------------------------------------------------


class _Flusher:
    """The background thread that writes what its writers hold, every FLUSH_INTERVAL (one
    thread for every file of a per-subsystem setup)."""

    def __init__(self) -> None:
        self.writers: list[_Buffered] = []
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mailkeep-log", daemon=True)
        self._thread.start()

    def add(self, writer: _Buffered) -> None:
        self.writers = [*self.writers, writer]

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            for writer in self.writers:
                writer.flush()

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class _Buffered:
    """Items queued by any thread, written in order by a flusher thread; ``urgent`` items
    are written at once, with everything queued before them."""

    def __init__(self, flusher: _Flusher | None = None) -> None:
        self._pending: list[Any] = []
        self._lock = threading.Lock()        # guards _pending
        self._write_lock = threading.Lock()  # one writer at a time, in order
        self._closed = False
        self._own_flusher = flusher is None
        self._flusher = flusher if flusher is not None else _Flusher()
        self._flusher.add(self)

    def write(self, item: Any, urgent: bool = False) -> None:
        with self._lock:
            backlog = len(self._pending)
            if backlog >= MAX_BACKLOG:
                _drop(1)
                return
            self._pending.append(item)
        if urgent or self._closed:
            self.flush()
        elif backlog + 1 >= MAX_PENDING_LINES:
            self._flusher.wake()

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                items, self._pending = self._pending, []
            if items:
                self._emit(items)

    def _emit(self, items: list[Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
        if self._own_flusher:
            self._flusher.close()
        self.flush()
        with self._write_lock:
            self._release()

    def _release(self) -> None:
        """Close what the writer holds open (called with the write lock held)."""


class LineWriter(_Buffered):
    """Log lines to a file or a stream. A file is reopened when logrotate moves it, and
    rotated when it would grow past ``rotate_size`` bytes (0: never), keeping
    ``rotate_keep`` old files (``name.1`` the newest). Lines the file refuses go to
    standard error."""

    def __init__(self, path: str | None = None, stream: TextIO | None = None, *,
                 rotate_size: int = 0, rotate_keep: int = 7,
                 flusher: _Flusher | None = None) -> None:
        self._path = path
        self._stream = stream
        self.rotate_size = max(0, rotate_size)
        self.rotate_keep = max(1, rotate_keep)
        self._file: int | None = None
        self._ident: tuple[int, int] | None = None
        self._size = 0
        self._rotate_after = 0.0
        super().__init__(flusher)

    @property
    def path(self) -> str | None:
        return self._path

    def _emit(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        if self._path is None:
            try:
                out = self._stream or sys.stderr
                out.write(text)
                out.flush()
            except (OSError, ValueError):
                _drop(len(lines))
            return
        data = text.encode("utf-8", "backslashreplace")
        try:
            fd = self._target(len(data))
            _write_all(fd, data)
            self._size += len(data)
        except OSError as exc:
            _to_stderr(text, len(lines), f"cannot write {self._path}: "
                       f"{exc.strerror or exc}")

    def _target(self, incoming: int) -> int:
        """The open file to append ``incoming`` bytes to: reopened if logrotate moved it,
        rotated first if it would pass ``rotate_size``."""
        assert self._path is not None
        try:
            info = os.stat(self._path)
            ident: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except FileNotFoundError:
            ident = None
        if self._file is not None and ident != self._ident:
            self._close_file()  # moved or removed by logrotate: a new file at the path
        if self._file is None:
            self._open()
        if (self.rotate_size and self._size > 0 and self._size + incoming > self.rotate_size
                and time.monotonic() >= self._rotate_after and self._rotate()):
            self._open()
        assert self._file is not None
        return self._file

    def _open(self) -> None:
        assert self._path is not None
        self._file = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             FILE_MODE)
        info = os.fstat(self._file)
        self._ident = (info.st_dev, info.st_ino)
        self._size = info.st_size

    def _rotate(self) -> bool:
        """``name.(k-1)`` → ``name.k`` ... ``name`` → ``name.1``, oldest first so that each
        rename is atomic and no file is ever overwritten except the one past
        ``rotate_keep``; the caller then creates ``name`` again. False (the file stays
        open, and rotation is tried again after ``ROTATE_RETRY`` seconds) if a rename
        fails, so that lines are appended rather than lost."""
        assert self._path is not None
        path = self._path
        try:
            for n in range(self.rotate_keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}.{n}", f"{path}.{n + 1}")
            os.replace(path, f"{path}.1")
        except OSError as exc:
            self._rotate_after = time.monotonic() + ROTATE_RETRY
            _to_stderr("", 0, f"cannot rotate {path}: {exc.strerror or exc}")
            return False
        self._close_file()
        return True

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.close(self._file)
        self._file = None
        self._ident = None
        self._size = 0

    def _release(self) -> None:
        self._close_file()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# A record for the datagram targets, formatted in the background thread:
# (created, level number, logger name, msg, fields, error text or None).
Record = tuple[float, int, str, str, Mapping[str, Any], str | None]


def _message_text(record: Record, fmt: str, *, with_level: bool) -> str:
    """What syslog's MSG and the journal's MESSAGE say: the logfmt line without what the
    receiver records itself (time, subsystem), or the whole JSON object."""
    created, levelno, name, msg, fields, error = record
    level = logging.getLevelName(levelno).lower()
    if fmt == "json":
        doc: dict[str, Any] = {"ts": _timestamp(created), "level": level,
                               "subsystem": subsystem_of(name), "msg": msg}
        doc.update(_clean_fields(fields))
        if error:
            doc["error"] = error
        return json.dumps(doc, default=str, ensure_ascii=False)
    parts = [f"level={level}"] if with_level else []
    parts.append(f"msg={_logfmt_value(msg)}")
    parts.extend(f"{k}={_logfmt_value(v)}" for k, v in _clean_fields(fields).items())
    if error:
        parts.append(f"error={_logfmt_value(error)}")
    return " ".join(parts)


def _clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}


def record_line(record: Record, fmt: str) -> str:
    """One line for ``record``, as the stderr target writes it (logfmt or JSON)."""
    created, levelno, name, msg, fields, error = record
    if fmt == "json":
        return _message_text(record, fmt, with_level=True)
    parts = [f"ts={_timestamp(created)}", f"level={logging.getLevelName(levelno).lower()}",
             f"subsystem={_logfmt_value(subsystem_of(name))}", f"msg={_logfmt_value(msg)}"]
    parts.extend(f"{k}={_logfmt_value(v)}" for k, v in _clean_fields(fields).items())
    if error:
        parts.append(f"error={_logfmt_value(error)}")
    return " ".join(parts)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


def syslog_datagram(record: Record, fmt: str, facility: int, pid: int) -> bytes:
    """One record as syslog(3) sends it to /dev/log (RFC 3164 §4.1): PRI, a local
    timestamp "Mmm dd hh:mm:ss" (English month, day padded with a space), the TAG
    ``mailkeep/<subsystem>`` with the pid, then the message."""
    created, levelno, name = record[0], record[1], record[2]
    pri = facility * 8 + SEVERITY.get(levelno, 6)
    t = time.localtime(created)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    tag = f"mailkeep/{subsystem_of(name)}"[:MAX_SYSLOG_TAG]
    text = _message_text(record, fmt, with_level=True).replace("\n", " ")
    data = f"<{pri}>{stamp} {tag}[{pid}]: {text}".encode("utf-8", "backslashreplace")
    if len(data) > MAX_SYSLOG_BYTES:
        data = data[:MAX_SYSLOG_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return data


_JOURNAL_NAME_JUNK = re.compile(r"[^A-Z0-9_]+")


def journal_field_name(key: str) -> str:
    """``MAILKEEP_<KEY>``: upper case, anything but letters, digits and "_" made "_",
    trailing underscores dropped (``from_`` → ``MAILKEEP_FROM``), at most 64 characters."""
    name = _JOURNAL_NAME_JUNK.sub("_", key.upper()).strip("_") or "FIELD"
    return f"MAILKEEP_{name}"[:MAX_JOURNAL_FIELD_NAME]


def _journal_field(out: bytearray, name: str, value: str) -> None:
    data = value.encode("utf-8", "backslashreplace")
    if b"\n" in data:
        # A value with a line feed: the name, a line feed, its length as 64-bit little
        # endian, the value, a line feed.
        out += name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    else:
        out += name.encode() + b"=" + data + b"\n"


def journal_datagram(record: Record, fmt: str, facility: int) -> bytes:
    """One record in the journal's native protocol."""
    _created, levelno, name, msg, fields, error = record
    out = bytearray()
    _journal_field(out, "MESSAGE", _message_text(record, fmt, with_level=False))
    _journal_field(out, "PRIORITY", str(SEVERITY.get(levelno, 6)))
    _journal_field(out, "SYSLOG_IDENTIFIER", f"mailkeep/{subsystem_of(name)}")
    _journal_field(out, "SYSLOG_FACILITY", str(facility))
    _journal_field(out, "MAILKEEP_SUBSYSTEM", subsystem_of(name))
    _journal_field(out, "MAILKEEP_MSG", msg)
    seen = {"MAILKEEP_SUBSYSTEM", "MAILKEEP_MSG"}
    for key, value in fields.items():
        field = journal_field_name(key)
        if field in seen:
            continue
        seen.add(field)
        _journal_field(out, field, "" if value is None else
                       ("true" if value is True else "false" if value is False else str(value)))
    if error:
        _journal_field(out, "MAILKEEP_ERROR", error)
    return bytes(out)


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class DatagramWriter(_Buffered):
    """Records sent as datagrams to syslog's or the journal's Unix socket. A record the
    socket refuses (no daemon, a full buffer for longer than ``SEND_TIMEOUT``) goes to
    standard error."""

    def __init__(self, kind: str, path: str, fmt: str = "logfmt", facility: int = 2,
                 flusher: _Flusher | None = None) -> None:
        if kind not in ("syslog", "journald"):
            raise ValueError(f"unknown datagram target {kind!r}")
        self.kind = kind
        self.path = path
        self.fmt = fmt
        self.facility = facility
        self._sock: socket.socket | None = None
        super().__init__(flusher)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.settimeout(SEND_TIMEOUT)
            self._sock = sock
        return self._sock

    def _emit(self, records: list[Record]) -> None:
        pid = os.getpid()
        for record in records:
            try:
                if self.kind == "syslog":
                    self._socket().sendto(syslog_datagram(record, self.fmt, self.facility,
                                                          pid), self.path)
                else:
                    self._send_journal(journal_datagram(record, self.fmt, self.facility))
            except OSError as exc:
                _to_stderr(record_line(record, self.fmt) + "\n", 1,
                           f"cannot send to {self.kind} at {self.path}: "
                           f"{exc.strerror or exc}")

    def _send_journal(self, data: bytes) -> None:
        sock = self._socket()
        try:
            sock.sendto(data, self.path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too big for a datagram
                raise
        # The journal takes a large record as a sealed memfd passed with SCM_RIGHTS.
        fd = os.memfd_create("mailkeep-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            _write_all(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", [fd]).tobytes())], 0, self.path)
        finally:
            os.close(fd)

    def _release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- routing: which writer a logger writes to -------------------------------------------------


class Routes:
    """The files of a ``file`` target: each logger's writer, made on first use. One writer
    (and file) per path, whatever the number of subsystems sharing it; one flusher thread
    for all of them."""

    def __init__(self, *, file: str | None, directory: str | None,
                 files: Mapping[str, str], stream: TextIO | None, rotate_size: int,
                 rotate_keep: int) -> None:
        self.file = file
        self.directory = directory
        self.files = dict(files)
        self.stream = stream
        self.rotate_size = rotate_size
        self.rotate_keep = rotate_keep
        self.flusher = _Flusher()
        self.cache: dict[str, tuple[LineWriter, str]] = {}
        self._by_path: dict[str | None, LineWriter] = {}
        self._lock = threading.Lock()

    def path_for(self, logger_name: str) -> str | None:
        """The file of a logger (None: the stream)."""
        key = file_key(logger_name)
        if key in self.files:
            return self.files[key]
        if self.directory is not None:
            return os.path.join(self.directory, f"{key}.log")
        return self.file

    def writer(self, logger_name: str) -> LineWriter:
        return self.entry(logger_name)[0]

    def entry(self, logger_name: str) -> tuple[LineWriter, str]:
        """The writer of a logger and its ``subsystem=`` field, formatted once."""
        entry = self.cache.get(logger_name)
        if entry is not None:
            return entry
        path = self.path_for(logger_name)
        with self._lock:
            writer = self._by_path.get(path)
            if writer is None:
                writer = LineWriter(path, self.stream, rotate_size=self.rotate_size,
                                    rotate_keep=self.rotate_keep, flusher=self.flusher)
                self._by_path[path] = writer
            entry = (writer, f"subsystem={_logfmt_value(subsystem_of(logger_name))}")
            self.cache[logger_name] = entry
        return entry

    def paths(self) -> list[str]:
        """Every file written so far."""
        return [p for p in self._by_path if p is not None]

    def close(self) -> None:
        self.flusher.close()
        for writer in list(self._by_path.values()):
            writer.close()


class _RoutedHandler(logging.Handler):
    """The ``logging`` side of the writers (records not logged through :func:`log`)."""

    def __init__(self, routes: Routes | None, sender: DatagramWriter | None) -> None:
        super().__init__()
        self.routes = routes
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            urgent = record.levelno >= logging.WARNING
            if self.sender is not None:
                self.sender.write(_record_of(record), urgent=urgent)
            elif self.routes is not None:
                self.routes.writer(record.name).write(self.format(record), urgent=urgent)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.routes is not None:
            self.routes.close()
        if self.sender is not None:
            self.sender.close()
        super().close()


def _record_of(record: logging.LogRecord) -> Record:
    fields = {k: v for k, v in record.__dict__.items()
              if k not in _RESERVED and not k.startswith("_")}
    error = logging.Formatter().formatException(record.exc_info) if record.exc_info else None
    return (record.created, record.levelno, record.name, record.getMessage(), fields, error)


# -- setup ----------------------------------------------------------------------------------

# The routes of a logfmt ``file``/``stderr`` setup and the writer of a syslog/journald one,
# used by log() directly (no LogRecord); None otherwise.
_routes: Routes | None = None
_sender: DatagramWriter | None = None
# Where log() hands records when they go to another process (forward_logging); else None.
_forward: Callable[[Record], object] | None = None
_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
           logging.ERROR: "error", logging.CRITICAL: "critical"}


def setup_logging(fmt: str = "logfmt", level: str = "info", file: str | None = None,
                  stream: TextIO | None = None, *, buffered: bool = False,
                  target: str | None = None, directory: str | None = None,
                  files: Mapping[str, str] | None = None, rotate_size: int = 0,
                  rotate_keep: int = 7, syslog_socket: str = DEFAULT_SYSLOG_SOCKET,
                  journald_socket: str = DEFAULT_JOURNALD_SOCKET, facility: str = "mail",
                  owner: tuple[int, int] | None = None) -> str:
    """Configure the ``mailkeep`` logger tree (idempotent: replaces earlier handlers) and
    return the target in use (``journald`` may fall back to ``syslog`` or ``stderr``).

    ``target``: "file", "stderr", "syslog" or "journald"; by default "file" when ``file``,
    ``directory`` or ``files`` is given, else "stderr". ``buffered``: lines are written
    by a background thread (see the module docstring); the server uses it, commands and
    tests do not, except that per-subsystem files, rotation, syslog and the journal are
    always written that way. ``owner``: (uid, gid) given to directories created here (the
    server's ``run_as`` user, which writes the files after dropping privileges).
    """
    global _routes, _sender
    reset_logging()
    files = dict(files or {})
    if target is None:
        target = "file" if (file or directory or files) else "stderr"
    if target not in LOG_TARGETS:
        raise ValueError(f"unknown log target {target!r}")
    if facility not in FACILITIES:
        raise ValueError(f"unknown syslog facility {facility!r}")
    notice = None
    if target == "journald" and not is_socket(journald_socket):
        notice = f"no journal socket at {journald_socket}"
        target = "syslog" if is_socket(syslog_socket) else "stderr"
        notice += f"; logging to {target}"
    if target == "syslog" and notice is None and not is_socket(syslog_socket):
        notice = f"no syslog socket at {syslog_socket}; logging to stderr"
        target = "stderr"
    handler: logging.Handler
    if target in ("syslog", "journald"):
        path = journald_socket if target == "journald" else syslog_socket
        sender = DatagramWriter(target, path, fmt, FACILITIES[facility])
        handler = _RoutedHandler(None, sender)
        _sender = sender
    elif buffered or directory or files or rotate_size:
        if target == "stderr":
            file, directory, files = None, None, {}
        for folder in _directories(file, directory, files):
            _make_directory(folder, owner)
        routes = Routes(file=file, directory=directory, files=files, stream=stream,
                        rotate_size=rotate_size, rotate_keep=rotate_keep)
        handler = _RoutedHandler(routes, None)
        if fmt != "json":
            _routes = routes
    elif file and target == "file":
        from logging.handlers import WatchedFileHandler

        # WatchedFileHandler reopens the file after logrotate moves it.
        handler = WatchedFileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    _install(handler, level)
    if notice is not None:
        log(logging.getLogger("mailkeep.server"), notice, logging.WARNING)
    return target


def configure(settings: Any, *, buffered: bool = True,
              owner: tuple[int, int] | None = None) -> str:
    """:func:`setup_logging` from a ``config.schema.LogConfig`` (the server's [log])."""
    def text(path: Any) -> str | None:
        return str(path) if path else None

    return setup_logging(
        settings.format, settings.level, text(settings.file), buffered=buffered,
        target=settings.target, directory=text(settings.dir),
        files={k: str(v) for k, v in settings.files.items()},
        rotate_size=settings.rotate_size, rotate_keep=settings.rotate_keep,
        syslog_socket=str(settings.syslog_socket),
        journald_socket=str(settings.journald_socket), facility=settings.facility,
        owner=owner)


def _write_pending_at_exit() -> None:
    """At exit: write what the background writers still hold (they stay usable: a line
    logged later is written at once)."""
    for handler in list(logging.getLogger("mailkeep").handlers):
        if isinstance(handler, _RoutedHandler):
            if handler.routes is not None:
                handler.routes.close()
            if handler.sender is not None:
                handler.sender.close()


atexit.register(_write_pending_at_exit)


def reset_logging() -> None:
    """Remove (and close, writing what is pending) the handlers of the logger tree."""
    global _routes, _sender, _forward
    _routes = None
    _sender = None
    _forward = None
    for name in ("mailkeep", "asyncio"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if name == "mailkeep":  # the same handler serves both loggers
                handler.close()


class _ForwardHandler(logging.Handler):
    """Hands each record to ``send`` as a :data:`Record` (see :func:`forward_logging`)."""

    def __init__(self, send: Callable[[Record], object]) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            created, level, name, msg, fields, error = _record_of(record)
            self.send((created, level, name, msg, _plain(fields), error))
        except Exception:
            self.handleError(record)


def forward_logging(send: Callable[[Record], object], level: str = "info") -> None:
    """Log through another process: every record of the ``mailkeep`` tree (and asyncio's
    warnings) becomes a :data:`Record` given to ``send``; the other process writes it with
    :func:`emit_record`, so that one process owns the log files, their rotation and the
    syslog or journal connection. Used by the delivery process (mailkeep.queue.agent)."""
    global _forward
    reset_logging()
    _install(_ForwardHandler(send), level)
    _forward = send


def _plain(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Field values another process can unpickle and format: anything else as its str()."""
    return {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
            for k, v in fields.items()}


def _install(handler: logging.Handler, level: str) -> None:
    """``handler`` for the ``mailkeep`` logger tree at ``level``, not propagated beyond it."""
    root = logging.getLogger("mailkeep")
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
    # asyncio reports errors it caught in callbacks through its own logger: same place.
    aio = logging.getLogger("asyncio")
    aio.addHandler(handler)
    aio.setLevel(logging.WARNING)
    aio.propagate = False


def emit_record(record: Record) -> None:
    """Write a record another process forwarded (:func:`forward_logging`) to this
    process's log, as if it had been logged here at the time it was made."""
    created, level, name, msg, fields, error = record
    logger = logging.getLogger(name)
    routes = _routes
    if routes is not None and level in _LEVELS:
        routes.writer(name).write(record_line(record, "logfmt"),
                                  urgent=level >= logging.WARNING)
        return
    sender = _sender
    if sender is not None and level in _LEVELS:
        sender.write(record, urgent=level >= logging.WARNING)
        return
    made = logging.LogRecord(name, level, "", 0, msg, None, None)
    made.created = created
    made.msecs = created % 1 * 1000
    made.__dict__.update(_clean_fields(fields))
    if error:
        made.__dict__["error"] = error
    logger.handle(made)


def current_files() -> list[str]:
    """The log files the running setup has written to so far."""
    return _routes.paths() if _routes is not None else []


def _directories(file: str | None, directory: str | None,
                 files: Mapping[str, str]) -> Iterable[str]:
    paths = [p for p in (file, *files.values()) if p]
    seen = {os.path.dirname(p) for p in paths}
    if directory:
        seen.add(directory)
    return sorted(p for p in seen if p)


def _make_directory(path: str, owner: tuple[int, int] | None) -> None:
    """Create a missing log directory (and give it to ``owner``); an existing one is left
    as it is: it must be writable by the user the server runs as."""
    if os.path.isdir(path):
        return
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        if owner is not None:
            os.chown(path, owner[0], owner[1], follow_symlinks=False)
    except OSError as exc:
        _to_stderr("", 0, f"cannot create the log directory {path}: {exc.strerror or exc}")


def log(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``msg`` with key/value ``fields`` (names must not clash with LogRecord attributes)."""
    if not logger.isEnabledFor(level):
        return
    routes = _routes
    if routes is not None and level in _LEVELS:
        # The same line LogfmtFormatter would write, without a LogRecord.
        name = logger.name
        writer, subsystem = routes.cache.get(name) or routes.entry(name)
        parts = [f"ts={_timestamp(time.time())}", f"level={_LEVELS[level]}", subsystem,
                 f"msg={_logfmt_value(msg)}"]
        for key, value in fields.items():
            if key in _RESERVED:
                key = f"{key}_"
            parts.append(f"{key}={_logfmt_value(value)}")
        writer.write(" ".join(parts), urgent=level >= logging.WARNING)
        return
    sender = _sender
    if sender is not None and level in _LEVELS:
        # Formatted in the writer's thread.
        sender.write((time.time(), level, logger.name, msg, fields, None),
                     urgent=level >= logging.WARNING)
        return
    forward = _forward
    if forward is not None and level in _LEVELS:
        # To the server, which writes it (forward_logging); no LogRecord needed.
        forward((time.time(), level, logger.name, msg, _plain(_clean_fields(fields)), None))
        return
    logger.log(level, msg, extra=_clean_fields(fields))
