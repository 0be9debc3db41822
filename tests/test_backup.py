"""`mailkeep backup` / `mailkeep restore` (mailkeep.backup) on a data directory built with the
store and queue APIs: the manifest, checksums, refusals, interrupted runs, pruning, and the
pin locks that keep files named by a copied database on disk until they are copied."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailkeep import __version__, backup
from mailkeep.backup import (
    BackupError,
    CorruptBackup,
    create_backup,
    list_backups,
    restore_backup,
    verify_backup,
)
from mailkeep.queue.store import NewMessage, QueuedRecipient, QueueStore
from mailkeep.store import open_store

MAILKEEP = str(Path(sys.executable).with_name("mailkeep"))
ALICE = "alice@example.test"
BOB = "bob@example.test"
CONFIG = 'hostname = "mx.example.test"\ndata_dir = "data"\n\n[domains."example.test"]\n'


def message(n: int, size: int = 0) -> bytes:
    return (f"From: x@remote.test\r\nTo: {ALICE}\r\nSubject: message {n}\r\n"
            f"Message-ID: <{n}@remote.test>\r\n\r\nbody {n}\r\n" + "z" * size).encode()


def queued(queue_id: str, *, hold: bool = False) -> NewMessage:
    return NewMessage(queue_id=queue_id, sender=ALICE,
                      recipients=[QueuedRecipient("you@elsewhere.test")],
                      prefix=b"Received: by mx.example.test\r\n",
                      source=f"Subject: {queue_id}\r\n\r\nqueued\r\n".encode(), hold=hold)


def populate(data_dir: Path) -> None:
    """Two accounts with flags, keywords, a copy (a shared file), expunges; a queue with a
    held message; key and password files; and things a backup must leave out."""
    store = open_store(data_dir)
    try:
        store.ensure_account(ALICE)
        store.ensure_account(BOB)
        store.create_mailbox(ALICE, "Archive/2024")

        async def fill() -> None:
            uids = [await store.append(ALICE, "INBOX", message(n, size=n * 10))
                    for n in range(30)]
            await store.store_flags(ALICE, "INBOX", uids[:10], ["\\Seen", "$Important"])
            await store.store_flags(ALICE, "INBOX", uids[5:8], ["\\Flagged", "project-x"])
            await store.copy(ALICE, "INBOX", uids[:4], "Archive/2024")
            await store.store_flags(ALICE, "INBOX", uids[20:25], ["\\Deleted"])
            await store.expunge(ALICE, "INBOX")
            for n in range(5):
                await store.append(BOB, "INBOX", message(100 + n), flags=["\\Answered"])

        asyncio.run(fill())
    finally:
        store.close()
    with QueueStore.for_data_dir(data_dir) as queue:
        queue.enqueue_sync([queued("HELD000001", hold=True), queued("WAITING002")])
    (data_dir / "passwd").write_text(f"{ALICE}:{{ARGON2ID}}$argon2id$v=19$fake\n")
    (data_dir / "dkim" / "example.test").mkdir(parents=True)
    (data_dir / "dkim" / "example.test" / "sel1.key").write_text("-----BEGIN KEY-----\n")
    (data_dir / "fts").mkdir(exist_ok=True)
    (data_dir / "fts" / "index.db").write_bytes(b"cache")
    (data_dir / "spool" / "incoming").mkdir(parents=True, exist_ok=True)
    (data_dir / "spool" / "incoming" / "in-1").write_bytes(b"half a message")
    (data_dir / "mailkeep.pid").write_text("4242\n")
    (data_dir / "outside-link").symlink_to("/etc/hostname")


def store_state(data_dir: Path) -> dict:
    """Everything IMAP can see: per mailbox UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, and per
    message UID, MODSEQ, flags and keywords, dates, size and the bytes."""
    store = open_store(data_dir)
    try:
        state = {}
        for account in store.list_accounts():
            for box in store.list_mailboxes(account):
                state[(account, box.name)] = (
                    box.uidvalidity, box.uidnext, box.highestmodseq, box.messages,
                    box.keywords, box.subscribed,
                    [(m.uid, m.modseq, m.flags, m.internal_date, m.save_date, m.size,
                      store.read_message(account, box.name, m.uid))
                     for m in store.list_messages(account, box.name)])
        return state
    finally:
        store.close()


def queue_state(data_dir: Path) -> dict:
    with QueueStore.for_data_dir(data_dir) as queue:
        return {e.queue_id: (e.hold, e.sender, queue.message_path(e.queue_id).read_bytes())
                for e in queue.list()}


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Path]:
    """(data directory, configuration file)."""
    config = tmp_path / "src" / "mailkeep.toml"
    config.parent.mkdir()
    config.write_text(CONFIG)
    data_dir = tmp_path / "src" / "data"
    populate(data_dir)
    return data_dir, config


def only_backup(dest: Path) -> Path:
    backups = list_backups(dest)
    assert len(backups) == 1, backups
    return backups[0]


# -- backup and manifest ------------------------------------------------------------------


def test_round_trip_restores_every_message_flag_and_file(source, tmp_path):
    data_dir, config = source
    before, queue_before = store_state(data_dir), queue_state(data_dir)
    report = create_backup(data_dir, tmp_path / "backups", config_path=config)
    target = tmp_path / "new" / "data"
    restored = restore_backup(report.path, target, config_out=tmp_path / "new" / "mk.toml")

    assert store_state(target) == before
    assert queue_state(target) == queue_before
    assert queue_before["HELD000001"][0] is True
    assert (target / "passwd").read_bytes() == (data_dir / "passwd").read_bytes()
    assert (target / "dkim/example.test/sel1.key").read_text() == "-----BEGIN KEY-----\n"
    assert (tmp_path / "new" / "mk.toml").read_text() == CONFIG
    assert restored.config_data_dir is None  # "data" beside mk.toml is the target
    # Left out: the index (rebuilt), the spool, the pid file; links are never followed.
    for absent in ("fts", "spool", "mailkeep.pid", "outside-link"):
        assert not (target / absent).exists(), absent
    assert ("outside-link", "symbolic link") in report.skipped
    assert stat.S_IMODE((target / "queue" / "maildrop").stat().st_mode) == 0o1733
    assert not list((tmp_path / "new").glob(".data.restore-*"))


def test_manifest_lists_every_file_with_size_checksum_and_counts(source, tmp_path):
    data_dir, config = source
    report = create_backup(data_dir, tmp_path / "backups", config_path=config)
    path = report.path
    assert path.name.startswith("mailkeep-") and path.parent == tmp_path / "backups"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    body = json.loads((path / "manifest.json").read_text())
    assert body["format"] == "mailkeep-backup" and body["format_version"] == 1
    assert body["mailkeep_version"] == __version__
    assert body["hostname"] and body["data_dir"] == str(data_dir)
    assert body["config_path"] == str(config)
    datetime.datetime.strptime(body["created"], "%Y-%m-%dT%H:%M:%SZ")
    assert body["counts"] == {"accounts": 2, "mailboxes": 13, "messages": 34,
                              "message_files": 30, "queue_entries": 2}
    listed = {f["path"]: f for f in body["files"]}
    on_disk = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    assert on_disk - set(listed) == {"manifest.json"}
    assert set(listed) <= on_disk
    for rel, entry in listed.items():
        data = (path / rel).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    kinds = {}
    for entry in body["files"]:
        kinds[entry["kind"]] = kinds.get(entry["kind"], 0) + 1
    assert kinds["message"] == 30 and kinds["queued"] == 2 and kinds["config"] == 1
    assert {"data/store/mailkeep.sqlite3", "data/queue/queue.db", "data/passwd",
            "config/mailkeep.toml"} <= set(listed)
    assert listed["data/store/mailkeep.sqlite3"]["kind"] == "database"
    # A database copy is self-contained (no -wal beside it) and names every message file.
    assert not list(path.rglob("*-wal")) and not list(path.rglob("*-shm"))
    assert verify_backup(path).counts == body["counts"]


def test_verify_reports_a_changed_byte_and_a_missing_file(source, tmp_path):
    data_dir, config = source
    path = create_backup(data_dir, tmp_path / "backups", config_path=config).path
    ok = subprocess.run([MAILKEEP, "backup", "--verify", str(path)], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr
    victim = next(p for p in (path / "data/store/accounts").rglob("*-*") if p.is_file())
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    (path / "data/passwd").unlink()
    with pytest.raises(CorruptBackup) as caught:
        verify_backup(path)
    problems = "\n".join(caught.value.problems)
    assert "does not match its checksum" in problems and victim.name in problems
    assert "data/passwd is missing" in problems
    bad = subprocess.run([MAILKEEP, "backup", "--verify", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    assert "DAMAGED" in bad.stderr and "data/passwd is missing" in bad.stderr


def test_a_corrupt_backup_restores_nothing(source, tmp_path):
    data_dir, config = source
    path = create_backup(data_dir, tmp_path / "backups", config_path=config).path
    db = path / "data/queue/queue.db"
    db.write_bytes(db.read_bytes()[:-1] + b"\x01")
    target = tmp_path / "restore" / "data"
    result = subprocess.run([MAILKEEP, "restore", str(path), "--data-dir", str(target),
                             "--config-out", str(tmp_path / "restore" / "mk.toml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "nothing was restored" in result.stderr and "queue.db" in result.stderr
    assert not target.exists()
    assert not (tmp_path / "restore" / "mk.toml").exists()
    assert not list((tmp_path / "restore").glob(".*")) if (tmp_path / "restore").exists() \
        else True


@pytest.mark.parametrize("damage", ["json", "unsafe-path", "newer-format", "bad-checksum"])
def test_a_damaged_or_hostile_manifest_is_refused(source, tmp_path, damage):
    data_dir, _ = source
    path = create_backup(data_dir, tmp_path / "backups").path
    manifest = path / "manifest.json"
    body = json.loads(manifest.read_text())
    if damage == "json":
        manifest.write_text(manifest.read_text()[:-20])
    else:
        if damage == "unsafe-path":
            body["files"][0]["path"] = "data/../../escaped"
        elif damage == "newer-format":
            body["format_version"] = 99
        else:
            body["files"][0]["sha256"] = "not hex"
        manifest.write_text(json.dumps(body))
    target = tmp_path / "target"
    with pytest.raises(CorruptBackup) as caught:
        restore_backup(path, target)
    expected = {"json": "not valid JSON", "unsafe-path": "unsafe path",
                "newer-format": "newer Mailkeep", "bad-checksum": "bad size, checksum"}[damage]
    assert expected in str(caught.value)
    assert not target.exists() and not (tmp_path / "escaped").exists()


def test_restore_refuses_a_non_empty_target_and_accepts_an_empty_one(source, tmp_path):
    data_dir, _ = source
    path = create_backup(data_dir, tmp_path / "backups").path
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep-me").write_text("precious")
    result = subprocess.run([MAILKEEP, "restore", str(path), "--data-dir", str(target)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "is not empty (it holds keep-me)" in result.stderr
    assert [p.name for p in target.iterdir()] == ["keep-me"]

    empty = tmp_path / "empty"
    empty.mkdir(mode=0o750)
    os.chmod(empty, 0o750)
    restore_backup(path, empty)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o750  # the directory's own mode stays
    assert store_state(empty) == store_state(data_dir)


def test_config_out_must_not_overwrite_a_different_file(source, tmp_path):
    data_dir, config = source
    path = create_backup(data_dir, tmp_path / "backups", config_path=config).path
    other = tmp_path / "other.toml"
    other.write_text("# another server\n")
    with pytest.raises(BackupError, match="exists and differs"):
        restore_backup(path, tmp_path / "t1", config_out=other)
    assert not (tmp_path / "t1").exists() and other.read_text() == "# another server\n"
    same = tmp_path / "same.toml"
    same.write_text(CONFIG)
    report = restore_backup(path, tmp_path / "t2", config_out=same)
    assert report.config_data_dir == tmp_path / "data"  # the config's data_dir: say so
    without = create_backup(data_dir, tmp_path / "no-config").path
    with pytest.raises(BackupError, match="no configuration file"):
        restore_backup(without, tmp_path / "t3", config_out=tmp_path / "x.toml")


def test_backup_into_the_data_directory_is_refused(source, tmp_path):
    data_dir, _ = source
    with pytest.raises(BackupError, match="inside the data directory"):
        create_backup(data_dir, data_dir / "backups")
    assert not (data_dir / "backups").exists()


def test_keep_removes_the_oldest_backups(source, tmp_path):
    data_dir, _ = source
    dest = tmp_path / "backups"
    start = datetime.datetime(2025, 1, 1, 3, 0, tzinfo=datetime.UTC)
    made = []
    for day in range(4):
        report = create_backup(data_dir, dest, keep=2,
                               now=lambda d=day: start + datetime.timedelta(days=d))
        made.append(report.path)
    assert list_backups(dest) == made[2:]
    assert [p.name for p in made] == [f"mailkeep-2025010{d}T030000Z" for d in (1, 2, 3, 4)]
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]
    # Two backups in the same second get distinct names.
    again = create_backup(data_dir, dest, now=lambda: start + datetime.timedelta(days=3))
    assert again.path.name == "mailkeep-20250104T030000Z-2"


# -- crashes ------------------------------------------------------------------------------

CRASHING = """
import os, signal, sys
from pathlib import Path
from mailkeep import backup
original = backup._copy_fd
calls = 0
def copy_then_die(*args, **kwargs):
    global calls
    calls += 1
    if calls == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
