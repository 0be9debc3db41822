"""Property tests: the table parsers never crash (a TableError naming a real line, or a
table), the pattern translator only ever refuses with a PatternError, and a pattern that
was accepted cannot be made to run long by a hostile subject."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.policy.actions import ActionError, parse_access_action, parse_content_action
from mailkeep.policy.checks import ContentChecker
from mailkeep.policy.tables import (
    CONTEXTS,
    PatternError,
    TableError,
    analyse_pattern,
    check_client_access,
    check_mail_access,
    compile_translation,
    parse_cidr_table,
    parse_literal_table,
    parse_regex_table,
    translate_pattern,
)

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TIMING = settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

REGEX_CHARS = "ab1.*+?{}()[]^$|\\/!:-=#<>'&~, \tixmsAEUXP0R"
FRAGMENTS = [
    "/a/ OK", "!/b/ REJECT x", "if /c/", "endif", "/(a)(b)/ REJECT $1 $2", "/x/i DUNNO",
    "/[[:digit:]]+/ WARN d", "if !/^d/", "/\\Qa.b\\E/ HOLD", "192.0.2.0/24 REJECT",
    "if 10.0.0.0/8", "!2001:db8::/32 OK", "key REJECT text", "key", "  continued",
    "# comment", "", "/(a+)+/ REJECT", "/a/ 554 text", "/b/ IGNORE", "/c/ PREPEND X-A: b",
    "/^Subject:/ REPLACE Subject: x", "/a/ FILTER smtp:x", "/(?i)a/ OK", "/a/ $1",
]

line_strategy = st.one_of(st.sampled_from(FRAGMENTS), st.text(REGEX_CHARS, max_size=30))
table_text = st.lists(line_strategy, max_size=12).map("\n".join)


def assert_precise(error: TableError, text: str) -> None:
    lines = text.split("\n")
    assert 1 <= error.line <= len(lines), (error.line, text)
    assert str(error).startswith(f"t:{error.line}: ") and error.message


@PROPERTY
@given(table_text)
def test_literal_parser_never_crashes(text: str) -> None:
    try:
        table = parse_literal_table(text, "t")
    except TableError as error:
        assert_precise(error, text)
        return
    for key in ("key", "a", "192.0.2.1"):
        check_mail_access(table, f"user@{key}")
        check_client_access(table, address="192.0.2.1", hostname=key)


@PROPERTY
@given(table_text)
def test_cidr_parser_never_crashes(text: str) -> None:
    try:
        table = parse_cidr_table(text, "t")
    except TableError as error:
        assert_precise(error, text)
        return
    for address in ("192.0.2.1", "10.1.1.1", "2001:db8::1", "x"):
        table.lookup(address)


@PROPERTY
@given(table_text, st.sampled_from(["pcre", "regexp"]),
       st.sampled_from(["access", "header", "body"]))
def test_regex_parser_never_crashes(text: str, dialect: str, purpose: str) -> None:
    try:
        table = parse_regex_table(text, "t", dialect=dialect, purpose=purpose)  # type: ignore[arg-type]
    except TableError as error:
        assert_precise(error, text)
        return
    for subject in ("a", "b", "aab", "Subject: c", "192.0.2.1", "d" * 50):
        table.lookup(subject)


@PROPERTY
@given(st.text(REGEX_CHARS, max_size=40), st.text("imsxAEUXq", max_size=3),
       st.sampled_from(["pcre", "regexp"]))
def test_translator_only_refuses_with_pattern_error(pattern: str, flags: str,
                                                    dialect: str) -> None:
    try:
        translation = translate_pattern(pattern, flags, dialect)  # type: ignore[arg-type]
        compiled = compile_translation(translation)
        analyse_pattern(translation, CONTEXTS["header"])
    except PatternError as error:
        assert str(error)
        return
    compiled.search("ab1" * 5)


@PROPERTY
@given(st.text(REGEX_CHARS + "OKREJCTDUNWARHOLDISC5 ", max_size=40))
def test_action_parsers_only_raise_action_error(value: str) -> None:
    for parse in (parse_access_action,
                  lambda v: parse_content_action(v, where="header"),
                  lambda v: parse_content_action(v, where="body")):
        try:
            parse(value)
        except ActionError:
            pass


# --- bounded matching time ------------------------------------------------------------

ATOMS = ["a", "b", ".", "\\s", "[^;]", "[ab]", "x", "\\w", "(?:ab|cd)", "(a|b)"]
QUANTIFIERS = ["", "", "*", "+", "?", "{2,}", "*?", "{0,40}"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = [draw(st.sampled_from(ATOMS)) + draw(st.sampled_from(QUANTIFIERS))
             for _ in range(draw(st.integers(1, 6)))]
    if draw(st.booleans()):
        inner = "".join(parts[: draw(st.integers(1, len(parts)))])
        parts = [f"(?:{inner}){draw(st.sampled_from(QUANTIFIERS))}", *parts]
    prefix = draw(st.sampled_from(["", "^", "^Subject: "]))
    return prefix + "".join(parts) + draw(st.sampled_from(["", "$", "z", "y$"]))


@TIMING
@given(patterns(), st.sampled_from(["a", "ab", "a b", "ab;", "\t", "abcd"]),
       st.sampled_from(["", "!", "z", "\n"]))
def test_accepted_patterns_run_in_bounded_time(pattern: str, unit: str, tail: str) -> None:
    try:
        table = parse_regex_table(f"/{pattern}/ REJECT\n", "t", purpose="header")
    except TableError as error:
        assert "exponential" in error.message or "polynomial" in error.message or (
            "invalid pattern" in error.message), error.message
        return
    # A hostile subject: the pattern's own material repeated, spoiled at the end, as long
    # as the longest window any pattern may see on a header (kept modest to spare CPU
    # for patterns of degree <= 1, whose cost is linear anyway).
    window = min(8192, max(table.max_window, 1))
    subject = ("Subject: " + unit * (window // len(unit)))[:window - len(tail)] + tail
    started = time.perf_counter()
    table.lookup(subject)
    assert time.perf_counter() - started < 2.0, pattern


@TIMING
@given(st.lists(st.sampled_from([
    "Subject: hi", "To: a@b", " folded", "Content-Type: multipart/mixed; boundary=x",
    "--x", "Content-Type: text/plain", "", "body text", "--x--", "=?utf-8?q?x?=", "\x00",
]), max_size=30))
def test_content_checker_never_raises(lines: list[str]) -> None:
    checker = ContentChecker(
        header_checks=parse_regex_table("/^Subject: (.*)/ REPLACE X-S: $1\n/^To:/ IGNORE\n",
                                        "h", purpose="header"),
        body_checks=parse_regex_table("/^body/ PREPEND > \n/^--x$/ WARN b\n", "b",
                                      purpose="body"))
    message = "\r\n".join(lines).encode("utf-8", "surrogateescape")
    verdict = checker.check_message(message)
    assert verdict.decision == "accept" and verdict.reply is None
    edits = [hit for hit in verdict.hits
             if hit.hit.action.kind.value in ("REPLACE", "IGNORE", "PREPEND")]
    # A rewritten message exists exactly when an editing action fired, and it differs.
    assert (verdict.message is not None) == bool(edits)
    if verdict.message is not None:
        assert verdict.message != message
        assert verdict.message.count(b"X-S: ") >= sum(
            1 for hit in edits if hit.hit.action.kind.value == "REPLACE")


RULE_FRAGMENTS = [
    "/^Subject: (buy|sell) now/ REJECT a", "/massnews\\.gr/ REJECT b", "!/^From:/ WARN c",
    "if /^To:/", "if !/example/", "endif", "/ab+c/i DUNNO", "/^X-(\\w+): yes/ HOLD $1",
    "/Case/i WARN d", "/\\Qa.b\\E/ WARN e", "/(?i:SELL)/ INFO f", "/[[:digit:]]{3}/ STRIP",
]
SUBJECT_PARTS = ["Subject: ", "buy now", "sell", "SELL", "From: ", "To: ", "massnews.gr",
                 "massnewsXgr", "example", "abbbc", "ABC", "X-Spam: yes", "Case", "case",
                 "a.b", "axb", "123", "\u00e9", "\udcff"]


@PROPERTY
@given(st.lists(st.sampled_from(RULE_FRAGMENTS), max_size=10),
       st.lists(st.lists(st.sampled_from(SUBJECT_PARTS), min_size=1, max_size=4).map("".join),
                min_size=1, max_size=6))
def test_prefilter_never_changes_an_answer(rules: list[str], subjects: list[str]) -> None:
    depth = 0
    balanced = []
    for rule in rules:  # keep if/endif balanced; the parser tests cover the rest
        if rule == "endif":
            if depth == 0:
                continue
            depth -= 1
        elif rule.startswith("if "):
            depth += 1
        balanced.append(rule)
    balanced.extend(["endif"] * depth)
    table = parse_regex_table("\n".join(balanced) + "\n", "t", purpose="header")
    haystack = "\n".join(subjects).encode("utf-8", "surrogateescape").lower()
    narrowed = table.prefiltered(haystack)
    for subject in subjects:
        assert narrowed.lookup(subject) == table.lookup(subject), (balanced, subject)
