"""Flags, COPY, MOVE, EXPUNGE, CONDSTORE/QRESYNC data and change notifications."""

from __future__ import annotations

import asyncio

import pytest

from mailkeep.store import (
    DeliveryRequest,
    Expunged,
    FlagsChanged,
    InvalidFlag,
    MailboxesChanged,
    MessageAdded,
    NoSuchMailbox,
    NoSuchMessage,
    QuotaExceeded,
)

from .conftest import ACCOUNT, message, wait_for


async def fill(store, mailbox: str = "INBOX", n: int = 3) -> list[int]:
    return [await store.append(ACCOUNT, mailbox, message(f"m{i}")) for i in range(n)]


async def test_store_flags_modes(store) -> None:
    [uid] = await fill(store, n=1)
    r = await store.store_flags(ACCOUNT, "INBOX", [uid], ["\\Seen", "Work"], "add")
    assert r.updated[0].flags == ("\\Seen", "Work") and r.updated[0].changed
    r = await store.store_flags(ACCOUNT, "INBOX", [uid], ["work"], "remove")  # any case
    assert r.updated[0].flags == ("\\Seen",)
    r = await store.store_flags(ACCOUNT, "INBOX", [uid], ["\\Flagged", "$Label1"], "set")
    assert r.updated[0].flags == ("\\Flagged", "$Label1")
    assert store.get_message(ACCOUNT, "INBOX", uid).flags == ("\\Flagged", "$Label1")


async def test_keywords_keep_the_mailbox_spelling(store) -> None:
    a, b = await fill(store, n=2)
    await store.store_flags(ACCOUNT, "INBOX", [a], ["$NotJunk"], "add")
    await store.store_flags(ACCOUNT, "INBOX", [b], ["$NOTJUNK"], "add")
    assert store.get_message(ACCOUNT, "INBOX", b).flags == ("$NotJunk",)
    assert store.get_mailbox(ACCOUNT, "INBOX").keywords == ("$NotJunk",)


async def test_modseq_rules(store) -> None:
    # RFC 7162 §3.1: every change gets a greater mod-sequence; a no-op does not.
    uids = await fill(store)
    start = store.get_mailbox(ACCOUNT, "INBOX").highestmodseq
    r = await store.store_flags(ACCOUNT, "INBOX", uids, ["\\Seen"], "add")
    modseq = r.updated[0].modseq
    assert modseq > start and all(u.modseq == modseq for u in r.updated)
    again = await store.store_flags(ACCOUNT, "INBOX", uids, ["\\Seen"], "add")
    assert all(not u.changed and u.modseq == modseq for u in again.updated)
    assert store.get_mailbox(ACCOUNT, "INBOX").highestmodseq == modseq
    changed = store.list_messages(ACCOUNT, "INBOX", since_modseq=start)
    assert [m.uid for m in changed] == uids
    assert store.list_messages(ACCOUNT, "INBOX", since_modseq=modseq) == []


async def test_unchangedsince(store) -> None:
    # RFC 7162 §3.1.3: messages changed after UNCHANGEDSINCE are reported, not changed.
    a, b = await fill(store, n=2)
    r = await store.store_flags(ACCOUNT, "INBOX", [a], ["\\Flagged"], "add")
    base = r.updated[0].modseq - 1
    r = await store.store_flags(ACCOUNT, "INBOX", [a, b], ["\\Seen"], "add",
                                unchanged_since=base)
    assert r.modified == (a,)
    assert [u.uid for u in r.updated] == [b]
    assert "\\Seen" not in store.get_message(ACCOUNT, "INBOX", a).flags


async def test_store_flags_ignores_missing_uids_and_checks_flags(store) -> None:
    [uid] = await fill(store, n=1)
    r = await store.store_flags(ACCOUNT, "INBOX", [uid, 999], ["\\Seen"])
    assert [u.uid for u in r.updated] == [uid]
    with pytest.raises(InvalidFlag):
        await store.store_flags(ACCOUNT, "INBOX", [uid], ["\\Recent"])


async def test_counters_follow_flags(store) -> None:
    uids = await fill(store, n=4)
    await store.store_flags(ACCOUNT, "INBOX", uids[:3], ["\\Seen"])
    await store.store_flags(ACCOUNT, "INBOX", uids[:2], ["\\Deleted"])
    box = store.get_mailbox(ACCOUNT, "INBOX")
    assert (box.messages, box.unseen, box.deleted) == (4, 1, 2)
    assert box.size == sum(len(message(f"m{i}")) for i in range(4))


async def test_expunge_all_deleted_and_uid_expunge(store) -> None:
    uids = await fill(store, n=4)
    await store.store_flags(ACCOUNT, "INBOX", uids[:3], ["\\Deleted"])
    # RFC 4315 §2.1: UID EXPUNGE removes only the given UIDs that have \Deleted.
    assert await store.expunge(ACCOUNT, "INBOX", [uids[0], uids[3]]) == [uids[0]]
    assert await store.expunge(ACCOUNT, "INBOX") == uids[1:3]
    assert await store.expunge(ACCOUNT, "INBOX") == []
    assert [m.uid for m in store.list_messages(ACCOUNT, "INBOX")] == [uids[3]]
    box = store.get_mailbox(ACCOUNT, "INBOX")
    assert (box.messages, box.deleted) == (1, 0)
    assert store.usage(ACCOUNT).messages == 1


async def test_vanished_since(store) -> None:
    uids = await fill(store, n=3)
    before = store.get_mailbox(ACCOUNT, "INBOX").highestmodseq
    await store.store_flags(ACCOUNT, "INBOX", uids[:2], ["\\Deleted"])
    await store.expunge(ACCOUNT, "INBOX")
    assert store.vanished_since(ACCOUNT, "INBOX", before) == uids[:2]
    now = store.get_mailbox(ACCOUNT, "INBOX").highestmodseq
    assert store.vanished_since(ACCOUNT, "INBOX", now) == []


