"""Group commit: the process's one SQLite write connection, shared by every session, merging
concurrent writes into shared transactions.

Each write is an ``Operation``: a function run inside the transaction (under its own
SAVEPOINT, so one failing operation does not undo the others), plus the directories whose
new entries must be durable before the commit. Everything pending is taken at once: each of
those directories is fsync'd once, all operations run in one transaction, which commits
once (``synchronous=FULL``: the WAL is fsync'd), and only then are the futures completed
and the change events published. Under load N concurrent deliveries share one WAL fsync,
and adjacent operations of one kind (deliveries) may be applied together by their
``bulk`` function, with a few statements for all of them.

Who commits: leader/follower. A thread that submits with ``lead=True`` (a file-writing
worker whose message is ready, or a caller that blocks anyway) and finds nobody committing
becomes the committer itself and commits everything pending, so a lone delivery goes from
its worker thread straight to the disk without waking another thread. Operations that
arrive meanwhile wait for the next batch of the same leader. Submissions that must not
block (from the asyncio loop) wake a helper thread instead, and a worker hands the role to
that helper after a few batches so that it can go back to writing files.

Writes from another process (the CLI) are serialised by SQLite's own lock; the
``busy_timeout`` makes the committer wait for them instead of failing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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

    def undo(self) -> None:
        """Roll back what the operation wrote so far, and go on (it may still succeed, as
        a delivery whose only request was refused does)."""
        self.conn.execute("ROLLBACK TO op")


class Completion(Protocol):
    """What the committer needs of an operation's future: ``concurrent.futures.Future``
    (for callers that block) or ``LoopCompletion`` (for coroutines)."""

    def set_running_or_notify_cancel(self) -> bool: ...

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException | None, /) -> None: ...


class LoopCompletion:
    """The result of a write, delivered to an asyncio future from whichever thread commits.

    Lighter than ``asyncio.wrap_future`` around a ``concurrent.futures.Future`` (no
    condition variable, no chained callbacks): completing costs one
    ``call_soon_threadsafe``. Cancelling the awaiting task cancels ``future``; an
    operation not yet committed is then dropped (``set_running_or_notify_cancel``).
    """

    __slots__ = ("_done", "_lock", "future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self._done = False
        self._lock = threading.Lock()

    def set_running_or_notify_cancel(self) -> bool:
        # Reading the state from another thread is a benign race: a cancellation that
        # lands after this check finds a committed write, as with concurrent futures.
        return not self.future.cancelled()

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any, /) -> None:
        self._complete(result, None)

    def set_exception(self, exception: BaseException | None, /) -> None:
        self._complete(None, exception)

    def _complete(self, result: Any, exception: BaseException | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        pending = getattr(_deferred, "items", None)
        if pending is not None:  # inside a commit batch: posted together at its end
            pending.append((self, result, exception))
            return
        _post(self.loop, [(self.future, result, exception)])


#: Per thread: completions collected while a batch is finished, posted by ``_lead``.
_deferred = threading.local()

_Resolution = tuple[asyncio.Future[Any], Any, BaseException | None]


def _post(loop: asyncio.AbstractEventLoop, resolutions: list[_Resolution]) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, resolutions)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _resolve(resolutions: list[_Resolution]) -> None:
    for future, result, exception in resolutions:
        if future.done():  # cancelled meanwhile
            continue
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)


@dataclass
class Operation:
    apply: Callable[[OpContext], Any]
    future: Completion = field(default_factory=concurrent.futures.Future)
    #: Directories to fsync before the commit (where new message files were created).
    dirs: frozenset[str] = frozenset()
    #: Called on the committing thread with True once committed, False if certainly not
    #: (rolled back, failed or cancelled), None if unknown (COMMIT itself failed); used to
    #: forget or remove message files.
    after: Callable[[bool | None], None] | None = None
    #: Optional: applies several operations of the same kind at once, with a few
    #: statements for all of them instead of a few each, and returns their values in
    #: order. Adjacent operations with the same ``bulk`` are offered to it together; if
    #: it raises, they are applied one by one instead, so it only has to handle the
    #: common case. ``payload`` is for it to read.
    bulk: Callable[[OpContext, list[Operation]], list[Any]] | None = None
    payload: Any = None


class GroupCommitter:
    """Serialises commits on one connection; see the module docstring."""

    def __init__(self, conn: sqlite3.Connection, *, max_batch: int,
                 publish: Callable[[list[StoreEvent]], None],
                 garbage_made: Callable[[], None], max_lead_batches: int = 4) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._max_lead_batches = max(1, max_lead_batches)
        self._publish = publish
        self._garbage_made = garbage_made
        self._queue: deque[Operation] = deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: Some thread is committing (and will look at the queue again before it stops).
        self._leading = False
        self._stopping = False
        #: Called (on the committing thread) with the seconds each batch took, from the
        #: directory fsyncs to the end of COMMIT: the metrics' commit latency.
        self.observe: Callable[[float], None] | None = None
        self._helper = threading.Thread(target=self._helper_loop,
                                        name="mailkeep-store-commit", daemon=True)
        self._helper.start()

    def submit(self, op: Operation, *, lead: bool = False) -> Completion:
        """Queue ``op``. With ``lead``, the calling thread may commit it (and whatever else
        is pending) before returning; without, it returns at once."""
        with self._lock:
            if self._stopping:
                raise StoreError("the store is closed", reason="closed")
            self._queue.append(op)
            if self._leading:
                return op.future  # the running leader takes it in its next batch
            if not lead:
                self._cond.notify_all()  # the helper thread commits it
                return op.future
            self._leading = True
        self._lead(self._max_lead_batches)
        return op.future

    def stop(self) -> None:
        """Commit what is queued, then end the helper thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._helper.join()

    def _lead(self, max_batches: int | None) -> None:
        """Commit batches while work is queued; the caller holds the leader role, which
        this gives up (to the helper thread, if work remains after ``max_batches``)."""
        done = 0
        while True:
            with self._lock:
                if not self._queue or (max_batches is not None and done >= max_batches):
                    self._leading = False
                    if self._queue or self._stopping:
                        self._cond.notify_all()
                    return
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), self._max_batch))]
            # The futures of one batch mostly belong to one asyncio loop: wake it once for
            # all of them rather than once per operation.
            _deferred.items = []
            try:
                started = time.perf_counter()
                live = self._sync_batch(batch)
                if live:
                    self._commit_batch(live)
                    observe = self.observe
                    if observe is not None:
                        observe(time.perf_counter() - started)
            except BaseException:  # a bug here must not leave callers waiting forever
                logger.exception("store commit failed")
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        logger.exception("store rollback failed")
                for op in batch:
                    if not op.future.done():
                        # Outcome unknown: the files stay for close()/recovery to check
                        # against the database, never removed on a guess.
                        _finish(op, None, StoreIOError("internal error in the store"), None)
            finally:
                _post_deferred()
            done += 1

    def _helper_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue or self._leading:
                    if self._stopping and not self._queue and not self._leading:
                        return
                    self._cond.wait()
                self._leading = True
            self._lead(None)

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

    def _apply_one(self, op: Operation, now: float,
                   outcomes: list[tuple[Operation, BaseException | None, Any, OpContext]],
                   ) -> BaseException | None:
        """Run one operation under its own SAVEPOINT; returns an error that aborted the
        whole transaction, if one did."""
        conn = self._conn
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
                outcomes.append((op, exc, None, ctx))
                return rollback_exc
            if not isinstance(exc, StoreError | ValueError | TypeError):
                logger.error("store operation failed: %r", exc, exc_info=exc)
            outcomes.append((op, exc, None, ctx))
        else:
            conn.execute("RELEASE op")
            outcomes.append((op, None, value, ctx))
        return None

    def _apply_bulk(self, group: list[Operation], now: float,
                    outcomes: list[tuple[Operation, BaseException | None, Any, OpContext]],
                    ) -> bool:
        """Apply ``group`` with its ``bulk`` function under one SAVEPOINT (named as for a
        single operation, so ``OpContext.undo`` works alike). False if it could not:
        nothing of it is left in the transaction, and the caller applies one by one."""
        conn = self._conn
        ctx = OpContext(conn, now)
        conn.execute("SAVEPOINT op")
        try:
            values = group[0].bulk(ctx, group)  # type: ignore[misc]
            if len(values) != len(group):
                raise RuntimeError("bulk apply returned the wrong number of values")
        except BaseException as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            if not isinstance(exc, NotBulk):
                logger.warning("bulk store operation failed, applying one by one: %r", exc)
            return False
        conn.execute("RELEASE op")
        # One context for the group: its events are published once, with the others.
        outcomes.append((group[0], None, values[0], ctx))
        empty = OpContext(conn, now)
        outcomes.extend((op, None, value, empty) for op, value in zip(group[1:], values[1:],
                                                                        strict=True))
        return True

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
        index = 0
        while index < len(live) and aborted is None:
            group = _bulk_group(live, index)
            index += len(group)
            if len(group) > 1 and self._apply_bulk(group, now, outcomes):
                continue
            for op in group:
                aborted = self._apply_one(op, now, outcomes)
                if aborted is not None:
                    break
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


class NotBulk(Exception):
    """Raised by a ``bulk`` function for a case it leaves to the one-by-one path."""


def _bulk_group(live: list[Operation], start: int) -> list[Operation]:
    """The operations from ``start`` that can go to one ``bulk`` call (at least one)."""
    bulk = live[start].bulk
    end = start + 1
    if bulk is not None:
        while end < len(live) and live[end].bulk == bulk:
            end += 1
    return live[start:end]


def _post_deferred() -> None:
    items: list[tuple[LoopCompletion, Any, BaseException | None]] = _deferred.items
    _deferred.items = None
    by_loop: dict[asyncio.AbstractEventLoop, list[_Resolution]] = {}
    for completion, result, exception in items:
        by_loop.setdefault(completion.loop, []).append((completion.future, result, exception))
    for loop, resolutions in by_loop.items():
        _post(loop, resolutions)


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
