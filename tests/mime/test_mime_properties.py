"""Property tests: every parser in mailkeep.mime against arbitrary and generated input."""

from __future__ import annotations

from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.mime import (
    IndexFormatError,
    MimeLimits,
    Part,
    decode_header_value,
    find_section,
    from_json,
    header_fields,
    imap_bodystructure,
    imap_envelope,
    index_message,
    iter_parts,
    parse_address_list,
    to_json,
)
from mailkeep.mime.address_list import MAX_ADDRESSES, _parse_simple, _Parser, _tokenize
from mailkeep.mime.params import (
    parse_content_type,
    parse_disposition,
    parse_language,
    parse_transfer_encoding,
)
from mailkeep.mime.structure import MESSAGE_TYPES

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOWER = settings(max_examples=100, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Fragments that steer random messages into the interesting corners of the grammar.
FRAGMENTS = [
    b"\r\n", b"\n", b"\r", b"--b", b"--b--", b"--c", b"--", b" ", b"\t", b":", b";", b"=", b'"',
    b"(", b")", b"<", b">", b"@", b",", b"\\", b"\x00", b"\xff", b"\xc3\xa9",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/digest; boundary=c\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: message/global\n",
    b"Content-Type: text/plain; charset*0*=utf-8''%C3; charset*1*=%A9\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Disposition: attachment; filename=a\r\n",
    b"From: A <a@b.c>, g: x@y;\r\n", b"To: (c) \"q\\\"\" <@r:l@[1.2.3.4]>\r\n",
    b"Subject: =?utf-8?q?x?=\r\n", b"\r\n\r\n", b"\n\n", b"X: y\r\n ",
]

mime_bytes = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=60
).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=400), mime_bytes)


def check_invariants(data: bytes, root: Part, limits: MimeLimits) -> None:
    """Offsets are ordered and nested; limits hold; line counts are right."""
    count = 0
    stack: list[tuple[Part, int]] = [(root, 0)]
    assert root.header_start == 0 and root.body_end == len(data)
    while stack:
        part, depth = stack.pop()
        count += 1
        assert depth <= limits.max_depth
        assert 0 <= part.header_start <= part.body_start <= part.body_end <= len(data)
        if part.content_type.startswith("text/") or (
            part.content_type in MESSAGE_TYPES and part.message is not None
        ):
            assert part.lines == data.count(b"\n", part.body_start, part.body_end)
        previous_end = part.body_start
        for child in part.children:
            assert previous_end <= child.header_start
            assert child.body_end <= part.body_end
            previous_end = child.body_end
            stack.append((child, depth + 1))
        if part.message is not None:
            assert part.children == []
            assert part.message.header_start == part.body_start
            assert part.message.body_end == part.body_end
            assert part.message.envelope is not None
            stack.append((part.message, depth + 1))
    assert count <= limits.max_parts


def section_paths(root: Part) -> list[str]:
    """Every numeric section path of the message, per RFC 9051 §6.4.5."""
    paths = []
    top = root.children if root.content_type.startswith("multipart/") else [root]
    stack = [(str(i + 1), p) for i, p in enumerate(top)]
    while stack:
        path, part = stack.pop()
        paths.append(path)
        if part.message is not None:
            inner = part.message
            subs = inner.children if inner.content_type.startswith("multipart/") else [inner]
        else:
            subs = part.children if part.content_type.startswith("multipart/") else []
        stack.extend((f"{path}.{i + 1}", p) for i, p in enumerate(subs))
    return paths


@FAST
@given(data=any_bytes)
def test_index_message_never_raises_and_keeps_invariants(data: bytes, imap_parse) -> None:
    root = index_message(data)
    check_invariants(data, root, MimeLimits())
    imap_parse(imap_bodystructure(root))
    imap_parse(imap_bodystructure(root, extended=False, utf8=True))
    imap_parse(imap_envelope(root.envelope))
    assert all("could not be indexed" not in d for p in iter_parts(root) for d in p.defects)
    for path in section_paths(root):
        for suffix in ("", ".MIME", ".HEADER", ".TEXT"):
            found = find_section(root, path + suffix)
            if found is not None:
                assert 0 <= found[0] <= found[1] <= len(data)