async def test_uids_are_never_reused(store) -> None:
    uids = await fill(store, n=2)
    await store.store_flags(ACCOUNT, "INBOX", uids, ["\\Deleted"])
    await store.expunge(ACCOUNT, "INBOX")
    [new] = await fill(store, n=1)
    assert new == uids[-1] + 1


async def test_expunged_message_is_gone_and_its_file_removed(store) -> None:
    [uid] = await fill(store, n=1)
    path = store.message_path(ACCOUNT, "INBOX", uid)
    await store.store_flags(ACCOUNT, "INBOX", [uid], ["\\Deleted"])
    await store.expunge(ACCOUNT, "INBOX")
    with pytest.raises(NoSuchMessage):
        store.read_message(ACCOUNT, "INBOX", uid)
    wait_for(lambda: not path.exists())


async def test_copy_keeps_flags_and_dates_and_maps_uids_in_order(store) -> None:
    uids = await fill(store, n=3)
    await store.append(ACCOUNT, "Archive", message("already there"))
    await store.store_flags(ACCOUNT, "INBOX", [uids[1]], ["\\Flagged", "Work"])
    result = await store.copy(ACCOUNT, "INBOX", [uids[2], uids[1], 999], "Archive")
    archive = store.get_mailbox(ACCOUNT, "Archive")
    assert result.uidvalidity == archive.uidvalidity
    assert result.uids == ((uids[1], 2), (uids[2], 3))  # COPYUID, source order
    copied = store.get_message(ACCOUNT, "Archive", 2)
    original = store.get_message(ACCOUNT, "INBOX", uids[1])
    assert copied.flags == ("\\Flagged", "Work")
    assert copied.internal_date == original.internal_date
    assert store.read_message(ACCOUNT, "Archive", 3) == message("m2")
    assert store.usage(ACCOUNT).messages == 6
    assert archive.keywords == ("Work",)
    # The original stays when the copy is expunged, and the other way round.
    await store.store_flags(ACCOUNT, "INBOX", [uids[1]], ["\\Deleted"])
    await store.expunge(ACCOUNT, "INBOX")
    assert store.read_message(ACCOUNT, "Archive", 2) == message("m1")


async def test_copy_errors(store) -> None:
    uids = await fill(store, n=2)
    with pytest.raises(NoSuchMailbox):
        await store.copy(ACCOUNT, "INBOX", uids, "Nowhere")
    with pytest.raises(QuotaExceeded):
        await store.copy(ACCOUNT, "INBOX", uids, "Archive", quota_messages=3)
    assert store.get_mailbox(ACCOUNT, "Archive").messages == 0
    empty = await store.copy(ACCOUNT, "INBOX", [999], "Archive")
    assert empty.uids == ()


async def test_move_is_atomic_copy_and_expunge(store) -> None:
    uids = await fill(store, n=3)
    before = store.usage(ACCOUNT)
    result = await store.move(ACCOUNT, "INBOX", uids[:2], "Trash")
    assert [dst for _, dst in result.uids] == [1, 2]
    assert [m.uid for m in store.list_messages(ACCOUNT, "INBOX")] == [uids[2]]
    assert store.vanished_since(ACCOUNT, "INBOX", 0) == uids[:2]
    assert store.read_message(ACCOUNT, "Trash", 1) == message("m0")
    assert store.usage(ACCOUNT) == before


async def test_notifications_arrive_on_the_subscribing_loop(store) -> None:
    events = []
    loop = asyncio.get_running_loop()
    got = asyncio.Event()

    def on_event(event) -> None:
        assert asyncio.get_running_loop() is loop
        events.append(event)
        got.set()

    subscription = store.subscribe(ACCOUNT, on_event)
    [r] = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    await store.store_flags(ACCOUNT, "INBOX", [r.uid], ["\\Deleted"])
    await store.expunge(ACCOUNT, "INBOX")
    await asyncio.to_thread(store.create_mailbox, ACCOUNT, "New")
    for _ in range(100):
        if len(events) >= 4:
            break
        await asyncio.sleep(0.01)
    kinds = [type(e) for e in events]
    assert kinds == [MessageAdded, FlagsChanged, Expunged, MailboxesChanged]
    assert events[0].uid == r.uid and events[0].mailbox == "INBOX"
    assert events[1].updates[0].flags == ("\\Deleted",)
    assert events[2].uids == (r.uid,)
    assert events[3].change == "created" and events[3].names == ("New",)
    subscription.cancel()
    await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    await asyncio.sleep(0.05)
    assert len(events) == 4


async def test_other_accounts_events_are_not_delivered(store) -> None:
    store.ensure_account("you@example.com")
    events = []
    store.subscribe("you@example.com", events.append)
    await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    await asyncio.sleep(0.05)
    assert events == []


def test_subscribe_needs_a_loop(store) -> None:
    with pytest.raises(RuntimeError):
        store.subscribe(ACCOUNT, print)


async def test_snapshot_keeps_expunged_files_readable_until_closed(store) -> None:
    [uid] = await fill(store, n=1)
    path = store.message_path(ACCOUNT, "INBOX", uid)
    with store.snapshot(ACCOUNT) as snap:
        await store.store_flags(ACCOUNT, "INBOX", [uid], ["\\Deleted"])
        await store.expunge(ACCOUNT, "INBOX")
        await asyncio.sleep(0.2)
        assert [m.uid for m in snap.iter_messages("INBOX")] == [uid]  # as of the start
        with snap.open_message("INBOX", uid) as f:
            assert f.read() == message("m0")
        assert path.exists()
    wait_for(lambda: not path.exists())
