"""Delivery status notifications (RFC 3464, RFC 3461, RFC 6522, RFC 6533), parsed back with
Python's email package as a mail program would read them."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import email.utils
import time
from pathlib import Path

import pytest
from queue_helpers import new_message

from mailkeep.queue import dsn
from mailkeep.queue.store import (
    QueueEntry,
    QueueStore,
    RecipientOutcome,
    RecipientState,
    apply_outcomes,
)

ORIGINAL = (b"From: Me <me@example.com>\r\nTo: you@example.net\r\n"
            b"Subject: =?utf-8?q?Caf=C3=A9?= plans\r\nMessage-ID: <plans@example.com>\r\n"
            b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n\r\nSee you at noon.\r\n")
ARRIVED = 1_794_000_000.0
NOW = ARRIVED + 3600


def rcpt(address: str, *, status: str = "failed", code: int | None = 550,
         text: str | None = "5.1.1 <x>: Recipient address rejected",
         orcpt: tuple[str, str] | None = None, notify: tuple[str, ...] | None = None,
         remote_mta: str | None = "mx.example.net", attempts: int = 1) -> RecipientState:
    return RecipientState(address, orcpt, notify, status, code, text, attempts, remote_mta)


def entry(recipients: list[RecipientState], **changes) -> QueueEntry:
    values = dict(queue_id="0B8K5T3P4X2MQ1", sender="me@example.com", created=ARRIVED,
                  size=len(ORIGINAL), recipients=recipients, envid=None, ret=None,
                  smtputf8=False, body_type=None, requiretls=False, kind="normal",
                  account="me@example.com", dkim_selectors=(), hold=False, attempts=1,
                  next_attempt=0.0, last_error=None, warned=False)
    values.update(changes)
    return QueueEntry(**values)


@pytest.fixture
def original(tmp_path: Path) -> Path:
    path = tmp_path / "original"
    path.write_bytes(ORIGINAL)
    return path


def parse(data: bytes) -> email.message.Message:
    assert b"\n" not in data.replace(b"\r\n", b""), "a bare LF in the DSN"
    assert b"\r" not in data.replace(b"\r\n", b""), "a bare CR in the DSN"
    return email.message_from_bytes(data)


def parts(message: email.message.Message) -> list[email.message.Message]:
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    return message.get_payload()


def status_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The per-message block, then one per recipient (RFC 3464 §2.1)."""
    if part.get_content_type() == "message/delivery-status":
        return part.get_payload()
    raise AssertionError(f"not a delivery-status part: {part.get_content_type()}")


def raw_parts(data: bytes) -> list[bytes]:
    """The bodies of the report's parts, as bytes (the email package does not know the
    RFC 6533 types, so they are read by hand)."""
    boundary = email.message_from_bytes(data).get_param("boundary").encode()
    pieces = data.split(b"\r\n--" + boundary)
    return [piece.split(b"\r\n\r\n", 1)[1] for piece in pieces[1:-1]]


def global_status_blocks(data: bytes) -> list[email.message.Message]:
    text = raw_parts(data)[1].decode("utf-8")
    return [email.message_from_string(block + "\n")
            for block in text.replace("\r\n", "\n").strip("\n").split("\n\n")]


