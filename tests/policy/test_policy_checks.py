"""header_checks/body_checks on whole messages: which table sees which line, first match
per line, what each action does to the verdict and to the message, and the size limits."""

from __future__ import annotations

import pytest

from mailkeep.policy.actions import ActionKind
from mailkeep.policy.checks import (
    BODY_CHECKS_SIZE_LIMIT,
    MAX_CHECKED_HEADERS,
    TIMEOUT_REPLY,
    BodyChecker,
    ContentChecker,
    Decision,
    HeaderChecker,
    HeaderClass,
    split_headers,
)
from mailkeep.policy.tables import LINE_LENGTH_LIMIT, parse_regex_table


def headers_table(text: str, name: str = "hc"):  # type: ignore[no-untyped-def]
    return parse_regex_table(text, name, purpose="header")


def body_table(text: str, name: str = "bc"):  # type: ignore[no-untyped-def]
    return parse_regex_table(text, name, purpose="body")


MULTIPART = (
    b"From: a@example.org\r\n"
    b"Subject: report\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"This is the preamble.\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"First part line.\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner@example.net\r\n"
    b"Subject: forwarded\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Inner body line.\r\n"
    b"--outer--\r\n"
    b"Epilogue.\r\n"
)


def test_every_header_and_body_line_is_seen_with_its_class() -> None:
    checker = ContentChecker(header_checks=headers_table("/^/ WARN seen\n"),
                             body_checks=body_table("/^/ WARN seen\n"))
    verdict = checker.check_message(MULTIPART)
    assert verdict.decision is Decision.ACCEPT and verdict.message is None
    seen = [(hit.where, hit.header_class, hit.text) for hit in verdict.hits]
    assert seen == [
        ("header", HeaderClass.PRIMARY, "From: a@example.org"),
        ("header", HeaderClass.PRIMARY, "Subject: report"),
        ("header", HeaderClass.MIME, "MIME-Version: 1.0"),
        ("header", HeaderClass.MIME, 'Content-Type: multipart/mixed; boundary="outer"'),
        ("header", HeaderClass.MIME, "Content-Type: text/plain"),
        ("header", HeaderClass.MIME, "Content-Type: message/rfc822"),
        ("header", HeaderClass.NESTED, "From: inner@example.net"),
        ("header", HeaderClass.NESTED, "Subject: forwarded"),
        ("header", HeaderClass.MIME, "Content-Type: text/plain"),
        ("body", None, "This is the preamble."),
        ("body", None, "--outer"),
        ("body", None, "First part line."),
        ("body", None, "--outer"),
        ("body", None, "Inner body line."),
        ("body", None, "--outer--"),
        ("body", None, "Epilogue."),
    ]


def test_separate_mime_and_nested_tables() -> None:
    checker = ContentChecker(
        header_checks=headers_table("/^Subject:/ WARN primary\n"),
        mime_header_checks=headers_table("/^Content-Type:/ WARN mime\n", "mime"),
        nested_header_checks=headers_table("/^Subject:/ WARN nested\n", "nested"))
    verdict = checker.check_message(MULTIPART)
    assert [(hit.hit.source, hit.text) for hit in verdict.hits] == [
        ("hc", "Subject: report"),
        ("mime", 'Content-Type: multipart/mixed; boundary="outer"'),
        ("mime", "Content-Type: text/plain"),
        ("mime", "Content-Type: message/rfc822"),
        ("nested", "Subject: forwarded"),
        ("mime", "Content-Type: text/plain"),
    ]


def test_folded_header_is_one_subject_with_newlines_and_is_replaced_whole() -> None:
    table = headers_table("/^To:.*\\n.*carol/ REPLACE To: undisclosed-recipients:;\n")
    checker = ContentChecker(header_checks=table)
    message = (b"From: a@example.org\r\nTo: bob@example.org,\r\n carol@example.org\r\n"
               b"Subject: s\r\n\r\nbody\r\n")
    verdict = checker.check_message(message)
    assert verdict.hits[0].text == "To: bob@example.org,\n carol@example.org"
    assert verdict.message == (b"From: a@example.org\r\nTo: undisclosed-recipients:;\r\n"
                               b"Subject: s\r\n\r\nbody\r\n")


def test_first_match_wins_per_line_and_every_line_is_checked() -> None:
    table = headers_table("/^Subject:.*buy/ WARN first\n/^Subject:/ WARN second\n"
                          "/buy/ WARN third\n")
    verdict = ContentChecker(header_checks=table).check_message(
        b"Subject: buy now\r\nX-Note: buy\r\nSubject: hello\r\n\r\n")
    assert [(hit.text, hit.hit.action.text) for hit in verdict.hits] == [
        ("Subject: buy now", "first"), ("X-Note: buy", "third"),
        ("Subject: hello", "second")]


