"""The shape of Mailkeep's configuration: frozen dataclasses, defaults and allowed values.

One TOML file (``mailkeep.toml``) is the single source of truth for the server: host name,
listeners, limits, domains, accounts and aliases. ``mailkeep.config.load`` turns the file
into the ``Config`` tree defined here; ``docs/configuration.md`` documents every key and its
default, and must change together with this module.

Every limit is a named setting with a safe default. Sizes and durations are stored in bytes
and seconds (the file may write "100M" or "17s", see ``mailkeep.units``).
"""

from __future__ import annotations

import copyreg
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

LogFormat = Literal["logfmt", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
BareNewlines = Literal["reject", "normalize"]
TlsMode = Literal["starttls", "implicit", "none"]

LOG_FORMATS: tuple[str, ...] = ("logfmt", "json")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
LOG_TARGETS: tuple[str, ...] = ("stderr", "file", "syslog", "journald")
LOG_FACILITIES: tuple[str, ...] = ("mail", "daemon", "user", *(f"local{n}" for n in range(8)))
BARE_NEWLINES: tuple[str, ...] = ("reject", "normalize")
TLS_MODES: tuple[str, ...] = ("starttls", "implicit", "none")

# Listener protocols and their TLS default. http serves ACME HTTP-01 challenges, the
# MTA-STS policy, client autoconfiguration and metrics; https the same over TLS (and ACME
# TLS-ALPN-01 on port 443).
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
    "https": "implicit",
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
    """``[log]``: where and how the server logs (docs/operations.md). ``target`` "file"
    writes ``file``, or one file per subsystem in ``dir``, with ``files`` (subsystem →
    path) sending chosen subsystems elsewhere; size-based rotation when ``rotate_size``
    is not 0. "syslog" and "journald" send to those sockets."""

    format: LogFormat = "logfmt"
    level: LogLevel = "info"
    target: str = "stderr"
    file: Path | None = None
    dir: Path | None = None
    files: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))
    rotate_size: int = 0          # bytes; 0: no built-in rotation (logrotate reopens)
    rotate_keep: int = 7
    syslog_socket: Path = Path("/dev/log")
    journald_socket: Path = Path("/run/systemd/journal/socket")
    facility: str = "mail"


@dataclass(frozen=True)
class TlsConfig:
    """``[tls]``: the certificate; both None means a self-signed one in data_dir/tls/."""

    cert: Path | None = None
    key: Path | None = None


#: Certificate key types ACME may order, and its challenge types (RFC 8555 §8.3, RFC 8737).
ACME_KEY_TYPES: tuple[str, ...] = ("ecdsa", "rsa")
ACME_CHALLENGES: tuple[str, ...] = ("http-01", "tls-alpn-01")
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class AcmeConfig:
    """``[acme]``: certificates obtained and renewed from an ACME CA (RFC 8555).

    Off unless ``enabled``; with it, ``[tls] cert``/``key`` must be unset. ``names`` empty
    means the hostname plus ``mta-sts.`` and ``autoconfig.`` of every domain.
    """

    enabled: bool = False
    directory: str = LETS_ENCRYPT_DIRECTORY
    email: str | None = None
    names: tuple[str, ...] = ()
    key_types: tuple[str, ...] = ACME_KEY_TYPES
    challenges: tuple[str, ...] = ACME_CHALLENGES
    #: Renew when a certificate has less than this left (seconds; default 30 days).
    renew_before: float = 30 * 86400.0
    #: Wait after a failed attempt before the next (seconds); doubles up to 12 hours.
    retry_interval: float = 300.0
    #: CA certificates that sign the directory's HTTPS (a private CA such as pebble's).
    ca_file: Path | None = None


