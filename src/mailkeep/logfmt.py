"""Structured logs: one line per event, in logfmt (default) or JSON.

Every event carries a subsystem (``smtp``, ``lmtp``, ``store``, ``delivery``, ...) and
key/value fields, so a message's path is traceable by its id:

    ts=2026-11-20T23:59:01.123Z level=info subsystem=smtp event=message id=8f3c... from=<a@b> ...

Use :func:`log` rather than formatting strings yourself.

The server (``setup_logging(..., buffered=True)``) writes lines from a background thread
every ``FLUSH_INTERVAL``: a busy server logs several lines per message, and formatting
them through ``logging`` and writing each with its own system call cost as much as a
fifth of the event loop. Lines at warning and above are written at once, after whatever
was pending, so the order of lines is kept; a ``kill -9`` can lose at most the last
``FLUSH_INTERVAL`` of info lines.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, TextIO

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


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


_last_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    global _last_second
    second = int(created)
    if second != _last_second[0]:  # strftime once per second, not once per line
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": _timestamp(record.created),
        "level": record.levelname.lower(),
        "subsystem": record.name.removeprefix("mailkeep.") if record.name != "mailkeep" else "main",
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


#: How often buffered lines are written (``setup_logging(buffered=True)``).
FLUSH_INTERVAL = 0.05
#: Pending lines beyond which the writer is woken at once (a burst stays bounded).
MAX_PENDING_LINES = 10_000


class LineWriter:
    """Log lines to a file (reopened when logrotate moves it) or a stream, written by a
    background thread; ``urgent`` lines are written at once with everything before them."""

    def __init__(self, path: str | None = None, stream: TextIO | None = None) -> None:
        self._path = path
        self._stream = stream
        self._file: TextIO | None = None
        self._ident: tuple[int, int] | None = None
        self._pending: list[str] = []
        self._lock = threading.Lock()        # guards _pending
        self._write_lock = threading.Lock()  # one writer at a time, in order
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mailkeep-log", daemon=True)
        self._thread.start()

    def write(self, line: str, urgent: bool = False) -> None:
        with self._lock:
            self._pending.append(line)
            many = len(self._pending) >= MAX_PENDING_LINES
        if urgent or self._closed:
            self.flush()
        elif many:
            self._wake.set()

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                lines, self._pending = self._pending, []
            if not lines:
                return
            try:
                out = self._target()
                out.write("\n".join(lines) + "\n")
                out.flush()
            except (OSError, ValueError):
                pass  # nowhere to report a failing log; the lines are dropped

    def _target(self) -> TextIO:
        if self._path is None:
            return self._stream or sys.stderr
        try:
            info = os.stat(self._path)
            ident: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except FileNotFoundError:
            ident = None
        if self._file is None or ident != self._ident:
            if self._file is not None:
                self._file.close()
            self._file = open(self._path, "a", encoding="utf-8")
            info = os.fstat(self._file.fileno())
            self._ident = (info.st_dev, info.st_ino)
        return self._file

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.flush()
        if self._file is not None:
            with self._write_lock:
                self._file.close()
                self._file = None


class _LineHandler(logging.Handler):
    """The ``logging`` side of a LineWriter (records not logged through :func:`log`)."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.writer.close()
        super().close()


# The writer of the buffered logfmt setup, used by log() directly; None otherwise.
_writer: LineWriter | None = None
_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
           logging.ERROR: "error", logging.CRITICAL: "critical"}


def setup_logging(fmt: str = "logfmt", level: str = "info", file: str | None = None,
                  stream: TextIO | None = None, *, buffered: bool = False) -> None:
    """Configure the ``mailkeep`` logger tree (idempotent: replaces earlier handlers).

    ``buffered``: lines are written by a background thread (see the module docstring);
    the server uses it, commands and tests do not.
    """
    global _writer
    root = logging.getLogger("mailkeep")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    _writer = None
    handler: logging.Handler
    if buffered:
        writer = LineWriter(file, stream)
        atexit.register(writer.close)
        handler = _LineHandler(writer)
        if fmt != "json":
            _writer = writer
    elif file:
        from logging.handlers import WatchedFileHandler

        # WatchedFileHandler reopens the file after logrotate moves it.
        handler = WatchedFileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
    # asyncio reports errors it caught in callbacks through its own logger: same place.
    aio = logging.getLogger("asyncio")
    for old in list(aio.handlers):
        aio.removeHandler(old)
    aio.addHandler(handler)
    aio.setLevel(logging.WARNING)
    aio.propagate = False


def log(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``msg`` with key/value ``fields`` (names must not clash with LogRecord attributes)."""
    if not logger.isEnabledFor(level):
        return
    writer = _writer
    if writer is not None and level in _LEVELS:
        # The same line LogfmtFormatter would write, without a LogRecord.
        name = logger.name
        subsystem = name.removeprefix("mailkeep.") if name != "mailkeep" else "main"
        parts = [f"ts={_timestamp(time.time())}", f"level={_LEVELS[level]}",
                 f"subsystem={_logfmt_value(subsystem)}", f"msg={_logfmt_value(msg)}"]
        for key, value in fields.items():
            if key in _RESERVED:
                key = f"{key}_"
            parts.append(f"{key}={_logfmt_value(value)}")
        writer.write(" ".join(parts), urgent=level >= logging.WARNING)
        return
    clean = {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}
    logger.log(level, msg, extra=clean)
