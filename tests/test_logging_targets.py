"""Where log lines go: one file per subsystem, size rotation, syslog and the journal (each
received by a Unix datagram socket this test binds), the fallbacks, [log] in the config,
and `mailkeep log trace` following one message across the files."""

from __future__ import annotations

import array
import gzip
import logging
import os
import re
import socket
import time
from pathlib import Path

import pytest
from tests.support.logs import reset_logging, wait_for_text

from mailkeep import logfmt
from mailkeep.cli.main import main as cli_main
from mailkeep.config import ConfigError, load_config
from mailkeep.logfmt import LineWriter, log, parse_logfmt, setup_logging

RECEIVE_TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    reset_logging()


class DatagramSink:
    """A Unix datagram socket standing in for /dev/log or the journal's socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(RECEIVE_TIMEOUT)

    def receive(self) -> bytes:
        """One datagram; a record passed as a memfd (SCM_RIGHTS) is read from the fd."""
        fds = array.array("i")
        data, ancillary, _flags, _addr = self.sock.recvmsg(
            1 << 20, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        if fds:
            fd = fds[0]
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                for extra in fds:
                    os.close(extra)
        return data

    def receive_until(self, marker: bytes) -> list[bytes]:
        """Datagrams up to and including the first that contains ``marker``."""
        got = []
        deadline = time.monotonic() + RECEIVE_TIMEOUT
        while time.monotonic() < deadline:
            got.append(self.receive())
            if marker in got[-1]:
                return got
        raise AssertionError(f"{marker!r} never arrived; got {got!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink(tmp_path):
    sinks: list[DatagramSink] = []

    def make(name: str) -> DatagramSink:
        s = DatagramSink(tmp_path / name)
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.close()


def parse_journal(data: bytes) -> dict[str, str]:
    """The journal's native protocol: ``NAME=value\\n``, or for values with line feeds
    ``NAME\\n`` + 64-bit little-endian length + value + ``\\n``."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            i = end + 1
            continue
        size = int.from_bytes(data[end + 1:end + 9], "little")
        value = data[end + 9:end + 9 + size]
        assert data[end + 9 + size:end + 10 + size] == b"\n", "binary field not terminated"
        fields[line.decode()] = value.decode()
        i = end + 10 + size
    return fields


# -- files ----------------------------------------------------------------------------------


def test_each_subsystem_gets_its_own_file_in_dir(tmp_path):
    directory = tmp_path / "logs"  # created by the setup
    setup_logging("logfmt", "info", directory=str(directory))
    log(logging.getLogger("mailkeep.smtp"), "message", id="AAA1", to="a@example.test")
    log(logging.getLogger("mailkeep.queue"), "delivery", id="AAA1", status="delivered")
    log(logging.getLogger("mailkeep.policy.clamd"), "clean", id="AAA1")
    log(logging.getLogger("mailkeep"), "hello")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        # Through logging (not log()): same routing, warning and above written at once.
        logging.getLogger("mailkeep.imap").exception("session failed", extra={"id": "S1"})
    imap = (directory / "imap.log").read_text()
    assert "msg=\"session failed\" id=S1" in imap and "RuntimeError: boom" in imap
    smtp = wait_for_text(directory / "smtp.log", "msg=message")
    assert "subsystem=smtp msg=message id=AAA1 to=a@example.test" in smtp
    assert "subsystem=queue msg=delivery" in wait_for_text(directory / "queue.log", "delivery")
    # A sub-logger writes to its subsystem's file, and says which part it is.
    assert "subsystem=policy.clamd msg=clean" in wait_for_text(directory / "policy.log", "clean")
    assert "subsystem=main msg=hello" in wait_for_text(directory / "main.log", "hello")
    assert "queue" not in smtp
    assert sorted(p.name for p in directory.iterdir()) == [
        "imap.log", "main.log", "policy.log", "queue.log", "smtp.log"]
    assert (directory / "smtp.log").stat().st_mode & 0o777 == logfmt.FILE_MODE


