"""DKIM verification (RFC 6376) against real DNS: NSD serving the key records, a validating
Unbound in front, dnspython asking it. Messages are signed with Mailkeep's own signer
(mailkeep.dkim) and, for l= and simple canonicalization, with dkimpy's."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.dns import ThrowawayDNS, Zone

import dkim
from mailkeep.dkim.keys import DkimKeys, SigningKey, public_key_txt, txt_strings
from mailkeep.dkim.sign import sign_message
from mailkeep.outbound.dns import make_resolver
from mailkeep.trust import dkim_verify
from mailkeep.trust.dkim_verify import (
    DkimLimits,
    DkimResult,
    DkimStatus,
    KeyRecordError,
    TagListError,
    dmarc_inputs,
    parse_key_record,
    parse_tag_list,
    verify_dkim,
)

DOMAIN = "dkim.test"
MESSAGE = (b"From: Alice <alice@dkim.test>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject: Quarterly figures\r\n"
           b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n"
           b"Message-ID: <1@dkim.test>\r\n"
           b"\r\n"
           b"Hello Bob,\r\n"
           b"  the figures  are attached.\t \r\n"
           b"\r\n"
           b"Alice\r\n"
           b"\r\n\r\n")
ALL_RESULTS = {str(s) for s in DkimStatus}


# -- keys and zone -------------------------------------------------------------------------

class Keys:
    """Every key the tests sign with, made once per module."""

    def __init__(self, root: Path):
        store = DkimKeys(root)
        store.keygen(DOMAIN, selector_prefix="k1")
        self.records = dict(store.dns_records(DOMAIN))
        self.rsa, self.ed = store.signing_keys(DOMAIN)
        self.rsa_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # cryptography refuses to make RSA keys below 1024 bits; openssl still does.
        pem = subprocess.run(["openssl", "genrsa", "512"], capture_output=True, check=True,
                             timeout=30).stdout
        self.rsa_512 = serialization.load_pem_private_key(pem, password=None)

    def key(self, selector: str, private=None, domain: str = DOMAIN) -> SigningKey:
        private = private if private is not None else self.rsa.private_key
        algorithm = "ed25519" if isinstance(private, ed25519.Ed25519PrivateKey) else "rsa"
        return SigningKey(domain, selector, algorithm, private)

    def zone_text(self) -> str:
        rsa_public = public_key_txt(self.rsa.private_key)
        rsa_p = rsa_public.split("p=", 1)[1]
        lines = {f"{name.split('.')[0]}._domainkey": value
                 for name, value in self.records.items()}
        lines.update({
            "revoked._domainkey": "v=DKIM1; k=rsa; p=",
            "wrongkey._domainkey": public_key_txt(self.other_rsa),
            "small._domainkey": public_key_txt(self.rsa_1024),
            "tiny._domainkey": public_key_txt(self.rsa_512),
            "testing._domainkey": f"v=DKIM1; k=rsa; t=y; p={rsa_p}",
            "strict._domainkey": f"v=DKIM1; k=rsa; t=s; p={rsa_p}",
            "edtype._domainkey": f"v=DKIM1; k=ed25519; p={rsa_p}",
            "sha1only._domainkey": f"v=DKIM1; k=rsa; h=sha1; p={rsa_p}",
            "tlsrpt._domainkey": f"v=DKIM1; k=rsa; s=tlsrpt; p={rsa_p}",
            "notakey._domainkey": "k=rsa; n=no key here",
            "badversion._domainkey": f"v=DKIM2; p={rsa_p}",
        })
        zone = [f"{name} TXT " + " ".join(f'"{part}"' for part in txt_strings(value))
                for name, value in lines.items()]
        # Two records at one name: a verifier may pick the usable one (§6.1.2).
        zone.append('multi._domainkey TXT "not a key record"')
        zone.append("multi._domainkey TXT " +
                    " ".join(f'"{p}"' for p in txt_strings(rsa_public)))
        return "\n".join(zone) + "\n"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("dkim-verify-keys"))


@pytest.fixture(scope="module")
def dns_server(keys: Keys) -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS([Zone(DOMAIN, keys.zone_text(), signed=True),
                       Zone("elsewhere.test", "www A 127.0.0.1")],
                      lame_zones=["lame.test"]) as server:
        yield server


@pytest.fixture(scope="module")
def resolver(dns_server: ThrowawayDNS):
    host, port = dns_server.resolver_address
    return make_resolver([host], port, timeout=5.0)


def sign(message: bytes, keys: list[SigningKey], *, domain: str = DOMAIN, **options) -> bytes:
    """``message`` with DKIM-Signature fields from Mailkeep's signer on top."""
    header = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    fields = sign_message(header, message, len(header) + 2, keys, domain=domain, **options)
    return fields + message


