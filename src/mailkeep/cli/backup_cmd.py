"""`mailkeep backup` and `mailkeep restore`: consistent backups while the server runs, and
verified restores (``mailkeep.backup``; docs/backup.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mailkeep.cli.mailbox_io import (
    EX_FAILED,
    EX_OK,
    EX_USAGE,
    command_fail,
    common_arguments,
    progress_bar,
)
from mailkeep.cli.main import config_path

BACKUP_EPILOG = """\
examples:
  mailkeep backup /srv/backup/mailkeep
      A new directory /srv/backup/mailkeep/mailkeep-<UTC time>/ with the data directory,
      the configuration file and manifest.json (sizes and SHA-256 of every file).
  mailkeep backup /srv/backup/mailkeep --keep 14
      The same, then remove all but the 14 newest backups there.
  mailkeep backup --verify /srv/backup/mailkeep/mailkeep-20250102T030405Z
      Read every file of a backup again and check it against the manifest.

The server may keep running: databases are copied with SQLite's online backup API and the
message files they name cannot be removed until they are copied. A backup that is
interrupted leaves no directory that looks complete.
"""

RESTORE_EPILOG = """\
examples:
  mailkeep restore /srv/backup/mailkeep/mailkeep-20250102T030405Z --new-uidvalidity
      Into the data_dir of the configuration (which must be empty or not exist), after a
      disaster: IMAP clients that synchronised after the backup fetch their mail again.
  mailkeep restore BACKUP --data-dir /var/lib/mailkeep --config-out /etc/mailkeep/mailkeep.toml
      On a new machine: the data directory and the configuration file.