@FAST
@given(data=mime_bytes, depth=st.integers(0, 4), parts=st.integers(1, 6),
       headers=st.integers(0, 5), header_bytes=st.integers(0, 80))
def test_limits_always_hold(data: bytes, depth: int, parts: int, headers: int,
                            header_bytes: int) -> None:
    limits = MimeLimits(max_depth=depth, max_parts=parts, max_headers=headers,
                        max_header_bytes=header_bytes)
    check_invariants(data, index_message(data, limits), limits)


@FAST
@given(data=any_bytes)
def test_json_round_trip(data: bytes) -> None:
    root = index_message(data)
    blob = to_json(root)
    blob.decode("utf-8")  # always valid UTF-8
    assert from_json(blob) == root
    assert to_json(from_json(blob)) == blob


@FAST
@given(data=mime_bytes, position=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=4),
       replace=st.booleans())
def test_damaged_index_blob_fails_cleanly(data: bytes, position: int, junk: bytes,
                                          replace: bool) -> None:
    blob = to_json(index_message(data))
    position %= len(blob)
    damaged = blob[:position] + junk + blob[position + (len(junk) if replace else 0) :]
    try:
        restored = from_json(damaged)
    except IndexFormatError:
        return
    # If it still reads, it is a consistent tree.
    for part in iter_parts(restored):
        assert part.header_start <= part.body_start <= part.body_end


def test_deeply_nested_json_is_refused() -> None:
    with pytest.raises(IndexFormatError):
        from_json(b"[" * 100_000)


# Generated well-formed messages: the index must find exactly the structure that was built.

BODY_TEXT = st.lists(
    st.text(alphabet="abcxyz .,!0129éß", max_size=20), max_size=5
).map(lambda lines: "\r\n".join(lines).encode())
LEAF = st.tuples(
    st.sampled_from(["text/plain", "text/html", "application/octet-stream", "image/png"]),
    BODY_TEXT,
)
TREE = st.recursive(
    LEAF,
    lambda children: st.one_of(
        st.tuples(st.just("multipart"), st.sampled_from(["mixed", "alternative", "related"]),
                  st.lists(children, min_size=1, max_size=4)),
        st.tuples(st.just("message"), children),
    ),
    max_leaves=12,
)


def render(node, counter: list[int], extra_header: bytes = b"") -> bytes:
    counter[0] += 1
    if node[0] == "multipart":
        boundary = b"=_b%d" % counter[0]
        body = b"preamble\r\n"
        for child in node[2]:
            body += b"--" + boundary + b"\r\n" + render(child, counter) + b"\r\n"
        body += b"--" + boundary + b"--\r\nepilogue\r\n"
        header = b"Content-Type: multipart/%s; boundary=\"%s\"\r\n" % (node[1].encode(), boundary)
        return extra_header + header + b"\r\n" + body
    if node[0] == "message":
        inner = render(node[1], counter, b"Subject: inner %d\r\n" % counter[0])
        return extra_header + b"Content-Type: message/rfc822\r\n\r\n" + inner
    return extra_header + b"Content-Type: " + node[0].encode() + b"\r\n\r\n" + node[1]


def compare(node, part: Part, data: bytes, line_end: bytes) -> None:
    if node[0] == "multipart":
        assert part.content_type == "multipart/" + node[1]
        assert len(part.children) == len(node[2])
        for child_node, child in zip(node[2], part.children, strict=True):
            compare(child_node, child, data, line_end)
    elif node[0] == "message":
        assert part.content_type == "message/rfc822"
        assert part.message is not None
        assert part.message.envelope.subject.startswith(b"inner ")
        compare(node[1], part.message, data, line_end)
    else:
        assert part.content_type == node[0]
        assert data[part.body_start : part.body_end] == node[1].replace(b"\r\n", line_end)
        assert part.defects == []


@SLOWER
@given(tree=TREE, lf_only=st.booleans())
def test_generated_messages_are_indexed_exactly(tree, lf_only: bool, imap_parse) -> None:
    data = render(tree, [0], b"Subject: top\r\nFrom: a@example.org\r\n")
    line_end = b"\r\n"
    if lf_only:
        data, line_end = data.replace(b"\r\n", b"\n"), b"\n"
    root = index_message(data, MimeLimits(max_depth=100, max_parts=10_000))
    check_invariants(data, root, MimeLimits(max_depth=100, max_parts=10_000))
    compare(tree, root, data, line_end)
    assert root.envelope.subject == b"top"
    structure = imap_parse(imap_bodystructure(root))
    assert isinstance(structure, list)


