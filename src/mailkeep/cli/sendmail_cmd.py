"""`mailkeep sendmail` (and the `mailkeep-sendmail` / `mailkeep-mailq` programs): the
sendmail command-line interface that cron, scripts and mail programs expect.

The message is read from standard input and dropped into the queue's maildrop
(``queue/maildrop.py``), which the server picks up; exit status 0 means it is on disk.
Options follow sendmail and Postfix's sendmail(1): -t, -f, -F, -i/-oi, -bm, -bp, -q, -N,
-R, -V, -B, and the -o options scripts pass (unknown ones are ignored with a warning, as
Postfix does). Exit statuses follow sysexits.h.

Installed as ``sendmail`` (a link named so), it behaves as sendmail; named ``mailq``, it
lists the queue.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.cli.main import DEFAULT_CONFIG

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

_DROP_ERROR_STATUS = {"usage": EX_USAGE, "data": EX_DATAERR, "size": EX_DATAERR,
                      "address": EX_NOUSER, "io": EX_TEMPFAIL}

# Options that take a value (attached, "-fme@example.com", or as the next argument), and
# options that do not, after sendmail(8) and Postfix's sendmail(1).
_WITH_VALUE = set("ABCFLNORVXbdfhopr")
_FLAGS = set("GIimntUv")
#: -o options scripts commonly pass that mean nothing here (delivery and error modes,
#: "me too", 7/8-bit hints): accepted silently. Others get a warning.
_QUIET_O_OPTIONS = ("i", "d", "e", "m", "7", "8")

HELP = f"""\
usage: mailkeep sendmail [options] [recipient ...]
       mailkeep-sendmail [options] [recipient ...]     (installed as 'sendmail')
       mailkeep-mailq                                  (installed as 'mailq')

Read a message on standard input and queue it for delivery. Line ends may be LF or
CRLF. A line with a single "." ends the message unless -i or -oi is given.

options:
  -t             take recipients from the To, Cc and Bcc fields (added to those given
                 as arguments); Bcc fields are always removed from the message
  -f SENDER      envelope sender (default: chosen by the server from your login); -f '<>'
                 for the null sender. -r is the same.
  -F NAME        your full name, for the From field added when the message has none
  -i, -oi        a line with a single "." does not end the message
  -bm            read a message and queue it (the default)
  -bp            list the queue (like mailq)
  -q             try every queued message again now (like 'mailkeep queue flush')
  -N DSN         when to notify the sender: "never", or a comma-separated list of
                 "success", "delay", "failure" (RFC 3461)
  -R RET         what a bounce returns: "full" or "hdrs"
  -V ENVID       an envelope id for delivery status notifications
  -B TYPE        body type: 7BIT or 8BITMIME
  -v             report what was done on standard error
  -C FILE, --config FILE
                 Mailkeep configuration (default: $MAILKEEP_CONFIG or {DEFAULT_CONFIG})
  --help         this help
Accepted and ignored for compatibility: -odi, -odb, -oem and other -o options (a warning
for unknown ones), -G, -I, -m, -n, -U, -h N, -L, -O, -X, -p, -A.

Exit status (sysexits.h): 0 queued; 64 usage (bad option, no recipient); 65 bad input
(message too large, header too large); 67 bad recipient address; 75 temporary failure
(the mail system cannot take the message now: try again later); 78 configuration error.

Examples:
  echo "Subject: test" | mailkeep sendmail me@example.com
  mailkeep sendmail -t -oi < message.eml
  printf 'To: ops@example.com\\nSubject: backup done\\n\\nOK\\n' | sendmail -t
  mailkeep sendmail -bp
