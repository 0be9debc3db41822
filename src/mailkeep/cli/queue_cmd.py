"""`mailkeep queue`: look at and administer the outbound queue (like Postfix's mailq and
postsuper).

``list`` prints mailq-style output; ``show`` one message's envelope, recipients and header;
``hold``, ``release``, ``delete``, ``retry`` act on queue ids (or ``--all``); ``flush``
makes everything due now. After a change the running server is told with SIGUSR1, so that
it looks at the queue again at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from mailkeep.cli.main import add_config_argument, config_path

EX_OK = 0
EX_FAILURE = 1
EX_NOPERM = 77
EX_TEMPFAIL = 75
EX_CONFIG = 78

#: Most bytes of a message's header that ``show`` prints.
MAX_SHOW_HEADER_BYTES = 64 * 1024

log = logging.getLogger("mailkeep.cli")

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")

EXAMPLES = """\
Examples:
  mailkeep queue list
  mailkeep queue show 0B8K5T3P4X2MQ1
  mailkeep queue hold 0B8K5T            (an id prefix of 6 or more characters is enough)
  mailkeep queue release --all
  mailkeep queue retry 0B8K5T3P4X2MQ1   (try again now)
  mailkeep queue delete 0B8K5T3P4X2MQ1  (no bounce is sent)
  mailkeep queue flush                  (try everything again now)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "queue",
        help="list and administer the outbound mail queue",
        description="Look at the outbound queue (mail waiting to be sent to other servers) "
        "and act on it. Changes are durable at once; a running server is told with SIGUSR1.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="queue_action", metavar="ACTION")

    def action(name: str, help_text: str, description: str, *, ids: bool,
               example: str) -> argparse.ArgumentParser:
        q = actions.add_parser(name, help=help_text, description=description,
                               epilog=f"Example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_argument(q)
        if ids:
            q.add_argument("ids", nargs="*", metavar="ID",
                           help="queue ids as mailq shows them, or prefixes of at least 6 "
                                "characters")
            q.add_argument("--all", action="store_true", help="every queued message")
        q.set_defaults(func=cmd_queue, queue_action=name)
        return q

    action("list", "list queued messages (like mailq)",
           "List queued messages, oldest first: queue id ('!' after it: on hold), size, "
           "arrival time and sender, then each recipient still to be delivered with the "
           "last reason in parentheses.", ids=False, example="mailkeep queue list")
    q = action("show", "show one message: envelope, recipients, header",
               "Show a queued message's envelope, the state of each recipient and the "
               "message header.", ids=False, example="mailkeep queue show 0B8K5T3P4X2MQ1")
    q.add_argument("id", metavar="ID", help="queue id or a prefix of at least 6 characters")
    action("hold", "put messages on hold (not sent until released)",
           "Put messages on hold: they stay in the queue but are not sent until released.",
           ids=True, example="mailkeep queue hold 0B8K5T3P4X2MQ1")
    action("release", "release held messages (sent at once)",
           "Release held messages; they are tried again at once.", ids=True,
           example="mailkeep queue release --all")
    action("delete", "remove messages from the queue without a bounce",
           "Remove messages from the queue. Nobody is notified: the sender gets no bounce.",
           ids=True, example="mailkeep queue delete 0B8K5T3P4X2MQ1")
    action("retry", "try messages again now",
           "Make messages due now instead of at their next scheduled retry. Held messages "
           "stay held.", ids=True, example="mailkeep queue retry --all")
    action("flush", "try every message again now (retry --all)",
           "Make every message that is not on hold due now, like 'postqueue -f'.",
           ids=False, example="mailkeep queue flush")
    p.set_defaults(func=_missing_action, queue_parser=p)


def _missing_action(args: argparse.Namespace) -> int:
    args.queue_parser.print_help()
    return 2


def cmd_queue(args: argparse.Namespace) -> int:
    from mailkeep.config import ConfigError, load_config

    try:
        config = load_config(config_path(args))
    except (ConfigError, OSError) as exc:
        print(f"mailkeep queue: {exc}", file=sys.stderr)
        return EX_CONFIG
    action = args.queue_action
    if action in ("hold", "release", "delete", "retry"):
        if args.all and args.ids:
            print(f"mailkeep queue {action}: give queue ids or --all, not both",
                  file=sys.stderr)
            return 2
        if not args.all and not args.ids:
            print(f"mailkeep queue {action}: give one or more queue ids, or --all",
                  file=sys.stderr)
            return 2
    store, status = open_queue(config.data_dir, "mailkeep queue")
    if store is None:
        return status
    try:
        if action == "list":
            print_queue(store, sys.stdout)
            return EX_OK
        if action == "show":
            return _show(store, args.id)
        if action == "flush":
            changed = store.retry(None)
            print(f"{_count(changed)} scheduled for immediate delivery")
            signal_server(config)
            return EX_OK
        return _change(store, config, action, None if args.all else args.ids)
    except Exception as exc:
        from mailkeep.queue.store import QueueError

        if not isinstance(exc, QueueError):
            raise
        print(f"mailkeep queue: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        store.close()


def open_queue(data_dir: Path, who: str):  # -> tuple[QueueStore | None, int]
    """Open the queue of ``data_dir`` for a command, or explain on stderr why not."""
    from mailkeep.queue.store import QueueError, QueueStore

    try:
        return QueueStore.for_data_dir(data_dir), EX_OK
    except PermissionError as exc:
        print(f"{who}: no permission to read the queue in {data_dir / 'queue'} ({exc.strerror}); "
              "run this as the user the server runs as", file=sys.stderr)
        return None, EX_NOPERM
    except (QueueError, OSError) as exc:
        if "readonly" in str(exc) or "unable to open" in str(exc) or \
                isinstance(exc.__cause__, PermissionError):
            print(f"{who}: no permission to use the queue in {data_dir / 'queue'}: {exc}; "
                  "run this as the user the server runs as", file=sys.stderr)
            return None, EX_NOPERM
        print(f"{who}: cannot open the queue: {exc}", file=sys.stderr)
        return None, EX_TEMPFAIL


def _resolve(store, patterns: list[str]) -> tuple[list[str], int]:
    """Queue ids named by ``patterns``; problems are reported on stderr."""
    found: list[str] = []
    status = EX_OK
    for pattern, ids in store.match_ids(patterns).items():
        if not ids:
            print(f"mailkeep queue: {_clean(pattern)}: no such queued message", file=sys.stderr)
            status = EX_FAILURE
        elif len(ids) > 1:
            print(f"mailkeep queue: {_clean(pattern)} matches {len(ids)} messages; give more "
                  "characters of the id", file=sys.stderr)
            status = EX_FAILURE
        else:
            found.append(ids[0])
    return found, status


_DONE = {"hold": "placed on hold", "release": "released from hold", "delete": "deleted",
         "retry": "scheduled for immediate delivery"}


def _change(store, config, action: str, patterns: list[str] | None) -> int:
    status = EX_OK
    ids: list[str] | None = None
    if patterns is not None:
        ids, status = _resolve(store, patterns)
        if not ids:
            return status
    changed = getattr(store, action)(ids)
    print(f"{_count(changed)} {_DONE[action]}")
    if changed:
        signal_server(config)
    return status


def _count(n: int) -> str:
    return f"{n} message" if n == 1 else f"{n} messages"


def print_queue(store, out: TextIO) -> None:
    """mailq output: one block per message, oldest first, as Postfix prints it."""
    entries = store.list()
    if not entries:
        out.write("Mail queue is empty\n")
        return
    width = max(12, *(len(e.queue_id) for e in entries))
    out.write(f"{'-Queue ID-':<{width + 1}} {'--Size--':>8} {'----Arrival Time----':<20}  "
              "-Sender/Recipient-------\n")
    indent = " " * (width + 1 + 1 + 8 + 1 + 20 + 2)
    total = 0
    for entry in entries:
        total += entry.size
        mark = "!" if entry.hold else " "
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(entry.created))
        sender = _clean(entry.sender) if entry.sender else "MAILER-DAEMON"
        out.write(f"{entry.queue_id + mark:<{width + 1}} {entry.size:>8} {arrival:<20}  "
                  f"{sender}\n")
        last_reason: str | None = None
        for rcpt in entry.pending():
            reason = _reason(rcpt.last_code, rcpt.last_text) or (
                _clean(entry.last_error) if entry.last_error else None)
            if reason and reason != last_reason:
                out.write(f"{indent}({reason})\n")
            last_reason = reason
            out.write(f"{indent}{_clean(rcpt.address)}\n")
        out.write("\n")
    requests = len(entries)
    kbytes = (total + 1023) // 1024
    out.write(f"-- {kbytes} Kbytes in {requests} Request{'s' if requests != 1 else ''}.\n")


def _show(store, pattern: str) -> int:
    ids, status = _resolve(store, [pattern])
    if not ids:
        return status
    entry = store.get(ids[0])
    if entry is None:
        print(f"mailkeep queue: {ids[0]}: no longer queued", file=sys.stderr)
        return EX_FAILURE
    out = sys.stdout
    now = time.time()
    if entry.hold:
        state = "on hold"
    elif entry.next_attempt <= now:
        state = "due now"
    else:
        state = f"waiting, next attempt {_when(entry.next_attempt)}"
    rows = [
        ("Queue ID", entry.queue_id),
        ("State", state),
        ("Sender", f"<{_clean(entry.sender)}>" + (" (null sender)" if not entry.sender else "")),
        ("Arrival", _when(entry.created)),
        ("Size", f"{entry.size} bytes"),
        ("Kind", entry.kind),
        ("Account", _clean(entry.account) if entry.account else "-"),
        ("Attempts", str(entry.attempts)),
        ("Last error", _clean(entry.last_error) if entry.last_error else "-"),
        ("Delay warning", "sent" if entry.warned else "not sent"),
    ]
    dsn = " ".join(p for p in (f"ENVID={_clean(entry.envid)}" if entry.envid else "",
                               f"RET={entry.ret}" if entry.ret else "") if p)
    if dsn:
        rows.append(("DSN", dsn))
    options = " ".join(o for o in ("SMTPUTF8" if entry.smtputf8 else "",
                                   entry.body_type or "",
                                   "REQUIRETLS" if entry.requiretls else "") if o)
    if options:
        rows.append(("Options", options))
    if entry.dkim_selectors:
        rows.append(("DKIM", " ".join(entry.dkim_selectors)))
    for label, value in rows:
        out.write(f"{label + ':':<15}{value}\n")
    out.write("Recipients:\n")
    for rcpt in entry.recipients:
        extra = []
        if rcpt.notify is not None:
            extra.append("NOTIFY=" + ",".join(rcpt.notify))
        if rcpt.orcpt is not None:
            extra.append(f"ORCPT={_clean(rcpt.orcpt[0])};{_clean(rcpt.orcpt[1])}")
        extra.append(f"attempts={rcpt.attempts}")
        out.write(f"  <{_clean(rcpt.address)}>  {rcpt.status}  {' '.join(extra)}\n")
        reason = _reason(rcpt.last_code, rcpt.last_text)
        if reason:
            via = f" ({_clean(rcpt.remote_mta)})" if rcpt.remote_mta else ""
            out.write(f"      last reply{via}: {reason}\n")
    out.write("\n")
    try:
        with open(store.message_path(entry.queue_id), "rb") as f:
            head = f.read(MAX_SHOW_HEADER_BYTES)
    except FileNotFoundError:
        out.write("(the message file is gone)\n")
        return status
    end = head.find(b"\r\n\r\n")
    header = head[:end + 2] if end >= 0 else head
    text = header.decode("utf-8", "replace").replace("\r\n", "\n")
    out.write("".join(_clean(line) + "\n" for line in text.splitlines()))
    if end < 0 and len(head) == MAX_SHOW_HEADER_BYTES:
        out.write(f"(header cut at {MAX_SHOW_HEADER_BYTES} bytes)\n")
    return status


def _reason(code: int | None, text: str | None) -> str | None:
    if not text and code is None:
        return None
    text = _clean(text or "")
    if code is not None and not text.startswith(str(code)):
        text = f"{code} {text}".strip()
    return text


def _clean(text: str) -> str:
    """Text from the network, safe for a terminal (no escape sequences, one line)."""
    return _UNPRINTABLE.sub("?", text)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(stamp))


def signal_server(config) -> bool:
    """Tell a running server to look at the queue again (SIGUSR1). True if signalled.

    As for reloads (config.edit.notify_server), the pid file may be stale and its number
    reused by another program, which SIGUSR1 would likely kill: the process must look like
    Mailkeep first. Not running, or not ours to signal, is fine: the server rescans the
    queue on its own schedule too.
    """
    from mailkeep.config.edit import _looks_like_mailkeep

    try:
        text = config.pidfile.read_text(encoding="ascii", errors="replace")[:32]
        pid = int(text.strip())
    except (OSError, ValueError):
        return False
    if pid <= 1 or not _looks_like_mailkeep(pid):
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except (ProcessLookupError, PermissionError):
        return False
    return True
