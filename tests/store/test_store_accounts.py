"""Accounts and mailboxes: what an administrator and an IMAP client see."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailkeep.store import (
    DEFAULT_MAILBOXES,
    DeliveryRequest,
    MailboxError,
    MailboxExists,
    NoSuchAccount,
    NoSuchMailbox,
    StoreError,
    StoreLimits,
    open_store,
)

from .conftest import ACCOUNT, message, tiny_indexer, wait_for


def test_new_account_has_inbox_and_special_use_mailboxes(store) -> None:
    boxes = {m.name: m for m in store.list_mailboxes(ACCOUNT)}
    assert set(boxes) == {name for name, _ in DEFAULT_MAILBOXES}
    assert boxes["Sent"].special_use == "\\Sent"
    assert boxes["Drafts"].special_use == "\\Drafts"
    assert boxes["Junk"].special_use == "\\Junk"
    assert boxes["Trash"].special_use == "\\Trash"
    assert boxes["Archive"].special_use == "\\Archive"
    assert boxes["INBOX"].special_use is None
    assert all(m.subscribed for m in boxes.values())
    assert store.list_mailboxes(ACCOUNT)[0].name == "INBOX"  # INBOX is listed first
    assert len({m.uidvalidity for m in boxes.values()}) == len(boxes)
    assert all(m.uidnext == 1 and m.messages == 0 for m in boxes.values())


def test_ensure_account_is_idempotent(store) -> None:
    before = store.list_mailboxes(ACCOUNT)
    assert store.ensure_account(ACCOUNT) is False
    assert store.list_mailboxes(ACCOUNT) == before
    assert store.list_accounts() == [ACCOUNT]


def test_unknown_account(store) -> None:
    with pytest.raises(NoSuchAccount):
        store.list_mailboxes("nobody@example.com")
    with pytest.raises(NoSuchAccount):
        store.usage("nobody@example.com")
    with pytest.raises(NoSuchAccount):
        store.delete_account("nobody@example.com")


def test_bad_account_names_are_refused(store) -> None:
    for bad in ["", " me@example.com", "a\nb@example.com", "x" * 400]:
        with pytest.raises(StoreError):
            store.ensure_account(bad)


def test_create_makes_superiors_and_refuses_duplicates(store) -> None:
    info = store.create_mailbox(ACCOUNT, "Projects/2024/Q1")
    assert info.name == "Projects/2024/Q1" and info.messages == 0
    names = [m.name for m in store.list_mailboxes(ACCOUNT)]
    assert {"Projects", "Projects/2024", "Projects/2024/Q1"} <= set(names)
    with pytest.raises(MailboxExists):
        store.create_mailbox(ACCOUNT, "Projects/2024")
    with pytest.raises(MailboxExists):
        store.create_mailbox(ACCOUNT, "inbox")
    with pytest.raises(MailboxError) as info:
        store.create_mailbox(ACCOUNT, "bad//name")
    assert info.value.reason == "invalid-name"


def test_create_with_special_use(store) -> None:
    info = store.create_mailbox(ACCOUNT, "Old Sent", special_use="\\sent")
    assert info.special_use == "\\Sent"
    with pytest.raises(MailboxError) as info:
        store.create_mailbox(ACCOUNT, "Everything", special_use="\\All")
    assert info.value.reason == "bad-special-use"


def test_mailbox_limit(data_dir: Path) -> None:
    with open_store(data_dir, indexer=tiny_indexer,
                    limits=StoreLimits(max_mailboxes=8)) as store:
        store.ensure_account(ACCOUNT)  # 6 mailboxes
        store.create_mailbox(ACCOUNT, "a")
        store.create_mailbox(ACCOUNT, "b")
        with pytest.raises(MailboxError) as info:
            store.create_mailbox(ACCOUNT, "c")
        assert info.value.reason == "too-many"


def test_delete_refusals_say_why(store) -> None:
    with pytest.raises(MailboxError) as info:
        store.delete_mailbox(ACCOUNT, "INBOX")
    assert info.value.reason == "inbox"
    with pytest.raises(MailboxError) as info:
        store.delete_mailbox(ACCOUNT, "Trash")
    assert info.value.reason == "special-use"
    assert "Trash" in str(info.value)
    store.create_mailbox(ACCOUNT, "a/b")
    with pytest.raises(MailboxError) as info:
        store.delete_mailbox(ACCOUNT, "a")
    assert info.value.reason == "has-children"
    with pytest.raises(NoSuchMailbox):
        store.delete_mailbox(ACCOUNT, "nope")


async def test_delete_mailbox_removes_its_mail_and_keeps_the_subscription(store) -> None:
    store.create_mailbox(ACCOUNT, "Lists")
    store.subscribe_mailbox(ACCOUNT, "Lists")
    uid = await store.append(ACCOUNT, "Lists", message())
    path = store.message_path(ACCOUNT, "Lists", uid)
    store.delete_mailbox(ACCOUNT, "Lists")
    assert "Lists" not in [m.name for m in store.list_mailboxes(ACCOUNT)]
    assert store.usage(ACCOUNT).messages == 0
    wait_for(lambda: not path.exists())
    # RFC 9051 §6.3.9: the subscription is not removed when the mailbox goes.
    assert "Lists" in store.list_subscriptions(ACCOUNT)
    # A mailbox created again under the old name is a new incarnation.
    again = store.create_mailbox(ACCOUNT, "Lists")
    assert again.uidnext == 1


async def test_recreated_mailbox_gets_a_greater_uidvalidity(store) -> None:
    first = store.create_mailbox(ACCOUNT, "Temp")
    store.delete_mailbox(ACCOUNT, "Temp")
    second = store.create_mailbox(ACCOUNT, "Temp")
    assert second.uidvalidity > first.uidvalidity


async def test_rename_moves_children_and_subscriptions(store) -> None:
    store.create_mailbox(ACCOUNT, "Work/Clients")
    store.subscribe_mailbox(ACCOUNT, "Work/Clients")
    uid = await store.append(ACCOUNT, "Work/Clients", message("client"))
    before = store.get_mailbox(ACCOUNT, "Work/Clients")
    store.rename_mailbox(ACCOUNT, "Work", "Archive/Old Work")
    names = {m.name for m in store.list_mailboxes(ACCOUNT)}
    assert "Work" not in names and "Work/Clients" not in names
    assert {"Archive/Old Work", "Archive/Old Work/Clients"} <= names
    after = store.get_mailbox(ACCOUNT, "Archive/Old Work/Clients")
    assert after.uidvalidity == before.uidvalidity and after.uidnext == before.uidnext
    assert store.read_message(ACCOUNT, "Archive/Old Work/Clients", uid) == message("client")
    assert "Archive/Old Work/Clients" in store.list_subscriptions(ACCOUNT)
    assert "Work/Clients" not in store.list_subscriptions(ACCOUNT)


async def test_rename_special_use_mailbox_keeps_the_attribute(store) -> None:
    store.rename_mailbox(ACCOUNT, "Sent", "Sent Items")
    assert store.get_mailbox(ACCOUNT, "Sent Items").special_use == "\\Sent"


async def test_rename_refusals(store) -> None:
    store.create_mailbox(ACCOUNT, "a")
    with pytest.raises(MailboxExists):
        store.rename_mailbox(ACCOUNT, "a", "Trash")
    with pytest.raises(NoSuchMailbox):
        store.rename_mailbox(ACCOUNT, "zzz", "b")
    with pytest.raises(MailboxError):
        store.rename_mailbox(ACCOUNT, "a", "a/inside")


async def test_rename_inbox_moves_its_messages_and_leaves_it_empty(store) -> None:
    # RFC 9051 §6.3.6.
    store.create_mailbox(ACCOUNT, "INBOX/Sub")
    inbox_before = store.get_mailbox(ACCOUNT, "INBOX")
    uids = [await store.append(ACCOUNT, "INBOX", message(f"m{i}"), ["\\Seen"]) for i in range(3)]
    store.rename_mailbox(ACCOUNT, "INBOX", "Old Mail")
    inbox = store.get_mailbox(ACCOUNT, "INBOX")
    assert inbox.messages == 0 and inbox.uidvalidity == inbox_before.uidvalidity
    assert store.vanished_since(ACCOUNT, "INBOX", 0) == uids
    moved = store.list_messages(ACCOUNT, "Old Mail")
    assert [store.read_message(ACCOUNT, "Old Mail", m.uid) for m in moved] == \
        [message(f"m{i}") for i in range(3)]
    assert all(m.flags == ("\\Seen",) for m in moved)
    assert "INBOX/Sub" in {m.name for m in store.list_mailboxes(ACCOUNT)}


async def test_subscriptions(store) -> None:
    store.unsubscribe_mailbox(ACCOUNT, "Junk")
    assert not store.get_mailbox(ACCOUNT, "Junk").subscribed
    store.subscribe_mailbox(ACCOUNT, "Not/Yet/There")  # allowed (RFC 9051 §6.3.7)
    assert "Not/Yet/There" in store.list_subscriptions(ACCOUNT)
    assert "Junk" not in store.list_subscriptions(ACCOUNT)


async def test_delete_account_removes_its_data(store, data_dir: Path) -> None:
    await store.append(ACCOUNT, "INBOX", message())
    account_dirs = list((data_dir / "store" / "accounts").iterdir())
    assert len(account_dirs) == 1
    store.delete_account(ACCOUNT)
    assert store.list_accounts() == []
    wait_for(lambda: not account_dirs[0].exists())
    assert store.ensure_account(ACCOUNT) is True
    assert store.usage(ACCOUNT).messages == 0
    results = await store.deliver([DeliveryRequest(ACCOUNT, None, b"", message())])
    assert results[0].uid == 1


def test_state_survives_reopen(data_dir: Path) -> None:
    with open_store(data_dir, indexer=tiny_indexer) as store:
        store.ensure_account(ACCOUNT)
        store.create_mailbox(ACCOUNT, "Keep")
        before = store.list_mailboxes(ACCOUNT)
    with open_store(data_dir, indexer=tiny_indexer) as store:
        assert store.list_mailboxes(ACCOUNT) == before
        assert store.recovery.orphan_files == 0
