"""The sans-IO SMTP client core: replies, EHLO, commands, transaction plans, content, SASL.

Where possible the client is checked against Mailkeep's own server-side parsers (MAIL/RCPT
parameters, the DATA reader, the SCRAM server): the two were written from the RFCs
separately, so agreement between them is evidence, not a tautology.
"""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.sasl.credentials import make_scram_verifier
from mailkeep.sasl.scram import ScramServer
from mailkeep.smtp.client import (
    BodyEncoder,
    ClientLimits,
    Envelope,
    LoginClient,
    PlainClient,
    Recipient,
    ReplyError,
    ReplyReader,
    SaslClientError,
    ScramClient,
    auth_command,
    auth_mechanisms,
    auth_response,
    bdat_command,
    choose_mechanism,
    decode_challenge,
    ehlo_command,
    mail_command,
    orcpt_parameter,
    parse_ehlo,
    plan_transaction,
    rcpt_command,
    size_limit,
)
from mailkeep.smtp.data import BodyScanner, DataReader
from mailkeep.smtp.params import Advertised, parse_mail_params, parse_rcpt_params
from mailkeep.smtp.reply import Reply

# --- replies --------------------------------------------------------------------------------------


def read_all(data: bytes, limits: ClientLimits | None = None) -> list[Reply]:
    reader = ReplyReader(limits)
    reader.receive_data(data)
    replies = []
    while (reply := reader.next_reply()) is not None:
        replies.append(reply)
    return replies


def test_single_line_reply_with_enhanced_code():
    (reply,) = read_all(b"250 2.1.5 Recipient OK\r\n")
    assert reply == Reply(250, "2.1.5", "Recipient OK")


def test_multi_line_reply_strips_the_enhanced_code_from_every_line():
    (reply,) = read_all(b"550-5.1.1 The mailbox\r\n550-5.1.1 does not\r\n550 5.1.1 exist\r\n")
    assert reply.code == 550
    assert reply.enhanced == "5.1.1"
    assert reply.lines == ("The mailbox", "does not", "exist")


def test_enhanced_code_of_another_class_stays_in_the_text():
    # RFC 3463 §2: the class must repeat the reply's first digit; otherwise it is text.
    (reply,) = read_all(b"250 5.0.0 odd but ok\r\n")
    assert reply.enhanced is None
    assert reply.lines == ("5.0.0 odd but ok",)


def test_reply_with_code_only_and_lf_line_endings():
    replies = read_all(b"250\r\n354 go ahead\n")
    assert [(r.code, r.lines) for r in replies] == [(250, ("",)), (354, ("go ahead",))]


def test_reply_split_across_reads_at_every_position():
    wire = b"250-mx.example\r\n250-PIPELINING\r\n250 2.0.0 SIZE 1000\r\n221 2.0.0 Bye\r\n"
    for cut in range(len(wire) + 1):
        reader = ReplyReader()
        reader.receive_data(wire[:cut])
        got = []
        while (reply := reader.next_reply()) is not None:
            got.append(reply)
        reader.receive_data(wire[cut:])
        while (reply := reader.next_reply()) is not None:
            got.append(reply)
        assert [r.code for r in got] == [250, 221], cut
        assert got[0].lines[1] == "PIPELINING"


def test_byte_by_byte():
    reader = ReplyReader()
    got = []
    for byte in b"220-hello\r\n220 ESMTP ready\r\n":
        reader.receive_data(bytes([byte]))
        reply = reader.next_reply()
        if reply is not None:
            got.append(reply)
    assert [r.lines for r in got] == [("hello", "ESMTP ready")]


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 400 Bad Request\r\n",
    b"099 too small\r\n",
    b"600 too big\r\n",
    b"260 second digit out of range\r\n",
    b"25 short\r\n",
    b"250xjunk\r\n",
    b"\r\n",
])
def test_garbage_is_a_reply_error(garbage):
    with pytest.raises(ReplyError, match="not an SMTP reply"):
        read_all(garbage)


def test_code_change_inside_a_multi_line_reply():
    with pytest.raises(ReplyError, match="code changed"):
        read_all(b"250-first\r\n550 second\r\n")


