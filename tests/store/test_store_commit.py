"""Group commit (store/committer.py): who commits, what is merged, what a caller gets back.

Deliveries that wait behind a commit are committed together, in one transaction and, when
they can be, by one bulk apply with a handful of statements; whatever the path, each
request gets exactly what it would get alone: its own UID, its own quota verdict.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.store import DeliveryRequest, StoreError, open_store
from mailkeep.store.committer import Operation

from .conftest import ACCOUNT, message, message_files, tiny_indexer, wait_for


@contextmanager
def commits_held(store) -> Iterator[None]:
    """Keep the committer busy until the block exits: writes submitted meanwhile queue up
    and are then committed in one batch."""
    release, started = threading.Event(), threading.Event()

    def hold(ctx) -> None:
        started.set()
        release.wait(10)

    store._committer.submit(Operation(hold), lead=False)  # the helper thread runs it
    assert started.wait(5)
    try:
        yield
    finally:
        release.set()


def queued(store) -> int:
    with store._committer._lock:
        return len(store._committer._queue)


def spy_bulk(store, monkeypatch) -> list[int]:
    """Record the size of every bulk apply."""
    sizes: list[int] = []
    real = store._bulk_deliver

    def bulk(ctx, ops):
        sizes.append(len(ops))
        return real(ctx, ops)

    monkeypatch.setattr(store, "_bulk_deliver", bulk)
    return sizes


async def deliver_held(store, requests: list[list[DeliveryRequest]]):
    """Deliver each list with its own deliver() call, all queued behind one commit."""
    with commits_held(store):
        tasks = [asyncio.ensure_future(store.deliver(r)) for r in requests]
        await asyncio.to_thread(wait_for, lambda: queued(store) == len(requests))
    return await asyncio.gather(*tasks)


async def test_queued_deliveries_commit_together_each_as_if_alone(store, monkeypatch) -> None:
    sizes = spy_bulk(store, monkeypatch)
    other = "other@example.com"
    store.ensure_account(other)
    store.create_mailbox(other, "Lists")

    def limited(subject: str) -> DeliveryRequest:
        return DeliveryRequest(ACCOUNT, None, b"", message(subject), quota_messages=4)

    requests = [
        [limited("q1")], [limited("q2")], [limited("q3")], [limited("q4"), limited("q5")],
        [limited("q6")],
        [DeliveryRequest(other, "Lists", b"", message("label"), flags=("$Label1",))],
        [DeliveryRequest(other, "Nowhere", b"", message("fallback"))],
        [DeliveryRequest(other, None, b"", message("bad"), flags=("bad flag",))],
        [DeliveryRequest("nobody@example.com", None, b"", message("nobody"))],
    ]
    calls = await deliver_held(store, requests)
    assert sizes and max(sizes) == len(requests), "the queued deliveries went in one bulk"
    # Whatever order the files were written in: exactly four within the quota, with the
    # UIDs 1-4, the other two refused.
    quota_results = [r for call in calls[:5] for r in call]
    assert sorted(r.uid for r in quota_results if r.ok) == [1, 2, 3, 4]
    assert [r.error for r in quota_results].count("quota") == 2
    [label], [fallback], [bad], [nobody] = calls[5:]
    assert label.ok and label.mailbox == "Lists" and label.uid == 1
    assert store.get_message(other, "Lists", 1).flags == ("$Label1",)
    assert store.get_mailbox(other, "Lists").keywords == ("$Label1",)
    assert fallback.ok and fallback.mailbox == "INBOX" and fallback.uid == 1
    assert bad.error == "bad-flag" and nobody.error == "no-account"
    assert store.usage(ACCOUNT).messages == 4 and store.usage(other).messages == 2
    for account, name in ((ACCOUNT, "INBOX"), (other, "INBOX"), (other, "Lists")):
        box = store.get_mailbox(account, name)
        infos = store.list_messages(account, name)
        assert box.messages == len(infos) and box.size == sum(i.size for i in infos)
        assert box.unseen == len(infos) and box.uidnext == infos[-1].uid + 1
        assert box.highestmodseq == max(i.modseq for i in infos)
        assert len({i.modseq for i in infos}) == len(infos)
    stored = {r.uid: s for s, r in zip(["q1", "q2", "q3", "q4", "q5", "q6"], quota_results,
                                          strict=True) if r.ok}
    for uid, subject in stored.items():
        assert store.read_message(ACCOUNT, "INBOX", uid) == message(subject)
    # Refused messages left no file.
    assert len(message_files(store.accounts_dir / store._account_dir(ACCOUNT))) == 4


async def test_a_mailbox_to_create_is_left_to_the_one_by_one_path(store, monkeypatch) -> None:
    sizes = spy_bulk(store, monkeypatch)
    requests = [[DeliveryRequest(ACCOUNT, "Lists/new", b"", message(f"n{n}"),
                                 create_mailbox=n == 2)] for n in range(5)]
    results = [r for call in await deliver_held(store, requests) for r in call]
    assert sizes == [5]  # tried, refused (NotBulk), done one by one
    assert all(r.ok for r in results)
    assert [r.mailbox for r in results].count("Lists/new") >= 1
    assert sum(len(store.list_messages(ACCOUNT, b)) for b in ("INBOX", "Lists/new")) == 5


async def test_a_failing_bulk_apply_changes_nothing_and_the_writes_still_happen(
        store, monkeypatch) -> None:
    real = store._bulk_deliver

    def broken(ctx, ops):
        real(ctx, ops)  # writes everything, then fails: the SAVEPOINT must undo it all
        raise RuntimeError("bug")

    monkeypatch.setattr(store, "_bulk_deliver", broken)
    requests = [[DeliveryRequest(ACCOUNT, None, b"", message(f"n{n}"))] for n in range(6)]
    results = [r for call in await deliver_held(store, requests) for r in call]
    assert sorted(r.uid for r in results) == [1, 2, 3, 4, 5, 6]
    assert store.get_mailbox(ACCOUNT, "INBOX").messages == 6
    assert store.usage(ACCOUNT).messages == 6


async def test_a_cancelled_delivery_is_not_stored(store) -> None:
    with commits_held(store):
        task = asyncio.ensure_future(store.deliver([DeliveryRequest(ACCOUNT, None, b"",
                                                                    message())]))
        await asyncio.to_thread(wait_for, lambda: queued(store) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    [after] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message("after"))])
    assert after.uid == 1  # the cancelled one never took a UID
    assert len(message_files(next((store.root / "accounts").iterdir()))) == 1


async def test_blocking_writes_from_threads_while_deliveries_run(store) -> None:
    async def deliveries() -> list[int]:
        uids = []
        for n in range(30):
            [r] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message(f"{n}"))])
            uids.append(r.uid)
        return uids

    def mailboxes(prefix: str) -> None:
        for n in range(10):
            store.create_mailbox(ACCOUNT, f"{prefix}{n}")

    results = await asyncio.gather(deliveries(), deliveries(),
                                   asyncio.to_thread(mailboxes, "a"),
                                   asyncio.to_thread(mailboxes, "b"))
    assert sorted(results[0] + results[1]) == list(range(1, 61))
    assert len(store.list_mailboxes(ACCOUNT)) == 6 + 20


def test_deliveries_from_two_event_loops(store) -> None:
    """Each caller's result goes back to its own loop, even when both are committed in
    one batch by whichever thread leads."""
    out: dict[str, list[int]] = {}

    def run(name: str) -> None:
        async def go() -> list[int]:
            calls = [store.deliver([DeliveryRequest(ACCOUNT, None, b"", message(name))])
                     for _ in range(20)]
            return [r.uid for [r] in await asyncio.gather(*calls)]

        out[name] = asyncio.run(go())

    threads = [threading.Thread(target=run, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(out["x"] + out["y"]) == list(range(1, 41))


async def test_writes_after_close_are_refused(data_dir: Path) -> None:
    store = open_store(data_dir, indexer=tiny_indexer)
    store.ensure_account(ACCOUNT)
    store.close()
    with pytest.raises(StoreError) as info:
        await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    assert info.value.reason == "closed"


# A request as hypothesis draws it: mailbox, flags, quotas, create, body length.
_request_specs = st.tuples(
    st.sampled_from([None, "INBOX", "Lists", "Missing", "Lists/Sub"]),
    st.lists(st.sampled_from(["\\Seen", "\\Deleted", "$Label", "$label", "$Other",
                              "bad flag"]), max_size=3, unique=True),
    st.one_of(st.none(), st.integers(1, 6)),
    st.one_of(st.none(), st.integers(1, 6)),
    st.booleans(),
    st.integers(0, 40),
)


def _request(account: str, spec: tuple) -> DeliveryRequest:
    mailbox, flags, quota_messages, quota_units, create, length = spec
    return DeliveryRequest(account, mailbox, b"", message("x" * length), flags=tuple(flags),
                           quota_messages=quota_messages,
                           quota_bytes=None if quota_units is None else quota_units * 90,
                           create_mailbox=create)


def _state(store, account: str) -> list[tuple]:
    return [(b.name, b.messages, b.unseen, b.deleted, b.size, b.uidnext, b.highestmodseq,
             b.keywords, [(m.uid, m.modseq, m.flags, m.size)
                          for m in store.list_messages(account, b.name)])
            for b in store.list_mailboxes(account)] + [store.usage(account)]


def test_a_bulk_commit_gives_what_one_by_one_gives(data_dir: Path) -> None:
    """The same requests, committed together (bulk) for one account and one after the
    other for another, give the same results and leave the same mailboxes."""
    store = open_store(data_dir, indexer=tiny_indexer)
    numbers = itertools.count()
    real_bulk, bulk_sizes = store._bulk_deliver, []

    def counting_bulk(ctx, ops):
        bulk_sizes.append(len(ops))
        return real_bulk(ctx, ops)

    store._bulk_deliver = counting_bulk

    async def compare(specs: list[tuple]) -> None:
        n = next(numbers)
        together, alone = f"bulk{n}@example.com", f"alone{n}@example.com"
        for account in (together, alone):
            store.ensure_account(account)
            store.create_mailbox(account, "Lists")
        tasks = []
        with commits_held(store):
            for i, spec in enumerate(specs):  # queued in this order, committed as one batch
                tasks.append(asyncio.ensure_future(store.deliver([_request(together, spec)])))
                await asyncio.to_thread(wait_for, lambda i=i: queued(store) == i + 1)
        bulk = [r for [r] in await asyncio.gather(*tasks)]
        one_by_one = [r for spec in specs for r in await store.deliver([_request(alone, spec)])]
        assert [(r.ok, r.error, r.mailbox, r.uid) for r in bulk] == \
            [(r.ok, r.error, r.mailbox, r.uid) for r in one_by_one]
        assert _state(store, together) == _state(store, alone)

    @settings(max_examples=30, deadline=None)
    @given(st.lists(_request_specs, min_size=2, max_size=8))
    def check(specs: list[tuple]) -> None:
        asyncio.run(compare(specs))

    try:
        check()
    finally:
        store.close()
    assert bulk_sizes and max(bulk_sizes) >= 2, "no batch went through the bulk apply"
