"""Drive real mail clients (mbsync, offlineimap3, fetchmail, mutt) against any IMAP/POP3 server.

Issue 3 asks for tests with the clients users actually run. Each driver here writes that
client's own configuration into a work directory, runs the client once, non-interactively
and with a time limit, and hands back what it did (the finished process, and where the mail
went), so a test can assert what a user would see: the files in the local Maildir, the
messages fetchmail delivered, the message mutt saved. The drivers know nothing about the
server behind ``Endpoint``; they are proved against Dovecot first
(tests/interop/test_imap_clients.py) and then pointed at Mailkeep.

Every client verifies the server's certificate against ``Endpoint.ca_file`` and the name
``Endpoint.host`` (so use a name the certificate carries, e.g. ``localhost``); none falls
back to an unverified connection. No client reads anything from the user's home directory:
``HOME`` points into the work directory for every run.

Local Maildir helpers (``maildir_files``, ``maildir_flags``, ``set_maildir_flags``,
``add_maildir_message``) change the client's local copy the way a mail reader would, so a
following sync has something to push: a flag is a letter in the file name after ``:2,``
(D draft, F flagged, P passed, R replied, S seen, T trashed; https://cr.yp.to/proto/maildir.html).
"""

from __future__ import annotations

import contextlib
import mailbox
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.procs import ProcessError, run_command

MBSYNC = "/usr/bin/mbsync"
OFFLINEIMAP = "/usr/bin/offlineimap"
FETCHMAIL = "/usr/bin/fetchmail"
MUTT = "/usr/bin/mutt"

#: Default time limit of one client run (seconds); every run is bounded.
CLIENT_TIMEOUT = 60.0
#: The most output kept from a client running in a pseudo-terminal (bytes).
PTY_OUTPUT_LIMIT = 1_000_000

TlsMode = Literal["implicit", "starttls"]
#: Maildir info flags in the order the specification wants them written (ASCII order).
MAILDIR_FLAGS = "DFPRST"


@dataclass(frozen=True)
class Endpoint:
    """Where and how a client reaches a server, and as whom."""

    host: str
    port: int
    tls: TlsMode
    user: str
    password: str
    ca_file: Path

    def __post_init__(self) -> None:
        if self.tls not in ("implicit", "starttls"):
            raise ValueError(f"tls must be 'implicit' or 'starttls', not {self.tls!r}")
        for name, value in (("host", self.host), ("user", self.user),
                            ("password", self.password)):
            # Every client configuration below is a line-based text file with quoting:
            # refuse what would need escaping rules that differ between the four clients.
            if not value or any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in value) or any(
                    ch in value for ch in "\"'\\`$%#"):
                raise ValueError(f"{name} must be printable ASCII without spaces, quotes, "
                                 f"backslashes or any of `$%#: {value!r}")


