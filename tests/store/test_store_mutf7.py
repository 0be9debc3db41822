"""Modified UTF-7 (RFC 3501 §5.1.3), including property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.store import mutf7


@pytest.mark.parametrize("text, encoded", [
    ("INBOX", "INBOX"),
    ("Tom & Jerry", "Tom &- Jerry"),
    # The RFC 3501 §5.1.3 example: "~peter/mail/台北/日本語".
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Entw\u00fcrfe", "Entw&APw-rfe"),
    ("\U0001F600", "&2D3eAA-"),
])
def test_known_encodings(text: str, encoded: str) -> None:
    assert mutf7.encode(text) == encoded
    assert mutf7.decode(encoded) == text


@pytest.mark.parametrize("bad", ["&", "&Jjo", "&Jjo!-", "\u00e9", "&AGE-", "&U,BTFw-&ZeVnLIqe-",
                                 "&2D3-"])
def test_malformed_input_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        mutf7.decode(bad)


def test_lenient_mode_accepts_non_canonical_spellings() -> None:
    assert mutf7.decode("&AGE-", strict=False) == "a"
    assert mutf7.decode("&AC4-", strict=False) == "."


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_round_trip(text: str) -> None:
    encoded = mutf7.encode(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert mutf7.decode(encoded) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_decode_only_raises_value_error(text: str) -> None:
    try:
        decoded = mutf7.decode(text, strict=False)
    except ValueError:
        return
    assert isinstance(decoded, str)
