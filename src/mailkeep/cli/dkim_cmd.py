"""`mailkeep dkim keygen|list|rotate|remove|dns`: the keys outgoing mail is signed with.

Keys live in ``data_dir/dkim/<domain>/`` (see ``mailkeep.dkim.keys``). A running server
notices changes at its next message; no reload is needed.

A retired selector must stay published in DNS until the last message signed with it has
left the queue, or that message fails DKIM at its destination: ``list`` says which
retired selectors are still needed and ``remove`` refuses those (the queue is asked
through ``QueueStore.selectors_in_use()``).
"""

from __future__ import annotations

import argparse
import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from mailkeep.cli.config_cmd import HelpFormatter, fail, load_or_report
from mailkeep.cli.main import add_config_argument
from mailkeep.config import Config
from mailkeep.config.names import InvalidName, canonical_domain, display_domain
from mailkeep.dkim.keys import (
    DEFAULT_RSA_BITS,
    RSA_KEY_SIZES,
    DkimKeyError,
    DkimKeys,
    Selector,
    zone_file_record,
)

_FORMAT = HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "dkim", help="create, list, rotate and remove DKIM signing keys",
        description="Manage the DKIM keys that outgoing mail is signed with (RFC 6376). Each "
        "domain has an RSA key (rsa-sha256, understood everywhere) and an Ed25519 key "
        "(ed25519-sha256, RFC 8463), each under its own selector; mail is signed with both. "
        "The commands print the DNS TXT records to publish. A running server uses new keys "
        "from its next message on.",
        epilog="Examples:\n  mailkeep dkim keygen example.com\n  mailkeep dkim dns example.com\n"
        "  mailkeep dkim rotate example.com\n  mailkeep dkim list\n"
        "  mailkeep dkim remove example.com mk202601r",
        formatter_class=_FORMAT, allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="dkim_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    keygen = commands.add_parser(
        "keygen", help="create the keys of a domain and print its DNS records",
        description="Create an RSA and an Ed25519 key for DOMAIN, active at once, and print "
        "the TXT records to publish. Selectors are named mk<YYYYMM>r and mk<YYYYMM>e, or "
        "<PREFIX>r and <PREFIX>e with --selector. Refused for a domain that is not in the "
        "configuration (unless --force) and for one that has keys already (use rotate).",
        epilog="Examples:\n  mailkeep dkim keygen example.com\n"
        "  mailkeep dkim keygen example.com --selector mail2026 --rsa-bits 3072",
        formatter_class=_FORMAT, allow_abbrev=False)
    keygen.add_argument("domain", metavar="DOMAIN")
    _key_options(keygen)
    keygen.add_argument("--force", action="store_true",
                        help="create keys even though DOMAIN is not a configured domain")
    add_config_argument(keygen)
    keygen.set_defaults(func=cmd_keygen)

    listing = commands.add_parser(
        "list", help="list selectors, their status and whether DNS still needs them",
        description="List the selectors of DOMAIN (or of every domain): algorithm, status, "
        "created and retired times, and what to do with the DNS record. A retired "
        "selector stays needed while queued mail is signed with it.",
        epilog="Examples:\n  mailkeep dkim list\n  mailkeep dkim list example.com",
        formatter_class=_FORMAT, allow_abbrev=False)
    listing.add_argument("domain", metavar="DOMAIN", nargs="?")
    add_config_argument(listing)
    listing.set_defaults(func=cmd_list)

    rotate = commands.add_parser(
        "rotate", help="replace a domain's keys with new ones",
        description="Create new keys for DOMAIN and sign with them from now on; the old "
        "selectors are retired. Publish the new records at once. Keep the old records "
        "until 'mailkeep dkim list' says they can be removed (no queued mail needs them), "
        "then delete them with 'mailkeep dkim remove'.",
        epilog="Examples:\n  mailkeep dkim rotate example.com\n"
        "  mailkeep dkim rotate example.com --selector mail2027",
        formatter_class=_FORMAT, allow_abbrev=False)
    rotate.add_argument("domain", metavar="DOMAIN")
    _key_options(rotate, rsa_default=None)
    add_config_argument(rotate)
    rotate.set_defaults(func=cmd_rotate)

    remove = commands.add_parser(
        "remove", help="delete a retired selector's key",
        description="Delete the key of a retired selector; its DNS record can then be "
        "deleted too. Refused for an active selector (rotate first) and for one that "
        "queued mail is still signed with, unless --force (e.g. after a key leaked: "
        "the queued mail will then fail DKIM).",
        epilog="Examples:\n  mailkeep dkim remove example.com mk202601r\n"
        "  mailkeep dkim remove example.com mk202601e --force",
        formatter_class=_FORMAT, allow_abbrev=False)
    remove.add_argument("domain", metavar="DOMAIN")
    remove.add_argument("selector", metavar="SELECTOR")
    remove.add_argument("--force", action="store_true",
                        help="remove it even if queued mail still needs it")
    add_config_argument(remove)
    remove.set_defaults(func=cmd_remove)

    dns = commands.add_parser(
        "dns", help="print the DNS TXT records of a domain's selectors",
        description="Print the TXT records to publish for DOMAIN: the active selectors and "
        "the retired ones not removed yet. Each is shown as name and value (for a DNS "
        "provider's web form) and as a zone-file line (long values split into strings of "
        "at most 255 octets).",
        epilog="Example:\n  mailkeep dkim dns example.com",
        formatter_class=_FORMAT, allow_abbrev=False)
    dns.add_argument("domain", metavar="DOMAIN")
    add_config_argument(dns)
    dns.set_defaults(func=cmd_dns)


