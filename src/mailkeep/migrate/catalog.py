"""What becomes of each Postfix and Dovecot setting: the migration's table of equivalents.

Three kinds of settings:

* mapped — the planner (``mailkeep.migrate.plan``) turns them into configuration: the
  names in ``MAPPED_MAIN_CF``;
* built in — Mailkeep does this by itself, nothing to configure (``BUILTIN``): listed on
  request, never as a loss;
* not migrated — there is no equivalent, or not yet (``NOT_MIGRATED``): always printed,
  with the reason and what to do instead.

A main.cf setting in none of them is reported as not migrated ("no equivalent known"), so
nothing is dropped silently. docs/migration.md shows the same table for people.
"""

from __future__ import annotations

from collections.abc import Mapping

from mailkeep.policy.rules import Stage

#: main.cf parameters the planner reads and maps (or uses to map others).
MAPPED_MAIN_CF = frozenset({
    "myhostname", "mydomain", "myorigin", "mydestination",
    "virtual_mailbox_domains", "virtual_alias_domains", "virtual_mailbox_maps",
    "virtual_alias_maps", "virtual_maps", "alias_maps", "smtpd_sender_login_maps",
    "recipient_delimiter", "message_size_limit",
    "relayhost", "smtp_sasl_auth_enable", "smtp_sasl_password_maps",
    "smtp_tls_security_level", "smtp_tls_wrappermode", "smtp_sasl_security_options",
    "smtp_sasl_tls_security_options", "smtp_sasl_mechanism_filter",
    "smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
    "smtpd_recipient_restrictions", "smtpd_relay_restrictions", "smtpd_data_restrictions",
    "header_checks", "body_checks", "mynetworks",
    "smtpd_tls_cert_file", "smtpd_tls_key_file",
    "smtpd_soft_error_limit", "smtpd_hard_error_limit", "smtpd_error_sleep_time",
    "smtpd_client_connection_rate_limit", "smtpd_client_connection_count_limit",
    "smtpd_recipient_limit", "smtpd_timeout",
    "queue_run_delay", "minimal_backoff_time", "maximal_backoff_time",
    "maximal_queue_lifetime", "bounce_queue_lifetime", "delay_warning_time",
    "default_destination_concurrency_limit", "smtp_destination_concurrency_limit",
    "postscreen_dnsbl_sites", "postscreen_dnsbl_threshold", "postscreen_dnsbl_action",
    "postscreen_dnsbl_whitelist_threshold", "postscreen_dnsbl_allowlist_threshold",
    "postscreen_greet_wait",
    "smtpd_milters", "non_smtpd_milters", "inet_interfaces", "inet_protocols",
    "smtpd_tls_security_level", "virtual_mailbox_base",
})

#: Settings whose effect Mailkeep has built in: name -> why nothing is needed.
_PATHS = "Postfix's own files and programs; Mailkeep does not use them"
_STORE = "Mailkeep stores mail itself; there is no hand-off to an LDA or LMTP server"
_SASL = ("built in: AUTH only on the submission ports, only after TLS, with throttling "
         "and bans (docs/auth.md)")
_TLS = ("built in: TLS 1.2 or newer with forward-secret AEAD ciphers only; nothing to "
        "tune (docs/receiving.md)")
_SMTPD = "built in: Mailkeep's SMTP server always behaves this way (docs/receiving.md)"
_POSTSCREEN = "built in: the reject_pregreet rule and [policy.dnsbl] (docs/inbound-policy.md)"
_MILTER_SETTINGS = "belongs to the milters, see smtpd_milters"