def dkimpy_sign(message: bytes, selector: bytes, private, *, canonicalize=(b"relaxed", b"relaxed"),
                length: bool = False) -> bytes:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        key, algorithm = base64.b64encode(raw), b"ed25519-sha256"
    else:
        key = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        algorithm = b"rsa-sha256"
    field = dkim.sign(message, selector, DOMAIN.encode(), key, canonicalize=canonicalize,
                      signature_algorithm=algorithm, length=length,
                      include_headers=[b"from", b"to", b"subject", b"date"])
    return field + message


def verify(message: bytes | Path, resolver, **options) -> list[DkimResult]:
    return asyncio.run(verify_dkim(message, resolver=resolver, **options))


# -- results ---------------------------------------------------------------------------------

async def test_rsa_and_ed25519_signatures_pass(keys: Keys, resolver) -> None:
    signed = sign(MESSAGE, [keys.rsa, keys.ed])
    results = await verify_dkim(signed, resolver=resolver)
    assert [r.result for r in results] == ["pass", "pass"]
    rsa_result, ed_result = results
    assert (rsa_result.domain, rsa_result.selector, rsa_result.algorithm) == \
        (DOMAIN, "k1r", "rsa-sha256")
    assert (ed_result.selector, ed_result.algorithm) == ("k1e", "ed25519-sha256")
    assert rsa_result.key_bits == 2048 and ed_result.key_bits is None
    assert [r.index for r in results] == [0, 1]
    # RFC 6008: header.b is the start of b=, eight characters when that tells them apart.
    b_values = [dkim.util.parse_tag_value(line.split(b":", 1)[1])[b"b"]
                for line in _signature_fields(signed)]
    for result, b_value in zip(results, b_values, strict=True):
        compact = b"".join(b_value.split()).decode()
        assert len(result.header_b) == 8 and compact.startswith(result.header_b)
    assert dmarc_inputs(results) == [("pass", DOMAIN), ("pass", DOMAIN)]


def _signature_fields(message: bytes) -> list[bytes]:
    header = message.split(b"\r\n\r\n", 1)[0]
    unfolded = header.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    return [line for line in unfolded.split(b"\r\n") if line.lower().startswith(b"dkim-signature:")]


async def test_changed_body_fails_with_body_hash_reason(keys: Keys, resolver) -> None:
    signed = sign(MESSAGE, [keys.rsa, keys.ed]).replace(b"the figures", b"the invoice")
    results = await verify_dkim(signed, resolver=resolver)
    assert [r.result for r in results] == ["fail", "fail"]
    assert all("body hash" in r.reason for r in results)


async def test_changed_signed_header_fails(keys: Keys, resolver) -> None:
    signed = sign(MESSAGE, [keys.rsa, keys.ed]).replace(b"Quarterly figures", b"Urgent payment")
    results = await verify_dkim(signed, resolver=resolver)
    assert [r.result for r in results] == ["fail", "fail"]
    assert all("did not verify" in r.reason for r in results)


async def test_added_second_from_breaks_the_signature(keys: Keys, resolver) -> None:
    # The signer oversigns From; an extra From: on top must not verify.
    signed = b"From: ceo@evil.example\r\n" + sign(MESSAGE, [keys.rsa])
    assert [r.result for r in await verify_dkim(signed, resolver=resolver)] == ["fail"]


async def test_unsigned_message_gives_no_results(resolver) -> None:
    assert await verify_dkim(MESSAGE, resolver=resolver) == []


async def test_missing_key_is_permerror(keys: Keys, resolver) -> None:
    signed = sign(MESSAGE, [keys.key("nokey")])
    (result,) = await verify_dkim(signed, resolver=resolver)
    assert result.result == "permerror" and "no key record" in result.reason
    assert result.selector == "nokey" and result.domain == DOMAIN


