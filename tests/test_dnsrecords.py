"""The DNS record model (mailkeep.dnsrecords): values, zone text, JSON.

Pure functions, tested with plain calls. The zone text is read back with dnspython's zone
parser, the policy with Mailkeep's own MTA-STS parser, DKIM values with its DKIM key
record parser: each record must be what the standard's own parser accepts.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from mailkeep.config import parse_config_text
from mailkeep.dkim.keys import DkimKeys, public_key_txt
from mailkeep.dnsrecords import (
    DkimPublication,
    DnsRecord,
    dkim_publications,
    domain_records,
    expected_records,
    host_records,
    is_public_name,
    local_records,
    mailto,
    mta_sts_id,
    mta_sts_policy_text,
    public_addresses,
    records_json,
    served_certificate_files,
    served_certificates,
    tlsa_value,
    zone_notes,
    zone_text,
)
from mailkeep.outbound.mta_sts import parse_policy, parse_sts_record
from mailkeep.trust.dkim_verify import parse_key_record
from mailkeep.trust.dmarc import parse_record as parse_dmarc

LISTENERS = """
[[listeners]]
protocol = "smtp"
address = "0.0.0.0:25"
[[listeners]]
protocol = "submission"
address = "0.0.0.0:587"
[[listeners]]
protocol = "submissions"
address = "0.0.0.0:465"
[[listeners]]
protocol = "imap"
address = "0.0.0.0:143"
[[listeners]]
protocol = "imaps"
address = "0.0.0.0:993"
[[listeners]]
protocol = "https"
address = "0.0.0.0:443"
"""

BASE = """
hostname = "mail.example.com"
data_dir = "data"
[dns]
ipv4 = ["192.0.2.10"]
ipv6 = ["2001:db8::10"]
[domains."example.com"]
[domains."example.org"]
"""


def config_of(text: str = BASE, listeners: str = LISTENERS, tmp: Path | None = None):
    path = (tmp / "mailkeep.toml") if tmp else "mailkeep.toml"
    return parse_config_text(text + listeners, path)


def by(records: list[DnsRecord], name: str, rtype: str) -> list[DnsRecord]:
    return [r for r in records if r.name == name and r.type == rtype]


def one(records: list[DnsRecord], name: str, rtype: str) -> DnsRecord:
    found = by(records, name, rtype)
    assert len(found) == 1, found
    return found[0]


def dkim_keys() -> list[DkimPublication]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed = ed25519.Ed25519PrivateKey.generate()
    return [DkimPublication("s1r", "s1r._domainkey.example.com", public_key_txt(key), True),
            DkimPublication("s1e", "s1e._domainkey.example.com", public_key_txt(ed), True,
                            "ed25519"),
            DkimPublication("s0r", "s0r._domainkey.example.com", public_key_txt(key), False)]


def certificate(key_type: str = "ecdsa") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()) if key_type == "ecdsa" else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


# -- values -----------------------------------------------------------------------------------

def test_the_core_records() -> None:
    config = config_of()
    records = expected_records(config, "example.com", dkim_keys=dkim_keys(),
                               tls_certificates=[certificate()])
    mx = one(records, "example.com", "MX")
    assert (mx.value, mx.required, mx.kind) == ("10 mail.example.com.", True, "mx")
    assert [r.value for r in by(records, "mail.example.com", "A")] == ["192.0.2.10"]
    assert [r.value for r in by(records, "mail.example.com", "AAAA")] == ["2001:db8::10"]
    spf = [r for r in records if r.kind == "spf"]
    assert [(r.name, r.value, r.required) for r in spf] == [
        ("example.com", "v=spf1 mx -all", True)]
    helo = one(records, "mail.example.com", "TXT")
    assert (helo.value, helo.required, helo.kind) == ("v=spf1 a -all", False, "spf-host")
    ptr = one(records, "10.2.0.192.in-addr.arpa", "PTR")
    assert ptr.value == "mail.example.com." and ptr.required
    ptr6 = [r for r in records if r.type == "PTR" and r.name.endswith("ip6.arpa")]
    assert ptr6[0].name == ("0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2."
                            "ip6.arpa")
    dmarc = one(records, "_dmarc.example.com", "TXT")
    parsed = parse_dmarc(dmarc.value)
    assert parsed.usable and parsed.policy == "quarantine"
    assert [u.address for u in parsed.rua] == ["postmaster@example.com"]
    tlsrpt = one(records, "_smtp._tls.example.com", "TXT")
    assert tlsrpt.value == "v=TLSRPTv1; rua=mailto:postmaster@example.com"
    caa = one(records, "example.com", "CAA")
    assert caa.value == '0 issue "letsencrypt.org"' and not caa.required
    # The host is inside example.com: the domain's CAA covers it, no second record.
    assert by(records, "mail.example.com", "CAA") == []
    # Records come in KINDS order: MX first.
    assert records[0].kind == "mx"


def test_dkim_records_and_testing_flag() -> None:
    keys = dkim_keys()
    config = config_of()
    records = [r for r in domain_records(config, "example.com", dkim_keys=keys)
               if r.kind == "dkim"]
    assert [(r.name, r.required) for r in records] == [
        ("s1r._domainkey.example.com", True), ("s1e._domainkey.example.com", True),
        ("s0r._domainkey.example.com", False)]
    assert "retired selector s0r" in records[2].comment
    for record in records:
        assert not parse_key_record(record.value.encode()).testing
    testing = config_of(BASE.replace("[dns]", "[dns]\ndkim_testing = true"))
    flagged = [r for r in domain_records(testing, "example.com", dkim_keys=keys)
               if r.kind == "dkim"]
    for record in flagged:
        parsed = parse_key_record(record.value.encode())
        assert parsed.testing  # RFC 6376 §3.6.1 t=y
    assert parse_key_record(flagged[0].value.encode()).public_key == \
        parse_key_record(records[0].value.encode()).public_key


def test_mta_sts_policy_and_id() -> None:
    config = config_of()
    text = mta_sts_policy_text(config)
    assert text == ("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
                    "max_age: 604800\r\n")
    policy = parse_policy(text)
    assert policy.mode == "enforce" and policy.mx == ("mail.example.com",)
    record = one(domain_records(config, "example.com"), "_mta-sts.example.com", "TXT")
    assert parse_sts_record(record.value).id == mta_sts_id(config)
    assert one(domain_records(config, "example.com"), "mta-sts.example.com", "CNAME").value \
        == "mail.example.com."
    # The id changes exactly when the policy does (RFC 8461 §3.1).
    same = config_of(BASE.replace("[domains.\"example.org\"]\n", ""))
    assert mta_sts_id(same) == mta_sts_id(config)
    for change in ('mta_sts_mode = "testing"', 'mta_sts_max_age = "30d"'):
        changed = config_of(BASE.replace("[dns]", f"[dns]\n{change}"))
        assert mta_sts_id(changed) != mta_sts_id(config)
    renamed = config_of(BASE.replace("mail.example.com", "mx2.example.com"))
    assert mta_sts_id(renamed) != mta_sts_id(config)
    none = config_of(BASE.replace("[dns]", '[dns]\nmta_sts_mode = "none"'))
    assert parse_policy(mta_sts_policy_text(none)).mode == "none"


def test_report_addresses_and_cross_domain_authorization() -> None:
    config = config_of(BASE + '[dmarc]\nreport_address = "dmarc+reports@example.org"\n')
    records = domain_records(config, "example.com")
    dmarc = one(records, "_dmarc.example.com", "TXT")
    assert dmarc.value.endswith("rua=mailto:dmarc+reports@example.org")
    # RFC 7489 §7.1: example.org must agree to receive reports for example.com.
    auth = one(records, "example.com._report._dmarc.example.org", "TXT")
    assert (auth.value, auth.required) == ("v=DMARC1", False)
    # No authorization needed for the domain's own reports.
    own = domain_records(config, "example.org")
    assert [r for r in own if r.kind == "dmarc-authorization"] == []
    tlsrpt = config_of(BASE.replace("[dns]", '[dns]\ntlsrpt_address = "tls@example.org"'))
    assert one(domain_records(tlsrpt, "example.com"), "_smtp._tls.example.com", "TXT").value \
        == "v=TLSRPTv1; rua=mailto:tls@example.org"


@pytest.mark.parametrize("address, uri", [
    ("postmaster@example.com", "mailto:postmaster@example.com"),
    ("a,b!c@example.com", "mailto:a%2Cb%21c@example.com"),
    ("jörg@example.com", "mailto:j%C3%B6rg@example.com"),
    ("a b@example.com", "mailto:a%20b@example.com"),
])
def test_mailto_escapes_what_dmarc_uses_as_separators(address: str, uri: str) -> None:
    assert mailto(address) == uri


def test_srv_prefers_implicit_tls() -> None:
    records = domain_records(config_of(), "example.com")
    srv = {r.name: r.value for r in records if r.kind == "srv"}
    assert srv == {
        "_submissions._tcp.example.com": "0 1 465 mail.example.com.",
        "_submission._tcp.example.com": "10 1 587 mail.example.com.",
        "_imaps._tcp.example.com": "0 1 993 mail.example.com.",
        "_imap._tcp.example.com": "0 0 0 .",
        "_pop3s._tcp.example.com": "0 0 0 .",
        "_pop3._tcp.example.com": "0 0 0 .",
    }
    assert one(records, "_autodiscover._tcp.example.com", "SRV").value == \
        "0 1 443 mail.example.com."
    assert one(records, "autoconfig.example.com", "CNAME").value == "mail.example.com."


def test_srv_with_starttls_only_and_no_web_listener() -> None:
    listeners = """
