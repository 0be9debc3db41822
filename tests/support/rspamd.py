"""A throwaway rspamd for tests: Debian's /usr/bin/rspamd with Debian's configuration,
run in the foreground from a temporary directory, on 127.0.0.1, off the Internet.

``RunningRspamd()`` starts ``rspamd -f -c /etc/rspamd/rspamd.conf`` with the variables
rspamd resolves its paths through redefined on the command line (``--var``):
``LOCAL_CONFDIR`` (where ``local.d/``, ``override.d/`` and ``rspamd.conf.local`` are
looked for), ``DBDIR``, ``RUNDIR`` and ``LOGDIR`` all point into the temporary directory,
so Debian's stock rules, scores and modules are what a test meets, and ``/etc/rspamd`` and
``/var/lib/rspamd`` are only read, never written. Our overrides, each in the file rspamd
documents for it:

* only the normal worker runs (one process, on a free port); the controller, proxy and
  fuzzy workers are disabled (rspamd still forks its hyperscan compiler, about one
  CPU-second after start; it cannot be turned off from the configuration in 3.4);
* rspamd's resolver asks :class:`NxdomainResolver`, a tiny DNS server in this process on
  a loopback port that answers every question with NXDOMAIN (RFC 1035 §4.1.1 RCODE 3), so
  DNSBL, SPF, DKIM, DMARC and URL-list lookups come back "no such name" at once and no
  query (nor the fetch of a remote map on maps.rspamd.com, which needs its address first)
  ever leaves the machine; the fuzzy_check module is not loaded;
* the URL scanner gets a short public-suffix list instead of Debian's 9600-entry one,
  whose compilation takes ~10 CPU-seconds per start and matters to no test here;
* thresholds far from what the stock rules score for a plain message (greylist 20, add
  header 40, rewrite subject 60, reject 100), and test rules that a message opts into
  with an ``X-Mailkeep-Test:`` header (see :data:`TEST_HEADER` and ``TEST_*``), so each
  action can be produced reliably; force_actions rules with their own SMTP messages for
  soft reject and reject; a settings id :data:`SETTINGS_ADD_HEADER`; and milter_headers
  asked for X-Spam-Status and X-Rspamd-Server even for local and authenticated senders.

rspamd refuses to run as root unless told whom to run as: as root the harness passes
``-u _rspamd -g _rspamd`` (the account the Debian package creates) and hands the
temporary directory to that user; the workers, which parse the messages, run without
privileges. As any other user rspamd simply runs as that user.

A missing rspamd is a :class:`RspamdUnavailable` error (tests fail, not skip; ``make
test`` installs the package). Exiting the context manager stops the process group and
removes the directory.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.procs import (
    ProcessError,
    StartStop,
    free_port,
    start_process,
    stop_process,
)

RSPAMD = "/usr/bin/rspamd"
#: Debian's stock configuration, which the harness runs with its overrides on top.
DEBIAN_CONFIG = Path("/etc/rspamd/rspamd.conf")
#: The unprivileged account the Debian package creates; used when the tests run as root.
RSPAMD_USER = "_rspamd"

#: How long rspamd gets to answer /ping after it was started (seconds). A cold start of
#: the stock configuration takes ~1 s here; the margin is for a loaded CI machine.
START_TIMEOUT = 30.0
#: How many fresh ports to try when one was taken before rspamd bound it.
PORT_ATTEMPTS = 3
#: How long rspamd gets to stop on SIGTERM before its group is killed (seconds).
STOP_TIMEOUT = 10.0
#: Largest log excerpt quoted in an error (characters).
LOG_EXCERPT_LIMIT = 6000
#: Largest DNS query the resolver stub reads (RFC 1035 §2.3.4 UDP limit; EDNS asks more,
#: but a question alone is far smaller).
DNS_QUERY_LIMIT = 4096

#: The header a test message carries to trigger one of the harness's test rules.
TEST_HEADER = "X-Mailkeep-Test"
#: Header values and the rspamd action each produces (via the rule's score, or a
#: force_actions rule for the two that carry their own SMTP message).
TEST_GREYLIST = "greylist"
TEST_ADD_HEADER = "add-header"
TEST_REWRITE_SUBJECT = "rewrite-subject"
TEST_REJECT = "reject"
TEST_SOFT_REJECT = "soft-reject"
#: The SMTP messages the force_actions rules set.
SOFT_REJECT_MESSAGE = "Mailkeep test rule: try again later"
REJECT_MESSAGE = "Mailkeep test rule: message refused"
#: A Settings-ID whose rule adds the add-header test symbol to any message.
SETTINGS_ADD_HEADER = "mailkeep-test-add-header"

#: Action thresholds (scores). Far above what the stock rules give a plain message from
#: an unknown address (a few points), and far apart, so each test rule lands in its band.
THRESHOLDS = {"greylist": 20, "add_header": 40, "rewrite_subject": 60, "reject": 100}
#: (symbol, header value, score) of the test rules.
_TEST_RULES = (
    ("MAILKEEP_TEST_GREYLIST", TEST_GREYLIST, 25.0),
    ("MAILKEEP_TEST_ADD_HEADER", TEST_ADD_HEADER, 45.0),
    ("MAILKEEP_TEST_REWRITE_SUBJECT", TEST_REWRITE_SUBJECT, 65.0),
    ("MAILKEEP_TEST_REJECT", TEST_REJECT, 0.5),
    ("MAILKEEP_TEST_SOFT_REJECT", TEST_SOFT_REJECT, 0.5),
)

#: Suffixes the URL scanner recognises (see the module docstring for why so few).
_URL_SUFFIXES = ("com", "net", "org", "de", "uk", "co.uk", "fr", "nl", "ru", "io",
                 "info", "biz", "example", "invalid", "test", "localhost")


class RspamdUnavailable(RuntimeError):
    """rspamd (or the account it should run as) is not installed."""


class NxdomainResolver:
    """A DNS server on 127.0.0.1 (UDP) that answers every query with NXDOMAIN.

    Runs in a daemon thread; ``queries`` counts what it answered, so a test can see rspamd
    asked here and not somewhere else.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nxdomain-dns", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._sock], [], [], 0.1)
            if not readable:
                continue
            try:
                query, peer = self._sock.recvfrom(DNS_QUERY_LIMIT)
            except OSError:
                continue
            answer = nxdomain_answer(query)
            if answer is not None:
                self.queries += 1
                with contextlib.suppress(OSError):
                    self._sock.sendto(answer, peer)


