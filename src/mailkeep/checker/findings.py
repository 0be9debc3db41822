"""What ``mailkeep check`` reports: one :class:`Finding` per thing checked.

Every finding says how bad it is (OK, WARN, FAIL), what it is about, what was seen, and,
unless it is OK, the exact fix: the record to add or replace in zone-file syntax, the
setting to change, or the command to run. The checks never raise for anything the
network or DNS does; a lookup that fails or times out is a finding too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """How bad a finding is. FAIL: mail is lost, refused or unprotected now. WARN: works,
    but worse than it should (or could not be checked). OK: as expected."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


_SEVERITY = {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe of ``statuses`` (OK when there are none)."""
    return max(statuses, key=_SEVERITY.__getitem__, default=Status.OK)


@dataclass(frozen=True)
class Finding:
    """One verdict. ``subject`` names what was checked ("example.com MX", "TLS on
    127.0.0.1:993 (imaps)"); ``message`` what was found; ``fix`` what to do about it (""
    when OK); ``check`` the group it belongs to ("dns", "tls", "mta-sts", ...)."""

    status: Status
    subject: str
    message: str
    fix: str = ""
    check: str = ""

    def to_json(self) -> dict[str, str]:
        return {"status": str(self.status), "check": self.check, "subject": self.subject,
                "message": self.message, "fix": self.fix}


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """How many findings of each status: {"OK": n, "WARN": n, "FAIL": n}."""
    result = {str(status): 0 for status in Status}
    for finding in findings:
        result[str(finding.status)] += 1
    return result


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when nothing failed, 1 when something did (warnings do not count)."""
    return 1 if any(f.status is Status.FAIL for f in findings) else 0
