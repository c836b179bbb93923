"""Fuzzing the command codec (:mod:`replication.wire.commands`) with hypothesis.

Every valid command survives ``to_line`` then ``CommandRegistry.parse`` unchanged; any bytes
at all parse to a command or raise ``CommandParseError`` (never another exception, which
would escape a connection's ``dataReceived``); lines at the edges of the field limits
(128-character names, 19-digit tokens, 16 versions) parse or are refused by those limits.
Profiles and the longer campaign: ``tests/fuzz_campaign.py``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from fuzz_campaign import load_profile
from replication.wire.commands import (
    MASTER,
    MAX_VERSIONS,
    WORKER,
    Command,
    CommandParseError,
    ErrorCommand,
    GapCommand,
    NameCommand,
    PingCommand,
    PositionCommand,
    RdataCommand,
    ReplicateCommand,
    ResetCommand,
    ServerCommand,
    VersionCommand,
    decode_json,
    decode_json_bytes,
    default_registry,
    encode_json,
)

load_profile()

REGISTRY = default_registry()
MAX_TOKEN = 10**19 - 1

stream_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}", fullmatch=True).filter(
    lambda name: name != "ALL"
)
peer_names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128
)
tokens = st.integers(0, MAX_TOKEN)
#: Text that UTF-8 can carry (no lone surrogates).
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=20,
)

#: Every built-in command, with the side that sends it.
commands: st.SearchStrategy[tuple[Command, str]] = st.one_of(
    st.builds(ServerCommand, peer_names).map(lambda c: (c, MASTER)),
    st.builds(NameCommand, peer_names).map(lambda c: (c, WORKER)),
    st.builds(
        VersionCommand,
        st.lists(st.integers(1, 10**9 - 1), min_size=1, max_size=MAX_VERSIONS).map(tuple),
    ).map(lambda c: (c, WORKER)),
    st.builds(PingCommand, tokens).map(lambda c: (c, MASTER)),
    st.builds(ReplicateCommand, stream_names, st.none() | tokens).map(lambda c: (c, WORKER)),
    st.just((ReplicateCommand("ALL", None), WORKER)),
    st.builds(RdataCommand, stream_names, st.none() | tokens, json_values).map(
        lambda c: (c, MASTER)
    ),
    st.builds(PositionCommand, stream_names, tokens).map(lambda c: (c, MASTER)),
    st.tuples(stream_names, st.integers(1, MAX_TOKEN), st.integers(0, MAX_TOKEN)).map(
        lambda t: (GapCommand(t[0], min(t[1], t[2] or t[1]), max(t[1], t[2])), MASTER)
    ),
    st.builds(ResetCommand, stream_names, tokens).map(lambda c: (c, MASTER)),
    st.builds(ErrorCommand, texts).map(lambda c: (c, WORKER)),
)


@given(commands)
def test_every_valid_command_survives_a_round_trip(command_and_sender: tuple[Command, str]) -> None:
    """``parse(command.to_line())`` gives back an equal command, and its line has no line
    break in it."""
    command, sender = command_and_sender
    line = command.to_line()
    assert b"\n" not in line and b"\r" not in line
    assert REGISTRY.parse(line, sender) == command


def _parse_or_refuse(line: bytes, sender: str) -> Command | None:
    try:
        return REGISTRY.parse(line, sender)
    except CommandParseError as e:
        assert str(e)  # the message is sent to the peer: never empty
        return None


#: Lines that start like a real command, then go astray.
near_lines = st.tuples(
    st.sampled_from(sorted(REGISTRY.names()) + ["", "rdata", "PING "]),
    st.sampled_from(["", " ", "  "]),
    st.binary(max_size=60) | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
).map(lambda t: t[0].encode() + t[1].encode() + t[2])


@given(st.binary(max_size=200) | near_lines, st.sampled_from([MASTER, WORKER]))
@example(b"RDATA s 1 " + b"[" * 5000 + b"]" * 5000, MASTER)
@example(b"RDATA s 1 " + b"{\"a\":" * 3000, MASTER)
@example(b'RDATA s 1 "\\udc00"', MASTER)
@example(b"RDATA s 1 1e999", MASTER)
@example(b"VERSION " + b" ".join([b"1"] * (MAX_VERSIONS + 1)), WORKER)
def test_any_bytes_parse_or_raise_command_parse_error(line: bytes, sender: str) -> None:
    """Whatever a peer sends, ``parse`` returns a command or raises ``CommandParseError``;
    a command it returns encodes again to a line that parses to the same command."""
    command = _parse_or_refuse(line, sender)
    if command is not None:
        assert REGISTRY.parse(command.to_line(), sender) == command


def test_a_deeply_nested_row_is_refused_as_a_parse_error() -> None:
    """Found by the fuzzer: an RDATA row nested deeper than the JSON decoder's recursion
    limit raised ``RecursionError`` out of ``parse`` (and so out of a worker's
    ``dataReceived``); it is now a ``CommandParseError`` saying the row is nested too deep,
    and a value too deep to encode is refused the same way."""
    deep = b"[" * 5000 + b"]" * 5000
    for decode in (lambda: REGISTRY.parse(b"RDATA s 1 " + deep, MASTER),
                   lambda: decode_json(deep.decode()), lambda: decode_json_bytes(deep)):
        try:
            decode()
        except CommandParseError as e:
            assert "nested too deep" in str(e)
        else:
            raise AssertionError("a 5000-deep document was accepted")
    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    try:
        encode_json(nested)
    except CommandParseError as e:
        assert "nested too deep" in str(e)
    else:
        raise AssertionError("a 5000-deep value was encoded")
    shallow = b"[" * 100 + b"]" * 100
    assert isinstance(REGISTRY.parse(b"RDATA s 1 " + shallow, MASTER), RdataCommand)


# -- at the limits ---------------------------------------------------------------------------


@given(st.integers(1, 130), st.sampled_from("aZ9_.-"))
def test_stream_names_at_the_length_limit(length: int, filler: str) -> None:
    """A stream name of up to 128 characters is accepted, 129 and more refused."""
    name = "s" + filler * (length - 1)
    line = f"POSITION {name} 1".encode()
    command = _parse_or_refuse(line, MASTER)
    assert (command is not None) == (length <= 128)
    if command is not None:
        assert command == PositionCommand(name, 1)


@given(st.integers(1, 130))
def test_peer_names_at_the_length_limit(length: int) -> None:
    """A server or worker name of up to 128 characters is accepted, longer refused."""
    name = "n" * length
    assert (_parse_or_refuse(f"NAME {name}".encode(), WORKER) is not None) == (length <= 128)
    assert (_parse_or_refuse(f"SERVER {name}".encode(), MASTER) is not None) == (length <= 128)


@given(st.integers(1, 21), st.sampled_from("0123456789"))
def test_tokens_at_the_digit_limit(digits: int, last: str) -> None:
    """Tokens of up to 19 digits are accepted, 20 and more refused, in every command that
    carries one."""
    text = "9" * (digits - 1) + last
    for line, sender in ((f"REPLICATE s {text}", WORKER), (f"RDATA s {text} 1", MASTER),
                         (f"POSITION s {text}", MASTER), (f"RESET s {text}", MASTER),
                         (f"PING {text}", MASTER)):
        command = _parse_or_refuse(line.encode(), sender)
        assert (command is not None) == (digits <= 19), line


@given(st.integers(1, MAX_VERSIONS + 2))
def test_version_lists_at_their_limit(count: int) -> None:
    """``VERSION`` takes 1 to 16 versions."""
    line = ("VERSION " + " ".join(str(v) for v in range(1, count + 1))).encode()
    assert (_parse_or_refuse(line, WORKER) is not None) == (count <= MAX_VERSIONS)
