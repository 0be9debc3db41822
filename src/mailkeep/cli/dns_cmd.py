"""`mailkeep dns records`: the DNS records the domains need, as a zone-file snippet or JSON.

The records come from :mod:`mailkeep.dnsrecords`, the same model ``mailkeep check``
compares DNS against; this command only gathers the inputs (DKIM keys, the certificate
files) and prints.
"""

from __future__ import annotations

import argparse

from mailkeep import __version__
from mailkeep.cli.config_cmd import HelpFormatter, fail, load_or_report
from mailkeep.cli.main import add_config_argument
from mailkeep.config import Config
from mailkeep.config.names import InvalidName, canonical_domain, display_domain
from mailkeep.dkim.keys import DkimKeyError, DkimKeys
from mailkeep.dnsrecords import (
    DnsRecord,
    dkim_publications,
    domain_notes,
    domain_records,
    host_notes,
    host_records,
    records_json,
    served_certificates,
    sort_records,
    zone_text,
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "dns", help="print the DNS records the domains need",
        description="Commands about the DNS records of this server's domains. "
        "'mailkeep check' verifies that they are published.",
        epilog="Examples:\n  mailkeep dns records\n  mailkeep dns records example.com --json",
        formatter_class=HelpFormatter, allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="dns_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    records = commands.add_parser(
        "records", help="print every record to publish, as a zone-file snippet or JSON",
        description="Print the DNS records DOMAIN needs (every configured domain when "
        "DOMAIN is left out), each with a comment saying what it is for: MX, the server's "
        "addresses and their reverse DNS, SPF, DKIM, DMARC, MTA-STS, TLS reporting, TLSA, "
        "SRV records for mail clients, autoconfiguration names and CAA. The zone-file "
        "text can be pasted into a BIND zone; --json gives the same records for scripts "
        "and DNS provider APIs. Records marked '(recommended)' are not needed for mail to "
        "flow. Run it again after changing keys, certificates or [dns] settings.",
        epilog="Examples:\n  mailkeep dns records\n  mailkeep dns records example.com\n"
        "  mailkeep dns records example.com --json",
        formatter_class=HelpFormatter, allow_abbrev=False)
    records.add_argument("domain", metavar="DOMAIN", nargs="?")
    records.add_argument("--json", action="store_true", help="print JSON instead of zone text")
    add_config_argument(records)
    records.set_defaults(func=cmd_records)


def chosen_domains(config: Config, domain: str | None) -> list[str]:
    """The canonical domains a command works on: ``domain``, or every configured one.
    Raises ValueError with a message for the user."""
    if domain is None:
        if not config.domains:
            raise ValueError("no domains are configured (add one with 'mailkeep domain add')")
        return sorted(config.domains)
    try:
        name = canonical_domain(domain)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None
    if name not in config.domains:
        raise ValueError(f"{domain} is not a domain of this server (add it with 'mailkeep "
                         "domain add')")
    return [name]


def cmd_records(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    try:
        domains = chosen_domains(config, args.domain)
    except ValueError as exc:
        return fail(str(exc))
    keys = DkimKeys.for_data_dir(config.data_dir)
    certificates = served_certificates(config)
    blocks: list[tuple[str, list[DnsRecord], list[str]]] = []
    for domain in domains:
        try:
            publications = dkim_publications(keys, domain)
        except DkimKeyError as exc:
            return fail(f"cannot read the DKIM keys of {domain}: {exc}")
        blocks.append((f"records of {display_domain(domain)}",
                       sort_records(domain_records(config, domain, dkim_keys=publications)),
                       domain_notes(config, domain, dkim_keys=publications)))
    blocks.append((f"records of the server {config.hostname}, shared by all its domains",
                   sort_records(host_records(config, tls_certificates=certificates)),
                   host_notes(config, tls_certificates=certificates)))
    if args.json:
        every = sort_records(r for _, records, _ in blocks for r in records)
        notes = [note for _, _, block_notes in blocks for note in block_notes]
        print(records_json(every, notes=notes), end="")
        return 0
    print(f"; DNS records for Mailkeep {__version__} on {config.hostname}; publish them in "
          "the zones they belong to.\n; Check them with 'mailkeep check'.\n")
    print("\n".join(zone_text(records, notes=notes, title=title)
                    for title, records, notes in blocks), end="")
    return 0
