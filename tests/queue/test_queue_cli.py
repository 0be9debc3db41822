"""`mailkeep queue ...`, `mailkeep sendmail` and the mailkeep-sendmail / mailkeep-mailq
programs, against a temporary configuration."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from queue_helpers import new_message

from mailkeep.cli import main as cli_main
from mailkeep.cli.sendmail_cmd import parse_sendmail_args, run_sendmail
from mailkeep.queue.maildrop import list_drops, read_drop
from mailkeep.queue.store import QueueStore, RecipientOutcome

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _available_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    available = [m for m in cli_main.COMMAND_MODULES if importlib.util.find_spec(m) is not None]
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", available)


@pytest.fixture
def data_dir(config_file: Path) -> Path:
    return config_file.parent / "data"


@pytest.fixture
def queue(data_dir: Path):
    store = QueueStore.for_data_dir(data_dir)
    yield store
    store.close()


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    status = cli_main.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def sendmail(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_sendmail(argv, stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def fill(queue: QueueStore) -> None:
    """Three messages: one deferred for two reasons, one held bounce, one fresh."""
    async def go() -> None:
        await queue.enqueue([new_message("0B8K5T3P4X2MQ1", "a@example.net", "b@example.net",
                                         "c@example.org", source=b"S" * 3000)])
        await queue.enqueue([new_message("0B8K5T3P4X2MQ2", "me@example.com", sender="",
                                         kind="bounce", hold=True)])
        await queue.enqueue([new_message("0C9L6V4Q5Y3NR1", "d@example.net")])
        await queue.record_attempt("0B8K5T3P4X2MQ1", [
            RecipientOutcome("a@example.net", "deferred", 450, "4.2.0 mailbox busy",
                             "mx.example.net"),
            RecipientOutcome("b@example.net", "delivered", 250, "ok"),
            RecipientOutcome("c@example.org", "deferred", None,
                             "connect to mx.example.org[192.0.2.1]:25: refused\x1b[31m")],
            time.time() + 600, "connect failed")
    asyncio.run(go())


def test_list_empty_queue_as_a_separate_process(config_file: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mailkeep.cli.main", "queue", "list"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Mail queue is empty\n"


def test_list_is_mailq_like(queue: QueueStore, capsys: pytest.CaptureFixture) -> None:
    fill(queue)
    status, out, _ = run(["queue", "list"], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["-Queue", "ID-", "--Size--", "----Arrival", "Time----",
                                "-Sender/Recipient-------"]
    first = lines[1].split()
    assert first[0] == "0B8K5T3P4X2MQ1" and first[-1] == "me@example.com"
    size = len(b"Received: by mail.example.com\r\n") + 3000
    assert first[1] == str(size)
    block = [line.strip() for line in lines[2:6]]
    assert block == ["(450 4.2.0 mailbox busy)", "a@example.net",
                     "(connect to mx.example.org[192.0.2.1]:25: refused?[31m)",
                     "c@example.org"]  # delivered b@ is gone; no terminal escapes
    held = lines[7].split()
    assert held[0] == "0B8K5T3P4X2MQ2!" and held[-1] == "MAILER-DAEMON"
    assert lines[8].strip() == "me@example.com"
    assert lines[10].split()[0] == "0C9L6V4Q5Y3NR1"
    assert lines[11].strip() == "d@example.net"
    assert lines[-1] == "-- 4 Kbytes in 3 Requests."


def test_show(queue: QueueStore, capsys: pytest.CaptureFixture) -> None:
    fill(queue)
    status, out, _ = run(["queue", "show", "0B8K5T3P4X2MQ1"], capsys)
    assert status == 0
    assert "Queue ID:      0B8K5T3P4X2MQ1\n" in out
    assert "State:         waiting, next attempt " in out
    assert "Sender:        <me@example.com>\n" in out
    assert "Attempts:      1\n" in out
    assert "Last error:    connect failed\n" in out
    assert "  <b@example.net>  delivered  attempts=1\n" in out
    assert "      last reply (mx.example.net): 450 4.2.0 mailbox busy\n" in out
    assert out.endswith("Received: by mail.example.com\n" + "S" * 3000 + "\n")
    status, out, err = run(["queue", "show", "NOSUCHID99"], capsys)
    assert status == 1 and "no such queued message" in err


def test_hold_release_retry_delete_flush(queue: QueueStore,
                                         capsys: pytest.CaptureFixture) -> None:
    fill(queue)
    status, out, err = run(["queue", "hold", "0C9L6V"], capsys)
    assert (status, out) == (0, "1 message placed on hold\n")
    assert queue.get("0C9L6V4Q5Y3NR1").hold
    status, out, err = run(["queue", "hold", "0B8K5T"], capsys)
    assert (status, out) == (1, "") and "0B8K5T matches 2 messages" in err
    assert not queue.get("0B8K5T3P4X2MQ1").hold
    status, out, err = run(["queue", "release", "--all"], capsys)
    assert (status, out) == (0, "2 messages released from hold\n")
    assert not any(e.hold for e in queue.list())
    status, out, _ = run(["queue", "retry", "0B8K5T3P4X2MQ1", "nosuch1234"], capsys)
    assert status == 1 and out == "1 message scheduled for immediate delivery\n"
    assert queue.get("0B8K5T3P4X2MQ1").next_attempt <= time.time()
    status, out, _ = run(["queue", "flush"], capsys)
    assert (status, out) == (0, "3 messages scheduled for immediate delivery\n")
    status, out, _ = run(["queue", "delete", "0B8K5T3P4X2MQ2"], capsys)
    assert (status, out) == (0, "1 message deleted\n")
    status, out, _ = run(["queue", "delete", "--all"], capsys)
    assert (status, out) == (0, "2 messages deleted\n")
    assert queue.count() == 0 and os.listdir(queue.messages_dir) == []


def test_ids_or_all_are_required(config_file: Path, capsys: pytest.CaptureFixture) -> None:
    status, _, err = run(["queue", "delete"], capsys)
    assert status == 2 and "--all" in err
    status, _, err = run(["queue", "delete", "--all", "0B8K5T3P4X2MQ1"], capsys)
    assert status == 2 and "not both" in err


def test_bad_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MAILKEEP_CONFIG", str(tmp_path / "missing.toml"))
    status, _, err = run(["queue", "list"], capsys)
    assert status == 78 and "missing.toml" in err
    assert sendmail(["-bp"])[0] == 78


def test_help_has_examples(capsys: pytest.CaptureFixture) -> None:
    for argv in (["queue", "--help"], ["queue", "hold", "--help"]):
        with pytest.raises(SystemExit):
            cli_main.main(argv)
        assert "Example" in capsys.readouterr().out
    status, out, _ = sendmail(["--help"])
    assert status == 0 and "Examples:" in out and "-t" in out


FAKE_SERVER = """\
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
# Written whole, then renamed: the test may look the moment the name appears.
tmp = out.with_suffix(".tmp")
signal.signal(signal.SIGUSR1, lambda *a: (tmp.write_text("SIGUSR1"), tmp.rename(out)))
out.with_suffix(".ready").write_text("ready")
time.sleep(30)
"""


def test_changes_wake_the_running_server(queue: QueueStore, data_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    fill(queue)
    script = tmp_path / "fake_mailkeep_server.py"  # "mailkeep" in its command line
    script.write_text(FAKE_SERVER)
    got = tmp_path / "got.txt"
    server = subprocess.Popen([sys.executable, str(script), str(got)])
    try:
        deadline = time.monotonic() + 20
        while not got.with_suffix(".ready").exists():
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.02)
        (data_dir / "mailkeep.pid").write_text(f"{server.pid}\n")
        assert run(["queue", "flush"], capsys)[0] == 0
        while not got.exists():
            assert time.monotonic() < deadline, "the server was not signalled"
            time.sleep(0.02)
        assert got.read_text() == "SIGUSR1"
    finally:
        server.kill()
        server.wait()
    # A stale pid file naming some other program: that program is left alone.
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (data_dir / "mailkeep.pid").write_text(f"{bystander.pid}\n")
        assert run(["queue", "retry", "--all"], capsys)[0] == 0
        time.sleep(0.2)
        assert bystander.poll() is None, "a process that is not Mailkeep was signalled"
    finally:
        bystander.send_signal(signal.SIGTERM)
        bystander.wait()


# -- sendmail ----------------------------------------------------------------------------


def test_sendmail_t_removes_bcc(data_dir: Path, config_file: Path) -> None:
    QueueStore.for_data_dir(data_dir).close()  # the server created the queue
    message = (b"From: me@example.com\nTo: ann@example.net\nBcc: hidden@example.net\n"
               b"Subject: report\n\nAll done.\n.\nnot part of the message\n")
    status, _, err = sendmail(["-t", "-f", "me@example.com", "-FMe Myself", "-odi", "-oem"],
                              message)
    assert (status, err) == (0, "")
    [path] = list_drops(data_dir / "queue" / "maildrop")
    drop = read_drop(path)
    assert drop.recipients == ("ann@example.net", "hidden@example.net")
    assert (drop.sender, drop.full_name) == ("me@example.com", "Me Myself")
    assert path.read_bytes()[drop.offset:] == (b"From: me@example.com\r\nTo: ann@example.net"
                                               b"\r\nSubject: report\r\n\r\nAll done.\r\n")


def test_sendmail_flags(data_dir: Path, config_file: Path) -> None:
    QueueStore.for_data_dir(data_dir).close()
    maildrop = data_dir / "queue" / "maildrop"
    status, _, err = sendmail(["-oi", "-N", "success,failure", "-R", "hdrs", "-V", "E-7",
                               "-B8BITMIME", "-v", "--", "ann@example.net"],
                              b"Subject: x\n\n.\nkept\n")
    assert status == 0 and "dropped as" in err
    drop = read_drop(list_drops(maildrop)[-1])
    assert (drop.notify, drop.ret, drop.envid, drop.body_type) == (
        ("SUCCESS", "FAILURE"), "HDRS", "E-7", "8BITMIME")
    assert drop.path.read_bytes()[drop.offset:] == b"Subject: x\r\n\r\n.\r\nkept\r\n"
    status, _, err = sendmail(["-bm", "-i", "-oXlogfile", "ann@example.net"], b"x\n")
    assert status == 0 and "warning: -oXlogfile: option ignored" in err
    assert read_drop(list_drops(maildrop)[-1]).sender is None


@pytest.mark.parametrize(("argv", "stdin", "status", "message"), [
    (["-z", "a@example.net"], b"x\n", 64, "unknown option -z"),
    (["-bs"], b"", 64, "not supported"),
    (["-N", "sometimes", "a@example.net"], b"x\n", 64, "-N"),
    (["-R", "most", "a@example.net"], b"x\n", 64, "-R"),
    (["-f"], b"", 64, "needs a value"),
    ([], b"Subject: nobody\n\nx\n", 64, "no recipient"),
    (["-t"], b"Subject: nobody\n\nx\n", 64, "no recipient addresses found in the message"),
    (["not-an-address"], b"x\n", 67, "bad recipient"),
    (["-f", "bad sender", "a@example.net"], b"x\n", 67, "bad sender"),
    (["a@example.net"], b"Subject: big\n\n" + b"y" * 3000 + b"\n", 65, "limit"),
])
def test_sendmail_errors(data_dir: Path, config_file: Path, argv: list[str], stdin: bytes,
                         status: int, message: str) -> None:
    config_file.write_text(config_file.read_text() + '\n[smtp]\nmessage_size_limit = "2K"\n')
    QueueStore.for_data_dir(data_dir).close()
    got, _, err = sendmail(argv, stdin)
    assert got == status, err
    assert message in err
    assert list_drops(data_dir / "queue" / "maildrop") == []


def test_sendmail_without_a_server_is_a_temporary_failure(config_file: Path) -> None:
    status, _, err = sendmail(["a@example.net"], b"x\n")
    assert status == 75 and "has the Mailkeep server been started" in err


def test_sendmail_bp_and_q(queue: QueueStore) -> None:
    fill(queue)
    status, out, _ = sendmail(["-bp"])
    assert status == 0 and out.endswith("-- 4 Kbytes in 3 Requests.\n")
    assert sendmail(["-q"])[0] == 0
    assert [e.queue_id for e in queue.due(time.time())] == ["0B8K5T3P4X2MQ1",
                                                           "0C9L6V4Q5Y3NR1"]
    assert sendmail(["-q30m"])[2].startswith("sendmail: warning: -q30m")


def test_option_parsing_follows_getopt() -> None:
    opts = parse_sendmail_args(["-tif", "me@example.com", "-oi", "ann@example.net", "-x"])
    assert (opts.extract, opts.ignore_dots, opts.sender) == (True, True, "me@example.com")
    assert opts.recipients == ["ann@example.net", "-x"]  # options end at the first operand
    opts = parse_sendmail_args(["-C", "/etc/x.toml", "-h", "5", "-L", "cron", "-bm", "--",
                                "-odd@example.net"])
    assert (opts.config, opts.mode, opts.recipients) == ("/etc/x.toml", "m",
                                                          ["-odd@example.net"])


def test_installed_programs(queue: QueueStore, data_dir: Path, config_file: Path,
                            tmp_path: Path) -> None:
    env = {**os.environ, "MAILKEEP_CONFIG": str(config_file)}
    result = subprocess.run([VENV_BIN / "mailkeep-sendmail", "-t"],
                            input=b"To: ann@example.net\r\nSubject: cron\r\n\r\nok\r\n",
                            capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    [path] = list_drops(data_dir / "queue" / "maildrop")
    assert read_drop(path).recipients == ("ann@example.net",)
    asyncio.run(queue.enqueue([new_message("MAILQ00001", sender="cron@example.com")]))
    for program in ("mailkeep-mailq",):
        result = subprocess.run([VENV_BIN / program], capture_output=True, text=True,
                                env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "MAILQ00001" in result.stdout and "cron@example.com" in result.stdout
    # Installed under the name "mailq", the sendmail program lists the queue.
    link = tmp_path / "mailq"
    link.symlink_to(VENV_BIN / "mailkeep-sendmail")
    result = subprocess.run([link], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and "1 Request." in result.stdout, result.stderr
    # And through `mailkeep sendmail`, the command-line noun.
    result = subprocess.run([sys.executable, "-m", "mailkeep.cli.main", "sendmail", "-oi",
                             "bob@example.net"], input=b"Subject: via noun\n\n.\n",
                            capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    drops = [read_drop(p) for p in list_drops(data_dir / "queue" / "maildrop")]
    assert [d.recipients for d in drops] == [("ann@example.net",), ("bob@example.net",)]
