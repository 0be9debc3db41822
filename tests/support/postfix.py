"""A throwaway private Postfix instance for interoperability tests and benchmarks.

``ThrowawayPostfix`` builds a complete, self-contained Postfix instance in a temporary
directory (its own ``main.cf``/``master.cf``, queue, data directory and log file), starts it,
and removes every trace of it on exit. The system Postfix is never configured, started or
modified (``postfix start`` only reads the package's file list in ``/etc/postfix``).

Five modes, each a constructor:

- ``virtual_maildir(domain, user)``: accepts mail for ``user@domain`` and delivers it with
  Postfix's ``virtual(8)`` agent into a Maildir inside the temporary directory. This is the
  reference point of the inbound benchmark.
- ``relay_lmtp(domain, target)``: accepts mail for ``domain`` and hands it over LMTP
  (RFC 2033) to ``unix:/path`` or ``inet:127.0.0.1:port``, the way the Postfix + Dovecot
  setups Mailkeep replaces deliver into their message store.
- ``relayhost(target)``: sends everything submitted from 127.0.0.1 on to ``target``
  (an SMTP smart host), for outbound tests.
- ``sasl_submission(domain, user, login, password, cert_file, key_file)``: a submission
  server (the "relayhost requiring SASL over TLS" that outbound tests talk to): STARTTLS
  with the given certificate, AUTH (Cyrus SASL with a private sasldb: SCRAM-SHA-256, PLAIN,
  LOGIN) offered only under TLS, every recipient refused unless the client authenticated;
  mail for ``user@domain`` goes to a Maildir, everything else is discarded.
- ``tls_destination(domains, cert_file, key_file)``: a destination MX for direct-delivery
  tests: any address in ``domains`` goes to one Maildir, STARTTLS offered with the given
  certificate, and the Received header says whether and how TLS was used.

How the private instance stays private and safe:

- It is addressed only with ``-c CONFIG_DIR``. Postfix requires a non-default configuration
  directory to be listed in the default ``main.cf`` (``alternate_config_directories``) only
  for unprivileged callers of the set-gid commands; we run as root, so nothing in
  ``/etc/postfix`` needs to exist or change. ``multi_instance_directories`` (postmulti) is not
  used at all: it would register the instance with the system's Postfix.
- The only network listener is ``127.0.0.1:PORT`` declared in our ``master.cf``; there is no
  ``smtp inet`` (port 25) service, and ``inet_interfaces`` is the loopback address.
- ``mydestination`` is empty, nothing relays except in ``relayhost`` mode, and in the other
  modes the default transport is ``error:`` so no message can ever leave the machine.
- Logging goes to ``maillog_file`` inside the temporary directory (through ``postlogd``),
  so a test can read exactly this instance's log with ``log_text()``.

Requires root (Postfix's ``master`` starts as root and drops privileges per daemon) and the
Debian ``postfix`` package; ``make test`` installs it. When it is missing,
``PostfixUnavailable`` says so: interop tests fail with that message rather than skipping.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from tests.support.procs import (
    ProcessError,
    StartStop,
    free_port,
    kill_group,
    pid_is_alive,
    processes_in_group,
    run_command,
    wait_for_port,
    wait_until,
)

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
MASTER = "/usr/lib/postfix/sbin/master"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SASLPASSWD2 = "/usr/sbin/saslpasswd2"

#: Time limits (seconds) for instance start-up and shutdown.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: How many fresh ports to try when the one we picked was taken before Postfix bound it.
PORT_ATTEMPTS = 3
#: Largest log excerpt quoted in an error message (characters).
LOG_EXCERPT_LIMIT = 4000

# The daemons every instance needs, as in Debian's master.cf minus the port-25 listener and
# the pipe(8) services for third-party programs. Nothing is chrooted (column 5 "n"): a
# chroot would need copies of /etc files inside the temporary queue directory.
# Columns: service type private unpriv chroot wakeup maxproc command.
_MASTER_CF_SERVICES = """\
pickup     unix  n  -  n  60     1  pickup
cleanup    unix  n  -  n  -      0  cleanup
qmgr       unix  n  -  n  300    1  qmgr
tlsmgr     unix  -  -  n  1000?  1  tlsmgr
rewrite    unix  -  -  n  -      -  trivial-rewrite
bounce     unix  -  -  n  -      0  bounce
defer      unix  -  -  n  -      0  bounce
trace      unix  -  -  n  -      0  bounce
verify     unix  -  -  n  -      1  verify
flush      unix  n  -  n  1000?  0  flush
proxymap   unix  -  -  n  -      -  proxymap
proxywrite unix  -  -  n  -      1  proxymap
smtp       unix  -  -  n  -      -  smtp
relay      unix  -  -  n  -      -  smtp
showq      unix  n  -  n  -      -  showq
error      unix  -  -  n  -      -  error
retry      unix  -  -  n  -      -  error
discard    unix  -  -  n  -      -  discard
local      unix  -  n  n  -      -  local
virtual    unix  -  n  n  -      -  virtual
lmtp       unix  -  -  n  -      -  lmtp
anvil      unix  -  -  n  -      1  anvil
scache     unix  -  -  n  -      1  scache
postlog    unix-dgram n  -  n  -  1  postlogd
"""

_PLAIN_LOCAL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
#: A smart host: "[host]" (any host, IPv6 too) or a plain name/IPv4 address, then ":port".
_NEXTHOP = re.compile(
    r"(?:\[(?P<bracketed>[A-Za-z0-9.:-]+)\]|(?P<plain>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?"
)

_NO_MAIL_OUT = "error:5.7.1 this throwaway Postfix instance does not send mail out"
#: What sasl_submission() does with mail for anyone but its Maildir user: accept, drop.
_DISCARD = "discard:accepted and discarded by the throwaway submission server"
#: SASL mechanisms of sasl_submission(), strongest first (Cyrus plugins from Debian's
#: libsasl2-modules; SCRAM works from the cleartext secret that saslpasswd2 stores).
SUBMISSION_MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")


class PostfixUnavailable(RuntimeError):
    """Postfix (or the privilege to run it) is missing on this machine."""


def require_postfix() -> None:
    """Raise ``PostfixUnavailable`` with the fix if a private Postfix cannot run here."""
    missing = [p for p in (POSTFIX, POSTCONF, POSTQUEUE, MASTER) if not os.access(p, os.X_OK)]
    if missing:
        raise PostfixUnavailable(
            f"Postfix is not installed (missing {', '.join(missing)}). Run `make test`, which "
            "installs postfix and swaks, or `apt-get install postfix swaks`."
        )
    if os.geteuid() != 0:
        raise PostfixUnavailable(
            "a private Postfix instance must be started as root (its master daemon starts as "
            "root and drops privileges per service); run the interop tests as root, as CI does."
        )
    for kind, name, lookup in (("user", "postfix", pwd.getpwnam), ("group", "postdrop",
                                                                   grp.getgrnam)):
        try:
            lookup(name)
        except KeyError:
            raise PostfixUnavailable(
                f"the {kind} {name!r} that Postfix runs as does not exist; reinstall the "
                "postfix package (`make test` does)."
            ) from None


def bracketed_nexthop(target: str) -> str:
    """``host:port`` → ``[host]:port``: Postfix then connects to host itself, no MX lookup.

    Accepts ``host``, ``host:port``, ``[host]`` and ``[host]:port`` (an IPv6 address must be
    bracketed). Anything else, including whitespace that would split the main.cf value,
    raises ``ValueError``.
    """
    match = _NEXTHOP.fullmatch(target)
    if match is None:
        raise ValueError(f"not a host, host:port or [host]:port: {target!r}")
    host = match.group("bracketed") or match.group("plain")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"port out of range in {target!r}")
    return f"[{host}]" + (f":{port}" if port is not None else "")


class ThrowawayPostfix(StartStop):
    """A private Postfix instance in a temporary directory; use it as a context manager.

    >>> with ThrowawayPostfix.virtual_maildir("bench.test", "demo") as pf:  # doctest: +SKIP
    ...     smtplib.SMTP("127.0.0.1", pf.port).sendmail(...)
    ...     pf.wait_for_maildir_count(1)

    Layout of ``root``: ``etc/`` (main.cf, master.cf, lookup tables), ``queue/``, ``data/``,
    ``mail/`` (virtual mailboxes), ``maillog``.
    """

    def __init__(
        self,
        *,
        mode_settings: Mapping[str, str],
        tables: Mapping[str, str] | None = None,
        port: int | None = None,
        hostname: str = "postfix.throwaway.test",
        extra_main_cf: Mapping[str, str] | None = None,
        keep_dir: bool = False,
    ) -> None:
        """Prefer the mode constructors; this takes the raw main.cf settings of a mode.

        ``tables`` maps file names (created in ``etc/``) to their content, for ``texthash:``
        lookup tables, which Postfix reads directly without ``postmap``. ``extra_main_cf``
        overrides or adds main.cf settings (e.g. ``{"smtpd_tls_security_level": "may"}``).
        ``keep_dir`` leaves the temporary directory in place after stop, for debugging.
        """
        self._mode_settings = dict(mode_settings)
        self._tables = dict(tables or {})
        self._fixed_port = port
        self.port: int = port or 0
        self.hostname = hostname
        self._extra = dict(extra_main_cf or {})
        self._keep_dir = keep_dir
        self.root: Path | None = None
        self._master_pid: int | None = None
        self.maildir: Path | None = None
        self._maildir_spec: tuple[str, str] | None = None
        # sasl_submission(): SASL users (login, password) and master.cf listener options.
        self._sasl_users: tuple[tuple[str, str], ...] = ()
        self._sasl_mechanisms: tuple[str, ...] = ()
        self._listener_options: tuple[tuple[str, str], ...] = ()

    # ----------------------------------------------------------------- constructors
    @classmethod
    def virtual_maildir(cls, domain: str, user: str, **kwargs: Any) -> Self:
        """Deliver mail for ``user@domain`` to a Maildir (``self.maildir``) with virtual(8)."""
        # Both become a path below the mail directory and a lookup-table line: keep them plain.
        if not _PLAIN_LOCAL_PART.fullmatch(user) or not _PLAIN_DOMAIN.fullmatch(domain):
            raise ValueError(f"use a plain ASCII user and domain, not {user!r}@{domain!r}")
        domain = domain.lower()
        address = f"{user}@{domain}"
        instance = cls(
            mode_settings={
                "virtual_mailbox_domains": domain,
                # texthash: tables are read as-is at start-up, no postmap database needed.
                "virtual_mailbox_maps": "texthash:{root}/etc/vmailbox",
                "virtual_mailbox_base": "{root}/mail",
                "virtual_uid_maps": "static:{uid}",
                "virtual_gid_maps": "static:{gid}",
                # Maildir files are not size-limited like mbox files, but be explicit.
                "virtual_mailbox_limit": "0",
                "smtpd_relay_restrictions": "reject_unauth_destination",
                "default_transport": _NO_MAIL_OUT,
                "relay_transport": _NO_MAIL_OUT,
            },
            # A trailing slash selects Maildir format (virtual(8), "virtual_mailbox_maps").
            tables={"vmailbox": f"{address} {domain}/{user}/Maildir/\n"},
            **kwargs,
        )
        instance._maildir_spec = (domain, user)
        return instance

    @classmethod
    def relay_lmtp(cls, domain: str, lmtp_target: str, **kwargs: Any) -> Self:
        """Accept mail for ``domain`` and deliver it over LMTP to ``lmtp_target``.

        ``lmtp_target`` is ``unix:/path/to/socket`` or ``inet:127.0.0.1:port``. Postfix's
        lmtp(8) client runs as the ``postfix`` user: a UNIX socket (and the directories above
        it) must be reachable by that user.
        """
        if not lmtp_target.startswith(("unix:", "inet:")):
            raise ValueError(f"LMTP target must start with unix: or inet:, got {lmtp_target!r}")
        if any(ch.isspace() for ch in lmtp_target) or not _PLAIN_DOMAIN.fullmatch(domain):
            raise ValueError("domain and LMTP target must not contain spaces or line breaks")
        domain = domain.lower()
        return cls(
            mode_settings={
                "relay_domains": domain,
                "transport_maps": "texthash:{root}/etc/transport",
                "smtpd_relay_restrictions": "reject_unauth_destination",
                "default_transport": _NO_MAIL_OUT,
            },
            tables={"transport": f"{domain} lmtp:{lmtp_target}\n"},
            **kwargs,
        )

    @classmethod
    def relayhost(cls, target: str, **kwargs: Any) -> Self:
        """Relay all mail submitted from 127.0.0.0/8 to the smart host ``target`` (host:port).

        The host is written in brackets, so Postfix connects to exactly that host and skips
        the MX lookup of RFC 5321 §5.1: mail cannot go anywhere but ``target``.
        """
        return cls(
            mode_settings={
                "relayhost": bracketed_nexthop(target),
                "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
                "smtp_dns_support_level": "disabled",
            },
            **kwargs,
        )

    @classmethod
    def sasl_submission(cls, domain: str, user: str, *, login: str, password: str,
                        cert_file: Path, key_file: Path, wrapper_mode: bool = False,
                        mechanisms: tuple[str, ...] = SUBMISSION_MECHANISMS,
                        **kwargs: Any) -> Self:
        """A submission server that requires SASL authentication over TLS.

        STARTTLS is offered with ``cert_file`` (the chain, leaf first) and ``key_file``;
        ``wrapper_mode`` instead speaks TLS from the first byte (port 465 style, RFC 8314).
        AUTH is only offered once TLS is active (``smtpd_tls_auth_only``), with
        ``mechanisms`` from Cyrus SASL checked against a private sasldb holding one user,
        ``login`` ("name@realm" or a plain name) with ``password``. Unauthenticated clients
        get every RCPT refused (554 5.7.1); authenticated ones may send anywhere. Mail for
        ``user@domain`` is delivered to ``self.maildir``, all other mail is discarded.
        """
        if any(ch.isspace() or ch in ":\0" for ch in login) or not login or "\n" in password:
            raise ValueError(f"use a plain SASL login without spaces or colons, not {login!r}")
        for name in mechanisms:
            if not re.fullmatch(r"[A-Z0-9-]{1,20}", name):
                raise ValueError(f"not a SASL mechanism name: {name!r}")
        for path in (cert_file, key_file):
            if not Path(path).is_file() or any(ch.isspace() for ch in str(path)):
                raise ValueError(f"TLS file {path} must exist and have no spaces in its path")
        instance = cls.virtual_maildir(domain, user, **kwargs)
        instance._mode_settings.update({
            "default_transport": _DISCARD,
            "relay_transport": _DISCARD,
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(cert_file),
            "smtpd_tls_key_file": str(key_file),
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            # Cyrus reads {smtpd_sasl_path}.conf from here. (Debian's Postfix looks in
            # $config_directory/sasl whatever this says, so that is where it is written.)
            "cyrus_sasl_config_path": "{root}/etc/sasl",
            "smtpd_sasl_security_options": "noanonymous",
            "smtpd_sasl_tls_security_options": "noanonymous",
            "broken_sasl_auth_clients": "no",
            # Not mynetworks: 127.0.0.1 must authenticate like everybody else.
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
        })
        instance._sasl_users = ((login, password),)
        instance._sasl_mechanisms = tuple(mechanisms)
        if wrapper_mode:
            instance._listener_options = (("smtpd_tls_wrappermode", "yes"),)
        return instance

    @classmethod
    def tls_destination(cls, domains: list[str] | tuple[str, ...], *, cert_file: Path,
                        key_file: Path, **kwargs: Any) -> Self:
        """A destination MX for direct-delivery tests: every address in ``domains`` goes
        into one Maildir (``self.maildir``), and STARTTLS is offered (not required) with
        ``cert_file`` (the chain, leaf first) and ``key_file``.

        The sender's TLS policy (DANE, MTA-STS) decides whether TLS is used and verified;
        this server accepts either, like a real MX. Its Received header says whether a
        message came over TLS and with which protocol and cipher
        (``smtpd_tls_received_header``), so a test can tell from the delivered message.
        """
        if not domains:
            raise ValueError("tls_destination needs at least one domain")
        for domain in domains:
            if not _PLAIN_DOMAIN.fullmatch(domain):
                raise ValueError(f"use plain ASCII domains, not {domain!r}")
        for path in (cert_file, key_file):
            if not Path(path).is_file() or any(ch.isspace() for ch in str(path)):
                raise ValueError(f"TLS file {path} must exist and have no spaces in its path")
        first = domains[0].lower()
        instance = cls.virtual_maildir(first, "inbox", **kwargs)
        instance._mode_settings.update({
            "virtual_mailbox_domains": ", ".join(d.lower() for d in domains),
            # static: every recipient in those domains exists and shares one Maildir.
            "virtual_mailbox_maps": f"static:{first}/inbox/Maildir/",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(cert_file),
            "smtpd_tls_key_file": str(key_file),
            # "Anonymous TLS connection established ... TLSv1.3 with cipher ..." per session.
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
        })
        return instance

    # ----------------------------------------------------------------- paths
    def _require_root(self) -> Path:
        if self.root is None:
            raise RuntimeError("the Postfix instance is not started")
        return self.root

    @property
    def config_dir(self) -> Path:
        return self._require_root() / "etc"

    @property
    def queue_dir(self) -> Path:
        return self._require_root() / "queue"

    @property
    def log_path(self) -> Path:
        return self._require_root() / "maillog"

    @property
    def master_pid(self) -> int | None:
        return self._master_pid

    # ----------------------------------------------------------------- configuration
    def _main_cf(self, uid: int, gid: int) -> str:
        root = self._require_root()
        settings: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(root / "queue"),
            "data_directory": str(root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "maillog_file": str(root / "maillog"),
            # postlogd only writes below these prefixes (default /var, /dev/stdout).
            "maillog_file_prefixes": str(root),
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            # Retry deferred mail quickly: a test waits seconds, not the default 5 minutes.
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "30s",
        }
        # Mode settings name paths and ids that exist only now: {root}, {uid}, {gid}.
        settings.update(
            {name: value.format(root=root, uid=uid, gid=gid)
             for name, value in self._mode_settings.items()}
        )
        settings.update(self._extra)
        for name, value in settings.items():
            # A line break would start a new main.cf line: a setting nobody asked for.
            if "\n" in value or "\r" in value or "\n" in name:
                raise ValueError(f"main.cf setting {name!r} contains a line break")
        lines = ["# Generated by tests/support/postfix.py for a throwaway instance."]
        lines += [f"{name} = {value}" for name, value in settings.items()]
        return "\n".join(lines) + "\n"

    def _master_cf(self) -> str:
        listener = f"127.0.0.1:{self.port} inet n - n - - smtpd\n"
        for name, value in self._listener_options:
            listener += f"  -o {name}={value}\n"
        return "# Generated by tests/support/postfix.py.\n" + listener + _MASTER_CF_SERVICES

    def _write_config(self) -> None:
        root = self._require_root()
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
        etc = root / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        (etc / "main.cf").write_text(self._main_cf(uid, gid))
        (etc / "master.cf").write_text(self._master_cf())
        for name, content in self._tables.items():
            (etc / name).write_text(content)
        if self._sasl_users:
            self._write_sasl_config(etc)
        # Postfix re-reads a configuration file, in 300 ms steps, for as long as its mtime
        # is not older than the moment it started reading (it might still be being written).
        # Files written this very second would cost every command ~1.5 s; backdate them.
        backdated = time.time() - 5
        for path in etc.iterdir():
            os.utime(path, (backdated, backdated))
        # The queue directory belongs to root, the data directory to mail_owner; the queue's
        # subdirectories are created by `postfix start` (post-install create-missing) from
        # the installed postfix-files table, with the owners and modes it lists.
        (root / "queue").mkdir(mode=0o755, exist_ok=True)
        data = root / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
        if self._maildir_spec is not None:
            domain, user = self._maildir_spec
            mail = root / "mail"
            mail.mkdir(mode=0o755, exist_ok=True)
            maildir = mail / domain / user / "Maildir"
            # virtual(8) delivers as the mailbox owner (nobody here): it must be able to
            # create files in tmp/ and rename them into new/.
            for path in (mail / domain, mail / domain / user, maildir,
                         maildir / "tmp", maildir / "new", maildir / "cur"):
                path.mkdir(mode=0o700, exist_ok=True)
                os.chown(path, uid, gid)
            self.maildir = maildir

    def _write_sasl_config(self, etc: Path) -> None:
        """Cyrus SASL's smtpd.conf and the private sasldb (saslpasswd2 -f) it points to."""
        sasl = etc / "sasl"
        sasl.mkdir(mode=0o755, exist_ok=True)
        path = sasl / "sasldb2"
        (sasl / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            f"sasldb_path: {path}\n"
            f"mech_list: {' '.join(self._sasl_mechanisms)}\n"
        )
        if not os.access(SASLPASSWD2, os.X_OK):
            raise PostfixUnavailable(
                f"{SASLPASSWD2} is missing: `apt-get install sasl2-bin libsasl2-modules` "
                "(both are in the Makefile's APT_PACKAGES)")
        path.unlink(missing_ok=True)
        # smtpd (user postfix) reads the database: group postfix, not world-readable.
        for login, password in self._sasl_users:
            name, _, realm = login.partition("@")
            argv = [SASLPASSWD2, "-f", str(path), "-p", "-c"]
            if realm:
                argv += ["-u", realm]
            run_command([*argv, name], input_bytes=password.encode() + b"\n", timeout=30.0)
        os.chown(path, 0, pwd.getpwnam("postfix").pw_gid)
        path.chmod(0o640)
        backdated = time.time() - 5
        for written in (sasl, sasl / "smtpd.conf", path):
            os.utime(written, (backdated, backdated))

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Create the instance and start it; return once it accepts SMTP connections."""
        require_postfix()
        if self.root is not None:
            raise RuntimeError("this Postfix instance was already started")
        self.root = Path(tempfile.mkdtemp(prefix="mailkeep-postfix-"))
        # The daemons run as postfix and nobody and need to reach paths below the root.
        self.root.chmod(0o755)
        try:
            self._start_with_port_retry()
        except BaseException:
            self.stop()
            raise

    def _start_with_port_retry(self) -> None:
        attempts = 1 if self._fixed_port else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not self._fixed_port:
                self.port = free_port()
            self._write_config()
            result = run_command(
                [POSTFIX, "-c", self.config_dir, "start"], timeout=START_TIMEOUT, check=False
            )
            if result.returncode == 0:
                break
            output = (result.stderr + result.stdout).decode("utf-8", "replace")
            port_taken = "Address already in use" in output + self.log_text()
            if port_taken and attempt < attempts:
                continue
            raise ProcessError(
                f"private Postfix failed to start (status {result.returncode}):\n"
                f"{output.strip()}\n--- {self.log_path} ---\n{self._log_excerpt()}"
            )
        self._master_pid = self._read_master_pid()
        wait_for_port(self.port, timeout=START_TIMEOUT)

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the instance (politely, then by force) and remove its directory.

        Safe to call more than once and on an instance whose start failed half-way.
        """
        if self.root is None:
            return
        try:
            # The pid file is the truth if someone restarted the instance behind our back.
            pid = self._read_master_pid() or self._master_pid
            if pid is not None and pid_is_alive(pid):
                run_command([POSTFIX, "-c", self.config_dir, "stop"],
                            timeout=STOP_TIMEOUT, check=False)
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: not pid_is_alive(pid), timeout=STOP_TIMEOUT,
                               description=f"Postfix master {pid} to exit")
            # master(8) is a session leader: its pid is its children's process group.
            # Anything left (a daemon stuck in delivery) is killed, never orphaned.
            if pid is not None and (pid_is_alive(pid) or processes_in_group(pid)):
                kill_group(pid)
                wait_until(lambda: not processes_in_group(pid), timeout=STOP_TIMEOUT,
                           description=f"Postfix processes of group {pid} to exit")
        finally:
            self._master_pid = None
            if not self._keep_dir:
                shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # ----------------------------------------------------------------- observation
    def log_text(self) -> str:
        """This instance's whole log (Postfix's maillog_file), or "" before anything logged."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    def _log_excerpt(self) -> str:
        text = self.log_text().strip()
        return text if len(text) <= LOG_EXCERPT_LIMIT else "...\n" + text[-LOG_EXCERPT_LIMIT:]

    def _maildir(self) -> Path:
        if self.maildir is None:
            raise RuntimeError("only a virtual_maildir() instance has a Maildir")
        return self.maildir

    def maildir_count(self) -> int:
        """Messages delivered to the Maildir so far (files in new/ and cur/)."""
        maildir = self._maildir()
        return sum(
            1 for sub in ("new", "cur") for entry in os.scandir(maildir / sub) if entry.is_file()
        )

    def maildir_messages(self) -> list[bytes]:
        """The delivered messages, oldest first (Maildir names start with the time)."""
        maildir = self._maildir()
        files = [p for sub in ("new", "cur") for p in (maildir / sub).iterdir() if p.is_file()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]

    def wait_for_maildir_count(self, count: int, *, timeout: float = 30.0,
                               interval: float = 0.02) -> None:
        """Wait until at least ``count`` messages are in the Maildir; fail quoting the log."""
        try:
            wait_until(lambda: self.maildir_count() >= count, timeout=timeout,
                       interval=interval, description=f"{count} messages in {self.maildir}")
        except TimeoutError as exc:
            raise TimeoutError(
                f"{exc} (have {self.maildir_count()}); queue: {self.queue_entries()}\n"
                f"--- log ---\n{self._log_excerpt()}"
            ) from None

    def queue_entries(self) -> list[dict[str, Any]]:
        """The mail queue as Postfix reports it (``postqueue -j``: one JSON object each)."""
        result = run_command([POSTQUEUE, "-c", self.config_dir, "-j"], timeout=30.0)
        return [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]

    def queue_is_empty(self) -> bool:
        """True when no message waits in any queue (incoming, active, deferred, hold)."""
        return not self.queue_entries()

    def wait_for_queue_empty(self, *, timeout: float = 30.0) -> None:
        wait_until(self.queue_is_empty, timeout=timeout, interval=0.2,
                   description=f"the queue of {self.config_dir} to drain")

    def flush(self) -> None:
        """Ask Postfix to retry deferred mail now (``postqueue -f``)."""
        run_command([POSTQUEUE, "-c", self.config_dir, "-f"], timeout=30.0)

    def postconf(self, *names: str) -> dict[str, str]:
        """Effective values of main.cf parameters in this instance (``postconf -c DIR``)."""
        result = run_command([POSTCONF, "-c", self.config_dir, *names], timeout=30.0)
        return parse_postconf_output(result.stdout.decode("utf-8", "replace"))


def parse_postconf_output(text: str) -> dict[str, str]:
    """Parse ``postconf`` output: one ``name = value`` per line (``name =`` when empty).

    Parameter names never contain "=", so the first one separates name from value; the value
    may contain more (``smtpd_banner = $myhostname ESMTP x=y``).
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip():
            values[name.strip()] = value.strip()
    return values

