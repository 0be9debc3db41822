"""Enqueues messages in a loop, as the server does; used by test_queue_crash.py.

Usage: queue_worker.py QUEUE_DIR ACK_LOG SPOOL_DIR TAG [COUNT]

Messages are generated from their ids so the test can regenerate their exact bytes. After
``enqueue()`` returns, one line "Q id" per message is appended to ACK_LOG (O_APPEND,
unbuffered: survives SIGKILL of this process); every seventh acknowledged message is then
finished with ``record_attempt`` and logged "D id" once that returned, so that a kill can
also land in a removal. Without COUNT it runs until killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

from mailkeep.queue.store import NewMessage, QueuedRecipient, QueueStore, RecipientOutcome

PREFIX = b"Received: from worker\r\n"


def source_for(ident: str) -> bytes:
    digest = hashlib.sha256(ident.encode()).hexdigest()
    # Some messages are large, so that a kill often lands while a file is being written.
    lines = int(digest[:2], 16) % 40 + 1 + (3000 if digest[2] in "01" else 0)
    body = "".join(f"{digest}-{i}\r\n" for i in range(lines))
    return f"Subject: {ident}\r\n\r\n{body}".encode()


def expected_file(ident: str) -> bytes:
    return PREFIX + source_for(ident)


async def main() -> None:
    queue_dir, ack_log, spool_dir, tag = sys.argv[1:5]
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else None
    queue = QueueStore(Path(queue_dir))
    log = os.open(ack_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    counter = 0
    done = asyncio.Event()

    async def worker(worker_id: int) -> None:
        nonlocal counter
        while not done.is_set():
            batch = []
            for _ in range(1 + counter % 2):
                counter += 1
                if limit is not None and counter > limit:
                    done.set()
                    break
                ident = f"{tag}{counter:06d}"
                data = source_for(ident)
                if counter % 3 == 0:
                    spool = Path(spool_dir) / ident
                    # The spool file starts with junk the offset skips.
                    spool.write_bytes(b"XXXX" + data)
                    batch.append(NewMessage(ident, "sender@example.com",
                                            [QueuedRecipient("rcpt@example.net")], PREFIX,
                                            spool, source_offset=4))
                else:
                    batch.append(NewMessage(ident, "sender@example.com",
                                            [QueuedRecipient("rcpt@example.net")], PREFIX,
                                            data))
            if not batch:
                break
            await queue.enqueue(batch)
            os.write(log, "".join(f"Q {m.queue_id}\n" for m in batch).encode())
            for message in batch:
                if int(message.queue_id[-6:]) % 7 == 0:
                    await queue.record_attempt(
                        message.queue_id,
                        [RecipientOutcome("rcpt@example.net", "delivered", 250, "ok")], None)
                    os.write(log, f"D {message.queue_id}\n".encode())

    await asyncio.gather(*(worker(i) for i in range(6)))
    queue.close()


if __name__ == "__main__":
    asyncio.run(main())
