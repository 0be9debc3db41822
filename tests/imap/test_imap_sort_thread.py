"""SORT (RFC 5256, RFC 5957) and THREAD=ORDEREDSUBJECT / THREAD=REFERENCES (RFC 5256 §3)
on a real store, with and without the full-text index (which holds the sort facts)."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.imap.commands import SearchKey
from mailkeep.imap.search import SearchContext, SearchError, SearchLimits
from mailkeep.imap.sort import ThreadNode, base_subject, format_threads, sort, thread
from mailkeep.store import ImportItem, SQLiteStore, open_store
from mailkeep.store.fts import FullTextIndex

ACCOUNT = "me@example.com"
ALL = SearchKey("ALL")
T0 = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))


def rfc5322_date(offset_hours: float) -> str:
    import email.utils

    return email.utils.formatdate(T0 + offset_hours * 3600, usegmt=True)


def msg(subject: str = "s", *, sent: float | None = None, message_id: str | None = None,
        references: str | None = None, in_reply_to: str | None = None,
        sender: str = "a@example.org", to: str = ACCOUNT, cc: str | None = None,
        body: str = "body", raw_date: str | None = None) -> bytes:
    head = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
    if cc is not None:
        head += f"Cc: {cc}\r\n"
    if raw_date is not None:
        head += f"Date: {raw_date}\r\n"
    elif sent is not None:
        head += f"Date: {rfc5322_date(sent)}\r\n"
    if message_id is not None:
        head += f"Message-ID: <{message_id}>\r\n"
    if references is not None:
        head += f"References: {references}\r\n"
    if in_reply_to is not None:
        head += f"In-Reply-To: {in_reply_to}\r\n"
    return (head + "\r\n" + body + "\r\n").encode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path / "data")
    s.ensure_account(ACCOUNT)
    try:
        yield s
    finally:
        s.close()


def add(store: SQLiteStore, *items: bytes | tuple[bytes, float]) -> list[int]:
    imports = [ImportItem("INBOX", i[0], internal_date=i[1]) if isinstance(i, tuple)
               else ImportItem("INBOX", i) for i in items]
    return list(asyncio.run(store.import_messages(ACCOUNT, imports)))


@pytest.fixture(params=["read", "index"])
def ctx(request: pytest.FixtureRequest, store: SQLiteStore, tmp_path: Path):
    """ctx() -> a SearchContext on INBOX as it is now (facts read, or from the index)."""
    fts = None
    if request.param == "index":
        fts = FullTextIndex.for_data_dir(store, tmp_path / "data")
        request.addfinalizer(fts.close)

    def make() -> SearchContext:
        return SearchContext(store, ACCOUNT, "INBOX", store.list_messages(ACCOUNT, "INBOX"),
                             fts=fts, limits=SearchLimits(scan_below=0))

    return make


def threads(c: SearchContext, algorithm: str = "REFERENCES") -> bytes:
    seq = {m.uid: n for n, m in enumerate(c.messages, 1)}
    return format_threads(thread(c, algorithm, "UTF-8", ALL), seq.__getitem__)


# -- base subject (RFC 5256 §2.1) -------------------------------------------------------


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("hello", "hello", False),
    ("Re: hello", "hello", True),
    ("RE: re: Re:hello", "hello", True),
    ("Fwd: hello", "hello", True),
    ("FW: hello", "hello", True),
    ("Re [2]: hello", "hello", True),  # subj-refwd may hold a blob
    ("[list] Re: hello", "hello", True),  # blobs before a refwd are a leader
    ("Re: [list] hello", "hello", True),  # (4) a blob prefix goes if text remains
    ("[list]", "[list]", False),  # ... but not if nothing would remain
    ("[a][b] [c]", "[c]", False),
    ("hello (fwd)", "hello", True),  # (2) subj-trailer
    ("hello (FWD) (fwd)  ", "hello", True),
    ("[Fwd: Re: hello]", "hello", True),  # (6) subj-fwd
    ("[fwd: [fwd: hello (fwd)]]", "hello", True),
    ("Reply: hello", "Reply: hello", False),  # not a subj-refwd
    ("  hello \t  world  ", "hello world", False),  # (1) white space
    ("Re:", "", True),
    ("re: (fwd)", "", True),
    ("", "", False),
])
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert base_subject(subject) == (base, reply)


# -- SORT ---------------------------------------------------------------------------------


def test_sort_keys(store, ctx) -> None:
    u = add(store,
            (msg("Re: banana", sent=5, sender="Zed <zed@example.org>", to="carol@x.org",
                 cc="bob@x.org", body="x" * 300), T0 + 100),
            (msg("apple", sent=1, sender="=?utf-8?q?=C3=81lvaro?= <alvaro@x.org>",
                 to="Dave <dave@x.org>", body="x" * 10), T0 + 300),
            (msg("[list] Cherry", sent=3, sender="bob@x.org", to="alice@x.org",
                 cc="alice@x.org", body="x" * 100), T0 + 200))
    c = ctx()

    def by(*criteria: tuple[str, bool]) -> list[int]:
        return sort(c, list(criteria), "UTF-8", ALL)

    assert by(("ARRIVAL", False)) == [u[0], u[2], u[1]]
    assert by(("ARRIVAL", True)) == [u[1], u[2], u[0]]
    assert by(("DATE", False)) == [u[1], u[2], u[0]]
    assert by(("SIZE", False)) == [u[1], u[2], u[0]]
    assert by(("SUBJECT", False)) == [u[1], u[0], u[2]]  # apple, banana, cherry
    assert by(("FROM", False)) == [u[1], u[2], u[0]]  # addr-mailbox: alvaro, bob, zed
    assert by(("TO", False)) == [u[2], u[0], u[1]]  # alice, carol, dave
    assert by(("CC", False)) == [u[1], u[2], u[0]]  # none sorts first, then alice, bob
    # RFC 5957: the decoded display name, else the address.
    assert by(("DISPLAYFROM", False)) == [u[2], u[0], u[1]]  # bob@x.org, Zed, Álvaro
    assert by(("DISPLAYTO", False)) == [u[2], u[0], u[1]]  # alice@, carol@, Dave


def test_sort_ties_keep_mailbox_order_even_reversed(store, ctx) -> None:
    u = add(store, msg("b", sent=1), msg("a", sent=1), msg("b", sent=1), msg("a", sent=2))
    c = ctx()
    assert sort(c, [("DATE", False)], "UTF-8", ALL) == [u[0], u[1], u[2], u[3]]
    assert sort(c, [("DATE", True)], "UTF-8", ALL) == [u[3], u[0], u[1], u[2]]
    assert sort(c, [("SUBJECT", True), ("DATE", True)], "UTF-8", ALL) == \
        [u[0], u[2], u[3], u[1]]
    assert sort(c, [("SUBJECT", False), ("DATE", True)], "UTF-8", ALL) == \
        [u[3], u[1], u[0], u[2]]


def test_sort_date_falls_back_to_internal_date(store, ctx) -> None:
    u = add(store, (msg(sent=10), T0), (msg(raw_date="garbage"), T0 + 5 * 3600),
            (msg(), T0 + 20 * 3600))
    assert sort(ctx(), [("DATE", False)], "UTF-8", ALL) == [u[1], u[0], u[2]]


def test_sort_uses_the_search_program_and_ascii_casemap(store, ctx) -> None:
    u = add(store, msg("beta"), msg("Alpha"), msg("_under"), msg("alpha"), msg("Beta"))
    c = ctx()
    # i;ascii-casemap: "_" (0x5F) sorts after the upper-cased letters.
    assert sort(c, [("SUBJECT", False)], "UTF-8", ALL) == [u[1], u[3], u[0], u[4], u[2]]
    only_b = SearchKey("HEADER", ("SUBJECT", b"beta"))
    assert sort(c, [("SUBJECT", True)], "US-ASCII", only_b) == [u[0], u[4]]


def test_sort_errors(store, ctx) -> None:
    add(store, msg())
    with pytest.raises(SearchError):
        sort(ctx(), [("COLOUR", False)], "UTF-8", ALL)
    with pytest.raises(SearchError) as info:
        sort(ctx(), [("DATE", False)], "EBCDIC", ALL)
    assert info.value.code is not None and info.value.code.startswith("BADCHARSET")
    with pytest.raises(SearchError):
        thread(ctx(), "MAGIC", "UTF-8", ALL)


# -- format ------------------------------------------------------------------------------


def test_format_threads_rfc_example() -> None:
    # RFC 5256 §4: (2)(3 6 (4 23)(44 7 96))
    tree = [ThreadNode(2), ThreadNode(3, [ThreadNode(6, [
        ThreadNode(4, [ThreadNode(23)]), ThreadNode(44, [ThreadNode(7, [ThreadNode(96)])])])])]
    assert format_threads(tree, lambda n: n) == b"(2)(3 6 (4 23)(44 7 96))"
    # A dummy root keeps its children as nested lists; numbers go through ``number``.
    dummy = [ThreadNode(None, [ThreadNode(30), ThreadNode(50, [ThreadNode(60)])])]
    assert format_threads(dummy, lambda n: n // 10) == b"((3)(5 6))"
    assert format_threads([], lambda n: n) == b""
    deep = ThreadNode(1)
    node = deep
    for n in range(2, 20001):
        node.children.append(ThreadNode(n, [ThreadNode(100000 + n)]))
        node.children.append(ThreadNode(200000 + n))
        node = node.children[0].children[0]
    assert format_threads([deep], lambda n: n).count(b"(") == 2 * 19999 + 1


# -- THREAD=ORDEREDSUBJECT ---------------------------------------------------------------


def test_ordered_subject(store, ctx) -> None:
    add(store, msg("Hello", sent=1), msg("Re: Hello", sent=3), msg("Other", sent=2),
        msg("Re: hello", sent=4), msg("other (fwd)", sent=0))
    # Threads by base subject, sorted by their first message's date; the rest of a
    # thread are siblings under the first (no grandchildren).
    assert threads(ctx(), "ORDEREDSUBJECT") == b"(5 3)(1 (2)(4))"


# -- THREAD=REFERENCES -------------------------------------------------------------------


def test_references_basic_tree(store, ctx) -> None:
    add(store, msg("topic", sent=1, message_id="a@x"),
        msg("Re: topic", sent=2, message_id="b@x", references="<a@x>"),
        msg("Re: topic", sent=3, message_id="c@x", references="<a@x> <b@x>"),
        msg("Re: topic", sent=4, message_id="d@x", in_reply_to="<a@x> (a comment)"),
        msg("unrelated", sent=5, message_id="e@x"))
    assert threads(ctx()) == b"(1 (2 3)(4))(5)"


def test_references_missing_parents_become_dummies_then_pruned(store, ctx) -> None:
    add(store, msg("one", sent=1, message_id="x1@x", references="<gone@x>"),
        msg("two", sent=2, message_id="x2@x", references="<gone@x>"),
        msg("three", sent=3, message_id="x3@x", references="<gone2@x>"),
        msg("four", sent=4, message_id="x4@x", references="<m3@x> <m4@x>"))
    # A dummy with several children stays under the root; one child is promoted.
    assert threads(ctx()) == b"((1)(2))(3)(4)"


def test_references_cycles_and_self_references(store, ctx) -> None:
    add(store, msg("p", sent=1, message_id="p@x", references="<q@x>"),
        msg("q", sent=2, message_id="q@x", references="<p@x>"),
        msg("self", sent=3, message_id="s@x", references="<s@x> <s@x>"),
        msg("loop", sent=4, message_id="l1@x", references="<l2@x> <l3@x> <l2@x>"))
    # Linking q as p's parent and p as q's would be a loop: the second link is not made.
    assert threads(ctx()) == b"(2 1)(3)(4)"


def test_references_duplicate_ids_and_case_sensitivity(store, ctx) -> None:
    add(store, msg("first", sent=1, message_id="dup@x"),
        msg("second", sent=2, message_id="dup@x"),
        msg("third", sent=3, message_id="t@x", references="<dup@x>"),
        msg("fourth", sent=4, message_id="f@x", references="<DUP@x>"),
        msg("fifth", sent=5, message_id="v@x", references="garbage <not valid"))
    # The first message owns a duplicated id; ids compare case-sensitively.
    assert threads(ctx()) == b"(1 3)(2)(4)(5)"


def test_references_last_reference_wins_over_earlier_links(store, ctx) -> None:
    # Step 1.B: message 3's own References override the link message 2's made for it.
    add(store, msg("s1", sent=1, message_id="m1@x"),
        msg("s2", sent=2, message_id="m2@x", references="<m1@x> <m3@x>"),
        msg("s3", sent=3, message_id="m3@x", references="<m9@x>"))
    assert threads(ctx()) == b"(1)(3 2)"


def test_references_subject_merging(store, ctx) -> None:
    add(store, msg("Plans", sent=1, message_id="r1@x"),
        msg("Re: Plans", sent=2, message_id="r2@x"),
        msg("Lunch", sent=3, message_id="r3@x"),
        msg("Lunch", sent=4, message_id="r4@x"),
        msg("Re: Lunch", sent=5, message_id="r5@x"),
        msg("", sent=6, message_id="r6@x"),
        msg("Re:", sent=7, message_id="r7@x"))
    # A reply without references joins the original; two originals with one subject get
    # a dummy parent, which later replies join; empty subjects are never merged.
    assert threads(ctx()) == b"(1 2)((3)(4)(5))(6)(7)"


def test_references_dummy_subjects_merge(store, ctx) -> None:
    add(store, msg("Party", sent=1, message_id="k1@x", references="<root1@x>"),
        msg("Party", sent=2, message_id="k2@x", references="<root1@x>"),
        msg("Re: Party", sent=3, message_id="k3@x", references="<root2@x>"),
        msg("Re: Party", sent=4, message_id="k4@x", references="<root2@x>"),
        msg("Party", sent=5, message_id="k5@x"))
    # Two dummies with one thread subject: their children become siblings; a message
    # with the subject becomes a child of the dummy.
    assert threads(ctx()) == b"((1)(2)(3)(4)(5))"


def test_references_sorting_by_sent_date(store, ctx) -> None:
    add(store, msg("root", sent=10, message_id="o1@x"),
        msg("Re: root", sent=30, message_id="o2@x", references="<o1@x>"),
        msg("Re: root", sent=20, message_id="o3@x", references="<o1@x>"),
        msg("early", sent=5, message_id="o4@x"))
    assert threads(ctx()) == b"(4)(1 (3)(2))"


def test_references_deep_chain(store, ctx) -> None:
    n = 1500  # deeper than Python's default recursion limit
    items = [msg(f"Re: chain {i}", sent=i, message_id=f"c{i}@x",
                 references=(f"<c{i - 1}@x>" if i else None)) for i in range(n)]
    add(store, *items)
    expected = "(" + " ".join(str(i) for i in range(1, n + 1)) + ")"
    assert threads(ctx()) == expected.encode()


def test_thread_on_a_search_result_and_uids(store, ctx) -> None:
    u = add(store, msg("topic", sent=1, message_id="a@x"),
            msg("Re: topic", sent=2, message_id="b@x", references="<a@x>", body="needle"),
            msg("Re: topic", sent=3, message_id="c@x", references="<a@x> <b@x>"))
    c = ctx()
    result = thread(c, "REFERENCES", "UTF-8", SearchKey("NOT", (SearchKey("BODY", (b"needle",)),)))
    # Message 2 is not in the result: 3 hangs under the dummy for b, which is pruned.
    assert format_threads(result, lambda uid: uid) == f"({u[0]} {u[2]})".encode()