def test_files_map_sends_chosen_subsystems_elsewhere_and_the_rest_to_file(tmp_path):
    main_log = tmp_path / "mailkeep.log"
    mx_log = tmp_path / "mx" / "mx.log"
    setup_logging("json", "info", str(main_log), files={"smtp": str(mx_log),
                                                      "submission": str(mx_log)},
                  buffered=True)
    log(logging.getLogger("mailkeep.smtp"), "message", id="B1")
    log(logging.getLogger("mailkeep.submission"), "submitted", id="B2")
    log(logging.getLogger("mailkeep.store"), "opened", logging.WARNING)
    content = wait_for_text(mx_log, '"B2"')
    docs = [parse_line_json(line) for line in content.splitlines()]
    assert [(d["subsystem"], d["msg"], d["id"]) for d in docs] == [
        ("smtp", "message", "B1"), ("submission", "submitted", "B2")]
    assert '"subsystem": "store"' in main_log.read_text()


def parse_line_json(line: str) -> dict:
    import json

    return json.loads(line)


def test_size_rotation_keeps_rotate_keep_files_and_loses_no_kept_line(tmp_path):
    path = tmp_path / "smtp.log"
    writer = LineWriter(str(path), rotate_size=4096, rotate_keep=3)
    lines = [f"ts=2026-01-01T00:00:00.000Z level=info subsystem=smtp msg=line n={n:05d}"
             for n in range(1000)]
    try:
        for n, line in enumerate(lines):
            writer.write(line, urgent=n % 7 == 0)   # writes of various batch sizes
    finally:
        writer.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["smtp.log", "smtp.log.1", "smtp.log.2", "smtp.log.3"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 4096
    # Oldest to newest, the kept files hold the last lines written, in order, none missing.
    kept = "".join((tmp_path / name).read_text()
                   for name in ("smtp.log.3", "smtp.log.2", "smtp.log.1", "smtp.log"))
    kept_lines = kept.splitlines()
    assert kept_lines == lines[-len(kept_lines):]
    # A file is rotated only when the next batch (at most 7 lines here) would not fit.
    for name in ("smtp.log.1", "smtp.log.2", "smtp.log.3"):
        assert (tmp_path / name).stat().st_size > 4096 - 7 * (len(lines[0]) + 1)


def test_rotation_of_a_big_existing_file_happens_before_the_first_write(tmp_path):
    path = tmp_path / "queue.log"
    path.write_text("old\n" * 2000)  # 8000 bytes, more than rotate_size
    writer = LineWriter(str(path), rotate_size=4096, rotate_keep=2)
    writer.write("new", urgent=True)
    writer.close()
    assert path.read_text() == "new\n"
    assert (tmp_path / "queue.log.1").read_text() == "old\n" * 2000


def test_rotation_and_logrotate_moving_the_file_both_work(tmp_path):
    path = tmp_path / "imap.log"
    writer = LineWriter(str(path), rotate_size=1 << 20)
    try:
        writer.write("before", urgent=True)
        os.rename(path, tmp_path / "imap.log-20260101")   # logrotate's dateext
        writer.write("after", urgent=True)
    finally:
        writer.close()
    assert (tmp_path / "imap.log-20260101").read_text() == "before\n"
    assert path.read_text() == "after\n"


def test_an_unwritable_file_sends_the_lines_to_stderr(tmp_path, capfd):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    setup_logging("logfmt", "info", str(blocked / "x.log"), buffered=True)
    log(logging.getLogger("mailkeep.smtp"), "rescued", logging.WARNING, id="C1")
    err = capfd.readouterr().err
    assert "cannot write" in err and "msg=rescued id=C1" in err


# -- syslog ---------------------------------------------------------------------------------

SYSLOG_LINE = re.compile(
    r"<(?P<pri>\d+)>(?P<month>[A-Z][a-z]{2}) (?P<day>[ \d]\d) \d\d:\d\d:\d\d "
    r"(?P<tag>[^\[]+)\[(?P<pid>\d+)\]: (?P<msg>.*)")


def test_syslog_datagrams_have_the_classic_dev_log_format(sink):
    dev_log = sink("log")
    used = setup_logging("logfmt", "info", target="syslog", syslog_socket=str(dev_log.path))
    assert used == "syslog"
    log(logging.getLogger("mailkeep.smtp"), "message", id="D1", to="a b@example.test")
    log(logging.getLogger("mailkeep.queue"), "deferred", logging.WARNING, id="D1")
    received = dev_log.receive_until(b"deferred")
    lines = [SYSLOG_LINE.fullmatch(d.decode()) for d in received]
    assert all(lines), received
    first, second = lines[0], lines[-1]
    assert first["month"] in logfmt._MONTHS
    assert int(first["pri"]) == 2 * 8 + 6      # facility mail, severity info
    assert int(second["pri"]) == 2 * 8 + 4     # warning
    assert (first["tag"], second["tag"]) == ("mailkeep/smtp", "mailkeep/queue")
    assert int(first["pid"]) == os.getpid()
    assert parse_logfmt(first["msg"]) == {"level": "info", "msg": "message", "id": "D1",
                                          "to": "a b@example.test"}


def test_syslog_facility_and_length_limit(sink):
    dev_log = sink("log")
    setup_logging("logfmt", "info", target="syslog", syslog_socket=str(dev_log.path),
                  facility="local3")
    log(logging.getLogger("mailkeep.smtp"), "big", logging.ERROR, text="x" * 20000)
    data = dev_log.receive()
    assert data.startswith(b"<" + str(19 * 8 + 3).encode() + b">")
    assert len(data) == logfmt.MAX_SYSLOG_BYTES


def test_syslog_that_goes_away_sends_lines_to_stderr(sink, capfd):
    dev_log = sink("log")
    setup_logging("logfmt", "info", target="syslog", syslog_socket=str(dev_log.path))
    dev_log.close()
    dev_log.path.unlink()
    log(logging.getLogger("mailkeep.smtp"), "orphan", logging.WARNING, id="E1")
    err = capfd.readouterr().err
    assert "cannot send to syslog" in err
    assert "subsystem=smtp msg=orphan id=E1" in err


# -- journald --------------------------------------------------------------------------------


def test_journal_records_use_the_native_protocol_with_a_field_per_key(sink):
    journal = sink("journal.sock")
    used = setup_logging("logfmt", "info", target="journald",
                         journald_socket=str(journal.path))
    assert used == "journald"
    log(logging.getLogger("mailkeep.delivery"), "stored", id="F1", from_="<a@b>",
        mailbox="INBOX", ok=True, note=None)
    fields = parse_journal(journal.receive())
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "mailkeep/delivery"
    assert fields["SYSLOG_FACILITY"] == "2"
    assert fields["MAILKEEP_SUBSYSTEM"] == "delivery"
    assert fields["MAILKEEP_MSG"] == "stored"
    assert fields["MAILKEEP_ID"] == "F1"
    assert fields["MAILKEEP_FROM"] == "<a@b>"
    assert fields["MAILKEEP_OK"] == "true"
    assert fields["MAILKEEP_NOTE"] == ""
    assert parse_logfmt(fields["MESSAGE"]) == {"msg": "stored", "id": "F1", "from_": "<a@b>",
                                               "mailbox": "INBOX", "ok": "true", "note": ""}


def test_journal_multiline_values_use_the_binary_form(sink):
    journal = sink("journal.sock")
    setup_logging("json", "info", target="journald", journald_socket=str(journal.path))
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        logging.getLogger("mailkeep.queue").exception("attempt failed", extra={"id": "G1"})
    fields = parse_journal(journal.receive())
    assert fields["PRIORITY"] == "3"
    assert "Traceback" in fields["MAILKEEP_ERROR"] and "line one\nline two" in \
        fields["MAILKEEP_ERROR"]
    assert fields["MAILKEEP_ID"] == "G1"
    import json

    assert json.loads(fields["MESSAGE"])["msg"] == "attempt failed"


def test_a_record_too_big_for_a_datagram_is_passed_as_a_sealed_memfd(sink):
    journal = sink("journal.sock")
    setup_logging("logfmt", "info", target="journald", journald_socket=str(journal.path))
    big = "y" * (4 << 20)  # far beyond any datagram the socket takes
    log(logging.getLogger("mailkeep.store"), "huge", logging.WARNING, id="H1", blob=big)
    fields = parse_journal(journal.receive())
    assert fields["MAILKEEP_ID"] == "H1" and fields["MAILKEEP_BLOB"] == big


def test_journald_absent_falls_back_to_syslog_then_stderr(sink, tmp_path, capfd):
    dev_log = sink("log")
    used = setup_logging("logfmt", "info", target="journald",
                         journald_socket=str(tmp_path / "no-journal"),
                         syslog_socket=str(dev_log.path))
    assert used == "syslog"
    notice = dev_log.receive()
    assert b"no journal socket" in notice and b"logging to syslog" in notice
    log(logging.getLogger("mailkeep.smtp"), "via syslog", id="J1")
    assert b"id=J1" in dev_log.receive_until(b"J1")[-1]

    used = setup_logging("logfmt", "info", target="journald",
                         journald_socket=str(tmp_path / "no-journal"),
                         syslog_socket=str(tmp_path / "no-syslog"))
    assert used == "stderr"
    log(logging.getLogger("mailkeep.smtp"), "via stderr", logging.WARNING, id="J2")
    err = capfd.readouterr().err
    assert "no journal socket" in err and 'msg="via stderr" id=J2' in err


# -- [log] in the configuration ----------------------------------------------------------------


def _config(tmp_path: Path, log_section: str) -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "data"\n\n[log]\n{log_section}')
    return path


def test_log_config_reads_every_key(tmp_path):
    config = load_config(_config(tmp_path, '''\
format = "json"
dir = "logs"
rotate_size = "10M"
rotate_keep = 4
facility = "local1"

[log.files]
smtp = "mx.log"
imap = "/var/log/imap.log"
'''))
    log_config = config.log
    assert log_config.target == "file"
    assert log_config.dir == tmp_path / "logs"
    assert dict(log_config.files) == {"smtp": tmp_path / "logs" / "mx.log",
                                      "imap": Path("/var/log/imap.log")}
    assert (log_config.rotate_size, log_config.rotate_keep) == (10 * 1024 * 1024, 4)
    assert log_config.facility == "local1"
    journald = load_config(_config(tmp_path, 'target = "journald"\n')).log
    assert journald.target == "journald"
    assert str(journald.journald_socket) == "/run/systemd/journal/socket"
    assert load_config(_config(tmp_path, "")).log.target == "stderr"


@pytest.mark.parametrize(("section", "message"), [
    ('file = "a.log"\ndir = "logs"\n', "log.dir: cannot be set together with file"),
    ('target = "file"\n', 'log.target: "file" needs file, dir or [log.files]'),
    ('target = "syslog"\nfile = "a.log"\n', 'log.file: only for target = "file"'),
    ('dir = "logs"\nrotate_size = "100"\n', "log.rotate_size: too small"),
    ('dir = "logs"\nrotate_keep = 0\n', "log.rotate_keep: 0 is out of range"),
    ('target = "journald"\njournald_socket = "run/j.sock"\n', "must be an absolute path"),
    ('target = "syslog"\nfacility = "kernel"\n', "log.facility: 'kernel' is not a valid"),
    ('target = "graylog"\n', "log.target: 'graylog' is not a valid value"),
    ('dir = "logs"\n[log.files]\n"../etc" = "x.log"\n', "not a subsystem name"),
])
def test_log_config_mistakes_are_reported(tmp_path, section, message):
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, section))
    assert message in str(info.value)


