"""Delivers messages in a loop until killed; used by test_store_crash.py.

Usage: crash_worker.py DATA_DIR ACK_LOG SPOOL_DIR TAG

Every message is generated from an id ("TAG-n") so the test can regenerate its exact
bytes. After ``deliver()`` returns, one line "uid id" per stored message is appended to
ACK_LOG (O_APPEND, unbuffered: survives SIGKILL of this process). It also copies some
messages to Trash and expunges them there, so that a kill can land in those paths too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

from mailkeep.store import DeliveryRequest, open_store

ACCOUNT = "crash@example.com"
PREFIX = b"Delivered-To: crash@example.com\r\n"


def message_for(ident: str) -> bytes:
    digest = hashlib.sha256(ident.encode()).hexdigest()
    lines = "".join(f"{digest}-{i}\r\n" for i in range(int(digest[:2], 16) % 40 + 1))
    return f"Subject: {ident}\r\nMessage-ID: <{ident}@test>\r\n\r\n{lines}".encode()


async def main() -> None:
    data_dir, ack_log, spool_dir, tag = sys.argv[1:5]
    store = open_store(Path(data_dir), indexer=lambda data: b"n=%d" % len(data))
    store.ensure_account(ACCOUNT)
    log = os.open(ack_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    counter = 0

    async def worker(worker_id: int) -> None:
        nonlocal counter
        while True:
            requests, idents = [], []
            for _ in range(1 + counter % 3):
                counter += 1
                ident = f"{tag}-{counter}"
                data = message_for(ident)
                if counter % 2:
                    spool = Path(spool_dir) / ident
                    spool.write_bytes(data)
                    source: bytes | Path = spool
                else:
                    source = data
                requests.append(DeliveryRequest(ACCOUNT, None, PREFIX, source))
                idents.append(ident)
            results = await store.deliver(requests)
            os.write(log, "".join(f"{r.uid} {i}\n" for r, i in zip(results, idents,
                                                                     strict=True)
                                  if r.ok).encode())
            if worker_id == 0 and results[0].ok:
                await store.copy(ACCOUNT, "INBOX", [results[0].uid], "Trash")
                trash = store.list_messages(ACCOUNT, "Trash")
                await store.store_flags(ACCOUNT, "Trash", [m.uid for m in trash], ["\\Deleted"])
                await store.expunge(ACCOUNT, "Trash")

    await asyncio.gather(*(worker(i) for i in range(6)))


if __name__ == "__main__":
    asyncio.run(main())
