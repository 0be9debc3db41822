"""DMARC aggregate report XML (RFC 7489 Appendix C): the shapes big receivers send, the
DMARCbis draft, hostile documents, and our own reports checked against the appendix."""

from __future__ import annotations

import ipaddress
import time
import xml.etree.ElementTree as ET

import pytest
from dmarc_samples import SEED_003, dmarcbis_report, google_report, microsoft_report
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.reports.dmarc_xml import (
    MAX_COUNT,
    MAX_DEPTH,
    DkimAuth,
    PolicyOverride,
    PolicyPublished,
    ReportError,
    ReportMetadata,
    ReportRecord,
    SpfAuth,
    build_aggregate_report,
    parse_aggregate_report,
)

# -- real-shaped reports --------------------------------------------------------------------


def test_seed_003_sample_reads_as_its_author_read_it() -> None:
    report = parse_aggregate_report(SEED_003)
    meta = report.metadata
    assert (meta.org_name, meta.email, meta.report_id) == (
        "google.com", "noreply-dmarc-support@google.com", "121341234")
    assert (meta.begin, meta.end) == (1466812800, 1466899199)
    assert meta.extra_contact_info == "https://support.google.com/a/answer/2466580"
    assert report.policy == PolicyPublished(domain="moff.tech", p="none", sp="none",
                                            adkim="r", aspf="r", pct=100)
    [record] = report.records
    # "for the sender 64.x.x.x DKIM failed while SPF passed ... 1 message was received"
    assert (record.source_ip, record.count, record.disposition) == ("64.x.x.x", 1, "none")
    assert (record.dkim, record.spf, record.dmarc_pass) == ("fail", "pass", True)
    assert record.header_from == "moff.tech"
    assert record.spf_results == (SpfAuth("moff.tech", "pass", "mfrom"),)
    assert record.dkim_results == ()
    # The masked address is kept as written, and said to be no address.
    assert report.warnings == ("record 1: source_ip '64.x.x.x' is not an IP address",)


def test_google_shape() -> None:
    report = parse_aggregate_report(google_report())
    assert report.version == ""
    assert report.policy.p == "quarantine" and report.policy.np == "quarantine"
    assert report.message_count == 15
    first, second = report.records
    assert first.dkim_results == (DkimAuth("example.org", "pass", "mk202601r"),
                                  DkimAuth("example.org", "pass", "mk202601e"))
    assert first.envelope_from == "" and first.spf_results[0].scope == "mfrom"
    assert (second.source_ip, second.disposition, second.dmarc_pass) == (
        "203.0.113.66", "quarantine", False)
    assert second.spf_results == (SpfAuth("spammer.example", "softfail", "mfrom"),)
    assert report.warnings == ()


def test_microsoft_shape() -> None:
    report = parse_aggregate_report(microsoft_report())
    assert report.version == "1.0"
    assert report.metadata.org_name == "Enterprise Outlook"
    assert report.policy.fo == "0" and report.policy.p == "reject"
    ipv6, forwarded = report.records
    assert ipv6.source_ip == "2001:db8:400::1f"
    assert (ipv6.envelope_to, ipv6.envelope_from) == ("outlook.com", "example.org")
    assert forwarded.reasons == (PolicyOverride("local_policy", "arc=pass"),)
    # The schema's own note: "TempError" is commonly written "unknown".
    assert forwarded.spf_results == (SpfAuth("lists.example.net", "temperror", "mfrom"),)


def test_dmarcbis_namespace_and_new_elements() -> None:
    report = parse_aggregate_report(dmarcbis_report())
    assert report.metadata.report_id == "bis-0001"
    assert report.policy == PolicyPublished(domain="example.org", p="reject",
                                            sp="quarantine", adkim="r", aspf="r", pct=None,
                                            np="reject", testing="n")
    [record] = report.records
    assert record.dkim_results == (DkimAuth("example.org", "pass", "s1", "good"),)
    assert record.count == 5 and record.dmarc_pass


def test_prefixed_namespace_of_the_appendix() -> None:
    data = SEED_003.replace(b"<feedback>", b'<d:feedback xmlns:d="http://dmarc.org/dmarc-xml/0.1" '
                            b'xmlns="http://dmarc.org/dmarc-xml/0.1">').replace(
        b"</feedback>", b"</d:feedback>")
    assert parse_aggregate_report(data).metadata.report_id == "121341234"


