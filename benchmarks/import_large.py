"""A large Maildir import: flat memory, throughput, interruption and a rerun without duplicates.

Issue 2 asks that `mailkeep import` stream a 200,000-message Maildir in flat memory, show
progress, resume after an interruption and never duplicate on a rerun. This script:

1. writes a Maildir of ``--messages`` messages (default 200,000; about 2 KB each, spread over
   INBOX and two folders, with Dovecot-style flags in the file names),
2. runs ``mailkeep import ACCOUNT --format maildir SRC --data-dir DIR`` as a child process
   and kills it with SIGKILL after ``--kill-after`` seconds (an interruption at a random
   instant),
3. runs the same command again to completion, sampling the child's resident memory
   (/proc/PID/status VmRSS) every 50 ms,
4. runs it a third time (must import nothing), and counts the messages in the store.

It prints the elapsed time, messages per second, the peak RSS of each run and the count, and
exits 1 if any message is missing or duplicated. A script, not a test; it stops by itself
(every child has a time limit). Everything lives in a temporary directory, removed at the end
unless ``--keep``.

Usage: .venv/bin/python benchmarks/import_large.py [--messages 200000] [--kill-after 8]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MAILKEEP = str(Path(sys.executable).with_name("mailkeep"))
ACCOUNT = "bulk@example.test"
FOLDERS = ("", ".Lists", ".Archive.2024")  # Maildir++: "" is INBOX
FLAGS = ("", "S", "RS", "FS", "S")


def write_maildir(root: Path, count: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    for folder in FOLDERS:
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    filler = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod "
              "tempor incididunt ut labore et dolore magna aliqua\n") * 14
    total = 0
    for n in range(count):
        folder = FOLDERS[n % len(FOLDERS)] if n % 5 == 0 else ""
        flags = FLAGS[rng.randrange(len(FLAGS))]
        body = (f"From: Sender {n % 97} <s{n % 97}@example.org>\nTo: {ACCOUNT}\n"
                f"Subject: bulk message {n}\nMessage-ID: <bulk{n}@example.org>\n"
                f"Date: Mon, 01 Jan 2024 10:00:00 +0000\n\nmessage {n}\n{filler}").encode()
        sub = "cur" if flags else "new"
        name = f"{1700000000 + n}.M{n}P1.bench" + (f":2,{flags}" if flags else "")
        (root / folder / sub / name).write_bytes(body)
        total += len(body)
    return total


class RSSSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except OSError:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kb


def run_import(src: Path, data_dir: Path, *, kill_after: float | None,
               limit: float) -> tuple[float, int, int]:
    """(seconds, peak RSS in KiB, exit status) of one `mailkeep import` run."""
    argv = [MAILKEEP, "import", ACCOUNT, "--format", "maildir", str(src), "--data-dir",
            str(data_dir), "--create-account", "--no-progress"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = RSSSampler(proc.pid)
    try:
        proc.wait(timeout=kill_after if kill_after is not None else limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    peak = sampler.stop()
    if proc.returncode not in (0, -signal.SIGKILL):
        sys.stderr.write(proc.stderr.read().decode(errors="replace") if proc.stderr else "")
    return time.monotonic() - start, peak, proc.returncode


def count_messages(data_dir: Path) -> tuple[int, int]:
    """(messages, distinct Message-IDs) over every mailbox of the account."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mailkeep.store import open_store

    store = open_store(data_dir)
    try:
        total = 0
        ids: set[bytes] = set()
        for box in store.list_mailboxes(ACCOUNT):
            for info in store.list_messages(ACCOUNT, box.name):
                total += 1
                with store.open_message(ACCOUNT, box.name, info.uid) as f:
                    head = f.read(400)
                start = head.find(b"Message-ID: <") + 13
                ids.add(head[start:head.find(b">", start)])
        return total, len(ids)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--kill-after", type=float, default=8.0,
                        help="seconds before the first run is killed (default 8)")
    parser.add_argument("--limit", type=float, default=3600.0,
                        help="time limit of each run in seconds (default 3600)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mk-import-"))
    try:
        src, data_dir = work / "Maildir", work / "data"
        t0 = time.monotonic()
        size = write_maildir(src, args.messages)
        print(f"source: {args.messages} messages, {size / 1e6:.0f} MB, written in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        first = run_import(src, data_dir, kill_after=args.kill_after, limit=args.limit)
        done_first, _ = count_messages(data_dir) if data_dir.exists() else (0, 0)
        print(f"run 1 (SIGKILL after {args.kill_after:.0f} s): {done_first} imported, "
              f"peak RSS {first[1] / 1024:.0f} MB", flush=True)
        second = run_import(src, data_dir, kill_after=None, limit=args.limit)
        rate = (args.messages - done_first) / second[0] if second[0] else 0.0
        print(f"run 2 (to the end, exit {second[2]}): {second[0]:.0f} s, {rate:.0f} msgs/s, "
              f"peak RSS {second[1] / 1024:.0f} MB", flush=True)
        third = run_import(src, data_dir, kill_after=None, limit=args.limit)
        total, distinct = count_messages(data_dir)
        print(f"run 3 (rerun, exit {third[2]}): {third[0]:.1f} s, peak RSS "
              f"{third[1] / 1024:.0f} MB", flush=True)
        ok = total == distinct == args.messages and second[2] == 0 and third[2] == 0
        print(f"store: {total} messages, {distinct} distinct; "
              f"{'OK' if ok else 'MISMATCH'} (expected {args.messages})")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
