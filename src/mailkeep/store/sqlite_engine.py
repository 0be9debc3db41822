"""The embedded store engine: SQLite (WAL, synchronous=FULL) for metadata, one file per
message for the bodies. Implements ``mailkeep.store.api.Store``; see docs/store.md for the
layout on disk, the durability guarantees and recovery.

Threads:

* callers (the asyncio loop, CLI, worker threads) read through a per-thread SQLite
  connection; reads never wait for writes (WAL).
* a small pool writes and fsyncs message files in parallel, before anything is committed,
  into files created ahead of time (``pool.FilePool``, one background thread) when it can;
* the write connection is shared through ``committer.GroupCommitter``, which merges every
  pending write into one transaction; the worker whose message is ready commits it (and
  everything else pending) itself, a helper thread commits what the asyncio loop submits;
* a janitor thread unlinks files of expunged messages after their rows are gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import queue
import re
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from mailkeep.durable import fsync_dir
from mailkeep.sqlite_schema import connect, init_schema
from mailkeep.store import files as msgfiles
from mailkeep.store.api import (
    DEFAULT_MAILBOXES,
    DELETED,
    INBOX,
    SEEN,
    SPECIAL_USES,
    CopyResult,
    DeliveryRequest,
    DeliveryResult,
    Expunged,
    FlagMode,
    FlagsChanged,
    FlagUpdate,
    ImportItem,
    Indexer,
    InvalidFlag,
    MailboxError,
    MailboxesChanged,
    MailboxExists,
    MailboxInfo,
    MessageAdded,
    MessageInfo,
    MessageTooLarge,
    NoSuchAccount,
    NoSuchMailbox,
    NoSuchMessage,
    QuotaExceeded,
    RecoveryReport,
    StoreError,
    StoreEvent,
    StoreFlagsResult,
    StoreIOError,
    StoreLimits,
    Subscription,
    Usage,
)
from mailkeep.store.committer import (
    Completion,
    GroupCommitter,
    LoopCompletion,
    NotBulk,
    OpContext,
    Operation,
)
from mailkeep.store.names import (
    canonical_mailbox_name,
    format_flags,
    is_inferior,
    join_keywords,
    parent_names,
    parse_flags,
    split_keywords,
)
from mailkeep.store.notify import Notifier
from mailkeep.store.pool import FilePool
from mailkeep.store.schema import SCHEMA, SCHEMA_VERSION
from mailkeep.units import format_size

logger = logging.getLogger("mailkeep.store")

DB_NAME = "mailkeep.sqlite3"
# How long a writer waits for another process's transaction (the CLI importing a batch).
BUSY_TIMEOUT_SECONDS = 60.0
# SQLite's default limit on host parameters is 32766; stay far below it.
_SQL_CHUNK = 500
# Account names are canonical addresses (RFC 5321 §4.5.3.1.3: at most 254 octets).
MAX_ACCOUNT_NAME_BYTES = 320
_UNSAFE_DIR_CHARS = re.compile(r"[^A-Za-z0-9._@+-]")
#: Accounts whose directory name is remembered (a delivery then needs no lookup).
_MAX_CACHED_DIRS = 10_000
#: How long a delivery waits for a spare file that is being created before it creates
#: its own (see pool.FilePool.take).
_POOL_WAIT_SECONDS = 0.05


def default_indexer(data: bytes) -> bytes:
    """The MIME structure blob: ``mailkeep.mime``'s part tree as JSON (imported lazily so
    the store works, and is testable, without it)."""
    from mailkeep import mime

    return mime.to_json(mime.index_message(data))


def open_store(data_dir: str | os.PathLike[str], indexer: Indexer | None = None, *,
               limits: StoreLimits | None = None, workers: int = 4) -> SQLiteStore:
    """Open (creating if needed) the store under ``data_dir/store`` and run recovery."""
    return SQLiteStore(Path(data_dir) / "store", indexer or default_indexer,
                       limits or StoreLimits(), workers)


def _chunks(values: Sequence[Any], size: int = _SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _check_account_name(account: str) -> str:
    if not isinstance(account, str) or not account or account != account.strip():
        raise StoreError(f"{account!r} is not an account name", reason="invalid-name")
    if len(account.encode("utf-8", "surrogatepass")) > MAX_ACCOUNT_NAME_BYTES:
        raise StoreError(f"an account name is at most {MAX_ACCOUNT_NAME_BYTES} bytes long",
                         reason="invalid-name")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in account):
        raise StoreError("an account name cannot contain control characters",
                         reason="invalid-name")
    return account


def _uids(uids: Iterable[int]) -> list[int]:
    out = sorted({int(u) for u in uids})
    if out and (out[0] < 1 or out[-1] > 0xFFFFFFFF):
        raise StoreError("UIDs are between 1 and 4294967295", reason="bad-uid")
    return out


@dataclass
class _Pending:
    """One message on its way in: file written and fsync'd, row not yet committed."""

    account: str
    mailbox: str
    #: Missing mailbox: True -> create it; False -> deliver to INBOX (deliver) or fail.
    create: bool
    fallback_inbox: bool
    bits: int
    keywords: tuple[str, ...]
    internal_date: float
    quota_bytes: int | None = None
    quota_messages: int | None = None
    key: str | None = None
    #: "account-dir/file-name" once the file exists.
    rel: str | None = None
    dir_path: str | None = None
    #: The file was created by this write (not taken from the pool): its directory must be
    #: fsync'd before the commit.
    new_entry: bool = False
    size: int = 0
    structure: bytes | None = None
    error: StoreError | None = None
    committed: bool = False
    uid: int | None = None


@dataclass
class _AccountState:
    """An account as a bulk delivery sees it, with its running usage."""

    name: str
    id: int
    dir: str
    used_bytes: int
    used_messages: int
    added_bytes: int = 0
    added_messages: int = 0


@dataclass
class _BoxState:
    """A mailbox as a bulk delivery sees it: next UID, MODSEQ and counter deltas."""

    id: int
    name: str
    uidnext: int
    highestmodseq: int
    keywords: str
    added: int = 0
    unseen: int = 0
    deleted: int = 0
    size: int = 0


class _WriterThreads:
    """A fixed set of threads running file-writing jobs in submission order, started on
    first use. Leaner than ``ThreadPoolExecutor`` (no future per job): each job reports
    its own outcome, and the last job of a call goes on to commit it."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)``; raises RuntimeError after ``shutdown``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the writer threads are shut down")
            if not self._threads:
                for i in range(self._count):
                    thread = threading.Thread(target=self._run, daemon=True,
                                              name=f"mailkeep-store-write_{i}")
                    thread.start()
                    self._threads.append(thread)
            self._queue.put((fn, args))

    def shutdown(self) -> None:
        """Run what is queued, then end the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)
        for thread in threads:
            thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # jobs report their own errors; this is a bug
                logger.exception("store writer job failed")
            # Do not keep the job (and the message data it holds) alive while idle.
            del item, fn, args


