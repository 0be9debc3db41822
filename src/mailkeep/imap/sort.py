"""IMAP SORT and THREAD (RFC 5256), with DISPLAYFROM/DISPLAYTO (RFC 5957).

SORT orders the messages a search program matches by a list of keys (RFC 5256 §3 "SORT
Command"): ARRIVAL, CC, DATE, FROM, SIZE, SUBJECT, TO, DISPLAYFROM, DISPLAYTO, each
optionally REVERSE; messages equal under every key keep their mailbox order (sequence
numbers). Strings compare with the i;ascii-casemap collation (RFC 4790 §9.2: a-z map to
A-Z, then octet order), as RFC 5256 specifies.

THREAD builds conversation trees with one of the two algorithms of RFC 5256 §3:
ORDEREDSUBJECT (group by base subject) and REFERENCES (the References/In-Reply-To links,
then subject merging). Both follow the RFC's numbered steps, cited in the code; the base
subject is RFC 5256 §2.1. Every tree walk is iterative, so a hostile chain of ten thousand
replies cannot exhaust the Python stack.

Header data comes from :class:`mailkeep.store.fts.MessageFacts`: from the full-text index
when it has the messages, otherwise from each message's header block.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailkeep.imap.commands import SearchKey
from mailkeep.imap.search import SearchContext, SearchError, SearchRun
from mailkeep.store.fts import MessageFacts

#: SORT keys (RFC 5256 §3, RFC 5957 §4).
SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM",
             "DISPLAYTO")
#: THREAD algorithms (RFC 5256 §3), announced as THREAD=<name>.
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


# -- base subject (RFC 5256 §2.1) -------------------------------------------------------

# subj-blob = "[" *BLOBCHAR "]" *WSP ; BLOBCHAR is any char but "[" and "]"
_BLOB = r"\[[^\[\]]*\][ \t]*"
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_REFWD = r"(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:"
# subj-leader = (*subj-blob subj-refwd) / WSP
_LEADER = re.compile(r"(?P<refwd>(?:" + _BLOB + r")*" + _REFWD + r")|[ \t]+", re.I)
_BLOB_PREFIX = re.compile(_BLOB)
_WSP_RUN = re.compile(r"[ \t\r\n]+")


def base_subject(subject: str) -> tuple[str, bool]:
    """The RFC 5256 §2.1 base subject of a decoded subject, and whether the extraction
    found it to be a reply or forward (it removed a subj-refwd, a "(fwd)" trailer or a
    "[fwd: ...]" wrapper), which THREAD=REFERENCES step 5 needs."""
    # (1) encoded-words are decoded already; tabs and line breaks become spaces, runs of
    # white space one space.
    text = _WSP_RUN.sub(" ", subject)
    reply = False
    while True:
        # (2) remove trailing subj-trailer ("(fwd)" / WSP) until none is left.
        while True:
            if text.endswith(" "):
                text = text.rstrip(" ")
            elif text[-5:].lower() == "(fwd)":
                text = text[:-5]
                reply = True
            else:
                break
        # (5) repeat (3) and (4) until no matches remain.
        while True:
            changed = False
            # (3) remove a subj-leader prefix.
            leader = _LEADER.match(text)
            if leader is not None and leader.end() > 0:
                if leader.group("refwd"):
                    reply = True
                text = text[leader.end():]
                changed = True
            # (4) remove a subj-blob prefix if a non-empty subj-base remains.
            blob = _BLOB_PREFIX.match(text)
            if blob is not None and text[blob.end():].strip(" \t"):
                text = text[blob.end():]
                changed = True
            if not changed:
                break
        # (6) "[fwd:" subject "]": unwrap and start again from (2).
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def casemap(text: str) -> str:
    """i;ascii-casemap (RFC 4790 §9.2): ASCII letters upper-cased; the rest compares by
    code point, which is the UTF-8 octet order."""
    return text.translate(_ASCII_UPPER)


# -- SORT -------------------------------------------------------------------------------


def _charset_check(charset: str) -> None:
    if not charset:
        raise SearchError("SORT and THREAD need a CHARSET")


def sort(ctx: SearchContext, criteria: Sequence[tuple[str, bool]], charset: str,
         key: SearchKey) -> list[int]:
    """RFC 5256 SORT: the UIDs matching ``key``, ordered by ``criteria`` ((key, reverse)
    pairs). Raises SearchError (unknown sort key, charset)."""
    _charset_check(charset)
    for name, _ in criteria:
        if name not in SORT_KEYS:
            raise SearchError(f"unknown sort key {name}")
    if not criteria:
        raise SearchError("SORT needs at least one sort key")
    run = SearchRun(ctx, charset)
    order = run.match(key)  # sequence order: the final tie-break (RFC 5256 §3)
    messages = run.messages
    needs_facts = any(name not in ("ARRIVAL", "SIZE") for name, _ in criteria)
    facts = run.facts(order) if needs_facts else {}

    def sort_value(name: str) -> Callable[[int], object]:
        if name == "ARRIVAL":
            return lambda i: messages[i].internal_date
        if name == "SIZE":
            return lambda i: messages[i].size
        if name == "DATE":
            return lambda i: _sent_date(facts[i], messages[i].internal_date)
        if name == "SUBJECT":
            return lambda i: casemap(base_subject(facts[i].subject)[0])
        attr = {"FROM": "from_mailbox", "TO": "to_mailbox", "CC": "cc_mailbox",
                "DISPLAYFROM": "display_from", "DISPLAYTO": "display_to"}[name]
        return lambda i: casemap(getattr(facts[i], attr))

    # Stable sorts from the last key to the first; reverse=True keeps equal elements in
    # their order, so ties always end in sequence order.
    for name, reverse in reversed(criteria):
        value = sort_value(name)
        keys = {i: value(i) for i in order}
        order.sort(key=keys.__getitem__, reverse=reverse)
    return [run.uids[i] for i in order]


def _sent_date(facts: MessageFacts, internal_date: float) -> float:
    # RFC 5256 §2.2 sent date: the Date: field in UTC; without a usable one, the internal
    # date.
    return facts.sent if facts.sent is not None else internal_date


# -- THREAD -----------------------------------------------------------------------------


@dataclass(slots=True)
class ThreadNode:
    """A node of a thread tree: ``uid`` is None for a dummy (a message that is referred to
    but not in the result, kept where RFC 5256 §3 keeps it)."""

    uid: int | None
    children: list[ThreadNode] = field(default_factory=list)


def thread(ctx: SearchContext, algorithm: str, charset: str, key: SearchKey) -> list[ThreadNode]:
    """RFC 5256 THREAD: the threads of the messages matching ``key``."""
    _charset_check(charset)
    if algorithm not in THREAD_ALGORITHMS:
        raise SearchError(f"unknown threading algorithm {algorithm}")
    run = SearchRun(ctx, charset)
    indices = run.match(key)
    facts = run.facts(indices)
    messages = run.messages
    # "sent date" of RFC 5256 §2.2 (the DATE sort value), ties in mailbox order.
    dates = {i: (_sent_date(facts[i], messages[i].internal_date), i) for i in indices}
    if algorithm == "ORDEREDSUBJECT":
        return _ordered_subject(indices, facts, dates, run.uids)
    return _references(indices, facts, dates, run.uids)


def _ordered_subject(indices: list[int], facts: dict[int, MessageFacts],
                     dates: dict[int, tuple[float, int]], uids: list[int]) -> list[ThreadNode]:
    # RFC 5256 §3 ORDEREDSUBJECT: sort by base subject then sent date; split into threads
    # of equal base subject; sort threads by the sent date of their first message. The
    # first message is the root, every other one its child (no grandchildren).
    subject = {i: casemap(base_subject(facts[i].subject)[0]) for i in indices}
    ordered = sorted(indices, key=lambda i: (subject[i], dates[i]))
    threads: list[list[int]] = []
    for i in ordered:
        if threads and subject[threads[-1][0]] == subject[i]:
            threads[-1].append(i)
        else:
            threads.append([i])
    threads.sort(key=lambda t: dates[t[0]])
    return [ThreadNode(uids[t[0]], [ThreadNode(uids[i]) for i in t[1:]]) for t in threads]


class _Container:
    """A message or a dummy in the REFERENCES algorithm."""

    __slots__ = ("children", "index", "parent")

    def __init__(self, index: int | None) -> None:
        self.index = index
        self.parent: _Container | None = None
        self.children: list[_Container] = []

    def is_ancestor_of(self, other: _Container) -> bool:
        node: _Container | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False


def _link(parent: _Container, child: _Container) -> bool:
    """Make ``child`` a child of ``parent`` unless that makes a loop (RFC 5256 §3 step
    1.A: "do not create a parent/child link if creating that link would introduce a
    loop")."""
    if child.is_ancestor_of(parent):
        return False
    child.parent = parent
    parent.children.append(child)
    return True


def _unlink(child: _Container) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _references(indices: list[int], facts: dict[int, MessageFacts],
                dates: dict[int, tuple[float, int]], uids: list[int]) -> list[ThreadNode]:
    # (1) Link messages by their references, in mailbox order.
    by_id: dict[str, _Container] = {}
    containers: list[_Container] = []  # every container, in creation order

    def container_for(message_id: str) -> _Container:
        found = by_id.get(message_id)
        if found is None:  # "create a dummy message with this ID"
            found = by_id[message_id] = _Container(None)
            containers.append(found)
        return found

    for i in indices:
        own = facts[i].message_id
        existing = by_id.get(own) if own is not None else None
        if existing is not None and existing.index is None:
            current = existing  # a dummy created by an earlier reference: this is it
            current.index = i
        else:
            # No (valid) Message-ID, or a duplicate of an earlier message's: a unique one.
            current = _Container(i)
            containers.append(current)
            if own is not None and existing is None:
                by_id[own] = current
        refs = [container_for(r) for r in facts[i].references]
        # (1.A) link consecutive references parent -> child; never change an existing
        # parent (References may be truncated), never make a loop.
        for parent, child in itertools.pairwise(refs):
            if child.parent is None and parent is not child:
                _link(parent, child)
        # (1.B) the last reference is the parent of this message, overriding 1.A links;
        # without references the message has no parent.
        if current.parent is not None:
            _unlink(current)
        if refs and refs[-1] is not current:
            _link(refs[-1], current)

    # (2) The messages without parents are the children of the root.
    roots = [c for c in containers if c.parent is None]

    # (3) Prune dummies, bottom-up.
    top = _prune(roots)

    def date_of(c: _Container) -> tuple[float, int]:
        # (4)/(6) a dummy sorts by its first child (its children are sorted first).
        while c.index is None:
            c = c.children[0]
        return dates[c.index]

    # (4) Sort the root's children by sent date.
    for c in top:
        if c.index is None:
            c.children.sort(key=date_of)
    top.sort(key=date_of)

    # (5) Merge threads with the same base subject.
    top = _merge_subjects(top, facts)

    # (6) Sort every set of siblings by sent date, deepest first.
    _sort_siblings(top, date_of)
    top.sort(key=date_of)
    return [_to_nodes(c, uids) for c in top]


def _prune(roots: list[_Container]) -> list[_Container]:
    """RFC 5256 §3 REFERENCES step (3): delete dummies without children; replace dummies
    with their children, except that a dummy directly under the root keeps several."""
    # Post-order: prune each container's children before the container's own list.
    stack: list[tuple[_Container | None, bool]] = [(None, False)]
    pruned_roots: list[_Container] = []
    while stack:
        node, expanded = stack.pop()
        children = roots if node is None else node.children
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in children)
            continue
        at_root = node is None
        kept: list[_Container] = []
        for c in children:
            if c.index is not None:
                kept.append(c)
            elif not c.children:
                continue  # a dummy with no children: deleted
            elif not at_root or len(c.children) == 1:
                # Promote the children to this level (they are pruned already).
                for grandchild in c.children:
                    grandchild.parent = node
                    kept.append(grandchild)
            else:
                kept.append(c)
        if at_root:
            for c in kept:
                c.parent = None
            pruned_roots = kept
        else:
            assert node is not None
            node.children = kept
    return pruned_roots


