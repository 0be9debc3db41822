"""Mailbox-name and flag canonicalisation (pure functions), including property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.store import InvalidFlag, MailboxError, StoreLimits
from mailkeep.store.names import (
    canonical_mailbox_name,
    format_flags,
    parent_names,
    parse_flags,
)


@pytest.mark.parametrize("raw, canonical", [
    ("INBOX", "INBOX"),
    ("inbox", "INBOX"),
    ("InBoX/Receipts", "INBOX/Receipts"),
    ("Archive/2024", "Archive/2024"),
    ("Inboxes", "Inboxes"),
    ("Caf\u0065\u0301", "Caf\u00e9"),  # NFC
])
def test_canonical_names(raw: str, canonical: str) -> None:
    assert canonical_mailbox_name(raw) == canonical


@pytest.mark.parametrize("bad", ["", "/a", "a/", "a//b", "a/../b", ".", "a*", "50%",
                                 "tab\there", "x\x00", "del\x7f"])
def test_invalid_names_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(MailboxError) as info:
        canonical_mailbox_name(bad)
    assert info.value.reason == "invalid-name"


def test_name_limits() -> None:
    limits = StoreLimits(max_mailbox_name_bytes=10, max_mailbox_depth=3)
    canonical_mailbox_name("a/b/c", limits)
    with pytest.raises(MailboxError):
        canonical_mailbox_name("a/b/c/d", limits)
    with pytest.raises(MailboxError):
        canonical_mailbox_name("é" * 6, limits)  # 12 bytes in UTF-8


def test_parent_names() -> None:
    assert parent_names("a/b/c") == ["a", "a/b"]
    assert parent_names("a") == []


def test_flags_are_split_and_canonicalised() -> None:
    bits, keywords = parse_flags(["\\SEEN", "\\flagged", "$Forwarded", "$forwarded", "Work"])
    assert format_flags(bits, keywords) == ("\\Seen", "\\Flagged", "$Forwarded", "Work")


@pytest.mark.parametrize("bad", ["\\Recent", "\\Unknown", "a b", "a(b", "x]", "é", ""])
def test_bad_flags_are_refused(bad: str) -> None:
    with pytest.raises(InvalidFlag):
        parse_flags([bad])


def test_a_single_string_is_not_a_flag_list() -> None:
    with pytest.raises(TypeError):
        parse_flags("\\Seen")


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40)


@settings(max_examples=200, deadline=None)
@given(names)
def test_canonicalisation_is_idempotent_or_refuses(name: str) -> None:
    try:
        canonical = canonical_mailbox_name(name)
    except MailboxError as exc:
        assert exc.reason == "invalid-name"
        return
    assert canonical_mailbox_name(canonical) == canonical
    assert canonical.split("/")[0] != "inbox" or canonical.startswith("INBOX")
    assert all(part and part not in (".", "..") for part in canonical.split("/"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=8))
def test_parse_flags_never_crashes_unexpectedly(flags: list[str]) -> None:
    try:
        bits, keywords = parse_flags(flags)
    except InvalidFlag:
        return
    assert 0 <= bits < 32
    assert len({k.lower() for k in keywords}) == len(keywords)
    again = parse_flags(format_flags(bits, keywords))
    assert again == (bits, keywords)
