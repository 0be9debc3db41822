"""The shape of Mailkeep's configuration: frozen dataclasses, defaults and allowed values.

One TOML file (``mailkeep.toml``) is the single source of truth for the server: host name,
listeners, limits, domains, accounts and aliases. ``mailkeep.config.load`` turns the file
into the ``Config`` tree defined here; ``docs/configuration.md`` documents every key and its
default, and must change together with this module.

Every limit is a named setting with a safe default. Sizes and durations are stored in bytes
and seconds (the file may write "100M" or "17s", see ``mailkeep.units``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

LogFormat = Literal["logfmt", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
BareNewlines = Literal["reject", "normalize"]
TlsMode = Literal["starttls", "implicit", "none"]

LOG_FORMATS: tuple[str, ...] = ("logfmt", "json")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
BARE_NEWLINES: tuple[str, ...] = ("reject", "normalize")
TLS_MODES: tuple[str, ...] = ("starttls", "implicit", "none")

# Listener protocols and their TLS default. Only smtp and lmtp have servers today; the
# others are accepted so that configuration written now keeps working when they land.
PROTOCOL_DEFAULT_TLS: Mapping[str, str] = MappingProxyType({
    "smtp": "starttls",
    "submission": "starttls",
    "submissions": "implicit",
    "imap": "starttls",
    "imaps": "implicit",
    "pop3": "starttls",
    "pop3s": "implicit",
    "lmtp": "none",
    "http": "none",
})
PROTOCOLS: tuple[str, ...] = tuple(PROTOCOL_DEFAULT_TLS)
# Protocols on which clients send passwords: TLS "none" there is a warning.
PASSWORD_PROTOCOLS = frozenset({"submission", "submissions", "imap", "imaps", "pop3", "pop3s"})

DEFAULT_DATA_DIR = "/var/lib/mailkeep"
DEFAULT_SUBADDRESS_SEPARATOR = "+"
# The longest display name of an account; it ends up in headers and listings.
MAX_ACCOUNT_NAME_LENGTH = 200
# Upper bounds that keep a typo from turning into a denial of service.
MAX_SUBADDRESS_SEPARATORS = 8
MAX_ALIAS_TARGETS = 1000
MAX_ALIAS_DEPTH = 20


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration file (an error or a warning)."""

    file: str
    key: str
    message: str
    allowed: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        suffix = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{where}{self.message}{suffix}"


class ConfigError(Exception):
    """The configuration cannot be used. ``errors`` lists every problem found.

    ``file``, ``key``, ``message`` and ``allowed`` describe the first error, for callers
    that only show one; ``str()`` shows them all, one per line.
    """

    def __init__(self, file: str, key: str = "", message: str = "",
                 allowed: str | None = None, *, errors: list[ConfigIssue] | None = None) -> None:
        if not errors:
            errors = [ConfigIssue(file, key, message, allowed)]
        self.errors: list[ConfigIssue] = list(errors)
        first = self.errors[0]
        self.file, self.key, self.message, self.allowed = (
            first.file, first.key, first.message, first.allowed)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: where and how the server logs."""

    format: LogFormat = "logfmt"
    level: LogLevel = "info"
    file: Path | None = None  # None: standard error


@dataclass(frozen=True)
class TlsConfig:
    """``[tls]``: the certificate; both None means a self-signed one in data_dir/tls/."""

    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class SmtpConfig:
    """``[smtp]``: limits of the SMTP and LMTP servers (sizes in bytes, times in seconds)."""

    message_size_limit: int = 100 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 500
    max_connections_per_ip: int = 20
    max_commands: int = 1000
    soft_error_limit: int = 3
    hard_error_limit: int = 5
    error_sleep: float = 17.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_data_line: int = 1_000_000
    bare_newlines: BareNewlines = "reject"


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: how clients prove who they are (IMAP, POP3, later submission)."""

    #: Offer CRAM-MD5 (RFC 2195). It needs an MD5-based secret on the server that is as
    #: good as the password to an attacker who steals the passwd file; off by default.
    cram_md5: bool = False
    #: Treat connections from loopback as secured (PLAIN/LOGIN without TLS), as Dovecot
    #: does; ``localserve`` turns it on, ``serve`` leaves it off unless set.
    allow_plaintext_loopback: bool = False
    #: Failed logins from one IP within ``failure_window`` before it is refused outright.
    max_failures_per_ip: int = 10
    #: Failed logins for one account within ``failure_window`` before it is locked for the
    #: rest of the window (clients on other IPs still log in with the right password after
    #: the delay, see docs/auth.md).
    max_failures_per_account: int = 20
    failure_window: float = 900.0
    #: The delay before a failure reply grows with each failure, up to this.
    max_failure_delay: float = 15.0
    #: How long a successful password check is remembered (as a keyed digest, never the
    #: password) so a reconnecting client does not pay Argon2 again; 0 turns it off.
    login_cache_ttl: float = 3600.0
    #: PBKDF2 iterations of new SCRAM verifiers (RFC 7677 §4: at least 4096).
    scram_iterations: int = 4096


