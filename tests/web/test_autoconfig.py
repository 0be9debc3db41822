"""Client autoconfiguration documents: what Thunderbird, Outlook and Apple devices read.

The documents are parsed back (defusedxml, plistlib, and libplist's plistutil, the library
that talks to iOS devices) and checked element by element against what each client
expects; odd addresses must never change a document's structure.
"""

from __future__ import annotations

import datetime
import plistlib
import shutil
import subprocess
import uuid
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.config import Config, parse_config_text
from mailkeep.web.autoconfig import (
    AUTODISCOVER_REQUEST_NS,
    AUTODISCOVER_RESPONSE_NS,
    ERROR_ADDRESS_NOT_FOUND,
    ERROR_INVALID_REQUEST,
    ERROR_PROVIDER_UNAVAILABLE,
    MAX_AUTODISCOVER_REQUEST,
    OUTLOOK_RESPONSE_NS,
    AutodiscoverError,
    ClientSettings,
    Endpoint,
    NotOurs,
    apple_profile,
    client_settings,
    our_address,
    our_domain,
    outlook_error,
    outlook_response,
    parse_autodiscover_request,
    thunderbird_config,
)

FULL = """
hostname = "mx.example.test"

[[listeners]]
protocol = "smtp"
address = "0.0.0.0:25"

[[listeners]]
protocol = "imap"
address = "0.0.0.0:143"

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:10993"

[[listeners]]
protocol = "imaps"
address = "[::]:993"

[[listeners]]
protocol = "pop3s"
address = "0.0.0.0:995"

[[listeners]]
protocol = "pop3"
address = "0.0.0.0:110"
tls = "none"

[[listeners]]
protocol = "submission"
address = "0.0.0.0:587"

[[listeners]]
protocol = "submissions"
address = "0.0.0.0:465"

[[listeners]]
protocol = "https"
address = "0.0.0.0:443"

[domains."example.test"]
[domains."other.test"]
[domains."bücher.test"]

[accounts."me@example.test"]
"""

# Every key a com.apple.mail.managed payload of ours carries, and the profile's own.
APPLE_MAIL_KEYS = {
    "PayloadType", "PayloadVersion", "PayloadIdentifier", "PayloadUUID", "PayloadDisplayName",
    "PayloadDescription", "EmailAccountDescription", "EmailAccountType", "EmailAddress",
    "IncomingMailServerAuthentication", "IncomingMailServerHostName",
    "IncomingMailServerPortNumber", "IncomingMailServerUseSSL", "IncomingMailServerUsername",
    "OutgoingMailServerAuthentication", "OutgoingMailServerHostName",
    "OutgoingMailServerPortNumber", "OutgoingMailServerUseSSL", "OutgoingMailServerUsername",
    "OutgoingPasswordSameAsIncomingPassword", "PreventMove", "PreventAppSheet", "SMIMEEnabled",
}
APPLE_PROFILE_KEYS = {
    "PayloadType", "PayloadVersion", "PayloadIdentifier", "PayloadUUID", "PayloadDisplayName",
    "PayloadDescription", "PayloadOrganization", "PayloadRemovalDisallowed", "PayloadContent",
}

# Addresses with every character RFC 5322 atext allows that means something in XML, HTML
# or a header; they are valid, so they are answered, escaped.
ODD_BUT_VALID = ["a&b'c{d}|e/f=g?h#i~j@example.test", "x+tag@example.test",
                 "o'neil@example.test", "jörg@bücher.test", "ME@EXAMPLE.TEST"]
# Not addresses of ours: refused, never echoed.
NOT_OURS = ["<script>@example.test", '"quoted"@example.test', "a b@example.test",
            "x@example.test\r\nX-Injected: 1", "x@example.test>", "x@example.test.",
            "x@other.invalid", "x@", "@example.test", "example.test", "",
            "a" * 65 + "@example.test", "x@" + "a" * 300 + ".test",
            "x@[127.0.0.1]", "x@exa mple.test", "x\x00@example.test"]


def config_of(text: str) -> Config:
    return parse_config_text(text, Path("/etc/mailkeep/mailkeep.toml"), label="mailkeep.toml")