def test_line_length_limit_applies_before_the_line_ends():
    reader = ReplyReader(ClientLimits(max_reply_line=512))
    reader.receive_data(b"250 " + b"x" * 600)
    with pytest.raises(ReplyError, match="longer than 512"):
        reader.next_reply()


def test_complete_overlong_line_is_refused():
    with pytest.raises(ReplyError, match="longer than 512"):
        read_all(b"250 " + b"x" * 600 + b"\r\n", ClientLimits(max_reply_line=512))


def test_lines_per_reply_and_reply_size_limits():
    with pytest.raises(ReplyError, match="more than 3 lines"):
        read_all(b"250-a\r\n" * 3 + b"250 b\r\n", ClientLimits(max_reply_lines=3))
    with pytest.raises(ReplyError, match="longer than 1024 octets"):
        read_all((b"250-" + b"y" * 500 + b"\r\n") * 3 + b"250 z\r\n",
                 ClientLimits(max_reply_line=512, max_reply_bytes=1024))


def test_controls_and_invalid_utf8_in_text_cannot_forge_lines():
    (reply,) = read_all(b"550 bad\x1b[31m\x00 \xff\xfe text\r\n")
    assert reply.lines[0] == "bad [31m  \ufffd\ufffd text"
    assert "\x1b" not in reply.lines[0] and "\x00" not in reply.lines[0]


def test_discard_buffered_drops_partial_and_complete_replies():
    reader = ReplyReader()
    reader.receive_data(b"220 go\r\n250 injected\r\n250-par")
    assert reader.next_reply().code == 220
    assert reader.discard_buffered() == len(b"250 injected\r\n250-par")
    assert reader.buffered == 0
    reader.receive_data(b"250 real\r\n")
    assert reader.next_reply().lines == ("real",)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6))
def test_fuzz_reader_only_ever_raises_reply_error(data, cuts):
    reader = ReplyReader(ClientLimits(max_reply_line=512, max_reply_lines=5,
                                      max_reply_bytes=1024))
    points = sorted({c % (len(data) + 1) for c in cuts})
    try:
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            reader.receive_data(data[a:b])
            while (reply := reader.next_reply()) is not None:
                assert 200 <= reply.code <= 559
                assert all("\n" not in line and "\r" not in line for line in reply.lines)
    except ReplyError:
        pass


_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([220, 250, 354, 421, 451, 550, 554]),
       st.sampled_from([None, "0.0", "1.5", "7.30", "6.7"]),
       st.lists(_TEXT, min_size=1, max_size=4))
def test_replies_built_by_our_server_parse_back(code, detail, lines):
    enhanced = f"{str(code)[0]}.{detail}" if detail and code not in (220, 354) else None
    # A text that itself starts like an enhanced code would be read as one: not a reply
    # our server builds.
    lines = [line.lstrip("0123456789.") for line in lines]
    sent = Reply(code, enhanced, tuple(lines))
    (got,) = read_all(sent.to_bytes())
    assert (got.code, got.enhanced) == (code, enhanced)
    assert [line.rstrip() for line in got.lines] == [line.rstrip() for line in lines]


# --- EHLO -----------------------------------------------------------------------------------------


def test_parse_ehlo_keywords_and_parameters():
    (reply,) = read_all(b"250-mx.example.org greets you\r\n250-pipelining\r\n"
                        b"250-SIZE 35882577\r\n250-AUTH  PLAIN   LOGIN\r\n250-8BITMIME\r\n"
                        b"250-not a keyword!\r\n250 \r\n")
    caps = parse_ehlo(reply)
    assert caps == {"PIPELINING": "", "SIZE": "35882577", "AUTH": "PLAIN LOGIN",
                    "8BITMIME": "", "NOT": "a keyword!"}
    assert size_limit(caps) == 35882577
    assert auth_mechanisms(caps) == ("PLAIN", "LOGIN")


def test_legacy_auth_equals_only_without_proper_auth():
    (legacy,) = read_all(b"250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250 OK\r\n")
    assert auth_mechanisms(parse_ehlo(legacy)) == ("LOGIN", "PLAIN")
    (both,) = read_all(b"250-mx\r\n250-AUTH=LOGIN\r\n250 AUTH SCRAM-SHA-256 PLAIN\r\n")
    assert auth_mechanisms(parse_ehlo(both)) == ("SCRAM-SHA-256", "PLAIN")