BUILTIN: Mapping[str, str] = {
    **dict.fromkeys((
        "compatibility_level", "readme_directory", "sample_directory", "sendmail_path",
        "html_directory", "setgid_group", "command_directory", "manpage_directory",
        "daemon_directory", "newaliases_path", "mailq_path", "queue_directory",
        "mail_owner", "data_directory", "meta_directory", "shlib_directory",
        "config_directory", "default_privs", "alias_database", "biff",
        "append_dot_mydomain", "mail_spool_directory", "syslog_name", "syslog_facility",
        "maillog_file", "debug_peer_level", "debugger_command",
        "unknown_local_recipient_reject_code",
    ), _PATHS),
    **dict.fromkeys((
        "mailbox_transport", "virtual_transport", "local_transport", "mailbox_command",
        "virtual_uid_maps", "virtual_gid_maps", "virtual_minimum_uid", "local_recipient_maps",
        "home_mailbox", "dovecot_destination_recipient_limit", "lmtp_destination_recipient_limit",
    ), _STORE),
    **dict.fromkeys((
        "smtpd_sasl_auth_enable", "smtpd_sasl_type", "smtpd_sasl_path",
        "smtpd_sasl_security_options", "smtpd_sasl_tls_security_options",
        "smtpd_sasl_local_domain", "smtpd_tls_auth_only", "broken_sasl_auth_clients",
        "smtpd_sasl_authenticated_header",
    ), _SASL),
    **dict.fromkeys((
        "smtpd_use_tls", "smtpd_enforce_tls", "smtpd_tls_received_header",
        "smtpd_tls_loglevel", "smtpd_tls_session_cache_database",
        "smtpd_tls_session_cache_timeout", "smtpd_tls_mandatory_ciphers",
        "smtpd_tls_mandatory_exclude_ciphers", "smtpd_tls_mandatory_protocols",
        "smtpd_tls_protocols", "smtpd_tls_ciphers", "smtpd_tls_exclude_ciphers",
        "smtpd_tls_eecdh_grade", "smtpd_tls_dh1024_param_file", "smtpd_tls_dh512_param_file",
        "smtpd_tls_CAfile", "smtpd_tls_CApath", "smtpd_tls_ask_ccert", "tls_high_cipherlist",
        "tls_medium_cipherlist", "tls_preempt_cipherlist", "tls_ssl_options",
        "tls_random_source", "tls_eecdh_strong_curve", "tls_eecdh_ultra_curve",
        "smtp_tls_mandatory_ciphers", "smtp_tls_mandatory_exclude_ciphers",
        "smtp_tls_mandatory_protocols", "smtp_tls_protocols", "smtp_tls_ciphers",
        "smtp_tls_exclude_ciphers", "smtp_tls_loglevel", "smtp_tls_session_cache_database",
        "smtp_tls_note_starttls_offer", "smtp_tls_CAfile", "smtp_tls_CApath", "smtp_use_tls",
        "smtp_tls_connection_reuse", "smtp_dns_support_level",
    ), _TLS),
    **dict.fromkeys((
        "smtpd_helo_required", "disable_vrfy_command", "smtpd_delay_reject",
        "unknown_hostname_reject_code", "unknown_client_reject_code",
        "unknown_address_reject_code", "unknown_virtual_alias_reject_code",
        "unknown_virtual_mailbox_reject_code", "unverified_recipient_reject_code",
        "unverified_sender_reject_code", "invalid_hostname_reject_code",
        "non_fqdn_reject_code", "relay_domains_reject_code", "reject_code",
        "maps_rbl_reject_code", "access_map_reject_code", "smtpd_reject_unlisted_recipient",
        "smtpd_reject_unlisted_sender", "strict_rfc821_envelopes", "smtputf8_enable",
        "show_user_unknown_table_name", "smtpd_banner", "smtpd_client_event_limit_exceptions",
        "smtpd_etrn_restrictions", "allow_percent_hack", "swap_bangpath",
        "mime_header_checks", "nested_header_checks",
        "smtpd_forbid_bare_newline", "smtpd_forbid_unauth_pipelining",
    ), _SMTPD),
    **dict.fromkeys((
        "postscreen_greet_action", "postscreen_access_list", "postscreen_blacklist_action",
        "postscreen_denylist_action", "postscreen_dnsbl_ttl", "postscreen_greet_ttl",
        "postscreen_cache_map", "postscreen_pipelining_enable",
        "postscreen_non_smtp_command_enable", "postscreen_bare_newline_enable",
        "postscreen_dnsbl_reply_map",
    ), _POSTSCREEN),
    **dict.fromkeys(("milter_default_action", "milter_protocol", "milter_mail_macros",
                     "milter_connect_macros", "milter_rcpt_macros", "milter_command_timeout",
                     "milter_content_timeout", "milter_connect_timeout"), _MILTER_SETTINGS),
}

