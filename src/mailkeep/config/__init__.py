"""Mailkeep's configuration: one TOML file, the single source of truth.

``load_config(path)`` reads and validates ``mailkeep.toml`` into a frozen ``Config``;
``mailkeep.config.edit`` changes it safely (comments kept, validated before writing);
``mailkeep.config.check`` adds the checks that look at the machine. Every key is documented
in ``docs/configuration.md``.
"""

from mailkeep.config.load import load_config, parse_config_text
from mailkeep.config.names import InvalidName, canonical_address, canonical_domain
from mailkeep.config.schema import (
    Account,
    AuthConfig,
    Config,
    ConfigError,
    ConfigIssue,
    Domain,
    ImapConfig,
    Listener,
    LogConfig,
    Pop3Config,
    SmtpConfig,
    TlsConfig,
)

__all__ = [
    "Account",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Domain",
    "ImapConfig",
    "InvalidName",
    "Listener",
    "LogConfig",
    "Pop3Config",
    "SmtpConfig",
    "TlsConfig",
    "canonical_address",
    "canonical_domain",
    "load_config",
    "parse_config_text",
]