def test_variants_are_read_as_meant() -> None:
    data = (SEED_003.replace(b"<disposition>none", b"<disposition>Quarantine")
            .replace(b"<dkim>fail</dkim>", b"<dkim>FAIL</dkim>")
            .replace(b"<result>pass</result>", b"<result>hardfail</result>")
            .replace(b"<begin>1466812800</begin>", b"<begin>1466812800.0</begin>")
            .replace(b"<domain>moff.tech</domain>\n <adkim>", b"<domain>Moff.Tech.</domain>\n <adkim>"))
    report = parse_aggregate_report(b"\xef\xbb\xbf" + data)
    record = report.records[0]
    assert (record.disposition, record.dkim) == ("quarantine", "fail")
    assert record.spf_results[0].result == "fail"
    assert report.metadata.begin == 1466812800
    assert report.policy.domain == "moff.tech"


def test_records_that_cannot_be_read_are_left_out_with_a_warning() -> None:
    for count in ("-4", "\u00b2", str(MAX_COUNT + 1), ""):
        bad_count = SEED_003.replace(b"<count>1</count>", f"<count>{count}</count>".encode())
        report = parse_aggregate_report(bad_count)
        assert report.records == ()
        assert any(f"count {count!r}" in w for w in report.warnings)
    no_evaluation = SEED_003.replace(b"<policy_evaluated>", b"<ignored>").replace(
        b"</policy_evaluated>", b"</ignored>")
    record = parse_aggregate_report(no_evaluation).records[0]
    assert (record.disposition, record.dkim, record.spf) == ("none", "fail", "fail")


@pytest.mark.parametrize(("change", "message"), [
    ((b"<report_id>121341234</report_id>", b""), "no report_id"),
    ((b"<org_name>google.com</org_name>", b"<org_name> </org_name>"), "no org_name"),
    ((b"<begin>1466812800</begin>", b"<begin>yesterday</begin>"), "not a number"),
    ((b"<end>1466899199</end>", b"<end>1466812799</end>"), "ends"),
    ((b"<domain>moff.tech</domain>\n <adkim>", b"<domain>not a domain!</domain>\n <adkim>"),
     "not a domain name"),
    ((b"<count>1</count>", b"<count>1</cnt>"), "not well-formed"),
    ((b"</feedback>", b""), "not well-formed"),
])
def test_broken_reports_are_refused(change: tuple[bytes, bytes], message: str) -> None:
    with pytest.raises(ReportError, match=message):
        parse_aggregate_report(SEED_003.replace(*change))


def test_missing_sections_and_wrong_roots() -> None:
    with pytest.raises(ReportError, match="no policy_published"):
        parse_aggregate_report(b"<feedback><report_metadata><org_name>a</org_name><report_id>1"
                               b"</report_id><date_range><begin>1</begin><end>2</end>"
                               b"</date_range></report_metadata></feedback>")
    with pytest.raises(ReportError, match="not <feedback>"):
        parse_aggregate_report(b"<html><body>hi</body></html>")
    with pytest.raises(ReportError, match="not an XML document"):
        parse_aggregate_report(b"PK\x03\x04 this is a zip")
    with pytest.raises(ReportError):
        parse_aggregate_report(b"")


