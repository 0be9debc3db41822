"""Table results as typed actions (access(5), header_checks(5)) and the replies they give."""

from __future__ import annotations

import pytest

from mailkeep.policy.actions import (
    MAX_REPLY_TEXT,
    Action,
    ActionError,
    ActionKind,
    ReplyClass,
    access_reply,
    content_reply,
    parse_access_action,
    parse_content_action,
    split_status,
)


@pytest.mark.parametrize(("value", "expected"), [
    ("OK", Action(ActionKind.OK)),
    ("ok trailing text is ignored", Action(ActionKind.OK)),
    ("RELAY", Action(ActionKind.OK)),
    ("1700000000", Action(ActionKind.OK)),  # all-numerical: pop-before-smtp time stamps
    ("DUNNO", Action(ActionKind.DUNNO)),
    ("REJECT", Action(ActionKind.REJECT)),
    ("reject Go away", Action(ActionKind.REJECT, "Go away")),
    ("REJECT 5.7.9 Nope", Action(ActionKind.REJECT, "Nope", status="5.7.9")),
    ("REJECT 5.7.99x is text", Action(ActionKind.REJECT, "5.7.99x is text")),
    ("DEFER try later", Action(ActionKind.DEFER, "try later")),
    ("DEFER_IF_PERMIT 4.7.0 later", Action(ActionKind.DEFER_IF_PERMIT, "later", status="4.7.0")),
    ("DEFER_IF_REJECT", Action(ActionKind.DEFER_IF_REJECT)),
    ("554 User unknown in local recipient table",
     Action(ActionKind.REPLY, "User unknown in local recipient table", code=554)),
    ("450 4.2.0 greylisted", Action(ActionKind.REPLY, "greylisted", code=450, status="4.2.0")),
    ("554", Action(ActionKind.REPLY, code=554)),
    ("DISCARD quietly", Action(ActionKind.DISCARD, "quietly")),
    ("HOLD for review", Action(ActionKind.HOLD, "for review")),
    ("WARN odd client", Action(ActionKind.WARN, "odd client")),
    ("INFO note", Action(ActionKind.INFO, "note")),
    ("PREPEND X-Policy: checked", Action(ActionKind.PREPEND, "X-Policy: checked")),
    ("FILTER smtp:[127.0.0.1]:10025", Action(ActionKind.FILTER, "smtp:[127.0.0.1]:10025")),
    ("REDIRECT abuse@example.org", Action(ActionKind.REDIRECT, "abuse@example.org")),
    ("BCC archive@example.org", Action(ActionKind.BCC, "archive@example.org")),
    ("REJECT\tTabs\tinside", Action(ActionKind.REJECT, "Tabs\tinside")),
])
def test_parse_access_action(value: str, expected: Action) -> None:
    assert parse_access_action(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("", "empty result"),
    ("BOUNCE now", "unknown action 'BOUNCE'"),
    ("reject_unknown_sender_domain", "is a Postfix restriction name"),
    ("permit_mynetworks, reject", "is a Postfix restriction name"),
    ("FILTER nohost", "FILTER needs transport:destination"),
    ("REDIRECT nobody", "REDIRECT needs a user@domain address"),
    ("PREPEND not a header", "PREPEND needs 'headername: headervalue'"),
    ("PREPEND", "PREPEND needs text"),
    ("IGNORE", "unknown action 'IGNORE'"),
])
def test_parse_access_action_errors(value: str, message: str) -> None:
    with pytest.raises(ActionError, match=message):
        parse_access_action(value)


@pytest.mark.parametrize(("value", "where", "expected"), [
    ("OK", "header", Action(ActionKind.DUNNO)),  # Postfix has always treated OK as DUNNO
    ("DUNNO", "body", Action(ActionKind.DUNNO)),
    ("IGNORE with ignored text", "header", Action(ActionKind.IGNORE)),
    ("STRIP logged", "header", Action(ActionKind.STRIP, "logged")),
    ("PASS trusted", "header", Action(ActionKind.PASS, "trusted")),
    ("REJECT", "body", Action(ActionKind.REJECT)),
    ("REJECT 4.7.1 later", "header", Action(ActionKind.REJECT, "later", status="4.7.1")),
    ("REPLACE X-Spam: yes", "header", Action(ActionKind.REPLACE, "X-Spam: yes")),
    ("REPLACE any text for a body line", "body",
     Action(ActionKind.REPLACE, "any text for a body line")),
    ("PREPEND [disclaimer]", "body", Action(ActionKind.PREPEND, "[disclaimer]")),
    ("HOLD", "body", Action(ActionKind.HOLD)),
    ("discard", "header", Action(ActionKind.DISCARD)),
])
def test_parse_content_action(value: str, where: str, expected: Action) -> None:
    assert parse_content_action(value, where=where) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "where", "message"), [
    ("554 no", "header", "explicit reply codes like '554'"),
    ("DEFER later", "header", "unknown action 'DEFER'"),
    ("REPLACE just text", "header", "REPLACE needs 'headername: headervalue'"),
    ("REPLACE", "body", "REPLACE needs text"),
    ("PREPEND no header", "header", "PREPEND needs 'headername: headervalue'"),
])
def test_parse_content_action_errors(value: str, where: str, message: str) -> None:
    with pytest.raises(ActionError, match=message):
        parse_content_action(value, where=where)  # type: ignore[arg-type]