# Header-level parsers.


@FAST
@given(raw=any_bytes)
def test_header_parsers_never_raise(raw: bytes) -> None:
    decode_header_value(raw)
    parse_address_list(raw)
    parse_content_type(raw)
    parse_disposition(raw)
    parse_language(raw)
    parse_transfer_encoding(raw)
    fields = header_fields(raw, 0, len(raw))
    # Fields are contiguous from the start: nothing in the header block is skipped.
    position = 0
    for _, start, end in fields:
        assert start == position < end
        position = end


@FAST
@given(section=st.text(max_size=30), data=mime_bytes)
def test_find_section_never_raises(section: str, data: bytes) -> None:
    root = index_message(data)
    found = find_section(root, section)
    assert found is None or 0 <= found[0] <= found[1] <= len(data)


ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_+", min_size=1, max_size=8)
DOT_ATOM = st.lists(ATOM, min_size=1, max_size=3).map(".".join)
NAME = st.lists(st.text(alphabet="abcXYZ", min_size=1, max_size=6), max_size=3).map(" ".join)


@st.composite
def simple_address_lists(draw) -> bytes:
    items = []
    for _ in range(draw(st.integers(1, 5))):
        local, domain, name = draw(DOT_ATOM), draw(DOT_ATOM), draw(NAME)
        form = draw(st.integers(0, 2))
        if form == 0:
            items.append(f"{local}@{domain}")
        elif form == 1:
            items.append(f"{name} <{local}@{domain}>")
        else:
            items.append(f'"{name}, jr" <{local}@{domain}>')
    return draw(st.sampled_from([", ", ",", " ,\t"])).join(items).encode()


@FAST
@given(raw=simple_address_lists())
def test_address_fast_path_matches_full_parser(raw: bytes) -> None:
    fast = _parse_simple(raw, MAX_ADDRESSES)
    assert fast is not None
    assert fast == _Parser(_tokenize(raw), MAX_ADDRESSES).parse()


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.+_", min_size=1, max_size=10)
PARAM_VALUE = st.text(alphabet="abc XYZ0123;:,=/()<>@?.-", max_size=15)


@FAST
@given(main=TOKEN, sub=TOKEN, params=st.dictionaries(TOKEN, PARAM_VALUE, max_size=5),
       comment=st.booleans())
def test_content_type_round_trip(main: str, sub: str, params: dict[str, str],
                                 comment: bool) -> None:
    rendered = f"{main}/{sub}" + "".join(f'; {k}="{v}"' for k, v in params.items())
    if comment:
        rendered += " (a comment)"  # takes the full parser instead of the fast path
    media_type, parsed, defects = parse_content_type(rendered.encode())
    assert media_type == f"{main}/{sub}".lower()
    expected: dict[str, str] = {}
    for key, value in params.items():
        expected.setdefault(key.lower(), value)
    assert parsed == expected
    assert defects == []


@FAST
@given(name=TOKEN, value=st.text(max_size=30), cuts=st.lists(st.integers(0, 90), max_size=4))
def test_rfc2231_continuations_round_trip(name: str, value: str, cuts: list[int]) -> None:
    encoded = quote_from_bytes(value.encode("utf-8"), safe="").encode()
    # Split only between percent-escapes, as RFC 2231 §4.1 requires.
    boundaries = sorted({c for c in cuts if c < len(encoded) and encoded[c : c + 1] != b"%"
                         and b"%" not in encoded[max(0, c - 2) : c]})
    pieces, last = [], 0
    for cut in boundaries:
        pieces.append(encoded[last:cut])
        last = cut
    pieces.append(encoded[last:])
    rendered = b"application/x-test"
    for index, piece in enumerate(pieces):
        prefix = b"utf-8'en'" if index == 0 else b""
        rendered += b"; %s*%d*=%s%s" % (name.encode(), index, prefix, piece)
    _, parsed, _ = parse_content_type(rendered)
    assert parsed == {name.lower(): value}
