"""Store delivery throughput and latency: how fast ``Store.deliver`` makes mail durable.

Each coroutine delivers one message per ``deliver()`` call in a loop, as SMTP sessions do;
a call returns only when the message file, its directory and the SQLite commit are durable.
With many concurrent callers the store merges their commits (group commit), so the rate
should grow with concurrency while one caller's latency stays near the cost of two fsyncs
(the message file, written into a spare file whose directory entry is already durable, and
the WAL).

Prints, per concurrency: messages/s, latency percentiles of a deliver() call, and, for
comparison, the fsync latency of this disk and the CPU time the kernel spends creating one
file in the benchmark's directory (a store creates one file per message, off the critical
path; on ext4 without a journal this grows with the number of files recently deleted).

Usage: .venv/bin/python benchmarks/store_deliver.py [--messages 20000] [--size 2048]
       [--concurrency 20,1] [--workers 4] [--indexer mime|none] [--dir PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailkeep.store import DeliveryRequest, open_store

ACCOUNT = "bench@example.com"
#: Input bounds, so that a typo cannot start an endless run.
MAX_MESSAGES = 1_000_000
MAX_CONCURRENCY = 1000


def make_message(size: int, n: int) -> bytes:
    head = (f"From: sender@example.org\r\nTo: {ACCOUNT}\r\nSubject: benchmark {n}\r\n"
            f"Message-ID: <{n}@bench>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body


def creation_cpu(directory: Path, rounds: int = 200) -> float:
    """CPU seconds the kernel spends creating one empty file here (the files are removed
    again, which is what makes the next run's creations slower on some filesystems)."""
    probe = directory / "create-probe"
    probe.mkdir()
    try:
        start = time.process_time()
        for n in range(rounds):
            os.close(os.open(probe / str(n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return (time.process_time() - start) / rounds
    finally:
        shutil.rmtree(probe)


def fsync_latency(directory: Path, rounds: int = 50) -> float:
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, b"x" * 512)
            os.fsync(fd)
        return (time.perf_counter() - start) / rounds
    finally:
        os.close(fd)
        path.unlink()


async def run_round(root: Path, messages: int, size: int, concurrency: int, workers: int,
                    indexer) -> tuple[float, list[float]]:
    store = open_store(root, indexer=indexer, workers=workers)
    try:
        store.ensure_account(ACCOUNT)
        body = make_message(size, 0)
        for _ in range(20):  # warm-up: imports, caches, the WAL file
            await store.deliver([DeliveryRequest(ACCOUNT, None, b"", body)])
        latencies: list[float] = []
        per_worker = messages // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                start = time.perf_counter()
                [result] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", body)])
                latencies.append(time.perf_counter() - start)
                if not result.ok:
                    raise SystemExit(f"delivery failed: {result.message}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        return per_worker * concurrency / elapsed, latencies
    finally:
        store.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--concurrency", default="20,1",
                        help="comma-separated numbers of concurrent delivering coroutines")
    parser.add_argument("--workers", type=int, default=4, help="file-writing threads")
    parser.add_argument("--indexer", choices=("mime", "none"), default="mime",
                        help="compute the MIME structure (the default) or skip it")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to create the temporary store (default: system temp)")
    args = parser.parse_args()
    if not 1 <= args.messages <= MAX_MESSAGES:
        parser.error(f"--messages must be between 1 and {MAX_MESSAGES}")
    levels = [int(c) for c in args.concurrency.split(",")]
    if not all(1 <= c <= MAX_CONCURRENCY for c in levels):
        parser.error(f"--concurrency values must be between 1 and {MAX_CONCURRENCY}")
    indexer = None if args.indexer == "mime" else (lambda data: b"")
    base = Path(tempfile.mkdtemp(prefix="mailkeep-bench-", dir=args.dir))
    try:
        print(f"disk: one fsync takes {fsync_latency(base) * 1000:.2f} ms, creating a file "
              f"{creation_cpu(base) * 1000:.2f} ms of CPU, on {base}")
        print(f"{'callers':>8} {'msgs/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
        for level in levels:
            # One caller is latency-bound: fewer messages keep the run short.
            count = args.messages if level > 1 else max(1, min(args.messages, 2000))
            root = base / f"c{level}"
            rate, latencies = asyncio.run(run_round(root, count, args.size, level,
                                                    args.workers, indexer))
            print(f"{level:>8} {rate:>9.0f} {percentile(latencies, 50) * 1000:>8.2f} "
                  f"{percentile(latencies, 90) * 1000:>8.2f} "
                  f"{percentile(latencies, 99) * 1000:>8.2f}")
            shutil.rmtree(root, ignore_errors=True)
        print(f"(median of all latencies: {statistics.median(latencies) * 1000:.2f} ms for "
              f"the last row; rates depend on the disk's fsync latency and free CPU)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