def nxdomain_answer(query: bytes) -> bytes | None:
    """The NXDOMAIN response to ``query`` (its ID and question echoed), or None if it is
    not a standard query with exactly one question."""
    # RFC 1035 §4.1.1: 12-byte header; QR=0 and OPCODE=0 for a standard query.
    if len(query) < 12 or query[2] & 0xF8 or int.from_bytes(query[4:6], "big") != 1:
        return None
    # RFC 1035 §4.1.2: QNAME is a sequence of labels ending with a zero octet, then
    # QTYPE and QCLASS (2 octets each). Compression cannot occur in a question.
    pos = 12
    while pos < len(query) and query[pos] != 0:
        if query[pos] & 0xC0:
            return None
        pos += 1 + query[pos]
    end = pos + 1 + 4
    if end > len(query):
        return None
    flags = 0x8000 | (query[2] & 0x01) << 8 | 0x0080 | 3  # QR, RD copied, RA, NXDOMAIN
    header = query[0:2] + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00"
    return header + query[12:end]


def _override_files(port: int, dns_port: int, root: Path) -> dict[str, str]:
    """The files written under LOCAL_CONFDIR, by relative path."""
    regexp_rules = "".join(
        f'{symbol} {{\n  re = "{TEST_HEADER}=/^{value}$/H";\n  score = {score};\n'
        f'  description = "Mailkeep test rule ({value})";\n  group = "mailkeep_test";\n}}\n'
        for symbol, value, score in _TEST_RULES)
    thresholds = "".join(f"{name} = {score};\n" for name, score in THRESHOLDS.items())
    return {
        # Inside worker "normal" { }; override.d replaces what Debian's file sets.
        "override.d/worker-normal.inc": f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n',
        # Free ports even though disabled: a bind is never attempted, but keep it harmless.
        "override.d/worker-controller.inc":
            f'enabled = false;\nbind_socket = "127.0.0.1:{free_port()}";\n',
        "override.d/worker-proxy.inc":
            f'enabled = false;\nbind_socket = "127.0.0.1:{free_port()}";\n',
        "override.d/options.inc": (
            'filters = "chartable,dkim,regexp";\n'
            f'url_tld = "{root / "tld.dat"}";\n'
            "dns {\n"
            f'  nameserver = ["127.0.0.1:{dns_port}"];\n'
            "  timeout = 1s;\n  retransmits = 2;\n  sockets = 4;\n}\n"),
        "override.d/actions.conf": thresholds,
        "local.d/regexp.conf": regexp_rules,
        "local.d/force_actions.conf": (
            "rules {\n"
            "  MAILKEEP_TEST_FORCE_SOFT_REJECT {\n    action = \"soft reject\";\n"
            "    expression = \"MAILKEEP_TEST_SOFT_REJECT\";\n"
            f'    message = "{SOFT_REJECT_MESSAGE}";\n  }}\n'
            "  MAILKEEP_TEST_FORCE_REJECT {\n    action = \"reject\";\n"
            "    expression = \"MAILKEEP_TEST_REJECT\";\n"
            f'    message = "{REJECT_MESSAGE}";\n  }}\n'
            "}\n"),
        "local.d/settings.conf": (
            f'mailkeep_test_add_header {{\n  id = "{SETTINGS_ADD_HEADER}";\n'
            '  apply {\n    actions {\n      "add header" = -1000.0;\n    }\n  }\n}\n'),
        "local.d/milter_headers.conf": (
            'use = ["x-spam-status", "x-rspamd-server"];\n'
            "skip_local = false;\nskip_authenticated = false;\n"),
        "tld.dat": "".join(f"{suffix}\n" for suffix in _URL_SUFFIXES),
    }


