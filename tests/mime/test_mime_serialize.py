"""The stored index: exact round trips, compactness, versioning and damaged blobs."""

from __future__ import annotations

import json

import pytest

from mailkeep.mime import IndexFormatError, from_json, index_message, to_json
from mailkeep.mime.serialize import FORMAT_VERSION

MESSAGE = (
    b"From: =?utf-8?q?Zo=C3=AB?= <zoe@example.org>\r\n"
    b"To: team: a@example.org, b@example.org;\r\n"
    b"Subject: caf\xe9 \xff not utf-8\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8; name=\"r\xe9sum\xe9\"\r\n"
    b"Content-Language: en, fr\r\nContent-Disposition: inline\r\n\r\nbody\r\n"
    b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: bogus!\r\n\r\nxx\r\n"
)


def test_round_trip_is_exact() -> None:
    root = index_message(MESSAGE)
    blob = to_json(root)
    assert from_json(blob) == root
    # Stable: the same tree always gives the same bytes.
    assert to_json(from_json(blob)) == blob


def test_blob_is_valid_utf8_json_with_a_version() -> None:
    blob = to_json(index_message(MESSAGE))
    document = json.loads(blob.decode("utf-8"))
    assert document["v"] == FORMAT_VERSION
    assert len(document["p"]) == 5  # root, three children, the encapsulated message


def test_non_utf8_header_bytes_survive() -> None:
    restored = from_json(to_json(index_message(MESSAGE)))
    assert restored.envelope.subject == b"caf\xe9 \xff not utf-8"
    assert restored.children[0].params["name"].encode("utf-8", "surrogateescape") == (
        b"r\xe9sum\xe9"
    )


def test_simple_message_blob_is_small() -> None:
    data = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
    blob = to_json(index_message(data))
    assert len(blob) < 200
    assert blob.startswith(b'{"v":1,"p":[{"h":0,"b":')


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v":2,"p":[{"h":0,"b":0,"e":0}]}',
        b'{"v":1}',
        b'{"v":1,"p":[]}',
        b'{"v":1,"p":[{"h":0,"b":0}]}',
        b'{"v":1,"p":[{"h":-1,"b":0,"e":0}]}',
        b'{"v":1,"p":[{"h":0,"b":0,"e":0,"c":1}]}',
        b'{"v":1,"p":[{"h":0,"b":0,"e":0},{"h":0,"b":0,"e":0}]}',
        b'{"v":1,"p":[{"h":0,"b":0,"e":0,"t":5}]}',
        b'{"v":1,"p":[{"h":0,"b":0,"e":0,"ev":[1]}]}',
        b'{"v":1,"p":[{"h":0,"b":0,"e":0,"p":{"a":1}}]}',
        b'{"v":1,"p":[{"h":0,"b":0,"e":0,"g":"en"}]}',
        b'{"v":1,"p":["x"]}',
        b"\xff\xfe",
    ],
)
def test_damaged_blobs_raise_index_format_error(blob: bytes) -> None:
    with pytest.raises(IndexFormatError):
        from_json(blob)


def test_index_format_error_is_a_value_error() -> None:
    assert issubclass(IndexFormatError, ValueError)
