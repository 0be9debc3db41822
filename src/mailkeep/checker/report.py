"""The report of ``mailkeep check``: a table for people (coloured on a terminal only) or
JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence

from mailkeep.checker.findings import Finding, Status, counts, exit_status

_COLOURS = {Status.OK: "\033[32m", Status.WARN: "\033[33m", Status.FAIL: "\033[31m"}
_RESET = "\033[0m"
_INDENT = " " * 6


def text_report(findings: Sequence[Finding], *, colour: bool = False,
                title: str | None = None) -> str:
    """One line per finding ("STATUS  subject: message"), then its fix, indented; a
    summary line at the end."""
    lines = [title, ""] if title else []
    for finding in findings:
        status = f"{finding.status:<4}"
        if colour:
            status = f"{_COLOURS[finding.status]}{status}{_RESET}"
        lines.append(f"{status}  {finding.subject}: {finding.message}")
        if finding.fix and finding.status is not Status.OK:
            fix_lines = finding.fix.splitlines()
            lines.append(f"{_INDENT}fix: {fix_lines[0]}")
            lines += [f"{_INDENT}     {line}" for line in fix_lines[1:]]
    summary = counts(findings)
    lines += ["", f"{summary['OK']} OK, {summary['WARN']} WARN, {summary['FAIL']} FAIL"]
    return "\n".join(lines) + "\n"


def json_report(findings: Sequence[Finding], *, hostname: str, domains: Sequence[str]) -> str:
    """``{"hostname", "domains", "summary", "exit_status", "findings": [...]}``."""
    document = {
        "hostname": hostname,
        "domains": list(domains),
        "summary": counts(findings),
        "exit_status": exit_status(findings),
        "findings": [finding.to_json() for finding in findings],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