def test_failure_dsn_structure_and_every_field(original: Path) -> None:
    failed = [
        rcpt("you@example.net", orcpt=("rfc822", "You@Example.NET")),
        rcpt("other@example.org", code=None, text="Host or domain name not found",
             remote_mta=None, attempts=3),
    ]
    data = dsn.build_bounce(entry(failed, envid="ENV-42"), failed,
                            reporting_mta="mail.example.com", original=original,
                            postmaster="postmaster@example.com", now=NOW)
    message = parse(data)
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.com>"
    assert message["To"] == "<me@example.com>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == int(NOW)
    assert message["Message-ID"].endswith("@mail.example.com>")
    human, report, returned = parts(message)

    text = human.get_payload(decode=True).decode(human.get_content_charset()).replace("\r\n", "\n")
    assert "could not be delivered" in text
    assert "<you@example.net>:\n    mx.example.net said: 550 5.1.1 <x>: Recipient address " \
           "rejected" in text
    assert "<other@example.org>:\n    Host or domain name not found" in text
    assert "Subject: Café plans" in text  # decoded for the reader
    assert "Queue ID: 0B8K5T3P4X2MQ1" in text
    assert "postmaster@example.com" in text

    per_message, first, second = status_blocks(report)
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert per_message["Reporting-MTA"] == "dns; mail.example.com"
    assert email.utils.parsedate_to_datetime(
        per_message["Arrival-Date"]).timestamp() == ARRIVED
    assert per_message["X-Mailkeep-Queue-ID"] == "0B8K5T3P4X2MQ1"
    assert first["Original-Recipient"] == "rfc822; You@Example.NET"
    assert first["Final-Recipient"] == "rfc822; you@example.net"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Remote-MTA"] == "dns; mx.example.net"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 <x>: Recipient address rejected"
    assert email.utils.parsedate_to_datetime(
        first["Last-Attempt-Date"]).timestamp() == int(NOW)
    assert first["Will-Retry-Until"] is None
    assert second["Original-Recipient"] is None
    assert second["Status"] == "5.0.0"  # no reply at all: derived
    assert second["Remote-MTA"] is None
    assert second["Diagnostic-Code"] == "X-Mailkeep; Host or domain name not found"

    # No RET: the header only (RFC 3461 §4.3 leaves it to us).
    assert returned.get_content_type() == "text/rfc822-headers"
    header = returned.get_payload(decode=True)
    assert header == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"See you at noon" not in data


def test_status_comes_from_the_reply(original: Path) -> None:
    cases = [
        (550, "5.7.1 Relaying denied", "5.7.1"),
        (550, "550 5.2.2 mailbox full", "5.2.2"),     # the code repeated in the text
        (550, "No such user", "5.0.0"),               # no enhanced code: from the reply code
        (554, "4.4.1 inconsistent", "5.0.0"),          # a class that contradicts the code
        (None, "connection timed out", "5.0.0"),
        (451, "4.4.7 gave up after 5 days", "4.4.7"),  # RFC 3463: expired, class 4
    ]
    for code, text, status in cases:
        state = rcpt("you@example.net", code=code, text=text)
        assert dsn.status_code(state, "failed") == status, (code, text)
    delayed = rcpt("you@example.net", status="pending", code=None, text="refused")
    assert dsn.status_code(delayed, "delayed") == "4.0.0"
    data = dsn.build_bounce(entry([rcpt("you@example.net", text="550 5.2.2 mailbox full")]),
                            [rcpt("you@example.net", text="550 5.2.2 mailbox full")],
                            reporting_mta="mail.example.com", original=original, now=NOW)
    block = status_blocks(parts(parse(data))[1])[1]
    assert block["Diagnostic-Code"] == "smtp; 550 5.2.2 mailbox full"


