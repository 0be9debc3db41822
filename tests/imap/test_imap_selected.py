"""The selected-mailbox view: sequence numbers and the order of untagged updates."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.imap.commands import SequenceSet
from mailkeep.imap.response import sequence_set
from mailkeep.imap.selected import (
    BadSequence,
    SelectedMailbox,
    ViewOptions,
)
from mailkeep.store.api import FlagUpdate, MessageInfo


def info(uid: int, modseq: int = 1, flags: tuple[str, ...] = ()) -> MessageInfo:
    return MessageInfo(uid=uid, modseq=modseq, flags=flags, internal_date=0.0,
                       save_date=0.0, size=100)


def view(uids, **kw) -> SelectedMailbox:
    return SelectedMailbox("INBOX", 7, [info(u) for u in uids], readonly=False,
                           synced_modseq=1, **kw)


def test_compact_uids():
    assert sequence_set([]) == b""
    assert sequence_set([5, 1, 2, 3, 9, 10]) == b"1:3,5,9:10"


def test_sequence_numbers_and_star():
    sel = view([3, 8, 20])
    assert sel.resolve(SequenceSet(((2, None),)), uid=False) == [(2, 8), (3, 20)]
    assert sel.resolve(SequenceSet(((None, 1),)), uid=False) == [(1, 3), (2, 8), (3, 20)]
    with pytest.raises(BadSequence):
        sel.resolve(SequenceSet(((4, 4),)), uid=False)


def test_uid_sets_ignore_missing_and_star_is_largest():
    sel = view([3, 8, 20])
    assert sel.resolve(SequenceSet(((4, 10),)), uid=True) == [(2, 8)]
    # RFC 9051 §6.4.9: "n:*" always includes the largest UID, even when n is larger.
    assert sel.resolve(SequenceSet(((100, None),)), uid=True) == [(3, 20)]
    assert sel.resolve(SequenceSet(((1, 2),)), uid=True) == []


def test_saved_result_names_messages():
    sel = view([3, 8, 20])
    sel.saved_search = [20, 3, 99]
    assert sel.resolve(SequenceSet(saved=True), uid=True) == [(1, 3), (3, 20)]


def test_new_message_and_flag_change_are_announced_once():
    sel = view([1, 2])
    sel.apply_changes([info(2, 5, ("\\Seen",)), info(3, 6)], [], 6)
    out = sel.take_updates(allow_expunge=True)
    assert out == [b"* 3 EXISTS\r\n", b"* 2 FETCH (FLAGS (\\Seen))\r\n"]
    # The same changes read again (a notification after our own command) say nothing.
    sel.apply_changes([info(2, 5, ("\\Seen",)), info(3, 6)], [], 6)
    assert sel.take_updates(allow_expunge=True) == []


def test_expunge_is_held_back_when_not_allowed():
    sel = view([1, 2, 3, 4])
    sel.apply_changes([info(5, 9)], [2, 4], 9)
    held = sel.take_updates(allow_expunge=False)
    assert held == [b"* 5 EXISTS\r\n"]
    assert sel.seq_of(4) == 4  # numbers do not move while expunges are held
    out = sel.take_updates(allow_expunge=True)
    assert out == [b"* 4 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert sel.uids == [1, 3, 5]


def test_qresync_sends_vanished_and_condstore_adds_modseq():
    sel = view([1, 2, 3], options=ViewOptions(condstore=True, qresync=True))
    sel.apply_changes([info(1, 4, ("\\Flagged",))], [2, 3], 4)
    out = sel.take_updates(allow_expunge=True)
    assert out == [b"* VANISHED 2:3\r\n",
                   b"* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (4))\r\n"]


def test_own_store_is_not_reported_again():
    sel = view([1, 2])
    pairs = sel.note_flags([FlagUpdate(2, 7, ("\\Deleted",))])
    assert [(s, u.uid) for s, u in pairs] == [(2, 2)]
    sel.apply_changes([info(2, 7, ("\\Deleted",))], [], 7)
    assert sel.take_updates(allow_expunge=True) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), unique=True, min_size=1, max_size=40).map(sorted),
       st.data())
def test_expunge_announcements_replay_to_the_store_state(uids, data):
    """A client applying the EXPUNGE responses in order ends with the store's UIDs."""
    gone = data.draw(st.lists(st.sampled_from(uids), unique=True))
    sel = view(uids)
    sel.apply_changes([], gone, 2)
    client = list(uids)
    for line in sel.take_updates(allow_expunge=True):
        if line.endswith(b"EXPUNGE\r\n"):
            del client[int(line.split()[1]) - 1]
    assert client == [u for u in uids if u not in gone] == sel.uids