[[listeners]]
protocol = "smtp"
address = "0.0.0.0:25"
[[listeners]]
protocol = "imap"
address = "0.0.0.0:143"
[[listeners]]
protocol = "pop3"
address = "0.0.0.0:110"
tls = "none"
"""
    config = config_of(listeners=listeners)
    records = domain_records(config, "example.com")
    srv = {r.name: r.value for r in records if r.kind == "srv"}
    # STARTTLS IMAP is all there is: published at priority 0. Cleartext POP3 never is.
    assert srv["_imap._tcp.example.com"] == "0 1 143 mail.example.com."
    assert srv["_imaps._tcp.example.com"] == "0 0 0 ."
    assert srv["_pop3._tcp.example.com"] == "0 0 0 ."
    assert srv["_submission._tcp.example.com"] == "0 0 0 ."
    # No http(s) listener: nothing serves MTA-STS or autoconfiguration.
    assert not [r for r in records if r.kind in ("mta-sts", "mta-sts-host", "autoconfig",
                                                 "autodiscover")]
    notes = zone_notes(config, "example.com")
    assert any("no https listener" in note for note in notes)


def test_tlsa_is_the_sha256_of_the_served_key() -> None:
    der = certificate("rsa")
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    assert tlsa_value(der) == "3 1 1 " + hashlib.sha256(spki).hexdigest()
    ecdsa = certificate("ecdsa")
    records = host_records(config_of(), tls_certificates=[der, ecdsa, der])
    tlsa = by(records, "_25._tcp.mail.example.com", "TLSA")
    assert [r.value for r in tlsa] == [tlsa_value(der), tlsa_value(ecdsa)]
    assert all(not r.required for r in tlsa)


def test_host_outside_the_domains_gets_its_own_caa() -> None:
    config = config_of(BASE.replace("mail.example.com", "mx.provider.example.net")
                       .replace("[dns]", '[dns]\ncaa_issuers = ["letsencrypt.org", '
                                         '"sectigo.com"]'))
    records = host_records(config)
    assert [r.value for r in by(records, "mx.provider.example.net", "CAA")] == [
        '0 issue "letsencrypt.org"', '0 issue "sectigo.com"']
    none = config_of(BASE.replace("[dns]", "[dns]\ncaa_issuers = []"))
    assert [r for r in expected_records(none, "example.com") if r.kind == "caa"] == []


def test_public_addresses_from_listeners_and_notes() -> None:
    text = BASE.replace('ipv4 = ["192.0.2.10"]\nipv6 = ["2001:db8::10"]\n', "")
    listeners = """