@dataclass(frozen=True)
class ImapConfig:
    """``[imap]``: limits of the IMAP server (sizes in bytes, times in seconds)."""

    max_connections: int = 5000
    max_connections_per_ip: int = 100
    max_connections_per_account: int = 50
    max_line: int = 65536
    #: APPENDLIMIT (RFC 7889): the largest message APPEND accepts.
    append_limit: int = 100 * 1024 * 1024
    max_literal_unauthenticated: int = 8192
    max_depth: int = 32
    max_commands_per_second: int = 500
    preauth_timeout: float = 60.0
    #: RFC 9051 §5.4: at least 30 minutes of inactivity before an autologout.
    autologout: float = 1800.0
    max_errors: int = 20


@dataclass(frozen=True)
class Pop3Config:
    """``[pop3]``: limits of the POP3 server."""

    max_connections: int = 2000
    max_connections_per_ip: int = 50
    #: Logged-in sessions of one account ([IN-USE] beyond it, RFC 2449 §8.1.1).
    max_connections_per_account: int = 10
    max_line: int = 512
    #: RFC 1939 §3: an inactivity autologout timer of at least 10 minutes.
    timeout: float = 600.0
    #: Time to log in.
    preauth_timeout: float = 60.0
    #: LOGIN-DELAY (RFC 2449 §6.5) announced to clients, seconds; 0 announces none.
    login_delay: int = 0
    max_errors: int = 10


@dataclass(frozen=True)
class Listener:
    """``[[listeners]]``: one socket the server listens on.

    ``address`` is the text from the file; TCP listeners have ``host`` (an IP address
    without brackets) and ``port``, Unix-socket listeners have ``path``.
    """

    protocol: str
    address: str
    tls: TlsMode
    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None


@dataclass(frozen=True)
class Domain:
    """``[domains."example.com"]``: a domain this server receives mail for."""

    name: str  # canonical A-label
    catch_all: str | None = None
    personalized_catch_all: bool = False
    subaddress_separator: str = DEFAULT_SUBADDRESS_SEPARATOR
    subaddress_to_folder: bool = False
    burned: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Account:
    """``[accounts."me@example.com"]``: a user who logs in, and (unless relay-only) a mailbox."""

    address: str  # canonical
    name: str = ""
    quota: int = 0  # bytes; 0 = unlimited
    quota_messages: int = 0  # 0 = unlimited
    relay_only: bool = False
    aliases: tuple[str, ...] = ()


def _frozen_map(data: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class Config:
    """The whole configuration. Keys of domains, accounts and aliases are canonical names."""

    path: Path
    hostname: str
    data_dir: Path
    run_as: str | None = None
    postmaster: str | None = None
    log: LogConfig = field(default_factory=LogConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    listeners: tuple[Listener, ...] = ()
    domains: Mapping[str, Domain] = field(default_factory=_frozen_map)
    accounts: Mapping[str, Account] = field(default_factory=_frozen_map)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=_frozen_map)
    warnings: tuple[ConfigIssue, ...] = ()

    @property
    def pidfile(self) -> Path:
        """Where a running server writes its process id (used to signal reloads)."""
        return self.data_dir / "mailkeep.pid"

    @property
    def passwd_file(self) -> Path:
        """Password hashes of the accounts, in Dovecot passwd-file format."""
        return self.data_dir / "passwd"

    @property
    def tls_dir(self) -> Path:
        """Where the server keeps a generated self-signed certificate."""
        return self.data_dir / "tls"
