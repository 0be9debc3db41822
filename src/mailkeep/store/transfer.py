"""Shared machinery of the Maildir and mbox importers and exporters.

Imports stream: the source is read one message at a time and committed in bounded batches
(``ImportBatcher``), with one batch being stored while the next is read, so memory stays
flat whatever the size of the source. Each message carries an import key
(source folder + Maildir unique name, or a content hash for mbox); keys are committed with
the messages, so a rerun or a resumed import skips what is already in.

Exports read from a ``Store.snapshot``: a consistent view, whose files stay on disk until
the export ends even if messages are expunged meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.progress import Progress
from mailkeep.store.api import ImportItem, InvalidFlag, Store, StoreLimits
from mailkeep.store.names import check_keyword

logger = logging.getLogger("mailkeep.store")

#: Messages per import commit: large enough to amortise fsyncs, small enough that a
#: delivering server never waits long for the write lock.
IMPORT_BATCH_MESSAGES = 200
#: Bytes of message data held in memory per batch.
IMPORT_BATCH_BYTES = 16 * 1024 * 1024
#: Errors kept verbatim in a report (the count goes on).
MAX_REPORTED_ERRORS = 20


@dataclass
class ImportReport:
    imported: int = 0
    #: Already imported by an earlier run (same key).
    skipped: int = 0
    #: Unreadable, too large or malformed; see ``errors``.
    failed: int = 0
    mailboxes: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    #: True if the run stopped at ``limit`` before the end of the source.
    incomplete: bool = False

    def error(self, text: str) -> None:
        self.failed += 1
        logger.info("import: %s", text)
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(text)


@dataclass
class ExportReport:
    exported: int = 0
    mailboxes: int = 0
    #: Messages that could not be written exactly (e.g. keywords Maildir cannot hold).
    warnings: list[str] = field(default_factory=list)


def prepare_export_dir(dest: str | Path) -> Path:
    """Create the export destination; refuse one that already holds anything."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; export into a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def lf_to_crlf(data: bytes) -> bytes:
    """LF (Maildir, mbox) to the CRLF form the store keeps; CRLF already there is kept."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def clean_keywords(keywords: Iterable[str], limits: StoreLimits | None = None) -> list[str]:
    """Keep only keywords the store accepts (foreign files carry all sorts of junk)."""
    out = []
    for keyword in keywords:
        try:
            out.append(check_keyword(keyword, limits))
        except InvalidFlag:
            logger.info("import: dropping keyword %r (not a valid IMAP keyword)", keyword)
    return out


class ImportBatcher:
    """Collects messages and commits them in batches; ``in_flight`` batches may be in the
    store while the next is read. More than one mostly adds contention: the files of a
    batch are written by several threads already."""

    def __init__(self, store: Store, account: str, report: ImportReport, *,
                 progress: Progress | None = None, limit: int | None = None,
                 batch_messages: int = IMPORT_BATCH_MESSAGES,
                 batch_bytes: int = IMPORT_BATCH_BYTES, in_flight: int = 1) -> None:
        self.store = store
        self.account = account
        self.report = report
        self.progress = progress
        self.limit = limit
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        self.max_in_flight = in_flight
        self._items: list[ImportItem] = []
        self._bytes = 0
        self._queued = 0
        self._in_flight: deque[asyncio.Future] = deque()

    @property
    def full(self) -> bool:
        """True once ``limit`` messages have been queued: the caller should stop."""
        return self.limit is not None and self._queued >= self.limit

    def already_imported(self, keys: list[str]) -> set[str]:
        return self.store.imported_keys(self.account, keys) if keys else set()

    async def add(self, item: ImportItem) -> None:
        self._items.append(item)
        self._bytes += len(item.source) if isinstance(item.source, bytes) else 0
        self._queued += 1
        if len(self._items) >= self.batch_messages or self._bytes >= self.batch_bytes:
            await self._send()

    async def _send(self) -> None:
        items, self._items, self._bytes = self._items, [], 0
        while len(self._in_flight) >= self.max_in_flight:
            await self._in_flight.popleft()
        if items:
            self._in_flight.append(asyncio.ensure_future(self._commit(items)))

    async def _commit(self, items: list[ImportItem]) -> None:
        uids = await self.store.import_messages(self.account, items)
        for item, uid in zip(items, uids, strict=True):
            if uid is None:
                self.report.skipped += 1
            else:
                self.report.imported += 1
                self.report.mailboxes.add(item.mailbox)
        if self.progress is not None:
            self.progress.update(0, note=f"{self.report.imported} imported")

    async def finish(self) -> None:
        """Commit what is left and wait for everything."""
        await self._send()
        while self._in_flight:
            await self._in_flight.popleft()
