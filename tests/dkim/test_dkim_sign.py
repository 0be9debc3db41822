"""Signing: what we produce verifies with dkimpy (an independent implementation), for
RSA and Ed25519, for the messages that trip canonicalization up, from memory and from a
spool file; tampering and added header fields break it, relay-style reformatting not."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from tests.dkim.verifiers import DOMAIN, NOW, dkimpy_results

from mailkeep.dkim.keys import SigningKey
from mailkeep.dkim.sign import DkimSignError, sign_message

HEADER = (b"From: Alice Example <alice@example.com>\r\n"
          b"To: bob@example.org\r\n"
          b"Subject: Lunch\r\n"
          b"Date: Sat, 21 Nov 2026 04:00:00 +0000\r\n"
          b"Message-ID: <lunch.1@example.com>\r\n"
          b"MIME-Version: 1.0\r\n"
          b"Content-Type: text/plain; charset=utf-8\r\n"
          b"\r\n")

LONG_SUBJECT = b"Subject: " + b" ".join(b"word%d" % i for i in range(60))
FOLDED_TO = b"To: " + b",\r\n\t".join(b"Person %d <p%d@example.org>" % (i, i) for i in range(25))

MESSAGES = {
    "plain": (HEADER, b"Hello Bob,\r\n\r\nlunch at noon?\r\n\r\nAlice\r\n"),
    "trailing empty lines": (HEADER, b"Hello\r\n\r\n\r\n\r\n\r\n"),
    "whitespace runs": (
        HEADER.replace(b"Subject: Lunch", b"Subject:   Lunch \t  at\tnoon   "),
        b"  indented\t\tline   \r\ntrailing spaces   \t\r\n\t\r\n   \r\nend\r\n"),
    "long folded headers": (
        HEADER.replace(b"Subject: Lunch\r\n", LONG_SUBJECT + b"\r\n")
              .replace(b"To: bob@example.org\r\n", FOLDED_TO + b"\r\n")
              .replace(b"Content-Type: text/plain; charset=utf-8",
                       b"Content-Type: text/plain;\r\n    charset=utf-8;\r\n\tformat=flowed"),
        b"Body\r\n"),
    "8-bit body": (HEADER, "Grüße, señor — ½ €\r\n".encode() + b"latin-1: \xe9\xe8\r\n"),
    "empty body": (HEADER, b""),
    "body without final CRLF": (HEADER, b"no newline at the end  "),
}


def sign(header: bytes, body: bytes, keys: list[SigningKey], **kwargs: object) -> bytes:
    fields = sign_message(header, header + body, len(header), keys, domain=DOMAIN,
                          now=kwargs.pop("now", NOW), **kwargs)  # type: ignore[arg-type]
    return fields + header + body


@pytest.mark.parametrize("name", list(MESSAGES))
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signature_verifies_with_dkimpy(name: str, algorithm: str, signing_keys, records):
    header, body = MESSAGES[name]
    key = next(k for k in signing_keys if k.algorithm == algorithm)
    message = sign(header, body, [key])
    assert re.search(rb"a=%s-sha256;" % algorithm.encode(), message)
    if body and not body.endswith(b"\r\n"):
        # What arrives: an SMTP client ends DATA with CRLF (RFC 5321 §4.1.1.4).
        message += b"\r\n"
    assert dkimpy_results(message, records) == [True]


def test_dual_signature_both_verify(signing_keys, records):
    header, body = MESSAGES["plain"]
    message = sign(header, body, signing_keys)
    fields = message[:message.index(b"From:")]
    assert fields.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in fields and b"a=ed25519-sha256" in fields
    assert dkimpy_results(message, records) == [True, True]


def test_signature_field_is_folded_crlf_and_complete(signing_keys):
    header, body = MESSAGES["long folded headers"]
    fields = sign_message(header, body, 0, signing_keys, domain=DOMAIN, now=NOW)
    lines = fields.split(b"\r\n")
    assert lines[-1] == b""  # CRLF-terminated
    assert all(len(line) <= 78 for line in lines)
    assert b"\n" not in fields.replace(b"\r\n", b"")
    unfolded = re.sub(rb"\r\n[ \t]", b" ", fields).split(b"\r\n")[0].decode()
    tags = dict(tag.strip().split("=", 1) for tag in unfolded.split(":", 1)[1].split(";"))
    assert tags["v"] == "1" and tags["c"] == "relaxed/relaxed" and tags["d"] == DOMAIN
    assert tags["t"] == str(NOW)
    assert "l" not in tags and "x" not in tags and "i" not in tags
    signed = [n.strip() for n in tags["h"].split(":")]
    # Oversigned: once more than present; To occurs once even though it is folded.
    assert signed.count("from") == 2 and signed.count("to") == 2
    assert signed.count("subject") == 2 and signed.count("date") == 2
    assert signed.count("message-id") == 1 and signed.count("content-type") == 1
    # Absent, not oversigned fields are not listed.
    assert "cc" not in signed and "reply-to" not in signed


def test_body_from_spool_file_with_offset(tmp_path: Path, signing_keys, records):
    header, body = MESSAGES["whitespace runs"]
    spool = tmp_path / "spool"
    prefix = b"Return-Path: <alice@example.com>\r\nX-Queue: junk before the message\r\n"
    spool.write_bytes(prefix + header + body)
    fields = sign_message(header, spool, len(prefix) + len(header), signing_keys,
                          domain=DOMAIN, now=NOW)
    assert dkimpy_results(fields + header + body, records) == [True, True]
    # The same signature as from memory.
    assert fields == sign_message(header, header + body, len(header), signing_keys,
                                  domain=DOMAIN, now=NOW)


def test_large_spool_body_is_streamed(tmp_path: Path, signing_keys, records):
    import tracemalloc

    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx  \r\n"
    body = line * (6 * (1 << 20) // len(line))  # 6 MB
    header = MESSAGES["plain"][0]
    spool = tmp_path / "big"
    spool.write_bytes(header + body)
    tracemalloc.start()
    try:
        started = time.monotonic()
        fields = sign_message(header, spool, len(header), signing_keys, domain=DOMAIN, now=NOW)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"signing a 6 MB spool file used {peak} bytes"
    assert elapsed < 5
    assert dkimpy_results(fields + header + body, records) == [True, True]


def test_identity_and_expiry_tags(signing_keys, records):
    header, body = MESSAGES["plain"]
    now = int(time.time())
    message = sign(header, body, signing_keys, identity="alice;x@mail.example.com",
                   expire_after=3600, now=now)
    assert b"i=alice=3Bx@mail.example.com;" in message
    assert b"x=%d;" % (now + 3600) in message
    assert dkimpy_results(message, records) == [True, True]


def test_expired_signature_fails(signing_keys, records):
    header, body = MESSAGES["plain"]
    # Two days ago, for one minute (verifiers allow some hours of clock skew).
    message = sign(header, body, signing_keys, expire_after=60, now=time.time() - 2 * 86400)
    assert dkimpy_results(message, records) == [False, False]


# -- what breaks a signature and what does not ---------------------------------------------

def test_second_from_added_after_signing_fails(signing_keys, records):
    header, body = MESSAGES["plain"]
    message = sign(header, body, signing_keys)
    at_top = b"From: Mallory <boss@example.com>\r\n" + message
    split = message.index(b"\r\n\r\n") + 2
    at_bottom = message[:split] + b"From: Mallory <boss@example.com>\r\n" + message[split:]
    assert dkimpy_results(at_top, records) == [False, False]
    assert dkimpy_results(at_bottom, records) == [False, False]


def test_to_added_to_a_message_without_one_fails(signing_keys, records):
    header, body = MESSAGES["plain"]
    header = header.replace(b"To: bob@example.org\r\n", b"")
    message = sign(header, body, signing_keys)
    assert dkimpy_results(message, records) == [True, True]
    split = message.index(b"\r\n\r\n") + 2
    added = message[:split] + b"To: victim@example.net\r\n" + message[split:]
    assert dkimpy_results(added, records) == [False, False]


def test_changed_body_or_subject_fails(signing_keys, records):
    header, body = MESSAGES["plain"]
    message = sign(header, body, signing_keys)
    assert dkimpy_results(message.replace(b"noon", b"one"), records) == [False, False]
    assert dkimpy_results(message.replace(b"Subject: Lunch", b"Subject: Lunch!"),
                          records) == [False, False]


def test_relay_reformatting_keeps_signature_valid(signing_keys, records):
    # What relaxed canonicalization is for: a Received field added on top, a header
    # refolded, whitespace changed, trailing spaces and empty lines added to the body.
    header, body = MESSAGES["plain"]
    message = sign(header, body, signing_keys)
    relayed = (b"Received: from mail.example.com by mx.example.org; Sat, 21 Nov 2026\r\n"
               + message.replace(b"Subject: Lunch", b"Subject:\r\n\t Lunch")
                        .replace(b"lunch at noon?", b"lunch   at\tnoon?  ")
               + b"\r\n\r\n")
    assert dkimpy_results(relayed, records) == [True, True]


def test_unsigned_header_added_keeps_signature_valid(signing_keys, records):
    header, body = MESSAGES["plain"]
    message = sign(header, body, signing_keys)
    split = message.index(b"\r\n\r\n") + 2
    added = message[:split] + b"X-Spam-Score: 0.1\r\nCc: carol@example.net\r\n" + message[split:]
    assert dkimpy_results(added, records) == [True, True]


# -- odd input -----------------------------------------------------------------------------

def test_header_with_bare_lf_is_signed_as_the_receiver_will_see_it(signing_keys, records):
    header = b"From: alice@example.com\nSubject: bare\n LF folded\nTo: bob@example.org\r\n\r\n"
    fields = sign_message(header, b"body\r\n", 0, signing_keys, domain=DOMAIN, now=NOW)
    # What a receiver sees after an MTA on the way turned the bare LFs into CRLF.
    fixed = re.sub(rb"(?<!\r)\n", b"\r\n", header)
    assert dkimpy_results(fields + fixed + b"body\r\n", records) == [True, True]


@pytest.mark.parametrize("header", [
    b"not a header line\r\nFrom: a@example.com\r\n\r\n",
    b" continuation first\r\nFrom: a@example.com\r\n",
    b"From a@example.com Sat Nov 21 04:00:00 2026\r\nFrom: a@example.com\r\n\r\n",
    b"\r\n",
    b"",
    b"From:\r\n\r\n",
    b"Subject: \xff\xfe\x00\r\n\r\n",
])
def test_odd_headers_are_signed_without_crash(header: bytes, signing_keys):
    fields = sign_message(header, b"", 0, signing_keys, domain=DOMAIN, now=NOW)
    assert fields.count(b"DKIM-Signature:") == 2 and fields.endswith(b"\r\n")


def test_no_keys_means_no_signature():
    assert sign_message(HEADER, b"x\r\n", 0, [], domain=DOMAIN) == b""


def test_errors_are_precise(signing_keys, tmp_path: Path):
    with pytest.raises(DkimSignError, match=r"belongs to example\.com, not to example\.org"):
        sign_message(HEADER, b"", 0, signing_keys, domain="example.org")
    with pytest.raises(DkimSignError, match=r"signing identity .* is not in example\.com"):
        sign_message(HEADER, b"", 0, signing_keys, domain=DOMAIN, identity="a@evil.example")
    with pytest.raises(DkimSignError, match="cannot read the message body"):
        sign_message(HEADER, tmp_path / "missing", 0, signing_keys, domain=DOMAIN)
    with pytest.raises(DkimSignError, match="cannot sign for"):
        sign_message(HEADER, b"", 0, signing_keys, domain="[192.0.2.1]")
    many = b"".join(b"To: p%d@example.org\r\n" % i for i in range(64)) + HEADER
    with pytest.raises(DkimSignError, match="65 'to' header fields; at most 64"):
        sign_message(many, b"", 0, signing_keys, domain=DOMAIN)
    lists = b"".join(b"List-X%d: x\r\n" % i for i in range(250)) + HEADER
    with pytest.raises(DkimSignError, match="261 header fields to sign; at most 256"):
        sign_message(lists, b"", 0, signing_keys, domain=DOMAIN)
