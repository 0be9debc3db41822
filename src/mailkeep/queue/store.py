"""The durable outbound queue: what must still be sent, to whom, and how it went so far.

Layout under ``data_dir/queue/`` (docs/queue.md):

- ``queue.db``: SQLite in WAL mode with ``synchronous=FULL``; one row per message
  (envelope, DSN parameters of RFC 3461, retry state) and one per recipient.
- ``messages/<queue-id>``: the exact bytes to send, CRLF line ends.
- ``tmp/``: unused since message files are created in place; older versions wrote there,
  and ``recover`` still clears what they left.
- ``maildrop/``: the drop box of ``mailkeep sendmail`` (``maildrop.py``).

Durability (Postfix's rule: the queue file is on disk before anyone says 250): ``enqueue``
returns only once the message file is fsync'd, its directory entry is fsync'd and the rows
are committed. Writes go through the store's group committer
(``mailkeep.store.committer``), so N concurrent enqueues share one fsync of the messages
directory and one of the WAL; the committer applies adjacent enqueues and attempt
records with a few statements for all of them (``_apply_together``).

A message file is created as ``messages/<id>`` (``O_EXCL``: never replacing a queued
message's file) and locked at once with an exclusive ``flock``, kept until the rows
commit. That lets ``recover`` tell a crashed writer's leftovers (a file without a row that
nobody holds locked: removed, so nothing half-written is ever sent) from another
process's enqueue in progress (locked: left alone). Between the creation and the lock,
``recover`` in another process may take the new, empty file for a leftover and remove it;
the writer then finds it unlinked and creates it again (``_create_locked``). The server
and the CLI use the queue at the same time; SQLite's lock with a busy timeout orders their
writes.

Order of steps, so that a crash anywhere leaves nothing to send that was not acknowledged
and loses nothing that was: file durable → rows committed → ``enqueue`` returns; and on
the way out, rows deleted → file unlinked. A row never points at a missing file unless
something outside Mailkeep removed it; ``recover`` reports that loudly and drops the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailkeep.durable import copy_fd, fsync_dir, write_all
from mailkeep.logfmt import log
from mailkeep.queue.maildrop import ensure_maildrop
from mailkeep.sqlite_schema import connect, init_schema
from mailkeep.store.api import StoreError
from mailkeep.store.committer import (
    GroupCommitter,
    LoopCompletion,
    NotBulk,
    OpContext,
    Operation,
)

logger = logging.getLogger("mailkeep.queue")

SCHEMA_VERSION = 1
#: How long a writer waits for another process's write transaction (the CLI, the server).
BUSY_TIMEOUT_SECONDS = 60.0
#: Most operations merged into one transaction.
MAX_COMMIT_BATCH = 256
#: Largest message whose bytes an entry just queued keeps in memory (``QueueEntry.content``).
MEMORY_COPY_LIMIT = 64 * 1024
#: Tries to create a message file that a concurrent recover() keeps removing.
_CREATE_ATTEMPTS = 3
#: Parameters in one statement: the lowest limit SQLite has ever had (32766 since 3.32).
_MAX_PARAMETERS = 999
#: Threads that write message files for ``enqueue`` (each blocks on its own fsync), as many
#: as the store's writers: concurrent enqueues still share one commit, and fewer threads
#: waiting for the GIL cost less CPU (benchmarks/smtp_outbound.py, 20 sessions: 4 threads
#: delivered slightly more per second than 16, with less CPU per message).
ENQUEUE_WORKERS = 4
#: A file left in tmp/ by a dead writer is removed once it is this old (seconds): a file
#: created a moment ago may belong to a writer that has not locked it yet.
TMP_GRACE_SECONDS = 10.0
#: Longest queue id accepted (it is a file name).
MAX_QUEUE_ID = 64
#: Shortest id prefix the administration commands accept (as postsuper does with ids).
MIN_ID_PREFIX = 6
#: Held shared by a backup (mailkeep.backup) while it copies the files its copy of queue.db
#: names; a message file is removed only with this lock held exclusively, so none of them
#: can go before it is copied. How often a waiting unlinker looks again (seconds).
PIN_FILE = "pin.lock"
_PIN_POLL_SECONDS = 0.1

FILE_MODE = 0o600
DIR_MODE = 0o700
#: The queue directory is traversable by local users (they must reach maildrop/) but not
#: listable.
QUEUE_DIR_MODE = 0o711

_QUEUE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

STATUSES = ("pending", "delivered", "failed")
KINDS = ("normal", "bounce", "delay")

SCHEMA = """
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    envid TEXT,
    ret TEXT,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    body_type TEXT,
    requiretls INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL DEFAULT 'normal',
    account TEXT,
    dkim_selectors TEXT NOT NULL DEFAULT '[]',
    hold INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    warned INTEGER NOT NULL DEFAULT 0
);
-- due() reads messages not held with next_attempt <= now, next_due_time() their minimum.
CREATE INDEX messages_due ON messages(next_attempt) WHERE hold = 0;
CREATE INDEX messages_created ON messages(created, id);
CREATE TABLE recipients (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    address TEXT NOT NULL,
    orcpt_type TEXT,
    orcpt_address TEXT,
    notify TEXT,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed')),
    last_code INTEGER,
    last_text TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    remote_mta TEXT,
    PRIMARY KEY (message_id, seq)
) WITHOUT ROWID;
"""


# -- errors ------------------------------------------------------------------------------


class QueueError(Exception):
    """Base of the errors the queue raises; the message is for people."""


class QueueIOError(QueueError):
    """The disk or the database failed (full, read-only, I/O error). Temporary: an SMTP
    server answers 451 4.3.0, the CLI exits with EX_TEMPFAIL."""


class DuplicateQueueId(QueueError):
    """A message with this queue id is already queued."""


# -- values that cross the API -----------------------------------------------------------


@dataclass(frozen=True)
class QueuedRecipient:
    address: str
    #: (addr-type, address), xtext-decoded (RFC 3461 §4.2).
    orcpt: tuple[str, str] | None = None
    #: ("SUCCESS", "FAILURE", "DELAY") in any combination, or ("NEVER",); None: not given.
    notify: tuple[str, ...] | None = None


@dataclass
class NewMessage:
    queue_id: str                 # given by the caller (delivery.pipeline.new_message_id())
    sender: str                   # "" is the null sender
    recipients: list[QueuedRecipient]
    prefix: bytes                 # header lines written before the source
    source: bytes | Path
    source_offset: int = 0
    envid: str | None = None
    ret: str | None = None        # "FULL" | "HDRS"
    smtputf8: bool = False
    body_type: str | None = None  # "7BIT" | "8BITMIME" | "BINARYMIME"
    requiretls: bool = False
    kind: str = "normal"          # "normal" | "bounce" | "delay" (DSNs never bounce)
    account: str | None = None    # submitting account (logs, rate limits)
    dkim_selectors: tuple[str, ...] = ()   # "domain:selector" used to sign it
    hold: bool = False
    next_attempt: float = 0.0     # unix time; 0 = now


@dataclass
class RecipientState:
    address: str
    orcpt: tuple[str, str] | None
    notify: tuple[str, ...] | None
    status: str                   # "pending" | "delivered" | "failed"
    last_code: int | None
    last_text: str | None
    attempts: int
    #: Host that gave the last reply ("mx.example.net"), for DSN Remote-MTA.
    remote_mta: str | None = None


@dataclass
class QueueEntry:
    queue_id: str
    sender: str
    created: float
    size: int
    recipients: list[RecipientState]
    envid: str | None
    ret: str | None
    smtputf8: bool
    body_type: str | None
    requiretls: bool
    kind: str
    account: str | None
    dkim_selectors: tuple[str, ...]
    hold: bool
    attempts: int
    next_attempt: float
    last_error: str | None
    warned: bool
    #: The message file's bytes, only on an entry ``enqueue`` just returned for a message
    #: of at most ``MEMORY_COPY_LIMIT`` bytes: its first attempt need not read the file.
    content: bytes | None = field(default=None, repr=False, compare=False)

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == "pending"]


@dataclass(frozen=True)
class RecipientOutcome:
    address: str
    status: str        # "delivered" | "failed" | "deferred"
    code: int | None   # SMTP reply code (None: no reply, e.g. DNS or connect failure)
    text: str          # reply text or error description (shown in mailq and DSNs)
    remote_mta: str | None = None   # host that replied, for DSN Remote-MTA


def apply_outcomes(entry: QueueEntry, outcomes: Sequence[RecipientOutcome]) -> QueueEntry:
    """The entry as ``record_attempt`` will leave it: pure, so that a caller can see which
    recipients this attempt finishes (and build their DSNs) before recording it.

    Each outcome updates the first pending recipient of that address not yet updated by
    this call; an outcome for no pending recipient is ignored.
    """
    recipients = [replace(r) for r in entry.recipients]
    taken: set[int] = set()
    for outcome in outcomes:
        if outcome.status not in ("delivered", "failed", "deferred"):
            raise ValueError(f"unknown recipient outcome {outcome.status!r}")
        for index, rcpt in enumerate(recipients):
            if index in taken or rcpt.status != "pending" or rcpt.address != outcome.address:
                continue
            taken.add(index)
            rcpt.status = "pending" if outcome.status == "deferred" else outcome.status
            rcpt.last_code = outcome.code
            rcpt.last_text = outcome.text
            rcpt.attempts += 1
            rcpt.remote_mta = outcome.remote_mta
            break
    return replace(entry, recipients=recipients)


def check_queue_id(queue_id: str) -> None:
    """Queue ids are file names: letters, digits, ".", "_", "-", starting alphanumeric."""
    if not isinstance(queue_id, str) or not 0 < len(queue_id) <= MAX_QUEUE_ID \
            or not _QUEUE_ID.match(queue_id):
        raise ValueError(f"invalid queue id {queue_id!r}")


# -- the store ---------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Message files written and locked, waiting for their rows to commit."""

    messages: list[NewMessage]
    sizes: list[int]
    paths: list[Path]
    fds: list[int] = field(default_factory=list)

    def release(self, committed: bool | None) -> None:
        """After the commit: keep the files (True), remove them (False: certainly not
        committed), or leave them for ``recover`` to judge (None: unknown)."""
        if committed is False:
            for path in self.paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        for fd in self.fds:
            os.close(fd)  # releases the flock: recover may now judge the file
        self.fds.clear()