#: Settings with no equivalent (yet): name -> why, and what to do instead.
NOT_MIGRATED: Mapping[str, str] = {
    "mailbox_size_limit": "the size limit of Postfix's local mailbox files; Mailkeep limits "
                          "mail per account: quota = \"2G\" in [accounts.\"...\"]",
    "virtual_mailbox_limit": "the size limit of virtual(8) mailbox files; Mailkeep limits "
                             "mail per account: quota = \"2G\" in [accounts.\"...\"]",
    "smtpd_client_auth_rate_limit": "Mailkeep limits failed logins, not all logins: [auth] "
                                    "max_failures_per_ip and ban_after_failures (docs/auth.md)",
    "smtpd_client_message_rate_limit": "no per-client message rate on port 25; submission "
                                       "has [submission] max_messages_per_hour per account",
    "smtpd_client_recipient_rate_limit": "no per-client recipient rate on port 25; "
                                         "submission has [submission] max_recipients_per_day",
    "anvil_rate_time_unit": "Mailkeep's connection rates are per minute",
    "content_filter": "not needed: viruses are checked with clamd in the policy "
                      "(docs/virus-scanning.md) and spam with rspamd (docs/rspamd.md)",
    "receive_override_options": "belongs to a content filter, which Mailkeep does not need "
                                "(docs/virus-scanning.md)",
    "smtpd_proxy_filter": "not needed: clamd and rspamd are policy rules "
                          "(docs/virus-scanning.md, docs/rspamd.md)",
    "smtp_header_checks": "no header checks on outgoing mail; [submission] remove_headers "
                          "removes headers from submitted mail",
    "smtp_body_checks": "no body checks on outgoing mail",
    "canonical_maps": "no address rewriting; use aliases for incoming mail",
    "sender_canonical_maps": "no sender rewriting; grant shared sender addresses with "
                             "[submission] senders",
    "recipient_canonical_maps": "no recipient rewriting; use [aliases]",
    "masquerade_domains": "no address masquerading",
    "always_bcc": "no automatic copies of all mail",
    "sender_bcc_maps": "no automatic copies by sender",
    "recipient_bcc_maps": "no automatic copies by recipient; an alias with two targets "
                          "delivers to both",
    "transport_maps": "add each destination to [delivery] transport (and the relay to "
                      "[relays.NAME]) by hand, see docs/sending.md",
    "sender_dependent_relayhost_maps": "relays are chosen by destination ([delivery] "
                                       "transport), not by sender",
    "relay_domains": "Mailkeep does not relay for other domains (backup MX); list the "
                     "backup MX host of those domains elsewhere",
    "relay_recipient_maps": "Mailkeep does not relay for other domains (backup MX)",
    "fallback_relay": "no fallback relay: mail is retried with backoff "
                      "([queue] maximal_queue_lifetime)",
    "smtp_fallback_relay": "no fallback relay: mail is retried with backoff "
                           "([queue] maximal_queue_lifetime)",
    "soft_bounce": "no soft-bounce mode",
    "smtpd_discard_ehlo_keywords": "the EHLO keywords are fixed (DSN, PIPELINING, ... are "
                                   "safe to offer)",
    "smtpd_tls_eccert_file": "one certificate in [tls] cert; with [acme] Mailkeep obtains "
                             "ECDSA and RSA certificates itself",
    "smtpd_tls_eckey_file": "one certificate in [tls] key; with [acme] Mailkeep obtains "
                            "ECDSA and RSA certificates itself",
    "smtpd_tls_chain_files": "give the certificate and key separately in [tls] cert and key",
    "smtp_tls_policy_maps": "direct delivery enforces DANE and MTA-STS by itself; a TLS "
                            "policy per destination needs a relay ([delivery] transport)",
    "notify_classes": "problems are logged; no notification mail to postmaster",
    "smtp_generic_maps": "no address rewriting of outgoing mail",
    "virtual_alias_expansion_limit": "alias expansion is limited by [aliases] rules "
                                     "(at most 1000 targets, 20 levels)",
    "propagate_unmatched_extensions": "sub-addresses follow [domains] subaddress_separator",
    "luser_relay": "use a catch-all: [domains.\"...\"] catch_all",
    "message_strip_characters": "no character stripping",
    "header_size_limit": "built-in header limits (docs/receiving.md)",
}

