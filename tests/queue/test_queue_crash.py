"""Durability and concurrency of the queue with real processes.

- kill -9 in the middle of a stream of enqueues: every message whose ``enqueue`` returned is
  queued, byte-exact, after reopening; nothing half-written is ever due; no file is left
  without its row.
- N concurrent enqueues share commits (counted as fsyncs of the messages directory).
- The CLI (another process) administers the queue while a server-like process writes it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from queue_helpers import new_message
from queue_worker import expected_file

import mailkeep.store.committer as committer
from mailkeep.queue.store import QueueStore

WORKER = Path(__file__).with_name("queue_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def start_worker(queue_dir: Path, ack_log: Path, spool: Path, tag: str,
                 count: int | None = None) -> subprocess.Popen:
    args = [sys.executable, str(WORKER), str(queue_dir), str(ack_log), str(spool), tag]
    if count is not None:
        args.append(str(count))
    return subprocess.Popen(args, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def read_log(ack_log: Path) -> tuple[set[str], set[str]]:
    queued, finished = set(), set()
    if ack_log.exists():
        for line in ack_log.read_text().splitlines():
            kind, ident = line.split()
            (queued if kind == "Q" else finished).add(ident)
    return queued, finished


def check_queue(queue_dir: Path, ack_log: Path) -> int:
    """Reopen (recovery runs) and verify; returns how many messages are queued."""
    with QueueStore(queue_dir) as queue:
        queued, finished = read_log(ack_log)
        entries = {e.queue_id: e for e in queue.list()}
        # Every seventh message is being finished by the worker: one killed after the
        # commit but before its "D" line is gone without being logged as finished.
        missing = {m for m in queued - finished - set(entries) if int(m[-6:]) % 7}
        assert not missing, f"acknowledged messages lost: {sorted(missing)[:10]}"
        for queue_id, entry in entries.items():
            data = queue.message_path(queue_id).read_bytes()
            assert len(data) == entry.size, f"{queue_id}: partial file queued"
            assert data == expected_file(queue_id), f"{queue_id}: content differs"
            assert [r.address for r in entry.recipients] == ["rcpt@example.net"]
        due = {e.queue_id for e in queue.due(time.time() + 1, limit=100_000)}
        assert due == set(entries)
        on_disk = set(os.listdir(queue_dir / "messages"))
        assert on_disk == set(entries), f"files without rows: {sorted(on_disk - set(entries))}"
        return len(entries)


@pytest.mark.timeout(90)
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    queue_dir, ack_log, spool = tmp_path / "queue", tmp_path / "acks", tmp_path / "spool"
    spool.mkdir()
    rng = random.Random(4)
    total_killed_with_acks = 0
    for round_number in range(4):
        proc = start_worker(queue_dir, ack_log, spool, f"R{round_number}A")
        before = len(read_log(ack_log)[0])
        deadline = time.monotonic() + 20
        # Wait for this round's first acknowledgement, then kill at a random moment.
        while len(read_log(ack_log)[0]) == before:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the worker never acknowledged a message"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()
        if len(read_log(ack_log)[0]) > before:
            total_killed_with_acks += 1
        count = check_queue(queue_dir, ack_log)
        assert count > 0
    queued, finished = read_log(ack_log)
    assert total_killed_with_acks == 4
    assert len(queued) > 20 and finished, "the workload was too small to mean anything"


def test_concurrent_enqueues_share_commits(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[str] = []
    real = committer.fsync_dir

    def counting_fsync_dir(path) -> None:
        syncs.append(str(path))
        real(path)

    monkeypatch.setattr(committer, "fsync_dir", counting_fsync_dir)
    queue = QueueStore(tmp_path / "queue")
    count = 60

    async def run() -> None:
        await asyncio.gather(*(queue.enqueue([new_message(f"GC{i:04d}")])
                               for i in range(count)))

    try:
        asyncio.run(run())
        assert queue.count() == count
        message_dir_syncs = [p for p in syncs if p.endswith("messages")]
        # One fsync of the directory per shared commit; without group commit there
        # would be one per message.
        assert 1 <= len(message_dir_syncs) <= count // 2, len(message_dir_syncs)
    finally:
        queue.close()


@pytest.mark.timeout(90)
def test_cli_administers_while_a_server_writes(tmp_path: Path) -> None:
    config = tmp_path / "mailkeep.toml"
    config.write_text('hostname = "mail.example.com"\ndata_dir = "data"\n\n'
                      '[domains."example.com"]\n\n[accounts."me@example.com"]\n')
    queue_dir = tmp_path / "data" / "queue"
    ack_log, spool = tmp_path / "acks", tmp_path / "spool"
    spool.mkdir()
    QueueStore(queue_dir).close()
    total = 300
    proc = start_worker(queue_dir, ack_log, spool, "CLI", total)
    env = {**os.environ, "MAILKEEP_CONFIG": str(config), "PYTHONPATH": str(ROOT / "src")}
    outputs = []
    try:
        for action in ("list", "hold", "list", "release", "retry", "list"):
            extra = ["--all"] if action in ("hold", "release", "retry") else []
            run = subprocess.run([sys.executable, "-m", "mailkeep.cli.main", "queue", action,
                                  *extra], capture_output=True, text=True, env=env,
                                 timeout=60, cwd=tmp_path)
            assert run.returncode == 0, run.stderr
            outputs.append(run.stdout)
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    queued, finished = read_log(ack_log)
    assert len(queued) == total
    # The CLI opened (and recovered) the queue while files were being written: none of
    # the server's messages was taken for debris.
    assert check_queue(queue_dir, ack_log) == total - len(finished)
    with QueueStore(queue_dir) as queue:
        assert not any(e.hold for e in queue.list()), "release --all left messages held"
    assert any("Request" in out for out in outputs)
