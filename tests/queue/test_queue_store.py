"""The queue store API: what callers (the scheduler, submission, the CLI) see."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from pathlib import Path

import pytest
from queue_helpers import body, new_message

from mailkeep.queue.store import (
    DuplicateQueueId,
    NewMessage,
    QueuedRecipient,
    QueueError,
    QueueStore,
    RecipientOutcome,
    apply_outcomes,
)


def enqueue(queue: QueueStore, *messages: NewMessage) -> None:
    asyncio.run(queue.enqueue(list(messages)))


def record(queue: QueueStore, queue_id: str, outcomes: list[RecipientOutcome],
           next_attempt: float | None, error: str | None = None, **kwargs):
    return asyncio.run(queue.record_attempt(queue_id, outcomes, next_attempt, error, **kwargs))


def files(queue: QueueStore) -> set[str]:
    return set(os.listdir(queue.messages_dir))


def assert_files(queue: QueueStore, expected: set[str]) -> None:
    """The message files are ``expected`` (finished and deleted messages' files are
    removed just after their rows, by a background thread: allow it a moment)."""
    deadline = time.monotonic() + 5
    while files(queue) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert files(queue) == expected


def test_enqueue_keeps_envelope_and_exact_bytes(queue: QueueStore) -> None:
    source = b"junk" + body("envelope")
    message = NewMessage(
        queue_id="ENV0000001", sender="me@example.com",
        recipients=[QueuedRecipient("a@example.net"),
                    QueuedRecipient("b@example.net", orcpt=("rfc822", "B@example.net"),
                                    notify=("SUCCESS", "DELAY"))],
        prefix=b"DKIM-Signature: v=1\r\n", source=source, source_offset=4, envid="E-1",
        ret="HDRS", smtputf8=True, body_type="8BITMIME", requiretls=True,
        account="me@example.com", dkim_selectors=("example.com:s1", "example.com:e1"),
        next_attempt=123.0)
    before = time.time()
    enqueue(queue, message)
    entry = queue.get("ENV0000001")
    assert entry is not None
    expected = b"DKIM-Signature: v=1\r\n" + body("envelope")
    assert queue.message_path("ENV0000001").read_bytes() == expected
    assert entry.size == len(expected)
    assert before <= entry.created <= time.time()
    assert (entry.sender, entry.envid, entry.ret, entry.smtputf8, entry.body_type,
            entry.requiretls, entry.kind, entry.account) == (
        "me@example.com", "E-1", "HDRS", True, "8BITMIME", True, "normal", "me@example.com")
    assert entry.dkim_selectors == ("example.com:s1", "example.com:e1")
    assert (entry.hold, entry.attempts, entry.next_attempt, entry.last_error,
            entry.warned) == (False, 0, 123.0, None, False)
    first, second = entry.recipients
    assert (first.address, first.orcpt, first.notify, first.status, first.attempts) == (
        "a@example.net", None, None, "pending", 0)
    assert second.orcpt == ("rfc822", "B@example.net")
    assert second.notify == ("SUCCESS", "DELAY")
    assert entry.pending() == entry.recipients


def test_spool_file_is_copied_from_its_offset(queue: QueueStore, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    content = b"".join(b"line %07d of a big message\r\n" % i for i in range(120_000))
    spool.write_bytes(b"X" * 1000 + content)  # ~3.7 MB
    enqueue(queue, new_message("BIG0000001", prefix=b"P: 1\r\n", source=spool,
                               source_offset=1000))
    spool.unlink()  # the queue has its own copy
    assert queue.message_path("BIG0000001").read_bytes() == b"P: 1\r\n" + content
    assert queue.get("BIG0000001").size == 6 + len(content)


def test_a_batch_is_all_or_nothing(queue: QueueStore) -> None:
    with pytest.raises(ValueError, match="queue id"):
        enqueue(queue, new_message("GOOD000001"), new_message("../escape"))
    assert queue.count() == 0
    assert_files(queue, set())
    assert os.listdir(queue.tmp_dir) == []


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65, "sp ace", "é1234"])
def test_queue_ids_must_be_safe_file_names(queue: QueueStore, bad: str) -> None:
    with pytest.raises(ValueError):
        enqueue(queue, new_message(bad))
    with pytest.raises(ValueError):
        queue.message_path(bad)
    assert queue.count() == 0


@pytest.mark.parametrize("change", [
    {"recipients": []},
    {"kind": "spam"},
    {"ret": "ALL"},
    {"dkim_selectors": ("no-colon",)},
])
def test_malformed_messages_are_refused(queue: QueueStore, change: dict) -> None:
    message = new_message("BAD0000001")
    for key, value in change.items():
        setattr(message, key, value)
    with pytest.raises(ValueError):
        enqueue(queue, message)
    assert queue.count() == 0
    assert_files(queue, set())


@pytest.mark.parametrize("notify", [(), ("NEVER", "FAILURE"), ("SOMETIMES",)])
def test_bad_notify_is_refused(queue: QueueStore, notify: tuple[str, ...]) -> None:
    message = new_message("BAD0000002")
    message.recipients = [QueuedRecipient("a@example.net", notify=notify)]
    with pytest.raises(ValueError, match="NOTIFY"):
        enqueue(queue, message)


def test_duplicate_id_is_refused_and_the_first_message_kept(queue: QueueStore) -> None:
    enqueue(queue, new_message("DUP0000001", source=b"first\r\n"))
    with pytest.raises(DuplicateQueueId):
        enqueue(queue, new_message("DUP0000001", source=b"second\r\n"))
    assert queue.message_path("DUP0000001").read_bytes().endswith(b"first\r\n")
    assert queue.count() == 1


def test_enqueue_sync_is_durable_on_return(queue: QueueStore) -> None:
    queue.enqueue_sync([new_message("SYNC000001")])
    # A second, independent opening (another process would do the same) sees it.
    with QueueStore(queue.queue_dir) as other:
        assert [e.queue_id for e in other.list()] == ["SYNC000001"]


def test_due_skips_held_and_future_messages_oldest_first(queue: QueueStore) -> None:
    now = time.time()
    enqueue(queue, new_message("DUE0000001"))
    enqueue(queue, new_message("DUE0000002", hold=True))
    enqueue(queue, new_message("DUE0000003", next_attempt=now + 600))
    enqueue(queue, new_message("DUE0000004"))
    assert [e.queue_id for e in queue.due(now)] == ["DUE0000001", "DUE0000004"]
    assert [e.queue_id for e in queue.due(now, limit=1)] == ["DUE0000001"]
    assert queue.next_due_time() == 0.0
    assert [e.queue_id for e in queue.due(now + 601)] == ["DUE0000001", "DUE0000003",
                                                          "DUE0000004"]
    assert [e.queue_id for e in queue.list()] == ["DUE0000001", "DUE0000002", "DUE0000003",
                                                  "DUE0000004"]


def test_next_due_time(queue: QueueStore) -> None:
    assert queue.next_due_time() is None
    enqueue(queue, new_message("NDT0000001", next_attempt=500.0, hold=True))
    assert queue.next_due_time() is None  # held messages are never due
    enqueue(queue, new_message("NDT0000002", next_attempt=700.0))
    enqueue(queue, new_message("NDT0000003", next_attempt=600.0))
    assert queue.next_due_time() == 600.0


def test_deferral_records_reasons_and_schedule(queue: QueueStore) -> None:
    enqueue(queue, new_message("DEF0000001", "a@example.net", "b@example.net"))
    later = time.time() + 300
    entry = record(queue, "DEF0000001", [
        RecipientOutcome("a@example.net", "deferred", 451, "4.3.0 try later",
                         remote_mta="mx.example.net"),
        RecipientOutcome("b@example.net", "delivered", 250, "2.0.0 ok")], later,
        "451 4.3.0 try later")
    assert [r.status for r in entry.recipients] == ["pending", "delivered"]
    stored = queue.get("DEF0000001")
    assert stored == entry
    a, b = stored.recipients
    assert (a.last_code, a.last_text, a.attempts, a.remote_mta) == (
        451, "4.3.0 try later", 1, "mx.example.net")
    assert (b.status, b.last_code) == ("delivered", 250)
    assert (stored.attempts, stored.next_attempt, stored.last_error) == (
        1, later, "451 4.3.0 try later")
    assert [r.address for r in stored.pending()] == ["a@example.net"]
    assert queue.due(time.time()) == []
    # next_attempt=None leaves the schedule alone.
    entry = record(queue, "DEF0000001", [
        RecipientOutcome("a@example.net", "deferred", None, "connection refused")], None)
    assert entry.next_attempt == later and entry.attempts == 2
    assert entry.recipients[0].attempts == 2 and entry.recipients[0].last_code is None
    assert entry.last_error is None


def test_finishing_removes_entry_and_file_and_returns_the_final_state(
        queue: QueueStore) -> None:
    enqueue(queue, new_message("FIN0000001", "a@example.net", "b@example.net"))
    entry = record(queue, "FIN0000001", [
        RecipientOutcome("a@example.net", "failed", 550, "5.1.1 no such user"),
        RecipientOutcome("b@example.net", "delivered", 250, "ok")], time.time() + 60)
    assert [(r.status, r.last_code) for r in entry.recipients] == [("failed", 550),
                                                                    ("delivered", 250)]
    assert entry.pending() == []
    assert queue.get("FIN0000001") is None
    assert queue.count() == 0
    assert_files(queue, set())


def test_outcomes_for_repeated_addresses_update_each_copy(queue: QueueStore) -> None:
    enqueue(queue, new_message("REP0000001", "a@example.net", "a@example.net"))
    entry = record(queue, "REP0000001", [
        RecipientOutcome("a@example.net", "delivered", 250, "ok"),
        RecipientOutcome("a@example.net", "deferred", 450, "busy"),
        RecipientOutcome("nobody@example.net", "failed", 550, "ignored")], 0.0)
    assert [r.status for r in entry.recipients] == ["delivered", "pending"]
    assert queue.get("REP0000001").recipients[1].last_text == "busy"


def test_unknown_outcome_status_is_an_error(queue: QueueStore) -> None:
    enqueue(queue, new_message("UNK0000001"))
    with pytest.raises(ValueError, match="outcome"):
        record(queue, "UNK0000001", [RecipientOutcome("you@example.net", "lost", 0, "")], 0)
    assert queue.get("UNK0000001").attempts == 0


def test_record_attempt_on_a_deleted_entry(queue: QueueStore) -> None:
    enqueue(queue, new_message("GONE000001"))
    assert queue.delete(["GONE000001"]) == 1
    notice = new_message("GONEDSN001", sender="", kind="bounce")
    result = record(queue, "GONE000001", [
        RecipientOutcome("you@example.net", "failed", 550, "no")], None, notices=[notice])
    assert result is None
    # The entry was deleted by an administrator: no bounce for it.
    assert queue.count() == 0
    assert_files(queue, set())


def test_notices_are_queued_with_the_attempt(queue: QueueStore) -> None:
    enqueue(queue, new_message("ORIG000001", "a@example.net"))
    before = queue.get("ORIG000001")
    outcomes = [RecipientOutcome("a@example.net", "failed", 550, "5.1.1 unknown")]
    preview = apply_outcomes(before, outcomes)
    assert preview.pending() == [] and before.pending() != []  # pure: before is unchanged
    bounce = new_message("BNCE000001", "me@example.com", sender="", kind="bounce",
                         source=b"Subject: bounce\r\n\r\nx\r\n", prefix=b"")
    final = record(queue, "ORIG000001", outcomes, None, notices=[bounce])
    assert final.recipients == preview.recipients
    assert [e.queue_id for e in queue.list()] == ["BNCE000001"]
    entry = queue.get("BNCE000001")
    assert (entry.sender, entry.kind) == ("", "bounce")
    assert_files(queue, {"BNCE000001"})


def test_mark_warned(queue: QueueStore) -> None:
    enqueue(queue, new_message("WARN000001"))
    warning = new_message("WARNDSN001", sender="", kind="delay")
    asyncio.run(queue.mark_warned("WARN000001", notices=[warning]))
    assert queue.get("WARN000001").warned is True
    assert queue.get("WARNDSN001").kind == "delay"
    asyncio.run(queue.mark_warned("NOSUCH0001", notices=[new_message("WARNDSN002")]))
    assert queue.get("WARNDSN002") is None


def test_hold_release_retry_delete(queue: QueueStore) -> None:
    later = time.time() + 3600
    for n in range(1, 4):
        enqueue(queue, new_message(f"ADM000000{n}", next_attempt=later))
    assert queue.hold(["ADM0000001", "ADM0000002", "NOSUCH0001"]) == 2
    assert queue.hold(["ADM0000001"]) == 0  # already held
    assert [e.hold for e in queue.list()] == [True, True, False]
    assert queue.retry(None) == 1  # held messages stay held
    assert [e.queue_id for e in queue.due(time.time())] == ["ADM0000003"]
    assert queue.release(["ADM0000001"]) == 1
    released = queue.get("ADM0000001")
    assert not released.hold and released.next_attempt <= time.time()
    assert queue.release(None) == 1
    assert queue.hold(None) == 3
    assert queue.delete(["ADM0000002", "NOSUCH0001"]) == 1
    assert_files(queue, {"ADM0000001", "ADM0000003"})
    assert queue.delete(None) == 2
    assert queue.count() == 0
    assert_files(queue, set())


def test_match_ids(queue: QueueStore) -> None:
    for queue_id in ("0B8K5T3P4X2MQ1", "0B8K5T3P4X2MQ2", "0C9L6V4Q5Y3NR1"):
        enqueue(queue, new_message(queue_id))
    matches = queue.match_ids(["0B8K5T3P4X2MQ1", "0c9l6v", "0B8K5T", "0B8K5", "0B8K5%",
                               "ZZZZZZZZ", "0B8K5_"])
    assert matches == {"0B8K5T3P4X2MQ1": ["0B8K5T3P4X2MQ1"],
                       "0c9l6v": ["0C9L6V4Q5Y3NR1"],
                       "0B8K5T": ["0B8K5T3P4X2MQ1", "0B8K5T3P4X2MQ2"],
                       "0B8K5": [],     # too short to be a prefix
                       "0B8K5%": [],    # not a pattern
                       "ZZZZZZZZ": [],
                       "0B8K5_": []}


def test_selectors_in_use(queue: QueueStore) -> None:
    assert queue.selectors_in_use() == set()
    enqueue(queue, new_message("SEL0000001", dkim_selectors=("example.com:a",
                                                             "example.com:b")))
    enqueue(queue, new_message("SEL0000002", dkim_selectors=("example.org:a",)))
    enqueue(queue, new_message("SEL0000003"))
    assert queue.selectors_in_use() == {"example.com:a", "example.com:b", "example.org:a"}
    record(queue, "SEL0000001", [RecipientOutcome("you@example.net", "delivered", 250,
                                                  "ok")], None)
    assert queue.selectors_in_use() == {"example.org:a"}


def test_two_openings_see_each_other(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "q") as server, QueueStore(tmp_path / "q") as cli:
        enqueue(server, new_message("TWO0000001"))
        assert [e.queue_id for e in cli.list()] == ["TWO0000001"]
        assert cli.hold(["TWO0000001"]) == 1
        assert server.due(time.time()) == []
        assert cli.delete(None) == 1
        assert server.get("TWO0000001") is None


def test_closed_queue_refuses_work(tmp_path: Path) -> None:
    queue = QueueStore(tmp_path / "q")
    queue.close()
    queue.close()  # idempotent
    with pytest.raises(QueueError):
        queue.enqueue_sync([new_message("CLOSED0001")])
    with pytest.raises(QueueError):
        queue.hold(None)


# -- recovery ----------------------------------------------------------------------------


def test_recover_removes_files_that_were_never_queued(tmp_path: Path) -> None:
    queue = QueueStore(tmp_path / "q")
    enqueue(queue, new_message("KEEP000001"))
    queue.close()
    (tmp_path / "q" / "messages" / "HALF000001").write_bytes(b"Subject: half")
    old_tmp = tmp_path / "q" / "tmp" / "OLD.1.2"
    old_tmp.write_bytes(b"partial")
    os.utime(old_tmp, (time.time() - 3600, time.time() - 3600))
    fresh_tmp = tmp_path / "q" / "tmp" / "NEW.1.2"
    fresh_tmp.write_bytes(b"partial")
    with QueueStore(tmp_path / "q") as reopened:
        assert files(reopened) == {"KEEP000001"}
        assert [e.queue_id for e in reopened.list()] == ["KEEP000001"]
        assert not old_tmp.exists()
        # Too young to judge: its writer may not have locked it yet. Never due anyway.
        assert fresh_tmp.exists()


def test_recover_leaves_files_a_live_writer_holds(tmp_path: Path) -> None:
    QueueStore(tmp_path / "q").close()
    in_flight = tmp_path / "q" / "messages" / "LIVE000001"
    in_flight.write_bytes(b"being written")
    fd = os.open(in_flight, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer in another process holds it
    try:
        QueueStore(tmp_path / "q").close()
        assert in_flight.exists()
    finally:
        os.close(fd)
    QueueStore(tmp_path / "q").close()
    assert not in_flight.exists()


def test_recover_drops_a_row_whose_file_is_gone(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    queue = QueueStore(tmp_path / "q")
    enqueue(queue, new_message("LOST000001", "a@example.net"))
    enqueue(queue, new_message("FINE000001"))
    queue.close()
    (tmp_path / "q" / "messages" / "LOST000001").unlink()
    with caplog.at_level(logging.ERROR, logger="mailkeep.queue"), \
            QueueStore(tmp_path / "q") as reopened:
        assert [e.queue_id for e in reopened.list()] == ["FINE000001"]
    lost = [r for r in caplog.records if getattr(r, "id", None) == "LOST000001"]
    assert lost and lost[0].levelno == logging.ERROR
    assert lost[0].to == "a@example.net"