async def test_lame_zone_is_temperror(keys: Keys, resolver) -> None:
    signed = sign(MESSAGE, [keys.key("k1r", domain="lame.test")], domain="lame.test")
    (result,) = await verify_dkim(signed, resolver=resolver)
    assert result.result == "temperror" and result.domain == "lame.test"
    assert "lookup failed" in result.reason


async def test_revoked_key_is_permerror(keys: Keys, resolver) -> None:
    # RFC 6376 §3.6.1: an empty p= means the key was revoked; §6.1.2: PERMFAIL.
    (result,) = await verify_dkim(sign(MESSAGE, [keys.key("revoked")]), resolver=resolver)
    assert result.result == "permerror" and "revoked" in result.reason


async def test_wrong_key_fails(keys: Keys, resolver) -> None:
    (result,) = await verify_dkim(sign(MESSAGE, [keys.key("wrongkey")]), resolver=resolver)
    assert result.result == "fail"


async def test_one_good_and_one_bad_signature(keys: Keys, resolver) -> None:
    signed = sign(sign(MESSAGE, [keys.key("wrongkey")]), [keys.rsa])
    results = await verify_dkim(signed, resolver=resolver)
    assert [(r.selector, r.result) for r in results] == [("k1r", "pass"), ("wrongkey", "fail")]
    assert dmarc_inputs(results) == [("pass", DOMAIN), ("fail", DOMAIN)]


async def test_length_tag_with_appended_content(keys: Keys, resolver) -> None:
    signed = dkimpy_sign(MESSAGE, b"k1r", keys.rsa.private_key, length=True)
    (exact,) = await verify_dkim(signed, resolver=resolver)
    assert exact.result == "pass" and exact.covers_whole_body
    assert exact.body_length is not None and exact.body_length > 0

    appended = signed + b"Click http://evil.example/ to confirm your account.\r\n"
    (partial,) = await verify_dkim(appended, resolver=resolver)
    assert partial.result == "policy"
    # The empty lines that ended the signed body are inside it now: unsigned too.
    assert partial.unsigned_body_octets == len(b"\r\n\r\nClick http://evil.example/ to "
                                               b"confirm your account.\r\n")
    assert "covers only" in partial.reason and not partial.covers_whole_body

    lenient = DkimLimits(unsigned_body="pass")
    (accepted,) = await verify_dkim(appended, resolver=resolver, limits=lenient)
    assert accepted.result == "pass" and accepted.unsigned_body_octets > 0

    # A body cut below l= cannot match what was signed.
    truncated = signed[:signed.index(b"Alice\r\n\r\n\r\n")]
    (short,) = await verify_dkim(truncated, resolver=resolver)
    assert short.result == "fail" and "l=" in short.reason


@pytest.mark.parametrize("canonicalize", [(b"simple", b"simple"), (b"relaxed", b"simple"),
                                          (b"simple", b"relaxed")])
async def test_dkimpy_signatures_in_every_canonicalization(keys: Keys, resolver,
                                                           canonicalize) -> None:
    signed = dkimpy_sign(MESSAGE, b"k1e", keys.ed.private_key, canonicalize=canonicalize)
    (result,) = await verify_dkim(signed, resolver=resolver)
    assert result.result == "pass", result.reason
    # simple body canonicalization keeps inner white space: changing it must fail.
    changed = signed.replace(b"the figures  are", b"the figures are")
    (after,) = await verify_dkim(changed, resolver=resolver)
    assert after.result == ("pass" if canonicalize[1] == b"relaxed" else "fail")


async def test_small_rsa_keys_are_policy(keys: Keys, resolver) -> None:
    (tiny,) = await verify_dkim(sign(MESSAGE, [keys.key("tiny", keys.rsa_512)]),
                                resolver=resolver)
    assert tiny.result == "policy" and "512 bits" in tiny.reason
    (small,) = await verify_dkim(sign(MESSAGE, [keys.key("small", keys.rsa_1024)]),
                                 resolver=resolver)
    assert small.result == "pass" and small.key_bits == 1024
    stricter = DkimLimits(min_rsa_bits=2048)
    (refused,) = await verify_dkim(sign(MESSAGE, [keys.key("small", keys.rsa_1024)]),
                                   resolver=resolver, limits=stricter)
    assert refused.result == "policy"


