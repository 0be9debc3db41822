"""The pure PLAIN, LOGIN and CRAM-MD5 parsers, and SASLprep."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.auth.cram_md5 import cram_md5_state
from mailkeep.sasl.common import MalformedResponse, SaslLimits
from mailkeep.sasl.cram_md5 import make_challenge, parse_response, verify
from mailkeep.sasl.login import LoginCredentials, LoginExchange
from mailkeep.sasl.plain import PlainCredentials, parse_plain
from mailkeep.sasl.saslprep import SASLprepError, saslprep, scram_password_bytes

# -- PLAIN (RFC 4616) ------------------------------------------------------------------


def test_plain_rfc_4616_examples():
    # RFC 4616 §4: "\0tim\0tanstaaftanstaaf" and "Ursel\0Kurt\0xipj3plmq".
    assert parse_plain(b"\0tim\0tanstaaftanstaaf") == PlainCredentials("", "tim", b"tanstaaftanstaaf")
    assert parse_plain(b"Ursel\0Kurt\0xipj3plmq") == PlainCredentials("Ursel", "Kurt", b"xipj3plmq")


def test_plain_keeps_utf8_and_never_shows_the_password():
    credentials = parse_plain("\0jörg@example.com\0pässword".encode())
    assert credentials.authcid == "jörg@example.com" and credentials.password == "pässword".encode()
    assert "pässword" not in repr(credentials)


@pytest.mark.parametrize("message", [
    b"", b"user\0pass", b"\0\0pass", b"\0user\0", b"a\0b\0c\0d", b"\0user\0\xff\xfe",
    b"\0\xff\0pass", b"\0" + b"u" * 256 + b"\0pass", b"\0user\0" + b"p" * 1025,
])
def test_plain_malformed(message: bytes):
    with pytest.raises(MalformedResponse):
        parse_plain(message)


def test_plain_limits_are_settings():
    limits = SaslLimits(max_username_bytes=5, max_password_bytes=5)
    assert parse_plain(b"\0abcde\0fghij", limits).authcid == "abcde"
    with pytest.raises(MalformedResponse, match="longer than 5"):
        parse_plain(b"\0abcdef\0pw", limits)
    with pytest.raises(MalformedResponse, match="longer than 5"):
        parse_plain(b"\0abc\0pwpwpw", limits)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_plain_parser_never_crashes(data: bytes):
    try:
        credentials = parse_plain(data)
    except MalformedResponse:
        return
    assert data == (credentials.authzid.encode() + b"\0" + credentials.authcid.encode()
                    + b"\0" + credentials.password)


# -- LOGIN (draft-murchison-sasl-login) -----------------------------------------------


def test_login_prompts_then_credentials():
    exchange = LoginExchange()
    assert exchange.start(None) == b"Username:"
    assert exchange.receive(b"me@example.com") == b"Password:"
    assert exchange.receive(b"secret") == LoginCredentials("me@example.com", b"secret")
    with pytest.raises(MalformedResponse):
        exchange.receive(b"more")


def test_login_initial_response_is_the_user_name():
    exchange = LoginExchange()
    assert exchange.start(b"me@example.com") == b"Password:"
    assert exchange.receive(b"secret") == LoginCredentials("me@example.com", b"secret")
    assert LoginExchange().start(b"") == b"Username:"  # "AUTH LOGIN =": ask for the name


@pytest.mark.parametrize("username,password", [
    (b"", b"pw"), (b"me\0", b"pw"), (b"\xff", b"pw"), (b"me", b""), (b"me", b"p\0w"),
    (b"u" * 256, b"pw"), (b"me", b"p" * 1025),
])
def test_login_malformed(username: bytes, password: bytes):
    exchange = LoginExchange()
    exchange.start(None)
    with pytest.raises(MalformedResponse):
        exchange.receive(username)
        exchange.receive(password)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_login_never_crashes(username: bytes, password: bytes):
    exchange = LoginExchange()
    exchange.start(None)
    try:
        exchange.receive(username)
        result = exchange.receive(password)
    except MalformedResponse:
        return
    assert isinstance(result, LoginCredentials) and result.password == password


# -- CRAM-MD5 (RFC 2195) -----------------------------------------------------------------


def test_cram_md5_rfc_2195_example():
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert make_challenge(1896, 697170952, "postoffice.reston.mci.net") == challenge
    response = parse_response(b"tim b913a602c7eda7a495b4e6e7334d3890")
    assert response.username == "tim"
    assert verify(cram_md5_state("tanstaaftanstaaf"), challenge, response)
    assert not verify(cram_md5_state("tanstaaftanstaafX"), challenge, response)


def test_cram_md5_user_names_with_spaces_and_upper_case_digests():
    challenge = make_challenge(1, 2, "mail.example.com")
    digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest().upper()
    response = parse_response(b"John Doe " + digest.encode())
    assert response.username == "John Doe"
    assert verify(cram_md5_state("secret"), challenge, response)


def test_cram_md5_challenge_with_an_idn_host_is_ascii():
    assert make_challenge(7, 8, "bücher.example") == b"<7.8@xn--bcher-kva.example>"


@pytest.mark.parametrize("message", [
    b"", b"tim", b"tim b913a602", b" b913a602c7eda7a495b4e6e7334d3890",
    b"tim b913a602c7eda7a495b4e6e7334d389g", b"tim b913a602c7eda7a495b4e6e7334d38901",
    b"\xff b913a602c7eda7a495b4e6e7334d3890",
])
def test_cram_md5_malformed(message: bytes):
    with pytest.raises(MalformedResponse):
        parse_response(message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_cram_md5_parser_never_crashes(data: bytes):
    try:
        parse_response(data)
    except MalformedResponse:
        pass


# -- SASLprep (RFC 4013) -----------------------------------------------------------------


def test_saslprep_rfc_4013_examples():
    # RFC 4013 §3.
    assert saslprep("I\u00adX") == "IX"
    assert saslprep("user") == "user"
    assert saslprep("USER") == "USER"
    assert saslprep("\u00aa") == "a"
    assert saslprep("\u2168") == "IX"
    with pytest.raises(SASLprepError):
        saslprep("\u0007")
    with pytest.raises(SASLprepError):
        saslprep("\u0627\u0031")  # bidi: must end with a right-to-left character


def test_saslprep_maps_non_ascii_spaces():
    assert saslprep("a\u00a0b") == "a b"


def test_scram_password_bytes_falls_back_to_raw_octets():
    assert scram_password_bytes("pencil") == b"pencil"
    assert scram_password_bytes("I\u00adX") == b"IX"
    assert scram_password_bytes("bell\u0007") == b"bell\x07"
    assert scram_password_bytes(b"\xff\xfe") == b"\xff\xfe"
