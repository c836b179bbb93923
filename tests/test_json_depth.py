"""Nesting depth in the JSON codec: deep documents are refused with CommandParseError,
never a RecursionError, on every path (orjson and the standard library)."""

from __future__ import annotations

import pytest

from replication.wire import commands
from replication.wire.commands import (
    MAX_PARSED_DEPTH,
    CommandParseError,
    decode_json,
    decode_json_bytes,
    encode_json,
    encode_parsed_json,
)


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_encode_parsed_json_takes_the_depth_limit_and_refuses_one_more() -> None:
    """MAX_PARSED_DEPTH nested lists encode; one more level is a CommandParseError that
    names the limit."""
    depth = MAX_PARSED_DEPTH
    assert encode_parsed_json(nested(depth)) == "[" * depth + "]" * depth
    with pytest.raises(CommandParseError, match=f"nested more than {MAX_PARSED_DEPTH} levels"):
        encode_parsed_json(nested(depth + 1))


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_decoding_a_document_deeper_than_the_decoders_is_a_parse_error(depth: int) -> None:
    """A document nested far beyond what either decoder takes is refused with
    CommandParseError ("nested too deeply"), from bytes (orjson, then the standard library)
    and from text (the standard library alone)."""
    text = "[" * depth + "]" * depth
    with pytest.raises(CommandParseError, match="body is nested too deeply"):
        decode_json_bytes(text.encode(), what="body")
    with pytest.raises(CommandParseError, match="RDATA row is nested too deeply"):
        decode_json(text)


def test_encode_json_refuses_what_would_exhaust_the_recursion_limit() -> None:
    """The standard library encoder (rows that are not from a parser) refuses a value nested
    beyond Python's recursion limit with CommandParseError."""
    with pytest.raises(CommandParseError, match="row is nested too deeply"):
        encode_json(nested(100_000))


def test_without_orjson_deep_rows_are_still_a_parse_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With orjson absent, encode_parsed_json falls back to the standard library, which
    still refuses a value nested beyond the recursion limit with CommandParseError."""
    monkeypatch.setattr(commands, "_orjson", None)
    assert encode_parsed_json(nested(MAX_PARSED_DEPTH + 1)).count("[") == MAX_PARSED_DEPTH + 1
    with pytest.raises(CommandParseError, match="nested too deeply"):
        encode_parsed_json(nested(100_000))