@dataclass
class _AttemptRecord:
    """One ``record_attempt`` on its way to the committer."""

    queue_id: str
    outcomes: list[RecipientOutcome]
    next_attempt: float | None
    error: str | None
    notices: _Prepared | None
    #: Set in the transaction when no recipient stays pending: the file goes after commit.
    finished: bool = False

    def update(self, entry: QueueEntry) -> QueueEntry:
        updated = apply_outcomes(entry, self.outcomes)
        updated.attempts += 1
        if self.next_attempt is not None:
            updated.next_attempt = self.next_attempt
        updated.last_error = self.error
        return updated


class _WriterThreads:
    """The threads that write message files (each blocks on its own fsync, so that
    concurrent enqueues share the disk's flushes). A job goes through a plain queue, with
    no future: it reports its outcome itself (a ``LoopCompletion``), which saves the event
    loop the bookkeeping of an executor for every message."""

    def __init__(self, count: int) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, daemon=True,
                                          name=f"mailkeep-queue-write-{n}")
                         for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        self._jobs.put(functools.partial(job, *args) if args else job)

    def close(self) -> None:
        """Finish the jobs queued, then end the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException:  # jobs report their own errors: this is a bug
                logger.exception("queue writer job failed")


class QueueStore:
    """The outbound queue of one data directory. Thread-safe; several processes may open
    the same queue (the server and the CLI)."""

    def __init__(self, queue_dir: Path, *, fsync: bool = True) -> None:
        self.queue_dir = Path(queue_dir)
        self.messages_dir = self.queue_dir / "messages"
        self.tmp_dir = self.queue_dir / "tmp"
        self.db_path = self.queue_dir / "queue.db"
        self.pin_path = self.queue_dir / PIN_FILE
        self._fsync = fsync
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writers: _WriterThreads | None = None
        self._writers_lock = threading.Lock()
        self._unlink_queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._unlinker: threading.Thread | None = None
        self._unlink_lock = threading.Lock()
        try:
            self.queue_dir.mkdir(mode=QUEUE_DIR_MODE, parents=True, exist_ok=True)
            for path in (self.messages_dir, self.tmp_dir):
                path.mkdir(mode=DIR_MODE, exist_ok=True)
            ensure_maildrop(self.queue_dir / "maildrop")
            self._writer = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise QueueIOError(f"cannot open the queue in {self.queue_dir}: {exc}") from exc
        try:
            self._init_schema()
            self.pin_path.touch(mode=FILE_MODE, exist_ok=True)
            self._give_to_owner()
            self.recover()
        except (OSError, sqlite3.Error) as exc:
            self._writer.close()
            raise QueueIOError(f"cannot open the queue in {self.queue_dir}: {exc}") from exc
        except BaseException:
            self._writer.close()
            raise
        # One bound method, so that the committer sees adjacent queue operations as
        # alike (Operation.bulk) and applies them together.
        self._bulk = self._apply_together
        self._committer = GroupCommitter(self._writer, max_batch=MAX_COMMIT_BATCH,
                                         publish=lambda events: None,
                                         garbage_made=lambda: None)

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, fsync: bool = True) -> QueueStore:
        return cls(Path(data_dir) / "queue", fsync=fsync)

    def close(self) -> None:
        """Commit what is pending, then close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._committer.stop()
        with self._writers_lock:
            writers, self._writers = self._writers, None
        if writers is not None:
            writers.close()
        with self._unlink_lock:
            unlinker, self._unlinker = self._unlinker, None
        if unlinker is not None:
            self._unlink_queue.put(None)
            unlinker.join()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer.close()

    def __enter__(self) -> QueueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections -------------------------------------------------------------------

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        # Durable: an enqueue that returned survives power loss, not only a crash.
        return connect(self.db_path, BUSY_TIMEOUT_SECONDS, readonly=readonly,
                       durable=self._fsync)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise QueueError("the queue is closed")
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _init_schema(self) -> None:
        with contextlib.suppress(OSError):
            self.db_path.chmod(FILE_MODE)
        init_schema(self._writer, SCHEMA, SCHEMA_VERSION, what="queue", error=QueueError)

    def _give_to_owner(self) -> None:
        """Run as root (an administrator's CLI command), hand what this created to the
        owner of the data directory, so that the server, running as that user, can still
        write its queue."""
        if os.geteuid() != 0:
            return
        owner = self.queue_dir.parent.stat()
        if owner.st_uid == 0:
            return
        for path in (self.queue_dir, self.messages_dir, self.tmp_dir,
                     self.queue_dir / "maildrop", self.db_path, self.pin_path,
                     self.db_path.with_name("queue.db-wal"),
                     self.db_path.with_name("queue.db-shm")):
            with contextlib.suppress(FileNotFoundError):
                info = path.lstat()
                if info.st_uid == 0:
                    os.lchown(path, owner.st_uid, owner.st_gid)

    # -- recovery ----------------------------------------------------------------------

    def recover(self) -> None:
        """Clean up after a crash between the steps of a write (run at open).

        - a file in messages/ without a row, not locked by a live writer: an enqueue that
          never committed (or a deletion that stopped after the rows): removed, never sent;
        - a file in tmp/ nobody holds: a write cut short: removed;
        - a row without its file (only possible if something else removed it): the message
          is lost; logged as an error with its envelope, and the row dropped.

        Safe to call again while the queue is in use (its own connection; SQLite orders its
        one write with the committer's).
        """
        conn = self._connect()
        pin = None
        try:
            pin = _pin_exclusive(self.pin_path, keep_trying=lambda: False)
            self._recover(conn, pinned=pin is None)
        finally:
            if pin is not None:
                os.close(pin)
            conn.close()

    def _recover(self, conn: sqlite3.Connection, *, pinned: bool) -> None:

        def has_row(queue_id: str) -> bool:
            return conn.execute("SELECT 1 FROM messages WHERE id = ?",
                                (queue_id,)).fetchone() is not None

        removed = 0
        touched = False
        with os.scandir(self.messages_dir) as entries:
            # While a backup reads (pinned), a file whose row went after its copy of the
            # database was made is still to be copied: removed at a later recover().
            names = [] if pinned else [e.name for e in entries]
        for name in names:
            if has_row(name):
                continue
            path = self.messages_dir / name
            if _remove_if_abandoned(path, lambda n=name: has_row(n)):
                removed += 1
                touched = True
        if touched and self._fsync:
            fsync_dir(self.messages_dir)
        if removed:
            log(logger, "recovery: removed message files that were never queued",
                logging.WARNING, files=removed)
        stale = time.time() - TMP_GRACE_SECONDS
        with os.scandir(self.tmp_dir) as entries:
            tmp_names = [e.name for e in entries]
        for name in tmp_names:
            path = self.tmp_dir / name
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_mtime < stale:
                    _remove_if_abandoned(path, lambda: False)
        # Rows first, then files: a row's file is linked before the row commits, so a row
        # seen here has its file by the time the directory is listed, unless it was
        # finished or deleted meanwhile, which the check under the write lock rules out.
        ids = [row[0] for row in conn.execute("SELECT id FROM messages")]
        files = set(os.listdir(self.messages_dir))
        candidates = [queue_id for queue_id in ids if queue_id not in files]
        if not candidates:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for queue_id in candidates:
                row = conn.execute("SELECT sender, created, size FROM messages WHERE id = ?",
                                   (queue_id,)).fetchone()
                if row is None or (self.messages_dir / queue_id).exists():
                    continue
                sender, created, size = row
                rcpts = [r[0] for r in conn.execute(
                    "SELECT address FROM recipients WHERE message_id = ? ORDER BY seq",
                    (queue_id,))]
                log(logger, "recovery: message file missing, message dropped",
                    logging.ERROR, id=queue_id, from_=f"<{sender}>", to=",".join(rcpts),
                    size=size, arrived=_iso(created))
                conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- writes ------------------------------------------------------------------------

    def _prepare(self, messages: Sequence[NewMessage]) -> _Prepared:
        """Create, lock, write and make durable each message file in messages/.

        The file is created under its final name rather than written in tmp/ and linked:
        a link after the fsync would dirty the directory again, and its fsync (shared by
        the batch, in the committer) would then cost a journal commit of its own.
        """
        prepared = _Prepared(list(messages), [], [])
        try:
            for message in messages:
                _check_new_message(message)
                path = self.messages_dir / message.queue_id
                # A message in memory goes out in one writev(): opened with O_DSYNC, that
                # write returns only once the data, and what is needed to read it back,
                # is on stable storage (as fdatasync), saving a system call (each one
                # hands the GIL to another thread, then waits to get it back). A spool
                # file is copied in chunks, then fsync'd once.
                sync_writes = self._fsync and isinstance(message.source,
                                                         bytes | bytearray | memoryview)
                fd = self._create_locked(path, message.queue_id, sync_writes=sync_writes)
                prepared.fds.append(fd)
                prepared.paths.append(path)
                size = _write_message(fd, message.prefix, message.source,
                                      message.source_offset)
                if self._fsync and not sync_writes:
                    os.fsync(fd)
                prepared.sizes.append(size)
        except BaseException:
            prepared.release(False)
            raise
        return prepared

    def _create_locked(self, path: Path, queue_id: str, *, sync_writes: bool) -> int:
        """A new, empty file at ``path``, exclusively locked; never replaces a file.
        ``sync_writes``: opened with O_DSYNC."""
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
                 | (os.O_DSYNC if sync_writes else 0))
        for _ in range(_CREATE_ATTEMPTS):
            try:
                fd = os.open(path, flags, FILE_MODE)
            except FileExistsError:
                raise DuplicateQueueId(f"queue id {queue_id} is already in use") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # recover() in another process (the CLI) may have found the file between
                # its creation and the lock, unlocked and without a row, and removed it as
                # a crashed writer's leftover: then the name is free again, try anew.
                if os.fstat(fd).st_nlink:
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise QueueIOError(f"cannot create the queue file {path}: removed while created")

    def _insert(self, conn: sqlite3.Connection, prepared: Sequence[_Prepared],
                now: float) -> None:
        """The rows of every message in ``prepared``, with one statement per table.

        One multi-row INSERT rather than one per row (or ``executemany``, which steps once
        per row): sqlite3 lets go of the GIL around every step, and the commit thread
        then waits for the busy event loop to hand it back, up to a switch interval each
        time. Fewer steps per batch is what keeps the committer ahead of the load.
        """
        message_rows: list[tuple[Any, ...]] = []
        recipient_rows: list[tuple[Any, ...]] = []
        for item in prepared:
            for message, size in zip(item.messages, item.sizes, strict=True):
                message_rows.append(
                    (message.queue_id, message.sender, now, size, message.envid, message.ret,
                     int(message.smtputf8), message.body_type, int(message.requiretls),
                     message.kind, message.account,
                     json.dumps(list(message.dkim_selectors)), int(message.hold),
                     message.next_attempt))
                recipient_rows.extend(
                    (message.queue_id, seq, r.address, r.orcpt[0] if r.orcpt else None,
                     r.orcpt[1] if r.orcpt else None,
                     ",".join(r.notify) if r.notify is not None else None)
                    for seq, r in enumerate(message.recipients))
        _insert_rows(conn, "messages (id, sender, created, size, envid, ret, smtputf8,"
                     " body_type, requiretls, kind, account, dkim_selectors, hold,"
                     " next_attempt)", message_rows)
        _insert_rows(conn, "recipients (message_id, seq, address, orcpt_type,"
                     " orcpt_address, notify)", recipient_rows)

    def _submit(self, apply: Callable[[OpContext], Any], *, prepared: _Prepared | None = None,
                extra_after: Callable[[bool | None], None] | None = None,
                loop: asyncio.AbstractEventLoop | None = None,
                completion: LoopCompletion | None = None,
                payload: _Prepared | _AttemptRecord | None = None) -> Any:
        """Queue an operation on the group committer.

        - with ``loop``: returns at once an asyncio future of that loop (a helper thread
          commits);
        - with ``completion`` (from a worker thread, for a coroutine waiting on that
          completion's future): commits now if no other thread is committing, else
          leaves the operation to the one that is; returns without waiting;
        - with neither: commits (or waits for the commit) and returns the result.

        With ``payload``, the committer may apply the operation together with its
        neighbours (``_apply_together``).
        """

        def after(committed: bool | None) -> None:
            if prepared is not None:
                prepared.release(committed)
            if extra_after is not None:
                extra_after(committed)

        dirs = frozenset({str(self.messages_dir)}) if prepared and self._fsync else frozenset()
        op = Operation(apply, dirs=dirs, after=after,
                       bulk=self._bulk if payload is not None else None, payload=payload)
        if completion is not None:
            op.future = completion
        elif loop is not None:
            op.future = LoopCompletion(loop)
        try:
            self._committer.submit(op, lead=loop is None)
        except StoreError as exc:
            after(False)
            raise QueueError(str(exc)) from None
        if loop is not None:
            return op.future.future  # type: ignore[attr-defined]
        if completion is not None:
            return None
        try:
            return op.future.result()  # type: ignore[attr-defined]
        except StoreError as exc:
            raise QueueIOError(str(exc)) from None

    async def _await(self, future: asyncio.Future[Any]) -> Any:
        try:
            return await future
        except StoreError as exc:
            raise QueueIOError(str(exc)) from None

    def enqueue_sync(self, messages: list[NewMessage]) -> list[QueueEntry]:
        """Queue ``messages`` (all or none); durable when this returns. Blocks.

        Returns the entries as queued. Raises ValueError for a malformed message,
        DuplicateQueueId, QueueIOError.
        """
        if not messages:
            return []
        prepared = self._prepare_io(messages)
        now, sizes = self._submit(self._inserter(prepared), prepared=prepared,
                                  payload=prepared)
        return self._queued(messages, sizes, now)

    async def enqueue(self, messages: list[NewMessage]) -> list[QueueEntry]:
        """``enqueue_sync`` without blocking the event loop.

        A worker thread writes the files and hands the rows to the group committer
        (committing them itself if no other thread is); the commit wakes this coroutine,
        once per batch for all the enqueues it carried rather than once per message.
        """
        if not messages:
            return []
        completion = LoopCompletion(asyncio.get_running_loop())
        self._pool().submit(self._write_and_submit, messages, completion)
        now, sizes = await self._await(completion.future)
        return self._queued(messages, sizes, now)

    def _write_and_submit(self, messages: list[NewMessage],
                          completion: LoopCompletion) -> None:
        """In a worker thread: the files, then the rows; the outcome goes to
        ``completion``."""
        try:
            prepared = self._prepare_io(messages)
            self._submit(self._inserter(prepared), prepared=prepared, payload=prepared,
                         completion=completion)
        except BaseException as exc:  # the coroutine waiting on completion reports it
            completion.set_exception(exc)

    def _inserter(self, prepared: _Prepared) -> Callable[[OpContext], Any]:
        def apply(ctx: OpContext) -> tuple[float, list[int]]:
            self._insert(ctx.conn, [prepared], ctx.now)
            return ctx.now, prepared.sizes
        return apply

    def _queued(self, messages: list[NewMessage], sizes: list[int],
                now: float) -> list[QueueEntry]:
        """Log what was queued; the entries as the rows just committed say."""
        entries = []
        for message, size in zip(messages, sizes, strict=True):
            log(logger, "queued", id=message.queue_id, from_=f"<{message.sender}>",
                nrcpt=len(message.recipients), size=size, kind=message.kind,
                account=message.account, hold=message.hold or None)
            entries.append(QueueEntry(
                queue_id=message.queue_id, sender=message.sender, created=now, size=size,
                recipients=[RecipientState(r.address, r.orcpt, r.notify, "pending", None,
                                           None, 0) for r in message.recipients],
                envid=message.envid, ret=message.ret, smtputf8=message.smtputf8,
                body_type=message.body_type, requiretls=message.requiretls,
                kind=message.kind, account=message.account,
                dkim_selectors=tuple(message.dkim_selectors), hold=message.hold, attempts=0,
                next_attempt=message.next_attempt, last_error=None, warned=False,
                content=_memory_copy(message, size)))
        return entries

    def _pool(self) -> _WriterThreads:
        with self._writers_lock:
            if self._closed:
                raise QueueError("the queue is closed")
            if self._writers is None:
                self._writers = _WriterThreads(ENQUEUE_WORKERS)
            return self._writers

    async def _prepare_in_writer(self, messages: list[NewMessage]) -> _Prepared:
        """``_prepare_io`` in a writer thread (notices queued with an attempt record)."""
        completion = LoopCompletion(asyncio.get_running_loop())

        def job() -> None:
            try:
                completion.set_result(self._prepare_io(messages))
            except BaseException as exc:
                completion.set_exception(exc)

        self._pool().submit(job)
        return await completion.future

    async def record_attempt(self, queue_id: str, outcomes: list[RecipientOutcome],
                             next_attempt: float | None, error: str | None = None, *,
                             notices: Sequence[NewMessage] = ()) -> QueueEntry | None:
        """Record one delivery attempt in one transaction: each recipient's outcome
        (``apply_outcomes``), the message's attempt count, ``next_attempt`` (None: unchanged)
        and ``last_error``.

        When no recipient stays pending, the entry is removed and its file unlinked after
        the commit; the final entry is returned. ``notices`` (DSNs built beforehand from
        ``apply_outcomes``, see ``dsn.notices_for_attempt``) are queued in the same
        transaction, so a crash can never lose a bounce nor send one twice. Returns None,
        and queues no notice, if the entry was deleted meanwhile.
        """
        loop = asyncio.get_running_loop()
        prepared = None
        if notices:
            prepared = await self._prepare_in_writer(list(notices))
        record = _AttemptRecord(queue_id, list(outcomes), next_attempt, error, prepared)

        def apply(ctx: OpContext) -> QueueEntry | None:
            record.finished = False
            entry = _load_entry(ctx.conn, queue_id)
            if entry is None:
                if prepared is not None:
                    raise _Vanished()  # rolls the notices back
                return None
            updated = record.update(entry)
            if not updated.pending():
                ctx.conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
                record.finished = True
            else:
                _store_progress(ctx.conn, entry, updated)
            if prepared is not None:
                self._insert(ctx.conn, [prepared], ctx.now)
            return updated

        def after(committed: bool | None) -> None:
            if committed and record.finished:
                self._unlink_message(queue_id)

        future = self._submit(apply, prepared=prepared, extra_after=after, loop=loop,
                              payload=record)
        try:
            entry = await self._await(future)
        except _Vanished:
            return None
        if entry is not None:
            log(logger, "attempt recorded", logging.DEBUG, id=queue_id, attempts=entry.attempts,
                pending=len(entry.pending()), finished=not entry.pending(),
                notices=len(notices) or None)
        return entry

    def _apply_together(self, ctx: OpContext, ops: list[Operation]) -> list[Any]:
        """Enqueues and attempt records that the committer found side by side, applied
        with a few statements for all of them (``Operation.bulk``): one INSERT per table,
        one read of the entries, one DELETE of the finished ones. The outcome is the same
        as applying them one by one; what this does not handle (an attempt on an entry
        deleted meanwhile that carries notices, two records for one entry) it leaves to
        the one-by-one path (``NotBulk``)."""
        inserts: list[_Prepared] = []
        records: list[_AttemptRecord] = []
        for op in ops:
            if isinstance(op.payload, _AttemptRecord):
                records.append(op.payload)
            else:
                inserts.append(op.payload)
        ids = [record.queue_id for record in records]
        if len(set(ids)) != len(ids):
            raise NotBulk()
        entries = _load_entries(ctx.conn, ids)
        values: dict[int, QueueEntry | None] = {}
        finished: list[_AttemptRecord] = []
        for record in records:
            record.finished = False
            entry = entries.get(record.queue_id)
            if entry is None:
                if record.notices is not None:
                    raise NotBulk()  # its notices must be refused (_Vanished)
                values[id(record)] = None
                continue
            updated = record.update(entry)
            if updated.pending():
                _store_progress(ctx.conn, entry, updated)
            else:
                finished.append(record)
            if record.notices is not None:
                inserts.append(record.notices)
            values[id(record)] = updated
        done_ids = [record.queue_id for record in finished]
        for start in range(0, len(done_ids), _MAX_PARAMETERS):
            chunk = done_ids[start:start + _MAX_PARAMETERS]
            ctx.conn.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})",
                             chunk)
        if inserts:
            self._insert(ctx.conn, inserts, ctx.now)
        for record in finished:
            record.finished = True
        return [values[id(op.payload)] if isinstance(op.payload, _AttemptRecord)
                else (ctx.now, op.payload.sizes) for op in ops]

    def _prepare_io(self, messages: list[NewMessage]) -> _Prepared:
        try:
            return self._prepare(messages)
        except OSError as exc:
            raise QueueIOError(f"cannot write the queue file: {exc}") from exc

    async def mark_warned(self, queue_id: str, *, notices: Sequence[NewMessage] = ()) -> None:
        """Remember that the delay warning went out; ``notices`` (the warning itself) are
        queued in the same transaction, and not at all if the entry is gone."""
        loop = asyncio.get_running_loop()
        prepared = None
        if notices:
            prepared = await self._prepare_in_writer(list(notices))

        def apply(ctx: OpContext) -> None:
            changed = ctx.conn.execute("UPDATE messages SET warned = 1 WHERE id = ?",
                                       (queue_id,)).rowcount
            if not changed and prepared is not None:
                raise _Vanished()
            if prepared is not None:
                self._insert(ctx.conn, [prepared], ctx.now)

        with contextlib.suppress(_Vanished):
            await self._await(self._submit(apply, prepared=prepared, loop=loop))

    def _unlink_message(self, queue_id: str) -> None:
        """Remove a finished message's file, later, in the unlinker thread.

        Unlinking costs over a millisecond on some file systems (ext4 with online
        discard); done in the commit thread it would cap deliveries at a few hundred per
        second. The row is already gone, so a file left by a crash is removed by recover().
        """
        with self._unlink_lock:
            if self._unlinker is None:
                self._unlinker = threading.Thread(target=self._unlink_loop, daemon=True,
                                                  name="mailkeep-queue-unlink")
                self._unlinker.start()
        self._unlink_queue.put(queue_id)

    def _unlink_loop(self) -> None:
        while True:
            # Everything waiting is removed under one hold of the pin: a burst of finished
            # deliveries costs one lock, not three system calls per message.
            batch = [self._unlink_queue.get()]
            while batch[-1] is not None:
                try:
                    batch.append(self._unlink_queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            ids = [queue_id for queue_id in batch if queue_id is not None]
            if ids:
                self._unlink_now(ids)
            if stop:
                return

    def _unlink_now(self, queue_ids: list[str]) -> None:
        # Waits while a backup copies the queue; when closing, the files are left to the
        # next recover() (their rows are gone).
        try:
            pin = _pin_exclusive(self.pin_path, keep_trying=lambda: not self._closed)
        except OSError as exc:
            log(logger, "cannot remove finished message files", logging.WARNING,
                ids=",".join(queue_ids), error=str(exc))
            return
        if pin is None:
            return
        try:
            for queue_id in queue_ids:
                try:
                    os.unlink(self.messages_dir / queue_id)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    # The row is gone, so the next recover() removes the file.
                    log(logger, "cannot remove a finished message file", logging.WARNING,
                        id=queue_id, error=str(exc))
        finally:
            os.close(pin)

    # -- administration ----------------------------------------------------------------

    def hold(self, ids: list[str] | None) -> int:
        """Put messages on hold (never due until released); None: every message.
        Returns how many changed."""
        return self._set_flag("hold = 1", "hold = 0", ids, "held")

    def release(self, ids: list[str] | None) -> int:
        """Release held messages; they are due at once. Returns how many changed."""
        return self._set_flag("hold = 0, next_attempt = :now", "hold = 1", ids, "released")

    def retry(self, ids: list[str] | None) -> int:
        """Make messages due now (``flush`` is ``retry(None)``); held ones stay held.
        Returns how many changed."""
        return self._set_flag("next_attempt = :now", "hold = 0", ids, "retry requested")

    def _set_flag(self, assignment: str, condition: str, ids: list[str] | None,
                  event: str) -> int:
        id_list = None if ids is None else list(dict.fromkeys(ids))

        def apply(ctx: OpContext) -> list[str]:
            if id_list is None:
                rows = ctx.conn.execute(
                    f"UPDATE messages SET {assignment} WHERE {condition} RETURNING id",
                    {"now": ctx.now}).fetchall()
                return [row[0] for row in rows]
            changed = []
            for queue_id in id_list:
                row = ctx.conn.execute(
                    f"UPDATE messages SET {assignment} WHERE {condition} AND id = :id"
                    " RETURNING id", {"now": ctx.now, "id": queue_id}).fetchone()
                if row is not None:
                    changed.append(row[0])
            return changed

        changed = self._run(apply)
        for queue_id in changed:
            log(logger, event, id=queue_id)
        return len(changed)

    def delete(self, ids: list[str] | None) -> int:
        """Remove messages and their files without notifying anyone (postsuper -d).
        Returns how many were removed."""
        id_list = None if ids is None else list(dict.fromkeys(ids))

        def apply(ctx: OpContext) -> list[str]:
            if id_list is None:
                return [row[0] for row in ctx.conn.execute(
                    "DELETE FROM messages RETURNING id").fetchall()]
            removed = []
            for queue_id in id_list:
                row = ctx.conn.execute("DELETE FROM messages WHERE id = ? RETURNING id",
                                       (queue_id,)).fetchone()
                if row is not None:
                    removed.append(row[0])
            return removed

        removed = self._run(apply)
        # Rows first, then files: a crash in between leaves files without rows, which
        # recover() removes; never a row whose file is gone.
        for queue_id in removed:
            self._unlink_message(queue_id)
            log(logger, "deleted by the administrator", id=queue_id)
        return len(removed)

    def _run(self, apply: Callable[[OpContext], Any]) -> Any:
        if self._closed:
            raise QueueError("the queue is closed")
        return self._submit(apply)

    # -- reads -------------------------------------------------------------------------

    def due(self, now: float, limit: int = 1000) -> list[QueueEntry]:
        """Entries to attempt now: not held, with pending recipients, ``next_attempt <=
        now``; oldest first."""
        conn = self._reader()
        rows = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE hold = 0 AND next_attempt <= ?"
            " AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
            " AND r.status = 'pending') ORDER BY created, id LIMIT ?",
            (now, limit)).fetchall()
        return _entries(conn, rows)

    def next_due_time(self) -> float | None:
        """When the next not-held message becomes due (may be in the past); None if none."""
        row = self._reader().execute(
            "SELECT MIN(next_attempt) FROM messages WHERE hold = 0").fetchone()
        return None if row[0] is None else float(row[0])

    def get(self, queue_id: str) -> QueueEntry | None:
        conn = self._reader()
        return _load_entry(conn, queue_id)

    def message_path(self, queue_id: str) -> Path:
        check_queue_id(queue_id)
        return self.messages_dir / queue_id

    def list(self) -> list[QueueEntry]:
        """Every entry, oldest first (for mailq)."""
        conn = self._reader()
        rows = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m ORDER BY created, id").fetchall()
        return _entries(conn, rows)

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def state_summary(self, now: float) -> dict[str, tuple[int, float | None]]:
        """Messages per state, with the creation time of the oldest (for the metrics):
        "held"; "deferred", waiting for a retry after ``now``; "active", due now or being
        delivered. States without messages are left out."""
        rows = self._reader().execute(
            "SELECT CASE WHEN hold THEN 'held' WHEN next_attempt > ? THEN 'deferred'"
            " ELSE 'active' END AS state, COUNT(*), MIN(created) FROM messages"
            " GROUP BY state", (now,)).fetchall()
        return {str(state): (int(count), oldest) for state, count, oldest in rows}

    def instrument(self, metrics: Any) -> None:
        """Time the queue's group commits in ``metrics`` (mailkeep.metrics.ServerMetrics)."""
        self._committer.observe = metrics.commit_observer("queue")

    def selectors_in_use(self) -> set[str]:
        """"domain:selector" of every DKIM key that signed a queued message: a rotated-out
        selector stays published until this no longer names it."""
        out: set[str] = set()
        for (text,) in self._reader().execute(
                "SELECT DISTINCT dkim_selectors FROM messages WHERE dkim_selectors != '[]'"):
            out.update(json.loads(text))
        return out

    def match_ids(self, patterns: Iterable[str]) -> dict[str, list[str]]:
        """For each pattern, the queue ids it names: the id itself, or every id it is a
        prefix of when it has at least ``MIN_ID_PREFIX`` characters (case-insensitive,
        as ids are typed from mailq output). An empty list: no such message."""
        conn = self._reader()
        out: dict[str, list[str]] = {}
        for pattern in patterns:
            exact = conn.execute("SELECT id FROM messages WHERE id = ?",
                                 (pattern,)).fetchone()
            if exact is not None:
                out[pattern] = [exact[0]]
                continue
            if len(pattern) < MIN_ID_PREFIX or not _QUEUE_ID.match(pattern):
                out[pattern] = []
                continue
            escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            out[pattern] = [row[0] for row in conn.execute(
                "SELECT id FROM messages WHERE id LIKE ? ESCAPE '\\' ORDER BY created, id",
                (escaped + "%",))]
        return out


