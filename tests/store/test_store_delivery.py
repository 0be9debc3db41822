"""Delivery and APPEND: what arrives is what IMAP serves, durably, with quotas enforced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailkeep.store import (
    DeliveryRequest,
    InvalidFlag,
    MessageTooLarge,
    NoSuchMailbox,
    QuotaExceeded,
    StoreLimits,
    open_store,
)

from .conftest import ACCOUNT, message, message_files, tiny_indexer

PREFIX = b"Return-Path: <a@example.org>\r\nDelivered-To: me@example.com\r\n"


async def test_delivered_message_is_prefix_plus_source_byte_exact(store) -> None:
    source = message("exact", "line one\r\nline two")
    [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, PREFIX, source)])
    assert result.ok and result.error is None
    assert (result.mailbox, result.uid) == ("INBOX", 1)
    assert store.read_message(ACCOUNT, "INBOX", 1) == PREFIX + source
    [info] = store.list_messages(ACCOUNT, "INBOX")
    assert info.size == len(PREFIX + source)
    assert info.flags == ()
    assert store.get_structure(ACCOUNT, "INBOX", 1) == tiny_indexer(PREFIX + source)
    assert store.usage(ACCOUNT).bytes == len(PREFIX + source)


async def test_delivery_from_a_spool_file(store, tmp_path: Path) -> None:
    spool = tmp_path / "spool-1"
    big = message("big", "x" * 100 + "\r\n" * 50_000)  # ~100 KB, copied by the kernel
    spool.write_bytes(big)
    [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, PREFIX, spool)])
    assert result.ok
    assert store.read_message(ACCOUNT, "INBOX", result.uid) == PREFIX + big
    assert store.get_structure(ACCOUNT, "INBOX", result.uid) == tiny_indexer(PREFIX + big)
    assert spool.read_bytes() == big  # the spool file is the caller's to remove


async def test_one_transaction_many_recipients(store) -> None:
    store.ensure_account("you@example.com")
    requests = [DeliveryRequest(ACCOUNT, None, PREFIX, message()),
                DeliveryRequest("you@example.com", None, PREFIX, message()),
                DeliveryRequest("ghost@example.com", None, PREFIX, message()),
                DeliveryRequest(ACCOUNT, "Archive", PREFIX, message())]
    results = await store.deliver(requests)
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error == "no-account"
    assert [(r.account, r.mailbox, r.uid) for r in results if r.ok] == [
        (ACCOUNT, "INBOX", 1), ("you@example.com", "INBOX", 1), (ACCOUNT, "Archive", 1)]


async def test_missing_folder_falls_back_to_inbox_unless_asked_to_create(store) -> None:
    [fallback] = await store.deliver([DeliveryRequest(ACCOUNT, "lists", b"", message())])
    assert fallback.ok and fallback.mailbox == "INBOX"
    [created] = await store.deliver([DeliveryRequest(ACCOUNT, "lists/python", b"", message(),
                                                     create_mailbox=True)])
    assert created.ok and created.mailbox == "lists/python" and created.uid == 1
    assert "lists" in {m.name for m in store.list_mailboxes(ACCOUNT)}
    [invalid] = await store.deliver([DeliveryRequest(ACCOUNT, "../../etc", b"", message(),
                                                     create_mailbox=True)])
    assert invalid.ok and invalid.mailbox == "INBOX"
    [inbox] = await store.deliver([DeliveryRequest(ACCOUNT, "inbox", b"", message())])
    assert inbox.mailbox == "INBOX"


async def test_flags_and_internal_date_are_kept(store) -> None:
    [result] = await store.deliver([DeliveryRequest(
        ACCOUNT, "Junk", b"", message(), flags=("$Junk", "\\Seen"), internal_date=1_000_000_000)])
    info = store.get_message(ACCOUNT, "Junk", result.uid)
    assert info.flags == ("\\Seen", "$Junk")
    assert info.internal_date == 1_000_000_000
    assert info.save_date > 1_000_000_000
    box = store.get_mailbox(ACCOUNT, "Junk")
    assert (box.messages, box.unseen, box.keywords) == (1, 0, ("$Junk",))


async def test_bad_flags_fail_only_that_request(store) -> None:
    results = await store.deliver([
        DeliveryRequest(ACCOUNT, None, b"", message(), flags=("\\Recent",)),
        DeliveryRequest(ACCOUNT, None, b"", message())])
    assert results[0].error == "bad-flag" and results[1].ok


async def test_quota_is_checked_atomically_per_request(store) -> None:
    one = len(message())
    results = await store.deliver([
        DeliveryRequest(ACCOUNT, None, b"", message(), quota_bytes=2 * one),
        DeliveryRequest(ACCOUNT, None, b"", message(), quota_bytes=2 * one),
        DeliveryRequest(ACCOUNT, None, b"", message(), quota_bytes=2 * one),
        DeliveryRequest(ACCOUNT, None, b"", message(), quota_messages=2)])
    assert [r.ok for r in results] == [True, True, False, False]
    assert results[2].error == results[3].error == "quota"
    assert "full" in results[2].message
    assert store.usage(ACCOUNT).messages == 2
    assert [m.uid for m in store.list_messages(ACCOUNT, "INBOX")] == [1, 2]
    # The refused messages left no file behind.
    account_dir = next((store.root / "accounts").iterdir())
    assert len(message_files(account_dir)) == 2


async def test_concurrent_quota_never_overshoots(store) -> None:
    one = len(message())
    results = await asyncio.gather(*(
        store.deliver([DeliveryRequest(ACCOUNT, None, b"", message(), quota_bytes=5 * one)])
        for _ in range(20)))
    assert sum(r[0].ok for r in results) == 5
    assert store.usage(ACCOUNT).bytes == 5 * one


async def test_too_large_is_refused_before_storing(data_dir: Path) -> None:
    with open_store(data_dir, indexer=tiny_indexer,
                    limits=StoreLimits(max_message_bytes=100)) as store:
        store.ensure_account(ACCOUNT)
        [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", b"x" * 101)])
        assert result.error == "too-big"
        with pytest.raises(MessageTooLarge):
            await store.append(ACCOUNT, "INBOX", b"x" * 101)
        assert store.usage(ACCOUNT).messages == 0


async def test_concurrent_deliveries_get_unique_ascending_uids(store) -> None:
    async def one(i: int) -> int:
        [r] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message(f"n{i}"))])
        return r.uid

    uids = await asyncio.gather(*(one(i) for i in range(60)))
    assert sorted(uids) == list(range(1, 61))
    box = store.get_mailbox(ACCOUNT, "INBOX")
    assert box.uidnext == 61 and box.messages == 60
    modseqs = [m.modseq for m in store.list_messages(ACCOUNT, "INBOX")]
    assert len(set(modseqs)) == 60 and max(modseqs) == box.highestmodseq


async def test_append(store, tmp_path: Path) -> None:
    uid = await store.append(ACCOUNT, "Drafts", message("draft"), ["\\Draft", "\\Seen"],
                             internal_date=1234567890.0)
    info = store.get_message(ACCOUNT, "Drafts", uid)
    assert info.flags == ("\\Seen", "\\Draft") and info.internal_date == 1234567890.0
    spool = tmp_path / "append"
    spool.write_bytes(message("from file"))
    uid2 = await store.append(ACCOUNT, "Drafts", spool)
    assert uid2 == uid + 1
    assert store.read_message(ACCOUNT, "Drafts", uid2) == message("from file")


async def test_append_errors(store) -> None:
    with pytest.raises(NoSuchMailbox):  # IMAP answers NO [TRYCREATE]
        await store.append(ACCOUNT, "Nowhere", message())
    with pytest.raises(InvalidFlag):
        await store.append(ACCOUNT, "INBOX", message(), ["bad flag"])
    await store.append(ACCOUNT, "INBOX", message(), quota_messages=1)
    with pytest.raises(QuotaExceeded) as info:
        await store.append(ACCOUNT, "INBOX", message(), quota_messages=1)
    assert info.value.resource == "MESSAGE"
    account_dir = next((store.root / "accounts").iterdir())
    assert len(message_files(account_dir)) == 1  # no leftovers from the refusals


async def test_failing_indexer_never_loses_mail(data_dir: Path) -> None:
    calls = []

    def flaky(data: bytes) -> bytes:
        calls.append(data)
        if len(calls) == 1:
            raise RuntimeError("indexer bug")
        return b"ok"

    with open_store(data_dir, indexer=flaky) as store:
        store.ensure_account(ACCOUNT)
        [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
        assert result.ok
        assert store.get_structure(ACCOUNT, "INBOX", result.uid) == b"ok"  # computed again


async def test_durable_after_return_even_without_close(data_dir: Path) -> None:
    store = open_store(data_dir, indexer=tiny_indexer)
    store.ensure_account(ACCOUNT)
    [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    # A second, independent connection (another process would see the same) reads it.
    with open_store(data_dir, indexer=tiny_indexer) as other:
        assert other.read_message(ACCOUNT, "INBOX", result.uid) == message()
    store.close()
