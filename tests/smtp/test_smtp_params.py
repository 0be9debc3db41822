"""MAIL/RCPT parameters (RFC 5321 §4.1.2, RFC 1870, RFC 6152, RFC 6531, RFC 3461, RFC 4954)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.smtp.params import (
    Advertised,
    MailParams,
    ParamError,
    RcptParams,
    parse_mail_params,
    parse_rcpt_params,
    xtext_decode,
    xtext_encode,
)

ALL = Advertised(
    size=True, eightbitmime=True, binarymime=True, smtputf8=True, dsn=True, auth=True,
    requiretls=True,
)


def test_no_parameters():
    assert parse_mail_params("", ALL) == MailParams()
    assert parse_rcpt_params("", ALL) == RcptParams()


def test_all_mail_parameters():
    p = parse_mail_params(
        "size=12345 Body=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2B314 AUTH=<> REQUIRETLS", ALL
    )
    assert p == MailParams(
        size=12345, body="8BITMIME", smtputf8=True, ret="HDRS", envid="QQ+314", auth="<>",
        requiretls=True,
    )


def test_auth_parameter_is_xtext_decoded():
    assert parse_mail_params("AUTH=e+3Dmc2@example.com", ALL).auth == "e=mc2@example.com"


@pytest.mark.parametrize(
    "params",
    [
        "SIZE=", "SIZE", "SIZE=-1", "SIZE=1e6", "SIZE=" + "9" * 21, "SIZE=١٢",
        "BODY=9BIT", "BODY", "SMTPUTF8=yes", "RET=ALL", "ENVID=" + "a" * 101,
        "ENVID=+0A", "ENVID=+ZZ", "AUTH=+", "REQUIRETLS=1",
        "XFOO=bar",                      # unknown
        "SIZE=1 SIZE=2",                 # duplicate
        "=value", "-X=1", "SIZE=1=2", "SIZE=\x01",
    ],
)
def test_bad_mail_parameters_are_555(params):
    with pytest.raises(ParamError) as e:
        parse_mail_params(params, ALL)
    assert (e.value.reply.code, e.value.reply.enhanced) == (555, "5.5.4")


@pytest.mark.parametrize(
    ("params", "advertised"),
    [
        ("SIZE=10", Advertised()),
        ("BODY=8BITMIME", Advertised()),
        ("BODY=8BITMIME", Advertised(binarymime=True)),
        ("BODY=BINARYMIME", Advertised(eightbitmime=True)),
        ("SMTPUTF8", Advertised(eightbitmime=True)),
        ("RET=FULL", Advertised(size=True)),
        ("AUTH=<>", Advertised(dsn=True)),
        ("REQUIRETLS", Advertised(dsn=True)),
    ],
)
def test_parameters_of_extensions_not_advertised_are_555(params, advertised):
    with pytest.raises(ParamError) as e:
        parse_mail_params(params, advertised)
    assert e.value.reply.code == 555


def test_allowed_extra_keywords_pass_through():
    p = parse_mail_params("MT-PRIORITY=3", Advertised(), allow_extra=frozenset({"MT-PRIORITY"}))
    assert p.extra == (("MT-PRIORITY", "3"),)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("NEVER", ("NEVER",)),
        ("success,FAILURE", ("SUCCESS", "FAILURE")),
        ("DELAY", ("DELAY",)),
    ],
)
def test_notify(value, expected):
    assert parse_rcpt_params(f"NOTIFY={value}", ALL).notify == expected


@pytest.mark.parametrize("value", ["NEVER,SUCCESS", "SUCCESS,SUCCESS", "", "SOMETIMES", "SUCCESS,"])
def test_bad_notify(value):
    with pytest.raises(ParamError):
        parse_rcpt_params(f"NOTIFY={value}", ALL)


def test_orcpt():
    p = parse_rcpt_params("ORCPT=rfc822;Bob+2Bx@example.com NOTIFY=FAILURE", ALL)
    assert p.orcpt == ("RFC822", "Bob+x@example.com")
    assert p.notify == ("FAILURE",)
    # RFC 6533 §3: utf-8 address type with \x{...} escapes, or raw UTF-8 under SMTPUTF8.
    assert parse_rcpt_params("ORCPT=utf-8;j\\x{F6}rg@example.com", ALL).orcpt == (
        "UTF-8", "jörg@example.com",
    )
    assert parse_rcpt_params("ORCPT=utf-8;jörg@example.com", ALL, smtputf8=True).orcpt == (
        "UTF-8", "jörg@example.com",
    )


@pytest.mark.parametrize(
    "value",
    ["rfc822", "rfc822;", ";a@b", "rfc822;a+0Ab@c", "rfc 822;a@b", "rfc822;" + "a" * 500,
     "rfc822;jörg@example.com", "utf-8;\\x{D800}@x"],
)
def test_bad_orcpt(value):
    with pytest.raises(ParamError):
        parse_rcpt_params(f"ORCPT={value}", ALL)


def test_dsn_parameters_need_dsn():
    with pytest.raises(ParamError):
        parse_rcpt_params("NOTIFY=NEVER", Advertised(size=True))


def test_xtext_examples():
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("jörg") == "j+C3+B6rg"
    assert xtext_decode("a+2Bb+3Dc+20d") == "a+b=c d"
    assert xtext_decode("j+C3+B6rg") == "jörg"
    for bad in ["+", "+2", "+GG", "a=b", "a b", "+FF"]:
        with pytest.raises(ValueError):
            xtext_decode(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=100))
def test_xtext_round_trip(text):
    encoded = xtext_encode(text)
    assert encoded.isascii() and " " not in encoded and "=" not in encoded
    assert xtext_decode(encoded) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["SIZE=100", "BODY=7BIT", "SMTPUTF8", "RET=FULL", "ENVID=x",
                             "NOTIFY=NEVER", "ORCPT=rfc822;a@b", "AUTH=<>", "=", "X", ""]),
            st.text(max_size=20),
        ),
        max_size=6,
    ).map(" ".join)
)
def test_arbitrary_parameters_never_raise_anything_but_param_error(text):
    for parse in (parse_mail_params, parse_rcpt_params):
        try:
            parse(text, ALL)
        except ParamError as exc:
            assert exc.reply.code == 555
