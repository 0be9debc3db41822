"""Client autoconfiguration: the server settings a mail client needs, from an address alone.

Three formats, built from one source (the listeners of the current config, see
:func:`client_settings`):

- Thunderbird "autoconfig", ``clientConfig`` version 1.1 (Mozilla's ConfigFileFormat, now
  draft-ietf-mailmaint-autoconfig), also read by Thunderbird for Android/K-9, Evolution,
  KMail and others: ``GET /mail/config-v1.1.xml?emailaddress=A`` on host
  ``autoconfig.DOMAIN``, and ``GET /.well-known/autoconfig/mail/config-v1.1.xml`` on any
  host (Thunderbird asks ``https://DOMAIN/.well-known/...`` too).
- Outlook "POX" autodiscover ([MS-OXDSCLI] §2.2.4: request schema
  ``.../outlook/requestschema/2006``, response schema ``.../outlook/responseschema/2006a``):
  ``POST /autodiscover/autodiscover.xml``, path in any letter case.
- An Apple configuration profile (Apple's "Configuration Profile Reference": a top-level
  ``Configuration`` payload holding one ``com.apple.mail.managed`` payload):
  ``GET /apple/profile.mobileconfig?email=A``, installed by opening it on the iPhone, iPad
  or Mac.

What is advertised: for IMAP, POP3 and submission, the listeners with TLS, as
``config.hostname`` and the listener's port; implicit TLS before STARTTLS (RFC 8314 §3
recommends implicit TLS for both), IMAP before POP3, and never a listener without TLS. A
protocol without such a listener is left out. Authentication is by password inside TLS;
where a format can name something stronger that every account can use, it is named first
(:func:`thunderbird_config`).

Privacy: an address of one of our domains always gets the same document whatever its local
part, so nobody learns from it whether an account exists; the user name in each document
is the address itself. An address of another domain gets a 404 (autodiscover: its error
500). Documents never contain a password, and never name other domains this server hosts.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import logging
import os
import plistlib
import re
import threading
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import defusedxml.ElementTree as SafeET
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from defusedxml import DefusedXmlException

from mailkeep.config import Config
from mailkeep.config.names import InvalidName, canonical_address, display_domain, lookup_domain
from mailkeep.config.schema import Listener
from mailkeep.logfmt import log

logger = logging.getLogger("mailkeep.http")

ClientProtocol = Literal["imap", "pop3", "smtp"]

#: Listener protocols a mail client connects to, and what the client calls them. Port 25
#: ("smtp") is for other servers, never for clients.
CLIENT_PROTOCOLS: dict[str, ClientProtocol] = {
    "imaps": "imap", "imap": "imap",
    "pop3s": "pop3", "pop3": "pop3",
    "submissions": "smtp", "submission": "smtp",
}

#: The longest address accepted in a query or request (RFC 5321 §4.5.3.1.3 allows 254
#: octets; a little room for the quoting and case a client may send).
MAX_ADDRESS_INPUT = 320
#: The largest autodiscover request read; Outlook's is a few hundred bytes.
MAX_AUTODISCOVER_REQUEST = 16 * 1024

# [MS-OXDSCLI] §2.2.4: the namespaces of the request, the response envelope and the
# Outlook (2006a) response.
AUTODISCOVER_REQUEST_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006")
AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a")

# [MS-OXDSCLI] §2.2.4.1.1.3.1 ErrorCode: the codes an Outlook autodiscover error carries.
ERROR_ADDRESS_NOT_FOUND = 500   # "The email address cannot be found."
ERROR_NO_CONFIGURATION = 501    # the address is known but has nothing to configure
ERROR_INVALID_REQUEST = 600     # "Invalid Request": the request XML is malformed
ERROR_PROVIDER_UNAVAILABLE = 601  # the AcceptableResponseSchema is not one we answer
ERROR_MESSAGES = {
    ERROR_ADDRESS_NOT_FOUND: "The email address cannot be found.",
    ERROR_NO_CONFIGURATION: "This server offers no IMAP, POP3 or submission with TLS.",
    ERROR_INVALID_REQUEST: "Invalid Request",
    ERROR_PROVIDER_UNAVAILABLE: "Provider is not available.",
}

APPLE_PROFILE_TYPE = "application/x-apple-aspen-config"
# The PayloadUUIDs of a profile are name-based UUIDs (RFC 9562 §5.5) in this namespace, so
# the same address always gets the same profile and installing it again replaces it.
APPLE_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "mobileconfig.mailkeep.invalid")

# XML 1.0 §2.2 Char: what may appear in a document at all.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# -- what to advertise --------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One server a client connects to: ``host:port``, with implicit TLS or STARTTLS."""

    protocol: ClientProtocol
    host: str
    port: int
    implicit_tls: bool