class _Vanished(ValueError):
    """The entry was deleted before the operation ran (its notices are dropped). A
    ValueError so that the committer treats it as an expected refusal, not a failure."""


_MESSAGE_COLUMNS = ("id, sender, created, size, envid, ret, smtputf8, body_type, requiretls,"
                    " kind, account, dkim_selectors, hold, attempts, next_attempt,"
                    " last_error, warned")


def _entry_from_row(row: Sequence[Any], recipients: list[RecipientState]) -> QueueEntry:
    (queue_id, sender, created, size, envid, ret, smtputf8, body_type, requiretls, kind,
     account, selectors, hold, attempts, next_attempt, last_error, warned) = row
    return QueueEntry(queue_id=queue_id, sender=sender, created=created, size=size,
                      recipients=recipients, envid=envid, ret=ret, smtputf8=bool(smtputf8),
                      body_type=body_type, requiretls=bool(requiretls), kind=kind,
                      account=account, dkim_selectors=tuple(json.loads(selectors)),
                      hold=bool(hold), attempts=attempts, next_attempt=next_attempt,
                      last_error=last_error, warned=bool(warned))


_RECIPIENT_COLUMNS = ("message_id, address, orcpt_type, orcpt_address, notify, status,"
                      " last_code, last_text, attempts, remote_mta")