def _client_env(work_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: HOME in the work directory, so no personal config is read."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(work_dir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }
    env.update(extra or {})
    return env


def _require(program: str) -> None:
    if not os.access(program, os.X_OK):
        raise ProcessError(f"{program} is not installed: run `make test`, which installs isync, "
                           "offlineimap3, fetchmail and mutt")


def _write_private(path: Path, text: str) -> Path:
    """Write a file holding a password: mode 0600 from the start (fetchmail insists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


# ------------------------------------------------------------------------------ Maildir

def maildir_files(folder: Path) -> list[Path]:
    """The message files of a Maildir folder (``new/`` and ``cur/``), sorted by name."""
    return sorted((p for sub in ("new", "cur") if (folder / sub).is_dir()
                   for p in (folder / sub).iterdir() if p.is_file()), key=lambda p: p.name)


def find_maildir_message(folder: Path, marker: bytes) -> Path | None:
    """The one message file of ``folder`` containing ``marker`` (None if none; error if more)."""
    found = [p for p in maildir_files(folder) if marker in p.read_bytes()]
    if len(found) > 1:
        raise AssertionError(f"{len(found)} messages in {folder} contain {marker!r}")
    return found[0] if found else None


def maildir_flags(path: Path) -> str:
    """The flag letters of a Maildir message file (the part after ``:2,``)."""
    _, sep, flags = path.name.rpartition(":2,")
    return flags if sep else ""


def set_maildir_flags(path: Path, flags: str) -> Path:
    """Give a message exactly ``flags`` by renaming it into ``cur/``, as a mail reader does.

    Returns the new path. The unique part of the name (including mbsync's ``,U=uid``) is
    kept, because that is how the syncing client recognises the message.
    """
    if not set(flags) <= set(MAILDIR_FLAGS):
        raise ValueError(f"Maildir flags are letters of {MAILDIR_FLAGS}, not {flags!r}")
    base = path.name.rpartition(":2,")[0] if ":2," in path.name else path.name
    ordered = "".join(sorted(set(flags)))
    target = path.parent.parent / "cur" / f"{base}:2,{ordered}"
    path.rename(target)
    return target


def make_maildir_folder(folder: Path) -> Path:
    """Create an (empty) Maildir folder: ``cur``, ``new`` and ``tmp``."""
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


_delivery_counter = 0


def add_maildir_message(folder: Path, message: bytes, *, flags: str | None = None) -> Path:
    """Deliver ``message`` into a Maildir folder the standard way (tmp/, then rename).

    ``flags`` None puts it in ``new/`` (unseen, no info); otherwise into ``cur/`` with them.
    """
    global _delivery_counter
    make_maildir_folder(folder)
    _delivery_counter += 1
    unique = f"{time.time_ns() // 1_000_000_000}.M{time.time_ns() % 1_000_000}P{os.getpid()}" \
             f"Q{_delivery_counter}.{socket.gethostname()}"
    temporary = folder / "tmp" / unique
    temporary.write_bytes(message)
    if flags is None:
        target = folder / "new" / unique
    else:
        if not set(flags) <= set(MAILDIR_FLAGS):
            raise ValueError(f"Maildir flags are letters of {MAILDIR_FLAGS}, not {flags!r}")
        target = folder / "cur" / f"{unique}:2,{''.join(sorted(set(flags)))}"
    temporary.rename(target)
    return target


# ------------------------------------------------------------------------------ mbsync

@dataclass(frozen=True)
class MbsyncSetup:
    """An mbsync configuration: ``config`` (the .mbsyncrc), the local Maildir tree."""

    config: Path
    #: The local store's ``Path``: a server folder NAME is ``root / NAME`` (SubFolders
    #: Verbatim: "a/b" is root/a/b).
    root: Path
    inbox: Path
    work_dir: Path

    def folder(self, name: str) -> Path:
        return self.inbox if name.upper() == "INBOX" else self.root / name


def write_mbsyncrc(endpoint: Endpoint, work_dir: Path, *, auth_mechs: str = "PLAIN",
                   pipeline_depth: int | None = None) -> MbsyncSetup:
    """Write ``work_dir/mbsyncrc``: one account, both sides synced completely.

    Channel: every folder (Patterns *), created on either side when new (Create Both),
    deletions propagated (Expunge Both), sync state kept in each local folder (SyncState *).
    ``auth_mechs`` is mbsync's AuthMechs: "PLAIN", "LOGIN" (the IMAP command),
    "SCRAM-SHA-256" (through Cyrus SASL), or "*".
    """
    root = work_dir / "mbsync-mail"
    inbox = root / "INBOX"
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by tests/support/imap_clients.py",
        "IMAPAccount remote",
        f"Host {endpoint.host}",
        f"Port {endpoint.port}",
        f'User "{endpoint.user}"',
        f'Pass "{endpoint.password}"',
        f"SSLType {'IMAPS' if endpoint.tls == 'implicit' else 'STARTTLS'}",
        f"CertificateFile {endpoint.ca_file}",
        # Trust only the test CA: a system CA must not make a wrong certificate pass.
        "SystemCertificates no",
        f"AuthMechs {auth_mechs}",
        "Timeout 20",
        *([f"PipelineDepth {pipeline_depth}"] if pipeline_depth else []),
        "",
        "IMAPStore remote",
        "Account remote",
        "",
        "MaildirStore local",
        f"Path {root}/",
        f"Inbox {inbox}",
        "SubFolders Verbatim",
        "",
        "Channel everything",
        "Far :remote:",
        "Near :local:",
        "Patterns *",
        "Create Both",
        "Expunge Both",
        "SyncState *",
        "",
    ]
    config = _write_private(work_dir / "mbsyncrc", "\n".join(lines))
    return MbsyncSetup(config, root, inbox, work_dir)


def run_mbsync(setup: MbsyncSetup, *args: str, timeout: float = CLIENT_TIMEOUT,
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run ``mbsync -c CONFIG -a`` (or ``args`` instead of ``-a``) once; bounded."""
    _require(MBSYNC)
    return run_command([MBSYNC, "-c", setup.config, *(args or ("-a",))], timeout=timeout,
                       check=check, env=_client_env(setup.work_dir))


# ------------------------------------------------------------------------------ offlineimap

@dataclass(frozen=True)
class OfflineImapSetup:
    config: Path
    #: ``localfolders``: INBOX is root/INBOX, a folder "a.b" is root/a.b (sep ".").
    root: Path
    work_dir: Path

    def folder(self, name: str) -> Path:
        return self.root / name


def write_offlineimaprc(endpoint: Endpoint, work_dir: Path, *,
                        auth_mechanisms: str = "PLAIN") -> OfflineImapSetup:
    """Write ``work_dir/offlineimaprc`` for one account syncing into a local Maildir."""
    root = work_dir / "offlineimap-mail"
    root.mkdir(parents=True, exist_ok=True)
    implicit = endpoint.tls == "implicit"
    text = f"""\
# Written by tests/support/imap_clients.py
[general]
accounts = test
metadata = {work_dir / "offlineimap-state"}
maxsyncaccounts = 1
ui = quiet
socktimeout = 30

[Account test]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {root}

[Repository remote]
type = IMAP
remotehost = {endpoint.host}
remoteport = {endpoint.port}
remoteuser = {endpoint.user}
remotepass = {endpoint.password}
auth_mechanisms = {auth_mechanisms}
ssl = {"yes" if implicit else "no"}
starttls = {"no" if implicit else "yes"}
sslcacertfile = {endpoint.ca_file}
maxconnections = 1
holdconnectionopen = no
"""
    config = _write_private(work_dir / "offlineimaprc", text)
    return OfflineImapSetup(config, root, work_dir)


def run_offlineimap(setup: OfflineImapSetup, *, timeout: float = CLIENT_TIMEOUT,
                    check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run ``offlineimap -o -u quiet -c CONFIG`` once (a single sync, no auto-refresh).

    offlineimap exits 0 even when a folder failed to sync; with ``check`` an "ERROR" in
    its output counts as a failure too.
    """
    _require(OFFLINEIMAP)
    result = run_command([OFFLINEIMAP, "-o", "-u", "quiet", "-c", setup.config],
                         timeout=timeout, check=check, env=_client_env(setup.work_dir))
    if check and b"ERROR" in result.stdout + result.stderr:
        raise ProcessError(f"offlineimap reported an error:\n"
                           f"{(result.stdout + result.stderr).decode('utf-8', 'replace')}")
    return result


# ------------------------------------------------------------------------------ fetchmail

@dataclass(frozen=True)
class FetchmailResult:
    process: subprocess.CompletedProcess[bytes]
    #: The messages delivered by this run, in delivery order.
    delivered: list[bytes]
    #: Where every run (this and earlier ones) delivered: one file per message.
    mail_dir: Path


#: fetchmail's exit status 1 means "no mail", which is not an error for a mail check.
FETCHMAIL_NO_MAIL = 1


def run_fetchmail(endpoint: Endpoint, work_dir: Path, *, keep: bool = True,
                  fetch_all: bool = True, timeout: float = CLIENT_TIMEOUT,
                  check: bool = True) -> FetchmailResult:
    """Fetch the POP3 mailbox of ``endpoint`` once with fetchmail, over TLS.

    Each message is handed to a small MDA script that stores it as one file in
    ``work_dir/fetchmail-mail`` (fetchmail's own Received header on top). ``keep`` leaves
    the messages on the server (otherwise fetchmail deletes them with DELE before QUIT);
    ``fetch_all`` fetches old messages too, not only those fetchmail has not seen (UIDL).
    FETCHMAILHOME is the work directory, so the run control, id and pid files are ours.
    """
    _require(FETCHMAIL)
    mail_dir = work_dir / "fetchmail-mail"
    mail_dir.mkdir(parents=True, exist_ok=True)
    mda = work_dir / "fetchmail-mda.sh"
    # Write to a temporary name and rename: a file in mail_dir is always complete.
    mda.write_text(
        "#!/bin/sh\nset -e\n"
        f'tmp=$(mktemp "{work_dir}/.mda.XXXXXXXX")\n'
        'cat > "$tmp"\n'
        f'mv "$tmp" "{mail_dir}/$(date +%s%N).$$"\n'
    )
    mda.chmod(stat.S_IRWXU)
    tls = "ssl" if endpoint.tls == "implicit" else "sslproto 'tls1.2+'"
    rc = f"""\
# Written by tests/support/imap_clients.py
set no syslog
set idfile "{work_dir / 'fetchids'}"
set pidfile "{work_dir / 'fetchmail.pid'}"
poll "{endpoint.host}" proto pop3 port {endpoint.port} timeout 30 uidl
  user "{endpoint.user}" with password "{endpoint.password}"
  {tls} sslcertck sslcertfile "{endpoint.ca_file}"
  mda "{mda}"
  no rewrite
  {"keep" if keep else "no keep"}
  {"fetchall" if fetch_all else "no fetchall"}
"""
    rcfile = _write_private(work_dir / "fetchmailrc", rc)
    before = {p.name for p in mail_dir.iterdir()}
    result = run_command([FETCHMAIL, "-f", rcfile, "--nodetach", "--nosyslog"],
                         timeout=timeout, check=False,
                         env=_client_env(work_dir, {"FETCHMAILHOME": str(work_dir)}))
    if check and result.returncode not in (0, FETCHMAIL_NO_MAIL):
        raise ProcessError(f"fetchmail exited with status {result.returncode}:\n"
                           f"{(result.stderr + result.stdout).decode('utf-8', 'replace')}")
    new = sorted((p for p in mail_dir.iterdir() if p.name not in before),
                 key=lambda p: (len(p.name), p.name))
    return FetchmailResult(result, [p.read_bytes() for p in new], mail_dir)


# ------------------------------------------------------------------------------ mutt

def write_muttrc(endpoint: Endpoint, work_dir: Path) -> Path:
    """A muttrc for non-interactive use: no questions asked, nothing changed on exit."""
    text = f"""\
# Written by tests/support/imap_clients.py
set imap_user='{endpoint.user}'
set imap_pass='{endpoint.password}'
set ssl_ca_certificates_file='{endpoint.ca_file}'
set certificate_file='{work_dir / "mutt-certificates"}'
set ssl_verify_host=yes
set ssl_force_tls=yes
set ssl_starttls=yes
set imap_authenticators='plain:login'
set imap_passive=yes
set imap_check_subscribed=no
set timeout=10
set connect_timeout=15
set mail_check=60
set header_cache=''
set message_cachedir=''
set mbox_type=mbox
set confirmcreate=no
set confirmappend=no
set wait_key=no
set quit=yes
set move=no
set mark_old=no
set delete=no
set beep=no
set sort=date-sent
set tmpdir='{work_dir}'
# An existing $folder: otherwise mutt first asks whether to create ~/Mail, and that
# question would swallow the keys meant for the index.
set folder='{work_dir}'
set record=''
set postponed='{work_dir / "postponed"}'
# The keys mutt_copy_messages types (mutt's defaults, bound explicitly so that a changed
# default cannot turn them into something else).
bind index T tag-pattern
bind index ';' tag-prefix
bind index C copy-message
bind index q quit
"""
    return _write_private(work_dir / "muttrc", text)


def mutt_folder_url(endpoint: Endpoint, folder: str = "INBOX") -> str:
    scheme = "imaps" if endpoint.tls == "implicit" else "imap"
    return f"{scheme}://{endpoint.host}:{endpoint.port}/{folder}"


#: What mutt shows when it waits for an answer in batch use: a configuration error, an
#: unverified certificate, a missing password. Each means the run cannot succeed.
MUTT_QUESTIONS: tuple[bytes, ...] = (
    b"Press any key to continue",
    b"(r)eject, accept (o)nce",
    b"Password for ",
    b"does not exist. Create it?",
)


@dataclass(frozen=True)
class MuttResult:
    process: subprocess.CompletedProcess[bytes]
    #: The mbox file mutt wrote (absent if it copied nothing).
    mbox: Path
    #: The messages in it, in mutt's order (sorted by date sent), as bytes.
    messages: list[bytes]


def mutt_copy_messages(endpoint: Endpoint, work_dir: Path, *, folder: str = "INBOX",
                       pattern: str = "~A", timeout: float = CLIENT_TIMEOUT) -> MuttResult:
    """Open ``folder`` in mutt and copy every message matching ``pattern`` to an mbox file.

    This is what a user does with ``T`` (tag-pattern) and ``;C`` (copy the tagged messages
    to a file), typed into mutt's own interface: mutt runs in a pseudo-terminal (it needs
    one) with the keys pushed at start-up, and quits by itself. ``copy-message`` rather than
    ``save-message``, which would mark the originals deleted. The default pattern ``~A``
    copies the whole folder: the mbox is the folder listing as mutt sees it.
    """
    _require(MUTT)
    if any(ch in pattern for ch in "\"'\\\r\n<>"):
        raise ValueError(f"keep the mutt pattern simple: {pattern!r}")
    rc = write_muttrc(endpoint, work_dir)
    out = work_dir / f"mutt-{time.time_ns()}.mbox"
    # The keys bound in the muttrc. With function names instead (<tag-pattern>~A<enter>),
    # mutt 2.2.12 tagged nothing here and copied only the current message.
    keys = f"T{pattern}\\n;C{out}\\nq"
    argv = [MUTT, "-n", "-F", str(rc), "-f", mutt_folder_url(endpoint, folder),
            "-e", f'push "{keys}"']
    result = run_in_pty(argv, env=_client_env(work_dir, {"TERM": "vt100"}), timeout=timeout,
                        fail_on=MUTT_QUESTIONS)
    messages: list[bytes] = []
    if out.exists():
        box = mailbox.mbox(out, create=False)
        try:
            messages = [box.get_bytes(key) for key in box.iterkeys()]
        finally:
            box.close()
    return MuttResult(result, out, messages)


def mutt_list_subjects(endpoint: Endpoint, work_dir: Path, *, folder: str = "INBOX",
                       timeout: float = CLIENT_TIMEOUT) -> list[str]:
    """The Subject of every message in ``folder``, in mutt's order (by date sent)."""
    result = mutt_copy_messages(endpoint, work_dir, folder=folder, timeout=timeout)
    subjects = []
    for message in result.messages:
        match = re.search(rb"^Subject: ?(.*?)\r?$", message.split(b"\n\n", 1)[0], re.M)
        subjects.append(match.group(1).decode("utf-8", "replace") if match else "")
    return subjects


def run_in_pty(argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
               cwd: Path | None = None,
               fail_on: Sequence[bytes] = ()) -> subprocess.CompletedProcess[bytes]:
    """Run a full-screen program with a pseudo-terminal as its terminal; bounded.

    The terminal output (escape sequences and all) is drained continuously, so the program
    never blocks on a full terminal, and returned as stdout for diagnostics. After
    ``timeout`` seconds, or as soon as the screen shows one of ``fail_on`` (a question
    nobody will answer), the program's whole session is killed and ``ProcessError`` raised,
    quoting the end of what it showed.
    """
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            list(argv), stdin=terminal, stdout=terminal, stderr=terminal, env=dict(env),
            cwd=cwd, start_new_session=True, close_fds=True)
    except FileNotFoundError as exc:
        os.close(controller)
        os.close(terminal)
        raise ProcessError(f"cannot run {argv[0]}: not installed ({exc})") from exc
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout

    def killed(reason: str) -> ProcessError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        shown = bytes(output[-2000:]).decode("utf-8", "replace")
        return ProcessError(f"{argv[0]} {reason}; its screen ended with:\n{shown}")

    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise killed(f"did not finish within {timeout:g}s")
            ready, _, _ = select.select([controller], [], [], min(remaining, 0.2))
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: every holder of the terminal has closed it
                    chunk = b""
                if not chunk:
                    break
                if len(output) < PTY_OUTPUT_LIMIT:
                    output += chunk
                # A question may straddle two reads: look at the recent tail only.
                tail = bytes(output[-4096:])
                asked = [q for q in fail_on if q in tail]
                if asked:
                    raise killed(f"stopped to ask {asked[0].decode('utf-8', 'replace')!r}")
            elif process.poll() is not None:
                break
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise killed(f"did not finish within {timeout:g}s") from None
    finally:
        os.close(controller)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return subprocess.CompletedProcess(list(argv), process.returncode, bytes(output), b"")