# -- hostile documents ------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<feedback><report_metadata><org_name>&lol9;</org_name></report_metadata></feedback>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<feedback><report_metadata><org_name>&secret;</org_name><report_id>1</report_id>
<date_range><begin>1</begin><end>2</end></date_range></report_metadata>
<policy_published><domain>example.org</domain><p>none</p></policy_published></feedback>
"""

EXTERNAL_DTD = SEED_003.replace(
    b"<feedback>", b'<!DOCTYPE feedback SYSTEM "http://attacker.example/x.dtd">\n<feedback>', 1)


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD],
                         ids=["billion-laughs", "external-entity", "external-dtd"])
def test_entities_and_dtds_are_refused(document: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(ReportError, match="refused XML construct"):
        parse_aggregate_report(document)
    assert time.monotonic() - started < 1.0


def test_limits() -> None:
    with pytest.raises(ReportError, match="larger than 100 bytes"):
        parse_aggregate_report(SEED_003, max_bytes=100)
    record = SEED_003[SEED_003.index(b" <record>"):SEED_003.index(b"</feedback>")]
    many = SEED_003.replace(record, record * 4)
    assert len(parse_aggregate_report(many).records) == 4
    with pytest.raises(ReportError, match="more than 3 records"):
        parse_aggregate_report(many, max_records=3)
    deep = SEED_003.replace(b"<header_from>moff.tech</header_from>",
                            b"<a>" * MAX_DEPTH + b"</a>" * MAX_DEPTH)
    with pytest.raises(ReportError, match="nested deeper"):
        parse_aggregate_report(deep)
    long_id = SEED_003.replace(b"121341234", b"9" * 5000)
    assert len(parse_aggregate_report(long_id).metadata.report_id) == 1024


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes_give_a_report_or_report_error(data: bytes) -> None:
    try:
        parse_aggregate_report(data)
    except ReportError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(SEED_003) - 1),
       st.integers(min_value=1, max_value=40), st.binary(min_size=0, max_size=40))
def test_fuzz_damaged_reports_give_a_report_or_report_error(at: int, cut: int,
                                                            insert: bytes) -> None:
    data = SEED_003[:at] + insert + SEED_003[at + cut:]
    try:
        report = parse_aggregate_report(data)
    except ReportError:
        return
    assert report.metadata.report_id and report.policy.domain


# -- our reports against RFC 7489 Appendix C ---------------------------------------------------

# The appendix's complex types: (element, type, minOccurs, maxOccurs) in xs:sequence order
# (its xs:all types are written in the order the appendix lists them). Simple types are
# the enumerations below, "integer", "decimal" and "string".
COMPLEX: dict[str, list[tuple[str, str, int, int | None]]] = {
    "feedback": [("version", "decimal", 1, 1), ("report_metadata", "ReportMetadataType", 1, 1),
                 ("policy_published", "PolicyPublishedType", 1, 1),
                 ("record", "RecordType", 1, None)],
    "ReportMetadataType": [("org_name", "string", 1, 1), ("email", "string", 1, 1),
                           ("extra_contact_info", "string", 0, 1),
                           ("report_id", "string", 1, 1), ("date_range", "DateRangeType", 1, 1),
                           ("error", "string", 0, None)],
    "DateRangeType": [("begin", "integer", 1, 1), ("end", "integer", 1, 1)],
    "PolicyPublishedType": [("domain", "string", 1, 1), ("adkim", "AlignmentType", 0, 1),
                            ("aspf", "AlignmentType", 0, 1), ("p", "DispositionType", 1, 1),
                            ("sp", "DispositionType", 1, 1), ("pct", "integer", 1, 1),
                            ("fo", "string", 1, 1)],
    "RecordType": [("row", "RowType", 1, 1), ("identifiers", "IdentifierType", 1, 1),
                   ("auth_results", "AuthResultType", 1, 1)],
    "RowType": [("source_ip", "IPAddress", 1, 1), ("count", "integer", 1, 1),
                ("policy_evaluated", "PolicyEvaluatedType", 1, 1)],
    "PolicyEvaluatedType": [("disposition", "DispositionType", 1, 1),
                            ("dkim", "DMARCResultType", 1, 1), ("spf", "DMARCResultType", 1, 1),
                            ("reason", "PolicyOverrideReason", 0, None)],
    "PolicyOverrideReason": [("type", "PolicyOverrideType", 1, 1), ("comment", "string", 0, 1)],
    "IdentifierType": [("envelope_to", "string", 0, 1), ("envelope_from", "string", 1, 1),
                       ("header_from", "string", 1, 1)],
    "AuthResultType": [("dkim", "DKIMAuthResultType", 0, None),
                       ("spf", "SPFAuthResultType", 1, None)],
    "DKIMAuthResultType": [("domain", "string", 1, 1), ("selector", "string", 0, 1),
                           ("result", "DKIMResultType", 1, 1), ("human_result", "string", 0, 1)],
    "SPFAuthResultType": [("domain", "string", 1, 1), ("scope", "SPFDomainScope", 1, 1),
                          ("result", "SPFResultType", 1, 1)],
}
ENUMERATIONS = {
    "AlignmentType": ("r", "s"),
    "DispositionType": ("none", "quarantine", "reject"),
    "DMARCResultType": ("pass", "fail"),
    "PolicyOverrideType": ("forwarded", "sampled_out", "trusted_forwarder", "mailing_list",
                           "local_policy", "other"),
    "DKIMResultType": ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror"),
    "SPFDomainScope": ("helo", "mfrom"),
    "SPFResultType": ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"),
}


def check_against_appendix(element: ET.Element, type_name: str = "feedback") -> None:
    if type_name not in COMPLEX:
        assert len(element) == 0, f"<{element.tag}> is a simple type ({type_name})"
        text = element.text or ""
        if type_name in ENUMERATIONS:
            assert text in ENUMERATIONS[type_name], f"<{element.tag}>{text}"
        elif type_name == "integer":
            assert text.isdigit(), f"<{element.tag}>{text}"
        elif type_name == "decimal":
            float(text)
        elif type_name == "IPAddress":
            ipaddress.ip_address(text)
        return
    children = list(element)
    position = 0
    for name, child_type, low, high in COMPLEX[type_name]:
        n = 0
        while position < len(children) and children[position].tag == name:
            check_against_appendix(children[position], child_type)
            position += 1
            n += 1
        assert n >= low, f"<{element.tag}> needs <{name}>"
        assert high is None or n <= high, f"<{element.tag}> has {n} <{name}>"
    assert position == len(children), (
        f"<{element.tag}>: <{children[position].tag}> unexpected or out of order"
        if position < len(children) else "")


def test_built_report_follows_the_appendix_and_parses_back() -> None:
    metadata = ReportMetadata(org_name="mail.example.com", email="postmaster@example.com",
                              report_id="20260101.sender.test.1a2b@mail.example.com",
                              begin=1767225600, end=1767311999,
                              errors=("3 records left out",))
    policy = PolicyPublished(domain="sender.test", p="reject", adkim="s")
    records = [
        ReportRecord(source_ip="192.0.2.1", count=7, disposition="none", dkim="pass",
                     spf="pass", header_from="sender.test", envelope_from="sender.test",
                     envelope_to="example.com",
                     dkim_results=(DkimAuth("sender.test", "pass", "s1"),
                                   DkimAuth("other.test", "fail", "x", "bad signature")),
                     spf_results=(SpfAuth("sender.test", "pass"),)),
        ReportRecord(source_ip="2001:db8::5", count=2, disposition="quarantine",
                     dkim="fail", spf="fail", header_from="sender.test",
                     reasons=(PolicyOverride("sampled_out"),)),
    ]
    xml = build_aggregate_report(metadata, policy, records)
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    check_against_appendix(ET.fromstring(xml))
    back = parse_aggregate_report(xml)
    assert back.metadata == metadata
    assert back.version == "1.0"
    assert back.policy == PolicyPublished(domain="sender.test", p="reject", sp="reject",
                                          adkim="s", aspf="r", pct=100, fo="0")
    assert back.records[0] == records[0]
    # No SPF result: the appendix needs one, so "none" for the envelope domain (here none).
    assert back.records[1].spf_results == (SpfAuth("sender.test", "none", "mfrom"),)
    assert back.records[1].reasons == (PolicyOverride("sampled_out"),)


def test_building_refuses_what_the_appendix_does_not_allow() -> None:
    metadata = ReportMetadata("o", "e@example.com", "1", 0, 1)
    policy = PolicyPublished(domain="example.com")
    good = ReportRecord(source_ip="192.0.2.1", count=1, disposition="none", dkim="pass",
                        spf="fail", header_from="example.com")
    with pytest.raises(ValueError, match="at least one record"):
        build_aggregate_report(metadata, policy, [])
    with pytest.raises(ValueError, match="disposition"):
        build_aggregate_report(metadata, policy, [ReportRecord(
            source_ip="192.0.2.1", count=1, disposition="junk", dkim="pass", spf="fail",
            header_from="example.com")])
    with pytest.raises(ValueError):
        build_aggregate_report(metadata, policy, [ReportRecord(
            source_ip="local", count=1, disposition="none", dkim="pass", spf="fail",
            header_from="example.com")])
    # Text XML cannot carry is left out rather than written.
    weird = ReportMetadata("org\x00\x1b", "e@example.com", "id\ufffe", 0, 1)
    xml = build_aggregate_report(weird, policy, [good])
    assert parse_aggregate_report(xml).metadata.org_name == "org"
