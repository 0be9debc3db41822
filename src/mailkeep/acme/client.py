"""The ACME protocol over HTTPS (RFC 8555), as a client of one CA directory.

One :class:`AcmeClient` is one conversation with the CA: it fetches the directory
(§7.1.1), keeps a Replay-Nonce for the next request (§6.5, §7.2) and retries a request the
CA refused with ``badNonce`` (§6.5: "the client SHOULD retry"), finds or creates the
account for its key (§7.3, §7.3.1), and :meth:`AcmeClient.obtain` runs one order to the
end: newOrder (§7.4), the authorizations and their challenges (§7.5, §7.5.1) answered
through a :class:`ChallengeResponder`, finalization with a CSR (§7.4), polling with
Retry-After (§7.4, §8.2) and the certificate download (§7.4.2).

Limits: every request has a time limit (:data:`REQUEST_TIMEOUT`), an order as a whole too
(:data:`ORDER_TIMEOUT`); response bodies are read up to :data:`MAX_RESPONSE_SIZE`. The CA's
TLS certificate is verified against the system's roots plus the [acme] ``ca_file``.
Failures are :class:`~mailkeep.acme.messages.AcmeError` subclasses whose message names the
step, the CA's problem type and its detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives import serialization

from mailkeep import __version__
from mailkeep.acme.certs import (
    CertificateInfo,
    PrivateKey,
    make_csr,
    parse_chain,
    public_key_matches,
)
from mailkeep.acme.jws import AccountKey, b64url, key_authorization, signed_request
from mailkeep.acme.messages import (
    AUTHORIZATION_FINAL,
    AcmeError,
    AcmeProblemError,
    AcmeProtocolError,
    AcmeUnreachable,
    Authorization,
    Challenge,
    Directory,
    Order,
    clean_text,
    parse_problem,
    retry_after,
)
from mailkeep.logfmt import log
from mailkeep.web.challenges import TOKEN

logger = logging.getLogger("mailkeep.acme")

USER_AGENT = f"mailkeep/{__version__} (ACME client)"  # RFC 8555 §6.1: clients MUST send one
#: Largest response body read (JSON objects, a certificate chain).
MAX_RESPONSE_SIZE = 1 << 20
#: Time limit of one HTTP request, connection and body included (seconds).
REQUEST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
#: How often a request refused with badNonce is retried with a fresh nonce.
BAD_NONCE_RETRIES = 5
#: Time limit of a whole order: authorizations, validation, issuance (seconds).
ORDER_TIMEOUT = 300.0
#: Polling intervals: the CA's Retry-After, bounded; without one, growing from the first.
FIRST_POLL_INTERVAL = 1.0
MAX_POLL_INTERVAL = 30.0

JOSE_JSON = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"


class ChallengeResponder(Protocol):
    """What answers challenges while the CA validates (the server's listeners, or the
    temporary ones of :func:`mailkeep.acme.manager.obtain_standalone`)."""

    #: Challenge types it can answer, most preferred first ("http-01", "tls-alpn-01").
    challenge_types: tuple[str, ...]

    def present(self, challenge_type: str, name: str, token: str,
                key_authorization: str) -> None: ...

    def cleanup(self, challenge_type: str, name: str, token: str) -> None: ...


class AuthorizationFailed(AcmeError):
    """The CA could not validate some names; ``failures`` maps each to the reason."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        super().__init__("validation failed for " + "; ".join(
            f"{name}: {reason}" for name, reason in self.failures.items()))


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self, what: str) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise AcmeProtocolError(f"the CA's {what} is not JSON") from None

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the CA's HTTPS against the system roots, plus ``ca_file`` (a private CA)."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class AcmeClient:
    """One conversation with the CA at ``directory_url`` under ``account_key``; use as an
    async context manager."""

    def __init__(self, directory_url: str, account_key: AccountKey, *,
                 ca_file: Path | None = None, email: str | None = None) -> None:
        self.directory_url = directory_url
        self.key = account_key
        self.ca_file = ca_file
        self.email = email
        self.account_url: str | None = None
        self._directory: Directory | None = None
        self._nonce: str | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        try:
            context = client_ssl_context(self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise AcmeError(f"cannot read [acme] ca_file {self.ca_file}: {exc}") from None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=4),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=CONNECT_TIMEOUT),
            headers={"User-Agent": USER_AGENT},
        )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP ---------------------------------------------------------------------------

    async def _request(self, method: str, url: str, *, body: bytes | None = None,
                       accept: str | None = None) -> Response:
        """One HTTP exchange; every failure to get an answer becomes AcmeUnreachable."""
        assert self._session is not None, "use AcmeClient as an async context manager"
        headers = {"Content-Type": JOSE_JSON} if body is not None else {}
        if accept:
            headers["Accept"] = accept
        where = _origin(url)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT), \
                    self._session.request(method, url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                data = await _read_limited(resp)
                response = Response(resp.status, resp.headers, data)
        except TimeoutError:
            raise AcmeUnreachable(f"cannot reach the ACME server {where}: no answer within "
                                  f"{REQUEST_TIMEOUT:g}s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AcmeUnreachable(
                f"cannot reach the ACME server {where}: its TLS certificate is not trusted "
                f"({exc.certificate_error}); for a private CA set [acme] ca_file") from None
        except aiohttp.ClientConnectorError as exc:
            error = exc.os_error
            reason = os.strerror(error.errno) if error is not None and error.errno else str(exc)
            raise AcmeUnreachable(f"cannot reach the ACME server {where}: {reason}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AcmeUnreachable(f"cannot reach the ACME server {where}: "
                                  f"{clean_text(str(exc), 200) or type(exc).__name__}") from None
        nonce = response.headers.get("Replay-Nonce")
        if nonce and TOKEN.fullmatch(nonce):  # RFC 8555 §6.5.1: base64url
            self._nonce = nonce
        return response

    async def directory(self) -> Directory:
        if self._directory is None:
            resp = await self._request("GET", self.directory_url)
            if resp.status != 200:
                raise AcmeUnreachable(f"the ACME directory {self.directory_url} answered "
                                      f"HTTP {resp.status}; check [acme] directory")
            self._directory = Directory.from_json(resp.json("directory"))
            if self._directory.external_account_required:
                raise AcmeError("this CA requires external account binding (RFC 8555 "
                                "§7.3.4), which Mailkeep does not support; use another CA")
        return self._directory

    async def _fresh_nonce(self) -> str:
        if self._nonce is not None:
            nonce, self._nonce = self._nonce, None
            return nonce
        # RFC 8555 §7.2: HEAD newNonce answers with a Replay-Nonce.
        await self._request("HEAD", (await self.directory()).new_nonce)
        if self._nonce is None:
            raise AcmeProtocolError("the CA's newNonce answered without a Replay-Nonce")
        nonce, self._nonce = self._nonce, None
        return nonce

    async def post(self, url: str, payload: Mapping[str, Any] | None, *, what: str,
                   use_jwk: bool = False, accept: str | None = None) -> Response:
        """A signed POST (``payload=None``: POST-as-GET, RFC 8555 §6.3); raises
        AcmeProblemError with ``what`` as context when the CA answers an error."""
        if not use_jwk and self.account_url is None:
            await self.register()
        for attempt in range(BAD_NONCE_RETRIES + 1):
            body = signed_request(self.key, url, await self._fresh_nonce(), payload,
                                  kid=None if use_jwk else self.account_url)
            resp = await self._request("POST", url, body=body, accept=accept)
            if resp.status < 400:
                return resp
            problem = parse_problem(resp.body, resp.status)
            # RFC 8555 §6.5: a badNonce answer carries a fresh nonce; retry with it.
            if problem.is_type("badNonce") and attempt < BAD_NONCE_RETRIES:
                log(logger, "CA refused the nonce, retrying", logging.DEBUG, url=url)
                continue
            raise AcmeProblemError(problem, what)
        raise AssertionError("unreachable")

    # -- account ------------------------------------------------------------------------

    async def register(self) -> str:
        """Find or create the account of our key (RFC 8555 §7.3; a key that already has an
        account gets it back with 200, §7.3.1); returns the account URL."""
        if self.account_url is not None:
            return self.account_url
        directory = await self.directory()
        contact = [f"mailto:{self.email}"] if self.email else []
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if contact:
            payload["contact"] = contact
        resp = await self.post(directory.new_account, payload, use_jwk=True,
                               what="registering the ACME account")
        if not resp.location.startswith("https://"):
            raise AcmeProtocolError("the CA's newAccount answer has no account URL")
        account = resp.json("account")
        status = account.get("status") if isinstance(account, Mapping) else None
        if status != "valid":
            raise AcmeError(f"the ACME account {resp.location} is {status or 'unusable'}; "
                            "delete data_dir/acme/account.key to start a new one")
        self.account_url = resp.location
        if resp.status == 201:
            log(logger, "ACME account created", account=self.account_url,
                terms=directory.terms_of_service or None)
        elif sorted(account.get("contact") or []) != sorted(contact) and contact:
            # RFC 8555 §7.3.2: update the contact of an existing account.
            await self.post(self.account_url, {"contact": contact},
                            what="updating the ACME account's contact")
        return self.account_url

    # -- one order ----------------------------------------------------------------------

    async def obtain(self, names: list[str], key: PrivateKey, responder: ChallengeResponder,
                     *, timeout: float = ORDER_TIMEOUT) -> bytes:
        """Order a certificate for ``names`` with ``key`` and return its PEM chain (leaf
        first). Raises AuthorizationFailed naming every name the CA could not validate."""
        if not names:
            raise ValueError("no names to order")
        deadline = asyncio.get_running_loop().time() + timeout
        directory = await self.directory()
        identifiers = [{"type": "dns", "value": name} for name in names]
        resp = await self.post(directory.new_order, {"identifiers": identifiers},
                               what=f"ordering a certificate for {', '.join(names)}")
        order_url = resp.location
        if not order_url.startswith("https://"):
            raise AcmeProtocolError("the CA's newOrder answer has no order URL")
        order = Order.from_json(resp.json("order"))
        if sorted(order.identifiers) != sorted(names):
            raise AcmeProtocolError(f"the CA's order is for {', '.join(order.identifiers)}, "
                                    f"not {', '.join(names)}")
        if order.status == "pending":
            await self._authorize(order, responder, deadline)
            order = await self._poll_order(order_url, {"pending"}, deadline)
        if order.status == "ready":
            # RFC 8555 §7.4: finalize with a CSR (DER, base64url) for exactly these names.
            resp = await self.post(order.finalize, {"csr": b64url(make_csr(key, names))},
                                   what="finalizing the order")
            order = Order.from_json(resp.json("order"))
        if order.status == "processing":
            order = await self._poll_order(order_url, {"processing"}, deadline)
        if order.status != "valid" or not order.certificate:
            reason = order.error.describe() if order.error else f"status {order.status}"
            raise AcmeError(f"the CA did not issue the certificate: {reason}")
        resp = await self.post(order.certificate, None, accept=PEM_CHAIN,
                               what="downloading the certificate")
        return _checked_chain(resp.body, key, names)

    async def _authorize(self, order: Order, responder: ChallengeResponder,
                         deadline: float) -> None:
        """Answer every pending authorization of ``order`` and wait until each is settled
        (RFC 8555 §7.5.1), so one run learns every name that fails."""
        failures: dict[str, str] = {}
        started: list[tuple[str, Authorization, Challenge]] = []
        try:
            for url in order.authorizations:
                authz = await self._authorization(url)
                name = authz.identifier
                if authz.status == "valid":
                    continue  # reused from an earlier order (RFC 8555 §7.1.3)
                if authz.status != "pending":
                    failures[name] = _authz_failure(authz)
                    continue
                challenge = _pick_challenge(authz, responder.challenge_types)
                if challenge is None:
                    offered = ", ".join(c.type for c in authz.challenges) or "none"
                    failures[name] = (f"the CA offers no challenge Mailkeep can answer here "
                                      f"(offered: {offered}; answerable: "
                                      f"{', '.join(responder.challenge_types)})")
                    continue
                responder.present(challenge.type, name, challenge.token,
                                  key_authorization(challenge.token, self.key.thumbprint))
                started.append((url, authz, challenge))
                if challenge.status == "pending":
                    # RFC 8555 §7.5.1: an empty JSON object tells the CA to validate.
                    await self.post(challenge.url, {},
                                    what=f"starting the {challenge.type} challenge for {name}")
            waiting = {url: authz.identifier for url, authz, _ in started}
            interval = FIRST_POLL_INTERVAL
            while waiting:
                hints: list[float] = []
                for url, name in list(waiting.items()):
                    authz, after = await self._authorization_with_hint(url)
                    if after is not None:
                        hints.append(after)
                    if authz.status in AUTHORIZATION_FINAL:
                        del waiting[url]
                        if authz.status != "valid":
                            failures[name] = _authz_failure(authz)
                if waiting:
                    interval = await _pause(max(hints, default=None), interval, deadline,
                                            "validation of " + ", ".join(waiting.values()))
        finally:
            for _url, authz, challenge in started:
                responder.cleanup(challenge.type, authz.identifier, challenge.token)
        if failures:
            raise AuthorizationFailed(failures)

    async def _authorization(self, url: str) -> Authorization:
        return (await self._authorization_with_hint(url))[0]

    async def _authorization_with_hint(self, url: str) -> tuple[Authorization, float | None]:
        resp = await self.post(url, None, what="reading an authorization")
        return (Authorization.from_json(resp.json("authorization")),
                retry_after(resp.headers.get("Retry-After")))

    async def _poll_order(self, url: str, waiting: set[str], deadline: float) -> Order:
        interval = FIRST_POLL_INTERVAL
        while True:
            resp = await self.post(url, None, what="reading the order")
            order = Order.from_json(resp.json("order"))
            if order.status not in waiting:
                return order
            interval = await _pause(retry_after(resp.headers.get("Retry-After")), interval,
                                    deadline, f"the order to leave {order.status}")


def _pick_challenge(authz: Authorization, preferred: tuple[str, ...]) -> Challenge | None:
    for kind in preferred:
        for challenge in authz.challenges:
            if challenge.type == kind and TOKEN.fullmatch(challenge.token) and \
                    challenge.status in ("pending", "processing"):
                return challenge
    return None


def _authz_failure(authz: Authorization) -> str:
    error = authz.error
    return error.describe() if error is not None else f"authorization {authz.status}"


async def _pause(hint: float | None, interval: float, deadline: float, what: str) -> float:
    """Sleep before the next poll: the CA's Retry-After (RFC 8555 §7.4, §8.2) within
    bounds, else ``interval``; returns the next interval. Raises once ``deadline`` passed."""
    loop = asyncio.get_running_loop()
    remaining = deadline - loop.time()
    if remaining <= 0:
        raise AcmeError(f"gave up waiting for {what}: the order took longer than its "
                        "time limit")
    delay = min(max(hint, FIRST_POLL_INTERVAL) if hint is not None else interval,
                MAX_POLL_INTERVAL, remaining)
    await asyncio.sleep(delay)
    return min(interval * 1.5, MAX_POLL_INTERVAL)


def _checked_chain(pem: bytes, key: PrivateKey, names: list[str]) -> bytes:
    """The downloaded chain, re-encoded, once it is certain to be ours: its leaf holds our
    public key and every name we asked for."""
    try:
        chain = parse_chain(pem)
    except ValueError as exc:
        raise AcmeProtocolError(f"the CA's certificate download is unusable: {exc}") from None
    if not public_key_matches(chain[0], key):
        raise AcmeProtocolError("the CA's certificate is not for the key in our request")
    info = CertificateInfo.of(chain[0])
    if not info.covers(names):
        missing = sorted(set(names) - set(info.names))
        raise AcmeProtocolError(f"the CA's certificate lacks {', '.join(missing)}")
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_RESPONSE_SIZE:
        raise AcmeProtocolError(f"the CA's answer from {_origin(str(resp.url))} is larger "
                                f"than {MAX_RESPONSE_SIZE} bytes")
    data = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > MAX_RESPONSE_SIZE:
            raise AcmeProtocolError(f"the CA's answer from {_origin(str(resp.url))} is "
                                    f"larger than {MAX_RESPONSE_SIZE} bytes")
    return bytes(data)


def _origin(url: str) -> str:
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    return clean_text(url, 100)