@pytest.mark.parametrize(("params", "limit"), [("", None), ("0", None), ("x", None),
                                               ("1000", 1000), ("1" * 21, None)])
def test_size_limit(params, limit):
    assert size_limit({"SIZE": params}) == limit
    assert size_limit({}) is None


# --- commands -------------------------------------------------------------------------------------


def test_commands_on_the_wire():
    assert ehlo_command("client.example") == b"EHLO client.example\r\n"
    assert mail_command("", ["SIZE=10"]) == b"MAIL FROM:<> SIZE=10\r\n"
    assert rcpt_command("a@b.example", ["NOTIFY=NEVER"]) == b"RCPT TO:<a@b.example> NOTIFY=NEVER\r\n"
    assert bdat_command(0, last=True) == b"BDAT 0 LAST\r\n"
    assert bdat_command(42, last=False) == b"BDAT 42\r\n"
    assert auth_command("PLAIN", b"") == b"AUTH PLAIN =\r\n"   # RFC 4954 §4
    assert auth_command("LOGIN", None) == b"AUTH LOGIN\r\n"
    assert auth_response(None) == b"*\r\n"
    assert auth_response(b"") == b"\r\n"


@pytest.mark.parametrize("evil", ["a@b\r\nRCPT TO:<c@d>", "a@b\nx", "a\x00@b", "x@y\x7f"])
def test_commands_refuse_control_characters(evil):
    with pytest.raises(ValueError, match="control characters"):
        mail_command(evil)
    with pytest.raises(ValueError, match="control characters"):
        rcpt_command(evil)


def test_ehlo_name_must_be_one_word():
    with pytest.raises(ValueError):
        ehlo_command("two words")
    with pytest.raises(ValueError):
        ehlo_command("")


def test_decode_challenge_refuses_non_base64():
    assert decode_challenge(Reply(334, None, "")) == b""
    with pytest.raises(SaslClientError, match="not base64"):
        decode_challenge(Reply(334, None, "not base64!"))


@pytest.mark.parametrize("address", ["plain@example.org", "a+b=c@example.org",
                                     "Dörte@bücher.example", "用户@例子.example"])
def test_orcpt_round_trips_through_our_server_parser(address):
    parameter = orcpt_parameter("rfc822", address)
    assert parameter.isascii()
    parsed = parse_rcpt_params(parameter, Advertised(dsn=True))
    assert parsed.orcpt is not None
    assert parsed.orcpt[1] == address
    assert parsed.orcpt[0] == ("RFC822" if address.isascii() else "UTF-8")


# --- transaction plans ------------------------------------------------------------------------------

FULL = {"PIPELINING": "", "SIZE": "1000000", "8BITMIME": "", "SMTPUTF8": "", "DSN": "",
        "CHUNKING": "", "ENHANCEDSTATUSCODES": ""}


def envelope(**overrides) -> Envelope:
    values = {"sender": "sender@example.org",
              "recipients": (Recipient("one@example.net"), Recipient("two@example.net")),
              "size": 5000}
    values.update(overrides)
    return Envelope(**values)


def test_plan_uses_what_the_peer_offers():
    env = envelope(body="8BITMIME", ret="hdrs", envid="q1+x y",
                   recipients=(Recipient("one@example.net", ("SUCCESS", "failure"),
                                         ("rfc822", "orig@example.net")),))
    plan = plan_transaction(FULL, env)
    assert plan.pipelined and plan.use_bdat and not plan.binary
    assert plan.mail == b"MAIL FROM:<sender@example.org> SIZE=5000 BODY=8BITMIME RET=HDRS ENVID=q1+2Bx+20y\r\n"
    assert plan.recipients[0].command == (
        b"RCPT TO:<one@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@example.net\r\n")
    # Our own server's parser reads exactly what we meant.
    params = parse_mail_params(plan.mail.decode()[len("MAIL FROM:<sender@example.org> "):-2],
                               Advertised(size=True, eightbitmime=True, dsn=True))
    assert (params.size, params.body, params.ret, params.envid) == (5000, "8BITMIME", "HDRS",
                                                                    "q1+x y")