def listeners(*entries: tuple[str, str] | tuple[str, str, str]) -> str:
    out = ['hostname = "mx.example.test"']
    for entry in entries:
        out.append(f'[[listeners]]\nprotocol = "{entry[0]}"\naddress = "{entry[1]}"')
        if len(entry) == 3:
            out.append(f'tls = "{entry[2]}"')
    out.append('[domains."example.test"]')
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def full() -> Config:
    return config_of(FULL)


@pytest.fixture(scope="module")
def advertised(full: Config) -> ClientSettings:
    found = client_settings(full)
    assert found is not None
    return found


def local(tag: str) -> str:
    return tag.rpartition("}")[2]


# -- which endpoints ------------------------------------------------------------------------


def test_settings_prefer_implicit_tls_public_listeners_and_skip_plaintext(advertised):
    assert advertised.hostname == "mx.example.test"
    assert advertised.incoming == (
        Endpoint("imap", "mx.example.test", 993, True),    # public 993, not loopback 10993
        Endpoint("imap", "mx.example.test", 143, False),
        Endpoint("pop3", "mx.example.test", 995, True),    # pop3 on 110 has no TLS
    )
    assert advertised.outgoing == (Endpoint("smtp", "mx.example.test", 465, True),
                                 Endpoint("smtp", "mx.example.test", 587, False))
    assert advertised.cram_md5 is False


def test_loopback_listeners_are_used_when_there_is_nothing_else():
    # localserve: everything on 127.0.0.1, hostname "localhost".
    config = config_of(listeners(("imap", "127.0.0.1:1143"), ("imaps", "127.0.0.1:1993"),
                                 ("submission", "127.0.0.1:1587"),
                                 ("submissions", "127.0.0.1:1465"),
                                 ("http", "127.0.0.1:1080")).replace(
        "mx.example.test", "localhost"))
    found = client_settings(config)
    assert found is not None
    assert [(e.host, e.port, e.implicit_tls) for e in found.incoming] == [
        ("localhost", 1993, True), ("localhost", 1143, False)]
    assert [(e.port, e.implicit_tls) for e in found.outgoing] == [(1465, True), (1587, False)]


def test_no_settings_without_tls_for_reading_or_sending():
    assert client_settings(config_of(listeners(("imaps", "0.0.0.0:993")))) is None
    assert client_settings(config_of(listeners(("submissions", "0.0.0.0:465")))) is None
    assert client_settings(config_of(listeners(
        ("imap", "0.0.0.0:143", "none"), ("submission", "0.0.0.0:587", "none")))) is None
    # Port 25 is not for clients, port 0 has no number yet.
    assert client_settings(config_of(listeners(
        ("imaps", "0.0.0.0:993"), ("smtp", "0.0.0.0:25"), ("submissions", "0.0.0.0:0")))) is None


def test_pop3_only_and_starttls_only_servers():
    found = client_settings(config_of(listeners(("pop3", "0.0.0.0:110"),
                                                ("submission", "0.0.0.0:587"))))
    assert found is not None
    assert found.incoming == (Endpoint("pop3", "mx.example.test", 110, False),)
    assert found.outgoing == (Endpoint("smtp", "mx.example.test", 587, False),)


# -- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ODD_BUT_VALID)
def test_odd_but_valid_addresses_are_ours_in_canonical_form(full, text):
    address = our_address(full, text)
    assert address == address.lower()
    assert address.rpartition("@")[2] in full.domains


def test_idn_addresses_become_a_labels(full):
    assert our_address(full, "Jörg@Bücher.test") == "jörg@xn--bcher-kva.test"
    assert our_domain(full, "xn--bcher-kva.test") == "xn--bcher-kva.test"
    assert our_domain(full, "bücher.test") == "xn--bcher-kva.test"
    assert our_domain(full, "example.invalid") is None


@pytest.mark.parametrize("text", NOT_OURS)
def test_other_and_malformed_addresses_are_refused(full, text):
    with pytest.raises(NotOurs):
        our_address(full, text)


# -- Thunderbird ----------------------------------------------------------------------------


def parse_thunderbird(body: bytes):
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = SafeET.fromstring(body, forbid_dtd=True)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    (provider,) = list(root)
    assert provider.tag == "emailProvider"
    return provider


def servers_of(provider, tag: str) -> list[dict[str, object]]:
    out = []
    for element in provider.findall(tag):
        fields: dict[str, object] = {"type": element.get("type")}
        for child in element:
            if child.tag == "authentication":
                fields.setdefault("authentication", []).append(child.text)  # type: ignore[union-attr]
            else:
                fields[child.tag] = child.text
        out.append(fields)
    return out


