"""The selected mailbox as one IMAP session sees it: sequence numbers and pending changes.

Pure state, no I/O (the session feeds it what the store returns). It answers two questions:

* Which message does sequence number N name, and which numbers does a sequence set mean?
  (RFC 9051 §2.3.1.2: numbers are positions in the session's view, which changes only when
  the session is told about it.)
* Which untagged responses tell the client about changes, and when may they be sent?
  RFC 9051 §7.5.1 (and §5.5): EXPUNGE must not be sent while answering FETCH, STORE or
  SEARCH (their UID forms excepted) nor when no command is in progress (IDLE excepted),
  because sequence numbers would shift under the client. New messages (EXISTS) and flag
  changes (FETCH) may be sent at any time a response is allowed.

Changes reach the view by ``apply_changes``: the session reads from the store every
message whose mod-sequence is above what it has seen, and every UID expunged since (RFC
7162 gives the store those numbers anyway). Reading after an event, rather than trusting
the event, makes changes from other processes (the CLI) visible too, and makes a change
that arrives twice — once from the session's own command, once from the store's
notification — harmless: a message whose known mod-sequence is already as high is skipped.

Expunged messages stay in the view, keeping their numbers, until their EXPUNGE (or
VANISHED, RFC 7162 §3.2.10) has been sent.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from mailkeep.imap.commands import SequenceSet
from mailkeep.imap.response import resolve_sequence_set, sequence_set
from mailkeep.store.api import FlagUpdate, MessageInfo


class BadSequence(ValueError):
    """A sequence number outside the mailbox (RFC 9051 §9: answered BAD)."""


@dataclass
class ViewOptions:
    """Session options that shape untagged FETCH responses."""

    #: CONDSTORE enabled (RFC 7162 §3.1): FETCH responses for flag changes carry MODSEQ.
    condstore: bool = False
    #: QRESYNC enabled (RFC 7162 §3.2.10): VANISHED replaces EXPUNGE; FETCH carries UID.
    qresync: bool = False


def _format_flags(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(flags).encode("utf-8", "surrogateescape") + b")"


class SelectedMailbox:
    """One session's view of its selected mailbox."""

    def __init__(self, name: str, uidvalidity: int, messages: Sequence[MessageInfo], *,
                 readonly: bool, synced_modseq: int, options: ViewOptions | None = None):
        self.name = name
        self.uidvalidity = uidvalidity
        self.readonly = readonly
        self.options = options or ViewOptions()
        #: UIDs in sequence order (ascending); position + 1 is the sequence number.
        self.uids: list[int] = [m.uid for m in messages]
        self.infos: dict[int, MessageInfo] = {m.uid: m for m in messages}
        #: Everything with a mod-sequence up to this has been read from the store.
        self.synced_modseq = synced_modseq
        #: Expunged in the store, still in the view until announced.
        self.expunged: set[int] = set()
        #: UIDs whose flags changed and are not yet announced.
        self.flag_changes: set[int] = set()
        #: The message count the client was last told (EXISTS).
        self.announced_exists = len(self.uids)
        #: SEARCHRES (RFC 5182): UIDs of the last SEARCH ... RETURN (SAVE).
        self.saved_search: list[int] = []

    # -- lookups ---------------------------------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def messages(self) -> list[MessageInfo]:
        """Every message of the view in sequence order (for SEARCH, SORT, THREAD)."""
        infos = self.infos
        return [infos[uid] for uid in self.uids]

    def resolve(self, seq: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """(sequence number, uid) pairs a sequence set names, in sequence order.

        Sequence numbers beyond the view are BAD (RFC 9051 §9, seq-number). UIDs that do
        not exist are ignored (RFC 9051 §6.4.9); for UID sets ``*`` is the largest UID and
        ``n:*`` includes it even when n is larger (RFC 9051 §6.4.9)."""
        uids = self.uids
        if not uids:
            if not uid and not seq.saved and seq.ranges:
                # "*" in an empty mailbox or any number is out of range.
                raise BadSequence("no messages in the mailbox")
            return []
        if seq.saved:
            # RFC 5182 §2.1: "$" names the saved messages, for UID and sequence commands.
            pairs = ((self.seq_of(u), u) for u in sorted(set(self.saved_search)))
            return [(s, u) for s, u in pairs if s is not None]
        if uid:
            # Ranges come back sorted and merged, so the pairs are in order, once each.
            result: list[tuple[int, int]] = []
            for a, b in resolve_sequence_set(seq, uids[-1]):
                lo = bisect.bisect_left(uids, a)
                hi = bisect.bisect_right(uids, b)
                result.extend((i + 1, uids[i]) for i in range(lo, hi))
            return result
        count = len(uids)
        result = []
        for a, b in resolve_sequence_set(seq, count):
            if b > count:
                raise BadSequence(f"message number out of range (the mailbox has {count})")
            result.extend((n, uids[n - 1]) for n in range(a, b + 1))
        return result

    # -- changes ----------------------------------------------------------------------

    def apply_changes(self, changed: Iterable[MessageInfo], vanished: Iterable[int],
                      modseq: int) -> None:
        """Take in what the store reports since ``synced_modseq``; ``modseq`` is the
        mailbox's HIGHESTMODSEQ read before the two queries."""
        for info in changed:
            known = self.infos.get(info.uid)
            if known is None:
                if info.uid in self.expunged:
                    continue
                if self.uids and info.uid < self.uids[-1]:
                    # Cannot happen (UIDs ascend), but never corrupt the view: skip it.
                    continue
                self.uids.append(info.uid)
                self.infos[info.uid] = info
            elif info.modseq > known.modseq:
                if info.flags != known.flags:
                    self.flag_changes.add(info.uid)
                self.infos[info.uid] = info
        for uid in vanished:
            if uid in self.infos:
                self.expunged.add(uid)
        self.synced_modseq = max(self.synced_modseq, modseq)

    def note_flags(self, updates: Iterable[FlagUpdate]) -> list[tuple[int, FlagUpdate]]:
        """Record the result of this session's own STORE; returns (seq, update) pairs of
        the messages in the view (the command reports them itself)."""
        out = []
        for update in updates:
            known = self.infos.get(update.uid)
            if known is None:
                continue
            if update.modseq >= known.modseq:
                self.infos[update.uid] = replace(known, flags=update.flags,
                                                 modseq=update.modseq)
            self.flag_changes.discard(update.uid)
            seq = self.seq_of(update.uid)
            if seq is not None:
                out.append((seq, update))
        return out

    def note_expunged(self, uids: Iterable[int]) -> None:
        """This session's own EXPUNGE/MOVE removed these; announce with the next updates."""
        for uid in uids:
            if uid in self.infos:
                self.expunged.add(uid)

    # -- responses -------------------------------------------------------------------

    def fetch_flags_response(self, seq: int, info: MessageInfo, *, uid: bool = False) -> bytes:
        parts = [b"FLAGS " + _format_flags(info.flags)]
        if uid or self.options.qresync:
            parts.insert(0, b"UID %d" % info.uid)
        if self.options.condstore:
            parts.append(b"MODSEQ (%d)" % info.modseq)
        return b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n"

    def take_updates(self, *, allow_expunge: bool) -> list[bytes]:
        """Untagged responses for every change not yet told, in a valid order."""
        out: list[bytes] = []
        if allow_expunge and self.expunged:
            gone = sorted(self.expunged)
            self.expunged.clear()
            if self.options.qresync:
                # RFC 7162 §3.2.10: VANISHED (no EARLIER) instead of EXPUNGE.
                out.append(b"* VANISHED " + sequence_set(gone) + b"\r\n")
                keep = set(gone)
                self.uids = [u for u in self.uids if u not in keep]
            else:
                # Highest first: each announcement leaves the lower numbers unchanged.
                positions = sorted((self.seq_of(u) for u in gone), reverse=True)
                for seq in positions:
                    if seq is None:
                        continue
                    out.append(b"* %d EXPUNGE\r\n" % seq)
                if len(gone) > 64:
                    keep = set(gone)
                    self.uids = [u for u in self.uids if u not in keep]
                else:
                    for u in gone:
                        i = bisect.bisect_left(self.uids, u)
                        if i < len(self.uids) and self.uids[i] == u:
                            del self.uids[i]
            for u in gone:
                self.infos.pop(u, None)
                self.flag_changes.discard(u)
            self.announced_exists -= len(gone)
        # EXISTS never decreases without EXPUNGE (RFC 9051 §7.4.1); held-back expunges
        # are still in the view, so its size is right either way.
        if len(self.uids) != self.announced_exists and (
                len(self.uids) > self.announced_exists or allow_expunge):
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            self.announced_exists = len(self.uids)
        if self.flag_changes:
            for uid in sorted(self.flag_changes):
                seq = self.seq_of(uid)
                info = self.infos.get(uid)
                if seq is None or info is None:
                    continue
                out.append(self.fetch_flags_response(seq, info))
            self.flag_changes.clear()
        return out

    def unseen_first(self) -> int | None:
        """Sequence number of the first message without \\Seen (RFC 3501 UNSEEN code)."""
        for i, uid in enumerate(self.uids):
            if "\\Seen" not in self.infos[uid].flags:
                return i + 1
        return None
