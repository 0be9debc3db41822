"""The sans-IO SCRAM server: RFC test vectors, channel binding, parser robustness."""

from __future__ import annotations

import base64

import pytest
import scramp
import scramp.core
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.sasl.common import MalformedResponse, SaslLimits
from mailkeep.sasl.credentials import ScramVerifier, make_scram_verifier
from mailkeep.sasl.scram import (
    ScramRejected,
    ScramServer,
    encode_saslname,
    parse_client_final,
    parse_client_first,
    usable_channel_bindings,
)

EXPORTER = b"\x11" * 32
END_POINT = b"\x22" * 32


def rfc_verifier(mechanism: str, salt_b64: str) -> ScramVerifier:
    return make_scram_verifier("pencil", mechanism, 4096, salt=base64.b64decode(salt_b64))


def test_rfc_5802_section_5_scram_sha_1_example():
    server = ScramServer("SCRAM-SHA-1", channel_bindings={}, server_nonce="3rfcNHYJY1ZVvWVs7j")
    first = server.receive_client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
    assert first.username == "user" and first.cbind_flag == "n"
    assert server.server_first(rfc_verifier("SCRAM-SHA-1", "QSXCR+Q6sek8bf92")) == (
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    assert server.receive_client_final(
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    ) == b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="


def test_rfc_7677_section_3_scram_sha_256_example():
    server = ScramServer("SCRAM-SHA-256", channel_bindings={},
                         server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    server.receive_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert server.server_first(rfc_verifier("SCRAM-SHA-256", "W22ZaJ0SNY7soEsUEjb6gQ==")) == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert server.receive_client_final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    ) == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_rfc_7677_vector_with_a_wrong_proof_is_rejected():
    server = ScramServer("SCRAM-SHA-256", channel_bindings={},
                         server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    server.receive_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    server.server_first(make_scram_verifier("not-pencil", "SCRAM-SHA-256", 4096,
                                            salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")))
    with pytest.raises(ScramRejected, match="wrong proof"):
        server.receive_client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")


def run_scramp(mechanism: str, *, password: str = "correct horse", stored_password: str = "correct horse",
               client_mechanisms: list[str] | None = None, client_binding=None,
               server_bindings: dict[str, bytes] | None = None) -> bytes:
    """A full exchange between scramp's client and our server; returns server-final."""
    client = scramp.ScramClient(client_mechanisms or [mechanism], "me@example.com", password,
                                channel_binding=client_binding)
    server = ScramServer(mechanism, channel_bindings=server_bindings or {}, server_nonce="srvnonce")
    server.receive_client_first(client.get_client_first().encode())
    verifier = make_scram_verifier(stored_password, mechanism.removesuffix("-PLUS"), 4096)
    client.set_server_first(server.server_first(verifier).decode())
    server_final = server.receive_client_final(client.get_client_final().encode())
    client.set_server_final(server_final.decode())  # raises if our signature were wrong
    return server_final


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scramp_client_logs_in(mechanism: str):
    assert run_scramp(mechanism).startswith(b"v=")


def test_scramp_client_with_the_wrong_password_is_rejected():
    with pytest.raises(ScramRejected):
        run_scramp("SCRAM-SHA-256", password="wrong horse")


def test_non_ascii_password_is_normalized_like_the_client_does():
    # scramp applies SASLprep to "I\u00adX" (soft hyphen is mapped to nothing, RFC 4013
    # §2.1); the stored verifier came from the same password written differently.
    assert run_scramp("SCRAM-SHA-256", password="I\u00adX", stored_password="IX")
    assert run_scramp("SCRAM-SHA-256", password="\u2168", stored_password="IX")  # NFKC


@pytest.fixture
def scramp_knows_tls_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    # scramp 1.5 refuses the tls-exporter name although the SCRAM side of it is just
    # bytes (RFC 9266 §2: the TLS layer computes them); let its client send them.
    monkeypatch.setattr(scramp.core.CbName, "SUPPORTED_TYPES",
                        scramp.core.CbName.SUPPORTED_TYPES | {"tls-exporter"})
    monkeypatch.setattr(scramp.core.CbName, "UNSUPPORTED_TYPES", frozenset())


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
@pytest.mark.usefixtures("scramp_knows_tls_exporter")
def test_plus_with_tls_exporter(mechanism: str):
    assert run_scramp(mechanism, client_binding=("tls-exporter", EXPORTER),
                      server_bindings={"tls-exporter": EXPORTER})


def test_plus_with_tls_server_end_point():
    assert run_scramp("SCRAM-SHA-256-PLUS", client_binding=("tls-server-end-point", END_POINT),
                      server_bindings={"tls-server-end-point": END_POINT})


@pytest.mark.usefixtures("scramp_knows_tls_exporter")
def test_plus_with_other_binding_data_is_rejected():
    # A man in the middle terminates TLS: the client's exporter value differs from ours.
    with pytest.raises(ScramRejected, match="channel binding data does not match"):
        run_scramp("SCRAM-SHA-256-PLUS", client_binding=("tls-exporter", b"\x99" * 32),
                   server_bindings={"tls-exporter": EXPORTER})


def test_plus_with_a_type_we_do_not_have_is_malformed():
    with pytest.raises(MalformedResponse, match="unsupported channel binding type"):
        run_scramp("SCRAM-SHA-256-PLUS", client_binding=("tls-unique", b"\x01" * 12),
                   server_bindings={"tls-server-end-point": END_POINT})


def test_downgrade_y_flag_is_rejected_when_plus_was_advertised():
    # The client supports channel binding but saw no -PLUS: someone removed it.
    with pytest.raises(ScramRejected, match="downgrade"):
        run_scramp("SCRAM-SHA-256", client_binding=("tls-server-end-point", END_POINT),
                   server_bindings={"tls-server-end-point": END_POINT})


def test_y_flag_is_fine_when_nothing_was_advertised():
    # Plain TCP: no binding data, no -PLUS offered; "y" is an honest answer.
    assert run_scramp("SCRAM-SHA-256", client_binding=("tls-server-end-point", END_POINT),
                      server_bindings={})


def test_plus_mechanism_without_p_flag_is_rejected():
    server = ScramServer("SCRAM-SHA-256-PLUS", channel_bindings={"tls-exporter": EXPORTER},
                         server_nonce="x")
    with pytest.raises(ScramRejected):
        server.receive_client_first(b"n,,n=me@example.com,r=abc")


def test_p_flag_with_a_non_plus_mechanism_is_malformed():
    server = ScramServer("SCRAM-SHA-256", channel_bindings={"tls-exporter": EXPORTER},
                         server_nonce="x")
    with pytest.raises(MalformedResponse):
        server.receive_client_first(b"p=tls-exporter,,n=me@example.com,r=abc")


def test_client_final_must_repeat_the_gs2_header_and_the_nonce():
    for final in (b"c=eSws,r=abcsrv,p=" + base64.b64encode(b"\0" * 32),  # "y,," instead of "n,,"
                  b"c=biws,r=abcXXX,p=" + base64.b64encode(b"\0" * 32)):
        server = ScramServer("SCRAM-SHA-256", channel_bindings={}, server_nonce="srv")
        server.receive_client_first(b"n,,n=me@example.com,r=abc")
        server.server_first(make_scram_verifier("pw", "SCRAM-SHA-256", 4096))
        with pytest.raises(ScramRejected):
            server.receive_client_final(final)


def test_tls_exporter_is_not_used_below_tls_1_3():
    bindings = {"tls-exporter": EXPORTER, "tls-server-end-point": END_POINT}
    assert usable_channel_bindings(bindings, "TLSv1.3") == bindings
    assert usable_channel_bindings(bindings, "TLSv1.2") == {"tls-server-end-point": END_POINT}
    assert usable_channel_bindings({"tls-exporter": b""}, "TLSv1.3") == {}


def test_client_first_parsing():
    first = parse_client_first(b"n,a=me@example.com,n=me@example.com,r=r1,x=ext")
    assert (first.authzid, first.username, first.nonce) == ("me@example.com", "me@example.com", "r1")
    assert first.gs2_header == b"n,a=me@example.com,"
    assert first.bare == b"n=me@example.com,r=r1,x=ext"
    assert parse_client_first(b"n,,n=a=2Cb=3Dc,r=x").username == "a,b=c"
    plus = parse_client_first(b"p=tls-server-end-point,,n=u,r=x")
    assert (plus.cbind_flag, plus.cbind_type) == ("p", "tls-server-end-point")


@pytest.mark.parametrize("message", [
    b"", b"n", b"n,", b"x,,n=u,r=x", b"n,,r=x,n=u", b"n,,n=u", b"n,,n=,r=x", b"n,,n=u,r=",
    b"n,,n=u=2X,r=x", b"n,,m=ext,n=u,r=x", b"n,b=zz,n=u,r=x", b"p=,,n=u,r=x",
    b"p=a b,,n=u,r=x", b"n,,n=u,r=a b", b"n,,n=\xff,r=x", b"n,,n=u\x00,r=x", b"n,,n=u,r=x,bad",
    b"n,,n=" + b"u" * 256 + b",r=x",
])
def test_malformed_client_first(message: bytes):
    with pytest.raises(MalformedResponse):
        parse_client_first(message)


@pytest.mark.parametrize("message", [
    b"", b"c=biws,r=x", b"r=x,c=biws,p=AA==", b"c=!!,r=x,p=AA==", b"c=biws,r=x,p=A",
    b"c=biws,r=x,p=AA==,x=1", b"c=biws,r=,p=AA==",
])
def test_malformed_client_final(message: bytes):
    with pytest.raises(MalformedResponse):
        parse_client_final(message)


def test_response_size_limit():
    with pytest.raises(MalformedResponse, match="longer than"):
        parse_client_first(b"n,,n=u,r=" + b"x" * 100, SaslLimits(max_response_bytes=50))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_client_first_parser_never_crashes(data: bytes):
    try:
        parse_client_first(data)
    except MalformedResponse:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_client_final_parser_never_crashes(data: bytes):
    try:
        parse_client_final(data)
    except MalformedResponse:
        pass


_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                 min_size=1, max_size=40)
_nonces = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=","),
                  min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(_names, _nonces, st.sampled_from(["n", "y", "p=tls-exporter"]), st.booleans())
def test_client_first_round_trip(name: str, nonce: str, flag: str, with_authzid: bool):
    authzid = f"a={encode_saslname(name)}" if with_authzid else ""
    message = f"{flag},{authzid},n={encode_saslname(name)},r={nonce}".encode()
    first = parse_client_first(message)
    assert first.username == name and first.nonce == nonce
    assert first.authzid == (name if with_authzid else "")
    assert first.gs2_header + first.bare == message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), _nonces, st.binary(min_size=1, max_size=64))
def test_client_final_round_trip(cbind: bytes, nonce: str, proof: bytes):
    b64 = base64.b64encode
    without = b"c=" + b64(cbind) + b",r=" + nonce.encode()
    final = parse_client_final(without + b",p=" + b64(proof))
    assert (final.channel_binding, final.nonce, final.proof) == (cbind, nonce, proof)
    assert final.without_proof == without


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=120))
def test_server_state_machine_never_crashes_on_garbage_final(data: bytes):
    server = ScramServer("SCRAM-SHA-1", channel_bindings={}, server_nonce="srv")
    server.receive_client_first(b"n,,n=me@example.com,r=abc")
    server.server_first(ScramVerifier(4096, b"salt", b"\0" * 20, b"\0" * 20))
    try:
        server.receive_client_final(data)
    except (MalformedResponse, ScramRejected):
        pass
