"""The seeds' own tables (tests/policy/fixtures, copied from seeds 000, 001, 002 and 004):
each file loads, and each rule in it has the effect its author wrote it for, with the
reply text a client would see."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailkeep.policy.actions import ActionKind, ReplyClass, access_reply
from mailkeep.policy.checks import ContentChecker, Decision
from mailkeep.policy.tables import (
    LiteralTable,
    RegexTable,
    TableError,
    check_helo_access,
    check_mail_access,
    load_table,
)

FIXTURES = Path(__file__).parent / "fixtures"
USER_UNKNOWN = "User unknown in local recipient table"


def table(name: str, **options: object) -> object:
    return load_table(name, base_dir=FIXTURES, **options)  # type: ignore[arg-type]


def reply_text(hit: object, name: str, reply_class: ReplyClass) -> str | None:
    if hit is None:
        return None
    reply = access_reply(hit.action, name=name, reply_class=reply_class)  # type: ignore[attr-defined]
    return None if reply is None else str(reply)


def message(*headers: str, body: str = "Hello.\r\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


# --- seed 000: helo_reject_domains (check_helo_access hash:) --------------------------

HELO_NAMES = ["example.com"] + [f"server{i}.workflicker.com" for i in range(10)]


def test_helo_reject_domains_loads_every_line() -> None:
    helo = table("hash:helo_reject_domains")
    assert isinstance(helo, LiteralTable)
    assert sorted(helo.entries) == sorted(HELO_NAMES)
    assert helo.warnings == ()


@pytest.mark.parametrize("name", HELO_NAMES)
def test_helo_reject_domains_rejects_each_listed_name(name: str) -> None:
    hit = check_helo_access(table("hash:helo_reject_domains"), name)
    assert reply_text(hit, name, ReplyClass.HELO) == (
        f"554 5.7.1 <{name}>: Helo command rejected: {USER_UNKNOWN}")


def test_helo_reject_domains_case_and_subdomains() -> None:
    helo = table("hash:helo_reject_domains")
    # Keys are case-folded; a subdomain matches through its parent with Postfix's default
    # parent_domain_matches_subdomains (an outsider claiming mail.example.com).
    for name in ("EXAMPLE.com", "mail.example.com", "a.b.server3.workflicker.com"):
        hit = check_helo_access(helo, name)
        assert hit is not None and hit.action.kind is ActionKind.REJECT, name
    assert check_helo_access(helo, "mail.example.com", parent_matches_subdomains=False) is None
    assert check_helo_access(helo, "workflicker.com") is None
    assert check_helo_access(helo, "mx.example.org") is None
    assert check_helo_access(helo, "notexample.com") is None


# --- seed 000: sender_domain_reject (check_sender_access hash:) -----------------------

SENDER_DOMAINS = ["gutemails.ga", "officeemailinfo.net", "organicstuffer.com",
                  "servsahost.store", "servsbhost.store", "servschost.store",
                  "servsdhost.store", "servsehost.store"]


@pytest.mark.parametrize("domain", SENDER_DOMAINS)
def test_sender_domain_reject_rejects_each_domain(domain: str) -> None:
    senders = table("hash:sender_domain_reject")
    for sender in (f"offers@{domain}", f"news@mail.{domain}"):
        hit = check_mail_access(senders, sender)
        assert reply_text(hit, sender, ReplyClass.SENDER) == (
            f"554 5.7.1 <{sender}>: Sender address rejected: {USER_UNKNOWN}")


def test_sender_domain_reject_leaves_others_alone() -> None:
    senders = table("hash:sender_domain_reject")
    assert check_mail_access(senders, "alice@example.org") is None
    assert check_mail_access(senders, "gutemails.ga@example.org") is None
    assert check_mail_access(senders, "") is None  # the null sender is looked up as <>


# --- seed 000: sender_access.pcre (check_sender_access pcre:) -------------------------

SENDER_PCRE_CASES = [
    # (line, rejected sender, similar sender that passes)
    (1, "shop.example.com@bulkmailer.net", "rolf.example.com@github.com"),
    (1, "team-example.de@mailer.example.org", "rolf@example.com"),
    (2, "gautamgovinda@outlook.com", "gautam@outlook.com"),
    (3, "promo@vivofelizbr.com.br", "promo@vivofelizbr.com.br.example"),
    (4, "a@laviena.com.br", "a@lavienna.com.br"),
    (5, "news@vejanovidades.com.br", "news@vejanovidade.com.br"),
    (6, "x@xltaffiliate.se", "x@xltaffiliate.de"),
    (7, "info@correiosebraesp.com.br", "info@correios.com.br"),
    (8, "hello@thecontenders.com.br", "hello@contenders.com.br"),
    (9, "m@mpst.net.br", "m@mpst.net"),
    (10, "offer@emktlw-42.com", "offer@emktlw-42.org"),
    (10, "offer@EMKTLW-.com", "offer@emktlw-x.co"),
]


def test_sender_access_pcre_loads() -> None:
    senders = table("pcre:sender_access.pcre")
    assert isinstance(senders, RegexTable)
    assert [line for line, _pattern in senders.rules()] == list(range(1, 11))


@pytest.mark.parametrize(("line", "rejected", "passes"), SENDER_PCRE_CASES)
def test_sender_access_pcre_each_rule(line: int, rejected: str, passes: str) -> None:
    senders = table("pcre:sender_access.pcre")
    hit = check_mail_access(senders, rejected)
    assert hit is not None and hit.line == line
    assert reply_text(hit, rejected, ReplyClass.SENDER) == (
        f"554 5.7.1 <{rejected}>: Sender address rejected: {USER_UNKNOWN}")
    assert check_mail_access(senders, passes) is None


# --- seed 000: invalid_recipients (check_recipient_access hash:, keys only) -----------

INVALID_RECIPIENTS = ["adobe@example.com", "alx@example.com", "ebrats2015@example.com",
                      "ebrats2018@example.com", "ama-rolf@example.com",
                      "daora-rolf@example.com"]


def test_invalid_recipients_as_is_is_refused_with_the_line() -> None:
    # Postfix's postmap skips every line ("expected format: key whitespace value"): the
    # file would reject nobody. Mailkeep says so instead of loading a table that does
    # nothing.
    with pytest.raises(TableError) as caught:
        table("hash:invalid_recipients")
    assert caught.value.line == 1
    assert str(caught.value) == (
        f"{FIXTURES / 'invalid_recipients'}:1: key 'adobe@example.com' has no value; "
        "Postfix would ignore this line (expected format: key whitespace value)")


@pytest.mark.parametrize("recipient", INVALID_RECIPIENTS)
def test_invalid_recipients_with_bare_key_action_rejects_each(recipient: str) -> None:
    recipients = table("hash:invalid_recipients", bare_key_value="REJECT")
    hit = check_mail_access(recipients, recipient)
    assert reply_text(hit, recipient, ReplyClass.RECIPIENT) == (
        f"554 5.7.1 <{recipient}>: Recipient address rejected: Access denied")


def test_invalid_recipients_duplicate_is_reported_and_others_pass() -> None:
    recipients = table("hash:invalid_recipients", bare_key_value="REJECT")
    assert isinstance(recipients, LiteralTable)
    assert [str(w) for w in recipients.warnings] == [
        f"{FIXTURES / 'invalid_recipients'}:2: duplicate entry 'adobe@example.com': the one "
        "on line 1 is used"]
    assert check_mail_access(recipients, "rolf@example.com") is None
    assert check_mail_access(recipients, "Adobe@Example.COM") is not None


# --- seed 000: header_checks.pcre ---------------------------------------------------------


@pytest.fixture(scope="module")
def seed_header_checks() -> ContentChecker:
    headers = load_table("pcre:header_checks.pcre", base_dir=FIXTURES, purpose="header")
    assert isinstance(headers, RegexTable)
    assert [line for line, _ in headers.rules()] == [2, 3, 6, 7, 8, 9, 12, 13, 14, 15, 18]
    return ContentChecker(header_checks=headers)


BASE = ("From: Alice <alice@example.org>", "To: rolf@example.com", "Subject: hello",
        "Date: Tue, 16 Oct 2018 18:49:58 +0200")


def test_header_checks_clean_message_passes_unchanged(seed_header_checks: ContentChecker) -> None:
    verdict = seed_header_checks.check_message(message(*BASE))
    assert verdict.decision is Decision.ACCEPT
    assert verdict.hits == () and verdict.message is None


@pytest.mark.parametrize("header", ["Return-Receipt-To: alice@example.org",
                                    "Disposition-Notification-To: <alice@example.org>",
                                    "return-receipt-to: alice@example.org"])
def test_header_checks_ignore_notification_requests(seed_header_checks: ContentChecker,
                                                    header: str) -> None:
    original = message(*BASE, header, "X-Other: kept")
    verdict = seed_header_checks.check_message(original)
    assert verdict.decision is Decision.ACCEPT
    assert [hit.hit.action.kind for hit in verdict.hits] == [ActionKind.IGNORE]
    assert verdict.message == message(*BASE, "X-Other: kept")


@pytest.mark.parametrize(("date", "line", "text"), [
    ("Date: Mon, 7 Apr 2025 09:00:00 +0000", 6, "Your email got a date in the future."),
    ("Date: Fri, 1 Mar 2019 09:00:00 +0000", 7, "Your email got a date in the future."),
    ("Date: Thu, 3 Mar 2016 09:00:00 +0000", 8, "Your email got a date in the past."),
    ("Date: Wed, 1 Jan 1997 00:00:00 +0000", 9, "Your email got a date in the past."),
])
def test_header_checks_dates(seed_header_checks: ContentChecker, date: str, line: int,
                             text: str) -> None:
    verdict = seed_header_checks.check_message(message(*BASE[:3], date))
    assert verdict.decision is Decision.REJECT
    assert verdict.hits[-1].hit.line == line
    assert str(verdict.reply) == f"550 5.7.1 {text}"


@pytest.mark.parametrize(("cc", "line"), [
    ("Cc: Spam Trap <xyz@example.com>", 12),
    ("Cc: friend@example.org, adobe@example.com", 13),
    ("Cc: ama-rolf@example.com", 14),
    ("CC: \"Daora\" <daora-rolf@example.com>", 15),
])
def test_header_checks_spam_traps(seed_header_checks: ContentChecker, cc: str,
                                  line: int) -> None:
    verdict = seed_header_checks.check_message(message(*BASE, cc))
    assert verdict.decision is Decision.REJECT
    assert verdict.hits[-1].hit.line == line
    assert str(verdict.reply) == "550 5.7.1 User unknown in local recipient table."


def test_header_checks_spam_traps_only_in_cc(seed_header_checks: ContentChecker) -> None:
    verdict = seed_header_checks.check_message(message(*BASE, "Reply-To: xyz@example.com",
                                                       "Cc: bob@example.org"))
    assert verdict.decision is Decision.ACCEPT


def _with_attachment(content_type: str, disposition: str | None = None) -> bytes:
    part = [content_type] + ([disposition] if disposition else [])
    return message(*BASE, "MIME-Version: 1.0",
                   'Content-Type: multipart/mixed; boundary="sep"',
                   body="--sep\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
                        "--sep\r\n" + "\r\n".join(part) + "\r\n\r\nAAAA\r\n--sep--\r\n")


@pytest.mark.parametrize(("headers", "name", "extension"), [
    (('Content-Type: application/octet-stream; name="invoice.exe"',), "invoice.exe", "exe"),
    (("Content-Type: application/octet-stream",
      'Content-Disposition: attachment; filename="Report.PDF.scr"'), "Report.PDF.scr", "scr"),
    # A folded MIME header: the logical header spans two lines.
    (("Content-Type: application/x-msdownload;\r\n\tname=setup.vbs",), "setup.vbs", "vbs"),
    # RFC 2047 encoded name, the dot written as =2E.
    (('Content-Type: application/octet-stream; name="=?utf-8?Q?tool=2Ejs?="',),
     "=?utf-8?Q?tool=2Ejs", "js"),
    # A Windows CLSID "extension", the reason for [[:xdigit:]] in the seed's expression.
    (('Content-Type: application/octet-stream; '
      'name="doc.{3F2504E0-4F89-11D3-9A0C-0305E82C3301}"',),
     "doc.{3F2504E0-4F89-11D3-9A0C-0305E82C3301}", "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}"),
])
def test_header_checks_attachment_extensions(seed_header_checks: ContentChecker,
                                             headers: tuple[str, ...], name: str,
                                             extension: str) -> None:
    verdict = seed_header_checks.check_message(_with_attachment(*headers))
    assert verdict.decision is Decision.REJECT
    hit = verdict.hits[-1]
    assert hit.hit.line == 18 and hit.header_class == "mime"
    assert str(verdict.reply) == (
        f'550 5.7.1 Attachment name "{name}" may not end with ".{extension}"')


@pytest.mark.parametrize("headers", [
    ('Content-Type: application/pdf; name="minutes.pdf"',),
    ("Content-Type: text/plain", 'Content-Disposition: attachment; filename="exe.txt"'),
    ('Content-Type: application/zip; name="archive.zip"',),
])
def test_header_checks_harmless_attachments_pass(seed_header_checks: ContentChecker,
                                                 headers: tuple[str, ...]) -> None:
    assert seed_header_checks.check_message(_with_attachment(*headers)).decision is (
        Decision.ACCEPT)


# --- seed 002: the "Plz stop sending SPAM" header_checks lists ----------------------------

_RULE = re.compile(r'^(/.*/)(i?) REJECT ("Plz stop sending SPAM id=\s?(\d+)\s?")$')


def _spam_rules(name: str) -> list[tuple[int, str, bool, str, int]]:
    rules = []
    for number, line in enumerate((FIXTURES / name).read_text().splitlines(), 1):
        match = _RULE.match(line)
        assert match is not None, line
        rules.append((number, match.group(1)[1:-1], match.group(2) == "i", match.group(3),
                      int(match.group(4))))
    return rules


def _sample(pattern: str) -> str:
    """A header line the pattern was written to catch."""
    text = pattern.replace(".*", " ").replace("\\", "")
    return text if text.startswith("To:") else f"Subject: news from {text}"


@pytest.mark.parametrize("name", ["plz_stop_spam_2015", "plz_stop_spam_2014"])
@pytest.mark.parametrize("dialect", ["pcre", "regexp"])
def test_plz_stop_spam_each_rule(name: str, dialect: str) -> None:
    headers = load_table(f"{dialect}:{name}", base_dir=FIXTURES, purpose="header")
    checker = ContentChecker(header_checks=headers)  # type: ignore[arg-type]
    rules = _spam_rules(name)
    assert len(rules) == (63 if name.endswith("2015") else 33)
    for line, pattern, case_sensitive, text, rule_id in rules:
        assert rule_id == line
        verdict = checker.check_message(message("From: a@example.org", _sample(pattern)))
        assert verdict.decision is Decision.REJECT, pattern
        assert verdict.hits[-1].hit.line == line, pattern
        # The quotes are part of the text: Postfix does not interpret them.
        assert str(verdict.reply) == f"550 5.7.1 {text}"
        # Postfix's "i" flag toggles the default case-insensitivity off.
        lowered = checker.check_message(message("From: a@example.org",
                                                _sample(pattern).lower()))
        assert (lowered.decision is Decision.ACCEPT) == (
            case_sensitive and _sample(pattern) != _sample(pattern).lower()), pattern


def test_plz_stop_spam_matches_anywhere_in_any_header() -> None:
    headers = load_table("pcre:plz_stop_spam_2015", base_dir=FIXTURES, purpose="header")
    checker = ContentChecker(header_checks=headers)  # type: ignore[arg-type]
    verdict = checker.check_message(message(
        "Received: from out.mailchimp.com (out.mailchimp.com [198.51.100.7])\r\n"
        "\tby mx.example.org", "From: a@example.org"))
    assert str(verdict.reply) == '550 5.7.1 "Plz stop sending SPAM id= 46 "'
    assert checker.check_message(message("From: a@example.org",
                                         "Subject: mailchimp-free")).decision is (
        Decision.ACCEPT)


# --- seeds 001 and 004: submission header cleanup (regexp:) ----------------------------


def test_submission_header_cleanup_removes_client_details() -> None:
    cleanup = load_table("regexp:submission_header_cleanup", base_dir=FIXTURES,
                         purpose="header")
    checker = ContentChecker(header_checks=cleanup)  # type: ignore[arg-type]
    original = message(
        "Received: from [192.168.1.20] (dsl.example.net [198.51.100.23])\r\n"
        "\tby mail.example.com with ESMTPSA id abc",
        "X-Originating-IP: [198.51.100.23]", "From: me@example.com", "To: you@example.org",
        "User-Agent: Mozilla Thunderbird", "X-Mailer: Apple Mail (2.3654)",
        "Subject: holiday pictures")
    verdict = checker.check_message(original)
    assert verdict.decision is Decision.ACCEPT
    assert [hit.hit.line for hit in verdict.hits] == [1, 2, 4, 3]
    assert verdict.message == message("From: me@example.com", "To: you@example.org",
                                      "Subject: holiday pictures")


def test_submission_header_checks_only_drop_the_authenticated_hop() -> None:
    cleanup = load_table("regexp:submission_header_checks", base_dir=FIXTURES,
                         purpose="header")
    checker = ContentChecker(header_checks=cleanup)  # type: ignore[arg-type]
    original = message(
        "Received: from relay.example.org by mx.example.com with ESMTPS id 1",
        "Received: from [10.0.0.5] by mail.example.com with ESMTPSA id 2",
        "From: me@example.com", "X-Mailer: mutt")
    verdict = checker.check_message(original)
    assert verdict.message == message(
        "Received: from relay.example.org by mx.example.com with ESMTPS id 1",
        "From: me@example.com")