def test_plan_leaves_out_parameters_the_peer_did_not_announce():
    env = envelope(body="8BITMIME", ret="FULL", envid="abc",
                   recipients=(Recipient("one@example.net", ("NEVER",), ("rfc822", "x@y")),))
    plan = plan_transaction({}, env)
    # 8-bit body without 8BITMIME: sent anyway, unlabelled (as Postfix does).
    assert plan.mail == b"MAIL FROM:<sender@example.org>\r\n"
    assert plan.recipients[0].command == b"RCPT TO:<one@example.net>\r\n"
    assert not plan.pipelined and not plan.use_bdat


def test_eight_bit_body_to_chunking_peer_without_8bitmime_goes_by_data():
    assert not plan_transaction({"CHUNKING": ""}, envelope(body="8BITMIME")).use_bdat
    assert plan_transaction({"CHUNKING": ""}, envelope(body="7BIT")).use_bdat
    assert plan_transaction({"CHUNKING": "", "8BITMIME": ""}, envelope(body="8BITMIME")).use_bdat


def test_size_over_the_peer_limit_refuses_every_recipient_before_sending():
    plan = plan_transaction({"SIZE": "4000"}, envelope(size=4001))
    assert plan.mail == b"" and plan.recipients == ()
    assert set(plan.refused) == {"one@example.net", "two@example.net"}
    reply = plan.refused["one@example.net"]
    assert (reply.code, reply.enhanced) == (552, "5.3.4")
    assert "4001" in reply.lines[0] and "4000" in reply.lines[0]
    assert plan_transaction({"SIZE": "4000"}, envelope(size=4000)).recipients


def test_smtputf8_needed_but_not_offered():
    no_utf8 = {k: v for k, v in FULL.items() if k != "SMTPUTF8"}
    by_address = plan_transaction(no_utf8, envelope(sender="jörg@example.org"))
    assert {(r.code, r.enhanced) for r in by_address.refused.values()} == {(553, "5.6.7")}
    by_header = plan_transaction(no_utf8, envelope(smtputf8=True))
    assert {(r.code, r.enhanced) for r in by_header.refused.values()} == {(554, "5.6.9")}
    ok = plan_transaction(FULL, envelope(sender="jörg@example.org"))
    assert ok.mail.endswith(b" SMTPUTF8\r\n") and not ok.refused
    # A non-ASCII domain alone needs no SMTPUTF8: it travels as an A-label.
    idn = plan_transaction(no_utf8, envelope(recipients=(Recipient("x@bücher.example"),)))
    assert idn.recipients[0].command == b"RCPT TO:<x@xn--bcher-kva.example>\r\n"
    assert b"SMTPUTF8" not in idn.mail


def test_requiretls_needs_verified_tls_and_the_peer_extension():
    env = envelope(requiretls=True)
    for caps, ok in (({**FULL, "REQUIRETLS": ""}, False), (FULL, True)):
        plan = plan_transaction(caps, env, requiretls_ok=ok)
        assert {(r.code, r.enhanced) for r in plan.refused.values()} == {(550, "5.7.30")}
        assert plan.recipients == ()
    plan = plan_transaction({**FULL, "REQUIRETLS": ""}, env, requiretls_ok=True)
    assert plan.mail.endswith(b" REQUIRETLS\r\n") and not plan.refused


def test_binarymime_needs_the_peer_extension():
    refused = plan_transaction(FULL, envelope(body="BINARYMIME"))
    assert {r.enhanced for r in refused.refused.values()} == {"5.6.3"}
    plan = plan_transaction({**FULL, "BINARYMIME": ""}, envelope(body="BINARYMIME"))
    assert plan.use_bdat and plan.binary and b"BODY=BINARYMIME" in plan.mail


def test_bad_addresses_are_refused_locally():
    bad_sender = plan_transaction(FULL, envelope(sender="no at sign"))
    assert {r.enhanced for r in bad_sender.refused.values()} == {"5.1.7"}
    plan = plan_transaction(FULL, envelope(recipients=(
        Recipient("ok@example.net"), Recipient("bad@@example.net"), Recipient("ok@example.net"))))
    assert [r.address for r in plan.recipients] == ["ok@example.net"]     # duplicate sent once
    assert plan.refused["bad@@example.net"].enhanced == "5.1.3"
    assert "not sent" in plan.refused["bad@@example.net"].lines[0]