def test_split_status() -> None:
    assert split_status("5.1.1 No such user") == ("5.1.1", "No such user")
    assert split_status("  4.7.1\tlater") == ("4.7.1", "later")
    assert split_status("5.1.1") == ("5.1.1", "")
    assert split_status("3.1.1 not a class") == (None, "3.1.1 not a class")
    assert split_status("5.1.1000 too long") == (None, "5.1.1000 too long")


@pytest.mark.parametrize(("value", "reply_class", "expected"), [
    ("REJECT", ReplyClass.SENDER,
     "554 5.7.1 <x@example.org>: Sender address rejected: Access denied"),
    ("DEFER", ReplyClass.RECIPIENT,
     "450 4.7.1 <x@example.org>: Recipient address rejected: Access denied"),
    ("DEFER_IF_PERMIT", ReplyClass.CLIENT,
     "450 4.7.1 <x@example.org>: Client host rejected: Service unavailable"),
    ("554 User unknown in local recipient table", ReplyClass.SENDER,
     "554 5.7.1 <x@example.org>: Sender address rejected: User unknown in local recipient "
     "table"),
    ("554", ReplyClass.RECIPIENT,
     "554 5.7.1 <x@example.org>: Recipient address rejected: Access denied"),
    # smtpd_dsn_fix(): a recipient status used against a sender, and vice versa, and an
    # address status used against a HELO name.
    ("REJECT 5.1.1 No such user", ReplyClass.SENDER,
     "554 5.1.7 <x@example.org>: Sender address rejected: No such user"),
    ("REJECT 5.1.8 Bad sender domain", ReplyClass.RECIPIENT,
     "554 5.1.2 <x@example.org>: Recipient address rejected: Bad sender domain"),
    ("REJECT 5.1.1 No", ReplyClass.HELO,
     "554 5.0.0 <x@example.org>: Helo command rejected: No"),
    ("REJECT 5.7.26 DMARC", ReplyClass.HELO,
     "554 5.7.26 <x@example.org>: Helo command rejected: DMARC"),
    # The reply code decides the class of the enhanced code.
    ("450 5.2.2 Mailbox full", ReplyClass.RECIPIENT,
     "450 4.2.2 <x@example.org>: Recipient address rejected: Mailbox full"),
    ("521 go away", ReplyClass.CLIENT,
     "521 5.7.1 <x@example.org>: Client host rejected: go away"),
])
def test_access_reply(value: str, reply_class: ReplyClass, expected: str) -> None:
    reply = access_reply(parse_access_action(value), name="x@example.org",
                         reply_class=reply_class)
    assert str(reply) == expected


def test_access_reply_none_for_accepting_actions_and_disconnects() -> None:
    for value in ("OK", "DUNNO", "WARN x", "HOLD", "DISCARD", "PREPEND X-A: b"):
        assert access_reply(parse_access_action(value), name="n",
                            reply_class=ReplyClass.CLIENT) is None
    assert parse_access_action("421 bye").disconnects
    assert parse_access_action("521 bye").disconnects
    assert not parse_access_action("554 bye").disconnects
    assert not parse_access_action("REJECT").disconnects


def test_content_reply() -> None:
    assert str(content_reply(parse_content_action("REJECT", where="header"))) == (
        "550 5.7.1 message content rejected")
    assert str(content_reply(parse_content_action("REJECT 5.7.0 virus found",
                                                  where="body"))) == "550 5.7.0 virus found"
    temporary = content_reply(parse_content_action("REJECT 4.7.1 later", where="header"))
    assert str(temporary) == "451 4.7.1 later" and temporary is not None and temporary.temporary
    # A 2.x.x code cannot reject; Postfix turns it into a temporary failure.
    assert str(content_reply(parse_content_action("REJECT 2.0.0 hm", where="header"))) == (
        "451 4.0.0 hm")
    assert content_reply(parse_content_action("HOLD", where="header")) is None


def test_reply_text_is_one_bounded_line() -> None:
    long_text = "x" * 2000
    reply = content_reply(Action(ActionKind.REJECT, long_text))
    assert reply is not None and len(reply.text) == MAX_REPLY_TEXT
    reply = access_reply(Action(ActionKind.REJECT, "a\r\nb"), name="n",
                         reply_class=ReplyClass.CLIENT)
    assert reply is not None and "\n" not in reply.text and "\r" not in reply.text