def _merge_subjects(top: list[_Container], facts: dict[int, MessageFacts]
                    ) -> list[_Container]:
    """RFC 5256 §3 REFERENCES step (5): gather threads whose subjects are the same."""
    def thread_subject(c: _Container) -> tuple[str, bool]:
        # (5.B.i) the message's base subject, or its first child's for a dummy.
        message = c if c.index is not None else c.children[0]
        assert message.index is not None
        base, reply = base_subject(facts[message.index].subject)
        return casemap(base), reply and c.index is not None

    subjects = {id(c): thread_subject(c) for c in top}
    # (5.A, 5.B) the subject table: one container per thread subject.
    table: dict[str, _Container] = {}
    for c in top:
        subject, reply = subjects[id(c)]
        if not subject:
            continue  # (5.B.ii)
        held = table.get(subject)
        if held is None:
            table[subject] = c  # (5.B.iv)
        elif held.index is not None and (c.index is None or (subjects[id(held)][1]
                                                              and not reply)):
            table[subject] = c  # (5.B.v) prefer a dummy, then a non-reply
    # (5.C) merge the threads with the same subject.
    result = list(top)
    position = {id(c): n for n, c in enumerate(result)}
    removed: set[int] = set()
    for c in top:
        subject, reply = subjects[id(c)]
        if not subject:
            continue
        held = table[subject]
        if held is c:
            continue
        removed.add(id(c))
        if held.index is None and c.index is None:
            # Both dummies: the children of both become siblings.
            for child in c.children:
                child.parent = held
                held.children.append(child)
        elif held.index is None or (reply and not subjects[id(held)][1]):
            # The table holds a dummy, or this is a reply to a non-reply: a child of it.
            c.parent = held
            held.children.append(c)
        else:
            # Otherwise a new dummy holds both; it replaces the table's message.
            dummy = _Container(None)
            result[position[id(held)]] = dummy
            position[id(dummy)] = position[id(held)]
            for child in (held, c):
                child.parent = dummy
                dummy.children.append(child)
            subjects[id(dummy)] = (subject, False)
            table[subject] = dummy
    return [c for c in result if id(c) not in removed]


