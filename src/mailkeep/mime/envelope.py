"""The IMAP ENVELOPE of a message, built from its header fields (RFC 9051 §7.5.2).

ENVELOPE carries header values raw (unfolded, encoded-words intact) and address lists broken
into (name, adl, mailbox, host) quadruples, with RFC 5322 groups marked by a start quadruple
whose host is NIL and an end quadruple that is all NIL. Sender and Reply-To fall back to From
when absent or empty, as RFC 9051 §7.5.2 requires of the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailkeep.mime.address_list import Group, parse_address_list_limited

#: The header fields ENVELOPE is made of, lower-cased.
ENVELOPE_FIELDS = frozenset({
    b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
    b"in-reply-to", b"message-id",
})

# A non-group address must never have a NIL mailbox or host: NIL marks group syntax in
# ENVELOPE. These placeholders are what Dovecot sends, so clients already know them.
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"


@dataclass(frozen=True, slots=True)
class EnvelopeAddress:
    """One address structure of ENVELOPE (RFC 9051 §7.5.2, ``address`` in §9).

    ``adl`` is the obsolete source route (``@relay1,@relay2``) or None. A group start is
    ``(None, None, group name, None)`` and a group end ``(None, None, None, None)``.
    """

    name: bytes | None
    adl: bytes | None
    mailbox: bytes | None
    host: bytes | None


GROUP_END = EnvelopeAddress(None, None, None, None)


@dataclass(slots=True)
class Envelope:
    """ENVELOPE fields: raw values (bytes, CR and LF removed) or None when the field is absent."""

    date: bytes | None = None
    subject: bytes | None = None
    from_: list[EnvelopeAddress] = field(default_factory=list)
    sender: list[EnvelopeAddress] = field(default_factory=list)
    reply_to: list[EnvelopeAddress] = field(default_factory=list)
    to: list[EnvelopeAddress] = field(default_factory=list)
    cc: list[EnvelopeAddress] = field(default_factory=list)
    bcc: list[EnvelopeAddress] = field(default_factory=list)
    in_reply_to: bytes | None = None
    message_id: bytes | None = None


def envelope_addresses(raw: bytes) -> tuple[list[EnvelopeAddress], bool]:
    """ENVELOPE address structures for an address-list value, and whether it was truncated."""
    items, truncated = parse_address_list_limited(raw)
    out: list[EnvelopeAddress] = []
    for item in items:
        if isinstance(item, Group):
            out.append(EnvelopeAddress(None, None, item.name, None))
            out.extend(
                EnvelopeAddress(m.name, m.route, m.local_part or MISSING_MAILBOX,
                                m.domain or MISSING_DOMAIN)
                for m in item.members
            )
            out.append(GROUP_END)
        else:
            out.append(EnvelopeAddress(item.name, item.route, item.local_part or MISSING_MAILBOX,
                                       item.domain or MISSING_DOMAIN))
    return out, truncated


def build_envelope(values: dict[bytes, bytes]) -> tuple[Envelope, list[str]]:
    """Make the ENVELOPE from unfolded header values keyed by lower-case field name."""
    defects: list[str] = []

    def addresses(name: bytes) -> list[EnvelopeAddress]:
        raw = values.get(name)
        if raw is None:
            return []
        result, truncated = envelope_addresses(raw)
        if truncated:
            defects.append(f"{name.decode()} has too many addresses; the rest are left out")
        return result

    from_ = addresses(b"from")
    sender = addresses(b"sender") or list(from_)
    reply_to = addresses(b"reply-to") or list(from_)
    envelope = Envelope(
        date=values.get(b"date"),
        subject=values.get(b"subject"),
        from_=from_,
        sender=sender,
        reply_to=reply_to,
        to=addresses(b"to"),
        cc=addresses(b"cc"),
        bcc=addresses(b"bcc"),
        in_reply_to=values.get(b"in-reply-to"),
        message_id=values.get(b"message-id"),
    )
    return envelope, defects
