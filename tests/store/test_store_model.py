"""The store against a model: random sequences of deliveries, flag changes, copies, moves
and expunges must leave exactly the messages, flags, counters and mod-sequences the IMAP
rules predict."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from mailkeep.store import DeliveryRequest, open_store

from .conftest import ACCOUNT, tiny_indexer

MAILBOXES = ["INBOX", "Archive"]
SYSTEM = ["\\Seen", "\\Flagged", "\\Deleted"]
KEYWORDS = ["Work", "$Junk"]
ORDER = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]

flag_sets = st.sets(st.sampled_from(SYSTEM + KEYWORDS), max_size=3)
uid_picks = st.lists(st.integers(min_value=1, max_value=12), max_size=5)


def canonical(flags: set[str]) -> tuple[str, ...]:
    system = tuple(f for f in ORDER if f in flags)
    return system + tuple(sorted((f for f in flags if not f.startswith("\\")),
                                 key=lambda k: (k.lower(), k)))


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.loop = asyncio.new_event_loop()
        self.store = open_store(self.tmp, indexer=tiny_indexer)
        self.store.ensure_account(ACCOUNT)
        # mailbox -> uid -> (flags, body)
        self.model: dict[str, dict[int, tuple[set[str], bytes]]] = {m: {} for m in MAILBOXES}
        self.uidnext = {m: 1 for m in MAILBOXES}
        self.expunged: dict[str, list[int]] = {m: [] for m in MAILBOXES}
        self.highest = {m: self.store.get_mailbox(ACCOUNT, m).highestmodseq for m in MAILBOXES}
        self.counter = 0

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.store.close()
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(mailbox=st.sampled_from(MAILBOXES), flags=flag_sets)
    def deliver(self, mailbox: str, flags: set[str]) -> None:
        self.counter += 1
        body = b"Subject: %d\r\n\r\n%s\r\n" % (self.counter, b"x" * (self.counter % 7))
        [result] = self.run(self.store.deliver(
            [DeliveryRequest(ACCOUNT, mailbox, b"", body, flags=tuple(sorted(flags)))]))
        assert result.ok and result.uid == self.uidnext[mailbox]
        self.model[mailbox][result.uid] = (set(flags), body)
        self.uidnext[mailbox] += 1

    @rule(mailbox=st.sampled_from(MAILBOXES), uids=uid_picks, flags=flag_sets,
          mode=st.sampled_from(["set", "add", "remove"]))
    def store_flags(self, mailbox: str, uids: list[int], flags: set[str], mode: str) -> None:
        result = self.run(self.store.store_flags(ACCOUNT, mailbox, uids, sorted(flags), mode))
        existing = sorted(set(uids) & set(self.model[mailbox]))
        assert [u.uid for u in result.updated] == existing
        for update in result.updated:
            old, body = self.model[mailbox][update.uid]
            new = set(flags) if mode == "set" else old | flags if mode == "add" else old - flags
            self.model[mailbox][update.uid] = (new, body)
            assert update.flags == canonical(new)
            assert update.changed == (new != old)

    @rule(src=st.sampled_from(MAILBOXES), dst=st.sampled_from(MAILBOXES), uids=uid_picks,
          move=st.booleans())
    def copy_or_move(self, src: str, dst: str, uids: list[int], move: bool) -> None:
        op = self.store.move if move else self.store.copy
        result = self.run(op(ACCOUNT, src, uids, dst))
        existing = sorted(set(uids) & set(self.model[src]))
        assert [s for s, _ in result.uids] == existing
        assert [d for _, d in result.uids] == list(
            range(self.uidnext[dst], self.uidnext[dst] + len(existing)))
        for s, d in result.uids:
            flags, body = self.model[src][s]
            self.model[dst][d] = (set(flags), body)
        self.uidnext[dst] += len(existing)
        if move:
            for s in existing:
                del self.model[src][s]
            self.expunged[src].extend(existing)

    @rule(mailbox=st.sampled_from(MAILBOXES), uids=st.one_of(st.none(), uid_picks))
    def expunge(self, mailbox: str, uids: list[int] | None) -> None:
        result = self.run(self.store.expunge(ACCOUNT, mailbox, uids))
        candidates = self.model[mailbox] if uids is None else set(uids) & set(self.model[mailbox])
        expected = sorted(u for u in candidates if "\\Deleted" in self.model[mailbox][u][0])
        assert result == expected
        for uid in expected:
            del self.model[mailbox][uid]
        self.expunged[mailbox].extend(expected)

    @invariant()
    def matches_the_model(self) -> None:
        total_bytes = total_messages = 0
        for mailbox in MAILBOXES:
            listed = self.store.list_messages(ACCOUNT, mailbox)
            model = self.model[mailbox]
            assert [m.uid for m in listed] == sorted(model)
            for info in listed:
                flags, body = model[info.uid]
                assert info.flags == canonical(flags)
                assert info.size == len(body)
            box = self.store.get_mailbox(ACCOUNT, mailbox)
            assert box.messages == len(model)
            assert box.unseen == sum("\\Seen" not in f for f, _ in model.values())
            assert box.deleted == sum("\\Deleted" in f for f, _ in model.values())
            assert box.size == sum(len(b) for _, b in model.values())
            assert box.uidnext == self.uidnext[mailbox]
            # RFC 7162 §3.1.2: HIGHESTMODSEQ never decreases and bounds every message's.
            assert box.highestmodseq >= self.highest[mailbox]
            assert all(m.modseq <= box.highestmodseq for m in listed)
            self.highest[mailbox] = box.highestmodseq
            assert self.store.vanished_since(ACCOUNT, mailbox, 0) == sorted(
                self.expunged[mailbox])
            total_bytes += box.size
            total_messages += box.messages
        usage = self.store.usage(ACCOUNT)
        assert (usage.bytes, usage.messages) == (total_bytes, total_messages)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=15, stateful_step_count=20, deadline=None)