class RunningRspamd(StartStop):
    """Debian's rspamd on 127.0.0.1, off the Internet; use as a context manager.

    ``url`` is the normal worker's base URL (``http://127.0.0.1:PORT``); ``log_text()``
    returns rspamd's log so far.
    """

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port: int = 0
        self.resolver: NxdomainResolver | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        if self.root is None:
            return ""
        parts = []
        for name in ("log/rspamd.log", "rspamd.out"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def start(self) -> None:
        if not os.access(RSPAMD, os.X_OK):
            raise RspamdUnavailable(f"{RSPAMD} is not installed (Debian package rspamd; "
                                    "`make test` installs it)")
        if not DEBIAN_CONFIG.exists():
            raise RspamdUnavailable(f"{DEBIAN_CONFIG} is missing (Debian package rspamd)")
        owner = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="mailkeep-rspamd-"))
        try:
            self.resolver = NxdomainResolver()
            self.resolver.start()
            for attempt in range(PORT_ATTEMPTS):
                if self._start_once(owner, last_attempt=attempt == PORT_ATTEMPTS - 1):
                    return
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, timeout=STOP_TIMEOUT)
            self._process = None
        if self.resolver is not None:
            self.resolver.stop()
            self.resolver = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _start_once(self, owner: pwd.struct_passwd | None, *, last_attempt: bool) -> bool:
        """Write the configuration for a fresh port and start rspamd; False if the port
        was taken meanwhile (after stopping it)."""
        assert self.root is not None and self.resolver is not None
        root = self.root
        if self._process is not None:
            stop_process(self._process, timeout=STOP_TIMEOUT)
            self._process = None
        for sub in ("db", "run", "log"):
            shutil.rmtree(root / sub, ignore_errors=True)
            (root / sub).mkdir()
        self.port = free_port()
        for relative, text in _override_files(self.port, self.resolver.port, root).items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        argv = [RSPAMD, "-f", "-c", str(DEBIAN_CONFIG),
                "--var", f"LOCAL_CONFDIR={root}", "--var", f"DBDIR={root / 'db'}",
                "--var", f"RUNDIR={root / 'run'}", "--var", f"LOGDIR={root / 'log'}"]
        if owner is not None:
            # The workers drop to this account; it must be able to read the configuration
            # and write the database and log directories.
            _chown_tree(root, owner.pw_uid, owner.pw_gid)
            argv += ["-u", owner.pw_name, "-g", _group_name(owner.pw_gid)]
        self._process = start_process(argv, log_path=root / "rspamd.out")
        return self._wait_ready(last_attempt)

    def _wait_ready(self, last_attempt: bool) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if _ping(self.url):
                return True
            if self._process.poll() is not None:
                log = self.log_text()
                if "address already in use" in log.lower() and not last_attempt:
                    self._process = None
                    return False
                raise ProcessError(f"rspamd exited with status {self._process.returncode} "
                                   f"before answering /ping on {self.url}; its log:\n"
                                   f"{log[-LOG_EXCERPT_LIMIT:]}")
            if time.monotonic() >= deadline:
                log = self.log_text()
                raise ProcessError(f"rspamd did not answer /ping on {self.url} within "
                                   f"{START_TIMEOUT:g}s; its log:\n{log[-LOG_EXCERPT_LIMIT:]}")
            time.sleep(0.05)


def _run_as() -> pwd.struct_passwd | None:
    """The account rspamd's workers should run as: ours unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RSPAMD_USER)
    except KeyError as exc:
        raise RspamdUnavailable(f"running as root, but the account {RSPAMD_USER} that the "
                                "Debian rspamd package creates does not exist") from exc


def _group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


def _ping(base_url: str) -> bool:
    """True if the worker answers GET /ping with "pong" right now."""
    try:
        with urllib.request.urlopen(base_url + "/ping", timeout=1.0) as response:
            return bool(response.status == 200 and response.read(64).strip() == b"pong")
    except (urllib.error.URLError, OSError, ValueError):
        return False
