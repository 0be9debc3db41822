"""Reading and validating ``mailkeep.toml`` (TOML 1.0, read with the standard tomllib).

``load_config`` returns a validated, frozen ``Config`` or raises ``ConfigError`` listing
every problem at once, each with the file, the key path (``domains."example.com".catch_all``),
what is wrong and what is allowed. Unknown keys are errors with a "did you mean"
suggestion: a misspelt limit silently falling back to its default is how servers end up
less safe than their administrators think.

Validation is pure (it looks at the text only), so the same function checks a file before
``mailkeep.config.edit`` writes it. Checks that look at the machine (certificate files,
the passwd file, the ``run_as`` user) live in ``mailkeep.config.check``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mailkeep.config.names import (
    InvalidName,
    canonical_address,
    canonical_domain,
    display_domain,
)
from mailkeep.config.schema import (
    ACME_CHALLENGES,
    ACME_KEY_TYPES,
    BARE_NEWLINES,
    DEFAULT_DATA_DIR,
    DEFAULT_SUBADDRESS_SEPARATOR,
    DMARC_POLICIES,
    DNSBL_ACTIONS,
    LOG_FACILITIES,
    LOG_FORMATS,
    LOG_LEVELS,
    LOG_TARGETS,
    MAX_ACCOUNT_NAME_LENGTH,
    MAX_ALIAS_TARGETS,
    MAX_SUBADDRESS_SEPARATORS,
    MTA_STS_MODES,
    PASSWORD_PROTOCOLS,
    PROTOCOL_DEFAULT_TLS,
    PROTOCOLS,
    RELAY_TLS,
    SCANNER_ON_ERROR,
    SEND_MODES,
    TLS_MODES,
    Account,
    AcmeConfig,
    AuthConfig,
    ClamavConfig,
    Config,
    ConfigError,
    ConfigIssue,
    DeliveryConfig,
    DmarcReportsConfig,
    DnsblConfig,
    DnsConfig,
    Domain,
    GreylistConfig,
    ImapConfig,
    Listener,
    LogConfig,
    MetricsConfig,
    PolicyConfig,
    Pop3Config,
    QueueConfig,
    Relay,
    RspamdConfig,
    SmtpConfig,
    SubmissionConfig,
    TlsConfig,
)
from mailkeep.units import parse_duration, parse_size

# A configuration file larger than this is refused unread: it is certainly a mistake
# (a log or a mailbox passed with -c), and reading it whole would cost memory.
MAX_CONFIG_BYTES = 4 * 1024 * 1024

TOP_LEVEL_KEYS = ("hostname", "data_dir", "run_as", "postmaster", "log", "tls", "smtp",
                  "auth", "imap", "pop3", "submission", "queue", "delivery", "relays",
                  "policy", "dmarc", "acme", "dns", "metrics", "listeners", "domains",
                  "accounts", "aliases")
LOG_KEYS = ("format", "level", "target", "file", "dir", "files", "rotate_size", "rotate_keep",
            "syslog_socket", "journald_socket", "facility")
#: [log.files]: subsystems (the first part of a logger name) and how many may be listed.
LOG_SUBSYSTEM = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_LOG_FILES = 100
#: rotate_size: 0 (no built-in rotation) or at least this many bytes.
MIN_ROTATE_SIZE = 4096
TLS_KEYS = ("cert", "key")
SMTP_KEYS = tuple(f.name for f in fields(SmtpConfig))
LISTENER_KEYS = ("protocol", "address", "tls", "policy")
POLICY_KEYS = ("rules", "rulesets", "trusted_networks", "authserv_id", "received_spf",
               "greet_wait", "greet_ttl", "dns_timeout", "verify_timeout",
               "trusted_arc_sealers", "quota_grace", "dnsbl", "greylist", "clamav", "rspamd")
DNSBL_KEYS = ("sites", "threshold", "allow_threshold", "action", "check_private_addresses")
GREYLIST_KEYS = ("delay", "retry_window", "auto_allow")
CLAMAV_KEYS = ("socket", "on_error", "max_size", "timeout")
RSPAMD_KEYS = ("url", "on_error", "max_size", "timeout", "password_file")
ACME_KEYS = ("enabled", "directory", "email", "names", "key_types", "challenges",
             "renew_before", "retry_interval", "ca_file")
DNS_KEYS = ("ipv4", "ipv6", "mta_sts_mode", "mta_sts_max_age", "dmarc_policy",
            "tlsrpt_address", "dkim_testing", "caa_issuers")
METRICS_KEYS = ("enabled", "allow")
DMARC_KEYS = ("report_address", "send_reports", "report_from", "org_name")
DOMAIN_KEYS = ("catch_all", "personalized_catch_all", "subaddress_separator",
               "subaddress_to_folder", "burned")
ACCOUNT_KEYS = ("name", "quota", "quota_messages", "relay_only", "aliases", "send",
                "send_message", "max_messages_per_hour", "max_recipients_per_day")
SUBMISSION_KEYS = ("max_messages_per_hour", "max_recipients_per_day", "max_recipients",
                   "remove_headers", "senders")
DELIVERY_KEYS = ("relayhost", "transport", "resolvers", "mta_sts", "dane", "ca_file",
                 "helo_name", "smtp_port", "mta_sts_port", "address_families",
                 "connect_timeout")
RELAY_KEYS = ("host", "username", "password_file", "tls")
_QUEUE_RANGES: dict[str, tuple[float, float]] = {
    "queue_run_delay": (1, 86400),
    "minimal_backoff_time": (1, 86400),
    "maximal_backoff_time": (1, 86400 * 7),
    "maximal_queue_lifetime": (0, 86400 * 100),
    "bounce_queue_lifetime": (0, 86400 * 100),
    "delay_warning_time": (0, 86400 * 100),
    "destination_concurrency_limit": (1, 10_000),
    "max_concurrency": (1, 100_000),
    "max_messages_per_connection": (1, 100_000),
    "max_bounce_size": (1024, 1 << 30),
}
_MAX_SEND_RATE = 10_000_000
# "[host]:port", "host:port", "[host]", "host" (Postfix relayhost syntax); ports by number
# or by the service names Postfix users write.
_RELAY_HOST = re.compile(r"^(\[(?P<bracketed>[^\]]+)\]|(?P<plain>[^:\[\]]+))(?::(?P<port>[A-Za-z0-9]+))?$")
_SERVICE_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465}

# Characters that may separate a sub-address detail: RFC 5322 §3.2.3 atext that is not a
# letter or digit (a letter would split ordinary names; "." would split "first.last").
SUBADDRESS_SEPARATOR_CHARS = "+-_=#%&~!$*/?^`{|}'"

# (minimum, maximum) of each integer, size and duration limit in [smtp].
_SMTP_RANGES: dict[str, tuple[float, float]] = {
    "message_size_limit": (1024, 1 << 40),
    "max_recipients": (1, 100_000),
    "max_connections": (1, 1_000_000),
    "max_connections_per_ip": (1, 1_000_000),
    "max_connection_rate_per_ip": (0, 1_000_000),
    "max_commands": (10, 10_000_000),
    "soft_error_limit": (0, 1000),
    "hard_error_limit": (1, 1000),
    "error_sleep": (0, 300),
    "command_timeout": (1, 3600),
    "data_timeout": (1, 86400),
    # RFC 5321 §4.5.3.1.6: a line of 1000 octets (with CRLF) must always be accepted.
    "max_data_line": (1000, 100 * 1024 * 1024),
}
_AUTH_RANGES: dict[str, tuple[float, float]] = {
    "max_failures_per_ip": (1, 1_000_000),
    "max_failures_per_account": (1, 1_000_000),
    "failure_window": (1, 86400),
    "max_failure_delay": (0, 300),
    "login_cache_ttl": (0, 86400 * 30),
    "scram_iterations": (4096, 10_000_000),
    "ban_after_failures": (0, 1_000_000),
    "ban_window": (1, 86400 * 30),
    "ban_duration": (1, 86400 * 365),
    "ban_max_duration": (1, 86400 * 365),
}
# At most this many networks in [auth] ban_allow (each connection may be checked against
# every one of them).
MAX_BAN_ALLOW = 1000
_IMAP_RANGES: dict[str, tuple[float, float]] = {
    "max_connections": (1, 1_000_000),
    "max_connections_per_ip": (1, 1_000_000),
    "max_connection_rate_per_ip": (0, 1_000_000),
    "max_connections_per_account": (1, 1_000_000),
    "max_line": (1000, 16 * 1024 * 1024),
    "append_limit": (1024, 1 << 40),
    "max_literal_unauthenticated": (256, 1024 * 1024),
    "max_depth": (4, 1000),
    "max_commands_per_second": (1, 1_000_000),
    "preauth_timeout": (1, 3600),
    "autologout": (60, 86400),
    "max_errors": (1, 10_000),
}
_POP3_RANGES: dict[str, tuple[float, float]] = {
    "max_connections": (1, 1_000_000),
    "max_connections_per_ip": (1, 1_000_000),
    "max_connection_rate_per_ip": (0, 1_000_000),
    "max_connections_per_account": (1, 1_000_000),
    "max_line": (255, 65536),
    "timeout": (60, 86400),
    "preauth_timeout": (10, 3600),
    "login_delay": (0, 86400),
    "max_errors": (1, 10_000),
}
_SMTP_SIZES = {"message_size_limit"}
_SIZES = {"message_size_limit", "append_limit", "max_literal_unauthenticated",
          "max_bounce_size"}
_DURATIONS = {"queue_run_delay", "minimal_backoff_time", "maximal_backoff_time",
              "maximal_queue_lifetime", "bounce_queue_lifetime", "delay_warning_time",
              "connect_timeout","error_sleep", "command_timeout", "data_timeout", "failure_window",
              "max_failure_delay", "login_cache_ttl", "preauth_timeout", "autologout",
              "timeout", "ban_window", "ban_duration", "ban_max_duration"}
_SMTP_DURATIONS = {"error_sleep", "command_timeout", "data_timeout"}
_MAX_QUOTA = 1 << 50
_MAX_QUOTA_MESSAGES = 1 << 40

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_RUN_AS = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_DEFAULT_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993,
                  "pop3": 110, "pop3s": 995, "lmtp": 24, "http": 80, "https": 443}


def key_path(*parts: str | int) -> str:
    """Render a key path the way it is written in TOML: ``domains."example.com".burned[2]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        rendered = part if _BARE_KEY.match(part) else json.dumps(part, ensure_ascii=False)
        out = f"{out}.{rendered}" if out else rendered
    return out


