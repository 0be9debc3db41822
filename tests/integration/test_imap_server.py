"""The IMAP server over real sockets: `mailkeep serve` and Python's imaplib as the client."""

from __future__ import annotations

import imaplib
import re
import smtplib
import socket
import ssl
import threading
import time
import zlib

import pytest

PASSWORD = "imap-test-password"
OTHER_PASSWORD = "other-password"
USER = "demo@example.test"
OTHER = "me@other.test"


def client_context(server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.check_hostname = False  # the certificate names mx.example.test, we dial 127.0.0.1
    return ctx


@pytest.fixture(scope="module")
def imap_server(server):
    server.set_password(USER, PASSWORD)
    server.set_password(OTHER, OTHER_PASSWORD)
    return server


def login(server, user: str = USER, password: str = PASSWORD) -> imaplib.IMAP4_SSL:
    conn = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port,
                             ssl_context=client_context(server), timeout=20)
    conn.login(user, password)
    return conn


def smtp_deliver(server, to: str, subject: str, body: str = "Hello.\r\n") -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=20) as s:
        s.sendmail("sender@remote.test", [to],
                   f"From: sender@remote.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}")


def raw(server, *, tls: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.imaps_port if tls else server.imap_port),
                                    timeout=20)
    if tls:
        sock = client_context(server).wrap_socket(sock)
    return sock


