"""`mailkeep log trace ID`: a message's whole path, from every subsystem's log, in time order.

Every line about a message carries its id (``id=...``): the SMTP or submission receipt, the
policy's verdict, the store, the queue, each delivery attempt, and the bounce, whose own
lines carry the bounce's id, named in the original's ``dsn queued ... dsn_ids=...`` line
(followed unless ``--no-follow``). The command reads the files the server writes ([log]
``file``, or every file of ``dir`` and ``[log.files]``), with their rotated copies
(``name.1``, ``name.2.gz``, ``name-20260101``...), or the files given with ``--file``.
Lines in logfmt and in JSON are both understood.

With ``target = "journald"`` the journal has the lines: ``journalctl MAILKEEP_ID=ID``; with
``syslog``, give the syslog files with ``--file``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailkeep.cli.main import add_config_argument, config_path
from mailkeep.logfmt import parse_logfmt

EX_OK = 0
EX_NOT_FOUND = 1
EX_USAGE = 2
EX_CONFIG = 78

#: Lines longer than this are skipped (no log line of ours comes close).
MAX_LINE_CHARS = 1 << 20
#: Most lines printed for one trace; a message with more is reported as cut short.
MAX_TRACE_LINES = 100_000
#: Linked ids (bounces of bounces...) followed at most.
MAX_FOLLOW_ROUNDS = 4
#: Rotated copies of one log file read at most.
MAX_ROTATED = 1000
#: What an id looks like (queue ids, message ids): never a pattern, never a path.
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{4,64}")

EXAMPLES = """\
Examples:
  mailkeep log trace 0B8K5T3P4X2MQ1
  mailkeep log trace 0B8K5T3P4X2MQ1 --file /var/log/mailkeep/smtp.log --file queue.log
  mailkeep log trace 0B8K5T3P4X2MQ1 --no-follow
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "log", help="follow a message through the logs",
        description="Read the server's logs.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="log_action", metavar="ACTION")
    q = actions.add_parser(
        "trace", help="print every log line of one message, in time order",
        description="Print the log lines of one message (its queue id, as in 'OK id=...' "
        "or 'queued as ...'), from every subsystem's file and their rotated copies, in "
        "time order. The lines of the bounce a message caused are included.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(q)
    q.add_argument("id", metavar="ID", help="the message's id")
    q.add_argument("--file", action="append", default=[], metavar="FILE",
                   help="read this log file (repeatable); default: the files of [log]")
    q.add_argument("--no-follow", action="store_true",
                   help="do not include the lines of the bounces the message caused")
    q.set_defaults(func=cmd_trace)
    p.set_defaults(func=_missing_action, log_parser=p)


def _missing_action(args: argparse.Namespace) -> int:
    args.log_parser.print_help()
    return EX_USAGE


# -- finding the lines -------------------------------------------------------------------


@dataclass(frozen=True)
class TraceLine:
    ts: str          # ISO 8601 UTC, so that text order is time order ("" if absent)
    source: int      # order of the file read, then of the line in it: ties keep it
    line: int
    text: str
    fields: dict[str, str]


def parse_line(text: str) -> dict[str, str]:
    """The fields of a log line: JSON when it looks like an object, else logfmt."""
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return {}
        if not isinstance(doc, dict):
            return {}
        return {str(k): "" if v is None else str(v) for k, v in doc.items()}
    return parse_logfmt(text)


def _linked_ids(fields: dict[str, str]) -> set[str]:
    """Ids a line points to: the bounces queued for the message (``dsn_ids``)."""
    return {i for i in fields.get("dsn_ids", "").split(",") if i}


def _open_text(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:  # type: ignore[operator]
        yield from handle


def find_lines(paths: Iterable[Path], ids: set[str]) -> list[TraceLine]:
    """The lines of ``paths`` whose ``id`` is one of ``ids``."""
    found: list[TraceLine] = []
    for source, path in enumerate(paths):
        for number, raw in enumerate(_open_text(path)):
            if len(raw) > MAX_LINE_CHARS or not any(i in raw for i in ids):
                continue  # the cheap test first: most lines are about other messages
            text = raw.rstrip("\n")
            fields = parse_line(text)
            if fields.get("id") in ids:
                found.append(TraceLine(fields.get("ts", ""), source, number, text, fields))
    return found


def trace(paths: list[Path], message_id: str, *, follow: bool = True) -> list[TraceLine]:
    """Every line of ``message_id`` (and, with ``follow``, of the bounces it caused),
    sorted by time."""
    wanted = {message_id}
    lines = find_lines(paths, wanted)
    for _ in range(MAX_FOLLOW_ROUNDS if follow else 0):
        linked = set().union(*(_linked_ids(t.fields) for t in lines)) - wanted
        if not linked:
            break
        wanted |= linked
        lines += find_lines(paths, linked)
    return sorted(lines, key=lambda t: (t.ts, t.source, t.line))


# -- which files ---------------------------------------------------------------------------


def rotated_copies(path: Path) -> list[Path]:
    """``path`` and its rotated copies (ours: ``name.1``...; logrotate's, maybe
    compressed: ``name.2.gz``, ``name-20260101``), oldest last."""
    out = [path] if path.is_file() else []
    if not path.parent.is_dir():
        return out
    pattern = re.compile(re.escape(path.name) + r"[.-](\d+)(\.gz)?")
    copies = []
    for entry in path.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file():
            copies.append((int(match.group(1)), entry))
    # The order only breaks ties between lines of the same millisecond: lines are
    # sorted by their time.
    copies.sort(key=lambda c: c[0])
    return out + [entry for _n, entry in copies[:MAX_ROTATED]]


def configured_files(settings) -> list[Path]:
    """The files a ``[log]`` section (config.schema.LogConfig) makes the server write."""
    bases: list[Path] = []
    if settings.file is not None:
        bases.append(Path(settings.file))
    bases.extend(Path(p) for p in settings.files.values())
    if settings.dir is not None and Path(settings.dir).is_dir():
        bases.extend(sorted(p for p in Path(settings.dir).iterdir()
                            if p.name.endswith(".log")))
    paths: list[Path] = []
    for base in dict.fromkeys(bases):
        for path in rotated_copies(base):
            if path not in paths:
                paths.append(path)
    return paths


def cmd_trace(args: argparse.Namespace) -> int:
    message_id = args.id.strip()
    if not ID_PATTERN.fullmatch(message_id):
        print(f"mailkeep log trace: {message_id!r} is not a message id", file=sys.stderr)
        return EX_USAGE
    if args.file:
        paths = [Path(f) for f in args.file]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            print(f"mailkeep log trace: no such file: {', '.join(missing)}", file=sys.stderr)
            return EX_USAGE
    else:
        from mailkeep.config import ConfigError, load_config

        try:
            settings = load_config(config_path(args)).log
        except (ConfigError, OSError) as exc:
            print(f"mailkeep log trace: {exc}", file=sys.stderr)
            return EX_CONFIG
        if settings.target != "file":
            hint = {"journald": f"journalctl MAILKEEP_ID={message_id}",
                    "syslog": f"mailkeep log trace {message_id} --file /var/log/mail.log"}
            print(f"mailkeep log trace: the server logs to {settings.target}, not to files"
                  + (f"; try: {hint[settings.target]}" if settings.target in hint else
                     "; give the files with --file"), file=sys.stderr)
            return EX_USAGE
        paths = configured_files(settings)
        if not paths:
            print("mailkeep log trace: no log file found ([log] file, dir, files)",
                  file=sys.stderr)
            return EX_NOT_FOUND
    try:
        lines = trace(paths, message_id, follow=not args.no_follow)
    except OSError as exc:
        print(f"mailkeep log trace: {exc}", file=sys.stderr)
        return EX_NOT_FOUND
    if not lines:
        print(f"mailkeep log trace: no line with id={message_id} in "
              f"{len(paths)} file(s)", file=sys.stderr)
        return EX_NOT_FOUND
    out = sys.stdout
    for entry in lines[:MAX_TRACE_LINES]:
        out.write(entry.text + "\n")
    if len(lines) > MAX_TRACE_LINES:
        print(f"mailkeep log trace: {len(lines) - MAX_TRACE_LINES} more lines not shown",
              file=sys.stderr)
    return EX_OK