@pytest.mark.parametrize(("selector", "words"), [
    ("edtype", "does not match"),
    ("sha1only", "does not allow sha256"),
    ("tlsrpt", "not for email"),
    ("notakey", "without p="),
    ("badversion", "not a DKIM1"),
])
async def test_unusable_key_records_are_permerror(keys: Keys, resolver, selector, words) -> None:
    (result,) = await verify_dkim(sign(MESSAGE, [keys.key(selector)]), resolver=resolver)
    assert result.result == "permerror" and words in result.reason


async def test_usable_record_among_several_is_chosen(keys: Keys, resolver) -> None:
    (result,) = await verify_dkim(sign(MESSAGE, [keys.key("multi")]), resolver=resolver)
    assert result.result == "pass"


async def test_testing_mode_pass_does_not_count_for_dmarc(keys: Keys, resolver) -> None:
    (result,) = await verify_dkim(sign(MESSAGE, [keys.key("testing")]), resolver=resolver)
    assert result.result == "pass" and result.testing and "t=y" in result.reason
    assert dmarc_inputs([result]) == [("neutral", DOMAIN)]


async def test_strict_key_refuses_subdomain_identity(keys: Keys, resolver) -> None:
    at_domain = sign(MESSAGE, [keys.key("strict")], identity=f"alice@{DOMAIN}")
    assert [r.result for r in await verify_dkim(at_domain, resolver=resolver)] == ["pass"]
    below = sign(MESSAGE, [keys.key("strict")], identity=f"alice@mail.{DOMAIN}")
    (result,) = await verify_dkim(below, resolver=resolver)
    assert result.result == "permerror" and "t=s" in result.reason


async def test_expired_and_future_signatures(keys: Keys, resolver) -> None:
    now = time.time()
    expired = sign(MESSAGE, [keys.rsa], now=now - 7200, expire_after=3600)
    (result,) = await verify_dkim(expired, resolver=resolver)
    assert result.result == "fail" and "expired" in result.reason
    # The same signature verified at a time before it expired passes (now= injectable).
    (earlier,) = await verify_dkim(expired, resolver=resolver, now=now - 5000)
    assert earlier.result == "pass"
    future = sign(MESSAGE, [keys.rsa], now=now + 3 * 3600)
    (ahead,) = await verify_dkim(future, resolver=resolver)
    assert ahead.result == "neutral" and "future" in ahead.reason


@pytest.mark.parametrize(("field", "words"), [
    (b"v=1; a=rsa-sha256; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA; d=x.test", "duplicate"),
    (b"v=1; a=rsa-sha256; d=dkim.test; h=from; bh=AAAA; b=AAAA", "required tag missing: s="),
    (b"v=2; a=rsa-sha256; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA", "v="),
    (b"v=1; a=rsa-sha512; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA", "unknown algorithm"),
    (b"v=1; a=rsa-sha256; d=dkim.test; s=k1r; h=to:subject; bh=AAAA; b=AAAA", "From is not"),
    (b"v=1; a=rsa-sha256; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA; i=a@evil.test",
     "i= is not within d="),
    (b"v=1; a=rsa-sha256; c=fancy/simple; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA",
     "canonicalization"),
    (b"v=1; a=rsa-sha256; d=dkim.test; s=k1r; h=from; bh=!!; b=AAAA", "bh="),
    (b"v=1; a=rsa-sha256; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA; l=ten", "l="),
    (b"v=1; a=rsa-sha256; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA; q=http/get", "q="),
    (b"v=1; a=rsa-sha256; d=-bad-.test; s=k1r; h=from; bh=AAAA; b=AAAA", "not a domain"),
    (b"v=1; a=rsa-sha256; d=dkim.test; s=k 1; h=from; bh=AAAA; b=AAAA", "selector"),
    (b"v=1; a=rsa-sha256; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA; t=20; x=10",
     "x= is before t="),
    (b"garbage without tags", "malformed"),
])
async def test_malformed_signatures_are_neutral(resolver, field, words) -> None:
    message = b"DKIM-Signature: " + field + b"\r\n" + MESSAGE
    (result,) = await verify_dkim(message, resolver=resolver)
    assert result.result == "neutral" and words in result.reason, result.reason


async def test_rsa_sha1_is_policy(resolver) -> None:
    field = b"v=1; a=rsa-sha1; d=dkim.test; s=k1r; h=from; bh=AAAA; b=AAAA"
    (result,) = await verify_dkim(b"DKIM-Signature: " + field + b"\r\n" + MESSAGE,
                                  resolver=resolver)
    assert result.result == "policy" and "RFC 8301" in result.reason


