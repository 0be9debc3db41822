"""A throwaway private Dovecot for interoperability tests and benchmarks.

``ThrowawayDovecot`` writes a complete, self-contained ``dovecot.conf`` in a temporary
directory (run and state directories, log file, TLS certificate, password files, Maildirs),
starts ``dovecot -F -c CONF`` as a child process, and removes every trace of it on exit.
The system Dovecot (``/etc/dovecot``) is never read, configured, started or modified:
``-c`` replaces the configuration entirely and nothing in ours includes the system files.

It is the reference point Mailkeep's IMAP and POP3 servers are compared with, so it runs
the way a Debian user runs Dovecot 2.3: default fsync behaviour (``mail_fsync =
optimized``), default process model (one ``imap-login`` process per connection, one ``imap``
process per session), default per-user connection limits, no auth cache. Anything else is
an explicit ``settings`` override, which the benchmark prints.

What is in the configuration, and why:

- Listeners on 127.0.0.1 only, on four given (or free) high ports: ``imap`` (STARTTLS),
  ``imaps`` (implicit TLS, RFC 8314), ``pop3`` (STLS) and ``pop3s``.
- TLS with a certificate issued by a throwaway CA generated here with ``cryptography``
  (``make_test_certificates``): clients are given ``ca_file`` and verify the server as
  ``localhost`` / ``127.0.0.1``, so the tests exercise real certificate checking.
- Authentication mechanisms PLAIN, LOGIN and SCRAM-SHA-256. PLAIN and LOGIN verify the
  password against an ``{ARGON2ID}`` hash (written with ``mailkeep.auth.hash_password``:
  Dovecot verifies Mailkeep's hashes as its own, the test proves it). SCRAM-SHA-256
  (RFC 7677) cannot use an Argon2id hash: the server needs the SCRAM verifier (salt,
  iteration count, StoredKey, ServerKey, RFC 5802 §3), so each user also has a
  ``{SCRAM-SHA-256}`` entry in a second passwd-file, and each passdb is restricted to the
  mechanisms it can serve (passdb ``mechanisms``). Mailkeep stores both next to each other
  in one line; Dovecot 2.3 can hold only one password per passdb line, hence two files.
- ``disable_plaintext_auth = yes`` (the default). Dovecot treats connections from
  loopback as secured, so PLAIN/LOGIN work on the plaintext ports from 127.0.0.1: tests
  that want to see LOGINDISABLED need another address, which a loopback harness has not.
- Mail is stored as ``maildir:~/Maildir`` under ``mail/DOMAIN/USER``; the userdb is static
  and every mailbox belongs to the unprivileged system user ``nobody`` (as in the Postfix
  harness): Dovecot refuses to run mail processes as root, and ``nobody`` (uid 65534) is
  above ``first_valid_uid`` (500), so no limit needs lowering.

Requires root (the master binds, reads the key and switches users) and the Debian packages
``dovecot-imapd`` and ``dovecot-pop3d``; ``make test`` installs them. When they are missing,
``DovecotUnavailable`` says so: interop tests fail with that message rather than skipping.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import (
    ProcessError,
    StartStop,
    WaitTimeout,
    free_port,
    run_command,
    start_process,
    stop_process,
    wait_for_port,
)

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
#: The modules a listener needs; their absence means a package is missing.
IMAP_BINARY = "/usr/lib/dovecot/imap"
POP3_BINARY = "/usr/lib/dovecot/pop3"

#: Time limit (seconds) for start-up, until every listener greets.
START_TIMEOUT = 30.0
#: After SIGTERM the master usually exits within about a second, but now and then waits
#: about 5 s for a service process; a throwaway instance has nothing to save (every
#: message was fsync'd before its OK), so after this grace period the group is killed.
STOP_GRACE = 2.0
#: How many fresh port sets to try when a port we picked was taken before Dovecot bound it.
PORT_ATTEMPTS = 3
#: Largest log excerpt quoted in an error message (characters).
LOG_EXCERPT_LIMIT = 4000
#: PBKDF2 iterations of the SCRAM verifiers we write (RFC 7677 §4: at least 4096).
SCRAM_ITERATIONS = 4096
#: The system user that owns the Maildirs (Dovecot never runs mail processes as root).
MAIL_USER = "nobody"
#: Validity of the generated certificates; a test run never lasts this long.
CERTIFICATE_DAYS = 30

DEFAULT_USERS: Mapping[str, str] = {"demo@bench.test": "throwaway-dovecot-pw"}

# A user name becomes a passwd-file line and a path (mail/DOMAIN/USER): keep it plain.
_SAFE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_+@")


class DovecotUnavailable(RuntimeError):
    """Dovecot (or the privilege to run it) is missing on this machine."""


def require_dovecot() -> None:
    """Raise ``DovecotUnavailable`` with the fix if a private Dovecot cannot run here."""
    missing = [p for p in (DOVECOT, DOVEADM, IMAP_BINARY, POP3_BINARY)
               if not os.access(p, os.X_OK)]
    if missing:
        raise DovecotUnavailable(
            f"Dovecot is not installed (missing {', '.join(missing)}). Run `make test`, "
            "which installs dovecot-imapd and dovecot-pop3d, or apt-get install them."
        )
    if os.geteuid() != 0:
        raise DovecotUnavailable(
            "a private Dovecot must be started as root (its master binds the listeners and "
            "starts each service as its own user); run the interop tests as root, as CI does."
        )
    for name in (MAIL_USER, "dovecot", "dovenull"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise DovecotUnavailable(
                f"the system user {name!r} Dovecot runs as does not exist; reinstall "
                "dovecot-core (`make test` does)."
            ) from None


# ------------------------------------------------------------------------------ TLS

@dataclass(frozen=True)
class TestCertificates:
    """PEM files of a throwaway CA and a server certificate it issued."""

    __test__ = False  # not a pytest test class, despite the name

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_test_certificates(
    directory: Path,
    *,
    hostnames: Sequence[str] = ("localhost",),
    addresses: Sequence[str] = ("127.0.0.1",),
) -> TestCertificates:
    """Create ``ca.pem``, ``server.pem`` and ``server.key`` in ``directory``.

    A separate CA rather than one self-signed leaf: every client (OpenSSL in mbsync, mutt,
    fetchmail; Python's ssl) accepts a CA as a trust anchor, while a self-signed leaf is
    accepted by some only with extra flags. Keys are ECDSA P-256: quick to generate and to
    sign with, so the handshake costs both benchmarked servers little and the same.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)  # tolerate a slightly slow clock
    not_after = now + datetime.timedelta(days=CERTIFICATE_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mailkeep throwaway test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                    hostnames[0] if hostnames else "test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TestCertificates(directory / "ca.pem", directory / "server.pem",
                             directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.touch(mode=0o600)
    files.key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files


# ------------------------------------------------------------------------------ passwords

def scram_sha256_verifier(password: str, *, salt: bytes | None = None,
                          iterations: int = SCRAM_ITERATIONS) -> str:
    """Dovecot's ``{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey`` for ``password``.

    RFC 5802 §3: SaltedPassword = Hi(password, salt, i) (PBKDF2), ClientKey =
    HMAC(SaltedPassword, "Client Key"), StoredKey = H(ClientKey), ServerKey =
    HMAC(SaltedPassword, "Server Key"); Dovecot stores the last two and the salt in base64.
    The password should be SASLprep'ed first (RFC 5802 §2.2); ASCII passwords, which is all
    the tests use, are unchanged by it.
    """
    if iterations < SCRAM_ITERATIONS:
        raise ValueError(f"RFC 7677 §4 asks for at least {SCRAM_ITERATIONS} iterations")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (f"{{SCRAM-SHA-256}}{iterations},{b64(salt).decode()},{b64(stored_key).decode()},"
            f"{b64(server_key).decode()}")


def _check_user(name: str, password: str) -> None:
    if not name or not set(name) <= _SAFE_NAME or name.count("@") != 1 or ".." in name:
        raise ValueError(f"use a plain ASCII user@domain for the throwaway Dovecot, not {name!r}")
    local, domain = name.split("@")
    if not local or not domain or local.startswith(".") or domain.startswith("."):
        raise ValueError(f"not a plain user@domain: {name!r}")
    if not password or any(ord(ch) < 0x21 or ord(ch) > 0x7E or ch == ":" for ch in password):
        # A colon would split the passwd-file line; control characters and spaces would
        # need SASLprep and quoting in client configurations.
        raise ValueError("use a non-empty printable ASCII password without spaces or ':'")


# ------------------------------------------------------------------------------ the instance

@dataclass(frozen=True)
class DovecotPorts:
    imap: int
    imaps: int
    pop3: int
    pop3s: int

    @classmethod
    def free(cls) -> DovecotPorts:
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        return cls(*sorted(ports))


class ThrowawayDovecot(StartStop):
    """A private Dovecot in a temporary directory; use it as a context manager.

    >>> with ThrowawayDovecot({"me@bench.test": "pw-123456"}) as dc:  # doctest: +SKIP
    ...     imap = imaplib.IMAP4_SSL("127.0.0.1", dc.ports.imaps,
    ...                              ssl_context=ssl.create_default_context(cafile=dc.ca_file))

    Layout of ``root``: ``dovecot.conf``, ``passwd`` (ARGON2ID), ``passwd.scram``, ``tls/``,
    ``run/`` (base_dir), ``state/``, ``mail/DOMAIN/USER/Maildir``, ``dovecot.log``.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        ports: DovecotPorts | None = None,
        settings: Mapping[str, str] | None = None,
        keep_dir: bool = False,
    ) -> None:
        """``users`` maps ``user@domain`` to its password (default: one demo user).

        ``settings`` adds or overrides top-level dovecot.conf settings (e.g.
        ``{"auth_cache_size": "10M"}``); the defaults are Dovecot's own.
        ``keep_dir`` leaves the temporary directory in place after stop, for debugging.
        """
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        for name, password in self.users.items():
            _check_user(name, password)
        self.settings: dict[str, str] = dict(settings or {})
        for name, value in self.settings.items():
            if not name.replace("_", "").isalnum() or any(c in value for c in "\r\n{}"):
                raise ValueError(f"refusing an unsafe dovecot.conf setting {name!r} = {value!r}")
        self._fixed_ports = ports
        self.ports: DovecotPorts = ports or DovecotPorts(0, 0, 0, 0)
        self._keep_dir = keep_dir
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.certificates: TestCertificates | None = None

    # ----------------------------------------------------------------- paths
    def _require_root(self) -> Path:
        if self.root is None:
            raise RuntimeError("the Dovecot instance is not started")
        return self.root

    @property
    def config_path(self) -> Path:
        return self._require_root() / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self._require_root() / "dovecot.log"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients must trust to verify this server."""
        if self.certificates is None:
            raise RuntimeError("the Dovecot instance is not started")
        return self.certificates.ca_file

    @property
    def pid(self) -> int | None:
        """The master's pid; it leads the process group of every Dovecot process."""
        return self.process.pid if self.process is not None else None

    def maildir(self, user: str) -> Path:
        """The Maildir of ``user`` (``mail/DOMAIN/LOCAL/Maildir``; created at first login)."""
        if user not in self.users:
            raise KeyError(f"{user} is not a user of this instance")
        local, domain = user.split("@")
        return self._require_root() / "mail" / domain / local / "Maildir"

    # ----------------------------------------------------------------- configuration
    def _conf(self, mail_uid: int, mail_gid: int) -> str:
        root = self._require_root()
        certs = self.certificates
        assert certs is not None
        # A unique instance name keeps this instance's processes recognisable in `ps`
        # (dovecot-NAME/imap) and apart from any other Dovecot on the machine.
        instance = f"throwaway-{root.name}"
        settings: dict[str, str] = {
            "instance_name": instance,
            "base_dir": str(root / "run"),
            "state_dir": str(root / "state"),
            "log_path": str(root / "dovecot.log"),
            "protocols": "imap pop3",
            "listen": "127.0.0.1",
            "ssl": "yes",
            "ssl_cert": f"<{certs.cert_file}",
            "ssl_key": f"<{certs.key_file}",
            "auth_mechanisms": "plain login scram-sha-256",
            "mail_location": "maildir:~/Maildir",
            # POP3 UIDLs as Dovecot's documentation recommends for new installations.
            "pop3_uidl_format": "%08Xu%08Xv",
        }
        settings.update(self.settings)
        lines = ["# Generated by tests/support/dovecot.py for a throwaway instance.",
                 "# Self-contained: no system configuration file is included."]
        lines += [f"{name} = {value}" for name, value in settings.items()]
        p = self.ports
        lines.append(f"""
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {p.imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {p.imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {p.pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {p.pop3s}
    ssl = yes
  }}
}}
# PLAIN and LOGIN: the password is checked against the Argon2id hash.
passdb {{
  driver = passwd-file
  args = {root / "passwd"}
  mechanisms = plain login
}}
# SCRAM-SHA-256 needs the SCRAM verifier; an Argon2id hash cannot serve it.
passdb {{
  driver = passwd-file
  args = {root / "passwd.scram"}
  mechanisms = scram-sha-256
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={root / "mail"}/%d/%n
}}
""")
        return "\n".join(lines)

    def _write_files(self) -> None:
        from mailkeep.auth.passwords import hash_password

        root = self._require_root()
        mail_user = pwd.getpwnam(MAIL_USER)
        self.certificates = make_test_certificates(root / "tls")
        passwd_lines = []
        scram_lines = []
        for name, password in self.users.items():
            # Mailkeep's own Argon2id output: the harness proves Dovecot accepts it.
            passwd_lines.append(f"{name}:{hash_password(password)}::::::\n")
            scram_lines.append(f"{name}:{scram_sha256_verifier(password)}::::::\n")
        # The auth process runs as the "dovecot" user: root owns the files, its group reads.
        auth_group = pwd.getpwnam("dovecot").pw_gid
        for file_name, lines in (("passwd", passwd_lines), ("passwd.scram", scram_lines)):
            path = root / file_name
            path.touch(mode=0o600)
            os.chown(path, 0, auth_group)
            path.chmod(0o640)
            path.write_text("".join(lines))
        mail = root / "mail"
        mail.mkdir(mode=0o755, exist_ok=True)
        for name in self.users:
            local, domain = name.split("@")
            for path in (mail / domain, mail / domain / local):
                path.mkdir(mode=0o700, exist_ok=True)
                os.chown(path, mail_user.pw_uid, mail_user.pw_gid)
        self.config_path.write_text(self._conf(mail_user.pw_uid, mail_user.pw_gid))

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Create the instance and start it; return once every listener greets."""
        require_dovecot()
        if self.root is not None:
            raise RuntimeError("this Dovecot instance was already started")
        self.root = Path(tempfile.mkdtemp(prefix="mailkeep-dovecot-"))
        # The login processes (dovenull) and mail processes (nobody) need to reach paths
        # below the root; the key stays private (read by the master as root), the passwd
        # files are readable by the auth process's group only.
        self.root.chmod(0o755)
        try:
            self._write_files()
            self._start_with_port_retry()
        except BaseException:
            self.stop()
            raise

    def _start_with_port_retry(self) -> None:
        attempts = 1 if self._fixed_ports else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not self._fixed_ports:
                self.ports = DovecotPorts.free()
                self.config_path.write_text(self._conf(*self._mail_ids()))
            # Check the configuration first: doveconf names the bad line, whereas the
            # master would only exit with the same message in the log.
            run_command(["/usr/bin/doveconf", "-c", self.config_path, "-n"],
                        timeout=START_TIMEOUT)
            self.process = start_process([DOVECOT, "-F", "-c", self.config_path],
                                         log_path=self._require_root() / "dovecot.out")
            try:
                self._wait_ready()
                return
            except (ProcessError, WaitTimeout) as exc:
                output = self._log_excerpt()
                self._stop_process()
                if "Address already in use" in output and attempt < attempts:
                    continue
                raise ProcessError(f"private Dovecot failed to start: {exc}\n"
                                   f"--- {self.log_path} ---\n{output}") from None

    def _mail_ids(self) -> tuple[int, int]:
        entry = pwd.getpwnam(MAIL_USER)
        return entry.pw_uid, entry.pw_gid

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.ports.imap, self.ports.imaps, self.ports.pop3, self.ports.pop3s):
            wait_for_port(port, timeout=max(0.1, deadline - time.monotonic()),
                          process=self.process, log_path=self.log_path)
        # Bound is not serving: the first greeting proves the login service is up.
        _read_greeting(self.ports.imap, b"* OK", deadline)
        _read_greeting(self.ports.pop3, b"+OK", deadline)

    def _stop_process(self) -> None:
        if self.process is None:
            return
        # SIGTERM makes the master stop every service it started; the group kill in
        # stop_process catches anything that outlives it (the master leads the group).
        stop_process(self.process, timeout=STOP_GRACE, sig=signal.SIGTERM)
        self.process = None

    def stop(self) -> None:
        """Stop the instance (politely, then by force) and remove its directory.

        Safe to call more than once and on an instance whose start failed half-way.
        """
        if self.root is None:
            return
        try:
            self._stop_process()
        finally:
            if not self._keep_dir:
                shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # ----------------------------------------------------------------- observation
    def log_text(self) -> str:
        """This instance's log, or "" before anything was logged."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    def _log_excerpt(self) -> str:
        text = self.log_text().strip()
        try:
            out = (self._require_root() / "dovecot.out").read_text(errors="replace").strip()
        except (OSError, RuntimeError):
            out = ""
        text = "\n".join(t for t in (out, text) if t)
        return text if len(text) <= LOG_EXCERPT_LIMIT else "...\n" + text[-LOG_EXCERPT_LIMIT:]

    def maildir_files(self, user: str, folder: str = "INBOX") -> list[Path]:
        """The message files of a folder (``new/`` and ``cur/``), sorted by name."""
        base = self.maildir(user)
        # Dovecot's Maildir++ layout: INBOX is the Maildir itself, others are ".Name".
        directory = base if folder == "INBOX" else base / f".{folder}"
        return sorted((p for sub in ("new", "cur") if (directory / sub).is_dir()
                       for p in (directory / sub).iterdir() if p.is_file()),
                      key=lambda p: p.name)


def _read_greeting(port: int, expected: bytes, deadline: float) -> None:
    """Connect until the service on ``port`` greets with ``expected`` (before ``deadline``)."""
    last = b""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
                sock.settimeout(2.0)
                last = sock.recv(512)
                if last.startswith(expected):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise WaitTimeout(f"no {expected!r} greeting on 127.0.0.1:{port} (last: {last!r})")
