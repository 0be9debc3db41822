"""The inbound policy as written in the configuration: an ordered list of rules.

Postfix spreads its restrictions over smtpd_client_restrictions, smtpd_helo_restrictions,
smtpd_sender_restrictions, smtpd_recipient_restrictions, smtpd_data_restrictions,
postscreen, header_checks and several policy services. Mailkeep reads one list per
listener, in the order a transaction meets the rules::

    rules = [
      "permit_trusted_networks",
      "check_client_access cidr:/etc/mailkeep/client_access",
      "check_helo_access hash:/etc/postfix/helo_reject_domains",
      "check_sender_access pcre:/etc/postfix/sender_access.pcre",
      "greylist",
      "header_checks pcre:/etc/postfix/header_checks.pcre",
      "dmarc",
    ]

Each rule belongs to the stage where what it looks at is known (connect, helo, mail,
rcpt, data), and the list must follow the stages in that order, so it reads top-down
like the transaction. Evaluation goes down the list; the first rule that decides ends it:
a permit (OK in a table, ``permit_trusted_networks``) skips every rule after it, a reject
or defer refuses. This module parses and checks the list and loads the tables it names;
it does no I/O beyond reading those tables and decides nothing (see
:mod:`mailkeep.policy.inbound`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from mailkeep.policy.tables import AccessTable, RegexTable, TableError, load_table


class Stage(IntEnum):
    """When a rule runs. Client, HELO and sender rules are decided at the first RCPT of
    each transaction (Postfix's smtpd_delay_reject=yes): the refusal then names the
    recipient in the log, and clients that mishandle refusals of HELO or MAIL behave."""

    CONNECT = 0
    HELO = 1
    MAIL = 2
    RCPT = 3
    DATA = 4


#: name → (stage, the argument it takes: None, "access" table, "header"/"body" table).
RULES: dict[str, tuple[Stage, str | None]] = {
    # connect
    "permit_trusted_networks": (Stage.CONNECT, None),
    "check_client_access": (Stage.CONNECT, "access"),
    "reject_unknown_client_hostname": (Stage.CONNECT, None),
    "reject_pregreet": (Stage.CONNECT, None),
    "dnsbl": (Stage.CONNECT, None),
    "reject_unauth_pipelining": (Stage.CONNECT, None),
    # helo (HELO/EHLO itself is always required: MAIL before it gets 503 5.5.1)
    "reject_invalid_helo_hostname": (Stage.HELO, None),
    "reject_non_fqdn_helo_hostname": (Stage.HELO, None),
    "reject_unknown_helo_hostname": (Stage.HELO, None),
    "reject_our_helo": (Stage.HELO, None),
    "check_helo_access": (Stage.HELO, "access"),
    # mail
    "reject_non_fqdn_sender": (Stage.MAIL, None),
    "reject_unknown_sender_domain": (Stage.MAIL, None),
    "check_sender_access": (Stage.MAIL, "access"),
    "reject_spf_fail": (Stage.MAIL, None),
    # rcpt
    "check_recipient_access": (Stage.RCPT, "access"),
    "greylist": (Stage.RCPT, None),
    # data
    "reject_spoofed_own_domain": (Stage.DATA, None),
    "dmarc": (Stage.DATA, None),
    "header_checks": (Stage.DATA, "header"),
    "body_checks": (Stage.DATA, "body"),
    "clamav": (Stage.DATA, None),
    "rspamd": (Stage.DATA, None),
}
#: The most rules one list may hold (a typo that repeats a line a million times).
MAX_RULES = 200


@dataclass(frozen=True)
class Rule:
    name: str
    stage: Stage
    #: The table as written ("pcre:/etc/postfix/header_checks.pcre"), for logs.
    argument: str = ""
    table: AccessTable | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.argument}".rstrip()


class RuleError(ValueError):
    """A rule list that cannot be used: ``index`` is the rule's position in the list."""

    def __init__(self, index: int | None, message: str, allowed: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.allowed = allowed


def parse_rules(texts: tuple[str, ...] | list[str], *, base_dir: Path | None = None
                ) -> tuple[Rule, ...]:
    """Parse and check a rule list, loading the tables it names. Raises RuleError."""
    if len(texts) > MAX_RULES:
        raise RuleError(None, f"{len(texts)} rules", allowed=f"at most {MAX_RULES}")
    rules: list[Rule] = []
    for index, text in enumerate(texts):
        name, _, argument = text.strip().partition(" ")
        name, argument = name.lower(), argument.strip()
        spec = RULES.get(name)
        if spec is None:
            raise RuleError(index, f"unknown rule {name!r}", allowed=", ".join(RULES))
        stage, kind = spec
        table = None
        if kind is None:
            if argument:
                raise RuleError(index, f"{name} takes no argument")
        else:
            if not argument:
                raise RuleError(index, f"{name} needs a table, e.g. "
                                f"\"{name} {'pcre' if kind != 'access' else 'hash'}:/path\"")
            # "hash:/path bare_keys=REJECT": a list of keys without values (seed 000's
            # invalid_recipients) gets that action for every key.
            argument, _, option = argument.partition(" ")
            bare_value = None
            if option:
                key, eq, bare_value = option.strip().partition("=")
                if key != "bare_keys" or not eq or not bare_value:
                    raise RuleError(index, f"{name}: unknown option {option.strip()!r}",
                                    allowed="bare_keys=ACTION")
            try:
                table = load_table(argument, purpose=kind, base_dir=base_dir,  # type: ignore[arg-type]
                                   bare_key_value=bare_value)
            except TableError as exc:
                raise RuleError(index, str(exc)) from None
            if kind != "access" and not isinstance(table, RegexTable):
                raise RuleError(index, f"{name} needs a pcre: or regexp: table")
        if rules and stage < rules[-1].stage:
            raise RuleError(index, f"{name} ({stage.name.lower()} stage) comes after "
                            f"{rules[-1].name} ({rules[-1].stage.name.lower()} stage)",
                            allowed="rules in transaction order: connect, helo, mail, "
                                    "rcpt, data")
        rules.append(Rule(name, stage, text.strip().partition(" ")[2].strip(), table))
    return tuple(rules)
