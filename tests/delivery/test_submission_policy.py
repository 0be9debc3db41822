"""The submission policy without sockets: sender login map, send modes, rates, fix-ups,
routing and retry arithmetic of the queue manager."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.addressing import Resolver
from mailkeep.config import parse_config_text
from mailkeep.delivery.fixups import (
    HeaderTooLarge,
    fix_headers,
    read_header_block,
    signing_domain,
    submitted_header,
)
from mailkeep.delivery.pipeline import Pipeline
from mailkeep.delivery.submission import (
    AUTH_REQUIRED,
    RateLimiter,
    SenderPolicy,
    Submission,
)
from mailkeep.queue.scheduler import Router, backoff
from mailkeep.smtp.address import parse_address

CONFIG = """
hostname = "mail.example.com"

[domains."example.com"]
catch_all = "me@example.com"

[domains."example.org"]
subaddress_separator = "+-"

[accounts."me@example.com"]
aliases = ["rolf@example.com"]

[accounts."you@example.org"]
send = "block"
send_message = "This account is not allowed to send emails, talk to abuse@example.com"

[accounts."new@example.org"]
send = "hold"
max_messages_per_hour = 1

[accounts."relay@example.com"]
relay_only = true

[aliases]
"postmaster@example.com" = "me@example.com"
"team@example.com" = ["me@example.com", "you@example.org"]

[submission]
senders = { "info@example.org" = ["me@example.com", "relay@example.com"] }

[relays.provider]
host = "[smtp.provider.net]:submission"

[relays.partner]
host = "mx.partner.net:25"
tls = "encrypt"

