"""The pure parts of `mailkeep check`: verdicts on certificates, and the report.

The checks that talk to DNS, TLS listeners and SMTP are tested against real peers in
tests/integration/test_check.py; here the judgement of a certificate at a given moment
and the report formats are tested with plain calls.
"""

from __future__ import annotations

import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailkeep.checker import Finding, Status, counts, exit_status
from mailkeep.checker.findings import worst
from mailkeep.checker.report import json_report, text_report
from mailkeep.checker.tls import ServedCertificate, judge_certificate

NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)


def make_certificate(names: list[str], not_before: datetime.datetime,
                     not_after: datetime.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def judge(names: list[str], before_days: float, after_days: float,
          verify_error: str | None = None, hostname: str = "mail.example.com") -> Finding:
    der = make_certificate(names, NOW + datetime.timedelta(days=before_days),
                           NOW + datetime.timedelta(days=after_days))
    return judge_certificate(ServedCertificate(der, (der,), verify_error), hostname, NOW,
                             "127.0.0.1:993 (imaps)")


def test_valid_certificate() -> None:
    finding = judge(["mail.example.com"], -10, 80)
    assert finding.status is Status.OK
    assert finding.subject == "TLS certificate (ecdsa secp256r1)"
    assert finding.message.startswith("127.0.0.1:993 (imaps): trusted, valid for "
                                      "mail.example.com until 2030-08-20 12:00 UTC (80 days)")
    assert finding.fix == ""


@pytest.mark.parametrize("names, before, after, error, status, text", [
    (["mail.example.com"], -90, -1, None, Status.FAIL, "expired on 2030-05-31 12:00 UTC"),
    # An expired certificate is reported as expired even when the client also said so.
    (["mail.example.com"], -90, -1, "certificate has expired", Status.FAIL, "expired on"),
    (["mail.example.com"], 2, 90, None, Status.FAIL, "not valid before 2030-06-03 12:00"),
    (["mail.example.com"], -80, 13.5, None, Status.WARN, "expires in 13 days"),
    (["mail.example.com"], -80, 14.5, None, Status.OK, "(14 days)"),
    (["other.example.com"], -1, 90, None, Status.FAIL,
     "not valid for mail.example.com (it names other.example.com)"),
    (["*.example.com"], -1, 90, None, Status.OK, "trusted"),  # RFC 9525 §6.3 wildcard
    (["*.com"], -1, 90, None, Status.FAIL, "not valid for mail.example.com"),
    (["mail.example.com"], -1, 90, "self-signed certificate", Status.FAIL,
     "not trusted by clients: self-signed certificate"),
])
def test_certificate_verdicts(names: list[str], before: float, after: float,
                              error: str | None, status: Status, text: str) -> None:
    finding = judge(names, before, after, error)
    assert finding.status is status, finding
    assert text in finding.message
    if status is not Status.OK:
        assert finding.fix


def test_unreadable_certificate() -> None:
    finding = judge_certificate(ServedCertificate(b"\x30\x03junk", (), None),
                                "mail.example.com", NOW, "x")
    assert finding.status is Status.FAIL and "unreadable certificate" in finding.message


FINDINGS = [
    Finding(Status.OK, "example.com MX", "mail goes to mail.example.com", "", "dns"),
    Finding(Status.WARN, "example.com CAA", "missing", "add:\nexample.com. 3600 IN CAA 0 "
            'issue "letsencrypt.org"', "dns"),
    Finding(Status.FAIL, "example.com TXT", "no SPF", "add:\nexample.com. 3600 IN TXT "
            '"v=spf1 mx -all"', "dns"),
]


def test_counts_worst_and_exit_status() -> None:
    assert counts(FINDINGS) == {"OK": 1, "WARN": 1, "FAIL": 1}
    assert worst(f.status for f in FINDINGS) is Status.FAIL
    assert worst([]) is Status.OK
    assert exit_status(FINDINGS) == 1
    assert exit_status(FINDINGS[:2]) == 0  # warnings do not fail the check
    assert exit_status([]) == 0


def test_text_report() -> None:
    text = text_report(FINDINGS, title="mailkeep check of example.com")
    assert text == (
        "mailkeep check of example.com\n"
        "\n"
        "OK    example.com MX: mail goes to mail.example.com\n"
        "WARN  example.com CAA: missing\n"
        "      fix: add:\n"
        '           example.com. 3600 IN CAA 0 issue "letsencrypt.org"\n'
        "FAIL  example.com TXT: no SPF\n"
        "      fix: add:\n"
        '           example.com. 3600 IN TXT "v=spf1 mx -all"\n'
        "\n"
        "1 OK, 1 WARN, 1 FAIL\n")
    assert "\033[" not in text
    coloured = text_report(FINDINGS, colour=True)
    assert "\033[31mFAIL\033[0m  example.com TXT" in coloured
    assert "\033[32mOK  \033[0m  example.com MX" in coloured


def test_json_report() -> None:
    document = json.loads(json_report(FINDINGS, hostname="mail.example.com",
                                      domains=["example.com"]))
    assert document["hostname"] == "mail.example.com"
    assert document["domains"] == ["example.com"]
    assert document["summary"] == {"OK": 1, "WARN": 1, "FAIL": 1}
    assert document["exit_status"] == 1
    assert document["findings"][2] == {
        "status": "FAIL", "check": "dns", "subject": "example.com TXT", "message": "no SPF",
        "fix": 'add:\nexample.com. 3600 IN TXT "v=spf1 mx -all"'}