def test_ret_full_returns_the_whole_message_up_to_the_limit(original: Path) -> None:
    failed = [rcpt("you@example.net")]
    data = dsn.build_bounce(entry(failed, ret="FULL"), failed, reporting_mta="m.example.com",
                            original=original, now=NOW)
    returned = parts(parse(data))[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Message-ID"] == "<plans@example.com>"
    assert inner.get_payload() == "See you at noon.\r\n"
    assert "Your message is attached." in parts(parse(data))[0].get_payload(decode=True).decode()
    # Larger than the limit: the header only.
    data = dsn.build_bounce(entry(failed, ret="FULL"), failed, reporting_mta="m.example.com",
                            original=original, now=NOW, max_original=len(ORIGINAL) - 1)
    returned = parts(parse(data))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"See you at noon" not in data
    # BINARYMIME content cannot ride in a 7bit/8bit report: the header only.
    data = dsn.build_bounce(entry(failed, ret="FULL", body_type="BINARYMIME"), failed,
                            reporting_mta="m.example.com", original=original, now=NOW)
    assert parts(parse(data))[2].get_content_type() == "text/rfc822-headers"


def test_smtputf8_originals_get_the_global_types(tmp_path: Path) -> None:
    original = tmp_path / "original"
    original.write_bytes("From: José <josé@example.com>\r\nTo: ünï@exämple.net\r\n"
                         "Subject: olé\r\n\r\nbody\r\n".encode())
    failed = [rcpt("ünï@xn--exmple-cua.net", orcpt=("utf-8", "ünï@exämple.net"))]
    bounce_entry = entry(failed, smtputf8=True, sender="josé@example.com")
    data = dsn.build_bounce(bounce_entry, failed, reporting_mta="mail.example.com",
                            original=original, now=NOW)
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert "\r\nTo: <josé@example.com>\r\n".encode() in data  # RFC 6532 raw UTF-8
    _human, report, returned = parts(message)
    assert report.get_content_type() == "message/global-delivery-status"
    assert report["Content-Transfer-Encoding"] == "8bit"
    block = global_status_blocks(data)[1]
    assert block["Final-Recipient"] == "utf-8; ünï@xn--exmple-cua.net"
    assert block["Original-Recipient"] == "utf-8; ünï@exämple.net"
    assert returned.get_content_type() == "message/global-headers"
    assert raw_parts(data)[2] == "From: José <josé@example.com>\r\nTo: ünï@exämple.net\r\n" \
        "Subject: olé\r\n".encode()
    # Queued back with SMTPUTF8 and 8BITMIME, from the null sender.
    notice = dsn.notice_message(bounce_entry, data, "failure", new_id=lambda: "DSN0000001")
    assert (notice.sender, notice.smtputf8, notice.body_type, notice.kind) == (
        "", True, "8BITMIME", "bounce")
    assert [r.address for r in notice.recipients] == ["josé@example.com"]


def test_non_ascii_addresses_in_an_ascii_report_are_escaped(original: Path) -> None:
    failed = [rcpt("dörte+x=y@example.net", orcpt=("utf-8", "Dörte@example.net"))]
    data = dsn.build_bounce(entry(failed), failed, reporting_mta="mail.example.com",
                            original=original, now=NOW)
    assert data.isascii()
    block = status_blocks(parts(parse(data))[1])[1]
    # RFC 6533 §3 utf-8-addr-xtext: non-ASCII, "+", "=" and "\" as \x{HEX}.
    assert block["Final-Recipient"] == r"utf-8; d\x{F6}rte\x{2B}x\x{3D}y@example.net"
    assert block["Original-Recipient"] == r"utf-8; D\x{F6}rte@example.net"


def test_delay_warning(original: Path) -> None:
    waiting = [rcpt("you@example.net", status="pending", code=451, text="4.7.1 greylisted")]
    until = ARRIVED + 5 * 86400
    data = dsn.build_bounce(entry(waiting, ret="FULL"), waiting, kind="delay",
                            reporting_mta="mail.example.com", original=original, now=NOW,
                            retry_until=until, max_original=0)
    message = parse(data)
    assert message["Subject"] == "Delayed Mail (still being retried)"
    human, report, returned = parts(message)
    assert "only a warning" in human.get_payload(decode=True).decode()
    block = status_blocks(report)[1]
    assert (block["Action"], block["Status"]) == ("delayed", "4.7.1")
    assert email.utils.parsedate_to_datetime(block["Will-Retry-Until"]).timestamp() == until
    assert returned.get_content_type() == "text/rfc822-headers"


def test_success_report(original: Path) -> None:
    done = [rcpt("you@example.net", status="delivered", code=250, text="2.0.0 Ok: queued",
                 notify=("SUCCESS",))]
    message = parse(dsn.build_bounce(entry(done), done, kind="success",
                                     reporting_mta="mail.example.com", original=original,
                                     now=NOW))
    assert message["Subject"] == "Successful Mail Delivery Report"
    block = status_blocks(parts(message)[1])[1]
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")


def test_a_vanished_original_still_gives_a_report(tmp_path: Path) -> None:
    failed = [rcpt("you@example.net")]
    message = parse(dsn.build_bounce(entry(failed), failed, reporting_mta="m.example.com",
                                     original=tmp_path / "gone", now=NOW))
    human, report = parts(message)
    assert "no longer available" in human.get_payload(decode=True).decode()
    assert status_blocks(report)[1]["Status"] == "5.1.1"


def test_hostile_reply_text_cannot_inject_fields(original: Path) -> None:
    evil = "5.1.1 bad\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822; x@evil " + "y" * 3000
    failed = [rcpt("you@example.net", text=evil)]
    data = dsn.build_bounce(entry(failed), failed, reporting_mta="m.example.com",
                            original=original, now=NOW)
    blocks = status_blocks(parts(parse(data))[1])
    assert len(blocks) == 2
    assert blocks[1]["Action"] == "failed"
    assert len(blocks[1]["Diagnostic-Code"]) < dsn.MAX_DIAGNOSTIC_CHARS + 50
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


@pytest.mark.parametrize(("sender", "kind", "notify", "failure", "delay", "success"), [
    ("me@example.com", "normal", None, True, True, False),
    ("me@example.com", "normal", ("NEVER",), False, False, False),
    ("me@example.com", "normal", ("SUCCESS",), False, False, True),
    ("me@example.com", "normal", ("DELAY",), False, True, False),
    ("me@example.com", "normal", ("FAILURE",), True, False, False),
    ("me@example.com", "normal", ("SUCCESS", "FAILURE", "DELAY"), True, True, True),
    ("", "normal", None, False, False, False),            # null sender: never
    ("", "bounce", ("SUCCESS",), False, False, False),
    ("me@example.com", "bounce", None, False, False, False),  # a DSN never bounces
    ("me@example.com", "delay", None, False, False, False),
])
def test_should_notify(sender: str, kind: str, notify, failure: bool, delay: bool,
                       success: bool) -> None:
    state = rcpt("you@example.net", notify=notify)
    subject = entry([state], sender=sender, kind=kind)
    assert dsn.should_notify(subject, state, "failure") is failure
    assert dsn.should_notify(subject, state, "delay") is delay
    assert dsn.should_notify(subject, state, "success") is success


def test_notices_for_an_attempt_go_out_with_it(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "q") as queue:
        message = new_message("ORIG000001", "a@example.net", "b@example.net",
                              "c@example.net", source=ORIGINAL, prefix=b"")
        message.recipients[2] = type(message.recipients[2])("c@example.net",
                                                             notify=("SUCCESS",))
        asyncio.run(queue.enqueue([message]))
        before = queue.get("ORIG000001")
        outcomes = [RecipientOutcome("a@example.net", "failed", 550, "5.1.1 unknown"),
                    RecipientOutcome("b@example.net", "deferred", 451, "4.3.0 later"),
                    RecipientOutcome("c@example.net", "delivered", 250, "ok")]
        after = apply_outcomes(before, outcomes)
        ids = iter(["DSNFAIL001", "DSNSUCC001"])
        notices = dsn.notices_for_attempt(before, after, reporting_mta="mail.example.com",
                                          original=queue.message_path("ORIG000001"),
                                          now=NOW, new_id=lambda: next(ids))
        assert [n.queue_id for n in notices] == ["DSNFAIL001", "DSNSUCC001"]
        asyncio.run(queue.record_attempt("ORIG000001", outcomes, time.time() + 60,
                                         notices=notices))
        failure = email.message_from_bytes(queue.message_path("DSNFAIL001").read_bytes())
        recipients = [b["Final-Recipient"] for b in status_blocks(parts(failure)[1])[1:]]
        assert recipients == ["rfc822; a@example.net"]  # b is only deferred
        success = email.message_from_bytes(queue.message_path("DSNSUCC001").read_bytes())
        assert [b["Final-Recipient"] for b in status_blocks(parts(success)[1])[1:]] == [
            "rfc822; c@example.net"]
        bounce = queue.get("DSNFAIL001")
        assert (bounce.sender, bounce.kind, [r.address for r in bounce.recipients]) == (
            "", "bounce", ["me@example.com"])
        # A delay warning for what is still pending.
        warning = dsn.delay_notice(queue.get("ORIG000001"), reporting_mta="mail.example.com",
                                   original=queue.message_path("ORIG000001"),
                                   retry_until=NOW + 86400, now=NOW,
                                   new_id=lambda: "DSNDELAY01")
        assert [r.address for r in warning.recipients] == ["me@example.com"]
        delay = email.message_from_bytes(warning.source)
        assert [b["Final-Recipient"] for b in status_blocks(parts(delay)[1])[1:]] == [
            "rfc822; b@example.net"]
        # A bounce never gets notices of its own.
        assert dsn.notices_for_attempt(
            bounce, apply_outcomes(bounce, [RecipientOutcome("me@example.com", "failed",
                                                             550, "no")]),
            reporting_mta="mail.example.com", original=queue.message_path("DSNFAIL001")) == []
