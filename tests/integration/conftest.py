"""A real `mailkeep serve` process on loopback, with a config exercising the addressing rules."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.procs import free_port, free_ports  # noqa: F401 (used by the tests)

from mailkeep.logfmt import FLUSH_INTERVAL

MAILKEEP = str(Path(sys.executable).with_name("mailkeep"))
LOG_SETTLE = FLUSH_INTERVAL * 3

CONFIG = """\
hostname = "mx.example.test"
data_dir = "data"

[log]
format = "logfmt"
level = "info"
file = "{log}"

[smtp]
message_size_limit = "256K"
max_recipients = 10
max_connections_per_ip = 30
soft_error_limit = 3
hard_error_limit = 5
error_sleep = "0.2s"
command_timeout = "20s"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{smtp}"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{smtps}"
tls = "implicit"

[[listeners]]
protocol = "submission"
address = "127.0.0.1:{submission}"

[[listeners]]
protocol = "submissions"
address = "127.0.0.1:{submissions}"

[[listeners]]
protocol = "lmtp"
address = "unix:{lmtp}"

[[listeners]]
protocol = "imap"
address = "127.0.0.1:{imap}"

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:{imaps}"

[[listeners]]
protocol = "pop3"
address = "127.0.0.1:{pop3}"

[[listeners]]
protocol = "pop3s"
address = "127.0.0.1:{pop3s}"

[auth]
cram_md5 = true
max_failure_delay = "0.3s"
max_failures_per_ip = 50

[imap]
preauth_timeout = "20s"
max_connections_per_account = 20

[domains."example.test"]
catch_all = "catch@example.test"
subaddress_separator = "+"
subaddress_to_folder = true
burned = ["burned@example.test"]

[domains."other.test"]
personalized_catch_all = true

[domains."bücher.test"]

[accounts."demo@example.test"]
name = "Demo"

[accounts."catch@example.test"]

[accounts."small@example.test"]
quota = "4K"

[accounts."relay@example.test"]
relay_only = true

[accounts."me@other.test"]

[accounts."leser@bücher.test"]

[aliases]
"team@example.test" = ["demo@example.test", "me@other.test"]
"postmaster@example.test" = "demo@example.test"
"abuse@example.test" = "demo@example.test"
"outside@example.test" = ["demo@example.test", "someone@elsewhere.test"]
"""


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until an SMTP greeting arrives (the socket is bound before the server is ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else b""
            raise RuntimeError(f"server exited with {proc.returncode}: {out!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not greet")


@dataclass
class RunningServer:
    dir: Path
    config: Path
    smtp_port: int
    smtps_port: int
    lmtp_socket: Path
    log: Path
    imap_port: int = 0
    imaps_port: int = 0
    pop3_port: int = 0
    pop3s_port: int = 0
    submission_port: int = 0
    submissions_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def start(self) -> None:
        self.proc = subprocess.Popen([MAILKEEP, "serve", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_port(self.smtp_port, proc=self.proc)
        # Every listener is up and the signal handlers are installed once "started" is
        # logged (the SMTP port answers before the IMAP and POP3 listeners are started).
        deadline = time.monotonic() + 20
        while "msg=started" not in self.log_text() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def messages(self, account: str, mailbox: str = "INBOX") -> list[bytes]:
        """Every message of a mailbox, read through the store (another process, as the CLI does)."""
        from mailkeep.store import open_store

        store = open_store(self.data_dir)
        try:
            return [store.read_message(account, mailbox, m.uid)
                    for m in store.list_messages(account, mailbox)]
        finally:
            store.close()

    def set_password(self, account: str, password: str) -> None:
        result = self.cli("account", "passwd", account, "--password-stdin",
                          input=password + "\n")
        assert result.returncode == 0, result.stderr

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate the server generated (trust it in clients)."""
        return self.data_dir / "tls" / "selfsigned-ecdsa.pem"

    def log_text(self) -> str:
        """The log so far. The server writes info lines every FLUSH_INTERVAL (a background
        writer): give lines logged just before this call the time to land."""
        time.sleep(LOG_SETTLE)
        return self.log.read_text() if self.log.exists() else ""

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([MAILKEEP, *args], input=input, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "MAILKEEP_CONFIG": str(self.config)})


def make_server(directory: Path, extra: str = "") -> RunningServer:
    """A server from CONFIG; ``extra`` is TOML appended to it (more tables, never keys of
    tables CONFIG already has)."""
    directory.mkdir(parents=True, exist_ok=True)
    smtp, smtps, imap, imaps, pop3, pop3s, submission, submissions = free_ports(8)
    lmtp = directory / "lmtp.sock"
    log = directory / "mailkeep.log"
    config = directory / "mailkeep.toml"
    config.write_text(CONFIG.format(smtp=smtp, smtps=smtps, lmtp=lmtp, log=log, imap=imap,
                                    imaps=imaps, pop3=pop3, pop3s=pop3s,
                                    submission=submission, submissions=submissions) + extra)
    return RunningServer(directory, config, smtp, smtps, lmtp, log, imap_port=imap,
                         imaps_port=imaps, pop3_port=pop3, pop3s_port=pop3s,
                         submission_port=submission, submissions_port=submissions)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> RunningServer:
    srv = make_server(tmp_path_factory.mktemp("mailkeep"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path) -> RunningServer:
    srv = make_server(tmp_path / "mk")
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()