def _key_options(parser: argparse.ArgumentParser, rsa_default: int | None = DEFAULT_RSA_BITS) -> None:
    parser.add_argument("--selector", metavar="PREFIX",
                        help="name the selectors PREFIXr and PREFIXe (default: mk<YYYYMM>r/e)")
    sizes = ", ".join(map(str, RSA_KEY_SIZES))
    default = f"default {rsa_default}" if rsa_default else "default: the size of the key it replaces"
    parser.add_argument("--rsa-bits", metavar="N", type=int, default=rsa_default,
                        help=f"RSA key size, one of {sizes} ({default})")


# -- helpers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueueUse:
    """Which "domain:selector" queued messages are signed with, or why that is unknown."""

    selectors: frozenset[str] | None
    error: str | None = None

    def needs(self, selector: Selector) -> bool | None:
        if self.selectors is None:
            return None
        return f"{selector.domain}:{selector.name}" in self.selectors


def queue_use(config: Config) -> QueueUse:
    """Ask the outbound queue which selectors its messages are signed with."""
    if not (config.data_dir / "queue").exists():
        # Nothing was ever queued; opening the queue would create it (as root, perhaps).
        return QueueUse(frozenset())
    try:
        # Imported here: the queue is a separate subsystem, and `dkim keygen` must work
        # even where it cannot be loaded.
        from mailkeep.queue.store import QueueStore

        store = QueueStore.for_data_dir(config.data_dir)
        try:
            return QueueUse(frozenset(store.selectors_in_use()))
        finally:
            store.close()
    except Exception as exc:  # reported to the user: list shows "unknown", remove refuses
        return QueueUse(None, f"{type(exc).__name__}: {exc}")


def _keys(config: Config) -> DkimKeys:
    return DkimKeys.for_data_dir(config.data_dir, owner=_file_owner(config))


def _file_owner(config: Config) -> tuple[int, int] | None:
    """Who the key files must belong to when this command runs as root: the server's
    run_as user (it reads them after dropping privileges), else the data directory's
    owner, like the password file."""
    if os.geteuid() != 0:
        return None
    if config.run_as:
        try:
            entry = pwd.getpwnam(config.run_as)
        except KeyError:
            raise DkimKeyError(f"run_as: there is no user {config.run_as!r} on this system") from None
        return entry.pw_uid, entry.pw_gid
    try:
        st = os.stat(config.data_dir)
    except FileNotFoundError:
        return None
    return st.st_uid, st.st_gid


def _canonical(domain: str) -> str:
    try:
        return canonical_domain(domain)
    except InvalidName as exc:
        raise DkimKeyError(str(exc)) from None


def _print_records(records: Iterable[tuple[str, str]]) -> None:
    records = list(records)
    for name, value in records:
        print(f"  {name}  TXT  {value}")
    print("\nIn zone-file syntax:")
    for name, value in records:
        print(zone_file_record(name, value))


def _describe(selectors: Iterable[Selector]) -> str:
    return ", ".join(f"{s.name} ({s.algorithm}{' ' + str(s.bits) if s.bits else ''})"
                     for s in selectors)


def _guarded(command: Callable[[argparse.Namespace, Config], int],
             ) -> Callable[[argparse.Namespace], int]:
    """The command with the configuration loaded; DkimKeyError becomes an error message
    and exit status 1, never a traceback."""
    def run(args: argparse.Namespace) -> int:
        config = load_or_report(args)
        if config is None:
            return 1
        try:
            return int(command(args, config))
        except DkimKeyError as exc:
            return fail(str(exc))
    run.__name__ = command.__name__
    return run


# -- commands ------------------------------------------------------------------------------

