"""`mailkeep quickstart`: from nothing to a production server in one command.

The steps, each safe to repeat (a rerun after an interruption converges; nothing that
exists is overwritten):

1. the configuration file, written once, atomically (an existing file is loaded instead;
   a malformed one stops everything before anything is written);
2. the data directory and, when run as root, the unprivileged ``run_as`` user;
3. the first account, with a strong random password shown once (an existing account keeps
   its password);
4. DKIM keys for the domain: RSA 2048 and Ed25519 (kept when there are some);
5. certificates: ACME (RFC 8555) on port 80 when the host is reachable, else the
   self-signed fallback with a warning (the server keeps trying ACME once it runs);
6. the systemd unit;
7. the DNS zone to publish, with a comment on each record.

The work is in :func:`quickstart`; the command line in ``mailkeep.cli.quickstart_cmd``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.config import Config, ConfigError, load_config
from mailkeep.config.names import InvalidName, canonical_address, canonical_domain
from mailkeep.durable import atomic_write_text

logger = logging.getLogger("mailkeep.quickstart")

DEFAULT_CONFIG = Path("/etc/mailkeep/mailkeep.toml")
DEFAULT_DATA_DIR = Path("/var/lib/mailkeep")
DEFAULT_UNIT = Path("/etc/systemd/system/mailkeep.service")
DEFAULT_RUN_AS = "mailkeep"

#: The listeners a production server gets: RFC 8314 implicit TLS for clients (465, 993,
#: 995) plus submission with STARTTLS (587), the MX (25), and HTTP/HTTPS for ACME,
#: MTA-STS and autoconfiguration. Plaintext IMAP/POP3 (143/110) are left out (their SRV
#: records say so, RFC 6186 §4).
PRODUCTION_PORTS: tuple[tuple[str, int], ...] = (
    ("smtp", 25), ("submission", 587), ("submissions", 465), ("imaps", 993),
    ("pop3s", 995), ("http", 80), ("https", 443),
)


class QuickstartError(Exception):
    """Quickstart cannot go on; the message says why and what to do."""


@dataclass
class Options:
    address: str
    hostname: str | None = None
    config_path: Path = DEFAULT_CONFIG
    data_dir: Path = DEFAULT_DATA_DIR
    run_as: str | None = DEFAULT_RUN_AS
    listen: tuple[str, ...] = ()           # () = 0.0.0.0 and, when usable, [::]
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    acme: bool = True
    acme_directory: str | None = None
    acme_ca_file: Path | None = None
    #: Where to answer HTTP-01 during quickstart; None: the config's http listener.
    acme_http_address: str | None = None
    unit_path: Path | None = DEFAULT_UNIT
    password: str | None = None             # None: generated
    ports: dict[str, int] = field(default_factory=lambda: dict(PRODUCTION_PORTS))


@dataclass
class Outcome:
    config: Config
    created_config: bool
    account: str
    password: str | None                    # None: the account existed already
    dkim_created: list[str]
    certificate: str                        # "acme", "existing", "self-signed"
    certificate_note: str
    unit_path: Path | None
    zone: str
    warnings: list[str] = field(default_factory=list)


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def ipv6_usable() -> bool:
    """True when this machine can listen on IPv6 (a [::] listener would otherwise stop
    the server at start)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def config_text(opts: Options, domain: str, hostname: str) -> str:
    """The configuration file quickstart writes, commented for the person who reads it."""
    listen = opts.listen or (("0.0.0.0", "::") if ipv6_usable() else ("0.0.0.0",))
    lines = [
        "# Written by `mailkeep quickstart`. One file for the whole server; every key is",
        "# described in docs/configuration.md. After editing: `mailkeep config check`, then",
        "# `systemctl reload mailkeep`.",
        f"hostname = {_toml(hostname)}",
        f"data_dir = {_toml(str(opts.data_dir))}",
    ]
    if opts.run_as:
        lines.append(f"run_as = {_toml(opts.run_as)}")
    lines += ["", "[log]", 'format = "logfmt"', 'level = "info"', ""]
    lines += ["[acme]",
              "# Certificates from Let's Encrypt (or the directory below), renewed 30 days",
              "# before they expire; needs ports 80 or 443 reachable from the Internet.",
              f"enabled = {'true' if opts.acme else 'false'}",
              f"email = {_toml(opts.address)}"]
    if opts.acme_directory:
        lines.append(f"directory = {_toml(opts.acme_directory)}")
    if opts.acme_ca_file:
        lines.append(f"ca_file = {_toml(str(opts.acme_ca_file))}")
    lines.append("")
    if opts.ipv4 or opts.ipv6:
        lines += ["[dns]", "# The server's public addresses (A/AAAA records, PTR checks)."]
        if opts.ipv4:
            lines.append(f"ipv4 = [{', '.join(_toml(ip) for ip in opts.ipv4)}]")
        if opts.ipv6:
            lines.append(f"ipv6 = [{', '.join(_toml(ip) for ip in opts.ipv6)}]")
        lines.append("")
    lines += ["[dmarc]",
              "# DMARC aggregate reports about your domain arrive here (the rua= address).",
              f"report_address = {_toml('dmarc-reports@' + domain)}", ""]
    for protocol, port in opts.ports.items():
        for host in listen:
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            lines += ["[[listeners]]", f"protocol = {_toml(protocol)}",
                      f"address = {_toml(address)}", ""]
    lines += ["[[listeners]]", "# Local delivery for other programs (LMTP, RFC 2033).",
              'protocol = "lmtp"', f"address = {_toml('unix:' + str(opts.data_dir / 'lmtp.sock'))}",
              ""]
    lines += [f"[domains.{_toml(domain)}]", "",
              f"[accounts.{_toml(opts.address)}]", "",
              "[aliases]",
              "# RFC 2142 role addresses; postmaster@ always reaches the first account.",
              f"{_toml('abuse@' + domain)} = {_toml(opts.address)}",
              f"{_toml('dmarc-reports@' + domain)} = {_toml(opts.address)}", ""]
    return "\n".join(lines)


