"""CRAM-MD5 from Dovecot's stored HMAC-MD5 intermediate state (RFC 2195, RFC 2104)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.auth.cram_md5 import (
    MAX_CHALLENGE_BYTES,
    cram_md5_response,
    cram_md5_state,
    md5_digest,
    parse_cram_md5_state,
    verify_cram_md5_response,
)


def test_seed_000_vector():
    # `doveadm pw -s CRAM-MD5 -p rolfheinrich` in seed 000.
    assert cram_md5_state("rolfheinrich").hex() == (
        "cf8527ae5867fc08068952261363c49f0bcc0d1d5f166bbd20d3783b3e97f828")


def test_rfc_2195_example():
    # RFC 2195 §2: user "tim", password "tanstaaftanstaaf".
    state = cram_md5_state("tanstaaftanstaaf")
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert cram_md5_response(state, challenge) == "b913a602c7eda7a495b4e6e7334d3890"
    assert verify_cram_md5_response(state, challenge, "b913a602c7eda7a495b4e6e7334d3890")
    assert verify_cram_md5_response(state, challenge, b"B913A602C7EDA7A495B4E6E7334D3890")
    assert not verify_cram_md5_response(state, challenge, "b913a602c7eda7a495b4e6e7334d3891")
    assert not verify_cram_md5_response(state, challenge, b"\xff")


def test_stored_state_answers_like_hmac_from_the_password():
    state = parse_cram_md5_state("cf8527ae5867fc08068952261363c49f0bcc0d1d5f166bbd20d3783b3e97f828")
    challenge = b"<12345.67890@mail.example.com>"
    expected = hmac.new(b"rolfheinrich", challenge, hashlib.md5).hexdigest()
    assert cram_md5_response(state, challenge) == expected


@pytest.mark.parametrize("text", ["", "ab", "g" * 64, "a" * 66])
def test_bad_stored_state(text: str):
    with pytest.raises(ValueError):
        parse_cram_md5_state(text)


def test_limits():
    with pytest.raises(ValueError):
        cram_md5_response(b"x" * 31, b"challenge")
    with pytest.raises(ValueError):
        cram_md5_response(bytes(32), b"x" * (MAX_CHALLENGE_BYTES + 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=150), st.binary(max_size=200))
def test_matches_hmac_md5_for_any_key_and_challenge(key: bytes, challenge: bytes):
    # Keys longer than 64 bytes are hashed first (RFC 2104 §2); hmac does the same.
    assert cram_md5_response(cram_md5_state(key), challenge) == hmac.new(
        key, challenge, hashlib.md5).hexdigest()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_md5_matches_hashlib(data: bytes):
    assert md5_digest(data) == hashlib.md5(data).digest()
