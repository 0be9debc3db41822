"""IMAP SEARCH over a big mailbox: building the full-text index, then answering TEXT, BODY,
SUBJECT and friends from it (issue 3: TEXT over 100,000 messages well under a second).

Builds a mailbox of ``--messages`` generated messages with a realistic mix: plain text,
multipart/alternative with HTML, quoted-printable ISO-8859-1, attachments (base64),
RFC 2047 subjects, mailing-list replies with References, sizes from a few hundred bytes to
tens of kilobytes, words drawn with a Zipf distribution from a syllable vocabulary (so
common, medium and rare words exist, as in real mail). It then times, in this order:

* the import into the store (which computes each message's MIME structure),
* the full-text index build (``FullTextIndex.catch_up`` over the whole mailbox),
* searches through ``mailkeep.imap.search.search`` (what the IMAP session calls), each run
  ``--rounds`` times: the median and the fastest/slowest are printed,
* SORT and THREAD over the whole mailbox (their header facts come from the index),
* with ``--scan``, the same TEXT search without the index (reads every message), once.

Prints the figures; a script, not a test. The mailbox lives in a temporary directory that
is removed afterwards unless ``--keep`` (or ``--dir``) is given; a kept directory is
reused by the next run with the same ``--dir`` (no rebuild).

Usage: .venv/bin/python benchmarks/imap_search.py [--messages 100000] [--rounds 5]
       [--dir PATH] [--keep] [--scan]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.utils
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

from mailkeep.imap.commands import SearchKey
from mailkeep.imap.search import SearchContext, search
from mailkeep.imap.sort import sort, thread
from mailkeep.store import ImportItem, open_store
from mailkeep.store.fts import FullTextIndex

ACCOUNT = "bench@example.com"
MAX_MESSAGES = 2_000_000  # a typo must not start an endless run
T0 = 1_500_000_000.0  # 2017-07-14: messages spread over the five years after it


class Corpus:
    """Deterministic message generator (one seed, same mailbox every run)."""

    def __init__(self, seed: int = 3501) -> None:
        self.rng = random.Random(seed)
        onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t",
                  "v", "w", "br", "ch", "st", "tr", "pl", "sh", "th"]
        vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
        codas = ["", "", "n", "r", "s", "t", "l", "m", "ng", "st"]
        words: set[str] = set()
        while len(words) < 30000:
            syllables = self.rng.choice((1, 2, 2, 3, 3, 4))
            words.add("".join(self.rng.choice(onsets) + self.rng.choice(vowels)
                              + self.rng.choice(codas) for _ in range(syllables)))
        self.vocab = sorted(words, key=lambda w: (len(w), w))
        self.rng.shuffle(self.vocab)
        self.cum = list(accumulate(1.0 / (rank + 1) for rank in range(len(self.vocab))))
        self.accented = ["café", "crème", "naïve", "über", "façade", "señor", "déjà", "piñata"]
        self.senders = [(f"{self.word().title()} {self.word().title()}",
                         f"{self.word()}.{self.word()}@{self.word()}.example")
                        for _ in range(2000)]
        self.lists = [f"[{self.word()}-list]" for _ in range(20)]
        self.ids: list[str] = []

    def word(self) -> str:
        return self.rng.choices(self.vocab, cum_weights=self.cum)[0]

    def words(self, n: int) -> str:
        return " ".join(self.rng.choices(self.vocab, cum_weights=self.cum, k=n))

    def paragraph_text(self) -> str:
        n = max(10, int(self.rng.lognormvariate(4.6, 0.9)))  # median ~100 words
        lines, line = [], []
        for w in self.words(n).split(" "):
            line.append(w)
            if len(line) >= 12:
                lines.append(" ".join(line))
                line = []
        lines.append(" ".join(line))
        return "\r\n".join(lines)

    def message(self, n: int) -> tuple[bytes, float]:
        rng = self.rng
        name, address = rng.choice(self.senders)
        when = T0 + n * (5 * 365 * 86400 / 100_000) + rng.uniform(0, 3600)
        message_id = f"{n}.{rng.getrandbits(40):x}@{address.split('@')[1]}"
        subject = self.words(rng.randint(2, 7)).capitalize()
        head = [f"From: {name} <{address}>", f"To: Bench <{ACCOUNT}>",
                f"Date: {email.utils.formatdate(when, localtime=False)}",
                f"Message-ID: <{message_id}>", "MIME-Version: 1.0"]
        if self.ids and rng.random() < 0.3:  # a reply in a mailing-list thread
            parent = rng.choice(self.ids[-2000:])
            subject = f"{rng.choice(self.lists)} Re: {subject}"
            head += [f"In-Reply-To: <{parent}>", f"References: <{parent}>"]
        if rng.random() < 0.15:
            subject = "=?utf-8?q?" + "".join(
                c if c.isascii() and c.isalnum() else "".join(f"={b:02X}" for b in c.encode())
                for c in f"{rng.choice(self.accented)} {subject}") + "?="
        head.append(f"Subject: {subject}")
        if rng.random() < 0.2:
            cc_name, cc_address = rng.choice(self.senders)
            head.append(f"Cc: {cc_name} <{cc_address}>")
        self.ids.append(message_id)
        text = self.paragraph_text()
        kind = rng.random()
        if kind < 0.55:
            head += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
            body = text
        elif kind < 0.75:
            html = "<html><body><p>" + text.replace("\r\n", "</p>\r\n<p>") + "</p></body></html>"
            head.append('Content-Type: multipart/alternative; boundary="alt"')
            body = ("--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text +
                    "\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html +
                    "\r\n--alt--")
        elif kind < 0.83:
            latin = text + " " + " ".join(rng.sample(self.accented, 2))
            qp = "".join(c if c.isascii() and c != "=" else
                         "".join(f"={b:02X}" for b in c.encode("latin-1")) for c in latin)
            head += ["Content-Type: text/plain; charset=iso-8859-1",
                     "Content-Transfer-Encoding: quoted-printable"]
            body = qp
        else:
            size = int(rng.uniform(5_000, 50_000))
            payload = base64.encodebytes(rng.randbytes(size)).decode().replace("\n", "\r\n")
            head.append('Content-Type: multipart/mixed; boundary="mix"')
            body = ("--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text +
                    f"\r\n--mix\r\nContent-Type: application/pdf; name=\"{self.word()}.pdf\"\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n" + payload + "--mix--")
        return ("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode("utf-8"), when


def build_store(data: Path, count: int) -> tuple[float, int]:
    """Import ``count`` messages; returns (seconds, bytes stored)."""
    store = open_store(data)
    store.ensure_account(ACCOUNT)
    corpus = Corpus()
    total = 0

    async def run() -> None:
        nonlocal total
        for start in range(0, count, 1000):
            items = []
            for n in range(start, min(count, start + 1000)):
                data, when = corpus.message(n)
                total += len(data)
                items.append(ImportItem("INBOX", data, internal_date=when,
                                        flags=("\\Seen",) if n % 3 else ()))
            await store.import_messages(ACCOUNT, items)
            print(f"\r  imported {min(count, start + 1000):>8,}", end="", file=sys.stderr)

    started = time.perf_counter()
    try:
        asyncio.run(run())
    finally:
        store.close()
    print(file=sys.stderr)
    return time.perf_counter() - started, total


def timed(fn: Callable[[], object], rounds: int) -> tuple[object, list[float]]:
    times = []
    result: object = None
    for _ in range(rounds):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return result, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="data directory (kept; reused if it exists)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--scan", action="store_true",
                        help="also time one TEXT search that reads every message")
    args = parser.parse_args()
    if not 1 <= args.messages <= MAX_MESSAGES or not 1 <= args.rounds <= 100:
        parser.error(f"--messages must be 1..{MAX_MESSAGES:,} and --rounds 1..100")

    base = args.dir or Path(tempfile.mkdtemp(prefix="mailkeep-search-bench-"))
    keep = args.keep or args.dir is not None
    try:
        data = base / "data"
        reuse = (data / "store").exists()
        print(f"data directory: {base}")
        if not reuse:
            seconds, size = build_store(data, args.messages)
            print(f"import: {args.messages:,} messages, {size / 1e6:,.0f} MB in {seconds:,.1f} s"
                  f" ({args.messages / seconds:,.0f} msg/s, MIME structure included)")
        store = open_store(data)
        fts = FullTextIndex.for_data_dir(store, data)
        try:
            messages = store.list_messages(ACCOUNT, "INBOX")
            started = time.perf_counter()
            fts.catch_up(ACCOUNT, "INBOX", messages)
            seconds = time.perf_counter() - started
            path = fts.path_of(ACCOUNT)
            size = sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal")
                       if os.path.exists(f"{path}{s}"))
            if seconds > 1:
                print(f"index build: {len(messages):,} messages in {seconds:,.1f} s"
                      f" ({len(messages) / seconds:,.0f} msg/s); index {size / 1e6:,.0f} MB")
            else:
                print(f"index: {len(messages):,} messages, already built; {size / 1e6:,.0f} MB")
            report(store, fts, messages, args.rounds, args.scan)
        finally:
            fts.close()
            store.close()
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept: {base}")
    return 0


def report(store, fts, messages, rounds: int, scan: bool) -> None:
    corpus = Corpus()  # same vocabulary and senders as the mailbox
    vocab = corpus.vocab
    ctx = SearchContext(store, ACCOUNT, "INBOX", messages, fts=fts)
    sender_name = next(name.split(" ")[1] for name, _ in corpus.senders
                       if len(name.split(" ")[1]) >= 6)
    # A phrase that occurs in the mailbox: three words of the first message's text.
    first, _ = corpus.message(0)
    tokens = first.split(b"\r\n\r\n", 1)[1].decode("utf-8", "replace").split()
    runs = [tokens[i:i + 3] for i in range(len(tokens) - 2)
            if all(t.isalpha() for t in tokens[i:i + 3])]
    phrase = " ".join(runs[len(runs) // 2]) if runs else vocab[10]
    middle = f"<{len(messages) // 2}.".encode()
    cases: list[tuple[str, Callable[[], object]]] = []

    def key(kind: str, *args: object) -> SearchKey:
        return SearchKey(kind, tuple(args))

    for label, word in [("common word", vocab[3]), ("medium word", vocab[300]),
                        ("rare word", vocab[20000]), ("absent", "zqxjkv")]:
        cases.append((f"TEXT {label} \"{word}\"",
                      lambda w=word: search(ctx, key("TEXT", w.encode()))))
    cases += [
        (f"TEXT phrase \"{phrase}\"", lambda: search(ctx, key("TEXT", phrase.encode()))),
        (f"BODY medium word \"{vocab[300]}\"",
         lambda: search(ctx, key("BODY", vocab[300].encode()))),
        ("BODY accented \"crème\" (QP latin-1 bodies)",
         lambda: search(ctx, key("BODY", "crème".encode()))),
        (f"SUBJECT \"{vocab[120]}\"",
         lambda: search(ctx, key("HEADER", "SUBJECT", vocab[120].encode()))),
        (f"FROM \"{sender_name}\"",
         lambda: search(ctx, key("HEADER", "FROM", sender_name.encode()))),
        ("HEADER Message-ID (one message)",
         lambda: search(ctx, key("HEADER", "MESSAGE-ID", middle))),
        ("TEXT two letters \"ou\" (stored-text scan)",
         lambda: search(ctx, key("TEXT", b"ou"))),
        ("UNSEEN SUBJECT (flags first)", lambda: search(ctx, key(
            "AND", key("NOFLAG", "\\Seen"), key("HEADER", "SUBJECT", vocab[120].encode())))),
        ("SORT (REVERSE DATE) ALL",
         lambda: sort(ctx, [("DATE", True)], "UTF-8", key("ALL"))),
        ("SORT (SUBJECT) ALL", lambda: sort(ctx, [("SUBJECT", False)], "UTF-8", key("ALL"))),
        ("THREAD=REFERENCES ALL", lambda: thread(ctx, "REFERENCES", "UTF-8", key("ALL"))),
    ]
    print(f"\n{'query (THREAD: threads)':<52} {'matches':>9} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for label, fn in cases:
        result, times = timed(fn, rounds)
        count = len(result) if isinstance(result, list) else 0
        print(f"{label[:52]:<52} {count:>9,} {statistics.median(times) * 1000:>10.1f}"
              f" {min(times) * 1000:>8.1f} {max(times) * 1000:>8.1f}")
    # The common case after a delivery: a few new messages, then a search (which indexes
    # them first). Each round delivers 10 more.
    times = []
    for r in range(rounds):
        news = [corpus.message(10_000_000 + r * 10 + n)[0] for n in range(10)]
        asyncio.run(store.import_messages(ACCOUNT, [ImportItem("INBOX", m) for m in news]))
        fresh = SearchContext(store, ACCOUNT, "INBOX", store.list_messages(ACCOUNT, "INBOX"),
                              fts=fts)
        started = time.perf_counter()
        search(fresh, key("TEXT", vocab[300].encode()))
        times.append(time.perf_counter() - started)
    print(f"{'10 new messages, then TEXT (indexes them first)':<52} {'':>9}"
          f" {statistics.median(times) * 1000:>10.1f} {min(times) * 1000:>8.1f}"
          f" {max(times) * 1000:>8.1f}")
    if scan:
        plain_ctx = SearchContext(store, ACCOUNT, "INBOX", messages)
        result, times = timed(lambda: search(plain_ctx, key("TEXT", vocab[300].encode())), 1)
        print(f"{'TEXT medium word, no index (reads every message)':<52} {len(result):>9,}"
              f" {times[0] * 1000:>10.1f}")


if __name__ == "__main__":
    sys.exit(main())