def _ensure_user(name: str, data_dir: Path) -> str | None:
    """Create the system user ``name`` when missing (root only); a warning or None."""
    try:
        pwd.getpwnam(name)
        return None
    except KeyError:
        pass
    if os.geteuid() != 0:
        return f"there is no user {name!r}; create it before starting the server as root"
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run([useradd, "--system", "--home-dir", str(data_dir), "--no-create-home",
                        "--shell", "/usr/sbin/nologin", "--user-group", name],
                       check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise QuickstartError(f"could not create the system user {name!r}: {detail.strip()}"
                              ) from None
    return None


def _load_existing(path: Path) -> Config | None:
    if not path.exists():
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        raise QuickstartError(
            f"{path} exists but is not a valid configuration; nothing was changed. Fix it "
            f"(`mailkeep config check --config {path}`) or move it away and run quickstart "
            f"again.\n{exc}") from None


def _account(config: Config, address: str, password: str | None) -> str | None:
    """Give ``address`` a password (returned) unless it has one already (None)."""
    from mailkeep.auth.passwd_file import PasswdFile
    from mailkeep.auth.passwords import generate_password, hash_password
    from mailkeep.cli.account import store_password
    from mailkeep.store import open_store

    if PasswdFile(config.passwd_file).get(address) is not None:
        return None
    password = password or generate_password(24)
    store_password(config, address, hash_password(password), password)
    store = open_store(config.data_dir)
    try:
        store.ensure_account(address)
    finally:
        store.close()
    return password


def _dkim(config: Config, domain: str) -> list[str]:
    from mailkeep.cli.dkim_cmd import _keys

    keys = _keys(config)
    if keys.active(domain):
        return []
    return [f"{s.name} ({s.algorithm})" for s in keys.keygen(domain)]


def _certificates(config: Config, opts: Options,
                  obtain: Callable[[Config, str | None], tuple[bool, str]] | None
                  ) -> tuple[str, str]:
    """("acme" | "existing" | "self-signed", note)."""
    from mailkeep.servers.tls import generate_self_signed

    if config.tls.cert:
        return "existing", f"using the certificate files in [tls] ({config.tls.cert})"
    if config.acme.enabled:
        ok, note = (obtain or _obtain_acme)(config, opts.acme_http_address)
        if ok:
            return "acme", note
        generate_self_signed(config.tls_dir, config.hostname)
        return "self-signed", (
            f"ACME failed: {note}. Using a self-signed certificate for now (clients will "
            "warn); once DNS points here and port 80 or 443 is reachable, the running server "
            "obtains the certificate by itself (`mailkeep cert status` shows it).")
    generate_self_signed(config.tls_dir, config.hostname)
    return "self-signed", ("ACME is off: using a self-signed certificate (clients will "
                           "warn). Set [tls] cert/key or [acme] enabled = true.")


def _obtain_acme(config: Config, http_address: str | None) -> tuple[bool, str]:
    from mailkeep.acme.manager import obtain_standalone

    # It reports ACME and network failures in the result; it never raises for them.
    result = asyncio.run(obtain_standalone(config, http_address=http_address))
    return result.ok, result.message


def _unit(opts: Options) -> Path | None:
    from mailkeep.systemd import unit_text

    if opts.unit_path is None:
        return None
    if opts.unit_path.exists():
        return opts.unit_path
    executable = shutil.which("mailkeep") or str(Path(sys.argv[0]).resolve())
    text = unit_text(executable, opts.config_path.resolve(), opts.data_dir.resolve())
    opts.unit_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(opts.unit_path, text, mode=0o644)
    return opts.unit_path


def zone_for(config: Config, domain: str) -> str:
    from mailkeep.dnsrecords import local_records, zone_text

    records, notes = local_records(config, domain)
    return zone_text(records, notes=notes)


def quickstart(opts: Options, *,
               obtain: Callable[[Config, str | None], tuple[bool, str]] | None = None
               ) -> Outcome:
    """Set up (or finish setting up) a server for ``opts.address``; see the module doc."""
    try:
        address = canonical_address(opts.address)
    except InvalidName as exc:
        raise QuickstartError(f"{opts.address}: {exc}") from None
    domain = address.rpartition("@")[2]
    if "." not in domain:
        raise QuickstartError(f"{domain} is not a public domain; for a local trial run "
                              "`mailkeep localserve`")
    try:
        hostname = canonical_domain(opts.hostname or f"mail.{domain}")
    except InvalidName as exc:
        raise QuickstartError(f"--hostname: {exc}") from None
    if "." not in hostname:
        raise QuickstartError(f"--hostname {hostname}: give the fully qualified name")
    opts.address = address
    opts.config_path = opts.config_path.absolute()
    opts.data_dir = opts.data_dir.absolute()

    warnings: list[str] = []
    config = _load_existing(opts.config_path)
    created = config is None
    if config is not None:
        if address not in config.accounts:
            raise QuickstartError(
                f"{opts.config_path} already configures a server without {address}; nothing "
                f"was changed. Add it with `mailkeep domain add {domain}` and `mailkeep "
                f"account add {address}`, or give another --config.")
        if opts.data_dir != config.data_dir:
            opts.data_dir = config.data_dir
    if opts.run_as and config is None:
        note = _ensure_user(opts.run_as, opts.data_dir)
        if note:
            warnings.append(note + "; run_as was left out of the configuration")
            opts.run_as = None
    if config is None:
        opts.config_path.parent.mkdir(parents=True, exist_ok=True)
        text = config_text(opts, domain, hostname)
        # Validate before writing: a file that would not load is never left behind.
        from mailkeep.config.load import parse_config_text

        parse_config_text(text, opts.config_path)
        atomic_write_text(opts.config_path, text, mode=0o640)
        config = load_config(opts.config_path)
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    password = _account(config, address, opts.password)
    dkim_created = _dkim(config, domain)
    certificate, note = _certificates(config, opts, obtain)
    if certificate == "self-signed":
        warnings.append(note)
    unit = _unit(opts)
    if config.run_as and os.geteuid() == 0:
        # Everything written so far belongs to root; the server chowns data_dir at start.
        entry = pwd.getpwnam(config.run_as)
        os.chown(opts.config_path, 0, entry.pw_gid)
    return Outcome(config=config, created_config=created, account=address, password=password,
                   dkim_created=dkim_created, certificate=certificate, certificate_note=note,
                   unit_path=unit, zone=zone_for(config, domain), warnings=warnings)
