"""`mailkeep deliver`: local delivery agent (LDA), like Dovecot's dovecot-lda.

Reads one message on standard input and stores it for one recipient, for use from a
Postfix pipe transport, an alias (``|mailkeep deliver --to me@example.com``) or procmail.
Exit codes follow sysexits.h so the calling MTA knows whether to retry or bounce.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from mailkeep.cli.main import add_config_argument, config_path

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78

# Input larger than this goes through a temporary file instead of memory.
MEMORY_LIMIT = 1 << 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deliver",
        help="deliver one message from standard input (LDA)",
        description="Store the message read from standard input in the mailbox of one "
        "recipient, applying the same addressing rules (aliases, catch-alls, sub-addressing) "
        "as the SMTP receiver. Line ends are normalised to CRLF. Exit codes follow sysexits: "
        "0 delivered, 67 unknown user, 73 mailbox full, 75 temporary failure (retry), "
        "78 configuration error.",
        epilog="Examples:\n  mailkeep deliver --to me@example.com < message.eml\n"
        "  # Postfix master.cf pipe transport:\n"
        "  mailkeep unix - n n - - pipe flags=DRhu user=mailkeep argv=/usr/bin/mailkeep "
        "deliver -f ${sender} --to ${recipient}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(p)
    p.add_argument("--to", required=True, metavar="ADDR", help="recipient address")
    p.add_argument("-f", "--from", dest="sender", default="", metavar="SENDER",
                   help="envelope sender for Return-Path (default: empty)")
    p.add_argument("--mailbox", metavar="NAME",
                   help="store into this mailbox instead of INBOX (falls back to INBOX if "
                   "it does not exist)")
    p.set_defaults(func=cmd_deliver)


class MessageTooBig(Exception):
    pass


def _read_stdin_crlf(spool_dir: Path, limit: int) -> tuple[bytes | Path, int]:
    """Read stdin, converting LF, CR or CRLF line ends to CRLF (the store's form).

    Stops with MessageTooBig past ``limit`` bytes (the [smtp] message_size_limit).
    """
    try:
        return _read_crlf(sys.stdin.buffer, spool_dir, limit)
    except BaseException:
        for leftover in spool_dir.glob(f"lda-{os.getpid()}-*"):
            leftover.unlink(missing_ok=True)
        raise


def _read_crlf(stream, spool_dir: Path, limit: int) -> tuple[bytes | Path, int]:
    out: bytearray | None = bytearray()
    spill = None
    size = 0
    pending_cr = False
    while chunk := stream.read(1 << 16):
        if pending_cr:
            chunk = b"\r" + chunk
            pending_cr = False
        if chunk.endswith(b"\r"):
            chunk, pending_cr = chunk[:-1], True
        data = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        size += len(data)
        if size > limit:
            raise MessageTooBig(f"message larger than {limit} bytes")
        if spill is not None:
            spill.write(data)
        else:
            assert out is not None
            out += data
            if len(out) > MEMORY_LIMIT:
                spill = tempfile.NamedTemporaryFile(dir=spool_dir, prefix=f"lda-{os.getpid()}-",
                                                    delete=False)
                spill.write(out)
                out = None
    if pending_cr:
        data = b"\r\n"
        size += 2
        if spill is not None:
            spill.write(data)
        else:
            assert out is not None
            out += data
    if spill is not None:
        spill.close()
        return Path(spill.name), size
    assert out is not None
    return bytes(out), size


def cmd_deliver(args: argparse.Namespace) -> int:
    try:
        return _deliver(args)
    except Exception as exc:
        # Anything unexpected is temporary for the calling MTA: exit codes outside
        # sysexits make Postfix bounce, and a full disk must not bounce mail.
        print(f"mailkeep deliver: temporary failure: {exc!r}", file=sys.stderr)
        return EX_TEMPFAIL


def _deliver(args: argparse.Namespace) -> int:
    from mailkeep.addressing import Resolver
    from mailkeep.config import ConfigError, load_config
    from mailkeep.delivery.pipeline import (
        AcceptedRecipient,
        Envelope,
        Pipeline,
        SessionInfo,
        new_message_id,
    )
    from mailkeep.smtp.address import AddressError, parse_address
    from mailkeep.store import open_store

    try:
        config = load_config(config_path(args))
    except (ConfigError, OSError) as exc:
        print(f"mailkeep deliver: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        recipient = parse_address(args.to)
        sender = parse_address(args.sender) if args.sender else None
    except AddressError as exc:
        print(f"mailkeep deliver: bad address: {exc}", file=sys.stderr)
        return EX_USAGE
    spool = config.data_dir / "spool" / "incoming"
    spool.mkdir(parents=True, exist_ok=True)
    store = open_store(config.data_dir)
    try:
        pipeline = Pipeline(config, store, Resolver(config))
        reply, targets = pipeline.recipient_decision(recipient)
        if reply.code >= 300:
            print(f"mailkeep deliver: {reply.code} {reply.enhanced} {reply.text}", file=sys.stderr)
            if reply.code == 552:
                return EX_CANTCREAT
            return EX_TEMPFAIL if reply.code < 500 else EX_NOUSER
        if args.mailbox:
            targets = tuple(type(t)(account=t.account, folder=args.mailbox) for t in targets)
        try:
            body, size = _read_stdin_crlf(spool, config.smtp.message_size_limit)
        except MessageTooBig as exc:
            print(f"mailkeep deliver: 552 5.3.4 {exc}", file=sys.stderr)
            return EX_DATAERR
        try:
            if size == 0:
                print("mailkeep deliver: empty message", file=sys.stderr)
                return EX_DATAERR
            envelope = Envelope(sender=sender,
                                recipients=[AcceptedRecipient(recipient, targets)])
            session = SessionInfo(client_ip="127.0.0.1", helo="localhost", protocol="LDA",
                                  listener="deliver")
            replies = asyncio.run(pipeline.deliver(session, envelope, body, size,
                                                   new_message_id()))
        finally:
            if isinstance(body, Path):
                body.unlink(missing_ok=True)
    finally:
        store.close()
    reply = replies[0]
    if reply.code < 300:
        return EX_OK
    print(f"mailkeep deliver: {reply.code} {reply.enhanced} {reply.text}", file=sys.stderr)
    if reply.code == 552:
        return EX_CANTCREAT
    return EX_TEMPFAIL if reply.code < 500 else EX_SOFTWARE
