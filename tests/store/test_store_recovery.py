"""What open() repairs after a crash, and what it must leave alone."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mailkeep.store import DeliveryRequest, Store, open_store

from .conftest import ACCOUNT, message, tiny_indexer


def account_dir(data_dir: Path) -> Path:
    [path] = (data_dir / "store" / "accounts").iterdir()
    return path


def fake_writer(data_dir: Path, token: str, *, alive: bool) -> int | None:
    """A writer registration as a process leaves it: locked while it lives."""
    path = data_dir / "store" / "writers" / f"{token}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if alive:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    os.close(fd)
    return None


def test_the_engine_implements_the_interface(store) -> None:
    assert isinstance(store, Store)


async def test_dead_writers_files_are_removed_live_ones_kept(data_dir: Path) -> None:
    with open_store(data_dir, indexer=tiny_indexer) as store:
        store.ensure_account(ACCOUNT)
        [ok] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    directory = account_dir(data_dir)
    dead_file = directory / "00000000deadbeef-1"
    live_file = directory / "00000000a11ea11e-7"
    dead_file.write_bytes(b"partial mess")
    live_file.write_bytes(b"being written right now")
    fake_writer(data_dir, "00000000deadbeef", alive=False)
    live_fd = fake_writer(data_dir, "00000000a11ea11e", alive=True)
    try:
        with open_store(data_dir, indexer=tiny_indexer) as store:
            assert store.recovery.dead_writers == ["00000000deadbeef"]
            assert store.recovery.orphan_files == 1
            assert not dead_file.exists()
            assert live_file.exists()
            assert store.read_message(ACCOUNT, "INBOX", ok.uid) == message()
        assert not (data_dir / "store" / "writers" / "00000000deadbeef.lock").exists()
    finally:
        os.close(live_fd)


async def test_clean_close_leaves_nothing_to_recover(data_dir: Path) -> None:
    with open_store(data_dir, indexer=tiny_indexer) as store:
        store.ensure_account(ACCOUNT)
        await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    assert list((data_dir / "store" / "writers").iterdir()) == []
    with open_store(data_dir, indexer=tiny_indexer) as store:
        assert store.recovery.dead_writers == []


async def test_missing_account_directory_is_recreated(data_dir: Path) -> None:
    with open_store(data_dir, indexer=tiny_indexer) as store:
        store.ensure_account(ACCOUNT)
    account_dir(data_dir).rmdir()  # as if the crash came between the row and the mkdir
    with open_store(data_dir, indexer=tiny_indexer) as store:
        assert store.recovery.directories_created == 1
        [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
        assert result.ok


async def test_account_directory_missing_at_delivery_time(store, data_dir: Path) -> None:
    account_dir(data_dir).rmdir()
    [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    assert result.ok and store.read_message(ACCOUNT, "INBOX", result.uid) == message()


async def test_unwritable_store_reports_io_errors(store, data_dir: Path) -> None:
    if os.geteuid() == 0:
        # root ignores permissions; simulate a vanished spool file instead.
        [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"",
                                                        data_dir / "no-such-spool")])
    else:
        account_dir(data_dir).chmod(0o500)
        try:
            [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
        finally:
            account_dir(data_dir).chmod(0o700)
    assert not result.ok and result.error == "io"
    assert store.usage(ACCOUNT).messages == 0
