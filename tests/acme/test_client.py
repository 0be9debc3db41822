"""The ACME client's handling of what a CA may do wrong or on purpose, against a scripted
HTTPS server on loopback: badNonce retries (RFC 8555 §6.5), problem documents, untrusted
TLS, oversized and slow answers. Real issuance is tested against pebble elsewhere."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from tests.support.certs import TestCA
from tests.support.procs import free_port

from mailkeep.acme import client as client_module
from mailkeep.acme.client import MAX_RESPONSE_SIZE, AcmeClient
from mailkeep.acme.jws import AccountKey, b64url_decode
from mailkeep.acme.messages import (
    AcmeError,
    AcmeProblemError,
    AcmeProtocolError,
    AcmeUnreachable,
)

PROBLEM = "application/problem+json"


class ScriptedCA:
    """A directory, newNonce and newAccount whose answers a test sets."""

    def __init__(self, ca: TestCA) -> None:
        self.cert = ca.issue(["localhost"], stem="scripted-ca")
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self.nonce_counter = 0
        #: Answers newAccount gives, in order; the last one repeats.
        self.account_answers: list[tuple[int, dict]] = [(201, {"status": "valid"})]
        self.account_nonces: list[str] = []
        self.directory_delay = 0.0
        self.directory_body: bytes | None = None
        self._runner: web.AppRunner | None = None

    def _nonce(self) -> str:
        self.nonce_counter += 1
        return f"nonce{self.nonce_counter:04d}AAAAAAAAAAAAAAAA"

    async def directory(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.directory_delay)
        if self.directory_body is not None:
            return web.Response(body=self.directory_body, content_type="application/json")
        return web.json_response({"newNonce": f"{self.base}/nonce",
                                  "newAccount": f"{self.base}/account",
                                  "newOrder": f"{self.base}/order"})

    async def nonce(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, headers={"Replay-Nonce": self._nonce()})

    async def account(self, request: web.Request) -> web.StreamResponse:
        jws = await request.json()
        self.account_nonces.append(json.loads(b64url_decode(jws["protected"]))["nonce"])
        status, body = self.account_answers[min(len(self.account_nonces) - 1,
                                                len(self.account_answers) - 1)]
        headers = {"Replay-Nonce": self._nonce()}
        if status < 400:
            headers["Location"] = f"{self.base}/account/1"
            return web.json_response(body, status=status, headers=headers)
        return web.Response(status=status, body=json.dumps(body), content_type=PROBLEM,
                            headers=headers)

    async def __aenter__(self) -> ScriptedCA:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert.cert_file, self.cert.key_file)
        app = web.Application()
        app.router.add_get("/dir", self.directory)
        app.router.add_route("HEAD", "/nonce", self.nonce)
        app.router.add_post("/account", self.account)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
def test_ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "ca")


@pytest.fixture
async def scripted(test_ca: TestCA) -> AsyncIterator[ScriptedCA]:
    async with ScriptedCA(test_ca) as server:
        yield server


def _client(scripted: ScriptedCA, ca_file: Path | None) -> AcmeClient:
    return AcmeClient(f"{scripted.base}/dir", AccountKey.generate(), ca_file=ca_file,
                      email="postmaster@example.org")


BAD_NONCE = (400, {"type": "urn:ietf:params:acme:error:badNonce", "detail": "JWS has an "
                   "invalid anti-replay nonce"})


async def test_bad_nonce_is_retried_with_the_nonce_from_the_error(scripted, test_ca):
    scripted.account_answers = [BAD_NONCE, BAD_NONCE, (201, {"status": "valid"})]
    async with _client(scripted, test_ca.ca_file) as client:
        assert await client.register() == f"{scripted.base}/account/1"
    assert len(scripted.account_nonces) == 3
    # The first nonce came from newNonce; each retry used the one the error carried.
    assert len(set(scripted.account_nonces)) == 3
    assert scripted.nonce_counter == 4  # newNonce once, then one per answer


async def test_bad_nonce_retries_are_bounded(scripted, test_ca):
    scripted.account_answers = [BAD_NONCE]
    async with _client(scripted, test_ca.ca_file) as client:
        with pytest.raises(AcmeProblemError, match="badNonce") as caught:
            await client.register()
    assert len(scripted.account_nonces) == client_module.BAD_NONCE_RETRIES + 1
    assert caught.value.problem.short_type == "badNonce"


async def test_problem_document_names_the_step_type_and_detail(scripted, test_ca):
    scripted.account_answers = [(403, {"type": "urn:ietf:params:acme:error:unauthorized",
                                       "detail": "Account creation disabled"})]
    async with _client(scripted, test_ca.ca_file) as client:
        with pytest.raises(AcmeProblemError) as caught:
            await client.register()
    assert str(caught.value) == ("registering the ACME account: the CA answered "
                                 "unauthorized: Account creation disabled")


async def test_a_deactivated_account_is_a_clear_error(scripted, test_ca):
    scripted.account_answers = [(200, {"status": "deactivated"})]
    async with _client(scripted, test_ca.ca_file) as client:
        with pytest.raises(AcmeError, match=r"is deactivated; delete data_dir/acme/account\.key"):
            await client.register()


async def test_untrusted_ca_certificate_points_at_ca_file(scripted):
    async with _client(scripted, None) as client:
        with pytest.raises(AcmeUnreachable, match=r"TLS certificate is not trusted .*ca_file"):
            await client.directory()


async def test_oversized_answers_are_refused(scripted, test_ca):
    scripted.directory_body = b"{" + b" " * (MAX_RESPONSE_SIZE + 10) + b"}"
    async with _client(scripted, test_ca.ca_file) as client:
        with pytest.raises(AcmeProtocolError, match="larger than"):
            await client.directory()


async def test_slow_answers_time_out(scripted, test_ca, monkeypatch):
    monkeypatch.setattr(client_module, "REQUEST_TIMEOUT", 0.5)
    scripted.directory_delay = 3.0
    async with _client(scripted, test_ca.ca_file) as client:
        with pytest.raises(AcmeUnreachable, match=r"no answer within 0\.5s"):
            await client.directory()


async def test_a_directory_that_is_not_acme(scripted, test_ca):
    scripted.directory_body = b'{"hello": "world"}'
    async with _client(scripted, test_ca.ca_file) as client:
        with pytest.raises(AcmeProtocolError, match="directory has no valid 'newNonce'"):
            await client.directory()


async def test_nobody_listening(test_ca):
    port = free_port()
    client = AcmeClient(f"https://127.0.0.1:{port}/dir", AccountKey.generate(),
                        ca_file=test_ca.ca_file)
    async with client:
        with pytest.raises(AcmeUnreachable) as caught:
            await client.directory()
    assert str(caught.value) == (f"cannot reach the ACME server https://127.0.0.1:{port}: "
                                 "Connection refused")