def test_thunderbird_config_lists_implicit_tls_first_with_the_address_as_user(advertised):
    provider = parse_thunderbird(thunderbird_config(advertised, "example.test"))
    assert provider.get("id") == "example.test"
    # Only the domain asked for: the document does not list the server's other domains.
    assert [d.text for d in provider.findall("domain")] == ["example.test"]
    assert provider.findtext("displayName") == "Mail at example.test"
    assert provider.findtext("displayShortName") == "example.test"
    common = {"hostname": "mx.example.test", "username": "%EMAILADDRESS%",
              "authentication": ["password-cleartext"]}
    assert servers_of(provider, "incomingServer") == [
        {"type": "imap", "port": "993", "socketType": "SSL", **common},
        {"type": "imap", "port": "143", "socketType": "STARTTLS", **common},
        {"type": "pop3", "port": "995", "socketType": "SSL", **common},
    ]
    assert servers_of(provider, "outgoingServer") == [
        {"type": "smtp", "port": "465", "socketType": "SSL", **common},
        {"type": "smtp", "port": "587", "socketType": "STARTTLS", **common},
    ]
    # Nothing else: no password, no plaintext socket type.
    body = thunderbird_config(advertised, "example.test")
    assert b"<password" not in body and b"plain<" not in body


def test_thunderbird_prefers_cram_md5_when_the_server_offers_it():
    config = config_of(FULL + "\n[auth]\ncram_md5 = true\n")
    found = client_settings(config)
    assert found is not None and found.cram_md5
    provider = parse_thunderbird(thunderbird_config(found, "example.test"))
    for server in (*servers_of(provider, "incomingServer"),
                   *servers_of(provider, "outgoingServer")):
        # Thunderbird takes the first value it knows: CRAM-MD5, then (other clients)
        # the password inside TLS.
        assert server["authentication"] == ["password-encrypted", "password-cleartext"]


def test_thunderbird_idn_domain_uses_the_a_label_and_shows_the_u_label(advertised):
    provider = parse_thunderbird(thunderbird_config(advertised, "xn--bcher-kva.test"))
    assert provider.get("id") == "xn--bcher-kva.test"
    assert provider.findtext("domain") == "xn--bcher-kva.test"
    assert provider.findtext("displayShortName") == "bücher.test"


def test_values_that_are_not_xml_characters_are_refused(advertised):
    with pytest.raises(ValueError, match="XML"):
        thunderbird_config(advertised, "bad\x01.test")


# -- Outlook --------------------------------------------------------------------------------


def autodiscover_request(address: str, schema: str | None = OUTLOOK_RESPONSE_NS,
                         namespace: str = AUTODISCOVER_REQUEST_NS) -> bytes:
    schema_element = (f"<AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
                      if schema is not None else "")
    return (f'<?xml version="1.0" encoding="utf-8"?>\r\n<Autodiscover xmlns="{namespace}">'
            f"<Request><EMailAddress>{address}</EMailAddress>{schema_element}</Request>"
            f"</Autodiscover>").encode()


