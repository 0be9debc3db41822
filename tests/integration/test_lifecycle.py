"""Running the server for years: reload, clean stop, crash recovery, LDA, localserve."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

from .conftest import MAILKEEP, RunningServer, wait_for_port


def _subject_count(server: RunningServer, account: str, prefix: bytes) -> int:
    return sum(1 for m in server.messages(account) if prefix in m)


def test_sigterm_stops_cleanly(fresh_server: RunningServer):
    pidfile = fresh_server.data_dir / "mailkeep.pid"
    assert pidfile.exists()
    assert fresh_server.stop(signal.SIGTERM) == 0
    assert not pidfile.exists()
    assert "msg=stopped" in fresh_server.log_text()


def test_cli_edit_reloads_running_server_without_dropping_sessions(fresh_server: RunningServer):
    # A session opened before the reload keeps working after it.
    held = smtplib.SMTP("127.0.0.1", fresh_server.smtp_port)
    held.ehlo("held.example.net")
    with smtplib.SMTP("127.0.0.1", fresh_server.smtp_port) as s:
        s.ehlo("x")
        s.mail("a@example.net")
        assert s.rcpt("newbie@other.test")[0] == 550
    out = fresh_server.cli("account", "add", "newbie@other.test", "--password-stdin",
                           input="a long enough password\n")
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "msg=reloaded" not in fresh_server.log_text():
        time.sleep(0.1)
    assert "msg=reloaded" in fresh_server.log_text()
    with smtplib.SMTP("127.0.0.1", fresh_server.smtp_port) as s:
        assert s.sendmail("a@example.net", ["newbie@other.test"], "Subject: welcome\r\n\r\nx\r\n") == {}
    assert held.sendmail("a@example.net", ["demo@example.test"], "Subject: held\r\n\r\nx\r\n") == {}
    held.quit()
    assert _subject_count(fresh_server, "newbie@other.test", b"Subject: welcome") == 1


def test_invalid_config_on_reload_keeps_running(fresh_server: RunningServer):
    good = fresh_server.config.read_text()
    fresh_server.config.write_text(good + "\n[bogus_section]\nx = 1\n")
    os.kill(fresh_server.proc.pid, signal.SIGHUP)
    time.sleep(1)
    assert "reload failed" in fresh_server.log_text()
    with smtplib.SMTP("127.0.0.1", fresh_server.smtp_port) as s:
        assert s.sendmail("a@example.net", ["demo@example.test"], "Subject: still\r\n\r\nx\r\n") == {}
    fresh_server.config.write_text(good)


def test_kill_9_loses_no_acknowledged_message(fresh_server: RunningServer):
    """Send from several threads, SIGKILL the server mid-stream, restart, check every 250."""
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", fresh_server.smtp_port, timeout=5) as s:
                    while not stop.is_set():
                        tag = f"crash-{n}-{i}"
                        i += 1
                        s.sendmail("a@example.net", ["demo@example.test"],
                                   f"Subject: {tag}\r\n\r\n{'y' * 1500}\r\n")
                        with lock:
                            acknowledged.append(tag)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(0.8)
            fresh_server.proc.kill()  # SIGKILL: no cleanup at all
            fresh_server.proc.wait()
            fresh_server.proc = None
            fresh_server.start()
    finally:
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(acknowledged) > 20
    found = set()
    for m in fresh_server.messages("demo@example.test"):
        for line in m.split(b"\r\n"):
            if line.startswith(b"Subject: crash-"):
                found.add(line[9:].decode())
                assert m.endswith(b"y" * 1500 + b"\r\n")  # never a half-written message
    lost = [tag for tag in acknowledged if tag not in found]
    assert lost == []


def test_deliver_lda_exit_codes(server: RunningServer):
    ok = server.cli("deliver", "--to", "demo@example.test", "-f", "lda@example.net",
                    input="Subject: via-lda\nFrom: lda@example.net\n\nunix line ends\n")
    assert ok.returncode == 0, ok.stderr
    msg = [m for m in server.messages("demo@example.test") if b"Subject: via-lda" in m][0]
    assert msg.startswith(b"Return-Path: <lda@example.net>\r\n")
    assert msg.endswith(b"\r\nunix line ends\r\n")
    unknown = server.cli("deliver", "--to", "nobody@other.test", input="Subject: x\n\nx\n")
    assert unknown.returncode == 67  # EX_NOUSER
    foreign = server.cli("deliver", "--to", "x@gmail.com", input="Subject: x\n\nx\n")
    assert foreign.returncode == 67


def test_localserve_two_command_experience(tmp_path: Path):
    """`mailkeep localserve` on embedded defaults: banner, demo account, mail on 1025."""
    directory = tmp_path / "ls"
    port_busy = False
    try:
        wait_for_port(1025, timeout=0.2)
        port_busy = True
    except TimeoutError:
        pass
    assert not port_busy, "port 1025 is taken: another localserve is running"
    proc = subprocess.Popen([MAILKEEP, "localserve", "--dir", str(directory), "--password",
                             "demo-secret"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_for_port(1025, proc=proc)
        with smtplib.SMTP("127.0.0.1", 1025) as s:
            assert s.sendmail("x@example.net", ["demo@localhost"], "Subject: ls\r\n\r\nx\r\n") == {}
            s.mail("x@example.net")
            assert s.rcpt("someone@example.com")[0] == 554  # same policy as production
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "demo@localhost" in output and "demo-secret" in output and "1025" in output
    assert (directory / "mailkeep.toml").exists()
    assert (directory / "data" / "tls" / "selfsigned-ecdsa.pem").exists()
    # The password is kept for the next start.
    assert (directory / "demo-password").read_text().strip() == "demo-secret"


def _free_privileged_port() -> int:
    import socket

    for port in range(990, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 1024")


def test_serve_binds_privileged_port_then_runs_as_unprivileged_user(tmp_path: Path):
    import pwd
    import shutil
    import tempfile

    from .conftest import make_server

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="mk-runas-", dir="/tmp"))
    base.chmod(0o755)
    try:
        srv = make_server(base / "mk")
        port = _free_privileged_port()
        text = srv.config.read_text().replace(f'address = "127.0.0.1:{srv.smtp_port}"',
                                              f'address = "127.0.0.1:{port}"')
        srv.config.write_text('run_as = "nobody"\n' + text)
        srv.smtp_port = port
        srv.start()
        try:
            status = Path(f"/proc/{srv.proc.pid}/status").read_text()
            uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4, uid_line
            with smtplib.SMTP("127.0.0.1", port) as s:
                assert s.sendmail("a@example.net", ["demo@example.test"],
                                  "Subject: as-nobody\r\n\r\nx\r\n") == {}
            assert (srv.data_dir / "store").stat().st_uid == nobody.pw_uid
            # The delivery process, started after the drop, runs as nobody too; where
            # nobody cannot run this interpreter (one installed under /root), the server
            # says so and sends queued mail itself.
            try:
                can_run = subprocess.run([sys.executable, "-c", "pass"], user="nobody",
                                         capture_output=True).returncode == 0
            except PermissionError:
                can_run = False
            deadline = time.monotonic() + 20
            expected = ('msg="delivery process started"' if can_run else
                        'msg="cannot start a delivery process; the server sends queued '
                        'mail itself"')
            while time.monotonic() < deadline and expected not in srv.log_text():
                time.sleep(0.1)
            assert expected in srv.log_text()
            if can_run:
                pid = int(srv.log_text().split(expected + " pid=")[1].split()[0])
                status = Path(f"/proc/{pid}/status").read_text()
                uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
                assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4, uid_line
        finally:
            assert srv.stop() == 0
        assert any(b"as-nobody" in m for m in srv.messages("demo@example.test"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