def test_reject_stops_inspection_and_keeps_no_rewrite() -> None:
    table = headers_table("/^X-Drop:/ IGNORE\n/^Subject: spam/ REJECT 5.7.0 spam\n"
                          "/^X-After:/ WARN never\n")
    checker = ContentChecker(header_checks=table, body_checks=body_table("/x/ WARN body\n"))
    verdict = checker.check_message(b"X-Drop: 1\r\nSubject: spam\r\nX-After: 1\r\n\r\nx\r\n")
    assert verdict.decision is Decision.REJECT
    assert str(verdict.reply) == "550 5.7.0 spam"
    assert [hit.hit.action.kind for hit in verdict.hits] == [ActionKind.IGNORE,
                                                             ActionKind.REJECT]
    assert verdict.message is None


def test_temporary_reject_is_a_defer() -> None:
    verdict = ContentChecker(header_checks=headers_table("/^Subject:/ REJECT 4.7.1 later\n")
                             ).check_message(b"Subject: x\r\n\r\n")
    assert verdict.decision is Decision.DEFER and str(verdict.reply) == "451 4.7.1 later"


def test_discard_hold_pass() -> None:
    table = headers_table("/^X-Hold:/ HOLD review\n/^X-Discard:/ DISCARD\n"
                          "/^X-Pass:/ PASS trusted\n/^X-Reject:/ REJECT\n")
    checker = ContentChecker(header_checks=table)
    held = checker.check_message(b"X-Hold: 1\r\nX-Other: 2\r\n\r\n")
    assert held.decision is Decision.HOLD and held.reply is None
    discarded = checker.check_message(b"X-Hold: 1\r\nX-Discard: 1\r\nX-Reject: 1\r\n\r\n")
    assert discarded.decision is Decision.DISCARD
    assert [hit.hit.action.kind for hit in discarded.hits] == [ActionKind.HOLD,
                                                               ActionKind.DISCARD]
    passed = checker.check_message(b"X-Pass: 1\r\nX-Reject: 1\r\n\r\n")
    assert passed.decision is Decision.ACCEPT
    assert [hit.hit.action.kind for hit in passed.hits] == [ActionKind.PASS]


def test_header_edits_keep_line_ends_and_order() -> None:
    table = headers_table("/^X-Strip:/ STRIP removed\n/^Subject:/ PREPEND X-Was-Here: yes\n"
                          "/^X-Old:/ REPLACE X-New: value\n/^X-Info:/ INFO noted\n")
    checker = ContentChecker(header_checks=table)
    verdict = checker.check_message(b"X-Strip: a\nSubject: s\nX-Old: o\n  folded\nX-Info: i\n"
                                    b"\nbody\n")
    assert verdict.decision is Decision.ACCEPT
    assert verdict.message == (b"X-Was-Here: yes\nSubject: s\nX-New: value\nX-Info: i\n"
                               b"\nbody\n")
    assert [hit.hit.action.kind for hit in verdict.hits] == [
        ActionKind.STRIP, ActionKind.PREPEND, ActionKind.REPLACE, ActionKind.INFO]


def test_body_edits() -> None:
    table = body_table("/^secret/ IGNORE\n/^old (.*)/ REPLACE new $1\n/^sig/ PREPEND -- \n")
    verdict = ContentChecker(body_checks=table).check_message(
        b"Subject: s\r\n\r\nhello\r\nsecret line\r\nold text\r\nsig\r\n")
    assert verdict.message == b"Subject: s\r\n\r\nhello\r\nnew text\r\n--\r\nsig\r\n"


def test_empty_lines_never_match() -> None:
    verdict = ContentChecker(body_checks=body_table("/^$/ REJECT empty\n")).check_message(
        b"Subject: s\r\n\r\n\r\ntext\r\n\r\n")
    assert verdict.decision is Decision.ACCEPT and verdict.hits == ()


def test_long_body_lines_are_checked_in_chunks() -> None:
    table = body_table("/^y/ WARN chunk starts with y\n/^x{10}$/ WARN short tail\n")
    line = b"x" * LINE_LENGTH_LIMIT + b"y" * LINE_LENGTH_LIMIT + b"x" * 10
    verdict = ContentChecker(body_checks=table).check_message(b"Subject: s\r\n\r\n" + line
                                                              + b"\r\n")
    assert [len(hit.text) for hit in verdict.hits] == [LINE_LENGTH_LIMIT, 10]


def test_body_checks_size_limit_per_segment() -> None:
    filler = b"filler line of text\r\n" * (BODY_CHECKS_SIZE_LIMIT // 21 + 10)
    table = body_table("/^needle$/ REJECT found\n")
    checker = ContentChecker(body_checks=table)
    late = checker.check_message(b"Subject: s\r\n\r\n" + filler + b"needle\r\n")
    assert late.decision is Decision.ACCEPT and not late.truncated
    early = checker.check_message(b"Subject: s\r\n\r\nneedle\r\n" + filler)
    assert early.decision is Decision.REJECT
    # Each MIME part is a segment of its own.
    parts = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\n' + filler
             + b"--b\r\n\r\nneedle\r\n--b--\r\n")
    assert checker.check_message(parts).decision is Decision.REJECT


def test_header_count_limit() -> None:
    many = b"".join(b"X-N: %d\r\n" % n for n in range(MAX_CHECKED_HEADERS + 5))
    table = headers_table("/^X-Last:/ REJECT\n")
    verdict = ContentChecker(header_checks=table).check_message(many + b"X-Last: 1\r\n\r\n")
    assert verdict.decision is Decision.ACCEPT and verdict.truncated


