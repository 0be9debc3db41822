"""A small terminal progress bar for long CLI jobs (import, export): counts, rate, ETA.

Drawn on stderr with carriage returns, at most every ``min_interval`` seconds. Silent when
stderr is not a terminal (cron, pipes, logs), unless forced with ``enabled=True``, so that
scripts get clean output. ``render`` is a pure function and holds all the formatting.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from mailkeep.units import format_size


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(label: str, done: int, total: int | None, elapsed: float, *, width: int = 80,
           unit: str = "", byte_units: bool = False, note: str = "") -> str:
    """One line of progress, at most ``width`` characters.

    ``done``/``total`` count ``unit`` (or bytes, shown as "1.5M", with ``byte_units``); the
    rate is the average since the start, and the ETA assumes it holds.
    """
    def amount(n: int) -> str:
        return format_size(n) if byte_units else str(n)

    rate = done / elapsed if elapsed > 0 else 0.0
    rate_text = (f"{format_size(int(rate))}/s" if byte_units
                 else f"{rate:.0f} {unit}/s".replace(" /", "/") if unit else f"{rate:.0f}/s")
    if total:
        fraction = min(max(done / total, 0.0), 1.0)
        counts = f"{amount(done)}/{amount(total)}"
        eta = f"ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
        tail = "  ".join(t for t in (counts, f"{fraction:4.0%}", rate_text, eta, note) if t)
        bar_width = width - len(label) - len(tail) - 5
        if bar_width >= 10:
            filled = int(bar_width * fraction)
            bar = "[" + "#" * filled + "." * (bar_width - filled) + "]"
            line = f"{label} {bar}  {tail}"
        else:
            line = f"{label}  {tail}"
    else:
        counts = f"{amount(done)} {unit}".rstrip()
        line = "  ".join(t for t in (label, counts, rate_text, _duration(elapsed), note) if t)
    return line[:width]


class Progress:
    """Progress of one job; use as a context manager or call ``close()``."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "",
                 byte_units: bool = False, stream: TextIO | None = None,
                 enabled: bool | None = None, min_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.byte_units = byte_units
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.min_interval = min_interval
        self._clock = clock
        self._start = clock()
        self._last_draw = float("-inf")
        self.done = 0
        self.note = ""
        self._closed = False

    def set_total(self, total: int | None) -> None:
        self.total = total

    def update(self, advance: int = 1, *, note: str | None = None) -> None:
        self.done += advance
        if note is not None:
            self.note = note
        now = self._clock()
        if self.enabled and now - self._last_draw >= self.min_interval:
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = max(shutil.get_terminal_size((80, 24)).columns - 1, 20)
        line = render(self.label, self.done, self.total, now - self._start, width=width,
                      unit=self.unit, byte_units=self.byte_units, note=self.note)
        self.stream.write("\r" + line.ljust(width))
        self.stream.flush()
        self._last_draw = now

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(self._clock())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