def test_configure_applies_a_log_config(tmp_path):
    config = load_config(_config(tmp_path, 'dir = "logs"\nrotate_size = "64K"\n'))
    assert logfmt.configure(config.log) == "file"
    log(logging.getLogger("mailkeep.pop3"), "login", id="K1")
    wait_for_text(tmp_path / "logs" / "pop3.log", "id=K1")
    assert logfmt.current_files() == [str(tmp_path / "logs" / "pop3.log")]


# -- mailkeep log trace ------------------------------------------------------------------------


def _write_message_life(directory: Path) -> None:
    """Lines of two messages (and a bounce) spread over the subsystems' files, through the
    same writers the server uses."""
    setup_logging("logfmt", "info", directory=str(directory))
    smtp = logging.getLogger("mailkeep.smtp")
    submission = logging.getLogger("mailkeep.submission")
    queue = logging.getLogger("mailkeep.queue")
    log(smtp, "message", id="MSG00001", client="192.0.2.9", outcome="delivered",
        verdict="junk")
    log(submission, "submitted", id="MSG00002", account="demo@example.test")
    time.sleep(0.003)
    log(queue, "queued", id="MSG00002", to="x@elsewhere.test")
    time.sleep(0.003)
    log(queue, "delivery", id="MSG00002", status="failed", to="x@elsewhere.test")
    log(queue, "dsn queued", id="MSG00002", dsn_ids="DSN00003")
    time.sleep(0.003)
    log(queue, "queued", id="DSN00003", to="demo@example.test")
    time.sleep(0.003)  # lines of the same millisecond in two files keep the files' order
    log(logging.getLogger("mailkeep.delivery"), "stored", id="DSN00003", mailbox="INBOX")
    log(smtp, "note", other="MSG00002 in a value is not an id")
    logfmt.reset_logging()