#: master.cf services every Postfix has; nothing to migrate from them.
STANDARD_SERVICES = frozenset({
    "pickup", "cleanup", "qmgr", "oqmgr", "tlsmgr", "rewrite", "bounce", "defer", "trace",
    "verify", "flush", "proxymap", "proxywrite", "smtp", "relay", "showq", "error", "retry",
    "discard", "local", "virtual", "lmtp", "anvil", "scache", "postlog", "tlsproxy",
    "dnsblog", "maildrop", "uucp", "ifmail", "bsmtp", "scalemail-backend", "mailman",
    "postscreen", "smtpd",
})

#: Dovecot settings with nothing to migrate (Mailkeep does it by itself).
DOVECOT_BUILTIN: Mapping[str, str] = {
    **dict.fromkeys((
        "ssl", "ssl_dh", "ssl_cipher_list", "ssl_protocols", "ssl_min_protocol",
        "ssl_prefer_server_ciphers", "ssl_dh_parameters_length", "ssl_ca",
        "ssl_cipher_suites", "ssl_curve_list", "ssl_options",
    ), _TLS),
    **dict.fromkeys(("disable_plaintext_auth", "auth_username_format", "auth_verbose",
                     "auth_debug", "auth_cache_size", "auth_worker_max_count"), _SASL),
    **dict.fromkeys((
        "first_valid_uid", "first_valid_gid", "last_valid_uid", "mail_uid", "mail_gid",
        "mail_privileged_group", "mail_access_groups", "log_path", "info_log_path",
        "debug_log_path", "syslog_facility", "mail_debug", "listen", "login_greeting",
        "mailbox_list_index", "mail_fsync", "mmap_disable", "mail_nfs_index",
        "mail_nfs_storage", "lock_method", "base_dir", "instance_name", "postmaster_address",
        "hostname", "mail_plugins", "mail_attribute_dict", "default_internal_user",
        "default_login_user", "verbose_proctitle", "shutdown_clients", "login_trusted_networks",
    ), "Dovecot's own processes, files and logs; Mailkeep does not need them"),
}

#: Dovecot settings the planner reads and maps.
DOVECOT_MAPPED = frozenset({"mail_location", "auth_mechanisms", "protocols",
                            "auth_default_realm", "ssl_cert", "ssl_key"})


# --- restrictions and numeric settings (read by the planner) ---------------------------

#: Restrictions that take one argument (a table, a zone, a service).
RESTRICTIONS_WITH_ARGUMENT = frozenset({
    "check_client_access", "check_reverse_client_hostname_access", "check_helo_access",
    "check_sender_access", "check_recipient_access", "check_sasl_access",
    "check_policy_service", "reject_rbl_client", "reject_rhsbl_client",
    "reject_rhsbl_sender", "reject_rhsbl_helo", "reject_rhsbl_recipient",
    "reject_rhsbl_reverse_client", "permit_dnswl_client", "permit_rhswl_client",
    "check_client_a_access", "check_client_mx_access", "check_client_ns_access",
    "check_helo_a_access", "check_helo_mx_access", "check_helo_ns_access",
    "check_sender_a_access", "check_sender_mx_access", "check_sender_ns_access",
    "check_recipient_a_access", "check_recipient_mx_access", "check_recipient_ns_access",
    "check_ccert_access", "sleep",
})
#: Postfix restrictions with the same meaning in Mailkeep's policy (old names included).
SAME_RULE = {
    "reject_unauth_pipelining": "reject_unauth_pipelining",
    "reject_unknown_client_hostname": "reject_unknown_client_hostname",
    "reject_unknown_client": "reject_unknown_client_hostname",
    "reject_invalid_helo_hostname": "reject_invalid_helo_hostname",
    "reject_invalid_hostname": "reject_invalid_helo_hostname",
    "reject_non_fqdn_helo_hostname": "reject_non_fqdn_helo_hostname",
    "reject_non_fqdn_hostname": "reject_non_fqdn_helo_hostname",
    "reject_unknown_helo_hostname": "reject_unknown_helo_hostname",
    "reject_unknown_hostname": "reject_unknown_helo_hostname",
    "reject_non_fqdn_sender": "reject_non_fqdn_sender",
    "reject_unknown_sender_domain": "reject_unknown_sender_domain",
    "permit_mynetworks": "permit_trusted_networks",
}
TABLE_RULES = frozenset({"check_client_access", "check_helo_access", "check_sender_access",
                         "check_recipient_access"})