@_guarded
def cmd_keygen(args: argparse.Namespace, config: Config) -> int:
    domain = _canonical(args.domain)
    if domain not in config.domains and not args.force:
        return fail(f"{args.domain} is not a domain of this server (add it with 'mailkeep "
                    "domain add', or give --force to create keys anyway)")
    keys = _keys(config)
    created = keys.keygen(domain, selector_prefix=args.selector, rsa_bits=args.rsa_bits)
    print(f"created DKIM keys for {display_domain(domain)}: {_describe(created)}")
    print("Outgoing mail is signed with them from now on. Publish these DNS TXT records:\n")
    _print_records(keys.dns_records(domain))
    return 0


@_guarded
def cmd_rotate(args: argparse.Namespace, config: Config) -> int:
    domain = _canonical(args.domain)
    keys = _keys(config)
    new, retired = keys.rotate(domain, selector_prefix=args.selector, rsa_bits=args.rsa_bits)
    print(f"rotated the DKIM keys of {display_domain(domain)}: signing with {_describe(new)} "
          f"from now on; retired {_describe(retired)}")
    print("Publish these new DNS TXT records now:\n")
    records = dict(keys.dns_records(domain))
    _print_records((s.dns_name, records[s.dns_name]) for s in new)
    print("\nKeep the old records published until no queued message is signed with them "
          "('mailkeep dkim list' shows when), then run 'mailkeep dkim remove' and delete them:")
    use = queue_use(config)
    for selector in retired:
        needed = use.needs(selector)
        state = ("still needed by queued mail" if needed else
                 "not needed by queued mail now" if needed is False else
                 f"queue not readable ({use.error})")
        print(f"  {selector.dns_name}  ({state})")
    return 0


@_guarded
def cmd_list(args: argparse.Namespace, config: Config) -> int:
    keys = _keys(config)
    if args.domain:
        domains = [_canonical(args.domain)]
        if not keys.selectors(domains[0]):
            return fail(f"{args.domain} has no DKIM keys (create them with 'mailkeep dkim "
                        f"keygen {args.domain}')")
    else:
        domains = sorted(set(keys.domains()) | set(config.domains))
    use: QueueUse | None = None
    rows = [("DOMAIN", "SELECTOR", "ALGORITHM", "STATUS", "CREATED", "RETIRED", "DNS RECORD")]
    for domain in domains:
        selectors = keys.selectors(domain)
        if not selectors:
            rows.append((display_domain(domain), "-", "-", "no keys", "-", "-",
                         f"none (mailkeep dkim keygen {domain})"))
            continue
        for selector in selectors:
            if selector.status == "active":
                advice = "publish"
            else:
                use = use or queue_use(config)
                needed = use.needs(selector)
                advice = ("keep: queued mail is signed with it" if needed else
                          "can be removed" if needed is False else "keep: queue unknown")
            algorithm = selector.algorithm + (f" {selector.bits}" if selector.bits else "")
            rows.append((display_domain(domain), selector.name, algorithm, selector.status,
                         _day(selector.created), _day(selector.retired), advice))
    _print_table(rows)
    if use is not None and use.error:
        print(f"warning: cannot tell which retired selectors queued mail needs: {use.error}")
    return 0


@_guarded
def cmd_remove(args: argparse.Namespace, config: Config) -> int:
    domain = _canonical(args.domain)
    keys = _keys(config)
    name = args.selector.lower()
    selector = next((s for s in keys.selectors(domain) if s.name == name), None)
    if selector is not None and selector.status == "retired":
        use = queue_use(config)
        needed = use.needs(selector)
        if needed and not args.force:
            return fail(f"selector {name} of {domain} is still needed: queued mail is signed "
                        "with it and would fail DKIM at its destination. Try again once the "
                        "queue has delivered it, or give --force")
        if needed is None and not args.force:
            return fail(f"cannot tell whether queued mail needs selector {name} ({use.error}); "
                        "give --force to remove it anyway")
    # Unknown and active selectors are refused by remove() with the reason.
    removed = keys.remove(domain, args.selector)
    print(f"removed selector {removed.name} ({removed.algorithm}) of {display_domain(domain)}; "
          f"delete its DNS record {removed.dns_name} (TXT) too")
    return 0


@_guarded
def cmd_dns(args: argparse.Namespace, config: Config) -> int:
    domain = _canonical(args.domain)
    keys = _keys(config)
    selectors = keys.selectors(domain)
    if not selectors:
        return fail(f"{args.domain} has no DKIM keys (create them with 'mailkeep dkim keygen "
                    f"{args.domain}')")
    retired = [s.name for s in selectors if s.status == "retired"]
    print(f"DNS TXT records for {display_domain(domain)}"
          + (f" (retired, keep until removed: {', '.join(retired)})" if retired else "") + ":\n")
    _print_records(keys.dns_records(domain))
    return 0


def _day(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