@dataclass(frozen=True)
class ClientSettings:
    """Everything the documents say, in order of preference."""

    hostname: str
    #: IMAP before POP3, implicit TLS before STARTTLS.
    incoming: tuple[Endpoint, ...]
    #: Submission: implicit TLS (465) before STARTTLS (587).
    outgoing: tuple[Endpoint, ...]
    #: ``[auth] cram_md5`` is on: clients may prove the password without sending it.
    cram_md5: bool = False


def _rank(listener: Listener, index: int) -> tuple[int, int]:
    """Public listeners first (a loopback one is only for this machine), then file order."""
    try:
        loopback = ipaddress.ip_address(listener.host or "").is_loopback
    except ValueError:
        loopback = False
    return (1 if loopback else 0, index)


def client_settings(config: Config) -> ClientSettings | None:
    """The endpoints to advertise, or None when clients could not both read and send mail
    over TLS here (no incoming or no submission listener with TLS)."""
    chosen: dict[tuple[ClientProtocol, bool], tuple[tuple[int, int], Listener]] = {}
    for index, listener in enumerate(config.listeners):
        protocol = CLIENT_PROTOCOLS.get(listener.protocol)
        # No plaintext ports (RFC 8314 §4.1), and no port 0 (its number is only known
        # once bound).
        if protocol is None or listener.tls == "none" or not listener.port:
            continue
        key = (protocol, listener.tls == "implicit")
        rank = _rank(listener, index)
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, listener)

    def endpoints(protocols: Iterable[ClientProtocol]) -> tuple[Endpoint, ...]:
        found = []
        for protocol in protocols:
            for implicit in (True, False):
                entry = chosen.get((protocol, implicit))
                if entry is not None:
                    port = entry[1].port
                    assert port is not None
                    found.append(Endpoint(protocol, config.hostname, port, implicit))
        return tuple(found)

    incoming = endpoints(("imap", "pop3"))
    outgoing = endpoints(("smtp",))
    if not incoming or not outgoing:
        return None
    return ClientSettings(config.hostname, incoming, outgoing, cram_md5=config.auth.cram_md5)


class NotOurs(LookupError):
    """The address or domain is not one this server hosts (or not an address at all)."""


def our_address(config: Config, text: str) -> str:
    """The canonical form of an address of one of our domains; NotOurs otherwise. Any
    local part is accepted: whether an account exists is not revealed."""
    if not text or len(text) > MAX_ADDRESS_INPUT:
        raise NotOurs("not an address")
    try:
        address = canonical_address(text.strip())
    except InvalidName as exc:
        raise NotOurs(str(exc)) from None
    if address.rpartition("@")[2] not in config.domains:
        raise NotOurs("not a domain of this server")
    return address


def our_domain(config: Config, name: str) -> str | None:
    """The canonical form of ``name`` if it is one of our domains."""
    domain = lookup_domain(name) if name and len(name) <= MAX_ADDRESS_INPUT else None
    return domain if domain is not None and domain in config.domains else None


def _xml_safe(value: str) -> str:
    # Every value comes from the config or a validated address; this only makes sure no
    # future caller can produce a document that is not XML.
    if _NOT_XML_CHAR.search(value):
        raise ValueError(f"{value!r} cannot be written into an XML document")
    return value


def _add(parent: ET.Element, tag: str, text: str | int) -> ET.Element:
    """A child element with text (ElementTree escapes &, < and > when serializing)."""
    child = ET.SubElement(parent, tag)
    child.text = _xml_safe(str(text))
    return child


def _serialize(root: ET.Element) -> bytes:
    ET.indent(root)
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n")


# -- Thunderbird ----------------------------------------------------------------------------

#: %EMAILADDRESS% is replaced by the client with the address the user typed.
THUNDERBIRD_USERNAME = "%EMAILADDRESS%"


