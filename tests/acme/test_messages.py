"""Problem documents, Retry-After and the CA's objects, parsed strictly."""

from __future__ import annotations

import datetime
import json

import pytest

from mailkeep.acme.messages import (
    AcmeProblemError,
    AcmeProtocolError,
    Authorization,
    Directory,
    Order,
    parse_problem,
    retry_after,
)


def test_problem_document_with_subproblems():
    # RFC 8555 §6.7.1's example, abridged.
    body = json.dumps({
        "type": "urn:ietf:params:acme:error:malformed",
        "detail": "Some of the identifiers requested were rejected",
        "subproblems": [
            {"type": "urn:ietf:params:acme:error:malformed",
             "detail": "Invalid underscore in DNS name \"_example.org\"",
             "identifier": {"type": "dns", "value": "_example.org"}},
            {"type": "urn:ietf:params:acme:error:rejectedIdentifier",
             "detail": "This CA will not issue for \"example.net\"",
             "identifier": {"type": "dns", "value": "example.net"}},
        ],
    }).encode()
    problem = parse_problem(body, 403)
    assert problem.short_type == "malformed" and problem.status == 403
    assert problem.is_type("malformed") and not problem.is_type("badNonce")
    assert [s.identifier for s in problem.subproblems] == ["_example.org", "example.net"]
    text = str(AcmeProblemError(problem, "ordering a certificate"))
    assert text.startswith("ordering a certificate: the CA answered malformed: Some of")
    assert "example.net: rejectedIdentifier: This CA will not issue" in text


def test_problem_from_a_web_page_or_garbage_is_still_readable():
    problem = parse_problem(b"<html><body>502 Bad Gateway</body></html>", 502)
    assert problem.type == "about:blank" and "HTTP 502" in problem.detail
    assert parse_problem(b"[1, 2]", 500).detail == "HTTP 500"
    assert parse_problem(json.dumps({"type": 5, "detail": ["x"]}).encode()).type == \
        "about:blank"


def test_problem_text_is_one_bounded_line():
    body = json.dumps({"type": "urn:ietf:params:acme:error:caa",
                       "detail": "line one\r\nline two\x1b[31m" + "x" * 5000}).encode()
    detail = parse_problem(body).detail
    assert "\n" not in detail and "\x1b" not in detail
    assert len(detail) <= 503 and detail.endswith("...")


def test_retry_after_seconds_date_and_nonsense():
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
    assert retry_after("120", now) == 120.0
    assert retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None
    assert retry_after("", now) is None


DIRECTORY = {
    "newNonce": "https://ca.test/nonce", "newAccount": "https://ca.test/acct",
    "newOrder": "https://ca.test/order", "revokeCert": "https://ca.test/revoke",
    "meta": {"termsOfService": "https://ca.test/tos", "externalAccountRequired": False},
}


def test_directory():
    d = Directory.from_json(DIRECTORY)
    assert d.new_order == "https://ca.test/order" and d.terms_of_service == "https://ca.test/tos"
    assert not d.external_account_required
    with pytest.raises(AcmeProtocolError, match="newNonce"):
        Directory.from_json({k: v for k, v in DIRECTORY.items() if k != "newNonce"})
    with pytest.raises(AcmeProtocolError, match="not an https URL"):
        Directory.from_json(DIRECTORY | {"newOrder": "http://ca.test/order"})
    with pytest.raises(AcmeProtocolError, match="not a JSON object"):
        Directory.from_json(["newNonce"])


def test_order_and_authorization():
    order = Order.from_json({
        "status": "pending", "expires": "2026-01-08T00:00:00Z",
        "identifiers": [{"type": "dns", "value": "MX.example.org"}],
        "authorizations": ["https://ca.test/authz/1"],
        "finalize": "https://ca.test/order/1/finalize"})
    assert order.identifiers == ("mx.example.org",) and order.certificate == ""
    authz = Authorization.from_json({
        "status": "invalid", "identifier": {"type": "dns", "value": "mx.example.org"},
        "challenges": [
            {"type": "http-01", "url": "https://ca.test/chall/1", "status": "invalid",
             "token": "DGyRejmCefe7v4NfDGDKfA",
             "error": {"type": "urn:ietf:params:acme:error:connection",
                       "detail": "Connection refused"}},
            {"type": "dns-01", "url": "https://ca.test/chall/2", "status": "pending",
             "token": "DGyRejmCefe7v4NfDGDKfB"}]})
    assert authz.error is not None and authz.error.describe() == "connection: Connection refused"
    with pytest.raises(AcmeProtocolError, match="not a DNS name"):
        Order.from_json({"status": "pending", "identifiers": [{"type": "ip", "value": "::1"}],
                         "authorizations": [], "finalize": "https://ca.test/f"})
    with pytest.raises(AcmeProtocolError, match="identifiers or authorizations"):
        Order.from_json({"status": "pending", "identifiers": [],
                         "authorizations": ["http://plain.test/a"], "finalize": "https://x/f"})
    with pytest.raises(AcmeProtocolError, match="challenges"):
        Authorization.from_json({"status": "pending",
                                 "identifier": {"type": "dns", "value": "a.test"}})