def _recipient_from_row(row: Sequence[Any]) -> RecipientState:
    (_, address, orcpt_type, orcpt_address, notify, status, last_code, last_text, attempts,
     remote_mta) = row
    return RecipientState(
        address=address,
        orcpt=(orcpt_type, orcpt_address) if orcpt_type is not None else None,
        notify=tuple(notify.split(",")) if notify is not None else None,
        status=status, last_code=last_code, last_text=last_text, attempts=attempts,
        remote_mta=remote_mta)


def _entries(conn: sqlite3.Connection, rows: list[Sequence[Any]]) -> list[QueueEntry]:
    if not rows:
        return []
    by_id: dict[str, list[RecipientState]] = {row[0]: [] for row in rows}
    ids = list(by_id)
    # Within one read transaction, so recipients match their messages.
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for rrow in conn.execute(
                f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE message_id IN ({marks})"
                " ORDER BY message_id, seq", chunk):
            by_id[rrow[0]].append(_recipient_from_row(rrow))
    return [_entry_from_row(row, by_id[row[0]]) for row in rows]


# The entries of a list of ids as one JSON text: a single step of a single statement
# however many entries and recipients. sqlite3 lets go of the GIL at every step (every row
# of a result), and in the commit thread getting it back from the busy event loop costs
# up to a switch interval each time. REAL columns go through quote(), which keeps every
# digit (JSON numbers keep 15).
_ENTRIES_JSON = """
SELECT json_group_array(json_array(
    id, sender, quote(created), size, envid, ret, smtputf8, body_type, requiretls, kind,
    account, dkim_selectors, hold, attempts, quote(next_attempt), last_error, warned,
    (SELECT json_group_array(json_array(message_id, address, orcpt_type, orcpt_address,
                                        notify, status, last_code, last_text, attempts,
                                        remote_mta))
     FROM (SELECT * FROM recipients r WHERE r.message_id = m.id ORDER BY seq))))
FROM messages m WHERE id IN ({marks})
"""


