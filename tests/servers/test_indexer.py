"""The background indexer catches a mailbox up once it has been quiet, not during a burst."""

from __future__ import annotations

import asyncio

from mailkeep.servers.indexer import BackgroundIndexer
from mailkeep.store import DeliveryRequest, open_store
from mailkeep.store.fts import FullTextIndex

ACCOUNT = "me@example.com"


async def test_quiet_mailbox_gets_indexed(tmp_path):
    store = open_store(tmp_path)
    store.ensure_account(ACCOUNT)
    fts = FullTextIndex.for_data_dir(store, tmp_path)
    indexer = BackgroundIndexer(store, fts, quiet=0.3, batch=2)
    indexer.watch([ACCOUNT])
    indexer.start()
    try:
        results = await store.deliver([
            DeliveryRequest(ACCOUNT, None, b"", f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
            for n in range(5)])
        uids = [r.uid for r in results]
        await asyncio.sleep(0.05)
        # Still within the quiet period: nothing indexed yet.
        assert fts.coverage(ACCOUNT, "INBOX").high == 0
        deadline = asyncio.get_running_loop().time() + 10
        while fts.coverage(ACCOUNT, "INBOX").high < max(uids):
            assert asyncio.get_running_loop().time() < deadline, "never indexed"
            await asyncio.sleep(0.05)
        # Batches of 2: five messages took several rounds, and all were covered.
        assert all(fts.coverage(ACCOUNT, "INBOX").covers(u) for u in uids)
    finally:
        await indexer.stop()
        fts.close()
        store.close()


async def test_a_mailbox_receiving_mail_is_not_indexed_until_quiet(tmp_path):
    store = open_store(tmp_path)
    store.ensure_account(ACCOUNT)
    fts = FullTextIndex.for_data_dir(store, tmp_path)
    indexer = BackgroundIndexer(store, fts, quiet=10.0)
    indexer.watch([ACCOUNT])
    try:
        async def deliver(n: int) -> None:
            await store.deliver([DeliveryRequest(ACCOUNT, None, b"",
                                                 f"Subject: {n}\r\n\r\nx\r\n".encode())])
        await deliver(1)
        assert indexer.run_once(now=100.0) == 0   # first sight
        await deliver(2)
        assert indexer.run_once(now=105.0) == 0   # still arriving
        assert indexer.run_once(now=112.0) == 0   # quiet for 7 s only
        assert indexer.run_once(now=116.0) == 1   # quiet for 11 s: indexed
        assert fts.coverage(ACCOUNT, "INBOX").high == 2
        assert indexer.run_once(now=130.0) == 0   # nothing new: no work
    finally:
        fts.close()
        store.close()