def read_until(sock, marker: bytes, limit: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- before authentication --------------------------------------------------------------


def test_plaintext_port_offers_starttls_and_refuses_login(imap_server):
    sock = raw(imap_server)
    greeting = read_until(sock, b"\r\n")
    assert greeting.startswith(b"* OK [CAPABILITY ")
    assert b"STARTTLS" in greeting and b"LOGINDISABLED" in greeting
    assert b"AUTH=PLAIN" not in greeting
    sock.sendall(b"a LOGIN demo@example.test imap-test-password\r\n")
    reply = read_until(sock, b"a ")
    assert b"a NO [PRIVACYREQUIRED]" in reply
    sock.sendall(b"b AUTHENTICATE PLAIN\r\n")
    assert b"b NO" in read_until(sock, b"b ")
    sock.sendall(b"c LOGOUT\r\n")
    assert b"c OK" in read_until(sock, b"c OK")
    sock.close()


def test_starttls_then_login(imap_server):
    conn = imaplib.IMAP4("127.0.0.1", imap_server.imap_port, timeout=20)
    conn.starttls(ssl_context=client_context(imap_server))
    caps = conn.capabilities
    assert "AUTH=PLAIN" in caps and "LOGINDISABLED" not in caps and "STARTTLS" not in caps
    typ, _ = conn.login(USER, PASSWORD)
    assert typ == "OK"
    typ, data = conn.capability()
    assert b"IDLE" in data[0] and b"MOVE" in data[0] and b"AUTH=" not in data[0]
    conn.logout()


def test_plaintext_pipelined_after_starttls_is_discarded(imap_server):
    sock = raw(imap_server)
    read_until(sock, b"\r\n")
    # The injected command arrives in the same packet as STARTTLS (CVE-2011-0411).
    sock.sendall(b"a STARTTLS\r\nb LOGIN demo@example.test imap-test-password\r\n")
    assert b"a OK" in read_until(sock, b"a OK")
    tls = client_context(imap_server).wrap_socket(sock)
    tls.sendall(b"c CAPABILITY\r\n")
    reply = read_until(tls, b"c OK")
    assert b"b " not in reply  # the injected LOGIN never ran
    assert b"c OK" in reply
    tls.close()


def test_wrong_password_is_refused(imap_server):
    conn = imaplib.IMAP4_SSL("127.0.0.1", imap_server.imaps_port,
                             ssl_context=client_context(imap_server), timeout=20)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        conn.login(USER, "wrong")
    conn.logout()
    assert "client=127.0.0.1" in imap_server.log_text()


def test_huge_literal_before_login_allocates_nothing(imap_server):
    sock = raw(imap_server, tls=True)
    read_until(sock, b"\r\n")
    sock.sendall(b"a LOGIN {4294967295}\r\n")
    reply = read_until(sock, b"\r\n")
    assert reply.startswith(b"a BAD") or reply.startswith(b"a NO")
    # The connection stays usable.
    sock.sendall(b"b NOOP\r\n")
    assert b"b OK" in read_until(sock, b"b OK")
    sock.close()


def test_relay_only_account_cannot_open_a_mailbox(imap_server):
    imap_server.set_password("relay@example.test", "relay-password")
    conn = imaplib.IMAP4_SSL("127.0.0.1", imap_server.imaps_port,
                             ssl_context=client_context(imap_server), timeout=20)
    with pytest.raises(imaplib.IMAP4.error):
        conn.login("relay@example.test", "relay-password")
    conn.logout()


# -- mailboxes and messages -------------------------------------------------------------


def test_special_use_mailboxes_are_listed_and_protected(imap_server):
    conn = login(imap_server)
    typ, lines = conn.list()
    assert typ == "OK"
    text = b"\n".join(lines)
    for attr, name in ((b"\\Sent", b"Sent"), (b"\\Drafts", b"Drafts"), (b"\\Junk", b"Junk"),
                       (b"\\Trash", b"Trash"), (b"\\Archive", b"Archive")):
        assert re.search(rb"\(.*" + re.escape(attr) + rb".*\) \"/\" \"?" + name, text), text
    typ, data = conn.delete("Sent")
    assert typ == "NO" and data[0].startswith(b"[USEATTR]"), data
    conn.logout()


def test_append_fetch_store_search_expunge(imap_server):
    conn = login(imap_server)
    conn.create("Work/Projects")
    message = (b"From: Alice <alice@example.org>\r\nTo: demo@example.test\r\n"
               b"Subject: Quarterly report\r\nDate: Mon, 02 Feb 2026 10:00:00 +0000\r\n"
               b"Message-ID: <q1@example.org>\r\n\r\nNumbers are up.\r\n")
    typ, data = conn.append("Work/Projects", r"(\Flagged)", None, message)
    assert typ == "OK"
    m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    assert m
    uid = int(m.group(2))
    typ, data = conn.select("Work/Projects")
    assert typ == "OK" and data == [b"1"]
    typ, data = conn.uid("FETCH", str(uid), "(FLAGS BODY.PEEK[] RFC822.SIZE)")
    assert typ == "OK"
    assert data[0][1] == message
    assert b"\\Flagged" in data[0][0] and b"RFC822.SIZE %d" % len(message) in data[0][0]
    typ, data = conn.uid("SEARCH", "SUBJECT", "quarterly")
    assert data == [str(uid).encode()]
    typ, data = conn.uid("SEARCH", "UNSEEN")
    assert data == [str(uid).encode()]
    typ, data = conn.uid("STORE", str(uid), "+FLAGS", r"(\Seen $Important)")
    assert typ == "OK" and b"$Important" in data[0]
    typ, data = conn.uid("SEARCH", "KEYWORD", "$Important")
    assert data == [str(uid).encode()]
    conn.uid("STORE", str(uid), "+FLAGS", r"(\Deleted)")
    typ, data = conn.expunge()
    assert typ == "OK" and data == [b"1"]
    typ, data = conn.uid("SEARCH", "ALL")
    assert data == [b""]
    conn.logout()


def test_copy_and_move_report_copyuid(imap_server):
    conn = login(imap_server)
    conn.create("Keep")
    conn.append("INBOX", None, None, b"Subject: to move\r\n\r\nbody\r\n")
    conn.select("INBOX")
    typ, data = conn.uid("SEARCH", "SUBJECT", "\"to move\"")
    uid = data[0].split()[-1].decode()
    typ, data = conn.uid("COPY", uid, "Keep")
    assert typ == "OK"
    _name, copyuid = conn.response("COPYUID")
    assert copyuid and re.fullmatch(rb"\d+ " + uid.encode() + rb" \d+", copyuid[-1])
    typ, data = conn.uid("MOVE", uid, "Archive")
    assert typ == "OK"
    typ, data = conn.uid("SEARCH", "UID", uid)
    assert data == [b""]
    typ, data = conn.status("Archive", "(MESSAGES UIDNEXT)")
    assert typ == "OK" and b"MESSAGES" in data[0]
    typ, data = conn.uid("COPY", "1:*", "Nowhere")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    conn.logout()


def test_another_account_cannot_be_reached(imap_server):
    conn = login(imap_server, OTHER, OTHER_PASSWORD)
    for name in ("demo@example.test/INBOX", "../demo@example.test/INBOX", "#shared/INBOX",
                 "Work/Projects"):
        typ, data = conn.select(f'"{name}"')
        assert typ == "NO", name
    typ, data = conn.list()
    text = b"\n".join(data)
    assert b"Work" not in text and b"Keep" not in text
    conn.logout()


# -- two sessions, IDLE ----------------------------------------------------------------


def test_idle_pushes_a_new_delivery_within_a_second(imap_server):
    conn = login(imap_server)
    conn.select("INBOX")
    tag = conn._new_tag().decode()
    conn.send(f"{tag} IDLE\r\n".encode())
    assert conn.readline().startswith(b"+")
    got: list[bytes] = []

    def reader() -> None:
        got.append(conn.readline())

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)
    sent = time.monotonic()
    smtp_deliver(imap_server, USER, "idle test")
    thread.join(timeout=5)
    elapsed = time.monotonic() - sent
    assert got and re.match(rb"\* \d+ EXISTS", got[0]), got
    assert elapsed < 1.5
    conn.send(b"DONE\r\n")
    line = conn.readline()
    while not line.startswith(tag.encode()):
        line = conn.readline()
    assert b"OK" in line
    conn.logout()


