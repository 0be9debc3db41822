"""Cost of header_checks + body_checks on one message: a script, not a test.

Issue 5 asks that a 2 KB message checked against 100 header and 100 body expressions
costs well under a millisecond. This builds such tables (realistic shapes: anchored
``^Subject:`` rules, unanchored domain names as in seed 002's spam list, seed 000's
attachment-name rule, body phrases), compiles them once, and times
:meth:`ContentChecker.check_message` on a 2 KB multipart message that matches nothing
(the common case) and on one that is rejected, and, for comparison, every pattern on every
line without the literal prefilter that lets check_message skip most of them.

    .venv/bin/python benchmarks/policy_checks.py [--rounds N] [--messages N]

It prints the median and best time per message over ``--rounds`` rounds. The machine may
be shared: the best round is the steadier figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))

from mailkeep.policy.checks import (  # noqa: E402
    BodyChecker,
    ContentChecker,
    HeaderChecker,
    split_headers,
)
from mailkeep.policy.tables import parse_regex_table  # noqa: E402

ATTACHMENT_RULE = (
    r'/^Content-(Disposition|Type).*name\s*=\s*"?([^;]*(\.|=2E)(ade|adp|asp|bas|bat|chm|cmd'
    r"|com|cpl|crt|dll|exe|hlp|ht[at]|inf|ins|isp|jse?|lnk|md[betw]|ms[cipt]|nws|\{[[:xdigit:]]"
    r"{8}(?:-[[:xdigit:]]{4}){3}-[[:xdigit:]]{12}\}|ops|pcd|pif|prf|reg|sc[frt]|sh[bsm]|swf|"
    r'vb[esx]?|vxd|ws[cfh]))(\?=)?"?\s*(;|$)/x REJECT Attachment name "$2" may not end with ".$4"'
)


def header_table_text(count: int) -> str:
    lines = [ATTACHMENT_RULE, r"/^Return-Receipt-To:/ IGNORE",
             r"/^Date: .* 19[0-9][0-9]/ REJECT Your email got a date in the past."]
    index = 0
    while len(lines) < count:
        if index % 3 == 0:
            lines.append(rf"/^Subject:.*cheap pills {index}/ REJECT spam {index}")
        elif index % 3 == 1:
            lines.append(rf"/spamdomain{index}\.example/ REJECT \"Plz stop id={index}\"")
        else:
            lines.append(rf"/^(To|Cc):.*trap{index}@example\.com/ DISCARD trap {index}")
        index += 1
    return "\n".join(lines) + "\n"


def body_table_text(count: int) -> str:
    lines = [r"~^[[:alnum:]+/]{60,}$~ OK"]
    index = 0
    while len(lines) < count:
        if index % 2 == 0:
            lines.append(rf"/click here to claim prize {index}/ REJECT body spam {index}")
        else:
            lines.append(rf"/^<iframe src=(3D)?cid:{index}/ REJECT iframe {index}")
        index += 1
    return "\n".join(lines) + "\n"


def message(size: int, *, bad: bool = False) -> bytes:
    head = (
        "Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n"
        "\tby mx.example.net with ESMTPS id 4Xyz; Tue, 15 Oct 2024 10:00:00 +0000\r\n"
        "From: Alice Example <alice@example.org>\r\n"
        "To: Bob <bob@example.net>\r\n"
        "Cc: carol@example.net\r\n"
        "Subject: Minutes of the Tuesday meeting\r\n"
        "Date: Tue, 15 Oct 2024 10:00:00 +0000\r\n"
        "Message-ID: <20241015100000.12345@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
    )
    tail = (
        "--b1\r\n"
        f'Content-Type: application/pdf; name="minutes.{"exe" if bad else "pdf"}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29kZT4+\r\n"
        "--b1--\r\n"
    )
    sentence = "We agreed to move the release to next week and to review the open issues.\r\n"
    body = ""
    while len(head) + len(body) + len(tail) + len(sentence) <= size:
        body += sentence
    return (head + body + tail).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=2000, help="messages per round")
    parser.add_argument("--rules", type=int, default=100, help="rules per table")
    args = parser.parse_args()

    started = time.perf_counter()
    headers = parse_regex_table(header_table_text(args.rules), "bench-header", purpose="header")
    bodies = parse_regex_table(body_table_text(args.rules), "bench-body", purpose="body")
    checker = ContentChecker(header_checks=headers, body_checks=bodies)
    compiled = time.perf_counter() - started

    good, bad = message(2048), message(2048, bad=True)
    assert checker.check_message(good).decision == "accept"
    assert checker.check_message(bad).decision == "reject"
    lines = good.count(b"\n")
    print(f"tables: {len(headers)} header + {len(bodies)} body rules, compiled in "
          f"{compiled * 1000:.1f} ms; message {len(good)} bytes, {lines} lines")
    # Without the literal prefilter: every pattern on every header and body line, the
    # cost when a message happens to contain every rule's literal text.
    header_checker = HeaderChecker(headers)
    body_checker = BodyChecker(bodies)
    header_end = good.index(b"\r\n\r\n")
    header_lines = [good[s:e] for s, e in split_headers(good, 0, header_end + 2)]
    body_lines = good[header_end + 4:].split(b"\r\n")

    def every_rule_on_every_line(_sample: bytes) -> None:
        for header in header_lines:
            header_checker.check(header)
        for line in body_lines:
            body_checker.check(line)

    runs = (("clean message", checker.check_message, good),
            ("rejected attachment", checker.check_message, bad),
            ("no prefilter, every rule", every_rule_on_every_line, good))
    for label, function, sample in runs:
        per_message = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.messages):
                function(sample)
            per_message.append((time.perf_counter() - start) / args.messages)
        print(f"{label:26s} median {statistics.median(per_message) * 1e6:7.1f} us/message, "
              f"best {min(per_message) * 1e6:7.1f} us/message")


if __name__ == "__main__":
    main()
