"""`mailkeep` command-line entry point.

Each command noun lives in its own module exposing ``register(subparsers)``; the module
adds its parser(s) and sets ``func`` on them. ``func(args) -> int`` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mailkeep import __version__

# Modules that provide commands, in the order `mailkeep --help` lists them.
COMMAND_MODULES = [
    "mailkeep.cli.server_cmds",   # localserve, serve
    "mailkeep.cli.quickstart_cmd",  # quickstart
    "mailkeep.cli.config_cmd",    # config check
    "mailkeep.cli.domain",        # domain add|list|remove
    "mailkeep.cli.account",       # account add|list|remove|passwd|import-passwd
    "mailkeep.cli.alias",         # alias add|list|remove
    "mailkeep.cli.mailbox_io",    # export, import
    "mailkeep.cli.deliver_cmd",   # deliver (LDA)
    "mailkeep.cli.dkim_cmd",      # dkim keygen|list|rotate|remove|dns
    "mailkeep.cli.cert_cmd",      # cert status|renew
    "mailkeep.cli.dns_cmd",       # dns records
    "mailkeep.cli.check_cmd",     # check
    "mailkeep.cli.queue_cmd",     # queue list|show|hold|release|delete|retry|flush
    "mailkeep.cli.ban_cmd",       # ban list|add|lift
    "mailkeep.cli.dmarc_cmd",     # dmarc reports|import|send
    "mailkeep.cli.sendmail_cmd",  # sendmail (and mailq)
    "mailkeep.cli.log_cmd",       # log trace
    "mailkeep.cli.backup_cmd",    # backup, restore
    "mailkeep.cli.migrate_cmd",   # migrate (from Postfix + Dovecot)
]

DEFAULT_CONFIG = "/etc/mailkeep/mailkeep.toml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailkeep",
        description="Mailkeep: a complete, secure, self-hosted mail server.",
        epilog="Run 'mailkeep COMMAND --help' for the options and examples of each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mailkeep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The --config option shared by every command that reads the configuration."""
    parser.add_argument(
        "-c", "--config", default=None, metavar="FILE",
        help=f"configuration file (default: $MAILKEEP_CONFIG or {DEFAULT_CONFIG})",
    )


def config_path(args: argparse.Namespace) -> str:
    import os

    return args.config or os.environ.get("MAILKEEP_CONFIG") or DEFAULT_CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