def thunderbird_config(settings: ClientSettings, domain: str) -> bytes:
    """The clientConfig 1.1 document for ``domain`` (canonical, one of ours).

    ``authentication``: Thunderbird reads the values password-cleartext, password-encrypted
    (its CRAM-MD5), NTLM, GSSAPI and OAuth2, and uses the first one of the list it knows;
    there is no value for SCRAM. With ``[auth] cram_md5`` on, password-encrypted comes
    first (the password itself never crosses the wire), else the password is sent inside
    TLS (password-cleartext; every endpoint listed has TLS).
    """
    methods = (["password-encrypted", "password-cleartext"] if settings.cram_md5
               else ["password-cleartext"])
    root = ET.Element("clientConfig", {"version": "1.1"})
    provider = ET.SubElement(root, "emailProvider", {"id": _xml_safe(domain)})
    _add(provider, "domain", domain)
    _add(provider, "displayName", f"Mail at {display_domain(domain)}")
    _add(provider, "displayShortName", display_domain(domain))

    def server(parent_tag: str, endpoint: Endpoint) -> None:
        element = ET.SubElement(provider, parent_tag, {"type": endpoint.protocol})
        _add(element, "hostname", endpoint.host)
        _add(element, "port", endpoint.port)
        _add(element, "socketType", "SSL" if endpoint.implicit_tls else "STARTTLS")
        _add(element, "username", THUNDERBIRD_USERNAME)
        for method in methods:
            _add(element, "authentication", method)

    for endpoint in settings.incoming:
        server("incomingServer", endpoint)
    for endpoint in settings.outgoing:
        server("outgoingServer", endpoint)
    return _serialize(root)


# -- Outlook (POX autodiscover) -------------------------------------------------------------


