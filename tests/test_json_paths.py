"""The fast JSON path (orjson, when installed) and the standard library path accept and
refuse exactly the same documents, so a worker and a master with different installs agree."""

from __future__ import annotations

from typing import Any

import pytest

import replication.commands as commands
from replication.commands import CommandParseError, decode_json_bytes, encode_parsed_json

PATHS = ["orjson", "stdlib"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "orjson":
        if commands._orjson is None:
            pytest.skip("orjson is not installed")
    else:
        monkeypatch.setattr(commands, "_orjson", None)
    return str(request.param)


@pytest.mark.parametrize(
    "data, value",
    [
        (
            b'["m.room.message",{"body":"h\xc3\xa9"},1,2.5,null,true]',
            ["m.room.message", {"body": "hé"}, 1, 2.5, None, True],
        ),
        (b"123456789012345678901234567890", 123456789012345678901234567890),
        (b' {"a": [] } ', {"a": []}),
        (b'"\\ud83d\\ude00"', "\U0001f600"),
    ],
)
def test_both_paths_decode_the_same_values(path: str, data: bytes, value: Any) -> None:
    assert decode_json_bytes(data) == value


@pytest.mark.parametrize(
    "data",
    [b"NaN", b"[Infinity]", b"-Infinity", b"[1e400]", b'"\\ud800"', b"\xff", b"{", b"[1,]", b""],
)
def test_both_paths_refuse_the_same_documents(path: str, data: bytes) -> None:
    with pytest.raises(CommandParseError):
        decode_json_bytes(data)


@pytest.mark.parametrize(
    "value",
    [["a", {"b": "é"}, 1, -2.5, None, False], 2**70, {"nested": [[[]]]}, "line\nbreak"],
)
def test_both_paths_encode_compact_json_that_reads_back(path: str, value: Any) -> None:
    text = encode_parsed_json(value)
    assert "\n" not in text and ", " not in text and ": " not in text
    assert decode_json_bytes(text.encode()) == value
