"""`mailkeep config check`, and the helpers every configuration-editing command shares.

``load_or_report`` and ``run_edit`` turn ConfigError and EditError into readable messages
on standard error (never a traceback), so ``domain``, ``account`` and ``alias`` behave the
same way when something is wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

import tomlkit

from mailkeep.cli.main import add_config_argument, config_path
from mailkeep.config import Config, ConfigError, load_config
from mailkeep.config.edit import EditError, EditResult, edit_config

T = TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps one-paragraph descriptions to the terminal; keeps text with line breaks (the
    examples in epilogs) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def fail(message: str, code: int = 1) -> int:
    """Print an error for the user; the exit code of a failed command (``code``)."""
    print(f"mailkeep: error: {message}", file=sys.stderr)
    return code


def report_config_error(exc: ConfigError, intro: str | None = None) -> int:
    if intro:
        print(f"mailkeep: {intro}", file=sys.stderr)
    for issue in exc.errors:
        print(f"error: {issue}", file=sys.stderr)
    return 1


def load_or_report(args: argparse.Namespace) -> Config | None:
    """The configuration named by --config, or None after printing why it cannot be used."""
    try:
        return load_config(config_path(args))
    except ConfigError as exc:
        report_config_error(exc)
        return None


def run_edit(args: argparse.Namespace, change: Callable[[tomlkit.TOMLDocument], T]) -> EditResult[T] | None:
    """Apply ``change`` with ``edit_config``; None (after printing why) if it was refused."""
    try:
        result = edit_config(config_path(args), change)
    except EditError as exc:
        fail(str(exc))
        return None
    except ConfigError as exc:
        report_config_error(exc, "the change was refused; the configuration would be invalid "
                            "(nothing was written):")
        return None
    if result.notified:
        print("the running server was told to reload its configuration")
    return result


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "config", help="check the configuration file",
        description="Commands about the configuration file (mailkeep.toml).",
        epilog="Examples:\n  mailkeep config check\n  mailkeep config check -c /etc/mailkeep/mailkeep.toml",
        formatter_class=HelpFormatter, allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    check = commands.add_parser(
        "check", help="validate the configuration and the password file",
        description="Validate the configuration file: syntax, unknown keys, limits, domains, "
        "accounts, aliases (loops, targets), postmaster@ and abuse@ of every domain, the "
        "certificate files, the run_as user and the password file. Prints every error "
        "(exit status 1), or OK and any warnings (exit status 0).",
        epilog="Examples:\n  mailkeep config check\n  MAILKEEP_CONFIG=./mailkeep.toml mailkeep config check",
        formatter_class=HelpFormatter, allow_abbrev=False,
    )
    add_config_argument(check)
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from mailkeep.config.check import check_config

    config = load_or_report(args)
    if config is None:
        return 1
    errors, warnings = check_config(config)
    for issue in errors:
        print(f"error: {issue}", file=sys.stderr)
    for issue in [*config.warnings, *warnings]:
        print(f"warning: {issue}")
    if errors:
        return 1
    print(f"OK: {config.path} ({len(config.domains)} domain(s), {len(config.accounts)} "
          f"account(s), {len(config.aliases)} alias(es))")
    return 0