async def test_spool_file_is_verified_in_chunks(keys: Keys, resolver, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"".join(b"line %d with  trailing space \r\n" % i for i in range(3000)) + b"\r\n" * 40
    message = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body
    signed = sign(message, [keys.rsa, keys.ed])
    signed = dkimpy_sign(signed, b"k1e", keys.ed.private_key, canonicalize=(b"simple", b"simple"))
    spool = tmp_path / "spool"
    spool.write_bytes(signed)
    # Small chunks: CRLFs, white space runs and trailing empty lines straddle chunk edges.
    for chunk in (7, 64, 4096):
        monkeypatch.setattr(dkim_verify, "BODY_READ_CHUNK", chunk)
        results = await verify_dkim(spool, resolver=resolver)
        assert [r.result for r in results] == ["pass", "pass", "pass"], chunk
    # Above the inline limit, the work moves to a thread; the result is the same.
    monkeypatch.setattr(dkim_verify, "INLINE_VERIFY_BYTES", 1024)
    assert [r.result for r in await verify_dkim(spool, resolver=resolver)] == ["pass"] * 3


async def test_too_large_message_is_not_verified(keys: Keys, resolver, tmp_path: Path) -> None:
    signed = sign(MESSAGE, [keys.rsa])
    limits = DkimLimits(max_message_bytes=len(signed) - 1)
    spool = tmp_path / "big"
    spool.write_bytes(signed)
    for message in (signed, spool):
        (result,) = await verify_dkim(message, resolver=resolver, limits=limits)
        assert result.result == "none" and "larger than" in result.reason
        assert result.index == -1 and result.domain == ""
    header_limits = DkimLimits(max_header_bytes=100)
    (result,) = await verify_dkim(signed, resolver=resolver, limits=header_limits)
    assert result.result == "none" and "header larger" in result.reason


async def test_unreadable_spool_file_is_temperror(resolver, tmp_path: Path) -> None:
    (result,) = await verify_dkim(tmp_path / "missing", resolver=resolver)
    assert result.result == "temperror" and "cannot read" in result.reason


async def test_signature_limit_prefers_the_author_domain(keys: Keys, resolver) -> None:
    signed = sign(MESSAGE, [keys.rsa])  # the bottom-most signature: dkim.test
    for _ in range(4):
        signed = sign(signed, [keys.key("k1r", domain="elsewhere.test")],
                      domain="elsewhere.test")
    limits = DkimLimits(max_signatures=2)
    plain = await verify_dkim(signed, resolver=resolver, limits=limits)
    assert [r.domain for r in plain] == ["elsewhere.test", "elsewhere.test"]
    preferred = await verify_dkim(signed, resolver=resolver, limits=limits,
                                  author_domain=DOMAIN)
    assert [(r.index, r.domain, r.result) for r in preferred] == \
        [(0, "elsewhere.test", "permerror"), (4, DOMAIN, "pass")]


async def test_unparseable_header_is_permerror(resolver) -> None:
    message = (b"DKIM-Signature: v=1; a=rsa-sha256; d=dkim.test; s=k1r; h=from; bh=AAAA;"
               b" b=AAAA\r\nthis line is not a header field\r\n" + MESSAGE)
    (result,) = await verify_dkim(message, resolver=resolver)
    assert result.result == "permerror" and "cannot be parsed" in result.reason
    assert result.domain == DOMAIN and result.selector == "k1r"


async def test_bare_lf_message_verifies_like_its_crlf_form(keys: Keys, resolver) -> None:
    signed = sign(MESSAGE, [keys.rsa, keys.ed])
    results = await verify_dkim(signed.replace(b"\r\n", b"\n"), resolver=resolver)
    assert [r.result for r in results] == ["pass", "pass"]


# -- parsers (property tests) ----------------------------------------------------------------

_TAG_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True)
_VALCHARS = st.sampled_from([chr(c) for c in range(0x21, 0x7f) if chr(c) != ";"])
_WORDS = st.text(_VALCHARS, min_size=1, max_size=12)
_VALUES = st.lists(_WORDS, max_size=3).map(" ".join)
_FWS = st.sampled_from(["", " ", "\t", "\r\n ", " \r\n\t"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_TAG_NAMES, _VALUES, max_size=8), st.data())
def test_tag_list_round_trip(tags: dict[str, str], data: st.DataObject) -> None:
    parts = []
    for name, value in tags.items():
        before, around, after = data.draw(_FWS), data.draw(_FWS), data.draw(_FWS)
        parts.append(f"{before}{name}{around}={around}{value}{after}")
    # §3.2: a trailing ";" may follow the last tag (not stand alone).
    text = ";".join(parts) + (data.draw(st.sampled_from(["", ";", "; "])) if parts else "")
    parsed = parse_tag_list(text.encode())
    assert parsed == {name: value.encode() for name, value in tags.items()}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_tag_list_and_key_record_parsers_only_raise_their_errors(data: bytes) -> None:
    try:
        parse_tag_list(data)
    except TagListError:
        pass
    try:
        record = parse_key_record(data)
    except KeyRecordError:
        return
    assert record.key_type in ("rsa", "ed25519")