[delivery]
relayhost = "provider"
transport = { "direct.test" = "direct", ".corp.test" = "partner" }
"""


@pytest.fixture(scope="module")
def config():
    return parse_config_text(CONFIG, "test.toml")


@pytest.fixture(scope="module")
def policy(config) -> SenderPolicy:
    return SenderPolicy(config, Resolver(config))


@pytest.mark.parametrize("account, address, allowed", [
    ("me@example.com", "me@example.com", True),
    ("me@example.com", "ME@Example.COM", True),
    ("me@example.com", "rolf@example.com", True),            # own alias
    ("me@example.com", "me+shop@example.com", True),         # sub-address of own address
    ("me@example.com", "postmaster@example.com", True),      # alias to this account alone
    ("me@example.com", "info@example.org", True),            # granted in [submission]
    ("relay@example.com", "info@example.org", True),
    ("me@example.com", "team@example.com", False),           # a list is nobody's
    ("me@example.com", "anything@example.com", False),       # catch-all is not ownership
    ("me@example.com", "you@example.org", False),
    ("you@example.org", "me@example.com", False),
    ("me@example.com", "me@evil.test", False),
    ("nobody@example.com", "nobody@example.com", False),     # not an account
    ("me@example.com", "not an address", False),
])
def test_sender_login_map(policy: SenderPolicy, account: str, address: str,
                          allowed: bool) -> None:
    assert policy.may_send_as(account, address) is allowed


def _submission(config, tmp_path: Path) -> Submission:
    return Submission(config, Pipeline(config, store=None), queue=None, spool_dir=tmp_path)


def test_mail_from_decisions(config, tmp_path: Path) -> None:
    sub = _submission(config, tmp_path)
    me = parse_address("me@example.com")
    assert sub.mail_from(None, me) == AUTH_REQUIRED
    assert sub.mail_from("me@example.com", me) is None
    refusal = sub.mail_from("me@example.com", parse_address("you@example.org"))
    assert (refusal.code, refusal.enhanced) == (553, "5.7.1")
    assert "not owned by user me@example.com" in refusal.text
    blocked = sub.mail_from("you@example.org", parse_address("you@example.org"))
    assert blocked.code == 554
    assert blocked.text == "This account is not allowed to send emails, talk to abuse@example.com"
    assert sub.mail_from("me@example.com", None).code == 553     # no null sender


def test_hourly_limit_uses_the_account_override(config, tmp_path: Path) -> None:
    sub = _submission(config, tmp_path)
    new = parse_address("new@example.org")
    assert sub.mail_from("new@example.org", new) is None
    sub.rates.count_message("new@example.org", __import__("time").time())
    refusal = sub.mail_from("new@example.org", new)
    assert (refusal.code, refusal.enhanced) == (450, "4.7.1")


def test_recipients_local_and_remote(config, tmp_path: Path) -> None:
    sub = _submission(config, tmp_path)
    reply, accepted = sub.rcpt_to("me@example.com", parse_address("someone@elsewhere.test"),
                                  None, 0)
    assert reply.code == 250 and accepted is not None and accepted.targets == ()
    reply, accepted = sub.rcpt_to("me@example.com", parse_address("nobody@example.org"),
                                  None, 0)
    assert reply.code == 550 and accepted is None
    reply, accepted = sub.rcpt_to("me@example.com", parse_address("rolf@example.com"), None, 0)
    assert reply.code == 250 and accepted.targets[0].account == "me@example.com"
    reply, _ = sub.rcpt_to("me@example.com", parse_address("x@elsewhere.test"), None,
                           config.submission.max_recipients)
    assert (reply.code, reply.enhanced) == (452, "4.5.3")


def test_rate_limiter_windows() -> None:
    rates = RateLimiter()
    assert rates.message_allowed("a", 2, 0.0)
    rates.count_message("a", 0.0)
    rates.count_message("a", 10.0)
    assert not rates.message_allowed("a", 2, 20.0)
    assert rates.message_allowed("a", 2, 3601.0)        # the first one left the hour
    assert rates.message_allowed("a", 0, 20.0)          # 0 = no limit
    for n in range(3):
        rates.count_recipient("a", f"r{n}@x.test", 0.0)
    assert not rates.recipient_allowed("a", "new@x.test", 3, 100.0)
    assert rates.recipient_allowed("a", "r1@x.test", 3, 100.0)   # not new
    assert rates.recipient_allowed("a", "new@x.test", 3, 86401.0)


MESSAGE = (b"From: Me <me@example.com>\r\nTo: you@elsewhere.test\r\nSubject: hi\r\n"
           b"X-Mailer: Leaky 1.0\r\nUser-Agent: Leaky\r\n"
           b"X-Originating-IP: [192.0.2.7]\r\n\r\nbody\r\nX-Mailer: not a header\r\n")
REMOVE = frozenset({"x-mailer", "user-agent", "x-originating-ip"})


def test_fixups_remove_leaks_and_add_missing_fields() -> None:
    fixed = submitted_header(MESSAGE, hostname="mail.example.com", message_id_stem="ABC",
                             remove=REMOVE, now=0)
    assert fixed.removed == ("x-mailer", "user-agent", "x-originating-ip")
    assert fixed.added == ("Message-ID", "Date")
    assert fixed.from_addresses == ("me@example.com",)
    assert signing_domain(fixed) == "example.com"
    whole = fixed.header + MESSAGE[fixed.body_offset:]
    parsed = email.message_from_bytes(whole, policy=email.policy.default)
    assert parsed["Message-ID"] == "<ABC@mail.example.com>"
    assert parsed["Date"].datetime.timestamp() == 0
    assert parsed["X-Mailer"] is None
    assert whole.endswith(b"X-Mailer: not a header\r\n"), "the body is never touched"
    assert fixed.header.endswith(b"\r\n\r\n")


def test_fixups_keep_existing_message_id_and_folded_fields() -> None:
    message = (b"Message-ID: <keep@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
               b"Subject: a\r\n folded\r\nX-Mailer: a\r\n b\r\nFrom: a@example.com\r\n\r\nx")
    header, _ = read_header_block(message)
    new, removed, added = fix_headers(header, hostname="h", message_id_stem="s",
                                      remove=REMOVE)
    assert added == [] and removed == ["x-mailer"]
    assert new == (b"Message-ID: <keep@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                   b"Subject: a\r\n folded\r\nFrom: a@example.com\r\n\r\n")


def test_header_block_limits(tmp_path: Path) -> None:
    big = b"X-Long: " + b"a" * 2_000_000 + b"\r\n\r\nbody"
    with pytest.raises(HeaderTooLarge):
        read_header_block(big)
    spool = tmp_path / "msg"
    spool.write_bytes(MESSAGE)
    _, offset = read_header_block(spool)
    assert MESSAGE[offset:] == b"body\r\nX-Mailer: not a header\r\n"
    assert read_header_block(b"Subject: no body\r\n") == (b"Subject: no body\r\n", 18)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Subject", "X-Mailer", "To", "User-Agent",
                                           "Received", "Message-ID"]),
                          st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                  max_size=40)), max_size=12),
       st.binary(max_size=200))
def test_fixups_never_lose_kept_fields_or_body(fields, body) -> None:
    header = b"".join(f"{n}: {v}\r\n".encode() for n, v in fields) + b"\r\n"
    message = header + body
    fixed = submitted_header(message, hostname="h.test", message_id_stem="x", remove=REMOVE)
    assert message[fixed.body_offset:] == body
    kept = [f"{n}: {v}\r\n".encode() for n, v in fields if n.lower() not in REMOVE]
    assert fixed.header.startswith(b"".join(kept))
    assert fixed.header.count(b"Message-ID:") == max(1, sum(n == "Message-ID" for n, _ in fields))


def test_router(config) -> None:
    router = Router(config, Pipeline(config, store=None))
    assert router.route("example.com").kind == "local"
    assert router.route("EXAMPLE.org").kind == "local"
    direct = router.route("direct.test")
    assert (direct.kind, direct.key) == ("direct", "direct.test")
    corp = router.route("mail.corp.test")
    assert (corp.kind, corp.relay.name) == ("relay", "partner")
    assert corp.relay.mx_lookup and corp.relay.tls == "encrypt"
    other = router.route("gmail.test")
    assert (other.kind, other.relay.host, other.relay.port) == ("relay", "smtp.provider.net",
                                                                587)
    assert not other.relay.mx_lookup


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert [backoff(n, 300, 4000) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]


def test_a_spooled_message_is_rewritten_signed_and_queued_whole(tmp_path: Path) -> None:
    """A message too large for memory (a spool file) keeps its body byte for byte, gets the
    fix-ups and a DKIM signature that verifies, and reaches the queue."""
    import asyncio

    import dkim as dkimpy
    from mailkeep.delivery.pipeline import AcceptedRecipient, Envelope, SessionInfo
    from mailkeep.delivery.submission import SubmitRequest
    from mailkeep.dkim.keys import DkimKeys
    from mailkeep.queue.store import QueueStore

    config = parse_config_text(CONFIG, "test.toml")
    keys = DkimKeys(tmp_path / "dkim")
    keys.keygen("example.com")
    records = {f"{name}.".encode(): txt.encode() for name, txt in keys.dns_records("example.com")}
    queue = QueueStore(tmp_path / "queue")
    sub = Submission(config, Pipeline(config, store=None), queue, spool_dir=tmp_path,
                     dkim=keys)
    body = b"".join(b"line %d of a big message, with  two spaces \r\n" % n
                    for n in range(60_000))
    spool = tmp_path / "in-spool"
    spool.write_bytes(MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body)
    envelope = Envelope(sender=parse_address("me@example.com"),
                        recipients=[AcceptedRecipient(parse_address("you@elsewhere.test"), ())])
    reply = asyncio.run(sub.submit(SubmitRequest(
        session=SessionInfo(client_ip="192.0.2.9", tls="TLSv1.3"), account="me@example.com",
        envelope=envelope, source=spool, size=spool.stat().st_size, msg_id="BIG0000001")))
    assert reply.code == 250, reply
    queued = queue.message_path("BIG0000001").read_bytes()
    assert queued.endswith(body)
    head = queued[:len(queued) - len(body)]
    assert b"192.0.2.9" not in head and b"X-Mailer" not in head
    assert head.count(b"DKIM-Signature:") == 2
    verifier = dkimpy.DKIM(queued)
    assert all(verifier.verify(idx=i, dnsfunc=lambda name, timeout=5: records.get(name))
               for i in range(2))
    assert queue.get("BIG0000001").dkim_selectors == tuple(
        f"example.com:{s.name}" for s in keys.active("example.com"))
    assert list(tmp_path.glob("sub-*")) == [], "the rewritten copy is removed"
    queue.close()