class AutodiscoverError(Exception):
    """A request we answer with an autodiscover error document (code from ERROR_MESSAGES)."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(detail or ERROR_MESSAGES[code])
        self.code = code
        self.detail = detail


def _local_name(tag: object) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _namespace(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def parse_autodiscover_request(body: bytes) -> str:
    """The EMailAddress of an Outlook autodiscover request ([MS-OXDSCLI] §2.2.3).

    Raises AutodiscoverError 600 for anything that is not such a request (malformed XML,
    a DTD or entity, a missing address) and 601 when the client accepts only a response
    schema other than Outlook's 2006a (e.g. ActiveSync's "mobilesync").
    """
    if len(body) > MAX_AUTODISCOVER_REQUEST:
        raise AutodiscoverError(ERROR_INVALID_REQUEST, "request too large")
    try:
        # No DTD at all: a request never needs one, and it is how entity bombs arrive.
        root = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise AutodiscoverError(ERROR_INVALID_REQUEST, f"not XML: {exc}") from None
    if _local_name(root.tag) != "Autodiscover" \
            or _namespace(root.tag) not in ("", AUTODISCOVER_REQUEST_NS):
        raise AutodiscoverError(ERROR_INVALID_REQUEST, "not an Outlook autodiscover request")
    request = next((e for e in root if _local_name(e.tag) == "Request"), None)
    if request is None:
        raise AutodiscoverError(ERROR_INVALID_REQUEST, "no Request element")
    fields = {_local_name(e.tag): (e.text or "").strip() for e in request}
    schema = fields.get("AcceptableResponseSchema")
    if schema and schema != OUTLOOK_RESPONSE_NS:
        raise AutodiscoverError(ERROR_PROVIDER_UNAVAILABLE, f"schema {schema[:200]!r}")
    address = fields.get("EMailAddress", "")
    if not address:
        raise AutodiscoverError(ERROR_INVALID_REQUEST, "no EMailAddress")
    return address


def outlook_response(settings: ClientSettings, address: str) -> bytes:
    """The 2006a "settings" response for ``address`` (canonical, of one of our domains):
    one Protocol for each of IMAP, POP3 and SMTP that has an endpoint, the preferred one.

    [MS-OXDSCLI] §2.2.4.1.1.2.x: SSL "on" requires an encrypted connection and Encryption
    says which kind ("SSL": implicit TLS, "TLS": STARTTLS); SPA is Microsoft's NTLM logon,
    which we do not speak; LoginName is the address.
    """
    root = ET.Element("Autodiscover", {"xmlns": AUTODISCOVER_RESPONSE_NS})
    response = ET.SubElement(root, "Response", {"xmlns": OUTLOOK_RESPONSE_NS})
    account = ET.SubElement(response, "Account")
    _add(account, "AccountType", "email")
    _add(account, "Action", "settings")
    best: dict[str, Endpoint] = {}
    for endpoint in (*settings.incoming, *settings.outgoing):
        best.setdefault(endpoint.protocol, endpoint)
    for endpoint in best.values():
        protocol = ET.SubElement(account, "Protocol")
        _add(protocol, "Type", endpoint.protocol.upper())
        _add(protocol, "Server", endpoint.host)
        _add(protocol, "Port", endpoint.port)
        _add(protocol, "DomainRequired", "off")
        _add(protocol, "LoginName", address)
        _add(protocol, "SPA", "off")
        _add(protocol, "SSL", "on")
        _add(protocol, "Encryption", "SSL" if endpoint.implicit_tls else "TLS")
        _add(protocol, "AuthRequired", "on")
        if endpoint.protocol == "smtp":
            # Log in to SMTP with its own LoginName, not "the POP3 credentials".
            _add(protocol, "UsePOPAuth", "off")
            _add(protocol, "SMTPLast", "off")
    return _serialize(root)


def outlook_error(code: int, hostname: str, now: datetime.datetime | None = None) -> bytes:
    """An autodiscover error document ([MS-OXDSCLI] §2.2.4.1.1.3): answered with HTTP 200,
    as Exchange does, so that Outlook reads the code instead of trying the next URL at
    once. ``Id`` identifies the answering server (a checksum of its name)."""
    now = now or datetime.datetime.now(datetime.UTC)
    root = ET.Element("Autodiscover", {"xmlns": AUTODISCOVER_RESPONSE_NS})
    response = ET.SubElement(root, "Response", {"xmlns": OUTLOOK_RESPONSE_NS})
    error = ET.SubElement(response, "Error", {
        "Time": now.strftime("%H:%M:%S.%f"),
        "Id": str(zlib.crc32(hostname.encode("utf-8"))),
    })
    _add(error, "ErrorCode", code)
    _add(error, "Message", ERROR_MESSAGES[code])
    ET.SubElement(error, "DebugData")
    return _serialize(root)


# -- Apple configuration profile ----------------------------------------------------------


def _reverse_dns(hostname: str) -> str:
    return ".".join(reversed(hostname.split(".")))


def apple_uuid(hostname: str, address: str, part: str) -> str:
    """A PayloadUUID that depends only on the server, the address and the payload."""
    return str(uuid.uuid5(APPLE_UUID_NAMESPACE, f"{part}\n{hostname}\n{address}")).upper()


def apple_profile(settings: ClientSettings, address: str) -> bytes:
    """An unsigned configuration profile (XML plist) for ``address`` (canonical, one of
    our domains) with one mail account: the preferred incoming endpoint (IMAP when there is
    one) and the preferred submission endpoint, password authentication inside TLS, the
    address as user name. It holds no password: the device asks for it when the profile
    is installed, once for both servers.

    PayloadIdentifier is the server's name reversed plus the payload's UUID, PayloadUUIDs
    are name-based on (server, address), so installing a newer profile for the same
    address replaces the old one instead of adding a second account.
    """
    incoming, outgoing = settings.incoming[0], settings.outgoing[0]
    domain = address.rpartition("@")[2]
    shown_domain = display_domain(domain)
    prefix = f"{_reverse_dns(settings.hostname)}.mailkeep"
    profile_uuid = apple_uuid(settings.hostname, address, "profile")
    mail_uuid = apple_uuid(settings.hostname, address, "mail")
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{prefix}.mail.{mail_uuid}",
        "PayloadUUID": mail_uuid,
        "PayloadDisplayName": f"Mail ({address})",
        "PayloadDescription": f"The mail account {address} at {settings.hostname}.",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": incoming.host,
        "IncomingMailServerPortNumber": incoming.port,
        # True on a STARTTLS port means STARTTLS; never a plaintext session.
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": outgoing.host,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PreventMove": False,
        "PreventAppSheet": False,
        "SMIMEEnabled": False,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{prefix}.profile.{profile_uuid}",
        "PayloadUUID": profile_uuid,
        "PayloadDisplayName": f"Mail at {shown_domain}",
        "PayloadDescription": (f"Sets up {address} ({incoming.protocol.upper()} and SMTP "
                               f"at {settings.hostname}, TLS only). You are asked for the "
                               "password while installing."),
        "PayloadOrganization": shown_domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


# -- HTTP -------------------------------------------------------------------------------------


def _context_config(request: web.Request) -> Config:
    from mailkeep.web.server import context_of

    return context_of(request).config


def _settings_or_404(config: Config, what: str) -> ClientSettings:
    settings = client_settings(config)
    if settings is None:
        log(logger, "autoconfiguration unavailable: no IMAP/POP3 and submission listener "
            "with TLS", logging.WARNING, document=what)
        raise web.HTTPNotFound(text="This server has no IMAP/POP3 and submission listener "
                                    "with TLS to configure.\n")
    return settings


def _thunderbird_domain(request: web.Request, config: Config, *, any_host: bool) -> str:
    """Which of our domains a Thunderbird request is for: the emailaddress parameter's,
    else the Host's (``autoconfig.DOMAIN``, or on the well-known path also ``DOMAIN``)."""
    from mailkeep.web.server import request_host

    host = request_host(request)
    host_domain = None
    if host.startswith("autoconfig."):
        host_domain = our_domain(config, host.removeprefix("autoconfig."))
    elif any_host:
        host_domain = our_domain(config, host)
    if not any_host and host_domain is None:
        raise web.HTTPNotFound()
    emailaddress = request.query.get("emailaddress")
    if emailaddress:
        try:
            return our_address(config, emailaddress).rpartition("@")[2]
        except NotOurs:
            raise web.HTTPNotFound() from None
    if host_domain is None:
        raise web.HTTPNotFound()
    return host_domain