def test_autodiscover_request_is_read_with_or_without_namespace_and_schema():
    assert parse_autodiscover_request(autodiscover_request("me@example.test")) == \
        "me@example.test"
    assert parse_autodiscover_request(autodiscover_request(" me@example.test\n", None,
                                                           "")) == "me@example.test"
    assert parse_autodiscover_request(autodiscover_request("a&amp;b@example.test")) == \
        "a&b@example.test"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<Autodiscover><Request><EMailAddress>&lol2;@example.test</EMailAddress></Request></Autodiscover>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Autodiscover><Request><EMailAddress>&xxe;</EMailAddress></Request></Autodiscover>"""


@pytest.mark.parametrize(("body", "code"), [
    (b"", ERROR_INVALID_REQUEST),
    (b"not xml", ERROR_INVALID_REQUEST),
    (b"<Autodiscover><Request>", ERROR_INVALID_REQUEST),
    (BILLION_LAUGHS, ERROR_INVALID_REQUEST),
    (EXTERNAL_ENTITY, ERROR_INVALID_REQUEST),
    (b"<Other><Request><EMailAddress>me@example.test</EMailAddress></Request></Other>",
     ERROR_INVALID_REQUEST),
    (b'<Autodiscover xmlns="urn:elsewhere"><Request><EMailAddress>me@example.test'
     b"</EMailAddress></Request></Autodiscover>", ERROR_INVALID_REQUEST),
    (b"<Autodiscover><EMailAddress>me@example.test</EMailAddress></Autodiscover>",
     ERROR_INVALID_REQUEST),
    (autodiscover_request(""), ERROR_INVALID_REQUEST),
    (b"<Autodiscover><Request><EMailAddress>" + b"a" * MAX_AUTODISCOVER_REQUEST
     + b"</EMailAddress></Request></Autodiscover>", ERROR_INVALID_REQUEST),
    # An ActiveSync device asks for the mobilesync schema: not ours to answer.
    (autodiscover_request("me@example.test", "http://schemas.microsoft.com/exchange/"
                          "autodiscover/mobilesync/responseschema/2006"),
     ERROR_PROVIDER_UNAVAILABLE),
])
def test_bad_autodiscover_requests_are_errors_not_crashes(body, code):
    with pytest.raises(AutodiscoverError) as info:
        parse_autodiscover_request(body)
    assert info.value.code == code


def protocols_of(body: bytes) -> tuple[object, list[dict[str, str]]]:
    root = SafeET.fromstring(body, forbid_dtd=True)
    assert root.tag == f"{{{AUTODISCOVER_RESPONSE_NS}}}Autodiscover"
    (response,) = list(root)
    assert response.tag == f"{{{OUTLOOK_RESPONSE_NS}}}Response"
    ns = {"o": OUTLOOK_RESPONSE_NS}
    account = response.find("o:Account", ns)
    assert account is not None
    assert account.findtext("o:AccountType", namespaces=ns) == "email"
    assert account.findtext("o:Action", namespaces=ns) == "settings"
    protocols = [{local(child.tag): child.text or "" for child in protocol}
                 for protocol in account.findall("o:Protocol", ns)]
    return account, protocols


def test_outlook_response_has_one_protocol_per_type_with_tls_on(advertised):
    _account, protocols = protocols_of(outlook_response(advertised, "me@example.test"))
    common = {"Server": "mx.example.test", "DomainRequired": "off",
              "LoginName": "me@example.test", "SPA": "off", "SSL": "on",
              "Encryption": "SSL", "AuthRequired": "on"}
    assert protocols == [
        {"Type": "IMAP", "Port": "993", **common},
        {"Type": "POP3", "Port": "995", **common},
        {"Type": "SMTP", "Port": "465", **common, "UsePOPAuth": "off", "SMTPLast": "off"},
    ]


def test_outlook_response_starttls_endpoints_say_tls():
    found = client_settings(config_of(listeners(("imap", "0.0.0.0:143"),
                                                ("submission", "0.0.0.0:587"))))
    assert found is not None
    _account, protocols = protocols_of(outlook_response(found, "me@example.test"))
    assert [(p["Type"], p["Port"], p["SSL"], p["Encryption"]) for p in protocols] == [
        ("IMAP", "143", "on", "TLS"), ("SMTP", "587", "on", "TLS")]


def test_outlook_error_document():
    now = datetime.datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=datetime.UTC)
    root = SafeET.fromstring(outlook_error(ERROR_ADDRESS_NOT_FOUND, "mx.example.test", now))
    ns = {"o": OUTLOOK_RESPONSE_NS}
    error = root.find("o:Response/o:Error", ns)
    assert error is not None
    assert error.get("Time") == "12:34:56.789000"
    assert error.get("Id", "").isdigit()
    assert error.findtext("o:ErrorCode", namespaces=ns) == "500"
    assert error.findtext("o:Message", namespaces=ns) == "The email address cannot be found."
    assert error.find("o:DebugData", ns) is not None
    assert root.find("o:Response/o:Account", ns) is None


# -- Apple ----------------------------------------------------------------------------------


def test_apple_profile_every_key(advertised):
    profile = plistlib.loads(apple_profile(advertised, "me@example.test"))
    assert set(profile) == APPLE_PROFILE_KEYS
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    assert profile["PayloadDisplayName"] == "Mail at example.test"
    assert profile["PayloadOrganization"] == "example.test"
    assert profile["PayloadRemovalDisallowed"] is False
    assert "me@example.test" in profile["PayloadDescription"]
    assert profile["PayloadIdentifier"] == \
        f"test.example.mx.mailkeep.profile.{profile['PayloadUUID']}"
    (mail,) = profile["PayloadContent"]
    assert set(mail) == APPLE_MAIL_KEYS
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["PayloadVersion"] == 1
    assert mail["PayloadIdentifier"] == f"test.example.mx.mailkeep.mail.{mail['PayloadUUID']}"
    assert mail["PayloadDisplayName"] == "Mail (me@example.test)"
    assert "me@example.test" in mail["PayloadDescription"]
    assert mail["EmailAccountDescription"] == "me@example.test"
    assert mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["EmailAddress"] == "me@example.test"
    for side, port in (("Incoming", 993), ("Outgoing", 465)):
        assert mail[f"{side}MailServerAuthentication"] == "EmailAuthPassword"
        assert mail[f"{side}MailServerHostName"] == "mx.example.test"
        assert mail[f"{side}MailServerPortNumber"] == port
        assert mail[f"{side}MailServerUseSSL"] is True
        assert mail[f"{side}MailServerUsername"] == "me@example.test"
    assert mail["OutgoingPasswordSameAsIncomingPassword"] is True
    assert mail["PreventMove"] is False
    assert mail["PreventAppSheet"] is False
    assert mail["SMIMEEnabled"] is False
    # No password in the file, under any name.
    assert not any("Password" in key and key != "OutgoingPasswordSameAsIncomingPassword"
                   for key in mail)


def test_apple_uuids_are_stable_per_address_and_distinct(advertised):
    first = plistlib.loads(apple_profile(advertised, "me@example.test"))
    again = plistlib.loads(apple_profile(advertised, "me@example.test"))
    other = plistlib.loads(apple_profile(advertised, "you@example.test"))
    ids = [first["PayloadUUID"], first["PayloadContent"][0]["PayloadUUID"]]
    assert ids == [again["PayloadUUID"], again["PayloadContent"][0]["PayloadUUID"]]
    assert len(set(ids)) == 2
    assert not set(ids) & {other["PayloadUUID"], other["PayloadContent"][0]["PayloadUUID"]}
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 5 and str(parsed).upper() == value


def test_apple_profile_pop3_starttls_only_server():
    found = client_settings(config_of(listeners(("pop3", "0.0.0.0:110"),
                                                ("submission", "0.0.0.0:587"))))
    assert found is not None
    (mail,) = plistlib.loads(apple_profile(found, "me@example.test"))["PayloadContent"]
    assert mail["EmailAccountType"] == "EmailTypePOP"
    assert (mail["IncomingMailServerPortNumber"], mail["IncomingMailServerUseSSL"]) == (110, True)
    assert (mail["OutgoingMailServerPortNumber"], mail["OutgoingMailServerUseSSL"]) == (587, True)


def test_apple_profile_for_localserve_hostname():
    config = config_of(listeners(("imaps", "127.0.0.1:1993"), ("submissions", "127.0.0.1:1465"))
                       .replace("mx.example.test", "localhost").replace("example.test",
                                                                        "localhost"))
    found = client_settings(config)
    assert found is not None
    profile = plistlib.loads(apple_profile(found, our_address(config, "demo@localhost")))
    assert profile["PayloadIdentifier"].startswith("localhost.mailkeep.profile.")
    (mail,) = profile["PayloadContent"]
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]) == \
        ("localhost", 1993)


def plistutil() -> str:
    path = shutil.which("plistutil")
    if path is None:
        pytest.fail("plistutil is missing: install Debian's libplist-utils (make apt-deps)")
    return path


def test_apple_profile_is_read_by_libplist(advertised, tmp_path):
    # libplist parses the XML and writes the binary form; plistlib reads that back: the
    # same tree, from an independent parser.
    source = tmp_path / "profile.mobileconfig"
    source.write_bytes(apple_profile(advertised, ODD_BUT_VALID[0]))
    binary = tmp_path / "profile.bplist"
    result = subprocess.run([plistutil(), "-i", str(source), "-o", str(binary), "-f", "bin"],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert binary.read_bytes().startswith(b"bplist00")
    assert plistlib.loads(binary.read_bytes()) == plistlib.loads(source.read_bytes())


# -- odd addresses in every document -------------------------------------------------------------


@pytest.mark.parametrize("text", ODD_BUT_VALID)
def test_odd_addresses_are_escaped_and_keep_every_document_well_formed(full, advertised, text):
    address = our_address(full, text)
    _account, protocols = protocols_of(outlook_response(advertised, address))
    assert {p["LoginName"] for p in protocols} == {address}
    profile = plistlib.loads(apple_profile(advertised, address))
    (mail,) = profile["PayloadContent"]
    assert mail["EmailAddress"] == mail["IncomingMailServerUsername"] == address
    assert set(mail) == APPLE_MAIL_KEYS
    provider = parse_thunderbird(thunderbird_config(advertised, address.rpartition("@")[2]))
    assert len(provider.findall("incomingServer")) == 3


# -- fuzzing: hostile input ends in NotOurs / AutodiscoverError, never anything else --------

_XML_PIECES = st.sampled_from([
    "<Autodiscover>", "</Autodiscover>", "<Request>", "</Request>", "<EMailAddress>",
    "</EMailAddress>", "<AcceptableResponseSchema>", "</AcceptableResponseSchema>",
    f'<Autodiscover xmlns="{AUTODISCOVER_REQUEST_NS}">', OUTLOOK_RESPONSE_NS,
    "me@example.test", "&amp;", "&lol;", "<!DOCTYPE a>", "<![CDATA[x]]>", "<?pi x?>",
    "<!-- c -->", "\x00", "\ud800", "é", " ", "<", ">", "&", '"'])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=512),
                 st.lists(_XML_PIECES, max_size=24).map(lambda p: "".join(p).encode(
                     "utf-8", "surrogatepass"))))
def test_autodiscover_parser_fuzz(body):
    try:
        address = parse_autodiscover_request(body)
    except AutodiscoverError as exc:
        assert exc.code in (ERROR_INVALID_REQUEST, ERROR_PROVIDER_UNAVAILABLE)
    else:
        assert isinstance(address, str) and address


_ADDRESSES = st.one_of(
    st.text(max_size=400),
    st.tuples(st.text(max_size=80), st.sampled_from(
        ["example.test", "EXAMPLE.test", "bücher.test", "elsewhere.test", "example.test."])
    ).map(lambda parts: f"{parts[0]}@{parts[1]}"))


@settings(max_examples=500, deadline=None)
@given(_ADDRESSES)
def test_address_check_fuzz(full, advertised, text):
    try:
        address = our_address(full, text)
    except NotOurs:
        return
    # Whatever was accepted goes into every document, unchanged, and keeps it well-formed.
    _account, protocols = protocols_of(outlook_response(advertised, address))
    assert {p["LoginName"] for p in protocols} == {address}
    (mail,) = plistlib.loads(apple_profile(advertised, address))["PayloadContent"]
    assert mail["EmailAddress"] == address


def test_profile_signer_uses_real_certificates_only(tmp_path):
    from types import SimpleNamespace

    from cryptography.hazmat.primitives.serialization import pkcs7

    from mailkeep.servers.tls import CertificatePair, generate_self_signed
    from mailkeep.web.autoconfig import ProfileSigner

    signer = ProfileSigner()
    pairs = generate_self_signed(tmp_path / "tls", "mx.example.test")
    assert signer.sign(b"<plist/>", None) is None
    assert signer.sign(b"<plist/>", SimpleNamespace(source="self-signed", pairs=pairs)) is None
    # The same files presented as certificates from a CA: signed, RSA preferred.
    signed = signer.sign(b"<plist/>", SimpleNamespace(source="files", pairs=list(pairs)))
    assert signed is not None and b"<plist/>" in signed
    (cert,) = pkcs7.load_der_pkcs7_certificates(signed)
    rsa_pair = next(p for p in pairs if "rsa" in p.cert.name)
    assert cert == x509.load_pem_x509_certificate(rsa_pair.cert.read_bytes())
    # A key that cannot be read leaves the profile unsigned rather than failing.
    broken = [CertificatePair(pairs[0].cert, tmp_path / "missing.key")]
    assert ProfileSigner().sign(b"<plist/>", SimpleNamespace(source="files", pairs=broken)) \
        is None