"""


class UsageError(Exception):
    pass


@dataclass
class Options:
    mode: str = "m"  # "m" queue a message, "p" list the queue, "q" flush, "i" newaliases
    sender: str | None = None
    full_name: str | None = None
    extract: bool = False
    ignore_dots: bool = False
    verbose: bool = False
    notify: tuple[str, ...] | None = None
    ret: str | None = None
    envid: str | None = None
    body_type: str | None = None
    config: str | None = None
    recipients: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    help: bool = False


def parse_sendmail_args(argv: list[str]) -> Options:
    """Parse sendmail's command line (POSIX getopt style: options end at the first
    recipient or at "--"). Raises UsageError."""
    opts = Options()
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            index += 1
            break
        if arg in ("--help", "-?"):
            opts.help = True
            index += 1
            continue
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                opts.config = arg.split("=", 1)[1]
            else:
                index += 1
                if index >= len(argv):
                    raise UsageError("--config needs a file name")
                opts.config = argv[index]
            index += 1
            continue
        if arg.startswith("--") or not arg.startswith("-") or arg == "-":
            if arg.startswith("--"):
                raise UsageError(f"unknown option {arg}")
            break
        # A cluster of single-letter options ("-ti"), the last of which may take a value.
        pos = 1
        while pos < len(arg):
            letter = arg[pos]
            if letter == "q":
                _apply_q(opts, arg[pos + 1:])
                break
            if letter in _FLAGS:
                _apply_flag(opts, letter)
                pos += 1
                continue
            if letter in _WITH_VALUE:
                value = arg[pos + 1:]
                if not value:
                    index += 1
                    if index >= len(argv):
                        raise UsageError(f"option -{letter} needs a value")
                    value = argv[index]
                _apply_value(opts, letter, value)
                break
            raise UsageError(f"unknown option -{letter}")
        index += 1
    opts.recipients.extend(argv[index:])
    return opts


def _apply_flag(opts: Options, letter: str) -> None:
    if letter == "t":
        opts.extract = True
    elif letter == "i":
        opts.ignore_dots = True
    elif letter == "v":
        opts.verbose = True
    elif letter == "I":
        opts.mode = "i"
    # -G (gateway), -m (me too), -n (no aliasing), -U (initial submission): no meaning here.


def _apply_q(opts: Options, rest: str) -> None:
    if rest == "" or rest.startswith(("R", "S", "I")):
        # -q, and -qRsite / -qSsender / -qIid: flush (everything: the queue decides order).
        opts.mode = "q"
    else:
        # -q30m: periodic queue runs are the server's own business.
        opts.warnings.append(f"-q{rest}: ignored (the server retries on its own schedule)")


def _apply_value(opts: Options, letter: str, value: str) -> None:
    if letter in ("f", "r"):
        opts.sender = value
    elif letter == "F":
        opts.full_name = value.replace("\r", " ").replace("\n", " ")
    elif letter == "b":
        mode = value[:1]
        if mode in ("m", "p", "i"):
            opts.mode = mode
        elif mode == "s":
            raise UsageError("-bs (SMTP on standard input) is not supported; connect to the "
                             "submission port instead")
        elif mode in ("d", "D"):
            raise UsageError("-bd: run 'mailkeep serve' to start the server")
        else:
            raise UsageError(f"-b{value}: mode not supported")
    elif letter == "o":
        if value == "i":
            opts.ignore_dots = True
        elif not value.startswith(_QUIET_O_OPTIONS):
            opts.warnings.append(f"-o{value}: option ignored")
    elif letter == "N":
        words = tuple(w.strip().upper() for w in value.split(",") if w.strip())
        if words == ("NEVER",):
            opts.notify = words
        elif words and all(w in ("SUCCESS", "DELAY", "FAILURE") for w in words):
            opts.notify = tuple(dict.fromkeys(words))
        else:
            raise UsageError(f"-N {value}: give 'never' or a list of success, delay, failure")
    elif letter == "R":
        ret = value.upper()
        if ret not in ("FULL", "HDRS"):
            raise UsageError(f"-R {value}: give 'full' or 'hdrs'")
        opts.ret = ret
    elif letter == "V":
        # RFC 3461 §4.4: at most 100 printable ASCII characters.
        if not 0 < len(value) <= 100 or not all(0x20 < ord(c) < 0x7F for c in value):
            raise UsageError("-V: the envelope id must be 1 to 100 printable ASCII characters")
        opts.envid = value
    elif letter == "B":
        body = value.upper()
        if body not in ("7BIT", "8BITMIME"):
            raise UsageError(f"-B {value}: give 7BIT or 8BITMIME")
        opts.body_type = body
    elif letter == "C":
        opts.config = value
    elif letter in ("O", "X", "d"):
        opts.warnings.append(f"-{letter} {value}: option ignored")
    # -L label, -h hops, -p protocol, -A mode: no meaning here, accepted silently.


# -- running -----------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    # sendmail's options are not argparse's ("-oi", "-fme@example.com", "-bp"): take every
    # argument as is ("+" is not a sendmail option character) and parse them ourselves.
    p = sub.add_parser("sendmail", prefix_chars="+", add_help=False,
                       help="queue a message from standard input (sendmail compatible)",
                       description="sendmail-compatible submission; see 'mailkeep sendmail "
                       "--help'.")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: run_sendmail(args.args))


def run_sendmail(argv: list[str], *, stdin=None, stdout=None, stderr=None) -> int:
    """Run sendmail with ``argv`` (without the program name); returns the exit status."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    try:
        opts = parse_sendmail_args(argv)
    except UsageError as exc:
        print(f"sendmail: {exc} (see 'mailkeep sendmail --help')", file=stderr)
        return EX_USAGE
    if opts.help:
        stdout.write(HELP)
        return EX_OK
    for warning in opts.warnings:
        print(f"sendmail: warning: {warning}", file=stderr)
    if opts.mode == "i":
        print("sendmail: nothing to rebuild: Mailkeep reads aliases from its configuration",
              file=stderr)
        return EX_OK
    config, status = _load_config(opts.config, stderr)
    if config is None:
        return status
    if opts.mode == "p":
        return _mailq(config, stdout, stderr)
    if opts.mode == "q":
        return _flush(config, stdout, stderr)
    return _submit(config, opts, stdin, stderr)