def test_messages_without_body_or_blank_line() -> None:
    checker = ContentChecker(header_checks=headers_table("/^Subject: x/ REJECT\n"),
                             body_checks=body_table("/z/ REJECT\n"))
    assert checker.check_message(b"Subject: x").decision is Decision.REJECT
    assert checker.check_message(b"Subject: y\r\n").decision is Decision.ACCEPT
    assert checker.check_message(b"").decision is Decision.ACCEPT
    assert checker.check_message(b"\r\nz\r\n").decision is Decision.REJECT


def test_prefilter_keeps_first_match_semantics_with_if_blocks() -> None:
    table = headers_table(
        "if /^Subject:/\n"
        "/viagra/ REJECT pills\n"
        "!/hello/ WARN not hello\n"
        "endif\n"
        "if !/^From:/\n"
        "/^X-Spam: yes/ DISCARD\n"
        "endif\n"
        "/^From:.*(bad)/ REJECT $1 sender\n")
    checker = ContentChecker(header_checks=table)
    assert str(checker.check_message(b"Subject: VIAGRA\r\n\r\n").reply) == "550 5.7.1 pills"
    warned = checker.check_message(b"Subject: other\r\n\r\n")
    assert [hit.hit.line for hit in warned.hits] == [3]
    assert checker.check_message(b"Subject: hello\r\nX-Spam: YES\r\n\r\n").decision is (
        Decision.DISCARD)
    assert str(checker.check_message(b"From: bad@example.org\r\n\r\n").reply) == (
        "550 5.7.1 bad sender")
    assert checker.check_message(b"From: good@example.org\r\n\r\n").hits == ()


def test_checker_api_for_single_lines() -> None:
    headers = HeaderChecker(headers_table("/^Subject: (.*)/ REJECT about $1\n"))
    hit = headers.check(b"Subject: a\r\n b\r\n")
    assert hit is not None and hit.action.text == "about a  b"
    assert headers.check("") is None
    body = BodyChecker(body_table("/spam/ REJECT\n"))
    assert body.check(b"some spam here") is not None
    assert body.check("ham") is None
    with pytest.raises(ValueError, match="loaded for body checks, not header checks"):
        HeaderChecker(body_table("/x/ OK\n"))
    with pytest.raises(ValueError, match="loaded for header checks, not body checks"):
        BodyChecker(headers_table("/x/ OK\n"))


def test_split_headers() -> None:
    block = b" lead\r\nA: 1\r\n b\r\nC: 2\nD: 3\r\n\r\nbody"
    assert [block[s:e] for s, e in split_headers(block)] == [
        b" lead\r\n", b"A: 1\r\n b\r\n", b"C: 2\n", b"D: 3\r\n"]


def test_malformed_mime_never_raises() -> None:
    checker = ContentChecker(header_checks=headers_table("/^Content-Type:/ WARN ct\n"),
                             body_checks=body_table("/--/ WARN boundary\n"))
    for message in (
        b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\nx\r\n',
        b"Content-Type: multipart/mixed\r\n\r\n--x\r\nContent-Type: text/plain\r\n",
        b'Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/alternative; b="\r\n',
        b"\xff\xfe: \x00\r\n\r\n\xff--\r\n",
    ):
        verdict = checker.check_message(message)
        assert verdict.decision is Decision.ACCEPT


def test_time_budget_defers_instead_of_letting_content_through() -> None:
    ticks = iter(range(10_000))
    checker = ContentChecker(header_checks=headers_table("/^X-/ WARN x\n"),
                             body_checks=body_table("/^never/ REJECT\n"),
                             time_budget=3, clock=lambda: next(ticks))
    message = b"X-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nX-E: 5\r\n\r\nnever\r\n"
    verdict = checker.check_message(message)
    assert verdict.decision is Decision.DEFER and verdict.truncated
    assert verdict.reply == TIMEOUT_REPLY
    assert str(verdict.reply) == (
        "451 4.3.0 message content inspection took too long, try again later")
    assert [hit.text for hit in verdict.hits] == ["X-A: 1", "X-B: 2", "X-C: 3", "X-D: 4"]
    # A decision reached before the budget ran out stands.
    ticks = iter(range(10_000))
    early = ContentChecker(header_checks=headers_table("/^X-A/ REJECT early\n"),
                           time_budget=0.5, clock=lambda: next(ticks) * 10)
    assert str(early.check_message(message).reply) == "550 5.7.1 early"


def test_one_huge_body_line_is_inspected_only_up_to_the_limits() -> None:
    table = body_table("/^y/ REJECT tail\n/^x/ WARN x-chunk\n")
    line = b"x" * (BODY_CHECKS_SIZE_LIMIT + 10 * LINE_LENGTH_LIMIT) + b"y" * 100
    verdict = ContentChecker(body_checks=table).check_message(b"Subject: s\r\n\r\n" + line)
    assert verdict.decision is Decision.ACCEPT
    assert len(verdict.hits) == -(-BODY_CHECKS_SIZE_LIMIT // LINE_LENGTH_LIMIT)