def _load_entries(conn: sqlite3.Connection, ids: list[str]) -> dict[str, QueueEntry]:
    """The entries among ``ids`` that exist, by id."""
    out: dict[str, QueueEntry] = {}
    for start in range(0, len(ids), _MAX_PARAMETERS):
        chunk = ids[start:start + _MAX_PARAMETERS]
        (text,) = conn.execute(_ENTRIES_JSON.format(marks=",".join("?" * len(chunk))),
                               chunk).fetchone()
        for item in json.loads(text):
            row = item[:17]
            row[2], row[14] = float(row[2]), float(row[14])  # created, next_attempt
            entry = _entry_from_row(row, [_recipient_from_row(r) for r in item[17]])
            out[entry.queue_id] = entry
    return out


def _insert_rows(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """``INSERT INTO table VALUES (...), (...)``: one statement for as many rows as
    ``_MAX_PARAMETERS`` allows. ``table`` is "name (columns)", never from input."""
    if not rows:
        return
    marks = "(" + ",".join("?" * len(rows[0])) + ")"
    per_statement = max(1, _MAX_PARAMETERS // len(rows[0]))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        conn.execute(f"INSERT INTO {table} VALUES {','.join([marks] * len(chunk))}",
                     [value for row in chunk for value in row])


def _load_entry(conn: sqlite3.Connection, queue_id: str) -> QueueEntry | None:
    row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?",
                       (queue_id,)).fetchone()
    if row is None:
        return None
    recipients = [_recipient_from_row(r) for r in conn.execute(
        f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? ORDER BY seq",
        (queue_id,))]
    return _entry_from_row(row, recipients)