#: Restrictions Mailkeep applies by itself: name -> why no rule is needed.
BUILTIN_RESTRICTIONS = {
    **dict.fromkeys(("permit_sasl_authenticated", "reject_unauth_destination",
                     "defer_unauth_destination", "permit_auth_destination", "permit",
                     "reject_unlisted_recipient", "reject_unknown_recipient_domain",
                     "reject_non_fqdn_recipient", "reject_unlisted_sender",
                     "reject_unverified_recipient", "reject_multi_recipient_bounce",
                     "reject_unknown_reverse_client_hostname", "reject"),
                    "port 25 accepts our recipients only and never relays; submission "
                    "requires a login"),
    **dict.fromkeys(("reject_sender_login_mismatch", "reject_authenticated_sender_login_mismatch",
                     "reject_known_sender_login_mismatch",
                     "reject_unauthenticated_sender_login_mismatch"),
                    "submission always checks the sender login map ([submission] senders)"),
}
RESTRICTION_PARAMETERS = (
    ("smtpd_client_restrictions", Stage.CONNECT), ("smtpd_helo_restrictions", Stage.HELO),
    ("smtpd_sender_restrictions", Stage.MAIL), ("smtpd_relay_restrictions", Stage.RCPT),
    ("smtpd_recipient_restrictions", Stage.RCPT), ("smtpd_data_restrictions", Stage.DATA),
)
#: Time units of main.cf values without one (postconf(5) lists each parameter's).
TIME_DEFAULT_UNIT = {"maximal_queue_lifetime": "d", "bounce_queue_lifetime": "d",
                     "delay_warning_time": "h"}
#: main.cf parameter -> ([section], key, kind) it becomes.
NUMERIC_SETTINGS: dict[str, tuple[str, str, str]] = {
    "smtpd_soft_error_limit": ("smtp", "soft_error_limit", "int"),
    "smtpd_hard_error_limit": ("smtp", "hard_error_limit", "int"),
    "smtpd_error_sleep_time": ("smtp", "error_sleep", "time"),
    "smtpd_client_connection_rate_limit": ("smtp", "max_connection_rate_per_ip", "int"),
    "smtpd_client_connection_count_limit": ("smtp", "max_connections_per_ip", "int"),
    "smtpd_recipient_limit": ("smtp", "max_recipients", "int"),
    "smtpd_timeout": ("smtp", "command_timeout", "time"),
    "queue_run_delay": ("queue", "queue_run_delay", "time"),
    "minimal_backoff_time": ("queue", "minimal_backoff_time", "time"),
    "maximal_backoff_time": ("queue", "maximal_backoff_time", "time"),
    "maximal_queue_lifetime": ("queue", "maximal_queue_lifetime", "time"),
    "bounce_queue_lifetime": ("queue", "bounce_queue_lifetime", "time"),
    "delay_warning_time": ("queue", "delay_warning_time", "time"),
    "default_destination_concurrency_limit": ("queue", "destination_concurrency_limit", "int"),
    "smtp_destination_concurrency_limit": ("queue", "destination_concurrency_limit", "int"),
}