def test_null_sender_and_quoted_local_part():
    plan = plan_transaction({}, envelope(sender="", recipients=(Recipient('"john doe"@x.example'),)))
    assert plan.mail == b"MAIL FROM:<>\r\n"
    assert plan.recipients[0].command == b'RCPT TO:<"john doe"@x.example>\r\n'


def test_bad_dsn_values_are_a_value_error():
    with pytest.raises(ValueError, match="NOTIFY"):
        plan_transaction(FULL, envelope(recipients=(Recipient("a@b.example", ("NEVER", "DELAY")),)))
    with pytest.raises(ValueError, match="RET"):
        plan_transaction(FULL, envelope(ret="ALL"))


# --- message content ---------------------------------------------------------------------------------


def encode(pieces: list[bytes], *, dot_stuff: bool = True) -> bytes:
    encoder = BodyEncoder(dot_stuff=dot_stuff)
    return b"".join(encoder.encode(p) for p in pieces) + encoder.finish()


def test_dot_stuffing_of_lines_that_start_with_a_dot():
    assert encode([b".\r\n..\r\n.x\r\nend.\r\n"]) == b"..\r\n...\r\n..x\r\nend.\r\n.\r\n"


def test_lone_dot_line_cannot_end_the_message_early():
    wire = encode([b"Subject: x\r\n\r\nbefore\r\n.\r\nMAIL FROM:<evil@x>\r\n"])
    assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")


def test_dot_at_a_chunk_boundary_is_stuffed():
    assert encode([b"line\r\n", b".next\r\n"]) == b"line\r\n..next\r\n.\r\n"
    assert encode([b"line\r", b"\n.next\r\n"]) == b"line\r\n..next\r\n.\r\n"
    assert encode([b".first"]) == b"..first\r\n.\r\n"


def test_bare_cr_and_lf_become_crlf_smuggling_attempt_included():
    # The classic smuggling payload: LF "." LF must not become an end of data anywhere.
    wire = encode([b"a\n.\nb\r.\rc\r\n"])
    assert wire == b"a\r\n..\r\nb\r\n..\r\nc\r\n.\r\n"
    assert encode([b"x\r"]) == b"x\r\n.\r\n"
    assert encode([b"x\r", b"y"]) == b"x\r\ny\r\n.\r\n"


def test_missing_final_crlf_is_added_and_empty_body():
    assert encode([b"no newline"]) == b"no newline\r\n.\r\n"
    assert encode([]) == b".\r\n"
    assert encode([b"", b""]) == b".\r\n"


def test_bdat_content_is_normalized_but_not_stuffed():
    assert encode([b".a\n..b\r"], dot_stuff=False) == b".a\r\n..b\r\n"
    binary = BodyEncoder(dot_stuff=False, binary=True)
    assert binary.encode(b"\r.\n\x00") == b"\r.\n\x00" and binary.finish() == b""
    with pytest.raises(ValueError):
        BodyEncoder(dot_stuff=True, binary=True)


_BODY = st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\r\n.\r\n",
                                  b"\xc3\xa9", b" "]), max_size=60).map(b"".join)


def _normalized(body: bytes) -> bytes:
    body = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    return body if not body or body.endswith(b"\r\n") else body + b"\r\n"


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(_BODY, st.lists(st.integers(0, 200), max_size=8), st.lists(st.integers(0, 400), max_size=8))
def test_data_round_trips_through_our_strict_data_reader(body, cuts, wire_cuts):
    wire = encode(_cut(body, cuts))
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None, "bare CR or LF on the wire"
    # Mailkeep's server reader in strict mode: any bare CR/LF would be reported.
    scanner = BodyScanner(max_size=10**6, max_line=10**6, normalize=False)
    reader = DataReader(scanner)
    buffer = bytearray()
    start = 0
    content = b""
    finished = False
    for piece in _cut(wire, wire_cuts):
        buffer += piece
        out, start, finished = reader.feed(buffer, start)
        content += out
        if finished:
            break
    assert finished and start == len(wire), "the message must end exactly at our terminator"
    assert scanner.problem is None
    assert content == _normalized(body)


