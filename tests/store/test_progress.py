"""The CLI progress bar (mailkeep.progress)."""

from __future__ import annotations

import io

from mailkeep.progress import Progress, render


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_render_with_total_shows_counts_rate_and_eta() -> None:
    line = render("Importing", 250, 1000, 10.0, width=100, unit="msg")
    assert line.startswith("Importing [")
    assert "250/1000" in line and "25%" in line and "25 msg/s" in line
    assert "ETA 0:30" in line
    assert len(line) <= 100


def test_render_bytes_and_unknown_total() -> None:
    line = render("Importing", 3 * 1024 * 1024, 12 * 1024 * 1024, 2.0, byte_units=True)
    assert "3.0M/12.0M" in line and "1.5M/s" in line
    open_ended = render("Scanning", 42, None, 65.0, unit="msg")
    assert "42 msg" in open_ended and "1:05" in open_ended


def test_render_fits_narrow_terminals() -> None:
    assert len(render("Importing", 1, 10**9, 1.0, width=30)) <= 30


def test_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("Importing", 10, stream=stream) as progress:
        progress.update(5)
    assert stream.getvalue() == ""


def test_forced_output_is_throttled_and_ends_with_a_newline() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress("Exporting", 100, stream=stream, enabled=True, clock=clock,
                        min_interval=0.5)
    for _ in range(10):
        progress.update(1)  # same instant: drawn once
    assert stream.getvalue().count("\r") == 1
    clock.now = 1.0
    progress.update(90)
    progress.close()
    out = stream.getvalue()
    assert out.count("\r") == 3 and out.endswith("\n")
    assert "100/100" in out.rsplit("\r", 1)[1]