def test_tag_list_rules() -> None:
    assert parse_tag_list(b"v=1; a=rsa-sha256;") == {"v": b"1", "a": b"rsa-sha256"}
    assert parse_tag_list(b"") == {}
    for bad in (b"v=1; v=1", b"=x", b"1a=b", b"a=b;;c=d", b"novalue", b"a=\x00"):
        with pytest.raises(TagListError):
            parse_tag_list(bad)
    # Tag names are case-sensitive (RFC 6376 §3.2): V= is not v=.
    assert parse_tag_list(b"V=1; v=2") == {"V": b"1", "v": b"2"}


def test_key_record_rules() -> None:
    record = parse_key_record(b"v=DKIM1; k=ed25519; t=y:s; h=sha256; p=" +
                              base64.b64encode(b"k" * 32))
    assert (record.key_type, record.testing, record.strict_subdomains) == ("ed25519", True, True)
    assert record.hashes == ("sha256",) and record.services == ("*",)
    assert parse_key_record(b"p=").revoked
    for bad, words in ((b"k=rsa; v=DKIM1; p=AAAA", "not a DKIM1"),
                       (b"v=DKIM1; k=dsa; p=AAAA", "unknown key type"),
                       (b"v=DKIM1; p=!!!!", "base64"), (b"v=DKIM1", "without p=")):
        with pytest.raises(KeyRecordError, match=words):
            parse_key_record(bad)


_SIGNATURE_PIECES = st.sampled_from([
    "v=1", "a=rsa-sha256", "a=ed25519-sha256", "d=dkim.test", "s=k1r", "s=k1e", "h=from",
    "h=from:to", "bh=AAAA", "b=AAAA", "c=relaxed/relaxed", "l=5", "t=1", "x=2", "i=@dkim.test",
    "q=dns/txt", "=", ";", " ", "\r\n ", "d=", "s=", "a=", "v=1; v=1", "bh=%%", "b==",
    "h=", "x=99999999999999999999", "l=" + "9" * 80, "s=a..b", "d=xn--", "i=@", "\x00",
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SIGNATURE_PIECES, max_size=14))
def test_hostile_signature_fields_get_a_defined_result(resolver, pieces: list[str]) -> None:
    value = "; ".join(pieces).encode()
    results = verify(b"DKIM-Signature: " + value + b"\r\n" + MESSAGE, resolver)
    assert len(results) == 1
    assert results[0].result in ALL_RESULTS and results[0].result != "pass"


_BODY_LINES = st.lists(st.text(st.sampled_from("ab \t"), max_size=12), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BODY_LINES, st.integers(min_value=0, max_value=4), st.integers(1, 9),
       st.sampled_from([b"simple", b"relaxed"]))
def test_any_body_signed_by_dkimpy_verifies_in_any_chunking(resolver, keys: Keys,
                                                            lines: list[str], blank: int,
                                                            chunk: int, canon: bytes) -> None:
    body = "".join(line + "\r\n" for line in lines).encode() + b"\r\n" * blank
    message = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" + body
    signed = dkimpy_sign(message, b"k1e", keys.ed.private_key, canonicalize=(canon, canon))
    saved = dkim_verify.BODY_READ_CHUNK
    dkim_verify.BODY_READ_CHUNK = chunk
    try:
        results = verify(signed, resolver)
    finally:
        dkim_verify.BODY_READ_CHUNK = saved
    assert [r.result for r in results] == ["pass"], results[0].reason
