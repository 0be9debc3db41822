"""Open-relay self-test: does port 25 accept mail for somebody else's domain?

The checker connects to each smtp listener as a stranger would (RFC 5321 §3.6.2: an MTA
must not relay for arbitrary clients) and asks to send from an address of a domain that
cannot exist (``.invalid``, RFC 2606) to an address of a domain that is not ours. A 5xx
reply to RCPT is the right answer; 4xx refuses too, but only for now; a 2xx means the
server would relay, and the checker says RSET and QUIT before any DATA. If MAIL FROM is
refused, the test is repeated with the null sender (which any server must accept,
RFC 5321 §4.5.5) so that the RCPT answer is still seen.
"""

from __future__ import annotations

import asyncio

from mailkeep.checker.context import CheckContext
from mailkeep.checker.findings import Finding, Status
from mailkeep.checker.tls import (
    CLIENT_NAME,
    MAX_LINE,
    MAX_LINES,
    ProbeError,
    connect_address,
    read_smtp_reply,
    unverified_context,
)
from mailkeep.config.schema import Listener
from mailkeep.smtp.client import (
    QUIT,
    RSET,
    ClientLimits,
    ReplyReader,
    ehlo_command,
    mail_command,
    rcpt_command,
)
from mailkeep.smtp.reply import Reply

CHECK = "relay"
SENDER = "checker@relay-test.invalid"
#: Domains for the foreign recipient (RFC 2606); the first that is not ours is used.
FOREIGN_DOMAINS = ("example.net", "example.org", "example.com")


def _text(reply: Reply) -> str:
    enhanced = f"{reply.enhanced} " if reply.enhanced else ""
    return f"{reply.code} {enhanced}{' '.join(reply.lines)}"[:300]


def foreign_recipient(ctx: CheckContext) -> str:
    domain = next((d for d in FOREIGN_DOMAINS if d not in ctx.config.domains), "invalid")
    return f"relay-test@{domain}"


async def _dialogue(ctx: CheckContext, listener: Listener, recipient: str
                    ) -> tuple[str, Reply]:
    """Run the test; return which sender was used and the reply to RCPT."""
    host, port = connect_address(listener)
    parser = ReplyReader(ClientLimits(max_reply_line=MAX_LINE, max_reply_lines=MAX_LINES))
    # An smtp listener with implicit TLS (port 465-style) is spoken to over TLS; the
    # certificate is not the question here.
    context = unverified_context() if listener.tls == "implicit" else None
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE,
                                                       ssl=context)
    except OSError as exc:
        raise ProbeError(f"cannot connect: {exc.strerror or exc}") from None
    try:
        greeting = await read_smtp_reply(reader, parser)
        if greeting.code != 220:
            raise ProbeError(f"greeting {_text(greeting)}")
        writer.write(ehlo_command(CLIENT_NAME))
        reply = await read_smtp_reply(reader, parser)
        if reply.code != 250:
            raise ProbeError(f"EHLO refused: {_text(reply)}")
        sender = SENDER
        writer.write(mail_command(sender))
        reply = await read_smtp_reply(reader, parser)
        if reply.code >= 400:
            # RFC 5321 §4.5.5: the null reverse-path must be accepted; try with it.
            writer.write(RSET)
            await read_smtp_reply(reader, parser)
            sender = ""
            writer.write(mail_command(sender))
            reply = await read_smtp_reply(reader, parser)
            if reply.code >= 400:
                raise ProbeError(f"MAIL FROM refused even for the null sender: {_text(reply)}")
        writer.write(rcpt_command(recipient))
        answer = await read_smtp_reply(reader, parser)
        # Never DATA: whatever the answer, the transaction ends here.
        writer.write(RSET + QUIT)
        await writer.drain()
        return sender, answer
    finally:
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (TimeoutError, OSError):
            pass


async def check_listener(ctx: CheckContext, listener: Listener) -> Finding:
    host, port = connect_address(listener)
    subject = f"open relay test on {host}:{port} ({listener.protocol})"
    recipient = foreign_recipient(ctx)
    try:
        async with asyncio.timeout(ctx.options.connect_timeout
                                   + ctx.config.policy.greet_wait):
            sender, answer = await _dialogue(ctx, listener, recipient)
    except TimeoutError:
        return Finding(Status.WARN, subject,
                       f"no complete answer within {ctx.options.connect_timeout:g}s",
                       "run 'mailkeep check' again; if it persists, look at the server log",
                       CHECK)
    except ProbeError as exc:
        return Finding(Status.WARN, subject, f"could not be tested: {exc}",
                       "make sure the server runs ('mailkeep serve') and this listener "
                       "answers", CHECK)
    shown = f"MAIL FROM:<{sender}> RCPT TO:<{recipient}>"
    if answer.code < 300:
        return Finding(Status.FAIL, subject,
                       f"open relay: {shown} was accepted ({_text(answer)}); spammers will "
                       "use this server and get it blocklisted",
                       "stop the server now; port 25 must refuse recipients outside your "
                       "[domains] (check for another MTA listening on this port)", CHECK)
    if answer.code < 500:
        return Finding(Status.WARN, subject,
                       f"{shown} was refused only temporarily ({_text(answer)})",
                       "a relay attempt should get a permanent 5xx refusal; check the "
                       "inbound policy ([policy] rules) and run 'mailkeep check' again",
                       CHECK)
    return Finding(Status.OK, subject, f"{shown} refused: {_text(answer)}", "", CHECK)


async def check_open_relay(ctx: CheckContext) -> list[Finding]:
    """The relay test on every TCP smtp listener."""
    listeners = [listener for listener in ctx.config.listeners
                 if listener.protocol == "smtp" and not listener.is_unix
                 and listener.port is not None]
    if not listeners:
        return [Finding(Status.OK, "open relay test", "no smtp listener: nothing to test",
                        "", CHECK)]
    return list(await asyncio.gather(*(check_listener(ctx, smtp) for smtp in listeners)))
