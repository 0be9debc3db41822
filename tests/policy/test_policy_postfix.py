"""Differential tests: the same tables and inputs through Postfix's own postmap(1) and
through mailkeep.policy, with the same answers.

postmap -q answers single-key lookups for texthash:, cidr: and regexp: tables, and
postmap -hmq / -bmq run a regexp: table as header_checks / body_checks over a message.
(This machine's Postfix has no pcre: support; PCRE-specific syntax is covered by the unit
tests.) The tables use only what both accept: where mailkeep deliberately refuses what
Postfix merely warns about, the unit tests cover it. Postfix missing is a failure with
instructions, never a skip.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path

import pytest

from mailkeep.policy.checks import ContentChecker
from mailkeep.policy.tables import (
    CidrTable,
    LiteralTable,
    RegexTable,
    TableError,
    parse_cidr_table,
    parse_literal_table,
    parse_regex_table,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

POSTMAP = "/usr/sbin/postmap"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.access(POSTMAP, os.X_OK):
        pytest.fail(f"{POSTMAP} is missing: run `make test`, which installs postfix, or "
                    "`apt-get install postfix`", pytrace=False)
    directory = tmp_path_factory.mktemp("postfix-config")
    (directory / "main.cf").write_text("compatibility_level = 3.6\n")
    return directory


def postmap(config_dir: Path, table: str, stdin: str, mode: str = "") -> list[tuple[str, str]]:
    """Run postmap -[mode]q - table; the (key or line, result) pairs it prints."""
    result = subprocess.run([POSTMAP, "-c", str(config_dir), f"-{mode}q", "-", table],
                            input=stdin.encode(), capture_output=True, timeout=60, check=False)
    assert result.returncode in (0, 1), result.stderr.decode()
    output = result.stdout.decode()
    if not mode:  # "key<TAB>result" lines; results may contain tabs, keys do not
        return [tuple(line.split("\t", 1)) for line in output.splitlines()]  # type: ignore[misc]
    # Header/body records: a folded header's text spans lines; the inputs here have no
    # tabs in header text and no tabs or newlines in results.
    return re.findall(r"(.*?)\t([^\t\n]*)\n", output, re.DOTALL)


def lookups(config_dir: Path, table: str, keys: list[str]) -> dict[str, str]:
    return dict(postmap(config_dir, table, "".join(key + "\n" for key in keys)))


def ours(table: LiteralTable | CidrTable | RegexTable, keys: list[str]) -> dict[str, str]:
    found = {}
    for key in keys:
        hit = table.get(key) if isinstance(table, LiteralTable) else table.lookup(key)
        if hit is not None:
            found[key] = hit.value
    return found


TEXTHASH = """\
# comment
Example.COM   REJECT  spaced   text
mixed@Example.org OK
dup  REJECT first
DUP  REJECT second
k1 REJECT value # not a comment
   # a comment line between a line and its continuation
