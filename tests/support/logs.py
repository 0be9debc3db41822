"""Helpers for tests of the logging setup (mailkeep.logfmt)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mailkeep import logfmt


def reset_logging() -> None:
    """Leave the logger tree as the other tests expect it: no handler, propagating, so
    pytest's caplog sees records."""
    logfmt.reset_logging()
    for name in ("mailkeep", "asyncio"):
        logger = logging.getLogger(name)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def wait_for_text(path: Path, text: str, timeout: float = 5.0) -> str:
    """The file's content once it holds ``text`` (the writers flush in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.01)
    raise AssertionError(f"{text!r} never reached {path}")
