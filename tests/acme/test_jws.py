"""JWS, JWK thumbprints and key authorizations against the RFCs' own examples."""

from __future__ import annotations

import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mailkeep.acme.jws import (
    AccountKey,
    b64url,
    b64url_decode,
    jwk_thumbprint,
    key_authorization,
    signed_request,
)

# RFC 7638 §3.1: the example RSA key and its thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
         "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
         "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
         "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnq"
         "DKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rfc7638_example_thumbprint():
    assert jwk_thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_thumbprint_ignores_optional_members_and_their_order():
    reordered = {k: RFC7638_JWK[k] for k in ("e", "n", "kty")} | {"use": "sig"}
    assert jwk_thumbprint(reordered) == RFC7638_THUMBPRINT


def test_thumbprint_refuses_unknown_or_incomplete_keys():
    with pytest.raises(ValueError, match="unknown JWK key type"):
        jwk_thumbprint({"kty": "OKP", "x": "abc"})
    with pytest.raises(ValueError, match="lacks n"):
        jwk_thumbprint({"kty": "RSA", "e": "AQAB"})


def test_key_authorization_is_token_dot_thumbprint():
    # RFC 8555 §8.1, with the RFC 7638 key as the account key.
    token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
    assert key_authorization(token, jwk_thumbprint(RFC7638_JWK)) == \
        "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA." + RFC7638_THUMBPRINT


def test_base64url_has_no_padding_and_round_trips():
    for data in (b"", b"\xff", b"\xfb\xff", b"\x00\x01\x02", bytes(range(256))):
        text = b64url(data)
        assert "=" not in text and "+" not in text and "/" not in text
        assert b64url_decode(text) == data
    for bad in ("a", "ab=", "a+b/", "abc d", "é"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


def test_account_key_jwk_has_fixed_length_coordinates_and_matching_thumbprint():
    key = AccountKey.generate()
    assert set(key.jwk) == {"crv", "kty", "x", "y"}
    assert key.jwk["kty"] == "EC" and key.jwk["crv"] == "P-256"
    assert len(b64url_decode(key.jwk["x"])) == 32 and len(b64url_decode(key.jwk["y"])) == 32
    assert key.thumbprint == jwk_thumbprint(key.jwk)
    again = AccountKey.from_pem(key.to_pem())
    assert again.jwk == key.jwk


def test_account_key_must_be_p256():
    with pytest.raises(ValueError, match="P-256"):
        AccountKey(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ValueError, match="P-256"):
        AccountKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a usable private key"):
        AccountKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def _verify(key: AccountKey, body: bytes) -> tuple[dict, bytes]:
    """Check an ES256 flattened JWS as a CA would; return (protected header, payload)."""
    jws = json.loads(body)
    assert set(jws) == {"protected", "payload", "signature"}
    signature = b64url_decode(jws["signature"])
    assert len(signature) == 64  # RFC 7518 §3.4: R || S, 32 octets each
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                               int.from_bytes(signature[32:], "big"))
    signing_input = f"{jws['protected']}.{jws['payload']}".encode("ascii")
    key.private_key.public_key().verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    return json.loads(b64url_decode(jws["protected"])), b64url_decode(jws["payload"])


def test_new_account_request_carries_the_key_and_verifies():
    key = AccountKey.generate()
    body = signed_request(key, "https://ca.test/new-acct", "nonce-1",
                          {"termsOfServiceAgreed": True}, kid=None)
    header, payload = _verify(key, body)
    assert header == {"alg": "ES256", "nonce": "nonce-1", "url": "https://ca.test/new-acct",
                      "jwk": key.jwk}
    assert json.loads(payload) == {"termsOfServiceAgreed": True}


def test_account_request_names_the_account_and_post_as_get_is_empty():
    key = AccountKey.generate()
    body = signed_request(key, "https://ca.test/order/1", "nonce-2", None,
                          kid="https://ca.test/acct/7")
    header, payload = _verify(key, body)
    assert header["kid"] == "https://ca.test/acct/7" and "jwk" not in header
    assert payload == b""  # RFC 8555 §6.3


def test_a_tampered_request_does_not_verify():
    key = AccountKey.generate()
    jws = json.loads(signed_request(key, "https://ca.test/x", "n", {"a": 1}, kid="k"))
    jws["payload"] = b64url(b'{"a":2}')
    with pytest.raises(InvalidSignature):
        _verify(key, json.dumps(jws).encode())
