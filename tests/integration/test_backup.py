"""`mailkeep backup` of a running `mailkeep serve` while a client keeps delivering and
expunging, then `mailkeep restore` and a server started on the restored data directory.

Every restored mailbox is compared with the source as of the backup's snapshot:

* mailboxes nobody touches during the backup must be identical to the source, message by
  message (bytes, UID, MODSEQ, flags and keywords, dates) and in UIDVALIDITY, UIDNEXT and
  HIGHESTMODSEQ;
* the mailbox that changes during the backup must hold exactly the source's state at the
  snapshot's HIGHESTMODSEQ: the messages still there with a smaller UID than the snapshot's
  UIDNEXT, plus those expunged after it (the store remembers every expunge with its
  MODSEQ, RFC 7162 VANISHED), each with its exact bytes (the client read every message it
  expunged) — so a message in the restored metadata without its exact file fails.
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mailkeep.backup import list_backups
from mailkeep.queue.store import NewMessage, QueuedRecipient, QueueStore
from mailkeep.store import open_store

from .conftest import MAILKEEP, make_server

DEMO, OTHER = "demo@example.test", "me@other.test"
PASSWORD = "backup-test-password"
#: Backups made while the churn runs; at least one must overlap an expunge.
MAX_BACKUPS = 5


def imap_login(server, user: str) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.check_hostname = False  # the certificate names mx.example.test, we dial 127.0.0.1
    conn = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=ctx, timeout=20)
    conn.login(user, PASSWORD)
    return conn


def ok(result: tuple) -> list:
    status, data = result
    assert status == "OK", (status, data)
    return data


def body(n: int, to: str) -> bytes:
    filler = "".join(f"line {i} of message {n}\r\n" for i in range(n % 200))
    return (f"From: sender@remote.test\r\nTo: {to}\r\nSubject: message {n}\r\n"
            f"Message-ID: <m{n}@remote.test>\r\n\r\n{filler}end {n}\r\n").encode()


def mailbox_states(data_dir: Path) -> dict:
    """Every mailbox of the store, read by another process as the CLI does."""
    store = open_store(data_dir)
    try:
        state = {}
        for account in store.list_accounts():
            for box in store.list_mailboxes(account):
                state[(account, box.name)] = {
                    "uidvalidity": box.uidvalidity, "uidnext": box.uidnext,
                    "highestmodseq": box.highestmodseq,
                    "messages": {m.uid: (m.modseq, m.flags, m.internal_date, m.size,
                                         store.read_message(account, box.name, m.uid))
                                 for m in store.list_messages(account, box.name)}}
        return state
    finally:
        store.close()


class Churn:
    """A client that keeps delivering to OTHER over SMTP, and one that keeps expunging the
    oldest message of OTHER's INBOX over IMAP, reading each one before it goes."""

    def __init__(self, server) -> None:
        self.server = server
        self.stop = threading.Event()
        self.expunged_bytes: dict[int, bytes] = {}
        self.expunged_at: dict[int, float] = {}
        self.delivered = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(f,), daemon=True)
                        for f in (self._deliver, self._expunge)]

    def __enter__(self) -> Churn:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a churn client did not stop"
        assert not self.errors, self.errors

    def _run(self, job) -> None:
        try:
            job()
        except BaseException as exc:
            self.errors.append(exc)

    def _deliver(self) -> None:
        n = 10_000
        while not self.stop.is_set():
            # A few messages per session: the server limits the commands of one.
            with smtplib.SMTP("127.0.0.1", self.server.smtp_port, timeout=20) as smtp:
                for _ in range(10):
                    smtp.sendmail("sender@remote.test", [OTHER], body(n, OTHER))
                    n += 1
                    self.delivered += 1

    def _expunge(self) -> None:
        conn = imap_login(self.server, OTHER)
        try:
            while not self.stop.is_set():
                ok(conn.select("INBOX"))
                uids = [int(u) for u in ok(conn.uid("SEARCH", "ALL"))[0].split()]
                if len(uids) < 20:
                    time.sleep(0.01)
                    continue
                uid = uids[0]
                fetched = ok(conn.uid("FETCH", str(uid), "(BODY.PEEK[])"))
                self.expunged_bytes[uid] = fetched[0][1]
                ok(conn.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)"))
                ok(conn.uid("EXPUNGE", str(uid)))
                self.expunged_at[uid] = time.monotonic()
        finally:
            conn.logout()


@pytest.fixture
def source(tmp_path):
    srv = make_server(tmp_path / "src")
    srv.start()
    try:
        srv.set_password(DEMO, PASSWORD)
        srv.set_password(OTHER, PASSWORD)
        yield srv
    finally:
        if srv.proc is not None:
            srv.stop()


