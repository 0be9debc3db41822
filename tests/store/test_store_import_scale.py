"""Imports stream: memory stays flat however much mail there is.

A peak well below the size of the mail imported shows that nothing accumulates: measured
as resident memory for the large import, and with tracemalloc (which sees every Python
allocation of every thread) for the Maildir one.
"""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from mailkeep.store.maildir import import_maildir
from mailkeep.store.mbox import import_mbox

from .conftest import ACCOUNT

MB = 1024 * 1024


class PeakRSS:
    """Samples this process's resident memory in a thread (tracemalloc would double the
    run time of a 20,000-message import)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
async def test_mbox_import_of_20000_messages_keeps_memory_flat(store, tmp_path: Path) -> None:
    count, line = 20_000, b"x" * 76 + b"\n"
    source = tmp_path / "big.mbox"
    with source.open("wb") as f:
        for i in range(count):
            f.write(b"From gen@example.org Thu Jan  1 00:00:00 2015\n"
                    b"Subject: message %d\nX-Keywords: Work\n\n%s\n" % (i, line * 26))
    size = source.stat().st_size  # ~42 MB
    with PeakRSS() as memory:
        report = await import_mbox(store, ACCOUNT, source)
    assert (report.imported, report.failed) == (count, 0)
    # Holding the mail would grow the process by more than its size; streaming costs
    # SQLite's caches and a batch or two.
    assert memory.growth < 24 * MB < size / 1.5, \
        f"grew {memory.growth / MB:.1f} MB importing {size / MB:.1f} MB of mail"
    inbox = store.get_mailbox(ACCOUNT, "INBOX")
    assert inbox.messages == count and inbox.keywords == ("Work",)
    assert store.read_message(ACCOUNT, "INBOX", count).startswith(
        b"Subject: message %d\r\n\r\n" % (count - 1))


@pytest.mark.timeout(120)
async def test_maildir_import_streams(store, tmp_path: Path) -> None:
    count = 3000
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    template = tmp_path / "template"
    template.write_bytes(b"Subject: same\n\n" + (b"y" * 99 + b"\n") * 80)  # 8 KB
    for i in range(count):  # hard links: a large Maildir without writing 24 MB
        os.link(template, root / "cur" / f"{1_600_000_000 + i}.M{i}P1.gen:2,S")
    tracemalloc.start()
    try:
        report = await import_maildir(store, ACCOUNT, root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.imported == count
    data_size = count * template.stat().st_size
    # By design two batches may be in memory at once, one being stored while the next is
    # read (2 x 200 x 8 KB, about 3.3 MB), plus the folder listing: about 5.9 MB when the
    # store is the slower side, 4.1 MB when the reader is. Anything that accumulated would
    # grow with the 23 MB imported.
    assert peak < data_size / 3, f"peak {peak / MB:.1f} MB for {data_size / MB:.1f} MB of mail"
