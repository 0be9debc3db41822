"""The queue under concurrent use: enqueues and attempt records that the group committer
applies together come out exactly as if applied one by one, and what ``enqueue`` returns
is what was committed."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path

import pytest
from queue_helpers import body, new_message

import mailkeep.queue.store as store_module
from mailkeep.queue.store import (
    MEMORY_COPY_LIMIT,
    DuplicateQueueId,
    NewMessage,
    QueuedRecipient,
    QueueStore,
    RecipientOutcome,
)


def _files(queue: QueueStore) -> set[str]:
    deadline = time.monotonic() + 5
    expected_gone = True
    while expected_gone and time.monotonic() < deadline:
        names = set(os.listdir(queue.messages_dir))
        rows = {e.queue_id for e in queue.list()}
        expected_gone = names != rows
        if expected_gone:
            time.sleep(0.01)
    return set(os.listdir(queue.messages_dir))


def test_concurrent_enqueues_and_records_end_as_one_by_one(tmp_path: Path) -> None:
    """Sixty messages queued at once, then one attempt each, all at once: every recipient
    ends as its outcome says, finished messages are gone (rows and files), the others keep
    their progress, attempts count once."""
    queue = QueueStore(tmp_path / "queue")
    ids = [f"BULK{n:06d}" for n in range(60)]

    async def scenario() -> list:
        queued = await asyncio.gather(*(
            queue.enqueue([new_message(qid, "a@example.net", "b@example.net")])
            for qid in ids))
        assert [q[0].queue_id for q in queued] == ids

        def outcomes(n: int) -> list[RecipientOutcome]:
            kind = n % 3
            if kind == 0:   # both delivered: finished
                return [RecipientOutcome("a@example.net", "delivered", 250, "ok"),
                        RecipientOutcome("b@example.net", "delivered", 250, "ok")]
            if kind == 1:   # one failed, one deferred: stays
                return [RecipientOutcome("a@example.net", "failed", 550, "no such user"),
                        RecipientOutcome("b@example.net", "deferred", 451, "later")]
            return [RecipientOutcome("a@example.net", "delivered", 250, "ok"),
                    RecipientOutcome("b@example.net", "failed", 550, "gone")]

        return await asyncio.gather(*(
            queue.record_attempt(qid, outcomes(n), 5000.0 + n if n % 3 == 1 else None,
                                 "451 later" if n % 3 == 1 else None)
            for n, qid in enumerate(ids)))

    results = asyncio.run(scenario())
    try:
        for n, (qid, entry) in enumerate(zip(ids, results, strict=True)):
            assert entry is not None and entry.queue_id == qid and entry.attempts == 1
            statuses = [r.status for r in entry.recipients]
            stored = queue.get(qid)
            if n % 3 == 1:
                assert statuses == ["failed", "pending"]
                assert stored == entry
                assert (stored.next_attempt, stored.last_error) == (5000.0 + n, "451 later")
                assert [r.last_code for r in stored.recipients] == [550, 451]
            else:
                assert stored is None
                assert statuses == (["delivered", "delivered"] if n % 3 == 0
                                    else ["delivered", "failed"])
        left = {qid for n, qid in enumerate(ids) if n % 3 == 1}
        assert {e.queue_id for e in queue.list()} == left
        assert _files(queue) == left
    finally:
        queue.close()


def test_records_for_gone_entries_beside_others(tmp_path: Path) -> None:
    """Attempts recorded together, one for an entry deleted meanwhile and carrying a
    bounce: that one returns None and queues nothing; the others are recorded."""
    queue = QueueStore(tmp_path / "queue")

    async def scenario():
        for qid in ("KEEP000001", "GONE000001", "DONE000001"):
            await queue.enqueue([new_message(qid)])
        assert queue.delete(["GONE000001"]) == 1
        bounce = new_message("NOTE000001", sender="", kind="bounce")
        return await asyncio.gather(
            queue.record_attempt("KEEP000001",
                                 [RecipientOutcome("you@example.net", "deferred", 421, "busy")],
                                 9999.0, "421 busy"),
            queue.record_attempt("GONE000001",
                                 [RecipientOutcome("you@example.net", "failed", 550, "no")],
                                 None, notices=[bounce]),
            queue.record_attempt("DONE000001",
                                 [RecipientOutcome("you@example.net", "delivered", 250, "ok")],
                                 None))

    kept, gone, done = asyncio.run(scenario())
    try:
        assert gone is None
        assert queue.get("NOTE000001") is None
        assert kept is not None and queue.get("KEEP000001").next_attempt == 9999.0
        assert done is not None and not done.pending() and queue.get("DONE000001") is None
        assert _files(queue) == {"KEEP000001"}
    finally:
        queue.close()


def test_enqueue_returns_the_entries_as_committed(tmp_path: Path) -> None:
    queue = QueueStore(tmp_path / "queue")
    spool = tmp_path / "spooled"
    spool.write_bytes(body("spooled"))
    large = body("large", "x" * (MEMORY_COPY_LIMIT + 10))

    async def scenario():
        return await asyncio.gather(
            queue.enqueue([NewMessage(
                queue_id="SMALL00001", sender="me@example.com",
                recipients=[QueuedRecipient("a@example.net"),
                            QueuedRecipient("b@example.net", orcpt=("rfc822", "B@example.net"),
                                            notify=("SUCCESS", "DELAY"))],
                prefix=b"DKIM-Signature: v=1\r\n", source=b"junk" + body("small"),
                source_offset=4, envid="E-1", ret="HDRS", smtputf8=True,
                body_type="8BITMIME", requiretls=True, account="me@example.com",
                dkim_selectors=("example.com:s1",), next_attempt=7.0)]),
            queue.enqueue([new_message("SPOOL00001", source=spool)]),
            queue.enqueue([new_message("LARGE00001", source=large)]))

    try:
        small, from_file, big = asyncio.run(scenario())
        for (entry,) in (small, from_file, big):
            assert entry == queue.get(entry.queue_id)  # every field but the bytes
            assert entry.size == queue.message_path(entry.queue_id).stat().st_size
        # The first attempt of a small message needs no read of its file.
        assert small[0].content == queue.message_path("SMALL00001").read_bytes()
        assert from_file[0].content is None and big[0].content is None
        assert queue.get("SMALL00001").content is None
        assert queue.enqueue_sync([new_message("SYNC000001")])[0] == queue.get("SYNC000001")
    finally:
        queue.close()


def test_a_file_removed_before_its_lock_is_written_again(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """recover() in another process (a `mailkeep queue` command) may remove a file
    between its creation and its lock, taking it for a crashed writer's leftover: the
    writer notices and creates it again, and nothing is lost."""
    queue = QueueStore(tmp_path / "queue")
    real_flock = fcntl.flock
    removed: list[str] = []

    def flock_after_recover(fd: int, operation: int) -> None:
        if not removed:
            path = queue.messages_dir / "RACE000001"
            os.unlink(path)  # as recover() does to an unlocked file without a row
            removed.append(path.name)
        real_flock(fd, operation)

    monkeypatch.setattr(store_module.fcntl, "flock", flock_after_recover)
    try:
        asyncio.run(queue.enqueue([new_message("RACE000001")]))
        assert removed == ["RACE000001"]
        assert queue.message_path("RACE000001").read_bytes() == (
            b"Received: by mail.example.com\r\n" + body("RACE000001"))
        assert queue.get("RACE000001") is not None
    finally:
        monkeypatch.setattr(store_module.fcntl, "flock", real_flock)
        queue.close()


def test_a_duplicate_id_leaves_the_queued_file_alone(tmp_path: Path) -> None:
    queue = QueueStore(tmp_path / "queue")
    try:
        asyncio.run(queue.enqueue([new_message("DUPL000001", source=body("first"))]))
        with pytest.raises(DuplicateQueueId):
            asyncio.run(queue.enqueue([new_message("DUPL000001", source=body("second"))]))
        assert queue.message_path("DUPL000001").read_bytes().endswith(body("first"))
        assert queue.count() == 1
        assert os.listdir(queue.tmp_dir) == []
    finally:
        queue.close()