def _store_progress(conn: sqlite3.Connection, before: QueueEntry, after: QueueEntry) -> None:
    conn.execute("UPDATE messages SET attempts = ?, next_attempt = ?, last_error = ?"
                 " WHERE id = ?", (after.attempts, after.next_attempt, after.last_error,
                                   after.queue_id))
    seqs = [row[0] for row in conn.execute(
        "SELECT seq FROM recipients WHERE message_id = ? ORDER BY seq", (after.queue_id,))]
    for seq, old, new in zip(seqs, before.recipients, after.recipients, strict=True):
        if old != new:
            conn.execute(
                "UPDATE recipients SET status = ?, last_code = ?, last_text = ?,"
                " attempts = ?, remote_mta = ? WHERE message_id = ? AND seq = ?",
                (new.status, new.last_code, new.last_text, new.attempts, new.remote_mta,
                 after.queue_id, seq))


def _check_new_message(message: NewMessage) -> None:
    check_queue_id(message.queue_id)
    if not message.recipients:
        raise ValueError(f"message {message.queue_id} has no recipients")
    if message.kind not in KINDS:
        raise ValueError(f"unknown message kind {message.kind!r}")
    if message.ret not in (None, "FULL", "HDRS"):
        raise ValueError(f"RET must be FULL or HDRS, not {message.ret!r}")
    if message.source_offset < 0:
        raise ValueError("source_offset must not be negative")
    for rcpt in message.recipients:
        if not rcpt.address or "\n" in rcpt.address or "\r" in rcpt.address:
            raise ValueError(f"invalid recipient address {rcpt.address!r}")
        if rcpt.notify is not None and not _valid_notify(rcpt.notify):
            raise ValueError(f"invalid NOTIFY {rcpt.notify!r}")
    for selector in message.dkim_selectors:
        if ":" not in selector:
            raise ValueError(f"DKIM selector must be domain:selector, not {selector!r}")