def load_config(path: str | Path) -> Config:
    """Read, validate and return the configuration at ``path``.

    Raises ConfigError (with every problem found) if the file cannot be read or is invalid.
    Warnings are in ``Config.warnings``.
    """
    file = Path(path)
    label = str(path)
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(label, "", f"cannot read the configuration file: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(label, "", f"the file is larger than {MAX_CONFIG_BYTES} bytes; "
                          "is it really the configuration?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(label, "", f"the file is not UTF-8 (byte {exc.start})") from None
    return parse_config_text(text, file, label=label)


def parse_config_text(text: str, path: str | Path, *, label: str | None = None) -> Config:
    """Validate configuration ``text`` as if it were the file at ``path``.

    Relative paths in the text are taken relative to the directory of ``path``; ``label``
    (default: ``path`` as given) names the file in messages.
    """
    label = label if label is not None else str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(label, "", f"not valid TOML: {exc}") from None
    return build_config(data, Path(path), label=label)


def build_config(data: Mapping[str, Any], path: Path, *, label: str | None = None) -> Config:
    """Validate an already-parsed TOML document; see ``parse_config_text``."""
    loader = _Loader(label if label is not None else str(path), Path(path).absolute())
    return loader.build(data)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


class _Loader:
    """Collects every error and warning while building a Config."""

    def __init__(self, label: str, path: Path) -> None:
        self.label = label
        self.path = path
        self.base_dir = path.parent
        self.errors: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []
        # Keys as written in the file, by canonical name, to point errors at the right line.
        self._domain_keys: dict[str, str] = {}
        self._account_keys: dict[str, str] = {}
        # Every address an account or alias answers to -> what it is, to find collisions.
        self._owner: dict[str, str] = {}
        # Addresses in accounts.X.aliases -> X.
        self._alias_owner: dict[str, str] = {}

    # -- reporting ----------------------------------------------------------------------

    def error(self, key: str, message: str, allowed: str | None = None) -> None:
        self.errors.append(ConfigIssue(self.label, key, message, allowed))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(ConfigIssue(self.label, key, message))

    # -- typed getters ------------------------------------------------------------------

    def table(self, value: Any, *key: str | int) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(key_path(*key), f"expected a table, got {_describe(value)}")
            return None
        return value

    def known_keys(self, table: Mapping[str, Any], allowed: Sequence[str], *prefix: str | int) -> None:
        for name in table:
            if name in allowed:
                continue
            where = key_path(*prefix, name)
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
            if close:
                self.error(where, f"unknown key; did you mean {close[0]!r}?")
            else:
                self.error(where, "unknown key", allowed=", ".join(allowed))

    def string(self, table: Mapping[str, Any], name: str, prefix: tuple[str | int, ...],
               default: str | None = None, *, required: bool = False,
               hint: str = "") -> str | None:
        if name not in table:
            if required:
                self.error(key_path(*prefix, name), "required setting is missing" + hint)
            return default
        value = table[name]
        if not isinstance(value, str):
            self.error(key_path(*prefix, name), f"expected a string, got {_describe(value)}")
            return default
        return value

    def boolean(self, table: Mapping[str, Any], name: str, prefix: tuple[str | int, ...],
                default: bool) -> bool:
        if name not in table:
            return default
        value = table[name]
        if not isinstance(value, bool):
            self.error(key_path(*prefix, name), f"expected true or false, got {_describe(value)}",
                       allowed="true, false")
            return default
        return value

    def choice(self, table: Mapping[str, Any], name: str, prefix: tuple[str | int, ...],
               choices: Sequence[str], default: str | None) -> str | None:
        value = self.string(table, name, prefix, default)
        if value is not None and value not in choices:
            self.error(key_path(*prefix, name), f"{value!r} is not a valid value",
                       allowed=", ".join(choices))
            return default
        return value

    def number(self, table: Mapping[str, Any], name: str, prefix: tuple[str | int, ...],
               default: float, low: float, high: float, kind: str) -> Any:
        """An integer ("int"), a size ("size": "100M") or a duration ("duration": "17s")."""
        if name not in table:
            return default
        value = table[name]
        where = key_path(*prefix, name)
        try:
            if kind == "size":
                parsed: float = parse_size(value)
            elif kind == "duration":
                parsed = parse_duration(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"expected an integer, got {_describe(value)}")
                parsed = value
        except (ValueError, TypeError) as exc:
            self.error(where, str(exc))
            return default
        if not low <= parsed <= high:
            self.error(where, f"{value!r} is out of range", allowed=self._range(low, high, kind))
            return default
        return parsed

    @staticmethod
    def _range(low: float, high: float, kind: str) -> str:
        if kind == "size":
            return f"{int(low)} to {int(high)} bytes"
        if kind == "duration":
            return f"{low:g} to {high:g} seconds"
        return f"{int(low)} to {int(high)}"

    def file_path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base_dir / path

    # -- the document -------------------------------------------------------------------

    def build(self, data: Mapping[str, Any]) -> Config:
        self.known_keys(data, TOP_LEVEL_KEYS)
        hostname = self._hostname(data)
        data_dir_text = self.string(data, "data_dir", (), DEFAULT_DATA_DIR) or DEFAULT_DATA_DIR
        if not data_dir_text.strip():
            self.error("data_dir", "cannot be empty")
            data_dir_text = DEFAULT_DATA_DIR
        data_dir = self.file_path(data_dir_text)
        run_as = self.string(data, "run_as", ())
        if run_as is not None and not _RUN_AS.match(run_as):
            self.error("run_as", f"{run_as!r} is not a user name",
                       allowed="a system user name such as \"mailkeep\"")
            run_as = None
        log = self._log(data)
        tls = self._tls(data)
        smtp = self._smtp(data)
        auth = self._auth(data)
        imap = self._limits_section(data, "imap", ImapConfig, _IMAP_RANGES)
        pop3 = self._limits_section(data, "pop3", Pop3Config, _POP3_RANGES)
        queue = self._limits_section(data, "queue", QueueConfig, _QUEUE_RANGES)
        if queue.minimal_backoff_time > queue.maximal_backoff_time:
            self.error("queue.minimal_backoff_time", "larger than maximal_backoff_time",
                       allowed="a duration not above maximal_backoff_time")
        delivery = self._delivery(data)
        listeners = self._listeners(data, data_dir)
        domains, burned_raw = self._domains(data)
        accounts = self._accounts(data, domains)
        aliases = self._aliases(data, domains, accounts)
        domains = self._check_domain_targets(domains, burned_raw, accounts, aliases)
        postmaster = self._postmaster(data, domains, accounts, aliases)
        submission = self._submission(data, domains, accounts)
        policy = self._policy(data)
        dmarc = self._dmarc_reports(data, domains)
        acme = self._acme(data, tls)
        dns = self._dns(data)
        metrics = self._metrics(data)
        for index, listener in enumerate(listeners):
            if listener.policy not in ("", "none") and listener.policy not in policy.rulesets:
                self.error(key_path("listeners", index, "policy"),
                           f"no ruleset named {listener.policy!r}",
                           allowed=", ".join(["none", *policy.rulesets]))

        config = Config(
            path=self.path, hostname=hostname, data_dir=data_dir, run_as=run_as,
            postmaster=postmaster, log=log, tls=tls, smtp=smtp, auth=auth, imap=imap, pop3=pop3,
            submission=submission, queue=queue, delivery=delivery, policy=policy,
            dmarc=dmarc, acme=acme, dns=dns, metrics=metrics, listeners=listeners,
            domains=_frozen(domains), accounts=_frozen(accounts),
            aliases=_frozen({k: v[0] for k, v in aliases.items()}),
        )
        self._check_resolution(config, aliases)
        if self.errors:
            raise ConfigError(self.label, errors=self.errors)
        return replace(config, warnings=tuple(self.warnings))

    def _hostname(self, data: Mapping[str, Any]) -> str:
        raw = self.string(data, "hostname", (), required=True,
                          hint=": the name of this server in DNS, such as \"mail.example.com\"")
        if raw is None:
            return "localhost"
        try:
            name = canonical_domain(raw)
        except InvalidName as exc:
            self.error("hostname", str(exc), allowed="a fully qualified domain name or \"localhost\"")
            return "localhost"
        if "." not in name and name != "localhost":
            # RFC 5321 §4.1.1.1: the greeting names the server by its fully qualified name.
            self.error("hostname", f"{raw!r} is not fully qualified",
                       allowed="a fully qualified domain name or \"localhost\"")
        return name

    def _log(self, data: Mapping[str, Any]) -> LogConfig:
        table = self.table(data.get("log"), "log")
        if table is None:
            return LogConfig()
        prefix: tuple[str | int, ...] = ("log",)
        self.known_keys(table, LOG_KEYS, *prefix)
        defaults = LogConfig()
        fmt = self.choice(table, "format", prefix, LOG_FORMATS, "logfmt")
        level = self.choice(table, "level", prefix, LOG_LEVELS, "info")
        file_text = self.string(table, "file", prefix, "")
        dir_text = self.string(table, "dir", prefix, "")
        file = self.file_path(file_text) if file_text else None
        directory = self.file_path(dir_text) if dir_text else None
        files = self._log_files(table, directory)
        target = self.choice(table, "target", prefix, LOG_TARGETS,
                             "file" if (file or directory or files) else "stderr")
        if file is not None and directory is not None:
            self.error("log.dir", "cannot be set together with file",
                       allowed="file (one log) or dir (one file per subsystem)")
        if target == "file" and not (file or directory or files):
            self.error("log.target", '"file" needs file, dir or [log.files]',
                       allowed='e.g. dir = "/var/log/mailkeep"')
        if target != "file":
            for name in ("file", "dir", "files", "rotate_size", "rotate_keep"):
                if name in table:
                    self.error(key_path("log", name), f'only for target = "file", not {target!r}')
        rotate_size = self.number(table, "rotate_size", prefix, 0, 0, 1 << 40, "size")
        if 0 < rotate_size < MIN_ROTATE_SIZE:
            self.error("log.rotate_size", "too small",
                       allowed=f"0 (no rotation) or at least {MIN_ROTATE_SIZE} bytes")
        sockets = {}
        for name in ("syslog_socket", "journald_socket"):
            text = self.string(table, name, prefix, "")
            if text and not text.startswith("/"):
                self.error(key_path("log", name), "must be an absolute path")
            sockets[name] = Path(text) if text else getattr(defaults, name)
        return LogConfig(
            format=fmt, level=level,  # type: ignore[arg-type]
            target=target or "stderr", file=file, dir=directory, files=_frozen(files),
            rotate_size=int(rotate_size),
            rotate_keep=int(self.number(table, "rotate_keep", prefix, defaults.rotate_keep,
                                        1, 1000, "int")),
            facility=self.choice(table, "facility", prefix, LOG_FACILITIES, "mail") or "mail",
            **sockets)

    def _log_files(self, table: Mapping[str, Any], directory: Path | None) -> dict[str, Path]:
        """[log.files]: subsystem → file (relative to ``dir`` if set, else to the config
        file's directory)."""
        files_table = self.table(table.get("files"), "log", "files")
        if not files_table:
            return {}
        if len(files_table) > MAX_LOG_FILES:
            self.error("log.files", f"more than {MAX_LOG_FILES} entries")
            return {}
        files: dict[str, Path] = {}
        for subsystem, value in files_table.items():
            where = key_path("log", "files", subsystem)
            if not LOG_SUBSYSTEM.fullmatch(subsystem):
                self.error(where, "not a subsystem name",
                           allowed="e.g. smtp, imap, pop3, queue, delivery, store, auth")
                continue
            if not isinstance(value, str) or not value.strip():
                self.error(where, f"expected a file name, got {_describe(value)}")
                continue
            path = Path(value)
            if not path.is_absolute():
                path = directory / path if directory is not None else self.file_path(value)
            files[subsystem] = path
        return files

    def _tls(self, data: Mapping[str, Any]) -> TlsConfig:
        table = self.table(data.get("tls"), "tls")
        if table is None:
            return TlsConfig()
        self.known_keys(table, TLS_KEYS, "tls")
        cert = self.string(table, "cert", ("tls",), "")
        key = self.string(table, "key", ("tls",), "")
        if bool(cert) != bool(key):
            missing = "key" if cert else "cert"
            self.error(key_path("tls", missing), "required when the other of cert and key is set",
                       allowed="both cert and key, or neither for a generated self-signed certificate")
            return TlsConfig()
        if cert and key:
            return TlsConfig(cert=self.file_path(cert), key=self.file_path(key))
        return TlsConfig()

    def _smtp(self, data: Mapping[str, Any]) -> SmtpConfig:
        table = self.table(data.get("smtp"), "smtp")
        if table is None:
            return SmtpConfig()
        self.known_keys(table, SMTP_KEYS, "smtp")
        defaults = SmtpConfig()
        values: dict[str, Any] = {}
        for name, (low, high) in _SMTP_RANGES.items():
            kind = "size" if name in _SMTP_SIZES else "duration" if name in _SMTP_DURATIONS else "int"
            values[name] = self.number(table, name, ("smtp",), getattr(defaults, name), low, high, kind)
        values["bare_newlines"] = self.choice(table, "bare_newlines", ("smtp",), BARE_NEWLINES, "reject")
        smtp = SmtpConfig(**values)
        if smtp.soft_error_limit > smtp.hard_error_limit:
            self.error("smtp.soft_error_limit",
                       f"{smtp.soft_error_limit} is larger than hard_error_limit ({smtp.hard_error_limit})",
                       allowed="a number not above hard_error_limit")
        if smtp.max_connections_per_ip > smtp.max_connections:
            self.error("smtp.max_connections_per_ip",
                       f"{smtp.max_connections_per_ip} is larger than max_connections ({smtp.max_connections})",
                       allowed="a number not above max_connections")
        if smtp.max_recipients < 100:
            self.warn("smtp.max_recipients", "RFC 5321 §4.5.3.1.8 asks servers to accept at least "
                      "100 recipients per message; senders will have to retry the rest")
        if smtp.command_timeout < 300:
            self.warn("smtp.command_timeout", "RFC 5321 §4.5.3.2.7 asks servers to wait at least "
                      "5 minutes for the next command")
        return smtp

    def _auth(self, data: Mapping[str, Any]) -> AuthConfig:
        auth = self._limits_section(data, "auth", AuthConfig, _AUTH_RANGES,
                                    ("cram_md5", "allow_plaintext_loopback"))
        table = data.get("auth")
        if not isinstance(table, dict):
            return auth
        if auth.ban_duration > auth.ban_max_duration:
            self.error("auth.ban_duration", "longer than ban_max_duration",
                       allowed="a duration not above ban_max_duration")
        if "ban_allow" not in table:
            return auth
        value = table["ban_allow"]
        if not isinstance(value, list):
            self.error("auth.ban_allow", f"expected an array of networks, got {_describe(value)}",
                       allowed='e.g. ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]')
            return auth
        if len(value) > MAX_BAN_ALLOW:
            self.error("auth.ban_allow", f"has {len(value)} entries",
                       allowed=f"at most {MAX_BAN_ALLOW}")
            return auth
        networks: list[str] = []
        for index, raw in enumerate(value):
            try:
                if not isinstance(raw, str):
                    raise ValueError
                networks.append(str(ipaddress.ip_network(raw.strip(), strict=False)))
            except ValueError:
                self.error(key_path("auth", "ban_allow", index), f"{raw!r} is not a network",
                           allowed='e.g. "192.0.2.0/24" or "2001:db8::/32"')
        parsed = [ipaddress.ip_network(n) for n in networks]
        for loopback in (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")):
            if not any(loopback.version == n.version and loopback.subnet_of(n)  # type: ignore[arg-type]
                       for n in parsed):
                self.warn("auth.ban_allow", f"{loopback.network_address} is not in the list: "
                          "a local webmail, proxy or check that logs in for many users can "
                          "get loopback banned, and with it every one of them")
                break
        return replace(auth, ban_allow=tuple(networks))

    def _limits_section(self, data: Mapping[str, Any], name: str, cls: type,
                        ranges: Mapping[str, tuple[float, float]],
                        booleans: Sequence[str] = ()) -> Any:
        """A section of named numeric limits (and switches), each checked against its range."""
        defaults = cls()
        table = self.table(data.get(name), name)
        if table is None:
            return defaults
        self.known_keys(table, tuple(f.name for f in fields(cls)), name)
        values: dict[str, Any] = {}
        for key, (low, high) in ranges.items():
            kind = "size" if key in _SIZES else "duration" if key in _DURATIONS else "int"
            values[key] = self.number(table, key, (name,), getattr(defaults, key), low, high, kind)
        for key in booleans:
            values[key] = self.boolean(table, key, (name,), getattr(defaults, key))
        return cls(**values)

    def _submission(self, data: Mapping[str, Any], domains: Mapping[str, Domain],
                    accounts: Mapping[str, Account]) -> SubmissionConfig:
        table = self.table(data.get("submission"), "submission")
        if table is None:
            return SubmissionConfig()
        prefix: tuple[str | int, ...] = ("submission",)
        self.known_keys(table, SUBMISSION_KEYS, *prefix)
        defaults = SubmissionConfig()
        values: dict[str, Any] = {
            "max_messages_per_hour": self.number(table, "max_messages_per_hour", prefix,
                                                 defaults.max_messages_per_hour, 0,
                                                 _MAX_SEND_RATE, "int"),
            "max_recipients_per_day": self.number(table, "max_recipients_per_day", prefix,
                                                  defaults.max_recipients_per_day, 0,
                                                  _MAX_SEND_RATE, "int"),
            "max_recipients": self.number(table, "max_recipients", prefix,
                                          defaults.max_recipients, 1, 100_000, "int"),
        }
        if "remove_headers" in table:
            names = []
            for index, raw in self._string_list(table, "remove_headers", prefix):
                if not re.fullmatch(r"[!-9;-~]{1,100}", raw):
                    self.error(key_path(*prefix, "remove_headers", *(() if index is None else (index,))),
                               f"{raw!r} is not a header field name")
                    continue
                names.append(raw)
            values["remove_headers"] = tuple(names)
        senders: dict[str, tuple[str, ...]] = {}
        granted = self.table(table.get("senders"), *prefix, "senders")
        for raw_address in granted or {}:
            where = key_path(*prefix, "senders", raw_address)
            address = self._local_address(raw_address, where, domains)
            if address is None:
                continue
            names = []
            for index, raw_owner in self._string_list(granted, raw_address, (*prefix, "senders")):
                owner_where = key_path(*prefix, "senders", raw_address,
                                       *(() if index is None else (index,)))
                try:
                    owner = canonical_address(raw_owner)
                except InvalidName as exc:
                    self.error(owner_where, str(exc))
                    continue
                if owner not in accounts:
                    self.error(owner_where, f"{raw_owner!r} is not an account",
                               allowed="an address listed in [accounts]")
                    continue
                names.append(owner)
            senders[address] = tuple(names)
        values["senders"] = _frozen(senders)
        return SubmissionConfig(**values)

    def _policy(self, data: Mapping[str, Any]) -> PolicyConfig:
        table = self.table(data.get("policy"), "policy")
        defaults = PolicyConfig()
        if not table:
            return replace(defaults, compiled=_frozen({"": self._rules(
                list(defaults.rules), ("policy", "rules"))}))
        prefix: tuple[str | int, ...] = ("policy",)
        self.known_keys(table, POLICY_KEYS, *prefix)
        rules = (tuple(v for _, v in self._string_list(table, "rules", prefix))
                 if "rules" in table else defaults.rules)
        compiled = {"": self._rules(list(rules), (*prefix, "rules"))}
        rulesets: dict[str, tuple[str, ...]] = {}
        for name, value in (self.table(table.get("rulesets"), *prefix, "rulesets") or {}).items():
            if name in ("", "none") or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                self.error(key_path(*prefix, "rulesets", name), "not a usable ruleset name",
                           allowed="letters, digits, - and _ (not \"none\")")
                continue
            texts = tuple(v for _, v in self._string_list(
                {name: value}, name, (*prefix, "rulesets")))
            rulesets[name] = texts
            compiled[name] = self._rules(list(texts), (*prefix, "rulesets", name))
        networks = []
        for index, raw in self._string_list(table, "trusted_networks", prefix):
            try:
                networks.append(str(ipaddress.ip_network(raw, strict=False)))
            except ValueError:
                self.error(key_path(*prefix, "trusted_networks",
                                    *(() if index is None else (index,))),
                           f"{raw!r} is not a network", allowed="e.g. \"192.0.2.0/24\"")
        sealers = []
        for index, raw in self._string_list(table, "trusted_arc_sealers", prefix):
            try:
                sealers.append(canonical_domain(raw))
            except InvalidName as exc:
                self.error(key_path(*prefix, "trusted_arc_sealers",
                                    *(() if index is None else (index,))), str(exc))
        grace_percent = self.number(table, "quota_grace", prefix, defaults.quota_grace * 100,
                                    0, 100, "int") if "quota_grace" in table else None
        return PolicyConfig(
            rules=rules, rulesets=_frozen(rulesets), compiled=_frozen(compiled),
            trusted_networks=(tuple(networks) if "trusted_networks" in table
                              else defaults.trusted_networks),
            authserv_id=self.string(table, "authserv_id", prefix) or None,
            received_spf=self.boolean(table, "received_spf", prefix, defaults.received_spf),
            greet_wait=self.number(table, "greet_wait", prefix, defaults.greet_wait, 0, 60,
                                   "duration"),
            greet_ttl=self.number(table, "greet_ttl", prefix, defaults.greet_ttl, 0,
                                  86400 * 30, "duration"),
            dns_timeout=self.number(table, "dns_timeout", prefix, defaults.dns_timeout, 0.1,
                                    60, "duration"),
            verify_timeout=self.number(table, "verify_timeout", prefix,
                                       defaults.verify_timeout, 1, 300, "duration"),
            trusted_arc_sealers=tuple(sealers),
            quota_grace=(grace_percent / 100 if grace_percent is not None
                         else defaults.quota_grace),
            dnsbl=self._dnsbl(table, prefix),
            greylist=self._greylist(table, prefix),
            clamav=self._clamav(table, prefix),
            rspamd=self._rspamd(table, prefix),
        )

    def _rules(self, texts: list[str], where: tuple[str | int, ...]) -> tuple[Any, ...]:
        from mailkeep.policy.rules import RuleError, parse_rules

        try:
            return parse_rules(texts, base_dir=self.base_dir)
        except RuleError as exc:
            self.error(key_path(*where, *(() if exc.index is None else (exc.index,))),
                       str(exc), allowed=exc.allowed)
            return ()

    def _dnsbl(self, parent: Mapping[str, Any], prefix: tuple[str | int, ...]) -> DnsblConfig:
        from mailkeep.trust.dnsbl import DnsblSyntaxError, parse_postscreen_sites

        prefix = (*prefix, "dnsbl")
        table = self.table(parent.get("dnsbl"), *prefix)
        defaults = DnsblConfig()
        if not table:
            return defaults
        self.known_keys(table, DNSBL_KEYS, *prefix)
        sites = (tuple(v for _, v in self._string_list(table, "sites", prefix))
                 if "sites" in table else defaults.sites)
        try:
            parse_postscreen_sites(", ".join(sites))
        except DnsblSyntaxError as exc:
            self.error(key_path(*prefix, "sites"), str(exc),
                       allowed="postscreen_dnsbl_sites entries: zone[=filter][*weight]")
            sites = ()
        config = DnsblConfig(
            sites=sites,
            threshold=self.number(table, "threshold", prefix, defaults.threshold, 1, 1000,
                                  "int"),
            allow_threshold=self.number(table, "allow_threshold", prefix,
                                        defaults.allow_threshold, -1000, -1, "int"),
            action=self.choice(table, "action", prefix, DNSBL_ACTIONS, defaults.action)
            or defaults.action,
            check_private_addresses=self.boolean(table, "check_private_addresses", prefix,
                                                 defaults.check_private_addresses),
        )
        return config

    def _greylist(self, parent: Mapping[str, Any], prefix: tuple[str | int, ...]
                  ) -> GreylistConfig:
        prefix = (*prefix, "greylist")
        table = self.table(parent.get("greylist"), *prefix)
        defaults = GreylistConfig()
        if not table:
            return defaults
        self.known_keys(table, GREYLIST_KEYS, *prefix)
        config = GreylistConfig(
            delay=self.number(table, "delay", prefix, defaults.delay, 0, 86400, "duration"),
            retry_window=self.number(table, "retry_window", prefix, defaults.retry_window,
                                     60, 86400 * 30, "duration"),
            auto_allow=self.number(table, "auto_allow", prefix, defaults.auto_allow, 0,
                                   86400 * 365, "duration"))
        if config.retry_window <= config.delay:
            self.error(key_path(*prefix, "retry_window"), "must be longer than delay",
                       allowed="a duration above delay")
            config = replace(config, retry_window=config.delay + 86400)
        return config

    def _clamav(self, parent: Mapping[str, Any], prefix: tuple[str | int, ...]) -> ClamavConfig:
        prefix = (*prefix, "clamav")
        table = self.table(parent.get("clamav"), *prefix)
        defaults = ClamavConfig()
        if not table:
            return defaults
        self.known_keys(table, CLAMAV_KEYS, *prefix)
        socket = self.string(table, "socket", prefix) or None
        if socket is not None:
            from mailkeep.policy.clamd import parse_clamd_address

            try:
                parse_clamd_address(socket)
            except ValueError as exc:
                self.error(key_path(*prefix, "socket"), str(exc),
                           allowed="/path/to/clamd.ctl, host:port or [IPv6]:port")
                socket = None
        return ClamavConfig(
            socket=socket,
            on_error=self.choice(table, "on_error", prefix, SCANNER_ON_ERROR,
                                 defaults.on_error) or defaults.on_error,
            max_size=self.number(table, "max_size", prefix, defaults.max_size, 1024,
                                 1 << 32, "size"),
            timeout=self.number(table, "timeout", prefix, defaults.timeout, 1, 600,
                                "duration"))

    def _rspamd(self, parent: Mapping[str, Any], prefix: tuple[str | int, ...]) -> RspamdConfig:
        prefix = (*prefix, "rspamd")
        table = self.table(parent.get("rspamd"), *prefix)
        defaults = RspamdConfig()
        if not table:
            return defaults
        self.known_keys(table, RSPAMD_KEYS, *prefix)
        url = self.string(table, "url", prefix) or None
        if url is not None and not re.match(r"https?://[^/\s]+", url):
            self.error(key_path(*prefix, "url"), f"{url!r} is not an HTTP URL",
                       allowed="e.g. \"http://127.0.0.1:11333\"")
            url = None
        password_file = self.string(table, "password_file", prefix)
        return RspamdConfig(
            url=url,
            on_error=self.choice(table, "on_error", prefix, SCANNER_ON_ERROR,
                                 defaults.on_error) or defaults.on_error,
            max_size=self.number(table, "max_size", prefix, defaults.max_size, 1024,
                                 1 << 32, "size"),
            timeout=self.number(table, "timeout", prefix, defaults.timeout, 1, 600,
                                "duration"),
            password_file=self.file_path(password_file) if password_file else None)

    def _dmarc_reports(self, data: Mapping[str, Any], domains: Mapping[str, Domain]
                       ) -> DmarcReportsConfig:
        table = self.table(data.get("dmarc"), "dmarc")
        if not table:
            return DmarcReportsConfig()
        prefix: tuple[str | int, ...] = ("dmarc",)
        self.known_keys(table, DMARC_KEYS, *prefix)
        address = self.string(table, "report_address", prefix)
        if address:
            address = self._local_address(address, key_path(*prefix, "report_address"),
                                          domains)
        report_from = self.string(table, "report_from", prefix)
        if report_from:
            try:
                report_from = canonical_address(report_from)
            except InvalidName as exc:
                self.error(key_path(*prefix, "report_from"), str(exc))
                report_from = None
        return DmarcReportsConfig(
            report_address=address or None,
            send_reports=self.boolean(table, "send_reports", prefix, False),
            report_from=report_from or None,
            org_name=self.string(table, "org_name", prefix) or None)

    def _acme(self, data: Mapping[str, Any], tls: TlsConfig) -> AcmeConfig:
        table = self.table(data.get("acme"), "acme")
        if not table:
            return AcmeConfig()
        prefix: tuple[str | int, ...] = ("acme",)
        self.known_keys(table, ACME_KEYS, *prefix)
        defaults = AcmeConfig()
        enabled = self.boolean(table, "enabled", prefix, False)
        if enabled and tls.cert:
            self.error(key_path(*prefix, "enabled"), "[tls] cert and key are set too",
                       allowed="either ACME or certificate files, not both")
        directory = self.string(table, "directory", prefix, defaults.directory) or ""
        if not directory.startswith("https://"):
            self.error(key_path(*prefix, "directory"), f"{directory!r} is not an https URL",
                       allowed="the CA's directory URL, such as " + repr(defaults.directory))
            directory = defaults.directory
        email = self.string(table, "email", prefix)
        if email:
            try:
                email = canonical_address(email)
            except InvalidName as exc:
                self.error(key_path(*prefix, "email"), str(exc))
                email = None
        names = []
        for index, raw in self._string_list(table, "names", prefix):
            where = key_path(*prefix, "names", *(() if index is None else (index,)))
            if raw.startswith("*."):
                self.error(where, "a wildcard name needs the DNS-01 challenge, which "
                           "Mailkeep does not use", allowed="host names")
                continue
            try:
                names.append(canonical_domain(raw))
            except InvalidName as exc:
                self.error(where, str(exc))
        key_types = self._choices(table, "key_types", prefix, ACME_KEY_TYPES)
        challenges = self._choices(table, "challenges", prefix, ACME_CHALLENGES)
        ca_file = self.string(table, "ca_file", prefix)
        return AcmeConfig(
            enabled=enabled, directory=directory, email=email or None, names=tuple(names),
            key_types=key_types or defaults.key_types,
            challenges=challenges or defaults.challenges,
            renew_before=self.number(table, "renew_before", prefix, defaults.renew_before,
                                     86400, 60 * 86400, "duration"),
            retry_interval=self.number(table, "retry_interval", prefix,
                                       defaults.retry_interval, 1, 86400, "duration"),
            ca_file=self.file_path(ca_file) if ca_file else None)

    def _choices(self, table: Mapping[str, Any], name: str, prefix: tuple[str | int, ...],
                 allowed: Sequence[str]) -> tuple[str, ...]:
        """A non-empty subset of ``allowed`` (an array of strings); () when absent or bad."""
        chosen: list[str] = []
        for index, raw in self._string_list(table, name, prefix):
            if raw not in allowed:
                self.error(key_path(*prefix, name, *(() if index is None else (index,))),
                           f"{raw!r} is not a valid value", allowed=", ".join(allowed))
            elif raw not in chosen:
                chosen.append(raw)
        if name in table and not chosen and table[name] == []:
            self.error(key_path(*prefix, name), "cannot be empty", allowed=", ".join(allowed))
        return tuple(chosen)

    def _dns(self, data: Mapping[str, Any]) -> DnsConfig:
        table = self.table(data.get("dns"), "dns")
        if not table:
            return DnsConfig()
        prefix: tuple[str | int, ...] = ("dns",)
        self.known_keys(table, DNS_KEYS, *prefix)
        defaults = DnsConfig()
        addresses: dict[int, list[str]] = {4: [], 6: []}
        for version in (4, 6):
            name = f"ipv{version}"
            for index, raw in self._string_list(table, name, prefix):
                where = key_path(*prefix, name, *(() if index is None else (index,)))
                try:
                    ip = ipaddress.ip_address(raw)
                except ValueError:
                    self.error(where, f"{raw!r} is not an IP address")
                    continue
                if ip.version != version:
                    self.error(where, f"{raw!r} is not an IPv{version} address")
                    continue
                addresses[version].append(str(ip))
        tlsrpt = self.string(table, "tlsrpt_address", prefix)
        if tlsrpt:
            try:
                tlsrpt = canonical_address(tlsrpt)
            except InvalidName as exc:
                self.error(key_path(*prefix, "tlsrpt_address"), str(exc))
                tlsrpt = None
        issuers = []
        for index, raw in self._string_list(table, "caa_issuers", prefix):
            try:
                issuers.append(canonical_domain(raw))
            except InvalidName as exc:
                self.error(key_path(*prefix, "caa_issuers",
                                    *(() if index is None else (index,))), str(exc))
        return DnsConfig(
            ipv4=tuple(addresses[4]), ipv6=tuple(addresses[6]),
            mta_sts_mode=self.choice(table, "mta_sts_mode", prefix, MTA_STS_MODES,
                                     defaults.mta_sts_mode) or defaults.mta_sts_mode,
            # RFC 8461 §3.2: max_age up to 31557600 seconds (about a year).
            mta_sts_max_age=int(self.number(table, "mta_sts_max_age", prefix,
                                            defaults.mta_sts_max_age, 3600, 31557600,
                                            "duration")),
            dmarc_policy=self.choice(table, "dmarc_policy", prefix, DMARC_POLICIES,
                                     defaults.dmarc_policy) or defaults.dmarc_policy,
            tlsrpt_address=tlsrpt or None,
            dkim_testing=self.boolean(table, "dkim_testing", prefix, False),
            caa_issuers=(tuple(issuers) if "caa_issuers" in table else defaults.caa_issuers))

    def _metrics(self, data: Mapping[str, Any]) -> MetricsConfig:
        table = self.table(data.get("metrics"), "metrics")
        if not table:
            return MetricsConfig()
        prefix: tuple[str | int, ...] = ("metrics",)
        self.known_keys(table, METRICS_KEYS, *prefix)
        networks = []
        for index, raw in self._string_list(table, "allow", prefix):
            try:
                networks.append(str(ipaddress.ip_network(raw, strict=False)))
            except ValueError:
                self.error(key_path(*prefix, "allow", *(() if index is None else (index,))),
                           f"{raw!r} is not a network", allowed="e.g. \"192.0.2.0/24\"")
        return MetricsConfig(
            enabled=self.boolean(table, "enabled", prefix, True),
            allow=tuple(networks) if "allow" in table else MetricsConfig().allow)

    def _delivery(self, data: Mapping[str, Any]) -> DeliveryConfig:
        relays = self._relays(data)
        table = self.table(data.get("delivery"), "delivery")
        if table is None:
            return DeliveryConfig(relays=_frozen(relays))
        prefix: tuple[str | int, ...] = ("delivery",)
        self.known_keys(table, DELIVERY_KEYS, *prefix)
        defaults = DeliveryConfig()
        relayhost = self.string(table, "relayhost", prefix, "") or None
        if relayhost is not None and relayhost not in relays:
            self.error(key_path(*prefix, "relayhost"), f"no relay named {relayhost!r}",
                       allowed=", ".join(relays) or "define it in [relays.NAME] first")
            relayhost = None
        transport: dict[str, str] = {}
        entries = self.table(table.get("transport"), *prefix, "transport")
        for raw_domain, target in (entries or {}).items():
            where = key_path(*prefix, "transport", raw_domain)
            try:
                domain = canonical_domain(raw_domain.lstrip("."))
            except InvalidName as exc:
                self.error(where, str(exc))
                continue
            if raw_domain.startswith("."):
                domain = "." + domain  # ".example.com": every subdomain (Postfix style)
            if not isinstance(target, str) or (target != "direct" and target not in relays):
                self.error(where, f"{target!r} is neither \"direct\" nor a relay name",
                           allowed=", ".join(["direct", *relays]))
                continue
            transport[domain] = target
        resolvers = []
        for index, raw in self._string_list(table, "resolvers", prefix):
            if raw.startswith("["):       # "[::1]:5353"
                host, _, port = raw[1:].partition("]")
                port = port[1:] if port.startswith(":") else "x" if port else ""
            elif raw.count(":") == 1:     # "127.0.0.1:5353"
                host, _, port = raw.partition(":")
            else:                         # "127.0.0.1", "::1"
                host, port = raw, ""
            try:
                ipaddress.ip_address(host)
                if port and not port.isdigit():
                    raise ValueError
                if port and not 0 < int(port) < 65536:
                    raise ValueError
            except ValueError:
                self.error(key_path(*prefix, "resolvers", *(() if index is None else (index,))),
                           f"{raw!r} is not an IP address (with an optional :port)")
                continue
            resolvers.append(raw)
        families = tuple(item for _, item in self._string_list(table, "address_families", prefix)) \
            if "address_families" in table else defaults.address_families
        if not families or any(f not in ("ipv4", "ipv6") for f in families):
            self.error(key_path(*prefix, "address_families"), f"{list(families)!r} is not usable",
                       allowed="a list of \"ipv6\" and/or \"ipv4\"")
            families = defaults.address_families
        ca_file = self.string(table, "ca_file", prefix, "")
        helo = self.string(table, "helo_name", prefix, "") or None
        if helo is not None:
            try:
                helo = canonical_domain(helo)
            except InvalidName as exc:
                self.error(key_path(*prefix, "helo_name"), str(exc))
                helo = None
        return DeliveryConfig(
            relayhost=relayhost, transport=_frozen(transport), relays=_frozen(relays),
            resolvers=tuple(resolvers),
            mta_sts=self.boolean(table, "mta_sts", prefix, defaults.mta_sts),
            dane=self.boolean(table, "dane", prefix, defaults.dane),
            ca_file=self.file_path(ca_file) if ca_file else None, helo_name=helo,
            smtp_port=self.number(table, "smtp_port", prefix, 25, 1, 65535, "int"),
            mta_sts_port=self.number(table, "mta_sts_port", prefix, 443, 1, 65535, "int"),
            address_families=families,
            connect_timeout=self.number(table, "connect_timeout", prefix,
                                        defaults.connect_timeout, 1, 600, "duration"))

    def _relays(self, data: Mapping[str, Any]) -> dict[str, Relay]:
        table = self.table(data.get("relays"), "relays")
        relays: dict[str, Relay] = {}
        for name, value in (table or {}).items():
            prefix: tuple[str | int, ...] = ("relays", name)
            if name == "direct" or not _BARE_KEY.match(name):
                self.error(key_path(*prefix), "not a usable relay name",
                           allowed="letters, digits, - and _, not \"direct\"")
                continue
            settings = self.table(value, *prefix)
            if settings is None:
                continue
            self.known_keys(settings, RELAY_KEYS, *prefix)
            raw_host = self.string(settings, "host", prefix, required=True,
                                   hint=": such as \"[smtp.provider.net]:587\"")
            if raw_host is None:
                continue
            match = _RELAY_HOST.match(raw_host.strip())
            port_text = match.group("port") if match else None
            port = 587
            if port_text:
                port = _SERVICE_PORTS.get(port_text.lower(), 0) if not port_text.isdigit() \
                    else int(port_text)
            host = (match.group("bracketed") or match.group("plain")) if match else ""
            if not match or not 0 < port < 65536 or not host:
                self.error(key_path(*prefix, "host"), f"{raw_host!r} is not a relay host",
                           allowed="\"[host]:port\" (no MX lookup) or \"host:port\"; port a "
                                   "number or smtp, submission, submissions")
                continue
            tls = self.choice(settings, "tls", prefix, RELAY_TLS,
                              "implicit" if port == 465 else "verify") or "verify"
            username = self.string(settings, "username", prefix, "") or None
            password_file = self.string(settings, "password_file", prefix, "") or None
            if bool(username) != bool(password_file):
                self.error(key_path(*prefix, "password_file" if username else "username"),
                           "username and password_file go together")
            if username and tls == "may":
                self.warn(key_path(*prefix, "tls"), "credentials are only ever sent over TLS; "
                          "with \"may\" a relay without STARTTLS gets no mail")
            relays[name] = Relay(name=name, host=host, port=port,
                                 mx_lookup=not bool(match.group("bracketed")),
                                 username=username,
                                 password_file=self.file_path(password_file) if password_file else None,
                                 tls=tls)
        return relays

    def _listeners(self, data: Mapping[str, Any], data_dir: Path) -> tuple[Listener, ...]:
        if "listeners" not in data:
            return (
                Listener("smtp", "0.0.0.0:25", "starttls", host="0.0.0.0", port=25),
                Listener("lmtp", f"unix:{data_dir / 'lmtp.sock'}", "none",
                         path=data_dir / "lmtp.sock"),
            )
        raw = data["listeners"]
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            self.error("listeners", f"expected an array of tables ([[listeners]]), got {_describe(raw)}")
            return ()
        listeners: list[Listener] = []
        seen: dict[tuple[Any, ...], int] = {}
        for index, table in enumerate(raw):
            prefix: tuple[str | int, ...] = ("listeners", index)
            self.known_keys(table, LISTENER_KEYS, *prefix)
            protocol = self.choice(table, "protocol", prefix, PROTOCOLS, None)
            if "protocol" not in table:
                self.error(key_path(*prefix, "protocol"), "required setting is missing",
                           allowed=", ".join(PROTOCOLS))
            address = self.string(table, "address", prefix, required=True,
                                  hint=": such as \"0.0.0.0:25\", \"[::]:25\" or \"unix:/run/mailkeep/lmtp.sock\"")
            if protocol is None or address is None:
                continue
            tls = self.choice(table, "tls", prefix, TLS_MODES, PROTOCOL_DEFAULT_TLS[protocol])
            listener = self._listener(protocol, address, tls or "none", prefix)
            if listener is None:
                continue
            policy = self.string(table, "policy", prefix, "") or ""
            if policy and protocol != "smtp":
                self.error(key_path(*prefix, "policy"), "only smtp listeners have a policy "
                           "(submission has its own rules, LMTP is trusted)")
                policy = ""
            listener = replace(listener, policy=policy)
            identity = ("unix", listener.path) if listener.path else ("tcp", listener.host, listener.port)
            if identity in seen and listener.port != 0:
                self.error(key_path(*prefix, "address"),
                           f"{address!r} is already used by listeners[{seen[identity]}]")
                continue
            seen[identity] = index
            if (protocol in PASSWORD_PROTOCOLS and listener.tls == "none" and listener.host
                    and not ipaddress.ip_address(listener.host).is_loopback):
                self.warn(key_path(*prefix, "tls"),
                          f"{protocol} without TLS on {address} lets passwords cross the network in clear")
            listeners.append(listener)
        if not listeners and not self.errors:
            self.warn("listeners", "no listeners: the server will not accept any connection")
        return tuple(listeners)

    def _listener(self, protocol: str, address: str, tls: str,
                  prefix: tuple[str | int, ...]) -> Listener | None:
        where = key_path(*prefix, "address")
        allowed = "\"IPv4:port\", \"[IPv6]:port\" or \"unix:/path/to/socket\""
        if address.startswith("unix:"):
            socket_path = address[len("unix:"):]
            if not socket_path or "\0" in socket_path:
                self.error(where, f"{address!r} has no socket path", allowed=allowed)
                return None
            return Listener(protocol, address, tls, path=self.file_path(socket_path))  # type: ignore[arg-type]
        host, sep, port_text = address.rpartition(":")
        if not sep or not host:
            self.error(where, f"{address!r} has no port (the {protocol} port is usually "
                       f"{_DEFAULT_PORTS[protocol]})", allowed=allowed)
            return None
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            version = 6
        else:
            version = 4
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self.error(where, f"{host!r} is not an IP address", allowed=allowed)
            return None
        if ip.version != version:
            self.error(where, f"{address!r}: write IPv6 addresses in brackets, such as \"[::]:25\"",
                       allowed=allowed)
            return None
        if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            self.error(where, f"{port_text!r} is not a port number", allowed="0 to 65535")
            return None
        return Listener(protocol, address, tls, host=str(ip), port=int(port_text))  # type: ignore[arg-type]

    # -- domains, accounts, aliases -----------------------------------------------------

    def _domains(self, data: Mapping[str, Any]) -> tuple[dict[str, Domain], dict[str, list[tuple[int | None, str]]]]:
        table = self.table(data.get("domains"), "domains")
        domains: dict[str, Domain] = {}
        burned_raw: dict[str, list[tuple[int | None, str]]] = {}
        if not table:
            return domains, burned_raw
        for raw_name, value in table.items():
            prefix: tuple[str | int, ...] = ("domains", raw_name)
            try:
                name = canonical_domain(raw_name)
            except InvalidName as exc:
                self.error(key_path(*prefix), str(exc))
                continue
            if name in domains:
                self.error(key_path(*prefix), f"the same domain as {self._domain_keys[name]!r} "
                           f"(both are {name!r} in lower-case IDNA form)")
                continue
            settings = self.table(value, *prefix)
            if settings is None:
                continue
            for sub, sub_value in settings.items():
                if sub not in DOMAIN_KEYS and isinstance(sub_value, dict):
                    self.error(key_path(*prefix, sub), "unknown key; is this a domain name "
                               f"without quotes? Write [domains.\"{raw_name}.{sub}\"]")
            self.known_keys({k: v for k, v in settings.items()
                             if k in DOMAIN_KEYS or not isinstance(v, dict)}, DOMAIN_KEYS, *prefix)
            separator = self.string(settings, "subaddress_separator", prefix,
                                    DEFAULT_SUBADDRESS_SEPARATOR)
            if separator is None:
                separator = DEFAULT_SUBADDRESS_SEPARATOR
            bad = [ch for ch in separator if ch not in SUBADDRESS_SEPARATOR_CHARS]
            if bad or len(separator) > MAX_SUBADDRESS_SEPARATORS:
                self.error(key_path(*prefix, "subaddress_separator"),
                           f"{separator!r} is not a set of separator characters",
                           allowed=f"up to {MAX_SUBADDRESS_SEPARATORS} of {SUBADDRESS_SEPARATOR_CHARS}, "
                           "or \"\" to disable sub-addressing")
                separator = DEFAULT_SUBADDRESS_SEPARATOR
            catch_all = self.string(settings, "catch_all", prefix)
            burned_raw[name] = self._string_list(settings, "burned", prefix)
            self._domain_keys[name] = raw_name
            domains[name] = Domain(
                name=name,
                catch_all=catch_all or None,
                personalized_catch_all=self.boolean(settings, "personalized_catch_all", prefix, False),
                subaddress_separator=separator,
                subaddress_to_folder=self.boolean(settings, "subaddress_to_folder", prefix, False),
            )
        return domains, burned_raw

    def _string_list(self, table: Mapping[str, Any], name: str,
                     prefix: tuple[str | int, ...]) -> list[tuple[int | None, str]]:
        """A string or an array of strings, with the index of each (None for a lone string)."""
        if name not in table:
            return []
        value = table[name]
        where = key_path(*prefix, name)
        if isinstance(value, str):
            return [(None, value)]
        if not isinstance(value, list):
            self.error(where, f"expected an array of addresses, got {_describe(value)}")
            return []
        if len(value) > MAX_ALIAS_TARGETS:
            self.error(where, f"has {len(value)} entries", allowed=f"at most {MAX_ALIAS_TARGETS}")
            return []
        items: list[tuple[int | None, str]] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.error(key_path(*prefix, name, index), f"expected an address, got {_describe(item)}")
                continue
            items.append((index, item))
        return items

    def _local_address(self, raw: str, where: str, domains: Mapping[str, Domain]) -> str | None:
        """Canonical form of an address that must be in one of our domains."""
        try:
            address = canonical_address(raw)
        except InvalidName as exc:
            self.error(where, str(exc))
            return None
        domain = address.rpartition("@")[2]
        if domain not in domains:
            self.error(where, f"the domain of {raw!r} is not a domain of this server",
                       allowed=self._domain_list(domains))
            return None
        return address

    @staticmethod
    def _domain_list(domains: Mapping[str, Domain]) -> str:
        if not domains:
            return "a domain listed in [domains]; there are none yet"
        names = ", ".join(display_domain(name) for name in list(domains)[:10])
        more = ", …" if len(domains) > 10 else ""
        return f"a domain listed in [domains]: {names}{more}"

    def _accounts(self, data: Mapping[str, Any], domains: Mapping[str, Domain]) -> dict[str, Account]:
        table = self.table(data.get("accounts"), "accounts")
        accounts: dict[str, Account] = {}
        if not table:
            return accounts
        for raw_address, value in table.items():
            prefix: tuple[str | int, ...] = ("accounts", raw_address)
            address = self._local_address(raw_address, key_path(*prefix), domains)
            if address is None:
                continue
            if address in accounts:
                self.error(key_path(*prefix), f"the same account as {self._account_keys[address]!r}")
                continue
            settings = self.table(value, *prefix)
            if settings is None:
                continue
            self.known_keys(settings, ACCOUNT_KEYS, *prefix)
            name = self.string(settings, "name", prefix, "") or ""
            if len(name) > MAX_ACCOUNT_NAME_LENGTH or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
                self.error(key_path(*prefix, "name"), "not a usable display name",
                           allowed=f"up to {MAX_ACCOUNT_NAME_LENGTH} characters, no control characters")
                name = ""
            quota = self.number(settings, "quota", prefix, 0, 0, _MAX_QUOTA, "size")
            quota_messages = self.number(settings, "quota_messages", prefix, 0, 0, _MAX_QUOTA_MESSAGES, "int")
            relay_only = self.boolean(settings, "relay_only", prefix, False)
            own_aliases: list[str] = []
            for index, raw_alias in self._string_list(settings, "aliases", prefix):
                where = key_path(*prefix, "aliases", *(() if index is None else (index,)))
                alias = self._local_address(raw_alias, where, domains)
                if alias is None:
                    continue
                if alias == address or alias in own_aliases:
                    self.error(where, f"{raw_alias!r} is listed twice")
                    continue
                own_aliases.append(alias)
            send = self.choice(settings, "send", prefix, SEND_MODES, "allow") or "allow"
            send_message = self.string(settings, "send_message", prefix, "") or ""
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in send_message) or len(send_message) > 400:
                self.error(key_path(*prefix, "send_message"), "not usable in an SMTP reply",
                           allowed="up to 400 characters, no control characters")
                send_message = ""
            rates = {key: (self.number(settings, key, prefix, 0, 0, _MAX_SEND_RATE, "int")
                           if key in settings else None)
                     for key in ("max_messages_per_hour", "max_recipients_per_day")}
            self._account_keys[address] = raw_address
            accounts[address] = Account(address=address, name=name, quota=int(quota),
                                        quota_messages=int(quota_messages), relay_only=relay_only,
                                        aliases=tuple(own_aliases), send=send,
                                        send_message=send_message, **rates)
            if relay_only and own_aliases:
                self.warn(key_path(*prefix, "aliases"), "the account is relay-only: mail to "
                          "these aliases is rejected as unknown")
        # Collisions between accounts and the aliases of other accounts.
        for address in accounts:
            self._owner[address] = "an account"
        for address, account in list(accounts.items()):
            kept: list[str] = []
            for index, alias in enumerate(account.aliases):
                if alias in self._owner:
                    self.error(key_path("accounts", self._account_keys[address], "aliases", index),
                               f"{alias!r} is already {self._owner[alias]}")
                    continue
                self._owner[alias] = f"an alias of account {address!r}"
                self._alias_owner[alias] = address
                kept.append(alias)
            if len(kept) != len(account.aliases):
                accounts[address] = replace(account, aliases=tuple(kept))
        return accounts

    def _aliases(self, data: Mapping[str, Any], domains: Mapping[str, Domain],
                 accounts: Mapping[str, Account]) -> dict[str, tuple[tuple[str, ...], str]]:
        """[aliases] -> {canonical alias: (canonical targets, the key as written)}."""
        table = self.table(data.get("aliases"), "aliases")
        aliases: dict[str, tuple[tuple[str, ...], str]] = {}
        if not table:
            return aliases
        for raw_alias, value in table.items():
            prefix: tuple[str | int, ...] = ("aliases", raw_alias)
            alias = self._local_address(raw_alias, key_path(*prefix), domains)
            if alias is None:
                continue
            if alias in aliases:
                self.error(key_path(*prefix), f"the same alias as {aliases[alias][1]!r}")
                continue
            if alias in self._owner:
                self.error(key_path(*prefix), f"{raw_alias!r} is already {self._owner[alias]}; "
                           "an address is either an account or an alias")
                continue
            if isinstance(value, list) and not value:
                self.error(key_path(*prefix), "an alias needs at least one target",
                           allowed="an address or an array of addresses")
                continue
            if not isinstance(value, str | list):
                self.error(key_path(*prefix), f"expected an address or an array of addresses, got {_describe(value)}")
                continue
            targets: list[str] = []
            for index, raw_target in self._string_list(table, raw_alias, ("aliases",)):
                where = key_path(*prefix, *(() if index is None else (index,)))
                try:
                    target = canonical_address(raw_target)
                except InvalidName as exc:
                    self.error(where, str(exc))
                    continue
                if target == alias:
                    self.error(where, "an alias cannot point to itself")
                    continue
                if target not in targets:
                    targets.append(target)
            if targets:
                aliases[alias] = (tuple(targets), raw_alias)
                self._owner[alias] = "an alias in [aliases]"
        return aliases

    def _deliverable(self, address: str, accounts: Mapping[str, Account],
                     aliases: Mapping[str, Any]) -> str | None:
        """None if ``address`` names a local mailbox or alias, else why it does not."""
        account = accounts.get(address)
        if account is not None and account.relay_only:
            return f"{address!r} is a relay-only account, which has no mailbox"
        if account is not None or address in aliases:
            return None
        owner_address = self._alias_owner.get(address)
        if owner_address is not None:
            if accounts[owner_address].relay_only:
                return f"{address!r} belongs to a relay-only account, which has no mailbox"
            return None
        return "not an account or alias of this server"

    def _check_domain_targets(self, domains: dict[str, Domain],
                              burned_raw: Mapping[str, list[tuple[int | None, str]]],
                              accounts: Mapping[str, Account],
                              aliases: Mapping[str, Any]) -> dict[str, Domain]:
        checked: dict[str, Domain] = {}
        for name, domain in domains.items():
            prefix = ("domains", self._domain_keys[name])
            catch_all = domain.catch_all
            if catch_all is not None:
                where = key_path(*prefix, "catch_all")
                catch_all = self._target_in(catch_all, where, domains, accounts, aliases)
            burned: set[str] = set()
            for index, raw in burned_raw.get(name, []):
                where = key_path(*prefix, "burned", *(() if index is None else (index,)))
                try:
                    address = canonical_address(raw)
                except InvalidName as exc:
                    self.error(where, str(exc))
                    continue
                if address.rpartition("@")[2] != name:
                    self.error(where, f"{raw!r} is not an address in {display_domain(name)}",
                               allowed=f"addresses ending in @{display_domain(name)}")
                    continue
                if address in self._owner:
                    self.error(where, f"{raw!r} is {self._owner[address]}; remove it from burned "
                               "or remove the account or alias")
                    continue
                burned.add(address)
            checked[name] = replace(domain, catch_all=catch_all, burned=frozenset(burned))
        return checked

    def _target_in(self, raw: str, where: str, domains: Mapping[str, Domain],
                   accounts: Mapping[str, Account], aliases: Mapping[str, Any]) -> str | None:
        """Validate a catch_all/postmaster target: an account or alias (or a sub-address)."""
        allowed = "an address in accounts or aliases"
        try:
            address = canonical_address(raw)
        except InvalidName as exc:
            self.error(where, str(exc), allowed=allowed)
            return None
        problem = self._deliverable(address, accounts, aliases)
        if problem and problem.startswith("not an"):
            local, _, domain_name = address.rpartition("@")
            domain = domains.get(domain_name)
            if domain is not None:
                from mailkeep.addressing import split_subaddress

                split = split_subaddress(local, domain.subaddress_separator)
                if split is not None:
                    problem = self._deliverable(f"{split[0]}@{domain_name}", accounts, aliases)
        if problem:
            if problem.startswith("not an"):
                self.error(where, f"{raw!r} is {problem}", allowed=allowed)
            else:
                self.error(where, problem, allowed=allowed)
            return None
        return address

    def _postmaster(self, data: Mapping[str, Any], domains: Mapping[str, Domain],
                    accounts: Mapping[str, Account], aliases: Mapping[str, Any]) -> str | None:
        raw = self.string(data, "postmaster", ())
        if not raw:
            return None
        return self._target_in(raw, "postmaster", domains, accounts, aliases)

    def _check_resolution(self, config: Config,
                          aliases: Mapping[str, tuple[tuple[str, ...], str]]) -> None:
        """Expand every alias, and check postmaster@ and abuse@ of every domain."""
        from mailkeep.addressing import Resolver

        resolver = Resolver(config)
        reported: set[tuple[str, str | None]] = set()
        for problem in resolver.problems:
            if problem.source not in aliases or (problem.source, problem.target) in reported:
                continue
            reported.add((problem.source, problem.target))
            raw_alias = aliases[problem.source][1]
            self.error(key_path("aliases", raw_alias), problem.message,
                       allowed=None if problem.target is None else "accounts, aliases or addresses "
                       "in other domains")
        has_mailbox = any(not account.relay_only for account in config.accounts.values())
        for name in config.domains:
            prefix = ("domains", self._domain_keys[name])
            shown = display_domain(name)
            postmaster = resolver.resolve(f"postmaster@{name}")
            if postmaster.kind != "deliver":
                if not has_mailbox:
                    self.warn(key_path(*prefix), f"no account has a mailbox yet, so mail to "
                              f"postmaster@{shown} would be rejected (RFC 5321 §4.5.1 requires it)")
                else:
                    self.error(key_path(*prefix), f"mail to postmaster@{shown} cannot be delivered "
                               f"({postmaster.reason}); RFC 5321 §4.5.1 requires it",
                               allowed="set postmaster, or make postmaster@ an account or alias")
                continue
            if resolver.resolve(f"abuse@{name}").kind != "deliver":
                self.warn(key_path(*prefix), f"abuse@{shown} does not reach anyone (RFC 2142 §2); "
                          "add an alias or a catch-all")


def _frozen(data: dict) -> Mapping:
    return MappingProxyType(data)