def test_trace_prints_one_message_across_files_in_time_order_with_its_bounce(tmp_path,
                                                                             capsys):
    directory = tmp_path / "logs"
    _write_message_life(directory)
    # An older, rotated and compressed copy holds the message's first line.
    with gzip.open(directory / "submission.log.2.gz", "wt") as old:
        old.write("ts=2020-01-01T00:00:00.000Z level=info subsystem=submission "
                  "msg=\"auth ok\" id=MSG00002\n")
    config = _config(tmp_path, 'dir = "logs"\n')
    assert cli_main(["log", "trace", "MSG00002", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    events = [(f["id"], f["msg"]) for f in map(parse_logfmt, out)]
    assert events == [("MSG00002", "auth ok"), ("MSG00002", "submitted"),
                      ("MSG00002", "queued"), ("MSG00002", "delivery"),
                      ("MSG00002", "dsn queued"), ("DSN00003", "queued"),
                      ("DSN00003", "stored")]
    stamps = [parse_logfmt(line)["ts"] for line in out]
    assert stamps == sorted(stamps)

    assert cli_main(["log", "trace", "MSG00002", "--no-follow", "--config",
                     str(config)]) == 0
    assert "DSN00003" not in capsys.readouterr().out.replace("dsn_ids=DSN00003", "")

    only_smtp = str(directory / "smtp.log")
    assert cli_main(["log", "trace", "MSG00001", "--file", only_smtp]) == 0
    assert "verdict=junk" in capsys.readouterr().out


def test_trace_reads_json_lines_too(tmp_path, capsys):
    path = tmp_path / "all.log"
    setup_logging("json", "info", str(path), buffered=True)
    log(logging.getLogger("mailkeep.smtp"), "message", id="JSON0001", outcome="delivered")
    log(logging.getLogger("mailkeep.smtp"), "message", id="JSON0002", outcome="failed")
    logfmt.reset_logging()
    assert cli_main(["log", "trace", "JSON0002", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert '"JSON0002"' in out and "JSON0001" not in out


def test_trace_explains_what_it_cannot_do(tmp_path, capsys):
    config = _config(tmp_path, 'target = "journald"\n')
    assert cli_main(["log", "trace", "MSG00009", "--config", str(config)]) == 2
    assert "journalctl MAILKEEP_ID=MSG00009" in capsys.readouterr().err
    assert cli_main(["log", "trace", "../../etc/passwd", "--file", str(config)]) == 2
    assert "not a message id" in capsys.readouterr().err
    empty = tmp_path / "empty.log"
    empty.write_text("ts=x level=info msg=hello id=OTHER001\n")
    assert cli_main(["log", "trace", "MSG00009", "--file", str(empty)]) == 1
    assert "no line with id=MSG00009" in capsys.readouterr().err
