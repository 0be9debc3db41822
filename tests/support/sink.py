"""Postfix's ``smtp-sink`` as a destination for outbound tests and benchmarks.

``SmtpSink(directory)`` starts ``smtp-sink`` on a free loopback port. With ``dump=True``
every transaction is written to a file in a private dump directory (smtp-sink's ``-d``), which
``messages()`` returns: the envelope lines smtp-sink writes (X-Client-Addr, X-Helo,
X-Mail-From, X-Rcpt-To) followed by the message exactly as received. ``reject`` makes
commands fail permanently (``-f RCPT``) or temporarily (``-r RCPT``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.procs import free_port


class SinkUnavailable(RuntimeError):
    pass


class SmtpSink:
    def __init__(self, directory: Path, *, dump: bool = True, hard_reject: str = "",
                 soft_reject: str = "", pipelining: bool = True, extra: tuple[str, ...] = (),
                 port: int | None = None, backlog: int = 256) -> None:
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not os.path.exists(binary):
            raise SinkUnavailable("smtp-sink is missing: install the Debian postfix package "
                                  "(make test does)")
        self.directory = directory
        # smtp-sink runs as nobody, who cannot enter pytest's private temporary directories:
        # the dump goes to a world-writable directory of its own in /tmp, removed at stop.
        self.dump_dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        os.chmod(self.dump_dir, 0o777)
        self.port = port or free_port()
        args = [binary, "-u", "nobody", "-c"]
        if dump:
            args += ["-d", f"{self.dump_dir}/%s."]
        if hard_reject:
            args += ["-f", hard_reject]
        if soft_reject:
            args += ["-r", soft_reject]
        if not pipelining:
            args.append("-p")
        args += [*extra, f"127.0.0.1:{self.port}", str(backlog)]
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> SmtpSink:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SinkUnavailable(f"smtp-sink exited: {self.proc.stderr.read()!r}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise SinkUnavailable("smtp-sink did not greet within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dump_dir, ignore_errors=True)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def messages(self) -> list[bytes]:
        """Dumped transactions, oldest first."""
        files = sorted(self.dump_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        return [p.read_bytes() for p in files]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.messages())} of {count} messages reached smtp-sink")


def split_dump(raw: bytes) -> tuple[dict[str, list[str]], bytes]:
    """The envelope lines smtp-sink prepends, and the message after them."""
    envelope: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            break
        line = raw[pos:end].rstrip(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not name.startswith(b"X-") or name not in (
                b"X-Client-Addr", b"X-Client-Proto", b"X-Helo-Args", b"X-Mail-Args",
                b"X-Rcpt-Args", b"X-Client-Name"):
            break
        envelope.setdefault(name.decode(), []).append(value.strip().decode())
        pos = end + 1
    return envelope, raw[pos:]
