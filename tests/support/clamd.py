"""A throwaway clamd for tests: Debian's /usr/sbin/clamd with a signature database of our own.

``RunningClamd()`` writes a clamd.conf, a database directory and a temporary directory into
a fresh temporary directory, starts ``clamd`` in the foreground (its own session, so the
whole process group can be killed), and waits until it answers PING with PONG on both of
its sockets: a Unix socket in the temporary directory and TCP on 127.0.0.1 at a port from
``free_port()``. ``/etc/clamav`` and ``/var/lib/clamav`` are never read or written: the
configuration file is given on the command line and names every path clamd uses; no
``User`` line, so clamd runs as whoever runs the tests; no syslog.

This machine cannot download ClamAV's definitions (and tests must not reach the Internet),
so the database is written by the test: by default one body signature (an .ndb line,
clamav's "signatures.md": ``Name:TargetType:Offset:HexSignature``) that matches the EICAR
test file anywhere in any file clamd looks at, including parts it decodes from mail.
clamd appends ``.UNOFFICIAL`` to names from databases Cisco-Talos did not sign, so the
EICAR signature is reported as :data:`EICAR_DETECTED_AS`.

Requires the Debian package clamav-daemon (``make test`` installs it). A missing clamd is
reported as ``ClamdUnavailable`` naming it, so tests fail rather than skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.procs import (
    ProcessError,
    StartStop,
    free_port,
    start_process,
    stop_process,
)

CLAMD = "/usr/sbin/clamd"

#: How long clamd gets to load its database and answer PING (seconds). With a one-line
#: database it answers in well under a second; the margin is for a loaded CI machine.
START_TIMEOUT = 30.0
#: How many fresh TCP ports to try when another process took ours before clamd bound it.
PORT_ATTEMPTS = 3
#: Time limit for one PING during startup (seconds).
PING_TIMEOUT = 1.0
#: Largest log excerpt quoted in an error (characters).
LOG_EXCERPT_LIMIT = 4000
#: clamd's StreamMaxLength for tests: small, so that exceeding it costs little to test.
DEFAULT_STREAM_MAX_LENGTH = 4 * 1024 * 1024

#: The EICAR anti-virus test file (eicar.org): 68 printable bytes every scanner detects.
#: Written in two pieces so that this source file is not itself taken for a virus.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE_NAME = "Mailkeep.Test.EICAR"
#: The name clamd reports: our database is not signed, so its names get ".UNOFFICIAL".
EICAR_DETECTED_AS = f"{EICAR_SIGNATURE_NAME}.UNOFFICIAL"


class ClamdUnavailable(RuntimeError):
    """The clamd program is not installed."""


def body_signature(name: str, pattern: bytes) -> str:
    """An .ndb line matching ``pattern`` at any offset (``*``) in any file type (``0``)."""
    return f"{name}:0:*:{pattern.hex()}"


EICAR_SIGNATURE = body_signature(EICAR_SIGNATURE_NAME, EICAR)


def _ping(family: socket.AddressFamily, address: str | tuple[str, int]) -> bool:
    """True if clamd at ``address`` answers zPING with PONG (clamd(8))."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(PING_TIMEOUT)
            sock.connect(address)
            sock.sendall(b"zPING\0")
            reply = b""
            while not reply.endswith(b"\0") and len(reply) < 64:
                data = sock.recv(64)
                if not data:
                    break
                reply += data
            return reply == b"PONG\0"
    except OSError:
        return False