[[listeners]]
protocol = "smtp"
address = "8.8.4.4:25"
[[listeners]]
protocol = "imaps"
address = "[2606:4700::1111]:993"
[[listeners]]
protocol = "imap"
address = "127.0.0.1:143"
[[listeners]]
protocol = "pop3s"
address = "10.0.0.5:995"
[[listeners]]
protocol = "submission"
address = "0.0.0.0:587"
"""
    config = config_of(text, listeners)
    # Wildcard, loopback and private addresses cannot be published.
    assert public_addresses(config) == ("8.8.4.4", "2606:4700::1111")
    nothing = config_of(text)
    assert public_addresses(nothing) == ()
    assert [r for r in host_records(nothing) if r.type in ("A", "AAAA", "PTR")] == []
    assert any("no public address known" in n for n in zone_notes(nothing, "example.com"))


def test_non_public_names() -> None:
    for name in ("localhost", "example.test", "a.b.invalid", "router.home.arpa", "box.local",
                 "x.internal", "mail"):
        assert not is_public_name(name), name
    for name in ("example.com", "mail.example.co.uk", "testing.org"):
        assert is_public_name(name), name
    config = config_of(BASE.replace("mail.example.com", "localhost")
                       .replace("example.com", "example.test"))
    notes = zone_notes(config, "example.test")
    assert any("example.test is not a public domain name" in n for n in notes)
    assert any("hostname 'localhost' is not a public name" in n for n in notes)


# -- zone text and JSON -----------------------------------------------------------------------

def test_zone_text_parses_as_a_zone_file() -> None:
    config = config_of()
    records = expected_records(config, "example.com", dkim_keys=dkim_keys(),
                               tls_certificates=[certificate("rsa"), certificate()])
    text = zone_text(records, notes=zone_notes(config, "example.com"), title="example.com")
    zone = dns.zone.from_text(text, origin=dns.name.root, check_origin=False,
                              relativize=False)
    parsed = {(name.to_text(omit_final_dot=True), dns.rdatatype.to_text(rdata.rdtype),
               rdata.to_text()) for name, _ttl, rdata in zone.iterate_rdatas()}
    assert len(parsed) == len(records)
    for record in records:
        matches = [p for p in parsed if p[0] == record.name and p[1] == record.type]
        assert matches, record
        if record.type == "TXT":
            # Long values come back as several strings that join to the value.
            assert any("".join(s.strip('"') for s in p[2].split('" "')) == record.value
                       for p in matches)
    # A comment line before every record line says what it is for.
    lines = text.splitlines()
    starts = [index for index, line in enumerate(lines) if " IN " in line]
    assert len(starts) == len(records)
    for index, record in zip(starts, records, strict=True):
        assert lines[index - 1].startswith(f"; {record.kind}: ")
        assert lines[index - 1].endswith(record.comment)
    assert "(recommended)" in text


def test_long_txt_is_split_into_255_octet_strings() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    record = DnsRecord("s._domainkey.example.com", "TXT", public_key_txt(key), "DKIM",
                       kind="dkim")
    rdata = record.rdata
    assert rdata.startswith("(\n    \"v=DKIM1; k=rsa; p=") and rdata.endswith('" )')
    strings = [s.strip().strip('"') for s in rdata.strip("()").split("\n") if s.strip()]
    assert all(len(s.encode()) <= 255 for s in strings) and len(strings) == 3
    assert "".join(strings) == record.value
    quoted = DnsRecord("x.example.com", "TXT", 'say "hi" \\ bye', "c").rdata
    assert quoted == '"say \\"hi\\" \\\\ bye"'


def test_records_json() -> None:
    records = expected_records(config_of(), "example.com", dkim_keys=dkim_keys())
    document = json.loads(records_json(records, notes=["a note"]))
    assert document["notes"] == ["a note"]
    assert len(document["records"]) == len(records)
    mx = document["records"][0]
    assert mx == {"name": "example.com", "type": "MX", "ttl": 3600,
                  "value": "10 mail.example.com.", "rdata": "10 mail.example.com.",
                  "kind": "mx", "required": True, "comment": records[0].comment}
    dkim = next(r for r in document["records"] if r["name"] == "s1r._domainkey.example.com")
    assert dkim["value"].startswith("v=DKIM1; k=rsa; p=") and "\n" not in dkim["rdata"]
    assert dkim["rdata"].count('" "') == 1


# -- inputs from the data directory ----------------------------------------------------------

def test_dkim_publications_from_the_key_store(tmp_path: Path) -> None:
    keys = DkimKeys(tmp_path / "dkim")
    created = keys.keygen("example.com", selector_prefix="k1")
    keys.rotate("example.com", selector_prefix="k2")
    publications = dkim_publications(keys, "example.com")
    assert [(p.selector, p.active) for p in publications][:2] == [("k2r", True), ("k2e", True)]
    assert {(p.selector, p.active) for p in publications[2:]} == {("k1r", False),
                                                                  ("k1e", False)}
    assert {p.algorithm for p in publications} == {"rsa", "ed25519"}
    assert all(p.name == f"{p.selector}._domainkey.example.com" for p in publications)
    assert len(created) == 2


def _write_cert(path: Path, der: bytes) -> None:
    cert = x509.load_der_x509_certificate(der)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_served_certificates_follow_the_configuration(tmp_path: Path) -> None:
    self_signed = config_of(tmp=tmp_path)
    assert served_certificate_files(self_signed) == []  # nothing is generated here
    ecdsa, rsa_der = certificate("ecdsa"), certificate("rsa")
    _write_cert(tmp_path / "data" / "tls" / "selfsigned-ecdsa.pem", ecdsa)
    _write_cert(tmp_path / "data" / "tls" / "selfsigned-rsa.pem", rsa_der)
    assert served_certificates(self_signed) == [ecdsa, rsa_der]
    files = tmp_path / "files"
    _write_cert(files / "cert.pem", rsa_der)
    (files / "key.pem").write_text("unused")
    configured = config_of(BASE + f'[tls]\ncert = "{files}/cert.pem"\nkey = "{files}/key.pem"\n',
                           tmp=tmp_path)
    assert served_certificates(configured) == [rsa_der]
    # [acme] without an issued certificate yet: the self-signed fallback is served.
    acme = config_of(BASE + "[acme]\nenabled = true\nemail = \"me@example.com\"\n", tmp=tmp_path)
    assert served_certificates(acme) == [ecdsa, rsa_der]
    # An unreadable file is skipped, not fatal.
    (tmp_path / "data" / "tls" / "selfsigned-rsa.pem").write_text("not a certificate")
    assert served_certificates(self_signed) == [ecdsa]


def test_served_certificates_with_an_acme_certificate(tmp_path: Path) -> None:
    """With [acme], the certificate ACME installed is the one served (and hashed for
    TLSA); a key type ACME has not issued yet falls back to its self-signed one, as the
    server does (mailkeep.servers.tls)."""
    from mailkeep.acme.storage import AcmeStorage

    ecdsa, rsa_der = certificate("ecdsa"), certificate("rsa")
    _write_cert(tmp_path / "data" / "tls" / "selfsigned-ecdsa.pem", ecdsa)
    _write_cert(tmp_path / "data" / "tls" / "selfsigned-rsa.pem", rsa_der)
    issued = certificate("ecdsa")
    pem = x509.load_der_x509_certificate(issued).public_bytes(serialization.Encoding.PEM)
    AcmeStorage(tmp_path / "data").install("ecdsa", b"unused key", pem,
                                           "https://acme.test/directory")
    acme = config_of(BASE + "[acme]\nenabled = true\nemail = \"me@example.com\"\n", tmp=tmp_path)
    assert served_certificates(acme) == [issued, rsa_der]
    files = served_certificate_files(acme)
    assert files[0].parent.parent.name == "archive" and files[0].name == "cert.pem"


def test_local_records_read_keys_and_certificates(tmp_path: Path) -> None:
    config = config_of(tmp=tmp_path)
    records, notes = local_records(config, "example.com")
    assert not [r for r in records if r.kind in ("dkim", "tlsa")]
    assert any("no DKIM keys" in n for n in notes) and any("TLSA" in n for n in notes)
    DkimKeys.for_data_dir(tmp_path / "data").keygen("example.com", selector_prefix="a")
    _write_cert(tmp_path / "data" / "tls" / "selfsigned-ecdsa.pem", certificate())
    records, notes = local_records(config, "example.com")
    assert [r.name for r in records if r.kind == "dkim"] == [
        "ar._domainkey.example.com", "ae._domainkey.example.com"]
    assert len([r for r in records if r.kind == "tlsa"]) == 1
    assert not any("DKIM" in n or "TLSA" in n for n in notes)