def populate(srv) -> None:
    """300 messages over LMTP, flags and keywords set and some expunged over IMAP, a COPY
    into another mailbox, and a held message in the outbound queue."""
    with smtplib.LMTP(str(srv.lmtp_socket), timeout=20) as lmtp:
        for n in range(300):
            to = DEMO if n % 4 else OTHER
            refused = lmtp.sendmail("sender@remote.test", [to], body(n, to))
            assert not refused
    conn = imap_login(srv, DEMO)
    try:
        ok(conn.create("Projects/2025"))
        ok(conn.select("INBOX"))
        ok(conn.uid("STORE", "1:120", "+FLAGS.SILENT", r"(\Seen)"))
        ok(conn.uid("STORE", "30:60", "+FLAGS.SILENT", r"(\Flagged $Important project-x)"))
        ok(conn.uid("STORE", "100:110", "+FLAGS.SILENT", r"(\Answered $Forwarded)"))
        ok(conn.uid("COPY", "1:40", "Projects/2025"))
        ok(conn.uid("STORE", "150:170", "+FLAGS.SILENT", r"(\Deleted)"))
        ok(conn.expunge())
        ok(conn.select("Projects/2025"))
        ok(conn.uid("STORE", "5:9", "+FLAGS.SILENT", r"(\Draft later)"))
    finally:
        conn.logout()
    with QueueStore.for_data_dir(srv.data_dir) as queue:
        queue.enqueue_sync([NewMessage(
            queue_id="HELDBACKUP01", sender=DEMO,
            recipients=[QueuedRecipient("friend@elsewhere.test")],
            prefix=b"Received: by mx.example.test\r\n",
            source=b"Subject: held\r\n\r\nwaiting for the admin\r\n", hold=True)])


def test_backup_while_serving_restores_every_message_and_flag(source, tmp_path):
    populate(source)
    dest = tmp_path / "backups"
    made: list[tuple[Path, float]] = []
    with Churn(source) as churn:
        deadline = time.monotonic() + 10
        while len(churn.expunged_at) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(churn.expunged_at) >= 10, "the churn clients did not get going"
        for _ in range(MAX_BACKUPS):
            result = subprocess.run([MAILKEEP, "backup", str(dest), "-c", str(source.config)],
                                    capture_output=True, text=True, timeout=120)
            finished = time.monotonic()
            assert result.returncode == 0, result.stderr
            newest = list_backups(dest)[-1]
            assert newest not in [m for m, _ in made]
            made.append((newest, finished))
            if _overlapped(made[-1][0], tmp_path, churn, finished):
                break
            time.sleep(0.2)
    assert churn.delivered > 0
    live = mailbox_states(source.data_dir)
    overlapped = 0
    for n, (backup, finished) in enumerate(made):
        target = tmp_path / f"restored-{n}" / "data"
        result = subprocess.run([MAILKEEP, "restore", str(backup), "--data-dir", str(target)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        restored = mailbox_states(target)
        assert set(restored) == set(live)
        for key, box in live.items():
            if key == (OTHER, "INBOX"):
                overlapped += _check_churned(restored[key], box, source, churn, finished)
            else:
                assert restored[key] == box, key
        with QueueStore.for_data_dir(target) as queue:
            held = queue.get("HELDBACKUP01")
            assert held is not None and held.hold
            assert queue.message_path("HELDBACKUP01").read_bytes().endswith(
                b"waiting for the admin\r\n")
    assert overlapped, ("no backup ran while a message of its snapshot was expunged; "
                        "the churn is too slow for this machine")

    # A server started on a restored data directory serves the mail (and the passwords).
    restored_srv = make_server(tmp_path / "second")
    result = subprocess.run([MAILKEEP, "restore", str(made[-1][0]),
                             "-c", str(restored_srv.config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    restored_srv.start()
    try:
        conn = imap_login(restored_srv, DEMO)
        try:
            data = ok(conn.select("Projects/2025"))
            expected = live[(DEMO, "Projects/2025")]["messages"]
            assert int(data[0]) == len(expected)
            uid = sorted(expected)[6]
            fetched = ok(conn.uid("FETCH", str(uid), "(FLAGS BODY.PEEK[])"))
            assert fetched[0][1] == expected[uid][4]
            assert b"\\Draft" in fetched[0][0] and b"later" in fetched[0][0]
        finally:
            conn.logout()
    finally:
        restored_srv.stop()


def _overlapped(backup: Path, tmp_path: Path, churn: Churn, finished: float) -> bool:
    """Did an expunge of a message in this backup's snapshot finish while it ran?"""
    target = tmp_path / "probe" / backup.name
    result = subprocess.run([MAILKEEP, "restore", str(backup), "--data-dir", str(target)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    store = open_store(target)
    try:
        uids = {m.uid for m in store.list_messages(OTHER, "INBOX")}
    finally:
        store.close()
    return any(churn.expunged_at.get(uid, finished) < finished for uid in uids)


def _check_churned(restored: dict, live: dict, srv, churn: Churn, finished: float) -> int:
    """The changing mailbox: exactly the source at the snapshot. Returns 1 if a message of
    the snapshot was expunged before the backup finished (the backup raced the janitor)."""
    assert restored["uidvalidity"] == live["uidvalidity"]
    snapshot_modseq, snapshot_uidnext = restored["highestmodseq"], restored["uidnext"]
    assert snapshot_uidnext <= live["uidnext"]
    store = open_store(srv.data_dir)
    try:
        vanished = set(store.vanished_since(OTHER, "INBOX", snapshot_modseq))
    finally:
        store.close()
    expected = ({u for u in live["messages"] if u < snapshot_uidnext}
                | {u for u in vanished if u < snapshot_uidnext})
    assert set(restored["messages"]) == expected
    raced = 0
    for uid, (modseq, flags, _date, size, data) in restored["messages"].items():
        assert modseq <= snapshot_modseq
        assert size == len(data)
        if uid in live["messages"]:
            assert (modseq, flags, data) == (live["messages"][uid][0], live["messages"][uid][1],
                                             live["messages"][uid][4])
        else:
            assert data == churn.expunged_bytes[uid], uid
            assert flags in ((), ("\\Deleted",))
            raced |= churn.expunged_at[uid] < finished
    return raced