def test_two_sessions_see_each_others_changes(imap_server):
    one, two = login(imap_server), login(imap_server)
    one.select("INBOX")
    two.select("INBOX")
    before = int(two.select("INBOX")[1][0])
    one.append("INBOX", None, None, b"Subject: shared view\r\n\r\nx\r\n")
    two.noop()
    assert two.untagged_responses["EXISTS"][-1] == str(before + 1).encode()
    _typ, data = one.uid("SEARCH", "SUBJECT", "\"shared view\"")
    uid = data[0].split()[-1].decode()
    one.uid("STORE", uid, "+FLAGS", r"(\Flagged)")
    two.noop()
    fetches = two.untagged_responses.get("FETCH", [])
    assert any(b"\\Flagged" in f for f in fetches if isinstance(f, bytes)), fetches
    one.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
    one.expunge()
    two.noop()
    assert two.untagged_responses.get("EXPUNGE"), two.untagged_responses
    one.logout()
    two.logout()


def test_compress_deflate(imap_server):
    sock = raw(imap_server, tls=True)
    read_until(sock, b"\r\n")
    sock.sendall(f"a LOGIN {USER} {PASSWORD}\r\n".encode())
    assert b"a OK" in read_until(sock, b"a OK")
    sock.sendall(b"b COMPRESS DEFLATE\r\n")
    assert b"b OK" in read_until(sock, b"b OK")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    inflate = zlib.decompressobj(-15)
    sock.sendall(deflate.compress(b"c LIST \"\" INBOX\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
    out = b""
    deadline = time.monotonic() + 10
    while b"c OK" not in out and time.monotonic() < deadline:
        out += inflate.decompress(sock.recv(65536))
    assert b'* LIST' in out and b"c OK" in out
    sock.close()


def _scram_steps(client):
    return iter([
        lambda _c: client.get_client_first().encode(),
        lambda c: (client.set_server_first(c.decode()), client.get_client_final().encode())[1],
        lambda c: (client.set_server_final(c.decode()), b"")[1],  # verifies the server
    ])


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS",
                                       "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN",
                                       "LOGIN"])
def test_authenticate_with_each_sasl_mechanism(imap_server, mechanism):
    import hashlib
    import hmac

    from scramp import ScramClient

    from mailkeep.servers import tlsio

    conn = imaplib.IMAP4_SSL("127.0.0.1", imap_server.imaps_port,
                             ssl_context=client_context(imap_server), timeout=20)
    assert f"AUTH={mechanism}" in conn.capabilities
    if mechanism == "PLAIN":
        responder = lambda _c: f"\0{USER}\0{PASSWORD}".encode()  # noqa: E731
    elif mechanism == "LOGIN":
        answers = iter([USER.encode(), PASSWORD.encode()])
        responder = lambda _c: next(answers)  # noqa: E731
    elif mechanism == "CRAM-MD5":
        responder = lambda c: (USER + " " + hmac.new(  # noqa: E731
            PASSWORD.encode(), c, hashlib.md5).hexdigest()).encode()
    else:
        binding = None
        if mechanism.endswith("-PLUS"):
            # scramp knows tls-server-end-point (the server accepts it on TLS 1.3 too).
            binding = ("tls-server-end-point",
                       tlsio.channel_bindings(conn.sock)["tls-server-end-point"])
        steps = _scram_steps(ScramClient([mechanism], USER, PASSWORD,
                                         channel_binding=binding))
        responder = lambda challenge: next(steps)(challenge)  # noqa: E731
    typ, _ = conn.authenticate(mechanism, responder)
    assert typ == "OK"
    typ, _data = conn.select("INBOX")
    assert typ == "OK"
    conn.logout()
    assert f"mechanism={mechanism}" in imap_server.log_text()


