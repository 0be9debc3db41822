"""Crash safety: kill -9 at any instant loses nothing acknowledged and serves nothing partial.

A subprocess delivers in a loop (crash_worker.py) and is killed with SIGKILL at a random
moment, several times over the same store. After each kill the store is reopened, which
runs recovery, and checked: every message whose deliver() had returned is present and
byte-exact; every message present is complete; no file is left without a message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailkeep.store import open_store

from .conftest import tiny_indexer
from .crash_worker import ACCOUNT, PREFIX, message_for

WORKER = Path(__file__).with_name("crash_worker.py")


def start_worker(data_dir: Path, ack_log: Path, spool: Path, tag: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(data_dir), str(ack_log),
                             str(spool), tag], stderr=subprocess.PIPE)


def acked(ack_log: Path) -> dict[int, str]:
    out = {}
    if ack_log.exists():
        for line in ack_log.read_text().splitlines():
            uid, ident = line.split()
            out[int(uid)] = ident
    return out


def check_store(data_dir: Path, ack_log: Path) -> tuple[int, int]:
    """Reopen (recovery runs) and verify; returns (messages, dead writers recovered)."""
    with open_store(data_dir, indexer=tiny_indexer) as store:
        dead = len(store.recovery.dead_writers)
        expected = acked(ack_log)
        present = {m.uid: m for m in store.list_messages(ACCOUNT, "INBOX")}
        missing = set(expected) - set(present)
        assert not missing, f"acknowledged messages lost: {sorted(missing)[:10]}"
        referenced = set()
        for box in store.list_mailboxes(ACCOUNT):
            for info in store.list_messages(ACCOUNT, box.name):
                data = store.read_message(ACCOUNT, box.name, info.uid)
                assert len(data) == info.size, "a partial message is visible"
                ident = data.split(b"\r\n", 2)[1].split(b": ", 1)[1].decode()
                assert data == PREFIX + message_for(ident), "message content differs"
                if box.name == "INBOX" and info.uid in expected:
                    assert expected[info.uid] == ident
                referenced.add(store.message_path(ACCOUNT, box.name, info.uid).name)
        account_dir = store.message_path(ACCOUNT, "INBOX", min(present)).parent \
            if present else None
        if account_dir is not None:
            on_disk = {p.name for p in account_dir.iterdir()}
            assert on_disk == referenced, f"orphan files: {sorted(on_disk - referenced)[:5]}"
        box = store.get_mailbox(ACCOUNT, "INBOX")
        assert box.messages == len(present)
        assert box.uidnext > max(present, default=0)
        return len(present), dead


@pytest.mark.timeout(120)
def test_kill_9_while_delivering_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir, spool, ack_log = tmp_path / "data", tmp_path / "spool", tmp_path / "acked"
    spool.mkdir()
    rng = random.Random(20240229)
    last_count = 0
    for round_no in range(4):
        proc = start_worker(data_dir, ack_log, spool, f"r{round_no}")
        # Wait until it has acknowledged something in this round, then kill at a random
        # moment while it is busy.
        deadline = time.monotonic() + 30
        while len(acked(ack_log)) <= last_count:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        count, dead = check_store(data_dir, ack_log)
        assert dead == 1, "the killed writer was not recognised and recovered"
        assert count >= len(acked(ack_log))
        last_count = len(acked(ack_log))
    assert last_count > 20


@pytest.mark.timeout(120)
def test_two_processes_write_the_same_store(tmp_path: Path) -> None:
    """The CLI may import while the server delivers: UIDs stay unique, nothing is lost,
    and neither process's recovery touches the other's files in flight."""
    data_dir, spool = tmp_path / "data", tmp_path / "spool"
    spool.mkdir()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_worker(data_dir, log, spool, tag) for log, tag in zip(logs, "ab",
                                                                         strict=True)]
    try:
        deadline = time.monotonic() + 30
        while not all(len(acked(log)) > 30 for log in logs):
            for proc in procs:
                assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "workers made no progress"
            # Open and close the store meanwhile, as `mailkeep export` would.
            with open_store(data_dir, indexer=tiny_indexer) as store:
                assert store.recovery.orphan_files == 0
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    a, b = acked(logs[0]), acked(logs[1])
    assert not set(a) & set(b), "two processes were given the same UID"
    combined = {**a, **b}
    with open_store(data_dir, indexer=tiny_indexer) as store:
        for uid, ident in combined.items():
            assert store.read_message(ACCOUNT, "INBOX", uid) == PREFIX + message_for(ident)