class SQLiteStore:
    """See the module docstring and ``mailkeep.store.api.Store``."""

    def __init__(self, root: Path, indexer: Indexer, limits: StoreLimits, workers: int) -> None:
        self.root = root
        self.accounts_dir = root / "accounts"
        self._accounts_path = str(self.accounts_dir)
        self.db_path = root / DB_NAME
        self.indexer = indexer
        self.limits = limits
        self.recovery = RecoveryReport()
        self._closed = False
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._readers_closed = False
        self._outstanding: set[str] = set()
        self._outstanding_lock = threading.Lock()
        self._unlinked_dirs: set[str] = set()
        self._notifier = Notifier()
        self._janitor_wake = threading.Event()
        self._garbage_left = False
        self._janitor_stop = False
        self._index_failures = 0
        # Deliveries and imports name the same few mailboxes over and over.
        self._canonical_name = functools.lru_cache(maxsize=1024)(
            partial(canonical_mailbox_name, limits=limits))
        #: account -> directory name; checked against the database at every commit.
        self._dirs: dict[str, str] = {}

        for path in (root, self.accounts_dir, root / "writers"):
            path.mkdir(mode=msgfiles.DIR_MODE, parents=True, exist_ok=True)
        self._pin_path = root / "pin.lock"
        self._pin_path.touch(mode=0o600, exist_ok=True)
        self._writer = self._connect()
        try:
            self._init_schema()
            self.token = msgfiles.WriterToken(root / "writers")
        except BaseException:
            self._writer.close()
            raise
        try:
            self._recover()
        except BaseException:
            self.token.release(clean=False)
            self._writer.close()
            raise
        self._bulk_deliver = self._bulk_deliveries  # one bound method: ops compare equal
        self._file_pool = FilePool(self.accounts_dir, self.token.new_name,
                                   per_account=limits.pool_files_per_account,
                                   max_files=limits.max_pool_files)
        self._workers = max(1, workers)
        self._pool = _WriterThreads(self._workers)
        self._committer = GroupCommitter(
            self._writer, max_batch=limits.max_commit_batch,
            publish=self._notifier.publish, garbage_made=self._janitor_wake.set)
        self._janitor = threading.Thread(target=self._janitor_loop, name="mailkeep-store-gc",
                                         daemon=True)
        self._janitor.start()
        #: Deliveries are counted here once set by ``instrument``.
        self.metrics: Any = None

    # -- connections -----------------------------------------------------------------

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        return connect(self.db_path, BUSY_TIMEOUT_SECONDS, readonly=readonly)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Work accepted before close() still reads while it finishes; only after the
            # connections are closed is reading refused.
            if self._readers_closed:
                raise StoreError("the store is closed", reason="closed")
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _init_schema(self) -> None:
        init_schema(self._writer, SCHEMA, SCHEMA_VERSION, what="store", error=StoreError)

    # -- recovery --------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove what crashed writers left behind; finish interrupted deletions."""
        report = self.recovery
        conn = self._writer

        def is_committed(dir_name: str, file_name: str) -> bool:
            return conn.execute(
                "SELECT 1 FROM files f JOIN accounts a ON a.id = f.account_id"
                " WHERE a.dir = ? AND f.name = ?", (dir_name, file_name)).fetchone() is not None

        # A dead writer's file whose row was expunged after a snapshot (an export, a backup)
        # began is "uncommitted" now but still part of that snapshot: like the janitor,
        # remove nothing while the pin is held shared; the tokens stay for the next open.
        pin = os.open(self._pin_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(pin, fcntl.LOCK_EX | fcntl.LOCK_NB)
                writers = msgfiles.dead_writers(self.root / "writers", self.token.token)
            except BlockingIOError:
                logger.info("recovery: a snapshot is being read; files of interrupted "
                            "writers are left for the next open")
                writers = iter(())
            for token, forget in writers:
                removed = msgfiles.remove_orphans(self.accounts_dir, f"{token}-", is_committed)
                forget()
                report.dead_writers.append(token)
                report.orphan_files += len(removed)
                if removed:
                    logger.warning("recovery: removed %d uncommitted message file(s) left by "
                                   "an interrupted writer (%s)", len(removed), token)
                else:
                    logger.info("recovery: writer %s ended uncleanly; nothing to clean", token)
        finally:
            os.close(pin)
        for (dir_name,) in conn.execute("SELECT dir FROM accounts").fetchall():
            path = self.accounts_dir / dir_name
            if not path.is_dir():
                path.mkdir(mode=msgfiles.DIR_MODE, exist_ok=True)
                report.directories_created += 1
        if report.directories_created:
            fsync_dir(self.accounts_dir)
            logger.info("recovery: created %d missing account directories",
                        report.directories_created)
        report.garbage_removed = self._collect_garbage(direct=True)
        if report.garbage_removed:
            logger.info("recovery: removed %d files of expunged messages",
                        report.garbage_removed)

    # -- garbage (files of expunged messages, deleted accounts) -------------------------

    def _collect_garbage(self, *, direct: bool = False) -> int:
        """Unlink what ``garbage`` lists, then forget those rows. Returns the count removed.

        Deferred while a snapshot (export) pins the files: it holds the pin lock shared.
        """
        removed = 0
        self._garbage_left = False
        while True:
            conn = self._writer if direct else self._reader()
            rows = conn.execute("SELECT path, kind FROM garbage LIMIT 1000").fetchall()
            if not rows:
                return removed
            pin = os.open(self._pin_path, os.O_RDWR | os.O_CLOEXEC)
            try:
                try:
                    fcntl.flock(pin, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return removed  # an export is reading; try again later
                dirs: set[str] = set()
                paths: list[str] = []
                for rel, kind in rows:
                    path = self.root / rel
                    if kind == "dir":
                        shutil.rmtree(path, ignore_errors=True)
                        if path.exists():
                            # Something was created in it meanwhile (a spare file made
                            # just before the account was deleted): try again later.
                            continue
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                    dirs.add(str(path.parent))
                    paths.append(rel)
                for d in dirs:
                    with contextlib.suppress(FileNotFoundError):
                        fsync_dir(d)
            finally:
                os.close(pin)  # drops the lock
            if len(paths) < len(rows):
                self._garbage_left = True
            if not paths:
                return removed

            def forget(ctx: OpContext, paths: list[str] = paths) -> None:
                for chunk in _chunks(paths):
                    ctx.conn.execute(
                        f"DELETE FROM garbage WHERE path IN ({','.join('?' * len(chunk))})",
                        chunk)

            if direct:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    forget(OpContext(conn, time.time()))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            else:
                done: concurrent.futures.Future = concurrent.futures.Future()
                self._committer.submit(Operation(forget, future=done), lead=True)
                done.result()
            removed += len(paths)
            if len(paths) < len(rows):
                return removed

    def _janitor_loop(self) -> None:
        while True:
            # A directory that could not be removed yet is tried again soon.
            self._janitor_wake.wait(timeout=1.0 if self._garbage_left else 30.0)
            self._janitor_wake.clear()
            if self._janitor_stop:
                return
            try:
                self._collect_garbage()
            except StoreError as exc:
                if exc.reason != "closed":
                    logger.warning("could not remove files of expunged messages: %s", exc)
            except Exception:
                logger.exception("could not remove files of expunged messages")

    # -- lifecycle -------------------------------------------------------------------

    def instrument(self, metrics: Any) -> None:
        """Count deliveries and time group commits in ``metrics``
        (mailkeep.metrics.ServerMetrics)."""
        self.metrics = metrics
        self._committer.observe = metrics.commit_observer("mailbox")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown()
        self._janitor_stop = True
        self._janitor_wake.set()
        self._janitor.join()
        self._committer.stop()
        clean = self._settle_outstanding()
        # Spare files never handed out are removed (they would only be orphans to the next
        # open); their directories are fsync'd below, before the token is forgotten.
        clean = self._file_pool.close() and clean
        self._unlinked_dirs.update(self._file_pool.touched_dirs)
        for d in sorted(self._unlinked_dirs):
            with contextlib.suppress(OSError):
                fsync_dir(d)
        with self._readers_lock:
            self._readers_closed = True
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
        # Closed last: when the last connection of the last process goes, SQLite folds the
        # WAL into the database and removes it, so a stopped store is one file plus the
        # message tree (docs/store.md, backups).
        self._writer.close()
        self.token.release(clean=clean)

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _settle_outstanding(self) -> bool:
        """At close: remove message files whose commit did not happen. Returns True if no
        doubt remains (the writer token can be forgotten)."""
        with self._outstanding_lock:
            pending = sorted(self._outstanding)
            self._outstanding.clear()
        clean = True
        for rel in pending:
            dir_name, file_name = rel.split("/", 1)
            try:
                row = self._writer.execute(
                    "SELECT 1 FROM files f JOIN accounts a ON a.id = f.account_id"
                    " WHERE a.dir = ? AND f.name = ?", (dir_name, file_name)).fetchone()
            except sqlite3.Error:
                clean = False
                continue
            if row is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.accounts_dir / rel)
                self._unlinked_dirs.add(str(self.accounts_dir / dir_name))
        return clean

    def _write(self, apply: Callable[[OpContext], Any]) -> Any:
        """Run a write and block until it is durable (committing it on this thread if no
        other thread is committing: the caller waits anyway)."""
        if self._closed:
            raise StoreError("the store is closed", reason="closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._committer.submit(Operation(apply, future=future), lead=True)
        return future.result()

    async def _awrite(self, apply: Callable[[OpContext], Any]) -> Any:
        if self._closed:
            raise StoreError("the store is closed", reason="closed")
        done = LoopCompletion(asyncio.get_running_loop())
        self._committer.submit(Operation(apply, future=done), lead=False)
        return await done.future

    # -- lookups (any connection) ----------------------------------------------------

    @staticmethod
    def _account_id(conn: sqlite3.Connection, account: str) -> int:
        row = conn.execute("SELECT id FROM accounts WHERE name = ?", (account,)).fetchone()
        if row is None:
            raise NoSuchAccount(f"no account {account}")
        return row[0]

    @staticmethod
    def _mailbox_row(conn: sqlite3.Connection, account_id: int, name: str) -> sqlite3.Row | None:
        cur = conn.execute(
            "SELECT id, name, special_use, uidvalidity, uidnext, highestmodseq, messages,"
            " unseen, deleted, size, keywords FROM mailboxes WHERE account_id = ? AND name = ?",
            (account_id, name))
        cur.row_factory = sqlite3.Row
        return cur.fetchone()

    def _mailbox_id(self, conn: sqlite3.Connection, account: str, mailbox: str) -> int:
        name = canonical_mailbox_name(mailbox, self.limits)
        row = conn.execute(
            "SELECT m.id FROM mailboxes m JOIN accounts a ON a.id = m.account_id"
            " WHERE a.name = ? AND m.name = ?", (account, name)).fetchone()
        if row is None:
            self._account_id(conn, account)
            raise NoSuchMailbox(f"no mailbox {name}")
        return row[0]

    def _require_mailbox(self, conn: sqlite3.Connection, account_id: int,
                         mailbox: str) -> sqlite3.Row:
        name = canonical_mailbox_name(mailbox, self.limits)
        row = self._mailbox_row(conn, account_id, name)
        if row is None:
            raise NoSuchMailbox(f"no mailbox {name}")
        return row

    # -- accounts --------------------------------------------------------------------

    def list_accounts(self) -> list[str]:
        return [r[0] for r in self._reader().execute("SELECT name FROM accounts ORDER BY name")]

    def ensure_account(self, account: str) -> bool:
        _check_account_name(account)
        if self._reader().execute("SELECT 1 FROM accounts WHERE name = ?",
                                  (account,)).fetchone():
            return False

        def apply(ctx: OpContext) -> str | None:
            conn = ctx.conn
            if conn.execute("SELECT 1 FROM accounts WHERE name = ?", (account,)).fetchone():
                return None
            cur = conn.execute("INSERT INTO accounts (name, dir, created) VALUES (?, ?, ?)",
                               (account, f"pending-{self.token.new_name()}", ctx.now))
            account_id = cur.lastrowid
            safe = _UNSAFE_DIR_CHARS.sub("_", account)[:64]
            dir_name = f"{account_id}-{safe}"
            conn.execute("UPDATE accounts SET dir = ? WHERE id = ?", (dir_name, account_id))
            for name, special_use in DEFAULT_MAILBOXES:
                self._insert_mailbox(ctx, account_id, name, special_use)
                conn.execute("INSERT OR IGNORE INTO subscriptions (account_id, name)"
                             " VALUES (?, ?)", (account_id, name))
            return dir_name

        dir_name = self._write(apply)
        if dir_name is None:
            return False
        # The row is committed first and the directory made after: a crash in between
        # leaves an account without a directory, which open() creates (never the reverse,
        # which would leave a directory nobody owns).
        self._make_account_dir(dir_name)
        logger.info("account created: %s", account)
        return True

    def _make_account_dir(self, dir_name: str) -> None:
        path = self.accounts_dir / dir_name
        if not path.is_dir():
            path.mkdir(mode=msgfiles.DIR_MODE, exist_ok=True)
            fsync_dir(self.accounts_dir)

    def delete_account(self, account: str) -> None:
        def apply(ctx: OpContext) -> None:
            conn = ctx.conn
            row = conn.execute("SELECT id, dir FROM accounts WHERE name = ?",
                               (account,)).fetchone()
            if row is None:
                raise NoSuchAccount(f"no account {account}")
            account_id, dir_name = row
            conn.execute("INSERT OR REPLACE INTO garbage (path, kind) VALUES (?, 'dir')",
                         (f"accounts/{dir_name}",))
            conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
            ctx.made_garbage = True
            ctx.events.append(MailboxesChanged(account, "account-deleted"))
            # Before the janitor can remove the directory: no more spare files in it.
            self._dirs.pop(account, None)
            self._file_pool.forget(dir_name, wait=True)

        self._write(apply)
        logger.info("account deleted: %s", account)

    def usage(self, account: str) -> Usage:
        row = self._reader().execute(
            "SELECT used_bytes, used_messages FROM accounts WHERE name = ?",
            (account,)).fetchone()
        if row is None:
            raise NoSuchAccount(f"no account {account}")
        return Usage(bytes=row[0], messages=row[1])

    # -- mailboxes -------------------------------------------------------------------

    def _mailbox_info(self, row: sqlite3.Row | tuple, subscribed: bool) -> MailboxInfo:
        return MailboxInfo(
            name=row[1], special_use=row[2], uidvalidity=row[3], uidnext=row[4],
            highestmodseq=row[5], messages=row[6], unseen=row[7], deleted=row[8], size=row[9],
            subscribed=subscribed, keywords=split_keywords(row[10]))

    def list_mailboxes(self, account: str) -> list[MailboxInfo]:
        conn = self._reader()
        account_id = self._account_id(conn, account)
        return _list_mailboxes(conn, account_id, self._mailbox_info)

    def get_mailbox(self, account: str, mailbox: str) -> MailboxInfo:
        conn = self._reader()
        account_id = self._account_id(conn, account)
        row = self._require_mailbox(conn, account_id, mailbox)
        subscribed = conn.execute(
            "SELECT 1 FROM subscriptions WHERE account_id = ? AND name = ?",
            (account_id, row["name"])).fetchone() is not None
        return self._mailbox_info(tuple(row), subscribed)

    def _next_uidvalidity(self, conn: sqlite3.Connection) -> int:
        # RFC 9051 §2.3.1.1: a mailbox re-created under an old name must get a UIDVALIDITY
        # greater than before. One store-wide counter, seeded from the clock so that a
        # restored backup is unlikely to repeat values, guarantees it.
        row = conn.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        last = int(row[0]) if row else 0
        value = max(int(time.time()), last + 1)
        if value > 0xFFFFFFFF:
            raise StoreError("UIDVALIDITY space exhausted")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('uidvalidity', ?)",
                     (value,))
        return value

    def _insert_mailbox(self, ctx: OpContext, account_id: int, name: str,
                        special_use: str | None) -> int:
        conn = ctx.conn
        count = conn.execute("SELECT count(*) FROM mailboxes WHERE account_id = ?",
                             (account_id,)).fetchone()[0]
        if count >= self.limits.max_mailboxes:
            raise MailboxError(f"an account has at most {self.limits.max_mailboxes} mailboxes",
                               reason="too-many")
        cur = conn.execute(
            "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, created)"
            " VALUES (?, ?, ?, ?, ?)",
            (account_id, name, special_use, self._next_uidvalidity(conn), ctx.now))
        return cur.lastrowid

    def _create_with_parents(self, ctx: OpContext, account: str, account_id: int, name: str,
                             special_use: str | None = None) -> tuple[int, list[str]]:
        """Create ``name`` and any missing superiors (RFC 9051 §6.3.4 SHOULD)."""
        created = []
        for parent in parent_names(name):
            if self._mailbox_row(ctx.conn, account_id, parent) is None:
                self._insert_mailbox(ctx, account_id, parent, None)
                created.append(parent)
        mailbox_id = self._insert_mailbox(ctx, account_id, name, special_use)
        created.append(name)
        ctx.events.append(MailboxesChanged(account, "created", tuple(created)))
        return mailbox_id, created

    def create_mailbox(self, account: str, mailbox: str,
                       special_use: str | None = None) -> MailboxInfo:
        name = canonical_mailbox_name(mailbox, self.limits)
        if special_use is not None:
            canonical_use = {u.lower(): u for u in SPECIAL_USES}.get(special_use.lower())
            if canonical_use is None:
                # RFC 6154 §3: CREATE with an unsupported attribute fails with USEATTR.
                raise MailboxError(f"{special_use} is not a special use this server supports"
                                   f" ({' '.join(SPECIAL_USES)})", reason="bad-special-use")
            special_use = canonical_use

        def apply(ctx: OpContext) -> None:
            account_id = self._account_id(ctx.conn, account)
            if self._mailbox_row(ctx.conn, account_id, name) is not None:
                raise MailboxExists(f"mailbox {name} already exists")
            self._create_with_parents(ctx, account, account_id, name, special_use)

        self._write(apply)
        return self.get_mailbox(account, name)

    def rename_mailbox(self, account: str, old: str, new: str) -> None:
        old_name = canonical_mailbox_name(old, self.limits)
        new_name = canonical_mailbox_name(new, self.limits)

        def apply(ctx: OpContext) -> None:
            conn = ctx.conn
            account_id = self._account_id(conn, account)
            source = self._mailbox_row(conn, account_id, old_name)
            if source is None:
                raise NoSuchMailbox(f"no mailbox {old_name}")
            if self._mailbox_row(conn, account_id, new_name) is not None:
                raise MailboxExists(f"mailbox {new_name} already exists")
            if old_name == INBOX:
                self._rename_inbox(ctx, account, account_id, source, new_name)
                return
            if is_inferior(new_name, old_name):
                raise MailboxError(f"cannot move {old_name} inside itself",
                                   reason="invalid-name")
            prefix = old_name + "/"
            rows = conn.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ?"
                " AND (name = ? OR substr(name, 1, ?) = ?)",
                (account_id, old_name, len(prefix), prefix)).fetchall()
            renames = []
            for mailbox_id, name in rows:
                target = new_name + name[len(old_name):]
                canonical_mailbox_name(target, self.limits)  # depth and length limits
                if self._mailbox_row(conn, account_id, target) is not None:
                    raise MailboxExists(f"mailbox {target} already exists")
                renames.append((mailbox_id, name, target))
            for parent in parent_names(new_name):
                if self._mailbox_row(conn, account_id, parent) is None:
                    self._insert_mailbox(ctx, account_id, parent, None)
            for mailbox_id, name, target in renames:
                conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (target, mailbox_id))
                # Subscriptions follow the mailbox, as users expect (and Dovecot does).
                if conn.execute("DELETE FROM subscriptions WHERE account_id = ? AND name = ?",
                                (account_id, name)).rowcount:
                    conn.execute("INSERT OR IGNORE INTO subscriptions (account_id, name)"
                                 " VALUES (?, ?)", (account_id, target))
            ctx.events.append(MailboxesChanged(account, "renamed", (old_name, new_name)))

        self._write(apply)

    def _rename_inbox(self, ctx: OpContext, account: str, account_id: int,
                      inbox: sqlite3.Row, new_name: str) -> None:
        # RFC 9051 §6.3.6: renaming INBOX moves all its messages to a new mailbox with the
        # given name, leaving INBOX empty; its inferiors are unaffected.
        self._create_with_parents(ctx, account, account_id, new_name)
        uids = [r[0] for r in ctx.conn.execute(
            "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (inbox["id"],))]
        if uids:
            target = self._mailbox_row(ctx.conn, account_id, new_name)
            self._copy_rows(ctx, account, account_id, inbox, uids, target, move=True)

    def delete_mailbox(self, account: str, mailbox: str) -> None:
        name = canonical_mailbox_name(mailbox, self.limits)

        def apply(ctx: OpContext) -> None:
            conn = ctx.conn
            account_id = self._account_id(conn, account)
            row = self._mailbox_row(conn, account_id, name)
            if row is None:
                raise NoSuchMailbox(f"no mailbox {name}")
            if name == INBOX:
                raise MailboxError("INBOX cannot be deleted", reason="inbox")
            if row["special_use"]:
                raise MailboxError(f"{name} is the {row['special_use']} mailbox and cannot be "
                                   "deleted; mail clients rely on it", reason="special-use")
            prefix = name + "/"
            if conn.execute("SELECT 1 FROM mailboxes WHERE account_id = ?"
                            " AND substr(name, 1, ?) = ? LIMIT 1",
                            (account_id, len(prefix), prefix)).fetchone():
                # RFC 9051 §6.3.5 lets a server refuse; keeping it as \Noselect would leave
                # a mailbox that cannot hold mail, which confuses more clients than it helps.
                raise MailboxError(f"{name} has mailboxes inside it; delete them first",
                                   reason="has-children")
            file_ids = [r[0] for r in conn.execute(
                "SELECT file_id FROM messages WHERE mailbox_id = ?", (row["id"],))]
            conn.execute("UPDATE accounts SET used_bytes = used_bytes - ?,"
                         " used_messages = used_messages - ? WHERE id = ?",
                         (row["size"], row["messages"], account_id))
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (row["id"],))
            self._release_files(ctx, file_ids)
            ctx.events.append(MailboxesChanged(account, "deleted", (name,)))

        self._write(apply)

    def subscribe_mailbox(self, account: str, mailbox: str) -> None:
        name = canonical_mailbox_name(mailbox, self.limits)

        def apply(ctx: OpContext) -> None:
            account_id = self._account_id(ctx.conn, account)
            # RFC 9051 §6.3.7: subscribing to a name that does not exist is allowed.
            count = ctx.conn.execute("SELECT count(*) FROM subscriptions WHERE account_id = ?",
                                     (account_id,)).fetchone()[0]
            if count >= self.limits.max_mailboxes:
                raise MailboxError("too many subscriptions", reason="too-many")
            ctx.conn.execute("INSERT OR IGNORE INTO subscriptions (account_id, name)"
                             " VALUES (?, ?)", (account_id, name))
            ctx.events.append(MailboxesChanged(account, "subscribed", (name,)))

        self._write(apply)

    def unsubscribe_mailbox(self, account: str, mailbox: str) -> None:
        name = canonical_mailbox_name(mailbox, self.limits)

        def apply(ctx: OpContext) -> None:
            account_id = self._account_id(ctx.conn, account)
            ctx.conn.execute("DELETE FROM subscriptions WHERE account_id = ? AND name = ?",
                             (account_id, name))
            ctx.events.append(MailboxesChanged(account, "unsubscribed", (name,)))

        self._write(apply)

    def list_subscriptions(self, account: str) -> list[str]:
        conn = self._reader()
        account_id = self._account_id(conn, account)
        return [r[0] for r in conn.execute(
            "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name", (account_id,))]

    # -- writing message files (worker threads) ---------------------------------------

    def _account_dir(self, account: str) -> str | None:
        """The account's directory name (cached: deliveries to one account need no lookup;
        every commit checks it against the database, see ``_insert_pending``)."""
        dir_name = self._dirs.get(account)
        if dir_name is None:
            row = self._reader().execute("SELECT dir FROM accounts WHERE name = ?",
                                         (account,)).fetchone()
            if row is None:
                return None
            dir_name = row[0]
            if len(self._dirs) >= _MAX_CACHED_DIRS:
                self._dirs.clear()
            self._dirs[account] = dir_name
        return dir_name

    def _write_file(self, pending: _Pending, prefix: bytes,
                    source: bytes | str | os.PathLike[str], *, sync: bool = True,
                    dir_name: str | None = None) -> None:
        """Write (and fsync, unless ``sync`` is False) the message file; sets
        ``pending.rel`` or ``pending.error``. ``dir_name`` saves the account lookup.

        A durable write goes into a spare file from the pool when there is one (its
        directory entry is already durable), else into a new file whose directory the
        commit fsyncs first."""
        if dir_name is None:
            dir_name = self._account_dir(pending.account)
        if dir_name is None:
            pending.error = NoSuchAccount(f"no account {pending.account}")
            return
        for attempt in (1, 2, 3):
            spare = self._file_pool.take(dir_name, _POOL_WAIT_SECONDS) \
                if sync and attempt == 1 else None
            file_name = spare or self.token.new_name()
            rel = f"{dir_name}/{file_name}"
            dir_path = f"{self._accounts_path}/{dir_name}"
            path = f"{dir_path}/{file_name}"
            with self._outstanding_lock:
                self._outstanding.add(rel)

            def index(size: int, path: str = path) -> None:
                pending.structure = self._index(path, prefix, source, size)

            try:
                # The structure is computed while the kernel writes the file out.
                size = msgfiles.write_message_file(path, prefix, source,
                                                   self.limits.max_message_bytes, sync=sync,
                                                   create=spare is None, before_sync=index)
            except BaseException as exc:
                with self._outstanding_lock:
                    self._outstanding.discard(rel)
                if spare is not None:
                    # Refused before it was opened (too large, unreadable spool file): the
                    # spare has no row and nobody else will use it.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        self._unlinked_dirs.add(dir_path)
                if isinstance(exc, FileNotFoundError) and attempt < 3 and \
                        not os.path.isdir(dir_path):
                    self._file_pool.forget(dir_name)
                    self._dirs.pop(pending.account, None)
                    current = self._account_dir(pending.account)
                    if current is None:
                        pending.error = NoSuchAccount(f"no account {pending.account}")
                        return
                    if current == dir_name:
                        self._make_account_dir(dir_name)  # crash between commit and mkdir
                    dir_name = current
                    continue
                if spare is not None and isinstance(exc, OSError) and attempt == 1:
                    continue  # the spare is unusable: write a new file instead
                if isinstance(exc, MessageTooLarge):
                    pending.error = exc
                elif isinstance(exc, OSError):
                    logger.error("cannot write message file %s: %s", path, exc)
                    pending.error = StoreIOError(
                        f"cannot write the message: {exc.strerror or exc}")
                else:
                    raise
                return
            pending.rel = rel
            pending.dir_path = dir_path
            pending.new_entry = spare is None
            pending.size = size
            return

    def _index(self, path: str, prefix: bytes, source: bytes | str | os.PathLike[str],
               size: int) -> bytes | None:
        try:
            if isinstance(source, bytes | bytearray | memoryview):
                data = prefix + bytes(source) if prefix else bytes(source)
            else:
                data = _read_file(path, size)
            return self.indexer(data)
        except Exception:
            # Never lose a message because its structure could not be computed; it is
            # computed again on demand (get_structure). Log the first failures in full,
            # then only a count, so a broken indexer cannot flood the log.
            self._index_failures += 1
            if self._index_failures <= 3:
                logger.exception("indexer failed on %s; structure will be computed on demand",
                                 path)
            elif self._index_failures % 1000 == 0:
                logger.error("indexer failed %d times so far", self._index_failures)
            return None

    def _forget_files(self, pendings: Iterable[_Pending], committed: bool | None) -> None:
        """After a commit attempt: keep committed files, remove the others. When the commit
        outcome is unknown (COMMIT itself failed), keep them listed as outstanding; close()
        and recovery resolve them against the database."""
        for p in pendings:
            if p.rel is None:
                continue
            if committed is None and p.committed:
                continue
            if not (committed and p.committed):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.accounts_dir / p.rel)
                self._unlinked_dirs.add(str(p.dir_path))
            with self._outstanding_lock:
                self._outstanding.discard(p.rel)

    def _submit_pending(self, pendings: list[_Pending],
                        apply: Callable[[OpContext], Any],
                        future: Completion, *,
                        bulk: Callable[[OpContext, list[Operation]], list[Any]] | None = None,
                        ) -> None:
        op = Operation(apply, future=future,
                       dirs=frozenset(p.dir_path for p in pendings
                                      if p.dir_path and p.new_entry),
                       after=partial(self._forget_files, pendings),
                       bulk=bulk, payload=pendings)
        try:
            # A file-writing worker commits its own message (leader/follower, see
            # committer.py); the asyncio loop must never block on a commit.
            self._committer.submit(op, lead=not _in_event_loop())
        except StoreError as exc:
            self._forget_files(pendings, False)
            if not future.done():
                future.set_exception(exc)

    def _prepare_all(self, jobs: list[Callable[[], _Pending | list[_Pending]]],
                     then: Callable[[list[_Pending]], None],
                     future: Completion) -> None:
        """Run the file-writing jobs in the pool (in parallel), then ``then(pendings)`` with
        every job's pending message(s), in job order."""
        results: list[list[_Pending]] = [[] for _ in jobs]
        remaining = [len(jobs)]
        lock = threading.Lock()
        # Taken out by the job's thread: the message data a job holds (imports) is freed
        # as soon as it is written, not when the commit that follows is done.
        todo: list[Callable[[], _Pending | list[_Pending]] | None] = list(jobs)

        def run(index: int, closed: bool = False) -> None:
            # Runs on the worker thread (or inline if the pool is shut down); the last job
            # to finish goes on to commit, on the same thread: no hand-off.
            job, todo[index] = todo[index], None
            try:
                if closed or job is None:
                    raise StoreError("the store is closed", reason="closed")
                result = job()
                del job
                results[index] = result if isinstance(result, list) else [result]
            except BaseException as exc:
                error = exc if isinstance(exc, StoreError) else \
                    StoreIOError(f"internal error: {exc!r}")
                if not isinstance(exc, StoreError):  # a bug: fail the call, keep no file
                    logger.exception("writing a message file failed", exc_info=exc)
                results[index] = [_Pending("", "", False, False, 0, (), 0.0, error=error)]
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                pendings = [p for chunk in results for p in chunk]
                try:
                    then(pendings)
                except BaseException as exc:
                    logger.exception("submitting messages failed", exc_info=exc)
                    self._forget_files(pendings, False)
                    if not future.done():
                        future.set_exception(StoreIOError(f"internal error: {exc!r}"))

        if self._closed:
            raise StoreError("the store is closed", reason="closed")
        for index in range(len(jobs)):
            try:
                self._pool.submit(run, index)
            except RuntimeError:  # pool shut down by close()
                run(index, closed=True)

    # -- committing messages (the committing thread) ----------------------------------

    def _merge_keywords(self, mailbox_keywords: str,
                        wanted: Iterable[str]) -> tuple[tuple[str, ...], str | None]:
        """Map keywords to the spelling the mailbox already uses (flags are
        case-insensitive, RFC 9051 §2.3.2); returns them and the new mailbox keyword list
        if it grew (None if unchanged)."""
        known = {k.lower(): k for k in split_keywords(mailbox_keywords)}
        grew = False
        out = []
        for keyword in wanted:
            spelled = known.get(keyword.lower())
            if spelled is None:
                if len(known) >= self.limits.max_keywords_per_mailbox:
                    raise InvalidFlag(f"a mailbox can use at most "
                                      f"{self.limits.max_keywords_per_mailbox} keywords")
                known[keyword.lower()] = spelled = keyword
                grew = True
            out.append(spelled)
        return tuple(out), (join_keywords(known.values()) if grew else None)

    def _insert_pending(self, ctx: OpContext, p: _Pending) -> None:
        """Insert one written message; raises StoreError subclasses on refusal."""
        conn = ctx.conn
        # One query for the account and the target mailbox: every statement lets the
        # other threads run (the sqlite3 module releases the GIL), so fewer is faster.
        row = conn.execute(
            "SELECT a.id, a.dir, a.used_bytes, a.used_messages,"
            " m.id, m.name, m.uidnext, m.highestmodseq, m.keywords"
            " FROM accounts a LEFT JOIN mailboxes m ON m.account_id = a.id AND m.name = ?"
            " WHERE a.name = ?", (p.mailbox, p.account)).fetchone()
        if row is None:
            self._dirs.pop(p.account, None)
            raise NoSuchAccount(f"no account {p.account}")
        (account_id, dir_name, used_bytes, used_messages,
         box_id, box_name, uid, highestmodseq, box_keywords) = row
        file_dir, file_name = p.rel.split("/", 1)  # type: ignore[union-attr]
        if file_dir != dir_name:
            # Deleted and created again (by another process) while the file was written:
            # the file is in the old account's directory, which is going away.
            self._dirs.pop(p.account, None)
            raise StoreIOError(f"account {p.account} was re-created during the delivery; "
                               "try again")
        if p.key is not None and conn.execute(
                "SELECT 1 FROM imported WHERE account_id = ? AND key = ?",
                (account_id, p.key)).fetchone():
            return  # imported before: skipped, p.uid stays None
        _check_quota(p.quota_bytes, p.quota_messages, used_bytes, used_messages, p.size, 1)
        if box_id is None:
            if p.create:
                self._create_with_parents(ctx, p.account, account_id, p.mailbox)
                mailbox = self._mailbox_row(conn, account_id, p.mailbox)
            elif p.fallback_inbox:
                p.mailbox = INBOX
                mailbox = self._mailbox_row(conn, account_id, INBOX)
                if mailbox is None:
                    self._insert_mailbox(ctx, account_id, INBOX, None)
                    mailbox = self._mailbox_row(conn, account_id, INBOX)
            else:
                raise NoSuchMailbox(f"no mailbox {p.mailbox}")
            assert mailbox is not None
            box_id, box_name, uid, highestmodseq, box_keywords = (
                mailbox["id"], mailbox["name"], mailbox["uidnext"], mailbox["highestmodseq"],
                mailbox["keywords"])
        keywords, new_list = self._merge_keywords(box_keywords, p.keywords)
        modseq = highestmodseq + 1
        file_id = conn.execute(
            "INSERT INTO files (account_id, name, size, refs, structure) VALUES (?, ?, ?, 1, ?)",
            (account_id, file_name, p.size, p.structure)).lastrowid
        conn.execute(
            "INSERT INTO messages (mailbox_id, uid, file_id, modseq, flags, keywords,"
            " internal_date, save_date, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (box_id, uid, file_id, modseq, p.bits, join_keywords(keywords),
             p.internal_date, ctx.now, p.size))
        conn.execute(
            "UPDATE mailboxes SET uidnext = ?, highestmodseq = ?, messages = messages + 1,"
            " unseen = unseen + ?, deleted = deleted + ?, size = size + ?,"
            " keywords = coalesce(?, keywords) WHERE id = ?",
            (uid + 1, modseq, 0 if p.bits & SEEN else 1, 1 if p.bits & DELETED else 0,
             p.size, new_list, box_id))
        conn.execute("UPDATE accounts SET used_bytes = used_bytes + ?,"
                     " used_messages = used_messages + 1 WHERE id = ?", (p.size, account_id))
        if p.key is not None:
            conn.execute("INSERT INTO imported (account_id, key) VALUES (?, ?)",
                         (account_id, p.key))
        p.uid = uid
        p.committed = True
        ctx.events.append(MessageAdded(p.account, box_name, uid, modseq))

    def _release_files(self, ctx: OpContext, file_ids: Iterable[int]) -> None:
        """Drop one reference per id; files left without any go to ``garbage``."""
        counts = Counter(file_ids)
        if not counts:
            return
        conn = ctx.conn
        conn.executemany("UPDATE files SET refs = refs - ? WHERE id = ?",
                         [(n, fid) for fid, n in counts.items()])
        ids = list(counts)
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            dead = conn.execute(
                f"SELECT f.id, a.dir, f.name FROM files f JOIN accounts a ON a.id = f.account_id"
                f" WHERE f.id IN ({marks}) AND f.refs <= 0", chunk).fetchall()
            if dead:
                conn.executemany("INSERT OR REPLACE INTO garbage (path, kind) VALUES (?, 'file')",
                                 [(f"accounts/{d}/{n}",) for _, d, n in dead])
                conn.executemany("DELETE FROM files WHERE id = ?", [(i,) for i, _, _ in dead])
                ctx.made_garbage = True

    # -- delivery --------------------------------------------------------------------

    def _new_pending(self, account: str, mailbox: str | None, flags: Iterable[str],
                     internal_date: float | None, *, create: bool, fallback_inbox: bool,
                     quota_bytes: int | None = None, quota_messages: int | None = None,
                     key: str | None = None) -> _Pending:
        pending = _Pending(account=account, mailbox=INBOX, create=False,
                           fallback_inbox=fallback_inbox, bits=0, keywords=(),
                           internal_date=time.time() if internal_date is None
                           else float(internal_date),
                           quota_bytes=quota_bytes, quota_messages=quota_messages,
                           key=_key_hash(key) if key is not None else None)
        if mailbox is not None:
            try:
                pending.mailbox = self._canonical_name(mailbox)
                pending.create = create
            except MailboxError as exc:
                if not fallback_inbox:
                    pending.error = exc
        try:
            pending.bits, pending.keywords = parse_flags(flags, self.limits)
        except InvalidFlag as exc:
            pending.error = exc
        return pending

    def _prepare_delivery(self, request: DeliveryRequest) -> _Pending:
        pending = self._new_pending(
            request.account, request.mailbox, request.flags, request.internal_date,
            create=request.create_mailbox, fallback_inbox=True,
            quota_bytes=request.quota_bytes, quota_messages=request.quota_messages)
        if pending.error is None:
            self._write_file(pending, request.prefix, request.source)
        return pending

    async def deliver(self, requests: Sequence[DeliveryRequest]) -> list[DeliveryResult]:
        if not requests:
            return []
        done = LoopCompletion(asyncio.get_running_loop())
        jobs = [partial(self._prepare_delivery, r) for r in requests]
        self._prepare_all(jobs, partial(self._commit_deliveries, future=done), done)
        metrics = self.metrics
        if metrics is None:
            return await done.future
        try:
            results: list[DeliveryResult] = await done.future
        except Exception:
            metrics.local_delivery("failed", len(requests))
            raise
        for result in results:
            metrics.local_delivery("stored" if result.ok else
                                   "over_quota" if result.error == "quota" else "failed")
        return results

    def _commit_deliveries(self, pendings: list[_Pending], future: Completion) -> None:
        # Each request succeeds or fails alone: under its own SAVEPOINT, or, when it is the
        # only one, the operation's (two statements fewer on the common path).
        single = len(pendings) == 1

        def apply(ctx: OpContext) -> list[DeliveryResult]:
            results = []
            for p in pendings:
                if p.error is None:
                    if not single:
                        ctx.conn.execute("SAVEPOINT delivery")
                    events = len(ctx.events)
                    try:
                        self._insert_pending(ctx, p)
                    except StoreError as exc:
                        if single:
                            ctx.undo()
                        else:
                            ctx.conn.execute("ROLLBACK TO delivery")
                        del ctx.events[events:]
                        p.error = exc
                        p.committed = False
                    if not single:
                        ctx.conn.execute("RELEASE delivery")
                results.append(_delivery_result(p))
            return results

        self._submit_pending(pendings, apply, future, bulk=self._bulk_deliver)

    def _bulk_deliveries(self, ctx: OpContext, ops: list[Operation]) -> list[Any]:
        """Commit the deliveries of several ``deliver`` calls with a handful of statements
        (see ``Operation.bulk``): the same outcome as ``_insert_pending`` for each request
        in turn, computed in Python, then one multi-row INSERT per table and one UPDATE per
        mailbox and account. Each statement lets other threads take the GIL, and under
        load waiting to get it back is most of a commit's time.

        Leaves to the one-by-one path (NotBulk) what it does not do: creating a mailbox.
        """
        conn = ctx.conn
        groups: list[list[_Pending]] = [op.payload for op in ops]
        todo = [p for group in groups for p in group if p.error is None]
        saved = [(p, p.error, p.mailbox) for group in groups for p in group]
        accounts: dict[str, _AccountState | None] = {}
        boxes: dict[tuple[str, str], _BoxState | None] = {}
        next_file_id = [0]

        def lookup(account: str, mailbox: str) -> tuple[_AccountState | None,
                                                        _BoxState | None]:
            # The account, the mailbox and the next free file id in one query.
            if (account, mailbox) not in boxes:
                row = conn.execute(
                    "SELECT a.id, a.dir, a.used_bytes, a.used_messages,"
                    " m.id, m.name, m.uidnext, m.highestmodseq, m.keywords,"
                    " (SELECT coalesce(max(id), 0) FROM files)"
                    " FROM accounts a LEFT JOIN mailboxes m"
                    " ON m.account_id = a.id AND m.name = ? WHERE a.name = ?",
                    (mailbox, account)).fetchone()
                if row is None:
                    accounts[account] = None
                    return None, None
                if account not in accounts:
                    accounts[account] = _AccountState(account, *row[:4])
                    if not next_file_id[0]:  # before anything of this batch is inserted
                        next_file_id[0] = row[9] + 1
                boxes[(account, mailbox)] = _BoxState(*row[4:9]) if row[4] else None
            return accounts[account], boxes[(account, mailbox)]

        files: list[tuple[Any, ...]] = []
        messages: list[tuple[Any, ...]] = []
        try:
            for p in todo:
                account, box = lookup(p.account, p.mailbox)
                if account is None:
                    self._dirs.pop(p.account, None)
                    p.error = NoSuchAccount(f"no account {p.account}")
                    continue
                file_dir, file_name = p.rel.split("/", 1)  # type: ignore[union-attr]
                if file_dir != account.dir:
                    self._dirs.pop(p.account, None)
                    p.error = StoreIOError(f"account {p.account} was re-created during the "
                                           "delivery; try again")
                    continue
                try:
                    _check_quota(p.quota_bytes, p.quota_messages, account.used_bytes,
                                 account.used_messages, p.size, 1)
                except QuotaExceeded as exc:
                    p.error = exc
                    continue
                if box is None:
                    if p.create or not p.fallback_inbox:
                        raise NotBulk
                    _, box = lookup(p.account, INBOX)
                    if box is None:
                        raise NotBulk
                    p.mailbox = INBOX
                try:
                    keywords, grown = self._merge_keywords(box.keywords, p.keywords)
                except InvalidFlag as exc:
                    p.error = exc
                    continue
                if grown is not None:
                    box.keywords = grown
                file_id = next_file_id[0]
                next_file_id[0] += 1
                uid, box.uidnext = box.uidnext, box.uidnext + 1
                box.highestmodseq += 1
                box.added += 1
                box.unseen += 0 if p.bits & SEEN else 1
                box.deleted += 1 if p.bits & DELETED else 0
                box.size += p.size
                account.used_bytes += p.size
                account.used_messages += 1
                account.added_bytes += p.size
                account.added_messages += 1
                files.append((file_id, account.id, file_name, p.size, p.structure))
                messages.append((box.id, uid, file_id, box.highestmodseq, p.bits,
                                 join_keywords(keywords), p.internal_date, ctx.now, p.size))
                p.uid = uid
                p.committed = True
                ctx.events.append(MessageAdded(p.account, box.name, uid, box.highestmodseq))
            for chunk in _chunks(files, _SQL_CHUNK // 5):
                conn.execute("INSERT INTO files (id, account_id, name, size, refs, structure)"
                             " VALUES " + ",".join(["(?, ?, ?, ?, 1, ?)"] * len(chunk)),
                             [v for row in chunk for v in row])
            for chunk in _chunks(messages, _SQL_CHUNK // 9):
                conn.execute("INSERT INTO messages (mailbox_id, uid, file_id, modseq, flags,"
                             " keywords, internal_date, save_date, size) VALUES "
                             + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
                             [v for row in chunk for v in row])
            for box in {id(b): b for b in boxes.values() if b is not None}.values():
                if box.added:
                    conn.execute(
                        "UPDATE mailboxes SET uidnext = ?, highestmodseq = ?,"
                        " messages = messages + ?, unseen = unseen + ?,"
                        " deleted = deleted + ?, size = size + ?, keywords = ? WHERE id = ?",
                        (box.uidnext, box.highestmodseq, box.added, box.unseen, box.deleted,
                         box.size, box.keywords, box.id))
            for account in accounts.values():
                if account is not None and account.added_messages:
                    conn.execute("UPDATE accounts SET used_bytes = used_bytes + ?,"
                                 " used_messages = used_messages + ? WHERE id = ?",
                                 (account.added_bytes, account.added_messages, account.id))
        except BaseException:
            # The committer rolls this back and applies the operations one by one, from
            # the requests as they were.
            for p, error, mailbox in saved:
                p.error, p.mailbox, p.uid, p.committed = error, mailbox, None, False
            raise
        return [[_delivery_result(p) for p in group] for group in groups]

    async def append(self, account: str, mailbox: str,
                     message: bytes | str | os.PathLike[str],
                     flags: Iterable[str] = (), internal_date: float | None = None, *,
                     quota_bytes: int | None = None,
                     quota_messages: int | None = None) -> int:
        flags = tuple(flags)
        future = LoopCompletion(asyncio.get_running_loop())

        def prepare() -> _Pending:
            pending = self._new_pending(account, mailbox, flags, internal_date, create=False,
                                        fallback_inbox=False, quota_bytes=quota_bytes,
                                        quota_messages=quota_messages)
            if pending.error is None:
                # Fail early, before writing, if the mailbox is not there (TRYCREATE).
                self._mailbox_id(self._reader(), account, pending.mailbox)
                self._write_file(pending, b"", message)
            return pending

        def then(pendings: list[_Pending]) -> None:
            (pending,) = pendings

            def apply(ctx: OpContext) -> int:
                if pending.error is not None:
                    raise pending.error
                self._insert_pending(ctx, pending)
                return pending.uid  # type: ignore[return-value]

            self._submit_pending(pendings, apply, future)

        def prepare_safely() -> _Pending:
            try:
                return prepare()
            except StoreError as exc:
                return _Pending(account, mailbox, False, False, 0, (), 0.0, error=exc)

        self._prepare_all([prepare_safely], then, future)
        return await future.future

    async def import_messages(self, account: str,
                              items: Sequence[ImportItem]) -> list[int | None]:
        if not items:
            return []
        future = LoopCompletion(asyncio.get_running_loop())

        # A bulk import makes its files durable with one syncfs per batch rather than one
        # fsync per file (see files.sync_filesystem); the rule is the same: every file is
        # on disk before the commit that makes it visible.
        bulk = msgfiles.can_sync_filesystem()

        def prepare(chunk: Sequence[ImportItem]) -> list[_Pending]:
            dir_name = self._account_dir(account)
            pendings = []
            for item in chunk:
                pending = self._new_pending(account, item.mailbox, item.flags,
                                            item.internal_date, create=True,
                                            fallback_inbox=False, key=item.key)
                if dir_name is None:
                    pending.error = NoSuchAccount(f"no account {account}")
                elif pending.error is None:
                    self._write_file(pending, b"", item.source, sync=not bulk,
                                     dir_name=dir_name)
                pendings.append(pending)
            return pendings

        def then(pendings: list[_Pending]) -> None:
            if bulk and any(p.rel for p in pendings):
                try:
                    msgfiles.sync_filesystem(self.accounts_dir)
                except OSError as exc:
                    logger.error("syncfs failed: %s", exc)
                    for p in pendings:
                        p.error = p.error or StoreIOError(
                            f"cannot make the messages durable: {exc.strerror or exc}")

            def apply(ctx: OpContext) -> list[int | None]:
                for p in pendings:
                    if p.error is not None:
                        raise p.error
                    self._insert_pending(ctx, p)
                return [p.uid for p in pendings]

            self._submit_pending(pendings, apply, future)

        # A few chunks, one per worker, rather than one job per message: a batch is many
        # small files, and handing each to a thread costs more than writing it.
        size = max(32, -(-len(items) // self._workers))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        self._prepare_all([partial(prepare, chunk) for chunk in chunks], then, future)
        return await future.future

    def imported_keys(self, account: str, keys: Iterable[str]) -> set[str]:
        conn = self._reader()
        account_id = self._account_id(conn, account)
        by_hash = {_key_hash(k): k for k in keys}
        found: set[str] = set()
        hashes = list(by_hash)
        for chunk in _chunks(hashes):
            marks = ",".join("?" * len(chunk))
            for (h,) in conn.execute(
                    f"SELECT key FROM imported WHERE account_id = ? AND key IN ({marks})",
                    (account_id, *chunk)):
                found.add(by_hash[h])
        return found

    # -- reading messages ------------------------------------------------------------

    def list_messages(self, account: str, mailbox: str,
                      since_modseq: int | None = None) -> list[MessageInfo]:
        conn = self._reader()
        mailbox_id = self._mailbox_id(conn, account, mailbox)
        return list(_iter_messages(conn, mailbox_id, since_modseq))

    def get_message(self, account: str, mailbox: str, uid: int) -> MessageInfo:
        conn = self._reader()
        mailbox_id = self._mailbox_id(conn, account, mailbox)
        row = conn.execute(
            "SELECT uid, modseq, flags, keywords, internal_date, save_date, size FROM messages"
            " WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)).fetchone()
        if row is None:
            raise NoSuchMessage(f"no message with UID {uid} in {mailbox}")
        return _message_info(row)

    def _file_row(self, account: str, mailbox: str, uid: int) -> tuple[Path, bytes | None]:
        # One query on the hot path of FETCH (a message's file and structure); only a
        # miss pays for finding out which of account, mailbox or message is missing.
        conn = self._reader()
        name = canonical_mailbox_name(mailbox, self.limits)
        row = conn.execute(
            "SELECT a.dir, f.name, f.structure FROM accounts a"
            " JOIN mailboxes mb ON mb.account_id = a.id"
            " JOIN messages m ON m.mailbox_id = mb.id JOIN files f ON f.id = m.file_id"
            " WHERE a.name = ? AND mb.name = ? AND m.uid = ?", (account, name, uid)).fetchone()
        if row is None:
            self._mailbox_id(conn, account, mailbox)  # raises NoSuchAccount/NoSuchMailbox
            raise NoSuchMessage(f"no message with UID {uid} in {mailbox}")
        return self.accounts_dir / row[0] / row[1], row[2]

    def message_files(self, account: str, mailbox: str,
                      uids: Sequence[int]) -> dict[int, tuple[Path, bytes | None]]:
        conn = self._reader()
        mailbox_id = self._mailbox_id(conn, account, mailbox)
        found: dict[int, tuple[Path, bytes | None]] = {}
        wanted = list(uids)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for uid, directory, name, structure in conn.execute(
                    "SELECT m.uid, a.dir, f.name, f.structure FROM messages m"
                    " JOIN files f ON f.id = m.file_id JOIN accounts a ON a.id = f.account_id"
                    f" WHERE m.mailbox_id = ? AND m.uid IN ({marks})", (mailbox_id, *chunk)):
                found[uid] = (self.accounts_dir / directory / name, structure)
        return found

    def message_path(self, account: str, mailbox: str, uid: int) -> Path:
        return self._file_row(account, mailbox, uid)[0]

    def open_message(self, account: str, mailbox: str, uid: int) -> BinaryIO:
        path, _ = self._file_row(account, mailbox, uid)
        try:
            return open(path, "rb")  # the caller owns (and closes) the file object
        except FileNotFoundError:
            # Expunged (and garbage-collected) between the lookup and the open.
            raise NoSuchMessage(f"message {uid} in {mailbox} was expunged") from None

    def read_message(self, account: str, mailbox: str, uid: int) -> bytes:
        with self.open_message(account, mailbox, uid) as f:
            return f.read()

    def get_structure(self, account: str, mailbox: str, uid: int) -> bytes:
        path, structure = self._file_row(account, mailbox, uid)
        if structure is not None:
            return structure
        try:
            return self.indexer(path.read_bytes())
        except FileNotFoundError:
            raise NoSuchMessage(f"message {uid} in {mailbox} was expunged") from None
        except Exception as exc:
            raise StoreError(f"cannot compute the structure of message {uid}: {exc}",
                             reason="index") from exc

    def vanished_since(self, account: str, mailbox: str, modseq: int) -> list[int]:
        conn = self._reader()
        mailbox_id = self._mailbox_id(conn, account, mailbox)
        return [r[0] for r in conn.execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
            (mailbox_id, modseq))]

    # -- changing messages -----------------------------------------------------------

    async def store_flags(self, account: str, mailbox: str, uids: Iterable[int],
                          flags: Iterable[str], mode: FlagMode = "add",
                          unchanged_since: int | None = None) -> StoreFlagsResult:
        if mode not in ("set", "add", "remove"):
            raise ValueError(f"mode must be 'set', 'add' or 'remove', not {mode!r}")
        wanted_uids = _uids(uids)
        bits, keywords = parse_flags(tuple(flags), self.limits)
        name = canonical_mailbox_name(mailbox, self.limits)

        def apply(ctx: OpContext) -> StoreFlagsResult:
            conn = ctx.conn
            account_id = self._account_id(conn, account)
            box = self._require_mailbox(conn, account_id, name)
            modseq = box["highestmodseq"] + 1
            box_keywords = box["keywords"]
            if mode != "remove":
                canonical, grown = self._merge_keywords(box_keywords, keywords)
            else:
                canonical, grown = keywords, None
            remove_folded = {k.lower() for k in keywords}
            updated: list[FlagUpdate] = []
            modified: list[int] = []
            changes = []
            unseen_delta = deleted_delta = 0
            for uid, old_modseq, old_bits, old_kw in _select_by_uid(
                    conn, "uid, modseq, flags, keywords", box["id"], wanted_uids):
                if unchanged_since is not None and old_modseq > unchanged_since:
                    modified.append(uid)
                    continue
                old_keywords = split_keywords(old_kw)
                if mode == "set":
                    new_bits, new_keywords = bits, canonical
                elif mode == "add":
                    new_bits, new_keywords = old_bits | bits, old_keywords + canonical
                else:
                    new_bits = old_bits & ~bits
                    new_keywords = tuple(k for k in old_keywords if k.lower() not in remove_folded)
                # Stored keywords already use the mailbox spelling, so a set removes doubles.
                stored = join_keywords(new_keywords)
                if new_bits == old_bits and stored == old_kw:
                    updated.append(FlagUpdate(uid, old_modseq, format_flags(old_bits, old_keywords),
                                              changed=False))
                    continue
                changes.append((modseq, new_bits, stored, box["id"], uid))
                unseen_delta += _bit(old_bits, SEEN) - _bit(new_bits, SEEN)
                deleted_delta += _bit(new_bits, DELETED) - _bit(old_bits, DELETED)
                updated.append(FlagUpdate(uid, modseq, format_flags(new_bits,
                                                                    split_keywords(stored))))
            if changes:
                conn.executemany("UPDATE messages SET modseq = ?, flags = ?, keywords = ?"
                                 " WHERE mailbox_id = ? AND uid = ?", changes)
                conn.execute("UPDATE mailboxes SET highestmodseq = ?, unseen = unseen + ?,"
                             " deleted = deleted + ?, keywords = coalesce(?, keywords)"
                             " WHERE id = ?",
                             (modseq, unseen_delta, deleted_delta, grown, box["id"]))
                ctx.events.append(FlagsChanged(account, box["name"],
                                               tuple(u for u in updated if u.changed)))
            return StoreFlagsResult(tuple(updated), tuple(modified))

        return await self._awrite(apply)

    def _copy_rows(self, ctx: OpContext, account: str, account_id: int, source: sqlite3.Row,
                   uids: list[int], target: sqlite3.Row, *, move: bool,
                   quota_bytes: int | None = None,
                   quota_messages: int | None = None) -> CopyResult:
        conn = ctx.conn
        rows = list(_select_by_uid(conn, "uid, file_id, flags, keywords, internal_date, size",
                                   source["id"], uids))
        if not rows:
            return CopyResult(target["uidvalidity"], ())
        total = sum(r[5] for r in rows)
        if not move:
            used_bytes, used_messages = conn.execute(
                "SELECT used_bytes, used_messages FROM accounts WHERE id = ?",
                (account_id,)).fetchone()
            _check_quota(quota_bytes, quota_messages, used_bytes, used_messages, total, len(rows))
        # RFC 4315 §3: COPYUID lists source and destination UIDs in the same order; the
        # copies get ascending UIDs in source UID order.
        target_keywords = target["keywords"]
        grown_any = False
        uid = target["uidnext"]
        modseq = target["highestmodseq"] + 1
        inserts = []
        pairs = []
        unseen = deleted = 0
        for src_uid, file_id, bits, kw, internal_date, size in rows:
            canonical, grown = self._merge_keywords(target_keywords, split_keywords(kw))
            if grown is not None:
                target_keywords, grown_any = grown, True
            inserts.append((target["id"], uid, file_id, modseq, bits, join_keywords(canonical),
                            internal_date, ctx.now, size))
            pairs.append((src_uid, uid))
            unseen += 0 if bits & SEEN else 1
            deleted += 1 if bits & DELETED else 0
            uid += 1
        conn.executemany(
            "INSERT INTO messages (mailbox_id, uid, file_id, modseq, flags, keywords,"
            " internal_date, save_date, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", inserts)
        conn.execute(
            "UPDATE mailboxes SET uidnext = ?, highestmodseq = ?, messages = messages + ?,"
            " unseen = unseen + ?, deleted = deleted + ?, size = size + ?, keywords = ?"
            " WHERE id = ?",
            (uid, modseq, len(rows), unseen, deleted, total,
             target_keywords if grown_any else target["keywords"], target["id"]))
        for _, dst_uid in pairs:
            ctx.events.append(MessageAdded(account, target["name"], dst_uid, modseq))
        if move:
            # RFC 6851 §3.3: the source messages are expunged as part of the same atomic
            # operation; files are shared by the copies, so no reference changes.
            self._delete_rows(ctx, account, account_id, source, rows_for_delete=[
                (r[0], r[1], r[2], r[5]) for r in rows], release=False)
        else:
            conn.executemany("UPDATE files SET refs = refs + 1 WHERE id = ?",
                             [(r[1],) for r in rows])
            conn.execute("UPDATE accounts SET used_bytes = used_bytes + ?,"
                         " used_messages = used_messages + ? WHERE id = ?",
                         (total, len(rows), account_id))
        return CopyResult(target["uidvalidity"], tuple(pairs))

    def _delete_rows(self, ctx: OpContext, account: str, account_id: int, box: sqlite3.Row,
                     rows_for_delete: list[tuple[int, int, int, int]], *, release: bool) -> int:
        """Expunge (uid, file_id, flags, size) rows; returns the expunge mod-sequence."""
        conn = ctx.conn
        current = conn.execute("SELECT highestmodseq FROM mailboxes WHERE id = ?",
                               (box["id"],)).fetchone()[0]
        modseq = current + 1
        conn.executemany("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?",
                         [(box["id"], r[0]) for r in rows_for_delete])
        # RFC 7162 §3.2.5.1: remember the expunge and its mod-sequence for VANISHED.
        conn.executemany("INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq)"
                         " VALUES (?, ?, ?)", [(box["id"], r[0], modseq) for r in rows_for_delete])
        size = sum(r[3] for r in rows_for_delete)
        unseen = sum(1 for r in rows_for_delete if not r[2] & SEEN)
        deleted = sum(1 for r in rows_for_delete if r[2] & DELETED)
        conn.execute("UPDATE mailboxes SET highestmodseq = ?, messages = messages - ?,"
                     " unseen = unseen - ?, deleted = deleted - ?, size = size - ? WHERE id = ?",
                     (modseq, len(rows_for_delete), unseen, deleted, size, box["id"]))
        if release:
            conn.execute("UPDATE accounts SET used_bytes = used_bytes - ?,"
                         " used_messages = used_messages - ? WHERE id = ?",
                         (size, len(rows_for_delete), account_id))
            self._release_files(ctx, [r[1] for r in rows_for_delete])
        ctx.events.append(Expunged(account, box["name"],
                                   tuple(r[0] for r in rows_for_delete), modseq))
        return modseq

    async def copy(self, account: str, source: str, uids: Iterable[int], destination: str, *,
                   quota_bytes: int | None = None,
                   quota_messages: int | None = None) -> CopyResult:
        return await self._copy_or_move(account, source, uids, destination, move=False,
                                        quota_bytes=quota_bytes, quota_messages=quota_messages)

    async def move(self, account: str, source: str, uids: Iterable[int],
                   destination: str) -> CopyResult:
        return await self._copy_or_move(account, source, uids, destination, move=True)

    async def _copy_or_move(self, account: str, source: str, uids: Iterable[int],
                            destination: str, *, move: bool, quota_bytes: int | None = None,
                            quota_messages: int | None = None) -> CopyResult:
        wanted = _uids(uids)
        src_name = canonical_mailbox_name(source, self.limits)
        dst_name = canonical_mailbox_name(destination, self.limits)

        def apply(ctx: OpContext) -> CopyResult:
            account_id = self._account_id(ctx.conn, account)
            src = self._require_mailbox(ctx.conn, account_id, src_name)
            dst = self._mailbox_row(ctx.conn, account_id, dst_name)
            if dst is None:
                raise NoSuchMailbox(f"no mailbox {dst_name}")  # IMAP: [TRYCREATE]
            return self._copy_rows(ctx, account, account_id, src, wanted, dst, move=move,
                                   quota_bytes=quota_bytes, quota_messages=quota_messages)

        return await self._awrite(apply)

    async def expunge(self, account: str, mailbox: str,
                      uids: Iterable[int] | None = None) -> list[int]:
        wanted = None if uids is None else _uids(uids)
        name = canonical_mailbox_name(mailbox, self.limits)

        def apply(ctx: OpContext) -> list[int]:
            conn = ctx.conn
            account_id = self._account_id(conn, account)
            box = self._require_mailbox(conn, account_id, name)
            if wanted is None:
                rows = conn.execute(
                    "SELECT uid, file_id, flags, size FROM messages"
                    " WHERE mailbox_id = ? AND flags & ? ORDER BY uid",
                    (box["id"], DELETED)).fetchall()
            else:
                rows = [r for r in _select_by_uid(conn, "uid, file_id, flags, size", box["id"],
                                                  wanted) if r[2] & DELETED]
            if not rows:
                return []
            self._delete_rows(ctx, account, account_id, box, rows, release=True)
            return [r[0] for r in rows]

        return await self._awrite(apply)

    # -- notifications ---------------------------------------------------------------

    def subscribe(self, account: str, callback: Callable[[StoreEvent], object],
                  loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        return self._notifier.subscribe(account, callback, loop)

    # -- snapshots -------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self, account: str) -> Iterator[_Snapshot]:
        snap = _Snapshot(self, account)
        try:
            yield snap
        finally:
            snap.close()


class _Snapshot:
    """A read transaction plus the pin lock that keeps its files on disk (see
    ``SQLiteStore._collect_garbage``)."""

    def __init__(self, store: SQLiteStore, account: str) -> None:
        self._store = store
        self._pin = os.open(store._pin_path, os.O_RDWR | os.O_CLOEXEC)
        # Pin before the read transaction starts: files reachable from the snapshot were
        # then either still listed in the database or already unlinked before it began.
        fcntl.flock(self._pin, fcntl.LOCK_SH)
        self._conn = store._connect(readonly=True)
        try:
            self._conn.execute("BEGIN")
            row = self._conn.execute("SELECT id, dir FROM accounts WHERE name = ?",
                                     (account,)).fetchone()
            if row is None:
                raise NoSuchAccount(f"no account {account}")
        except BaseException:
            self.close()
            raise
        self.account = account
        self._account_id, self._dir = row

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        if self._pin >= 0:
            os.close(self._pin)
            self._pin = -1
            # Removals deferred while we held the pin can go now (in this process; other
            # processes' janitors retry on their own).
            self._store._janitor_wake.set()

    def _mailbox_id(self, mailbox: str) -> int:
        name = canonical_mailbox_name(mailbox, self._store.limits)
        row = self._conn.execute("SELECT id FROM mailboxes WHERE account_id = ? AND name = ?",
                                 (self._account_id, name)).fetchone()
        if row is None:
            raise NoSuchMailbox(f"no mailbox {name}")
        return row[0]

    def list_mailboxes(self) -> list[MailboxInfo]:
        return _list_mailboxes(self._conn, self._account_id, self._store._mailbox_info)

    def subscriptions(self) -> list[str]:
        return [r[0] for r in self._conn.execute(
            "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name",
            (self._account_id,))]

    def iter_messages(self, mailbox: str) -> Iterator[MessageInfo]:
        return _iter_messages(self._conn, self._mailbox_id(mailbox), None)

    def open_message(self, mailbox: str, uid: int) -> BinaryIO:
        row = self._conn.execute(
            "SELECT f.name FROM messages m JOIN files f ON f.id = m.file_id"
            " WHERE m.mailbox_id = ? AND m.uid = ?", (self._mailbox_id(mailbox), uid)).fetchone()
        if row is None:
            raise NoSuchMessage(f"no message with UID {uid} in {mailbox}")
        return open(self._store.accounts_dir / self._dir / row[0], "rb")


# -- helpers -----------------------------------------------------------------------------


def _read_file(path: str, size: int) -> bytes:
    """The first ``size`` bytes of a file we just wrote (three system calls, not five)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while size > 0:
            chunk = os.read(fd, size)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _in_event_loop() -> bool:
    """Is this thread running an asyncio loop (which must never wait for the disk)?"""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _bit(bits: int, bit: int) -> int:
    return 1 if bits & bit else 0


def _check_quota(quota_bytes: int | None, quota_messages: int | None, used_bytes: int,
                 used_messages: int, add_bytes: int, add_messages: int) -> None:
    # RFC 9208 §5: checked where the message would be stored, atomically with the insert.
    if quota_bytes is not None and used_bytes + add_bytes > quota_bytes:
        raise QuotaExceeded(f"mailbox full: {format_size(used_bytes)} of "
                            f"{format_size(quota_bytes)} used", resource="STORAGE")
    if quota_messages is not None and used_messages + add_messages > quota_messages:
        raise QuotaExceeded(f"mailbox full: {used_messages} of {quota_messages} messages",
                            resource="MESSAGE")


def _delivery_result(p: _Pending) -> DeliveryResult:
    if p.error is not None or p.uid is None:
        error = p.error or StoreError("not stored")
        return DeliveryResult(ok=False, account=p.account, mailbox=p.mailbox, uid=None,
                              error=error.reason, message=str(error))
    return DeliveryResult(ok=True, account=p.account, mailbox=p.mailbox, uid=p.uid, error=None,
                          message=f"stored in {p.mailbox} as UID {p.uid}")


@functools.lru_cache(maxsize=1024)
def _stored_flags(bits: int, keywords: str) -> tuple[str, ...]:
    # A mailbox has few distinct flag combinations; listing 100,000 messages builds each
    # tuple once (the tuples are immutable, so sharing them is safe).
    return format_flags(bits, split_keywords(keywords))


def _message_info(row: tuple) -> MessageInfo:
    uid, modseq, bits, keywords, internal_date, save_date, size = row
    return MessageInfo(uid=uid, modseq=modseq, flags=_stored_flags(bits, keywords),
                       internal_date=internal_date, save_date=save_date, size=size)


def _iter_messages(conn: sqlite3.Connection, mailbox_id: int,
                   since_modseq: int | None) -> Iterator[MessageInfo]:
    if since_modseq is None:
        cur = conn.execute(
            "SELECT uid, modseq, flags, keywords, internal_date, save_date, size FROM messages"
            " WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,))
    else:
        cur = conn.execute(
            "SELECT uid, modseq, flags, keywords, internal_date, save_date, size FROM messages"
            " WHERE mailbox_id = ? AND modseq > ? ORDER BY uid", (mailbox_id, since_modseq))
    while True:
        rows = cur.fetchmany(1000)
        if not rows:
            return
        for row in rows:
            yield _message_info(row)


def _list_mailboxes(conn: sqlite3.Connection, account_id: int,
                    make: Callable[[tuple, bool], MailboxInfo]) -> list[MailboxInfo]:
    rows = conn.execute(
        "SELECT id, name, special_use, uidvalidity, uidnext, highestmodseq, messages, unseen,"
        " deleted, size, keywords, EXISTS (SELECT 1 FROM subscriptions s"
        " WHERE s.account_id = m.account_id AND s.name = m.name)"
        " FROM mailboxes m WHERE account_id = ?", (account_id,)).fetchall()
    infos = [make(row[:11], bool(row[11])) for row in rows]
    infos.sort(key=lambda m: (m.name != INBOX, m.name))
    return infos


def _select_by_uid(conn: sqlite3.Connection, columns: str, mailbox_id: int,
                   uids: list[int]) -> Iterator[tuple]:
    """Rows of the given (sorted, unique) UIDs that exist, in UID order."""
    for chunk in _chunks(uids):
        marks = ",".join("?" * len(chunk))
        yield from conn.execute(
            f"SELECT {columns} FROM messages WHERE mailbox_id = ? AND uid IN ({marks})"
            " ORDER BY uid", (mailbox_id, *chunk))


__all__ = ["SQLiteStore", "default_indexer", "open_store"]
