"""Start, watch and stop helper processes for tests and benchmarks, always with a time limit.

Every wait here has a deadline and fails with a message saying what it waited for, so a
hung peer (a daemon that never listens, a server that never exits) turns into a clear test
failure instead of a stuck CI job. Processes are started in their own session so that a
whole tree (a daemon and the children it forks) can be signalled at once, and only the
processes we started are ever signalled.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

T = TypeVar("T")

#: Upper bound for any single wait unless the caller says otherwise (seconds).
DEFAULT_TIMEOUT = 30.0

#: How much of a failing command's output is quoted in the error (characters).
OUTPUT_EXCERPT_LIMIT = 4000


class ProcessError(RuntimeError):
    """A helper process failed to start, exited early, or a command returned an error."""


class WaitTimeout(TimeoutError):
    """A bounded wait ran out of time; the message says what was being waited for."""


class StartStop:
    """A helper daemon as a context manager: ``with Daemon(...) as d:`` calls ``start()``
    and, however the block ends, ``stop()``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _excerpt(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    if len(text) > OUTPUT_EXCERPT_LIMIT:
        return "...\n" + text[-OUTPUT_EXCERPT_LIMIT:]
    return text


#: Ports this process has handed out lately. The kernel may give the same ephemeral port
#: to two bind(0) calls once the first socket is closed, so two servers of one test (or a
#: server and the extra listeners added to its config) could otherwise be told to use the
#: same port. Bounded: the oldest are forgotten first.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=4096)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports on ``host`` that nobody listens on right now and that
    this process has not handed out lately.

    The kernel picks them; there is a small window in which another process could take one
    before our server binds, so callers that can detect a bind failure should retry.
    """
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        # Every socket stays bound until the end, so the kernel offers a new port each time.
        while len(ports) < count:
            if len(socks) >= count + 1000:
                raise RuntimeError(f"no {count} free ports on {host}")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    _HANDED_OUT.extend(ports)
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One port, as ``free_ports``."""
    return free_ports(1, host)[0]


def port_is_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
    description: str = "condition",
) -> T:
    """Call ``condition`` until it returns a truthy value, and return that value.

    Raises ``WaitTimeout`` naming ``description`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {description}")
        time.sleep(interval)


def wait_for_port(
    port: int,
    host: str = "127.0.0.1",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Wait until something accepts TCP connections on ``host:port``.

    If ``process`` is given and exits first, fail at once (quoting ``log_path`` if given)
    instead of waiting out the timeout for a server that already died.
    """
    deadline = time.monotonic() + timeout
    while not port_is_open(port, host, timeout=0.5):
        if process is not None and process.poll() is not None:
            log = _excerpt(log_path.read_bytes()) if log_path and log_path.exists() else ""
            raise ProcessError(
                f"{process.args!r} exited with status {process.returncode} before "
                f"listening on {host}:{port}" + (f"; its output:\n{log}" if log else "")
            )
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {host}:{port} to listen")
        time.sleep(0.05)


def read_smtp_greeting(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bytes | None:
    """Connect and return the server's first reply line, or None if none came in time."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\n", 1)[0] if data else None
    except OSError:
        return None


def wait_for_smtp_greeting(
    port: int,
    host: str = "127.0.0.1",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Wait until ``host:port`` greets with "220" (RFC 5321 §4.2: the service is ready).

    Stricter than ``wait_for_port``: a server may bind its socket (and so accept TCP
    connections into the backlog) well before it serves them, or die in between.
    """
    deadline = time.monotonic() + timeout
    last: bytes | None = None
    while True:
        if process is not None and process.poll() is not None:
            log = _excerpt(log_path.read_bytes()) if log_path and log_path.exists() else ""
            raise ProcessError(
                f"{process.args!r} exited with status {process.returncode} before greeting "
                f"on {host}:{port}" + (f"; its output:\n{log}" if log else "")
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for a 220 greeting on "
                              f"{host}:{port} (last answer: {last!r})")
        last = read_smtp_greeting(port, host, timeout=min(2.0, max(remaining, 0.1)))
        if last is not None and last.startswith(b"220"):
            return
        time.sleep(0.05)


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 60.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion with a time limit, capturing its output.

    With ``check`` a non-zero exit raises ``ProcessError`` quoting stderr and stdout, so the
    test log shows why (e.g. Postfix's fatal message) rather than a bare exit status.
    """
    try:
        result = subprocess.run(
            [os.fspath(a) for a in argv],
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(
            f"{list(map(str, argv))} did not finish within {timeout:g}s; output so far:\n"
            f"{_excerpt(exc.stderr)}\n{_excerpt(exc.stdout)}"
        ) from exc
    except FileNotFoundError as exc:
        raise ProcessError(f"cannot run {os.fspath(argv[0])}: not installed ({exc})") from exc
    if check and result.returncode != 0:
        raise ProcessError(
            f"{list(map(str, argv))} exited with status {result.returncode}:\n"
            f"{_excerpt(result.stderr)}\n{_excerpt(result.stdout)}".rstrip()
        )
    return result


def start_process(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running process in its own session, stdout+stderr going to ``log_path``.

    A file rather than a pipe: nobody reads a pipe while a benchmark runs, and a full pipe
    would block the server mid-write and distort (or hang) the measurement.
    """
    with open(log_path, "ab") as log:
        try:
            return subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise ProcessError(f"cannot run {os.fspath(argv[0])}: not installed ({exc})") from exc


def pid_is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # Field 3 (after the parenthesised command name, which may contain spaces) is the state.
    return stat.rpartition(")")[2].split()[0] != "Z"


def processes_in_group(pgid: int) -> list[int]:
    """The live pids whose process group is ``pgid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system, seconds) used so far by process group ``pgid``.

    Live members count with their own time; members that already exited count through the
    group leader's "children" times, provided the leader reaped them (a daemon like
    Postfix's master, or a single-process server, does).
    """
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in processes_in_group(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command name: fields[11], [12] are utime, stime; [13], [14] are the
        # cutime, cstime of reaped children (proc(5) fields 14-17).
        total += int(fields[11]) + int(fields[12])
        if pid == pgid:
            total += int(fields[13]) + int(fields[14])
    return total / ticks_per_second


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal every process in group ``pgid``; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_process(
    process: subprocess.Popen[bytes],
    *,
    timeout: float = 10.0,
    sig: int = signal.SIGTERM,
) -> int:
    """Ask ``process`` to stop with ``sig``; after ``timeout`` seconds, SIGKILL its session.

    Returns the exit status. Leftover children in the process's own group are killed too,
    so nothing we started outlives the test.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process.pid)
            process.wait(timeout=timeout)
    # start_process() made the child a session and group leader: its pid is the group id.
    if processes_in_group(process.pid):
        kill_group(process.pid)
    return int(process.returncode)


def kill_hard(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> int:
    """SIGKILL ``process`` and its group at once (a simulated crash) and reap it."""
    kill_group(process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait(timeout=timeout)
    return int(process.returncode)