\tcontinued  text
192.0.2 REJECT network
2001:db8: REJECT v6
user@ DISCARD
<> REJECT null sender
"""
TEXTHASH_KEYS = ["example.com", "EXAMPLE.com", "mixed@example.org", "MIXED@EXAMPLE.ORG",
                 "dup", "k1", "192.0.2", "2001:db8:", "user@", "<>", "absent", "continued",
                 "# comment"]


def test_texthash_lookups_match_postmap(config_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "access"
    path.write_text(TEXTHASH)
    expected = lookups(config_dir, f"texthash:{path}", TEXTHASH_KEYS)
    assert expected["example.com"] == "REJECT  spaced   text"  # the harness works
    assert ours(parse_literal_table(TEXTHASH, "t"), TEXTHASH_KEYS) == expected


CIDR = """\
192.0.2.0/24        REJECT net
192.0.2.1           OK after the network
[2001:db8::1]       OK v6 host
2001:db8::/32       REJECT v6 net
if 10.0.0.0/8
10.1.0.0/16         DUNNO
if 10.3.0.0/16
10.3.3.3            HOLD nested
endif
!10.2.0.0/16        REJECT ten but not ten-two
endif
if !198.51.100.0/24
0.0.0.0/0           WARN outside
endif
::/0                INFO any v6
"""
CIDR_KEYS = ["192.0.2.1", "192.0.2.200", "2001:db8::1", "2001:0db8:0:0::2", "10.1.2.3",
             "10.3.0.1", "10.3.3.3", "10.2.0.1", "203.0.113.5", "198.51.100.7", "fe80::1",
             "::ffff:192.0.2.1", "bogus", "0.0.0.0", "255.255.255.255"]


def test_cidr_lookups_match_postmap(config_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "clients.cidr"
    path.write_text(CIDR)
    expected = lookups(config_dir, f"cidr:{path}", CIDR_KEYS)
    assert expected["10.3.3.3"] == "HOLD nested"
    assert ours(parse_cidr_table(CIDR, "t"), CIDR_KEYS) == expected


REGEXP = """\
/^postmaster@/                 OK
if !/^owner-/
/^(.*)-outgoing@(.*)$/         550 Use ${1}@${2} instead
if /@example\\.org$/
/^list/                        REJECT list at $$example.org
endif
endif
/^[[:digit:]]+\\.[[:digit:]]+/  REJECT numeric $(0)
/\\<word\\>/                     WARN whole word
/^([a-z]+)[.]([a-z]+)@/        REJECT dotted $2, $1
/^Mixed/i                      REJECT case-sensitive
/^(ab|a)(c|bcd)(d*)$/          REJECT $1/$2/$3
!/@/                           REJECT no domain
"""
REGEXP_KEYS = ["postmaster@x.org", "jobs-outgoing@example.net",
               "owner-jobs-outgoing@example.net", "list-a@example.org",
               "owner-list-a@example.org", "12.34@x", "a word here@x", "swordfish@x",
               "john.smith@example.com", "Mixed@x", "mixed@x", "local", "abcd", "abcdd@",
               "x@y"]


def test_regexp_lookups_match_postmap(config_dir: Path, tmp_path: Path) -> None:
    text = REGEXP.replace("$(0)", "")  # $0 is refused by both; keep the table valid
    path = tmp_path / "checks.regexp"
    path.write_text(text)
    expected = lookups(config_dir, f"regexp:{path}", REGEXP_KEYS)
    assert expected["jobs-outgoing@example.net"] == "550 Use jobs@example.net instead"
    assert ours(parse_regex_table(text, "t", dialect="regexp"), REGEXP_KEYS) == expected


def _random_ere(rng: random.Random, depth: int = 0) -> str:
    """A small random POSIX ERE without nested quantifiers (which mailkeep refuses)."""
    atoms = ["a", "b", "c", ".", "[ab]", "[^a]", "[[:digit:]]", "x", "\\.", "1"]
    parts = []
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.15 and depth == 0:
            inner = "|".join(rng.choice(["a", "bc", "x1", "c."]) for _ in range(2))
            parts.append(f"({inner})")
        else:
            parts.append(rng.choice(atoms) + rng.choice(["", "", "", "*", "+", "?", "{1,2}"]))
    pattern = "".join(parts)
    if rng.random() < 0.3:
        pattern = "^" + pattern
    if rng.random() < 0.3:
        pattern += "$"
    return pattern


def test_random_posix_patterns_agree_with_postmap(config_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(20241015)
    subjects = sorted({"".join(rng.choice("abcx1.9") for _ in range(rng.randint(1, 9)))
                       for _ in range(60)})
    compared = matched = 0
    for index in range(30):
        pattern = _random_ere(rng)
        flags = rng.choice(["", "i"])
        text = f"/{pattern}/{flags} REJECT rule {index}\n"
        try:
            table = parse_regex_table(text, "t", dialect="regexp")
        except TableError as error:
            assert "exponential" in str(error) or "polynomial" in str(error), (pattern, error)
            continue
        path = tmp_path / f"r{index}"
        path.write_text(text)
        expected = lookups(config_dir, f"regexp:{path}", subjects)
        assert ours(table, subjects) == expected, pattern
        compared += 1
        matched += len(expected)
    assert compared >= 20 and matched >= 50


MESSAGE = """\
Received: from mail.example.org (mail.example.org [192.0.2.1])
    by mx.example.net with ESMTPS id 4Xyz
From: Alice <alice@example.org>
To: bob@example.net,
 carol@example.net
Subject: Quarterly report
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

preamble text
--b1
Content-Type: text/plain; charset=us-ascii

Hello Bob, see the attached report.
click here to claim your prize

--b1
Content-Type: application/octet-stream;
 name="report.exe"
Content-Disposition: attachment; filename="report.exe"

TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
--b1--
epilogue
"""

CONTENT_TABLE = """\
/^Received:.*by (mx\\.[a-z.]+)/                           WARN received by $1
/^To:.*carol/                                              WARN to carol
/^Content-(Disposition|Type).*name[[:space:]]*=[[:space:]]*"?([^;"]*)\\.(exe|scr)"?/ WARN attachment $2.$3
/^Subject:/                                                DUNNO
/^--b1/                                                    WARN boundary
/click here/                                               WARN phrase
/^[[:alnum:]+\\/]{60,}$/                                   WARN base64
/^preamble|^epilogue/                                      WARN outside
"""


def test_header_and_body_checks_match_postmap(config_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "content.regexp"
    path.write_text(CONTENT_TABLE)
    header_expected = postmap(config_dir, f"regexp:{path}", MESSAGE, "hm")
    body_expected = postmap(config_dir, f"regexp:{path}", MESSAGE, "bm")
    assert ("To: bob@example.net,\n carol@example.net", "WARN to carol") in header_expected

    checker = ContentChecker(
        header_checks=parse_regex_table(CONTENT_TABLE, "t", dialect="regexp",
                                        purpose="header"),
        body_checks=parse_regex_table(CONTENT_TABLE, "t", dialect="regexp", purpose="body"))
    verdict = checker.check_message(MESSAGE.encode())
    header_hits = [(hit.text, hit.hit.value) for hit in verdict.hits if hit.where == "header"]
    body_hits = [(hit.text, hit.hit.value) for hit in verdict.hits if hit.where == "body"]
    # postmap prints DUNNO results too; a DUNNO is "no match" for a checker.
    assert header_hits == [pair for pair in header_expected if pair[1] != "DUNNO"]
    assert body_hits == body_expected
