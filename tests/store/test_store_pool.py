"""Spare message files (store/pool.py): deliveries write into files created ahead of time.

What a user must never notice: a spare file is never a message, never leaks, never holds
anything but the one message written into it, and a crash leaves nothing behind that
recovery does not clean up.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mailkeep.store import DeliveryRequest, StoreLimits, open_store
from mailkeep.store import committer as committer_module

from .conftest import ACCOUNT, message, message_files, tiny_indexer, wait_for
from .pool_worker import ACCOUNT as WORKER_ACCOUNT
from .pool_worker import message_for

WORKER = Path(__file__).with_name("pool_worker.py")


def account_dir(store, account: str = ACCOUNT) -> Path:
    return store.accounts_dir / store._account_dir(account)


def spares(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.stat().st_size == 0]


def pool_idle(store) -> bool:
    """No refill queued or running."""
    with store._file_pool._lock:
        return not any(p.scheduled for p in store._file_pool._pools.values())


async def deliver(store, subject: str = "hello", account: str = ACCOUNT, **kwargs) -> int:
    [result] = await store.deliver([DeliveryRequest(account, None, b"", message(subject),
                                                    **kwargs)])
    assert result.ok, result.message
    return result.uid


async def warm_up(store, account: str = ACCOUNT) -> Path:
    """Deliver until the account has a pool with spare files in it."""
    for n in range(3):
        await deliver(store, f"warm-up {n}", account)
    directory = account_dir(store, account)
    wait_for(lambda: store._file_pool.ready_count(directory.name) > 0)
    return directory


async def test_spares_are_never_messages_and_close_removes_them(data_dir: Path) -> None:
    store = open_store(data_dir, indexer=tiny_indexer)
    store.ensure_account(ACCOUNT)
    directory = await warm_up(store)
    uids = [await deliver(store, f"n{n}") for n in range(40)]
    assert spares(directory), "the pool should hold spare files while the store is open"
    infos = store.list_messages(ACCOUNT, "INBOX")
    assert [i.uid for i in infos] == list(range(1, 44)) and uids == list(range(4, 44))
    assert store.usage(ACCOUNT).messages == 43
    assert store.get_mailbox(ACCOUNT, "INBOX").messages == 43
    for n, uid in enumerate(uids):
        assert store.read_message(ACCOUNT, "INBOX", uid) == message(f"n{n}")
    store.close()
    # Exactly the messages remain, and the next open has nothing to recover.
    assert len(list(directory.iterdir())) == 43 == len(message_files(directory))
    with open_store(data_dir, indexer=tiny_indexer) as again:
        assert again.recovery.dead_writers == [] and again.recovery.orphan_files == 0
        assert again.usage(ACCOUNT).messages == 43


@pytest.mark.timeout(60)
def test_kill_9_leaves_spares_to_recovery_and_the_pool_works_again(data_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(WORKER), str(data_dir), "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [directory] = (data_dir / "store" / "accounts").iterdir()
    left = spares(directory)
    assert left, "the killed process had spare files"
    with open_store(data_dir, indexer=tiny_indexer) as store:
        # Recovery removed the dead writer's spares like any uncommitted file...
        assert store.recovery.dead_writers and store.recovery.orphan_files == len(left)
        assert not any(p.exists() for p in left)
        assert [m.uid for m in store.list_messages(WORKER_ACCOUNT, "INBOX")] == [1, 2, 3, 4, 5]
        for uid in range(1, 6):
            assert store.read_message(WORKER_ACCOUNT, "INBOX", uid) == message_for(uid - 1)

        # ... and this process builds its own pool and delivers through it.
        async def more() -> None:
            await warm_up(store, WORKER_ACCOUNT)
            for n in range(20):
                await deliver(store, f"after {n}", WORKER_ACCOUNT)

        asyncio.run(more())
        assert store.usage(WORKER_ACCOUNT).messages == 28
    assert len(message_files(directory)) == len(list(directory.iterdir())) == 28


async def test_a_spare_that_is_not_empty_is_never_appended_to(store) -> None:
    directory = await warm_up(store)
    for path in spares(directory):  # as if something had written into them
        path.write_bytes(b"JUNK THAT MUST NOT SURVIVE\r\n")
    uids = [await deliver(store, f"n{n}") for n in range(5)]
    for n, uid in enumerate(uids):
        assert store.read_message(ACCOUNT, "INBOX", uid) == message(f"n{n}")


async def test_missing_spares_fall_back_to_new_files(store) -> None:
    directory = await warm_up(store)
    for path in spares(directory):  # removed behind the store's back
        path.unlink()
    uids = [await deliver(store, f"n{n}") for n in range(5)]
    for n, uid in enumerate(uids):
        assert store.read_message(ACCOUNT, "INBOX", uid) == message(f"n{n}")


async def test_the_pool_is_bounded(data_dir: Path) -> None:
    limits = StoreLimits(pool_files_per_account=4, max_pool_files=6)
    accounts = [f"user{n}@example.com" for n in range(3)]
    with open_store(data_dir, indexer=tiny_indexer, limits=limits) as store:
        for account in accounts:
            store.ensure_account(account)
        for _round in range(6):
            for account in accounts:
                await deliver(store, "hello", account)
        wait_for(lambda: pool_idle(store))
        counts = [len(spares(account_dir(store, a))) for a in accounts]
        assert all(c <= 4 for c in counts) and sum(counts) <= 6, counts


async def test_the_pool_can_be_turned_off(data_dir: Path) -> None:
    limits = StoreLimits(pool_files_per_account=0)
    with open_store(data_dir, indexer=tiny_indexer, limits=limits) as store:
        store.ensure_account(ACCOUNT)
        for n in range(10):
            await deliver(store, f"n{n}")
        assert spares(account_dir(store)) == []


async def test_a_deleted_account_takes_its_spares_with_it(store, data_dir: Path) -> None:
    old = await warm_up(store)
    store.delete_account(ACCOUNT)
    wait_for(lambda: not old.exists())
    store.ensure_account(ACCOUNT)
    uid = await deliver(store, "new life")
    assert uid == 1 and store.read_message(ACCOUNT, "INBOX", 1) == message("new life")
    assert account_dir(store) != old


async def test_only_new_files_cost_a_directory_fsync(store, monkeypatch) -> None:
    """A spare's directory entry was made durable when it was created; a file created by
    the delivery itself has its directory fsync'd before the commit that shows it."""
    directory = await warm_up(store)
    synced: list[str] = []
    real = committer_module.fsync_dir
    monkeypatch.setattr(committer_module, "fsync_dir",
                        lambda path: (synced.append(str(path)), real(path)))
    await deliver(store, "into a spare")
    assert synced == []
    store._file_pool.forget(directory.name)  # no spares: the delivery creates its file
    store._file_pool.enabled = False
    await deliver(store, "into a new file")
    assert synced == [str(directory)]



async def test_an_account_recreated_by_another_process_is_noticed(store, data_dir) -> None:
    """The directory of an account is remembered between deliveries; if another process
    deletes the account and creates it again meanwhile, a delivery never commits a row
    pointing into the old directory (which is going away): it fails with a temporary
    error, and the next one goes to the new account."""
    await deliver(store, "first")
    old = account_dir(store)
    other = open_store(data_dir, indexer=tiny_indexer)
    # The snapshot keeps the old directory on disk for now.
    with other, other.snapshot(ACCOUNT):
        other.delete_account(ACCOUNT)
        other.ensure_account(ACCOUNT)
        [lost] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message("x"))])
        assert not lost.ok and lost.error == "io"
        assert old.exists() and len(message_files(old)) == 1  # "first"; "x" was removed
        [again] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message("again"))])
        assert again.ok and again.uid == 1
        assert other.read_message(ACCOUNT, "INBOX", 1) == message("again")