def _load_config(path: str | None, stderr):
    from mailkeep.config import ConfigError, load_config

    path = path or os.environ.get("MAILKEEP_CONFIG") or DEFAULT_CONFIG
    try:
        return load_config(path), EX_OK
    except PermissionError:
        print(f"sendmail: cannot read the configuration {path}: permission denied",
              file=stderr)
        return None, EX_CONFIG
    except (ConfigError, OSError) as exc:
        print(f"sendmail: {exc}", file=stderr)
        return None, EX_CONFIG


def _submit(config, opts: Options, stdin, stderr) -> int:
    from mailkeep.cli.queue_cmd import signal_server
    from mailkeep.queue.maildrop import DropError, write_drop

    maildrop = config.data_dir / "queue" / "maildrop"
    try:
        path = write_drop(maildrop, opts.sender, opts.recipients, stdin,
                          extract_recipients=opts.extract, full_name=opts.full_name,
                          ignore_dots=opts.ignore_dots, body_type=opts.body_type,
                          envid=opts.envid, ret=opts.ret, notify=opts.notify,
                          max_bytes=config.smtp.message_size_limit)
    except DropError as exc:
        print(f"sendmail: {exc}", file=stderr)
        return _DROP_ERROR_STATUS.get(exc.kind, EX_SOFTWARE)
    signal_server(config)  # pick it up now; the server also looks on its own
    if opts.verbose:
        print(f"sendmail: message dropped as {path.name} for the mail system to send",
              file=stderr)
    return EX_OK


def _mailq(config, stdout, stderr) -> int:
    from mailkeep.cli.queue_cmd import open_queue, print_queue

    store, status = open_queue(config.data_dir, "mailq")
    if store is None:
        return status
    try:
        print_queue(store, stdout)
    finally:
        store.close()
    return EX_OK


def _flush(config, stdout, stderr) -> int:
    from mailkeep.cli.queue_cmd import open_queue, signal_server

    store, status = open_queue(config.data_dir, "sendmail -q")
    if store is None:
        return status
    try:
        store.retry(None)
    finally:
        store.close()
    signal_server(config)
    return EX_OK


def sendmail_main() -> None:
    """Console script ``mailkeep-sendmail``; as ``mailq`` (by the name it was run under)
    it lists the queue."""
    name = Path(sys.argv[0]).name
    argv = sys.argv[1:]
    if name == "mailq" or name.endswith("-mailq"):
        argv = ["-bp", *argv]
    elif name == "newaliases":
        argv = ["-bi", *argv]
    try:
        status = run_sendmail(argv)
    except KeyboardInterrupt:
        status = EX_TEMPFAIL
    sys.exit(status)


def mailq_main() -> None:
    """Console script ``mailkeep-mailq``: the queue listing (sendmail -bp)."""
    try:
        status = run_sendmail(["-bp", *sys.argv[1:]])
    except KeyboardInterrupt:
        status = EX_TEMPFAIL
    sys.exit(status)
