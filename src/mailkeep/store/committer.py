"""Group commit: one thread owns the process's SQLite write connection and merges the
writes of every session into shared transactions.

Each write is an ``Operation``: a function run inside the transaction (under its own
SAVEPOINT, so one failing operation does not undo the others), plus the directories whose
new entries must be durable before the commit. Everything pending is taken at once: each of
those directories is fsync'd once, all operations run in one transaction, which commits
once (``synchronous=FULL``: the WAL is fsync'd), and only then are the futures completed
and the change events published. Under load N concurrent deliveries cost two fsyncs, not 2N.

Writes from another process (the CLI) are serialised by SQLite's own lock; the
``busy_timeout`` makes this thread wait for them instead of failing.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailkeep.durable import fsync_dir
from mailkeep.store.api import StoreError, StoreEvent, StoreIOError

logger = logging.getLogger("mailkeep.store")


@dataclass
class OpContext:
    """Handed to an operation's function inside the transaction."""

    conn: sqlite3.Connection
    #: Wall-clock time of the batch (SAVEDATE, created).
    now: float
    #: Events to publish if, and only if, the commit succeeds.
    events: list[StoreEvent] = field(default_factory=list)
    #: Set when the operation queued rows in ``garbage`` (files to unlink after commit).
    made_garbage: bool = False


@dataclass
class Operation:
    apply: Callable[[OpContext], Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    #: Directories to fsync before the commit (where new message files were created).
    dirs: frozenset[str] = frozenset()
    #: Called on the commit thread with True once committed, False if certainly not
    #: (rolled back, failed or cancelled), None if unknown (COMMIT itself failed); used to
    #: forget or remove message files.
    after: Callable[[bool | None], None] | None = None


class GroupCommitter:
    """Two threads in a pipeline: the *syncer* fsyncs the directories of the next batch
    while the *committer* commits the previous one, so the two waits for the disk overlap
    instead of adding up."""

    def __init__(self, conn: sqlite3.Connection, *, max_batch: int,
                 publish: Callable[[list[StoreEvent]], None],
                 garbage_made: Callable[[], None]) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._publish = publish
        self._garbage_made = garbage_made
        self._queue: deque[Operation] = deque()  # submitted
        self._ready: deque[Operation] = deque()  # directories durable, awaiting the commit
        self._cond = threading.Condition()
        self._stopping = False
        self._syncer_done = False
        self._syncer = threading.Thread(target=self._sync_loop, name="mailkeep-store-sync",
                                        daemon=True)
        self._thread = threading.Thread(target=self._commit_loop,
                                        name="mailkeep-store-commit", daemon=True)
        self._syncer.start()
        self._thread.start()

    def submit(self, op: Operation) -> concurrent.futures.Future:
        with self._cond:
            if self._stopping:
                raise StoreError("the store is closed", reason="closed")
            self._queue.append(op)
            self._cond.notify_all()
        return op.future

    def stop(self) -> None:
        """Commit what is queued, then end the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._syncer.join()
        self._thread.join()

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    self._syncer_done = True
                    self._cond.notify_all()
                    return
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), self._max_batch))]
            try:
                live = self._sync_batch(batch)
            except BaseException:  # a bug here must not leave callers waiting forever
                logger.exception("store sync thread failed")
                for op in batch:
                    _finish(op, False, StoreIOError("internal error in the store"), None)
                continue
            with self._cond:
                self._ready.extend(live)
                self._cond.notify_all()

    def _sync_batch(self, batch: list[Operation]) -> list[Operation]:
        """Drop cancelled operations; make the new directory entries durable."""
        live: list[Operation] = []
        for op in batch:
            if op.future.set_running_or_notify_cancel():
                live.append(op)
            elif op.after is not None:
                op.after(False)
        dirs = set().union(*(op.dirs for op in live))
        try:
            for path in sorted(dirs):
                fsync_dir(path)
        except OSError as exc:
            logger.error("fsync of a message directory failed: %s", exc)
            failed = [op for op in live if op.dirs]
            for op in failed:
                _finish(op, False, StoreIOError(f"cannot make the message durable: {exc}"), None)
            live = [op for op in live if not op.dirs]
        return live

    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._syncer_done:
                    self._cond.wait()
                if not self._ready:
                    return
                batch = [self._ready.popleft()
                         for _ in range(min(len(self._ready), self._max_batch))]
            try:
                self._commit_batch(batch)
            except BaseException:  # a bug here must not leave callers waiting forever
                logger.exception("store commit thread failed")
                for op in batch:
                    _finish(op, False, StoreIOError("internal error in the store"), None)

    def _commit_batch(self, live: list[Operation]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            logger.error("cannot start a store transaction: %s", exc)
            for op in live:
                _finish(op, False, StoreIOError(f"the store database is unavailable: {exc}"),
                        None)
            return
        now = time.time()
        outcomes: list[tuple[Operation, BaseException | None, Any, OpContext]] = []
        aborted: BaseException | None = None
        for op in live:
            ctx = OpContext(conn, now)
            conn.execute("SAVEPOINT op")
            try:
                value = op.apply(ctx)
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                except sqlite3.Error as rollback_exc:
                    # SQLite already rolled the whole transaction back (disk full, I/O).
                    aborted = rollback_exc
                    outcomes.append((op, exc, None, ctx))
                    break
                if not isinstance(exc, StoreError | ValueError | TypeError):
                    logger.error("store operation failed: %r", exc, exc_info=exc)
                outcomes.append((op, exc, None, ctx))
            else:
                conn.execute("RELEASE op")
                outcomes.append((op, None, value, ctx))
        # Whether a failed COMMIT reached the disk is unknowable (the WAL may hold the
        # commit frame even though its fsync failed): such operations are reported as
        # failed, but their files are kept for close()/recovery to check.
        outcome_unknown = False
        if aborted is None:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                aborted = exc
                outcome_unknown = True
        if aborted is not None:
            logger.error("store commit failed: %s", aborted)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.exception("store rollback failed")
            error = StoreIOError(f"the store could not commit: {aborted}")
            failed_ops = {id(op) for op, exc, _, _ in outcomes if exc is not None}
            for op in live:
                state = None if outcome_unknown and id(op) not in failed_ops else False
                _finish(op, state, error, None)
            return
        events: list[StoreEvent] = []
        garbage = False
        for op, exc, value, ctx in outcomes:
            if exc is None:
                events.extend(ctx.events)
                garbage = garbage or ctx.made_garbage
            _finish(op, exc is None, _public_error(exc), value)
        if events:
            self._publish(events)
        if garbage:
            self._garbage_made()


def _public_error(exc: BaseException | None) -> BaseException | None:
    if exc is None or isinstance(exc, StoreError | ValueError | TypeError):
        return exc
    if isinstance(exc, sqlite3.Error | OSError):
        return StoreIOError(f"store failure: {exc}")
    return exc


def _finish(op: Operation, committed: bool | None, exc: BaseException | None, value: Any) -> None:
    if op.after is not None:
        try:
            op.after(committed)
        except Exception:
            logger.exception("store post-commit step failed")
    if op.future.done():
        return
    if exc is not None:
        op.future.set_exception(exc)
    else:
        op.future.set_result(value)
