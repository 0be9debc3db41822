"""Structured logs: one line per event, in logfmt (default) or JSON.

Every event carries a subsystem (``smtp``, ``lmtp``, ``store``, ``delivery``, ...) and
key/value fields, so a message's path is traceable by its id:

    ts=2026-11-20T23:59:01.123Z level=info subsystem=smtp event=message id=8f3c... from=<a@b> ...

Use :func:`log` rather than formatting strings yourself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
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


def setup_logging(fmt: str = "logfmt", level: str = "info", file: str | None = None,
                  stream: TextIO | None = None) -> None:
    """Configure the ``mailkeep`` logger tree (idempotent: replaces earlier handlers)."""
    root = logging.getLogger("mailkeep")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handler: logging.Handler
    if file:
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
    if logger.isEnabledFor(level):
        clean = {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}
        logger.log(level, msg, extra=clean)