class RunningClamd(StartStop):
    """clamd on a Unix socket and on 127.0.0.1, from a temporary directory; a context manager.

    ``signatures`` are the lines of the test's .ndb database (at least one: clamd refuses
    to start without signatures). ``stream_max_length`` is clamd's StreamMaxLength in
    bytes. Use :attr:`socket_path` or :attr:`tcp_address` as the client's address.
    """

    def __init__(self, signatures: Sequence[str] = (EICAR_SIGNATURE,), *,
                 stream_max_length: int = DEFAULT_STREAM_MAX_LENGTH) -> None:
        if not signatures:
            raise ValueError("clamd needs at least one signature to start")
        self.signatures = tuple(signatures)
        self.stream_max_length = stream_max_length
        self.root: Path | None = None
        self.tcp_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        assert self.root is not None, "clamd is not running"
        return str(self.root / "clamd.sock")

    @property
    def tcp_address(self) -> str:
        assert self.tcp_port, "clamd is not running"
        return f"127.0.0.1:{self.tcp_port}"

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "clamd is not running"
        return self.root / "clamd.log"

    def log_excerpt(self) -> str:
        """The end of clamd's output (what it logged), for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-LOG_EXCERPT_LIMIT:]
        except (OSError, AssertionError):
            return ""

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if not Path(CLAMD).exists():
            raise ClamdUnavailable(f"{CLAMD} is not installed (Debian package clamav-daemon)")
        # A short directory name: a Unix socket path holds at most 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="mk-clamd-"))
        try:
            (self.root / "db").mkdir()
            (self.root / "tmp").mkdir()
            (self.root / "db" / "mailkeep-test.ndb").write_text(
                "\n".join(self.signatures) + "\n")
            for attempt in range(1, PORT_ATTEMPTS + 1):
                if self._start_daemon(last_attempt=attempt == PORT_ATTEMPTS):
                    return
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            # clamd exits on SIGTERM; stop_process kills the whole group if it does not.
            stop_process(self.process, timeout=5.0)
            self.process = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        self.tcp_port = 0

    def _config(self) -> str:
        assert self.root is not None
        root = self.root
        lines = [
            "Foreground yes",
            # Logs go to stdout, which start_process() sends to clamd.log; no syslog.
            "LogSyslog no",
            "LogTime yes",
            "LogClean yes",
            f"PidFile {root}/clamd.pid",
            f"LocalSocket {root}/clamd.sock",
            "LocalSocketMode 600",
            "FixStaleSocket yes",
            f"TCPSocket {self.tcp_port}",
            "TCPAddr 127.0.0.1",
            f"DatabaseDirectory {root}/db",
            f"TemporaryDirectory {root}/tmp",
            # The same reply format as Debian's clamd.conf, whose postinst turns this on.
            "ExtendedDetectionInfo yes",
            # Decode mail (the default, stated because the tests depend on it).
            "ScanMail yes",
            f"StreamMaxLength {self.stream_max_length}",
            "MaxThreads 4",
            # No database reloads while tests run, and no bytecode engine to load.
            "SelfCheck 0",
            "Bytecode no",
        ]
        return "\n".join(lines) + "\n"

    def _start_daemon(self, *, last_attempt: bool) -> bool:
        """Start clamd and wait for PONG; False (after cleaning up) if the port was taken."""
        assert self.root is not None
        self.tcp_port = free_port()
        config = self.root / "clamd.conf"
        config.write_text(self._config())
        self.log_path.write_bytes(b"")
        self.process = start_process([CLAMD, "--config-file", str(config)],
                                     log_path=self.log_path, cwd=self.root)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if (_ping(socket.AF_UNIX, self.socket_path)
                    and _ping(socket.AF_INET, ("127.0.0.1", self.tcp_port))):
                return True
            if self.process.poll() is not None:
                log = self.log_excerpt()
                status = self.process.returncode
                self.process = None
                if "address already in use" in log.lower() and not last_attempt:
                    return False
                raise ProcessError(f"clamd exited with status {status} before answering PING;"
                                   f" its output:\n{log}")
            if time.monotonic() >= deadline:
                log = self.log_excerpt()
                stop_process(self.process, timeout=5.0)
                self.process = None
                raise ProcessError(f"clamd did not answer PING on {self.socket_path} and "
                                   f"{self.tcp_address} within {START_TIMEOUT:g}s; its "
                                   f"output:\n{log}")
            time.sleep(0.05)
