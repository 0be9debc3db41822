"""Delivers a few messages, waits until spare files exist, says so, then waits to be killed;
used by test_store_pool.py.

Usage: pool_worker.py DATA_DIR COUNT

Prints "ready <spares>" (flushed) once COUNT messages are stored and the pool holds spare
files for the account; then sleeps until SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from mailkeep.store import DeliveryRequest, open_store

ACCOUNT = "pool@example.com"


def message_for(n: int) -> bytes:
    return f"Subject: pool {n}\r\nMessage-ID: <{n}@pool>\r\n\r\nbody {n}\r\n".encode()


async def main() -> None:
    data_dir, count = Path(sys.argv[1]), int(sys.argv[2])
    store = open_store(data_dir, indexer=lambda data: b"n=%d" % len(data))
    store.ensure_account(ACCOUNT)
    for n in range(count):
        [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message_for(n))])
        assert result.ok, result
    deadline = time.monotonic() + 20
    while store._file_pool.ready_count() == 0:
        if time.monotonic() > deadline:
            raise SystemExit("the pool never filled")
        await asyncio.sleep(0.01)
    print(f"ready {store._file_pool.ready_count()}", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
