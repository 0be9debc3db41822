"""Replies on the wire: RFC 5321 §4.2 format, RFC 2034 enhanced codes, injection safety."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.smtp import reply as replies
from mailkeep.smtp.reply import Reply

LINE = re.compile(rb"^\d{3}[ -][^\r\n]*\r\n$")


def test_single_line_with_enhanced_code():
    assert Reply(250, "2.1.5", "Recipient OK").to_bytes() == b"250 2.1.5 Recipient OK\r\n"


def test_multiline_repeats_enhanced_code_on_every_line():
    r = Reply(550, "5.7.1", ("first", "second", "third"))
    assert r.to_bytes() == b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n"


def test_reply_without_enhanced_code():
    assert Reply(354, None, "Go ahead").to_bytes() == b"354 Go ahead\r\n"
    assert replies.ehlo_reply("mx", ["PIPELINING", "SIZE 10"]).to_bytes() == (
        b"250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
    )


def test_empty_challenge_keeps_its_space():
    # RFC 4954 §4: "334 " with an empty challenge; clients look for the space.
    assert Reply(334, None, "").to_bytes() == b"334 \r\n"


@pytest.mark.parametrize("evil", ["a\r\n250 OK", "a\nb", "a\rb", "nul\x00", "esc\x1b[0m", "del\x7f"])
def test_text_cannot_inject_lines_or_controls(evil):
    wire = Reply(550, "5.0.0", evil).to_bytes()
    assert wire.count(b"\r\n") == 1 and wire.endswith(b"\r\n")
    assert LINE.match(wire)
    assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", wire[:-2])


def test_long_lines_are_cut_to_rfc_limit():
    wire = Reply(250, "2.0.0", "x" * 2000).to_bytes()
    assert len(wire) == 512 and wire.endswith(b"\r\n")


def test_utf8_text_is_cut_on_a_character_boundary():
    wire = Reply(250, "2.0.0", "é" * 600).to_bytes()
    assert len(wire) <= 512
    wire.decode("utf-8")


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [(199, None), (600, None), (250, "5.0.0"), (550, "2.0.0"), (250, "2.0"), (250, "x.y.z")],
)
def test_invalid_replies_are_refused(code, enhanced):
    with pytest.raises(ValueError):
        Reply(code, enhanced, "text")


def test_classification():
    assert Reply(250, "2.0.0", "").is_positive
    assert Reply(354, None, "").is_positive
    assert Reply(451, "4.3.0", "").is_transient and not Reply(451, "4.3.0", "").is_permanent
    assert Reply(554, "5.0.0", "").is_permanent and not Reply(554, "5.0.0", "").is_positive


def test_catalogue_uses_standard_codes():
    assert replies.TOO_MANY_RECIPIENTS.to_bytes().startswith(b"452 4.5.3 ")
    assert replies.MESSAGE_TOO_BIG.to_bytes().startswith(b"552 5.3.4 ")
    assert replies.UTF8_REQUIRED.to_bytes().startswith(b"553 5.6.7 ")
    assert replies.CANNOT_VRFY.to_bytes().startswith(b"252 2.5.0 ")
    assert replies.greeting("mx.example", "ESMTP x").to_bytes() == b"220 mx.example ESMTP x\r\n"


@settings(max_examples=200, deadline=None)
@given(
    code=st.integers(200, 599),
    lines=st.lists(st.text(max_size=600), min_size=1, max_size=4),
)
def test_any_text_gives_well_formed_lines(code, lines):
    enhanced = f"{str(code)[0]}.0.0" if str(code)[0] in "245" else None
    wire = Reply(code, enhanced, tuple(lines)).to_bytes()
    out = wire.split(b"\r\n")[:-1]
    assert len(out) == len(lines)
    for i, line in enumerate(out):
        assert LINE.match(line + b"\r\n")
        assert len(line) + 2 <= 512
        assert line[3:4] == (b" " if i == len(out) - 1 else b"-")
        if enhanced:
            assert line[4:9] == enhanced.encode()