async def _thunderbird(request: web.Request, *, any_host: bool) -> web.Response:
    config = _context_config(request)
    domain = _thunderbird_domain(request, config, any_host=any_host)
    body = thunderbird_config(_settings_or_404(config, "thunderbird"), domain)
    log(logger, "autoconfig served", logging.DEBUG, format="thunderbird", domain=domain)
    return web.Response(body=body, content_type="application/xml", charset="utf-8")


async def thunderbird_on_autoconfig_host(request: web.Request) -> web.Response:
    return await _thunderbird(request, any_host=False)


async def thunderbird_well_known(request: web.Request) -> web.Response:
    return await _thunderbird(request, any_host=True)


async def outlook_autodiscover(request: web.Request) -> web.Response:
    config = _context_config(request)
    if (request.content_length or 0) > MAX_AUTODISCOVER_REQUEST:
        raise web.HTTPRequestEntityTooLarge(MAX_AUTODISCOVER_REQUEST, request.content_length or 0)
    from mailkeep.web.server import BODY_TIMEOUT

    try:
        # Bounded by the application's client_max_size, and in time: a body trickled in
        # a byte at a time would hold a connection slot.
        async with asyncio.timeout(BODY_TIMEOUT):
            body = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="The request body took too long.\n") from None
    if len(body) > MAX_AUTODISCOVER_REQUEST:
        raise web.HTTPRequestEntityTooLarge(MAX_AUTODISCOVER_REQUEST, len(body))
    try:
        address = our_address(config, parse_autodiscover_request(body))
    except AutodiscoverError as exc:
        log(logger, "autodiscover request refused", logging.DEBUG, code=exc.code,
            reason=exc.detail)
        answer = outlook_error(exc.code, config.hostname)
    except NotOurs:
        answer = outlook_error(ERROR_ADDRESS_NOT_FOUND, config.hostname)
    else:
        settings = client_settings(config)
        if settings is None:
            answer = outlook_error(ERROR_NO_CONFIGURATION, config.hostname)
        else:
            answer = outlook_response(settings, address)
            log(logger, "autoconfig served", logging.DEBUG, format="outlook",
                domain=address.rpartition("@")[2])
    return web.Response(body=answer, content_type="text/xml", charset="utf-8")