backup._copy_fd = copy_then_die
if sys.argv[2] == "backup":
    backup.create_backup(Path(sys.argv[3]), Path(sys.argv[4]))
else:
    backup.restore_backup(Path(sys.argv[3]), Path(sys.argv[4]))
"""


def run_crashing(*args: str) -> None:
    result = subprocess.run([sys.executable, "-c", CRASHING, *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_an_interrupted_backup_never_looks_complete_and_a_rerun_converges(source, tmp_path):
    data_dir, _ = source
    dest = tmp_path / "backups"
    run_crashing("12", "backup", str(data_dir), str(dest))
    assert list_backups(dest) == []
    leftovers = list(dest.glob(".mailkeep-*.partial-*"))
    assert len(leftovers) == 1
    report = create_backup(data_dir, dest)
    assert report.stale_removed == leftovers and not leftovers[0].exists()
    assert only_backup(dest) == report.path
    verify_backup(report.path)
    # The live data directory is untouched by the crash: no lock left held, nothing removed.
    assert store_state(data_dir) == store_state(data_dir)


def test_an_interrupted_restore_leaves_no_target_and_a_rerun_converges(source, tmp_path):
    data_dir, _ = source
    path = create_backup(data_dir, tmp_path / "backups").path
    target = tmp_path / "restore" / "data"
    run_crashing("20", "restore", str(path), str(target))
    assert not target.exists()
    assert len(list(target.parent.glob(".data.restore-*"))) == 1
    result = subprocess.run([MAILKEEP, "restore", str(path), "--data-dir", str(target)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "every file checked" in result.stdout
    assert not list(target.parent.glob(".data.restore-*"))
    assert store_state(target) == store_state(data_dir)
    # And once restored, another run refuses rather than mixing two restores.
    again = subprocess.run([MAILKEEP, "restore", str(path), "--data-dir", str(target)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "not empty" in again.stderr


# -- consistency while the data changes ------------------------------------------------------


def test_files_named_by_the_copied_databases_stay_until_copied(source, tmp_path, monkeypatch):
    """Between the database copies and the file copies, expunge messages (and let the
    janitor run) and delete a queue entry (its unlinker runs): the pins hold the removals
    back, so the backup gets every file; afterwards the removals happen."""
    data_dir, _ = source
    store = open_store(data_dir)
    queue = QueueStore.for_data_dir(data_dir)
    removed_during: list[int] = []
    expunged: list[int] = []
    original = backup._store_files

    def meanwhile(conn):
        # The backup calls it once both databases are copied, before any message file is
        # (the restore's check calls it again).
        if expunged:
            yield from original(conn)
            return
        uids = [m.uid for m in store.list_messages(ALICE, "INBOX")][10:20]
        asyncio.run(store.store_flags(ALICE, "INBOX", uids, ["\\Deleted"]))
        expunged.extend(asyncio.run(store.expunge(ALICE, "INBOX")))
        removed_during.append(store._collect_garbage())
        assert queue.delete(["WAITING002"]) == 1
        time.sleep(0.3)  # the queue's unlinker is waiting for the pin now
        assert queue.message_path("WAITING002").exists()
        yield from original(conn)

    monkeypatch.setattr(backup, "_store_files", meanwhile)
    try:
        report = create_backup(data_dir, tmp_path / "backups")
        assert len(expunged) == 10 and removed_during == [0]
        target = tmp_path / "restored"
        restore_backup(report.path, target)
        restored = store_state(target)
        inbox = restored[(ALICE, "INBOX")][6]
        assert {uid for uid, *_ in inbox} >= set(expunged)
        assert "WAITING002" in queue_state(target)
        # Once the backup let go, the removals go ahead.
        assert store._collect_garbage() == 10
        deadline = time.monotonic() + 5
        while queue.message_path("WAITING002").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not queue.message_path("WAITING002").exists()
    finally:
        queue.close()
        store.close()


def test_recovery_leaves_a_dead_writers_files_while_a_backup_reads(source, tmp_path):
    """A crashed writer's file whose row went after a backup's copy of the database was
    taken is still needed by the backup: recovery in another process waits for the pin."""
    data_dir, _ = source
    writers = data_dir / "store" / "writers"
    (writers / "deadbeefdeadbeef.lock").write_text("1\n")  # a writer that died
    account_dir = next((data_dir / "store" / "accounts").iterdir())
    orphan = account_dir / "deadbeefdeadbeef-1"
    orphan.write_bytes(b"left by a crash")
    with backup._pin(data_dir / "store" / "pin.lock", 5.0):
        open_store(data_dir).close()
        assert orphan.exists()
    store = open_store(data_dir)
    try:
        assert store.recovery.orphan_files == 1 and not orphan.exists()
    finally:
        store.close()


def test_new_uidvalidity_makes_clients_resynchronise(source, tmp_path):
    """After a restore of an older state, UIDs given since would be given again: with
    --new-uidvalidity every mailbox gets a greater UIDVALIDITY, the messages stay."""
    data_dir, _ = source
    before = store_state(data_dir)
    path = create_backup(data_dir, tmp_path / "backups").path
    target = tmp_path / "restored"
    result = subprocess.run([MAILKEEP, "restore", str(path), "--data-dir", str(target),
                             "--new-uidvalidity"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    after = store_state(target)
    assert set(after) == set(before)
    values = [state[0] for state in after.values()]
    assert len(set(values)) == len(values)
    for key, state in after.items():
        assert state[0] > before[key][0], key
        assert state[1:] == before[key][1:], key
    # A mailbox created afterwards gets a greater one still.
    store = open_store(target)
    try:
        store.create_mailbox(ALICE, "Later")
        assert store.get_mailbox(ALICE, "Later").uidvalidity > max(values)
    finally:
        store.close()


def test_the_command_line(source, tmp_path):
    data_dir, config = source
    dest = tmp_path / "backups"
    run = [MAILKEEP, "backup", str(dest), "-c", str(config), "--keep", "1", "--progress"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"Backed up {data_dir} to {dest}/mailkeep-")
    assert "2 accounts, 13 mailboxes, 34 messages, 2 queued" in first.stdout
    assert "Backing up" in first.stderr  # the progress bar, forced on
    assert "not backed up: outside-link (symbolic link)" in first.stderr
    time.sleep(1.1)  # a new name
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "Removed the old backup" in second.stdout
    assert only_backup(dest).name in second.stdout
    for wrong in (["backup"], ["backup", str(dest), "--keep", "0", "-c", str(config)],
                  ["backup", str(dest), "--verify", str(dest)]):
        result = subprocess.run([MAILKEEP, *wrong], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2 and result.stderr.startswith("mailkeep backup: "), wrong
    not_one = subprocess.run([MAILKEEP, "restore", str(dest), "--data-dir",
                              str(tmp_path / "t")], capture_output=True, text=True, timeout=60)
    assert not_one.returncode == 1
    assert "holds backups but is not one; pick one" in not_one.stderr


def test_without_syncfs_every_file_and_directory_is_fsynced(source, tmp_path, monkeypatch):
    data_dir, _ = source
    monkeypatch.setattr(backup.msgfiles, "can_sync_filesystem", lambda: False)

    def no_syncfs(path):
        raise AssertionError("syncfs used")

    monkeypatch.setattr(backup.msgfiles, "sync_filesystem", no_syncfs)
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    path = create_backup(data_dir, tmp_path / "backups").path
    manifest = verify_backup(path)
    for entry in manifest.files:
        assert any(s.endswith(entry.path.removeprefix("data")) and ".partial-" in s
                   for s in synced), entry.path
    target = tmp_path / "restored"
    restore_backup(path, target)
    assert store_state(target) == store_state(data_dir)


# -- hostile backups: modes and symbolic links (security review) -------------------------------


def test_restore_masks_the_modes_a_manifest_records(source, tmp_path):
    """A manifest is data: setuid/setgid, sticky and world-writable modes in it are never
    applied; files at most 0640, directories 0750 (the queue's own 0711/1733 kept), the
    configuration 0640."""
    data_dir, config = source
    path = create_backup(data_dir, tmp_path / "backups", config_path=config).path
    manifest = path / "manifest.json"
    body = json.loads(manifest.read_text())
    for entry in body["files"]:
        entry["mode"] = 0o6777
    for entry in body["dirs"]:
        entry["mode"] = 0o7777
    manifest.write_text(json.dumps(body))
    target = tmp_path / "new" / "data"
    restore_backup(path, target, config_out=tmp_path / "new" / "mk.toml")

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(target) == 0o750
    assert mode(target / "dkim") == 0o750
    assert mode(target / "passwd") == 0o640
    assert mode(target / "store" / "mailkeep.sqlite3") == 0o640
    assert mode(target / "queue") == 0o751
    assert mode(target / "queue" / "maildrop") == 0o1733
    assert mode(tmp_path / "new" / "mk.toml") == 0o640
    for p in [target, *target.rglob("*")]:
        if p.is_file():
            assert mode(p) & ~0o640 == 0, p
        elif p.is_dir() and p != target / "queue" / "maildrop":
            assert mode(p) & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022) == 0, p


def test_a_backup_records_no_mode_restore_would_refuse(source, tmp_path):
    data_dir, config = source
    os.chmod(data_dir / "passwd", 0o4777)
    os.chmod(data_dir / "dkim", 0o2777)
    os.chmod(config, 0o666)
    body = json.loads((create_backup(data_dir, tmp_path / "backups", config_path=config).path
                       / "manifest.json").read_text())
    files = {f["path"]: f["mode"] for f in body["files"]}
    dirs = {d["path"]: d["mode"] for d in body["dirs"]}
    assert files["data/passwd"] == 0o640
    assert files["config/mailkeep.toml"] == 0o640
    assert dirs["data/dkim"] == 0o750
    assert dirs["data/queue/maildrop"] == 0o1733


def test_a_symbolic_link_inside_a_backup_is_never_followed(source, tmp_path):
    """A directory of the backup replaced by a link to elsewhere: verify and restore refuse
    it instead of reading (and reporting the size of) files outside the backup."""
    data_dir, config = source
    path = create_backup(data_dir, tmp_path / "backups", config_path=config).path
    outside = tmp_path / "outside"
    (path / "data" / "dkim").rename(outside)  # same bytes: only the link is wrong
    (path / "data" / "dkim").symlink_to(outside)
    with pytest.raises(CorruptBackup, match="symbolic link"):
        verify_backup(path)
    target = tmp_path / "new" / "data"
    with pytest.raises(CorruptBackup, match="symbolic link"):
        restore_backup(path, target)
    assert not target.exists()
    # The configuration file too (read for --config-out before anything is restored).
    (path / "data" / "dkim").unlink()
    outside.rename(path / "data" / "dkim")
    verify_backup(path)
    (path / "config").rename(tmp_path / "config-elsewhere")
    (path / "config").symlink_to(tmp_path / "config-elsewhere")
    with pytest.raises(CorruptBackup, match="symbolic link"):
        restore_backup(path, target, config_out=tmp_path / "new" / "mk.toml")
    assert not (tmp_path / "new" / "mk.toml").exists()