MTA_STS_MODES: tuple[str, ...] = ("enforce", "testing", "none")
DMARC_POLICIES: tuple[str, ...] = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DnsConfig:
    """``[dns]``: what this server publishes in DNS: the records `mailkeep dns records`
    prints and `mailkeep check` expects, and the MTA-STS policy the server serves."""

    #: Public addresses of the server (A/AAAA of the hostname, PTR checks). Empty: the
    #: addresses of the listeners that are not wildcard or loopback.
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    mta_sts_mode: str = "enforce"
    mta_sts_max_age: int = 7 * 86400
    dmarc_policy: str = "quarantine"
    #: Where TLS reports (RFC 8460) are sent; None: the [dmarc] report_address when set,
    #: else postmaster@ the domain.
    tlsrpt_address: str | None = None
    #: Publish DKIM keys with t=y (RFC 6376 §3.6.1 testing mode).
    dkim_testing: bool = False
    #: CAs allowed to issue for the domains (CAA, RFC 8659); empty: no CAA record.
    caa_issuers: tuple[str, ...] = ("letsencrypt.org",)


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: Prometheus metrics at /metrics on the HTTP(S) listeners, for clients
    in ``allow`` only (default: loopback)."""

    enabled: bool = True
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class SmtpConfig:
    """``[smtp]``: limits of the SMTP and LMTP servers (sizes in bytes, times in seconds)."""

    message_size_limit: int = 100 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 500
    max_connections_per_ip: int = 20
    #: New connections per minute from one address (Postfix
    #: smtpd_client_connection_rate_limit); 0: no limit. ``[auth] ban_allow`` is exempt.
    max_connection_rate_per_ip: int = 60
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
    """``[auth]``: how clients prove who they are (IMAP, POP3, submission)."""

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
    #: Failed logins from one address (IPv6: its /64) within ``ban_window``, over SMTP
    #: AUTH, IMAP and POP3, that ban it from every listener (docs/auth.md); 0: no bans.
    ban_after_failures: int = 20
    ban_window: float = 3600.0
    #: The first ban's length; each further ban of the address doubles it, up to
    #: ``ban_max_duration`` (which is also how long a past ban is remembered).
    ban_duration: float = 3600.0
    ban_max_duration: float = 7 * 86400.0
    #: Networks never banned and exempt from the connection rate limits.
    ban_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class ImapConfig:
    """``[imap]``: limits of the IMAP server (sizes in bytes, times in seconds)."""

    max_connections: int = 5000
    max_connections_per_ip: int = 100
    #: New connections per minute from one address; 0: no limit (``[auth] ban_allow`` is
    #: exempt).
    max_connection_rate_per_ip: int = 120
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
    #: New connections per minute from one address; 0: no limit (``[auth] ban_allow`` is
    #: exempt).
    max_connection_rate_per_ip: int = 60
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


#: Headers removed from submitted mail because they leak the sender's client, address or
#: software (seeds 001/004 strip them with header_checks). The client's own Received line
#: is never written in the first place.
DEFAULT_PRIVACY_HEADERS: tuple[str, ...] = (
    "X-Originating-IP", "X-Mailer", "User-Agent", "X-Originating-Client", "X-MimeOLE",
)
SEND_MODES: tuple[str, ...] = ("allow", "hold", "block")


@dataclass(frozen=True)
class SubmissionConfig:
    """``[submission]``: what authenticated senders (587/465, sendmail) may do."""

    #: Per account: messages accepted per rolling hour, and distinct new recipients per
    #: rolling day; a compromised password then sends hundreds, not millions (0 = no limit).
    max_messages_per_hour: int = 500
    max_recipients_per_day: int = 2000
    #: Recipients in one submitted message.
    max_recipients: int = 500
    #: Header fields removed from submitted messages (case-insensitive names).
    remove_headers: tuple[str, ...] = DEFAULT_PRIVACY_HEADERS
    #: Extra envelope/From: addresses granted to accounts: {address: (account, ...)}, e.g.
    #: a shared info@ (seed 004's sender login map).
    senders: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class QueueConfig:
    """``[queue]``: retries and concurrency of outbound delivery (Postfix's names)."""

    #: How often deferred mail is looked at again (Postfix queue_run_delay).
    queue_run_delay: float = 60.0
    #: Wait after the first failure; doubles each attempt up to maximal_backoff_time.
    minimal_backoff_time: float = 300.0
    maximal_backoff_time: float = 4000.0
    #: Give up and bounce after this long (Postfix maximal_queue_lifetime, 5 days).
    maximal_queue_lifetime: float = 5 * 86400.0
    #: Bounces (null sender) are given up sooner (Postfix bounce_queue_lifetime).
    bounce_queue_lifetime: float = 5 * 86400.0
    #: Send a "delayed" DSN once mail waited this long; 0 = never (Postfix default).
    delay_warning_time: float = 0.0
    #: Parallel connections to one destination (domain or relay host), and in total.
    destination_concurrency_limit: int = 20
    max_concurrency: int = 100
    #: Messages sent over one connection before it is closed and a new one opened.
    max_messages_per_connection: int = 100
    #: A bounce carries the whole original message up to this size, its headers beyond.
    max_bounce_size: int = 50 * 1024


@dataclass(frozen=True)
class Relay:
    """``[relays.NAME]``: a smart host mail is handed to (seed 000's relayhost)."""

    name: str
    host: str
    port: int = 587
    #: False for "[host]": connect to host itself; True: look up its MX records.
    mx_lookup: bool = False
    username: str | None = None
    password_file: Path | None = None
    #: verify (TLS, certificate checked), encrypt (TLS, not checked), implicit (port 465),
    #: may (TLS when offered).
    tls: str = "verify"


RELAY_TLS: tuple[str, ...] = ("verify", "encrypt", "implicit", "may")


@dataclass(frozen=True)
class DeliveryConfig:
    """``[delivery]``: how mail for other domains leaves (direct MX or relay hosts)."""

    #: Name of a [relays] entry used for every destination without a transport entry;
    #: None = deliver directly to each domain's MX.
    relayhost: str | None = None
    #: {destination domain: relay name, or "direct"} (Postfix's transport map).
    transport: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    relays: Mapping[str, Relay] = field(default_factory=lambda: MappingProxyType({}))
    #: DNS servers for MX/TLSA/MTA-STS lookups ("127.0.0.1" or "127.0.0.1:5353"); empty =
    #: /etc/resolv.conf. DANE needs a validating resolver on a trusted path (loopback).
    resolvers: tuple[str, ...] = ()
    mta_sts: bool = True
    dane: bool = True
    #: Extra CA certificates for verifying peers (default: the system's store).
    ca_file: Path | None = None
    #: Name in EHLO; default the server's hostname.
    helo_name: str | None = None
    #: Port of direct delivery (25). Other values are for tests only.
    smtp_port: int = 25
    #: Port MTA-STS policies are fetched from (443). Other values are for tests only.
    mta_sts_port: int = 443
    #: Address families tried, in order.
    address_families: tuple[str, ...] = ("ipv6", "ipv4")
    connect_timeout: float = 30.0


#: The inbound policy of port 25 when the file names none: the seeds' restrictions, in the
#: order a transaction meets them (docs/inbound-policy.md explains each rule).
DEFAULT_POLICY_RULES: tuple[str, ...] = (
    "permit_trusted_networks",
    "reject_pregreet",
    "dnsbl",
    "reject_unauth_pipelining",
    "reject_invalid_helo_hostname",
    "reject_non_fqdn_helo_hostname",
    "reject_our_helo",
    "reject_non_fqdn_sender",
    "reject_unknown_sender_domain",
    "greylist",
    "reject_spoofed_own_domain",
    "dmarc",
    "clamav",
    "rspamd",
)
#: Seed 002's postscreen_dnsbl_sites.
DEFAULT_DNSBL_SITES: tuple[str, ...] = ("zen.spamhaus.org", "bl.spamcop.net")
DNSBL_ACTIONS: tuple[str, ...] = ("reject", "drop", "ignore")
SCANNER_ON_ERROR: tuple[str, ...] = ("tempfail", "accept")


@dataclass(frozen=True)
class DnsblConfig:
    """``[policy.dnsbl]``: DNS blocklists, in postscreen_dnsbl_sites syntax."""

    #: "zone[=filter][*weight]"; negative weights are allow-lists (DNSWL).
    sites: tuple[str, ...] = DEFAULT_DNSBL_SITES
    threshold: int = 1
    allow_threshold: int = -1
    #: reject: 554 at the first RCPT; drop: 521 in place of the greeting; ignore: log only.
    action: str = "reject"
    #: Look up loopback and private client addresses too (for tests; lists never hold them).
    check_private_addresses: bool = False


@dataclass(frozen=True)
class GreylistConfig:
    """``[policy.greylist]``: seed 000's greyfix, natively."""

    delay: float = 300.0
    retry_window: float = 2 * 86400.0
    auto_allow: float = 35 * 86400.0


@dataclass(frozen=True)
class ClamavConfig:
    """``[policy.clamav]``: clamd; no socket = no scanning (the rule does nothing)."""

    socket: str | None = None
    on_error: str = "tempfail"
    max_size: int = 25 * 1024 * 1024
    timeout: float = 30.0


@dataclass(frozen=True)
class RspamdConfig:
    """``[policy.rspamd]``: rspamd's HTTP protocol; no url = not used."""

    url: str | None = None
    on_error: str = "accept"
    max_size: int = 20 * 1024 * 1024
    timeout: float = 20.0
    password_file: Path | None = None


@dataclass(frozen=True)
class DmarcReportsConfig:
    """``[dmarc]``: aggregate reports received (ingested) and sent."""

    #: Mail to this address is read as DMARC aggregate reports (and delivered as usual).
    report_address: str | None = None
    send_reports: bool = False
    report_from: str | None = None   # default postmaster@<hostname>
    org_name: str | None = None      # default the hostname


@dataclass(frozen=True)
class PolicyConfig:
    """``[policy]``: how mail from the Internet is judged (listeners of protocol smtp).

    ``rules`` is the ordered policy of port 25; ``[policy.rulesets] NAME = [...]`` define others
    that a listener picks with ``policy = "NAME"``. Rules run in transaction order; the
    first that decides (permit, reject, defer) ends the evaluation.
    """

    rules: tuple[str, ...] = DEFAULT_POLICY_RULES
    rulesets: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    #: The parsed rules (mailkeep.policy.rules.Rule) by ruleset name; "" is ``rules``.
    compiled: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: MappingProxyType({}))
    #: Clients in these networks skip the policy (Postfix mynetworks + permit_mynetworks).
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: Who we are in Authentication-Results (RFC 8601 §2.5); default the hostname.
    authserv_id: str | None = None
    #: Add a Received-SPF field (RFC 7208 §9.1) as well (seed 002 shows one).
    received_spf: bool = False
    #: postscreen_greet_wait: how long a new client must stay silent after "220-".
    greet_wait: float = 6.0
    #: How long a client that passed the pregreet test is not tested again (postscreen).
    greet_ttl: float = 86400.0
    #: A single DNS lookup's time limit, and the time limit of all verification of one
    #: message (SPF, DKIM, DMARC, ARC, iprev together).
    dns_timeout: float = 5.0
    verify_timeout: float = 20.0
    #: DMARC fail with p=reject from a forwarder whose ARC seal passes and whose sealing
    #: domain is listed here: delivered (to Junk when quarantine) instead of refused.
    trusted_arc_sealers: tuple[str, ...] = ()
    #: Share above the quota a message may still be accepted at RCPT time (Dovecot's
    #: quota_grace; seed 004's quota-status).
    quota_grace: float = 0.10
    dnsbl: DnsblConfig = field(default_factory=DnsblConfig)
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    clamav: ClamavConfig = field(default_factory=ClamavConfig)
    rspamd: RspamdConfig = field(default_factory=RspamdConfig)


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
    #: The inbound policy (protocol smtp): "" = [policy] rules, "none", or a ruleset name.
    policy: str = ""

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
    #: allow: send normally. hold: accept and keep in the queue (held) for review.
    #: block: refuse with 554 5.7.1 and ``send_message`` (seed 002).
    send: str = "allow"
    send_message: str = ""
    #: Per-account overrides of [submission] limits (None: the section's value).
    max_messages_per_hour: int | None = None
    max_recipients_per_day: int | None = None


def _frozen_map(data: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(data or {}))


# A Config can be pickled: the server hands its config to the delivery process
# (mailkeep.queue.agent) that way, at start and on every reload. The read-only mappings
# above are rebuilt from a copy of their contents.
copyreg.pickle(MappingProxyType, lambda proxy: (_frozen_map, (dict(proxy),)))


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
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dmarc: DmarcReportsConfig = field(default_factory=DmarcReportsConfig)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
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