Every checksum is checked before anything is written; the data directory appears complete
or not at all. Run the server as usual afterwards: it takes ownership of the data directory
for its run_as user.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser(
        "backup", help="back up the data directory and configuration (while running)",
        description="Make a consistent backup of the data directory and the configuration "
                    "file into a new directory in DEST, or verify one with --verify.",
        epilog=BACKUP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("dest", metavar="DEST", nargs="?",
                   help="directory that holds the backups (created if needed)")
    b.add_argument("--verify", metavar="BACKUP",
                   help="check every file of an existing backup against its manifest")
    b.add_argument("--keep", type=int, metavar="N",
                   help="afterwards, remove all but the N newest backups in DEST")
    _common_arguments(b)
    b.set_defaults(func=cmd_backup)

    r = subparsers.add_parser(
        "restore", help="restore a backup into an empty data directory",
        description="Restore a backup made by 'mailkeep backup' into an empty or new data "
                    "directory, after checking every file against the manifest.",
        epilog=RESTORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("source", metavar="BACKUP", help="the backup directory (mailkeep-<time>)")
    r.add_argument("--config-out", metavar="FILE",
                   help="also write the backed-up configuration file here")
    r.add_argument("--new-uidvalidity", action="store_true",
                   help="give every mailbox a new UIDVALIDITY, so that IMAP clients that "
                        "synchronised after the backup was made fetch it again instead of "
                        "trusting UIDs the restored store will give again")
    _common_arguments(r)
    r.set_defaults(func=cmd_restore)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser, "this data directory instead of the configuration's data_dir")


def _progress(args: argparse.Namespace, label: str):
    return progress_bar(args, label, byte_units=True)


def _load_config(args: argparse.Namespace):
    """(config or None, error text or None). Without --data-dir the configuration is
    required; with it, it is used when it loads (to include it in the backup)."""
    from mailkeep.config import ConfigError, load_config

    path = config_path(args)
    try:
        return load_config(path), None
    except (ConfigError, OSError) as exc:
        return None, f"cannot read the configuration {path}: {exc}"


def cmd_backup(args: argparse.Namespace) -> int:
    from mailkeep.backup import BackupError, create_backup
    from mailkeep.units import format_size

    if args.verify:
        if args.dest or args.keep is not None:
            return command_fail("backup", "--verify takes only the backup to check", EX_USAGE)
        return _verify(args)
    if not args.dest:
        return command_fail("backup", "give DEST, the directory for the backups (or --verify "
                            "BACKUP)", EX_USAGE)
    if args.keep is not None and args.keep < 1:
        return command_fail("backup", "--keep must be at least 1", EX_USAGE)
    config, error = _load_config(args)
    if args.data_dir:
        data_dir = Path(args.data_dir)
        if config is None and args.config:
            return command_fail("backup", error or "", EX_USAGE)
    elif config is None:
        return command_fail("backup", f"{error} (or give --data-dir DIR)", EX_USAGE)
    else:
        data_dir = config.data_dir
    if config is None:
        print("mailkeep backup: no configuration file is included (none was read); back it "
              "up yourself or pass --config", file=sys.stderr)
    else:
        _warn_outside(config, data_dir)
    started = time.monotonic()
    try:
        with _progress(args, "Backing up") as progress:
            report = create_backup(data_dir, Path(args.dest),
                                   config_path=config.path if config else None,
                                   keep=args.keep, progress=progress)
    except BackupError as exc:
        return command_fail("backup", str(exc))
    except OSError as exc:
        return command_fail("backup", f"{exc.filename or ''}: {exc.strerror or exc}")
    counts = report.manifest.counts
    print(f"Backed up {data_dir} to {report.path} in {time.monotonic() - started:.1f} s: "
          f"{len(report.manifest.files)} files, {format_size(report.manifest.total_bytes)}; "
          f"{counts.get('accounts', 0)} accounts, {counts.get('mailboxes', 0)} mailboxes, "
          f"{counts.get('messages', 0)} messages, {counts.get('queue_entries', 0)} queued.")
    for rel, reason in report.skipped:
        print(f"  not backed up: {rel} ({reason})", file=sys.stderr)
    for path in report.stale_removed:
        print(f"Removed {path}, left by an interrupted backup.")
    for path in report.removed_old:
        print(f"Removed the old backup {path}.")
    return EX_OK


def _warn_outside(config, data_dir: Path) -> None:
    """Files the configuration names outside the data directory are not in the backup."""
    for name in ("cert", "key"):
        path = getattr(config.tls, name, None)
        if path is not None and not Path(path).resolve().is_relative_to(data_dir.resolve()):
            print(f"mailkeep backup: [tls] {name} = {path} is outside the data directory "
                  "and not included; back it up separately", file=sys.stderr)


def _verify(args: argparse.Namespace) -> int:
    from mailkeep.backup import BackupError, CorruptBackup, verify_backup
    from mailkeep.units import format_size

    try:
        with _progress(args, "Verifying") as progress:
            manifest = verify_backup(Path(args.verify), progress=progress)
    except CorruptBackup as exc:
        print(f"mailkeep backup: {exc.path} is DAMAGED:", file=sys.stderr)
        for problem in exc.problems[:50]:
            print(f"  {problem}", file=sys.stderr)
        if len(exc.problems) > 50:
            print(f"  ... and {len(exc.problems) - 50} more", file=sys.stderr)
        return EX_FAILED
    except BackupError as exc:
        return command_fail("backup", str(exc))
    print(f"{args.verify}: OK, {len(manifest.files)} files, "
          f"{format_size(manifest.total_bytes)}, made {manifest.created} on "
          f"{manifest.hostname} (Mailkeep {manifest.mailkeep_version}).")
    return EX_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from mailkeep.backup import BackupError, CorruptBackup, restore_backup

    if args.data_dir:
        target = Path(args.data_dir)
    else:
        config, error = _load_config(args)
        if config is None:
            return command_fail("restore", f"{error} (or give --data-dir DIR)", EX_USAGE)
        target = config.data_dir
    started = time.monotonic()
    try:
        report = restore_backup(
            Path(args.source), target,
            config_out=Path(args.config_out) if args.config_out else None,
            new_uidvalidity=args.new_uidvalidity,
            progress=lambda label: _progress(args, label))
    except CorruptBackup as exc:
        print(f"mailkeep restore: nothing was restored: {exc.path} is damaged:",
              file=sys.stderr)
        for problem in exc.problems[:50]:
            print(f"  {problem}", file=sys.stderr)
        return EX_FAILED
    except BackupError as exc:
        return command_fail("restore", f"nothing was restored: {exc}")
    except OSError as exc:
        return command_fail("restore", f"nothing was restored: {exc.filename or ''}: "
                                       f"{exc.strerror or exc}")
    counts = report.manifest.counts
    print(f"Restored {args.source} (made {report.manifest.created} on "
          f"{report.manifest.hostname}) into {target} in {time.monotonic() - started:.1f} s: "
          f"{counts.get('accounts', 0)} accounts, {counts.get('mailboxes', 0)} mailboxes, "
          f"{counts.get('messages', 0)} messages, {counts.get('queue_entries', 0)} queued; "
          "every file checked.")
    if report.config_written:
        print(f"Configuration: {report.config_written}")
    if not args.new_uidvalidity:
        print("Note: if IMAP clients synchronised with the server after this backup was "
              "made, restore with --new-uidvalidity instead (docs/backup.md).")
    if report.config_data_dir is not None:
        print(f"mailkeep restore: the restored configuration says data_dir = "
              f"{report.config_data_dir}; set it to {target}", file=sys.stderr)
    return EX_OK
