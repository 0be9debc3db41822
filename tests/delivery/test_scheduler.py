"""The queue manager against a real queue and real sockets: retries, lifetime, bounces."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from dataclasses import replace
from pathlib import Path

from tests.support.procs import free_port
from tests.support.sink import SmtpSink

from mailkeep.config import parse_config_text
from mailkeep.delivery.pipeline import Pipeline
from mailkeep.queue.scheduler import Scheduler
from mailkeep.queue.store import NewMessage, QueuedRecipient, QueueStore

CONFIG = """
hostname = "mail.example.com"
data_dir = "{data}"

[domains."example.com"]

[accounts."me@example.com"]

[relays.next]
host = "[127.0.0.1]:{port}"
tls = "may"

[relays.closed]
host = "[127.0.0.1]:{closed}"
tls = "may"

[delivery]
relayhost = "next"
# Bounces to the senders wait at a closed port, where the tests can read them.
transport = {{ "elsewhere.test" = "closed" }}
mta_sts = false
dane = false

[queue]
minimal_backoff_time = "10s"
maximal_backoff_time = "20s"
maximal_queue_lifetime = "1d"
"""
MESSAGE = b"From: <sender@elsewhere.test>\r\nSubject: lifetime\r\n\r\nbody\r\n"


def _scheduler(tmp_path: Path, port: int, clock) -> tuple[Scheduler, QueueStore]:
    config = parse_config_text(CONFIG.format(data=tmp_path / "data", port=port,
                                             closed=free_port()), "t.toml")
    queue = QueueStore.for_data_dir(config.data_dir)
    return Scheduler(config, queue, Pipeline(config, store=None), data_dir=config.data_dir,
                     clock=clock), queue


async def _run_until(scheduler: Scheduler, predicate, timeout: float = 20.0) -> None:
    task = asyncio.create_task(scheduler.run())
    try:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)
    finally:
        await scheduler.stop()
        task.cancel()


def test_unreachable_relay_defers_with_backoff(tmp_path: Path) -> None:
    async def main() -> None:
        scheduler, queue = _scheduler(tmp_path, free_port(), time.time)
        await queue.enqueue([NewMessage(queue_id="DEFER000001", sender="sender@elsewhere.test",
                                        recipients=[QueuedRecipient("a@dest.test")],
                                        prefix=b"", source=MESSAGE)])
        await _run_until(scheduler, lambda: queue.get("DEFER000001").attempts >= 1)
        entry = queue.get("DEFER000001")
        assert entry.recipients[0].status == "pending"
        assert "Connection refused" in entry.last_error
        # Postfix's minimal_backoff_time, with a little jitter.
        assert 8 <= entry.next_attempt - time.time() <= 12
        queue.close()
    asyncio.run(main())


def test_mail_past_its_lifetime_fails_and_bounces_once(tmp_path: Path) -> None:
    async def main() -> None:
        later = lambda: time.time() + 2 * 86400  # noqa: E731  (two days from now)
        scheduler, queue = _scheduler(tmp_path, free_port(), later)
        await queue.enqueue([NewMessage(queue_id="EXPIRE00001", sender="sender@elsewhere.test",
                                        recipients=[QueuedRecipient("a@dest.test")],
                                        prefix=b"", source=MESSAGE)])
        await _run_until(scheduler, lambda: queue.get("EXPIRE00001") is None)
        bounces = [e for e in queue.list() if e.kind == "bounce"]
        assert len(bounces) == 1
        bounce = bounces[0]
        assert bounce.sender == "" and [r.address for r in bounce.recipients] == [
            "sender@elsewhere.test"]
        report = email.message_from_bytes(queue.message_path(bounce.queue_id).read_bytes(),
                                          policy=email.policy.default)
        text = report.as_string()
        assert "Action: failed" in text and "gave up after 1.0 days" in text
        assert "Subject: lifetime" in text, "the original header travels with the bounce"
        queue.close()
    asyncio.run(main())


def test_delivered_recipients_leave_the_queue(tmp_path: Path) -> None:
    with SmtpSink(tmp_path / "sink") as sink:
        async def main() -> None:
            scheduler, queue = _scheduler(tmp_path, sink.port, time.time)
            await queue.enqueue([
                NewMessage(queue_id=f"REUSE0000{n:02d}", sender="sender@elsewhere.test",
                           recipients=[QueuedRecipient(f"r{n}@dest.test")], prefix=b"",
                           source=MESSAGE) for n in range(10)])
            await _run_until(scheduler, lambda: queue.count() == 0)
            queue.close()
        asyncio.run(main())
        dumps = sink.wait_for(10)
        assert sorted(d.split(b"X-Rcpt-Args: <", 1)[1].split(b">")[0] for d in dumps) == \
            sorted(f"r{n}@dest.test".encode() for n in range(10))


def test_permanent_refusal_fails_at_once(tmp_path: Path) -> None:
    with SmtpSink(tmp_path / "sink", hard_reject="RCPT") as sink:
        async def main() -> None:
            scheduler, queue = _scheduler(tmp_path, sink.port, time.time)
            await queue.enqueue([NewMessage(queue_id="REFUSE00001",
                                            sender="sender@elsewhere.test",
                                            recipients=[QueuedRecipient("a@dest.test")],
                                            prefix=b"", source=MESSAGE)])
            await _run_until(scheduler, lambda: queue.get("REFUSE00001") is None)
            bounce = next(e for e in queue.list() if e.kind == "bounce")
            text = queue.message_path(bounce.queue_id).read_text()
            assert "Status: 5.3.0" in text and "Remote-MTA: dns; 127.0.0.1" in text
            queue.close()
        asyncio.run(main())


def test_delay_warning_is_sent_once(tmp_path: Path) -> None:
    async def main() -> None:
        hours = lambda: time.time() + 5 * 3600  # noqa: E731  (five hours from now)
        scheduler, queue = _scheduler(tmp_path, free_port(), hours)
        scheduler.config = replace(scheduler.config, queue=replace(
            scheduler.config.queue, delay_warning_time=4 * 3600))
        await queue.enqueue([NewMessage(queue_id="DELAY000001", sender="sender@elsewhere.test",
                                        recipients=[QueuedRecipient("a@dest.test")],
                                        prefix=b"", source=MESSAGE)])
        await _run_until(scheduler, lambda: queue.get("DELAY000001").warned)
        entry = queue.get("DELAY000001")
        assert entry.recipients[0].status == "pending", "a warning, not a bounce"
        notices = [e for e in queue.list() if e.kind == "delay"]
        assert len(notices) == 1 and notices[0].sender == ""
        text = queue.message_path(notices[0].queue_id).read_text()
        assert "Action: delayed" in text and "Will-Retry-Until:" in text
        queue.close()
        # A second attempt (a restarted server) does not warn again.
        scheduler, queue = _scheduler(tmp_path, free_port(), hours)
        scheduler.config = replace(scheduler.config, queue=replace(
            scheduler.config.queue, delay_warning_time=4 * 3600))
        queue.retry(["DELAY000001"])
        await _run_until(scheduler, lambda: queue.get("DELAY000001").attempts >= 2)
        assert len([e for e in queue.list() if e.kind == "delay"]) == 1
        queue.close()
    asyncio.run(main())