def _valid_notify(notify: tuple[str, ...]) -> bool:
    # RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY.
    if notify == ("NEVER",):
        return True
    return bool(notify) and all(n in ("SUCCESS", "FAILURE", "DELAY") for n in notify)


def _write_message(fd: int, prefix: bytes, source: bytes | Path, offset: int) -> int:
    """Write ``prefix`` then ``source`` from ``offset``; a spool file is copied in chunks
    by the kernel, never read whole. Returns the size written."""
    if isinstance(source, bytes | bytearray | memoryview):
        body = memoryview(source)[offset:]
        size = len(prefix) + len(body)
        # One system call for the usual case (each one hands the GIL to another thread).
        written = os.writev(fd, [prefix, body])
        if written < len(prefix):
            write_all(fd, memoryview(prefix)[written:])
            written = len(prefix)
        write_all(fd, body[written - len(prefix):])
        return size
    write_all(fd, prefix)
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size - offset
        if size < 0:
            raise ValueError(f"source_offset {offset} is past the end of {source}")
        os.lseek(src, offset, os.SEEK_SET)
        copied = copy_fd(src, fd, size)
        if copied != size:
            raise OSError(errno.EIO, f"{source} shrank while being queued")
    finally:
        os.close(src)
    return len(prefix) + size


def _memory_copy(message: NewMessage, size: int) -> bytes | None:
    """The bytes written for ``message``, if they are in memory and small."""
    if size > MEMORY_COPY_LIMIT or not isinstance(message.source, bytes | bytearray):
        return None
    return message.prefix + message.source[message.source_offset:]


def _pin_exclusive(path: Path, *, keep_trying: Callable[[], bool]) -> int | None:
    """The pin lock (``PIN_FILE``) held exclusively, as a descriptor to close; None if a
    backup holds it and ``keep_trying()`` says to stop waiting."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not keep_trying():
                os.close(fd)
                return None
            time.sleep(_PIN_POLL_SECONDS)


def _remove_if_abandoned(path: Path, has_row: Callable[[], bool]) -> bool:
    """Remove ``path`` unless a live writer holds its lock or its row appeared meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        # Not a regular file we can open (a symlink, a directory): not ours to judge.
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer's, its commit decides
        if has_row():  # committed between our look and the lock
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