def test_scram_with_a_wrong_password_fails(imap_server):
    from scramp import ScramClient

    conn = imaplib.IMAP4_SSL("127.0.0.1", imap_server.imaps_port,
                             ssl_context=client_context(imap_server), timeout=20)
    client = ScramClient(["SCRAM-SHA-256"], USER, "not-the-password")
    steps = iter([
        lambda _c: client.get_client_first().encode(),
        lambda c: (client.set_server_first(c.decode()), client.get_client_final().encode())[1],
    ])
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        conn.authenticate("SCRAM-SHA-256", lambda challenge: next(steps)(challenge))
    conn.logout()


def test_pop3s_through_serve_sees_imap_appends(imap_server):
    import poplib

    conn = login(imap_server)
    conn.append("INBOX", None, None, b"Subject: for pop\r\n\r\nline one\r\n.dot line\r\n")
    conn.logout()
    pop = poplib.POP3_SSL("127.0.0.1", imap_server.pop3s_port,
                          context=client_context(imap_server), timeout=20)
    pop.user(USER)
    pop.pass_(PASSWORD)
    count, _size = pop.stat()
    assert count >= 1
    found = False
    for n in range(1, count + 1):
        _resp, lines, _octets = pop.retr(n)
        if b"Subject: for pop" in lines:
            assert b".dot line" in lines
            found = True
    assert found
    pop.quit()


def test_imapclient_library_session(imap_server):
    """The imapclient package (used by many scripts) over implicit TLS."""
    from imapclient import IMAPClient

    with IMAPClient("127.0.0.1", port=imap_server.imaps_port, ssl=True,
                    ssl_context=client_context(imap_server), timeout=20) as client:
        client.login(USER, PASSWORD)
        assert b"UTF8=ACCEPT" in client.capabilities()
        client.enable("UTF8=ACCEPT")
        client.create_folder("Büro/Rechnungen")
        folders = [name for _flags, _sep, name in client.list_folders()]
        assert "Büro/Rechnungen" in folders
        client.append("Büro/Rechnungen", b"Subject: Rechnung\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n")
        info = client.select_folder("Büro/Rechnungen")
        assert info[b"EXISTS"] == 1
        (uid,) = client.search(["SUBJECT", "Rechnung"])
        data = client.fetch([uid], ["ENVELOPE", "BODY.PEEK[TEXT]"])
        assert data[uid][b"ENVELOPE"].subject == b"Rechnung"
        assert data[uid][b"BODY[TEXT]"] == "Grüße\r\n".encode()
        client.move([uid], "Archive")
        assert client.select_folder("Büro/Rechnungen")[b"EXISTS"] == 0


def test_sort_thread_and_esearch(imap_server):
    conn = login(imap_server)
    conn.create("Threads")
    root = (b"Message-ID: <root@x.test>\r\nSubject: Plans\r\n"
            b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nroot\r\n")
    reply = (b"Message-ID: <reply@x.test>\r\nIn-Reply-To: <root@x.test>\r\n"
             b"References: <root@x.test>\r\nSubject: Re: Plans\r\n"
             b"Date: Tue, 02 Jan 2024 10:00:00 +0000\r\n\r\nreply\r\n")
    other = (b"Message-ID: <other@x.test>\r\nSubject: Another topic\r\n"
             b"Date: Sun, 31 Dec 2023 10:00:00 +0000\r\n\r\nother\r\n")
    for message in (reply, root, other):
        assert conn.append("Threads", None, None, message)[0] == "OK"
    conn.select("Threads")
    typ, data = conn.uid("SORT", "(DATE)", "UTF-8", "ALL")
    assert typ == "OK"
    uids = data[0].split()
    assert len(uids) == 3 and int(uids[0]) > int(uids[1])  # "other" then root then reply
    typ, data = conn.uid("SORT", "(REVERSE DATE)", "UTF-8", "ALL")
    assert data[0].split() == list(reversed(uids))
    typ, data = conn.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
    assert typ == "OK"
    assert data[0].decode().count("(") == 2  # two threads: "Plans" with its reply, "Another"
    typ, _data = conn.uid("SEARCH", "RETURN", "(MIN MAX COUNT)", "ALL")
    _name, esearch = conn.response("ESEARCH")
    assert typ == "OK" and re.search(rb"UID MIN \d+ MAX \d+ COUNT 3", esearch[-1]), esearch
    typ, data = conn.uid("SEARCH", "CHARSET", "UTF-8", "TEXT", "reply")
    assert typ == "OK" and len(data[0].split()) == 1
    typ, data = conn.uid("SEARCH", "CHARSET", "X-UNKNOWN", "TEXT", "reply")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    conn.logout()