@settings(max_examples=200, deadline=None)
@given(_BODY, st.lists(st.integers(0, 200), max_size=8))
def test_bdat_content_does_not_depend_on_chunking(body, cuts):
    whole = encode([body], dot_stuff=False)
    assert encode(_cut(body, cuts), dot_stuff=False) == whole == _normalized(body)


# --- SASL --------------------------------------------------------------------------------------------


def test_mechanism_preference():
    offered = ["LOGIN", "PLAIN", "CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
    assert choose_mechanism(offered, channel_binding=True) == "SCRAM-SHA-256-PLUS"
    assert choose_mechanism(offered, channel_binding=False) == "SCRAM-SHA-256"
    assert choose_mechanism(["login", "plain"], channel_binding=True) == "PLAIN"
    assert choose_mechanism(["LOGIN"], channel_binding=False) == "LOGIN"
    assert choose_mechanism(["CRAM-MD5", "GSSAPI"], channel_binding=True) is None


def test_plain_and_login():
    plain = PlainClient("user@example.org", "pässword")
    assert plain.initial_response() == b"\0user@example.org\0p\xc3\xa4ssword"
    with pytest.raises(SaslClientError):
        plain.respond(b"")
    login = LoginClient("user", "pw")
    assert login.initial_response() is None
    assert login.respond(base64.b64decode("VXNlcm5hbWU6")) == b"user"
    assert login.respond(b"Password:") == b"pw"
    with pytest.raises(SaslClientError, match="third"):
        login.respond(b"again?")


def scram_exchange(client: ScramClient, server: ScramServer, password_on_server: str,
                   *, tamper_final: bool = False) -> None:
    first = client.initial_response()
    assert first is not None
    server.receive_client_first(first)
    server_first = server.server_first(make_scram_verifier(password_on_server, "SCRAM-SHA-256", 4096))
    client_final = client.respond(server_first)
    server_final = server.receive_client_final(client_final)
    if tamper_final:
        server_final = b"v=" + base64.b64encode(b"\0" * 32)
    assert client.respond(server_final) == b""
    client.finish()


def test_scram_against_mailkeeps_own_server():
    client = ScramClient("SCRAM-SHA-256", "user@example.org", "correct horse")
    server = ScramServer("SCRAM-SHA-256", channel_bindings={}, server_nonce="srvnonce123")
    scram_exchange(client, server, "correct horse")


def test_scram_plus_binds_to_the_tls_channel():
    binding = b"\x01" * 32
    client = ScramClient("SCRAM-SHA-256-PLUS", "user", "pw",
                         ("tls-server-end-point", binding))
    server = ScramServer("SCRAM-SHA-256-PLUS",
                         channel_bindings={"tls-server-end-point": binding},
                         server_nonce="abcdef")
    scram_exchange(client, server, "pw")
    # A man in the middle terminates TLS with another certificate: the server sees
    # different binding data and refuses.
    client = ScramClient("SCRAM-SHA-256-PLUS", "user", "pw", ("tls-server-end-point", binding))
    server = ScramServer("SCRAM-SHA-256-PLUS",
                         channel_bindings={"tls-server-end-point": b"\x02" * 32},
                         server_nonce="abcdef")
    with pytest.raises(Exception, match="channel binding"):
        scram_exchange(client, server, "pw")


def test_scram_refuses_a_server_that_cannot_prove_itself():
    client = ScramClient("SCRAM-SHA-256", "user", "pw")
    server = ScramServer("SCRAM-SHA-256", channel_bindings={}, server_nonce="n0nce")
    with pytest.raises(SaslClientError) as caught:
        scram_exchange(client, server, "pw", tamper_final=True)
    assert not caught.value.temporary
    silent = ScramClient("SCRAM-SHA-256", "user", "pw")
    silent.initial_response()
    with pytest.raises(SaslClientError, match="without proving"):
        silent.finish()            # 235 straight after client-first


def test_scram_refuses_a_nonce_the_client_did_not_start():
    client = ScramClient("SCRAM-SHA-256", "user", "pw")
    client.initial_response()
    with pytest.raises(SaslClientError) as caught:
        client.respond(b"r=someoneelses,s=c2FsdA==,i=4096")
    assert caught.value.temporary
