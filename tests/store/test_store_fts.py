"""The full-text index (SQLite FTS5, trigram): same answers as reading the messages, lazy
catch-up, stale rows, corruption, UIDVALIDITY keys, limits."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.imap.commands import SearchKey
from mailkeep.imap.search import SearchContext, SearchLimits, search
from mailkeep.store import ImportItem, SQLiteStore, StoreIOError, open_store
from mailkeep.store import fts as fts_module
from mailkeep.store.fts import FtsLimits, FullTextIndex, TextLimits

from .conftest import tiny_indexer

ACCOUNT = "me@example.com"
OTHER = "other@example.com"


def K(kind: str, *args: object) -> SearchKey:
    return SearchKey(kind, tuple(args))


def plain(subject: str, body: str, *, sender: str = "a@example.org") -> bytes:
    return (f"From: {sender}\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\n\r\n{body}\r\n").encode()


@pytest.fixture
def store(data_dir: Path) -> Iterator[SQLiteStore]:
    """A store with the real MIME indexer (the FTS reads structures)."""
    s = open_store(data_dir)
    s.ensure_account(ACCOUNT)
    s.ensure_account(OTHER)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def index(store: SQLiteStore, data_dir: Path) -> Iterator[FullTextIndex]:
    f = FullTextIndex.for_data_dir(store, data_dir)
    try:
        yield f
    finally:
        f.close()


def add(store: SQLiteStore, *messages: bytes, mailbox: str = "INBOX",
        account: str = ACCOUNT) -> list[int]:
    items = [ImportItem(mailbox, m) for m in messages]
    return list(asyncio.run(store.import_messages(account, items)))


def view(store: SQLiteStore, mailbox: str = "INBOX", account: str = ACCOUNT):
    return store.list_messages(account, mailbox)


def find(store: SQLiteStore, key: SearchKey, fts: FullTextIndex | None, *,
         mailbox: str = "INBOX", account: str = ACCOUNT, messages=None,
         limits: SearchLimits | None = None, charset: str | None = None) -> list[int]:
    ctx = SearchContext(store, account, mailbox,
                        view(store, mailbox, account) if messages is None else messages,
                        fts=fts, limits=limits or SearchLimits(scan_below=0))
    return search(ctx, key, charset)


def test_sqlite_has_fts5_trigram() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram case_sensitive 1')")
    conn.execute("INSERT INTO t VALUES ('substring semantics')")
    assert conn.execute("SELECT count(*) FROM t WHERE t MATCH '\"tring sem\"'").fetchone() == (1,)


def test_index_answers_and_lives_in_data_dir(store, index, data_dir) -> None:
    a, b = add(store, plain("Quarterly report", "numbers inside"), plain("Lunch", "pizza"))
    assert index.catch_up(ACCOUNT, "INBOX", view(store)) == 0
    assert index.path_of(ACCOUNT).parent == data_dir / "fts"
    assert index.path_of(ACCOUNT).exists()
    answer = index.search_text(ACCOUNT, "INBOX", "body", "pizza")
    assert answer.matches == {b} and answer.coverage.covers(a) and answer.coverage.covers(b)
    assert index.search_text(ACCOUNT, "INBOX", "subject", "rterly rep").matches == {a}
    assert index.search_text(ACCOUNT, "INBOX", "text", "inside").matches == {a}
    assert index.search_header(ACCOUNT, "INBOX", "subject", "lunch").matches == {b}
    assert find(store, K("TEXT", b"PIZZA"), index) == [b]


# -- agreement with reading the messages -------------------------------------------------

WORDS = ["straße", "STRASSE", "İstanbul", "ΣΊΣΥΦΟΣ", "σίσυφος", "cafe\u0301", "café",
         "ﬁle", "naïve", "日本語テキスト", "emoji🙂", "tab\there", "quote\"d", "a", "ab",
         "abc", "report", "Report", "x-y", "über", "ÜBER", "ǅemal", "ﬀ", "\u00a0nbsp"]
FIELDS = ["subject", "from", "to", "cc", "bcc"]


def _word_list(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def corpus_message(rng: random.Random, n: int) -> bytes:
    subject = _word_list(rng, rng.randint(0, 4))
    if rng.random() < 0.4:
        subject = _encoded_word(subject)
    head = [f"From: {_encoded_word(_word_list(rng, 2))} <p{n}@example.org>",
            f"To: {ACCOUNT}", f"Subject: {subject}", f"Message-ID: <{n}.{rng.random()}@x>"]
    if rng.random() < 0.5:
        head.append(f"Cc: {_word_list(rng, 2)} <cc{n}@example.net>")
    if rng.random() < 0.3:
        head.append(f"X-Tag: {_word_list(rng, 2)}")
    body = _word_list(rng, rng.randint(0, 30))
    style = rng.choice(["plain", "qp", "base64", "html", "multipart"])
    if style == "plain":
        head.append("Content-Type: text/plain; charset=utf-8")
        payload = body
    elif style == "qp":
        head += ["Content-Type: text/plain; charset=utf-8",
                 "Content-Transfer-Encoding: quoted-printable"]
        payload = "".join(c if c.isascii() and c not in "=\t" else
                          "".join(f"={b:02X}" for b in c.encode()) for c in body)
    elif style == "base64":
        head += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64"]
        payload = base64.encodebytes(body.encode()).decode().replace("\n", "\r\n")
    elif style == "html":
        head.append("Content-Type: text/html; charset=utf-8")
        payload = "<p>" + body.replace(" ", " <b>x</b> ", 2) + "</p>"
    else:
        head.append("Content-Type: multipart/mixed; boundary=BB")
        payload = (f"--BB\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
                   f"--BB\r\nContent-Type: application/octet-stream; name=\"{rng.choice(WORDS)}\""
                   f"\r\n\r\nbinary\r\n--BB--")
    return ("\r\n".join(head) + "\r\n\r\n" + payload + "\r\n").encode()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """A store with 60 varied messages (two of them expunged) and its full index."""
    data = tmp_path_factory.mktemp("corpus")
    s = open_store(data)
    s.ensure_account(ACCOUNT)
    rng = random.Random(5256)
    uids = add(s, *[corpus_message(rng, n) for n in range(60)])
    asyncio.run(s.store_flags(ACCOUNT, "INBOX", uids[10:12], ["\\Deleted"]))
    asyncio.run(s.expunge(ACCOUNT, "INBOX"))
    f = FullTextIndex.for_data_dir(s, data)
    f.catch_up(ACCOUNT, "INBOX", view(s))
    yield s, f
    f.close()
    s.close()


_alphabet = st.sampled_from(sorted(set("".join(WORDS)) | set("SsΣσς<>@.: \"")))
needles = st.one_of(st.sampled_from(WORDS).map(lambda w: w[1:5]),
                    st.sampled_from(WORDS),
                    st.text(_alphabet, min_size=0, max_size=6))
targets = st.sampled_from(["TEXT", "BODY", *[f.upper() for f in FIELDS], "X-TAG",
                           "MESSAGE-ID"])


def _key(target: str, needle: str) -> SearchKey:
    if target in ("TEXT", "BODY"):
        return K(target, needle.encode())
    return K("HEADER", target, needle.encode())


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=targets, needle=needles, negate=st.booleans(), other=needles)
def test_index_agrees_with_reading_messages(corpus, target: str, needle: str, negate: bool,
                                            other: str) -> None:
    s, f = corpus
    key = _key(target, needle)
    if negate:
        key = K("OR", K("NOT", key), K("BODY", other.encode()))
    assert find(s, key, f) == find(s, key, None)


def test_agreement_covers_every_match_kind(corpus) -> None:
    # The hypothesis test above is only as good as the corpus: make sure it has matches
    # of each kind, including case folding across scripts and decoded encodings.
    s, f = corpus
    for target, needle in [("BODY", "STRASSE"), ("BODY", "straße"), ("SUBJECT", "σίσυφος"),
                           ("FROM", "İSTANBUL"), ("TEXT", "日本語"), ("BODY", "café"),
                           ("X-TAG", ""), ("CC", "cc1"), ("BODY", "fi")]:
        indexed = find(s, _key(target, needle), f)
        assert indexed, (target, needle)
        assert indexed == find(s, _key(target, needle), None)


_mailbox_numbers = itertools.count()


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), size=st.integers(1, 12), needle=needles, target=targets)
def test_random_corpora(store, index, seed: int, size: int, needle: str, target: str) -> None:
    mailbox = f"random{next(_mailbox_numbers)}"
    store.create_mailbox(ACCOUNT, mailbox)
    rng = random.Random(seed)
    add(store, *[corpus_message(rng, n) for n in range(size)], mailbox=mailbox)
    key = _key(target, needle)
    assert find(store, key, index, mailbox=mailbox) == find(store, key, None, mailbox=mailbox)


# -- catching up, stale rows -----------------------------------------------------------


def test_catch_up_is_bounded_and_search_covers_the_rest(store, index) -> None:
    uids = add(store, *[plain(f"m{n}", f"word{n} shared") for n in range(10)])
    assert index.catch_up(ACCOUNT, "INBOX", view(store), max_messages=3) == 7
    assert index.coverage(ACCOUNT, "INBOX").high == uids[2]
    # A search that may not index anything itself reads the 7 others.
    limits = SearchLimits(scan_below=0, catch_up_per_search=0)
    assert find(store, K("BODY", b"shared"), index, limits=limits) == uids
    assert find(store, K("BODY", b"word7"), index, limits=limits) == [uids[7]]
    assert index.coverage(ACCOUNT, "INBOX").high == uids[2]
    # A normal search catches up first.
    assert find(store, K("BODY", b"word9"), index) == [uids[9]]
    assert index.coverage(ACCOUNT, "INBOX").high == uids[9]
    assert index.catch_up(ACCOUNT, "INBOX", view(store)) == 0


def test_small_batches_commit_separately(store, data_dir) -> None:
    uids = add(store, *[plain("s", f"text{n}") for n in range(7)])
    f = FullTextIndex.for_data_dir(store, data_dir, FtsLimits(batch_messages=2))
    try:
        assert f.catch_up(ACCOUNT, "INBOX", view(store)) == 0
        assert f.search_text(ACCOUNT, "INBOX", "body", "text").matches == set(uids)
    finally:
        f.close()


def test_expunged_rows_are_ignored_then_pruned(store, index) -> None:
    a, b, c = add(store, *[plain("s", "common words") for _ in range(3)])
    index.catch_up(ACCOUNT, "INBOX", view(store))
    old_view = view(store)
    asyncio.run(store.store_flags(ACCOUNT, "INBOX", [b], ["\\Deleted"]))
    asyncio.run(store.expunge(ACCOUNT, "INBOX"))
    [d] = add(store, plain("s", "common words"))
    # A session that has not seen the expunge nor the new message still gets its view.
    assert find(store, K("BODY", b"common"), index, messages=old_view) == [a, b, c]
    # Indexing from an old view indexes nothing new and deletes nothing it cannot judge.
    index.catch_up(ACCOUNT, "INBOX", old_view)
    assert index.search_text(ACCOUNT, "INBOX", "body", "common").matches == {a, b, c}
    # The current view: the new message is indexed, the expunged row pruned.
    assert find(store, K("BODY", b"common"), index) == [a, c, d]
    assert index.search_text(ACCOUNT, "INBOX", "body", "common").matches == {a, c, d}
    # A view that has not seen the new message yet does not delete its row.
    index.catch_up(ACCOUNT, "INBOX", [m for m in view(store) if m.uid != d])
    assert index.search_text(ACCOUNT, "INBOX", "body", "common").matches == {a, c, d}


def test_unreadable_messages_are_scanned_then_retried(store, index, monkeypatch) -> None:
    a, b = add(store, plain("s", "alpha"), plain("s", "beta"))
    real = fts_module.load_message

    def flaky(store_, account, mailbox, uid, *args, **kwargs):
        if uid == a:
            raise StoreIOError("disk on fire")
        return real(store_, account, mailbox, uid, *args, **kwargs)

    monkeypatch.setattr(fts_module, "load_message", flaky)
    assert index.catch_up(ACCOUNT, "INBOX", view(store)) == 0
    coverage = index.coverage(ACCOUNT, "INBOX")
    assert coverage.high == b and coverage.unindexed == {a}
    monkeypatch.setattr(fts_module, "load_message", real)
    # The search reads it (the index does not cover it) ...
    limits = SearchLimits(scan_below=0, catch_up_per_search=0)
    assert find(store, K("BODY", b"alpha"), index, limits=limits) == [a]
    # ... and the next catch-up retries it.
    index.catch_up(ACCOUNT, "INBOX", view(store))
    assert index.coverage(ACCOUNT, "INBOX").unindexed == frozenset()
    assert index.search_text(ACCOUNT, "INBOX", "body", "alpha").matches == {a}


def test_concurrent_catch_ups_index_each_message_once(store, index) -> None:
    uids = add(store, *[plain("s", f"msg {n}") for n in range(60)])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while index.catch_up(ACCOUNT, "INBOX", view(store), max_messages=7):
                pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    index.catch_up(ACCOUNT, "INBOX", view(store))
    conn = sqlite3.connect(index.path_of(ACCOUNT))
    try:
        uidvalidity = store.get_mailbox(ACCOUNT, "INBOX").uidvalidity
        rows = [r[0] for r in conn.execute(f"SELECT rowid FROM box_{uidvalidity}")]
        docs = conn.execute("SELECT docs FROM boxes WHERE uidvalidity = ?",
                            (uidvalidity,)).fetchone()[0]
    finally:
        conn.close()
    assert sorted(rows) == uids and docs == len(uids)


# -- keys: UIDVALIDITY, accounts ---------------------------------------------------------


def test_rename_keeps_the_index_and_recreate_never_confuses(store, index) -> None:
    store.create_mailbox(ACCOUNT, "Work")
    [old] = add(store, plain("s", "from the old mailbox"), mailbox="Work")
    index.catch_up(ACCOUNT, "Work", view(store, "Work"))
    store.rename_mailbox(ACCOUNT, "Work", "Job")
    assert index.coverage(ACCOUNT, "Job").high == old  # nothing to index again
    assert find(store, K("BODY", b"old mailbox"), index, mailbox="Job") == [old]
    # A new "Work" has a new UIDVALIDITY: its UID 1 is not the old UID 1.
    store.create_mailbox(ACCOUNT, "Work")
    [new] = add(store, plain("s", "brand new"), mailbox="Work")
    assert new == old
    assert find(store, K("BODY", b"old mailbox"), index, mailbox="Work") == []
    assert find(store, K("BODY", b"brand new"), index, mailbox="Work") == [new]
    # Deleting a mailbox leaves a table behind until the account is pruned.
    store.delete_mailbox(ACCOUNT, "Job")
    assert index.prune_account(ACCOUNT) == 1
    assert index.prune_account(ACCOUNT) == 0
    assert find(store, K("BODY", b"brand new"), index, mailbox="Work") == [new]


def test_accounts_have_separate_files(store, index) -> None:
    [mine] = add(store, plain("s", "private words"))
    [theirs] = add(store, plain("s", "private words too"), account=OTHER)
    assert find(store, K("BODY", b"private"), index) == [mine]
    assert find(store, K("BODY", b"too"), index, account=OTHER) == [theirs]
    assert find(store, K("BODY", b"too"), index) == []
    assert index.path_of(ACCOUNT) != index.path_of(OTHER)
    index.drop_account(OTHER)
    assert not index.path_of(OTHER).exists()
    assert find(store, K("BODY", b"too"), index, account=OTHER) == [theirs]  # rebuilt


def test_structure_blobs_of_another_format_are_reindexed(data_dir) -> None:
    s = open_store(data_dir, indexer=tiny_indexer)  # blobs that are not MIME JSON
    s.ensure_account(ACCOUNT)
    try:
        multipart = (b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                     b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                     + base64.b64encode(b"hidden treasure") + b"\r\n--b--\r\n")
        [uid] = add(s, multipart)
        f = FullTextIndex.for_data_dir(s, data_dir)
        try:
            assert find(s, K("BODY", b"treasure"), f) == [uid]
            assert f.search_text(ACCOUNT, "INBOX", "body", "treasure").matches == {uid}
        finally:
            f.close()
    finally:
        s.close()


# -- limits -------------------------------------------------------------------------------


def test_text_beyond_the_cap_is_not_searchable_either_way(store, data_dir) -> None:
    text = TextLimits(max_body_chars=100)
    [uid] = add(store, plain("s", "early " + "x" * 200 + " lateword"))
    f = FullTextIndex.for_data_dir(store, data_dir, FtsLimits(text=text))
    try:
        for fts in (f, None):
            limits = SearchLimits(scan_below=0, text=text)
            assert find(store, K("BODY", b"early"), fts, limits=limits) == [uid]
            assert find(store, K("BODY", b"lateword"), fts, limits=limits) == []
    finally:
        f.close()


# -- corruption ---------------------------------------------------------------------------


def test_garbage_file_is_rebuilt(store, data_dir, caplog) -> None:
    uids = add(store, plain("s", "needle one"), plain("s", "needle two"))
    f = FullTextIndex.for_data_dir(store, data_dir)
    f.catch_up(ACCOUNT, "INBOX", view(store))
    path = f.path_of(ACCOUNT)
    f.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.unlink(f"{path}{suffix}")
    path.write_bytes(b"this is not an SQLite database at all" * 200)
    f = FullTextIndex.for_data_dir(store, data_dir)
    try:
        assert find(store, K("BODY", b"needle"), f) == uids
        assert f.coverage(ACCOUNT, "INBOX").high == uids[-1]  # indexed again
        assert f.search_text(ACCOUNT, "INBOX", "body", "two").matches == {uids[1]}
    finally:
        f.close()
    assert any("rebuilding" in r.getMessage() for r in caplog.records)


def test_corrupt_pages_are_detected_and_rebuilt(store, data_dir, caplog) -> None:
    body = " ".join(f"token{n}" for n in range(3000))
    uids = add(store, *[plain(f"subject {n}", body + f" unique{n}") for n in range(20)])
    f = FullTextIndex.for_data_dir(store, data_dir, FtsLimits(cache_kib=64, build_cache_kib=64))
    f.catch_up(ACCOUNT, "INBOX", view(store))
    path = f.path_of(ACCOUNT)
    f.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for start in range(3 * page, len(data) - page, 2 * page):  # every other page after the
        data[start + 100:start + page - 100] = os.urandom(page - 200)  # schema
    path.write_bytes(bytes(data))
    f = FullTextIndex.for_data_dir(store, data_dir)
    try:
        # The query that hits the damage answers from the messages; later ones from a
        # rebuilt index.
        for _ in range(3):
            assert find(store, K("BODY", b"unique7"), f) == [uids[7]]
            assert find(store, K("BODY", b"token2999"), f) == uids
        assert f.search_text(ACCOUNT, "INBOX", "body", "unique19").matches == {uids[19]}
    finally:
        f.close()
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