class ProfileSigner:
    """Signs profiles with the server's certificate: a CMS SignedData (RFC 5652) holding
    the plist, which iOS and macOS show as "Verified" with the signer's name when the
    certificate chains to a CA they trust (Apple's "Configuration Profile Reference",
    signing). Self-signed certificates would only add a warning, so their profiles stay
    unsigned. The signer's key and chain are re-read when the certificate files change
    (renewals)."""

    #: Signed profiles kept (by certificate and profile): signing costs a private-key
    #: operation, and a profile only changes with the config or the certificate.
    CACHE_SIZE = 1024

    def __init__(self) -> None:
        self._loaded: tuple[tuple[Any, ...], Any, list[Any]] | None = None
        self._cache: OrderedDict[tuple[tuple[Any, ...], bytes], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def sign(self, body: bytes, tls: Any) -> bytes | None:
        """``body`` signed with the current certificate of ``tls`` (a TLSManager), or None
        (no usable certificate: self-signed, unreadable, or an unsupported key)."""
        from mailkeep.servers.tls import SOURCE_SELF_SIGNED

        if tls is None or getattr(tls, "source", SOURCE_SELF_SIGNED) == SOURCE_SELF_SIGNED:
            return None
        pairs = tls.pairs
        # RSA first: every Apple release verifies it; ECDSA otherwise.
        pairs.sort(key=lambda pair: 0 if "rsa" in str(pair.cert).lower() else 1)
        try:
            stamp = tuple((str(p.cert), os.stat(p.cert).st_mtime_ns, str(p.key),
                           os.stat(p.key).st_mtime_ns) for p in pairs)
            cache_key = (stamp, hashlib.sha256(body).digest())
            with self._lock:
                if cache_key in self._cache:
                    self._cache.move_to_end(cache_key)
                    return self._cache[cache_key]
                if self._loaded is None or self._loaded[0] != stamp:
                    self._loaded = (stamp, *self._load(pairs))
                _stamp, key, chain = self._loaded
            builder = (pkcs7.PKCS7SignatureBuilder().set_data(body)
                       .add_signer(chain[0], key, hashes.SHA256()))
            for extra in chain[1:]:
                builder = builder.add_certificate(extra)
            signed = builder.sign(serialization.Encoding.DER, [])
            with self._lock:
                self._cache[cache_key] = signed
                while len(self._cache) > self.CACHE_SIZE:
                    self._cache.popitem(last=False)
            return signed
        except (OSError, ValueError, TypeError) as exc:
            log(logger, "profile left unsigned", logging.WARNING, error=str(exc))
            return None

    @staticmethod
    def _load(pairs: list[Any]) -> tuple[Any, list[Any]]:
        for pair in pairs:
            key = serialization.load_pem_private_key(Path(pair.key).read_bytes(), None)
            if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                chain = x509.load_pem_x509_certificates(Path(pair.cert).read_bytes())
                return key, chain
        raise ValueError("no RSA or ECDSA certificate to sign with")


_signer = ProfileSigner()


async def apple_mobileconfig(request: web.Request) -> web.Response:
    config = _context_config(request)
    try:
        address = our_address(config, request.query.get("email", ""))
    except NotOurs:
        raise web.HTTPNotFound(text="No profile for this address.\n") from None
    body = apple_profile(_settings_or_404(config, "apple"), address)
    from mailkeep.web.server import context_of

    tls_of = context_of(request).services.get("tls")
    signed = await asyncio.to_thread(_signer.sign, body, tls_of() if tls_of else None)
    body = signed or body
    domain = address.rpartition("@")[2]
    log(logger, "autoconfig served", logging.DEBUG, format="apple", domain=domain)
    return web.Response(body=body, content_type=APPLE_PROFILE_TYPE, headers={
        # The domain is a canonical A-label: letters, digits, "-" and "." only.
        "Content-Disposition": f'attachment; filename="{domain}.mobileconfig"'})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/mail/config-v1.1.xml", thunderbird_on_autoconfig_host)
    app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", thunderbird_well_known)
    # Outlook capitalizes the path ("/Autodiscover/Autodiscover.xml"), others do not.
    app.router.add_post(r"/{folder:(?i:autodiscover)}/{file:(?i:autodiscover\.xml)}",
                        outlook_autodiscover)
    app.router.add_get("/apple/profile.mobileconfig", apple_mobileconfig)