def _sort_siblings(top: list[_Container],
                   date_of: Callable[[_Container], tuple[float, int]]) -> None:
    """RFC 5256 §3 REFERENCES step (6): sort each set of siblings by sent date, the
    deepest first (a dummy sorts by its first child, which must be sorted before)."""
    order: list[_Container] = []
    stack = list(top)
    while stack:
        c = stack.pop()
        order.append(c)
        stack.extend(c.children)
    for c in reversed(order):  # children before their parents
        if len(c.children) > 1:
            c.children.sort(key=date_of)


def _to_nodes(root: _Container, uids: list[int]) -> ThreadNode:
    out = ThreadNode(None if root.index is None else uids[root.index], [])
    stack = [(root, out)]
    while stack:
        c, node = stack.pop()
        for child in c.children:
            child_node = ThreadNode(None if child.index is None else uids[child.index], [])
            node.children.append(child_node)
            if child.children:
                stack.append((child, child_node))
    return out


def format_threads(threads: Sequence[ThreadNode], number: Callable[[int], int]) -> bytes:
    """The THREAD response data (RFC 5256 §4 ``thread-list``), e.g.
    ``(2)(3 6 (4 23)(44 7 96))``; ``number`` maps a UID to what is sent (its sequence
    number, or the UID itself for UID THREAD). A node with one child continues the list;
    several children become nested lists; a dummy contributes no number."""
    out: list[str] = []
    # Work items: a node to open as "(" ... ")", or a literal string to emit.
    stack: list[ThreadNode | str] = [t for t in reversed(threads)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        out.append("(")
        node = item
        first = True
        while True:
            if node.uid is not None:
                out.append(("" if first else " ") + str(number(node.uid)))
                first = False
            if len(node.children) == 1:
                node = node.children[0]
                continue
            break
        # Popped in reverse: a space, the nested lists, then the closing parenthesis.
        stack.append(")")
        stack.extend(reversed(node.children))
        if node.children and not first:
            stack.append(" ")
    return "".join(out).encode("ascii")
