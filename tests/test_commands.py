"""Unit tests of the pure command codec in :mod:`replication.wire.commands`.

Tables of valid and invalid lines for every built-in command, the registry's rules for
application commands, and the helpers the master uses to encode rows (``encode_json``,
``rdata_lines``, ``rdata_line_length``). Nothing here touches Twisted.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, ClassVar

import pytest

import replication.commands as old_commands
import replication.wire.commands as wire_commands
from replication.wire.commands import (
    ALL_STREAMS,
    MASTER,
    WORKER,
    Command,
    CommandParseError,
    CommandRegistry,
    ErrorCommand,
    GapCommand,
    HandledCommand,
    NameCommand,
    PingCommand,
    PositionCommand,
    RdataCommand,
    ReplicateCommand,
    ResetCommand,
    ServerCommand,
    check_stream_name,
    default_registry,
    encode_json,
    parse_token,
    rdata_block,
    rdata_line_length,
    rdata_lines,
)

BUILTIN_NAMES = frozenset(
    {
        "SERVER", "NAME", "VERSION", "PING", "REPLICATE", "RDATA", "ROWS", "LINE_LIMIT",
        "POSITION", "GAP", "RESET",
        "ERROR", "HANDLED", "ORIGIN", "RELAY", "PUBLISHER", "PUBLISHING", "PUBLISH",
        "PUBLISH_TOKENS", "PUBLISH_BATCH", "PUBLISHED", "PUBLISHED_RUN", "REFUSED", "CHALLENGE",
        "AUTH", "AUTH_OK",
    }
)
STREAM_128 = "s" * 128
STREAM_129 = "s" * 129
MAX_TOKEN = 10**19 - 1


# --------------------------------------------------------------------------- valid lines

VALID: list[tuple[bytes, str, Command]] = [
    # SERVER / NAME
    (b"SERVER master", MASTER, ServerCommand("master")),
    (b"SERVER m-1.example:9092", MASTER, ServerCommand("m-1.example:9092")),
    (b"SERVER " + b"x" * 128, MASTER, ServerCommand("x" * 128)),
    (b"NAME worker-1", WORKER, NameCommand("worker-1")),
    (b"NAME w!~", WORKER, NameCommand("w!~")),
    # PING, from either side
    (b"PING 1763700000000", MASTER, PingCommand(1763700000000)),
    (b"PING 1763700000000", WORKER, PingCommand(1763700000000)),
    (b"PING 0", WORKER, PingCommand(0)),
    # REPLICATE
    (b"REPLICATE events 41", WORKER, ReplicateCommand("events", 41)),
    (b"REPLICATE events 0", WORKER, ReplicateCommand("events", 0)),
    (b"REPLICATE events NOW", WORKER, ReplicateCommand("events", None)),
    (b"REPLICATE ALL NOW", WORKER, ReplicateCommand(ALL_STREAMS, None)),
    (b"REPLICATE a.b-c_9 " + str(MAX_TOKEN).encode(), WORKER,
     ReplicateCommand("a.b-c_9", MAX_TOKEN)),
    (b"REPLICATE _x 1", WORKER, ReplicateCommand("_x", 1)),
    (b"REPLICATE " + STREAM_128.encode() + b" 1", WORKER, ReplicateCommand(STREAM_128, 1)),
    # RDATA with batch / token and all kinds of JSON values
    (b'RDATA events 42 {"id":"$a","room":"!r"}', MASTER,
     RdataCommand("events", 42, {"id": "$a", "room": "!r"})),
    (b'RDATA events batch {"id":"$b","room":"!r"}', MASTER,
     RdataCommand("events", None, {"id": "$b", "room": "!r"})),
    (b'RDATA s 1 {"nested":{"a":[1,2,{"b":null}]}}', MASTER,
     RdataCommand("s", 1, {"nested": {"a": [1, 2, {"b": None}]}})),
    (b"RDATA s 1 [1,\"two\",3.5,true,false,null]", MASTER,
     RdataCommand("s", 1, [1, "two", 3.5, True, False, None])),
    (b"RDATA s 1 []", MASTER, RdataCommand("s", 1, [])),
    (b"RDATA s 1 {}", MASTER, RdataCommand("s", 1, {})),
    (b'RDATA s batch "hello world  with spaces"', MASTER,
     RdataCommand("s", None, "hello world  with spaces")),
    ('RDATA s 2 "caf\u00e9 \u2603 \U0001f600 \u65e5\u672c"'.encode(), MASTER,
     RdataCommand("s", 2, "caf\u00e9 \u2603 \U0001f600 \u65e5\u672c")),
    ('RDATA s 2 {"k\u00e9y":"v a l"}'.encode(), MASTER,
     RdataCommand("s", 2, {"k\u00e9y": "v a l"})),
    (b'RDATA s 3 "line\\nbreak"', MASTER, RdataCommand("s", 3, "line\nbreak")),
    (b"RDATA s 3 17", MASTER, RdataCommand("s", 3, 17)),
    (b"RDATA s 3 -2.5", MASTER, RdataCommand("s", 3, -2.5)),
    (b"RDATA s 3 123456789012345678901234567890", MASTER,
     RdataCommand("s", 3, 123456789012345678901234567890)),
    (b"RDATA s 3 null", MASTER, RdataCommand("s", 3, None)),
    (b"RDATA s 3 true", MASTER, RdataCommand("s", 3, True)),
    # POSITION / GAP / RESET
    (b"POSITION events 43", MASTER, PositionCommand("events", 43)),
    (b"POSITION events 0", MASTER, PositionCommand("events", 0)),
    (b"HANDLED events 43", WORKER, HandledCommand("events", 43)),
    (b"HANDLED events 0", WORKER, HandledCommand("events", 0)),
    (b"GAP events 1 40", MASTER, GapCommand("events", 1, 40)),
    (b"GAP events 7 7", MASTER, GapCommand("events", 7, 7)),
    (b"RESET events 12", MASTER, ResetCommand("events", 12)),
    (b"RESET events 0", MASTER, ResetCommand("events", 0)),
    # ERROR, from either side, with empty text and text with spaces
    (b"ERROR", MASTER, ErrorCommand("")),
    (b"ERROR", WORKER, ErrorCommand("")),
    (b"ERROR unknown stream 'x'", WORKER, ErrorCommand("unknown stream 'x'")),
    (b"ERROR  two  leading spaces kept ", MASTER, ErrorCommand(" two  leading spaces kept ")),
    ("ERROR caf\u00e9 ferm\u00e9".encode(), MASTER, ErrorCommand("caf\u00e9 ferm\u00e9")),
]


@pytest.mark.parametrize(("line", "sender", "expected"), VALID, ids=lambda v: repr(v)[:60])
def test_valid_line_parses_to_expected_command(
    line: bytes, sender: str, expected: Command
) -> None:
    """Each valid line parses, from a side allowed to send it, into the expected frozen
    command (compared with ==, so type and every field must match)."""
    parsed = default_registry().parse(line, sender)
    assert type(parsed) is type(expected)
    assert parsed == expected


@pytest.mark.parametrize(("line", "sender", "expected"), VALID, ids=lambda v: repr(v)[:60])
def test_command_round_trips_through_its_line(
    line: bytes, sender: str, expected: Command
) -> None:
    """Encoding a command and parsing the line back gives an equal command."""
    encoded = expected.to_line()
    assert isinstance(encoded, bytes)
    assert b"\n" not in encoded and b"\r" not in encoded
    assert default_registry().parse(encoded, sender) == expected


@pytest.mark.parametrize(
    ("line", "sender"),
    [
        (b"SERVER master", MASTER),
        (b"NAME worker-1", WORKER),
        (b"PING 5", WORKER),
        (b"REPLICATE events 41", WORKER),
        (b"REPLICATE ALL NOW", WORKER),
        (b'RDATA events 42 {"id":"$a","room":"!r"}', MASTER),
        (b"RDATA events batch [1,2]", MASTER),
        (b"POSITION events 43", MASTER),
        (b"GAP events 1 40", MASTER),
        (b"RESET events 0", MASTER),
        (b"ERROR something went wrong", MASTER),
        (b"ERROR", WORKER),
    ],
)
def test_canonical_line_is_reproduced_byte_for_byte(line: bytes, sender: str) -> None:
    """A line in canonical form (compact JSON, no leading zeros) is re-encoded to exactly
    the same bytes."""
    assert default_registry().parse(line, sender).to_line() == line


def test_commands_are_frozen() -> None:
    """Commands are immutable: assigning a field raises."""
    cmd = PositionCommand("s", 1)
    with pytest.raises(FrozenInstanceError):
        cmd.token = 2  # type: ignore[misc]


def test_rdata_rows_encode_as_compact_json_keeping_non_ascii() -> None:
    """RDATA encodes its row compactly (no spaces after , or :) and keeps non-ASCII as
    UTF-8 rather than \\u escapes."""
    cmd = RdataCommand("s", None, {"a": [1, 2], "b": "\u00e9 x"})
    assert cmd.to_line() == 'RDATA s batch {"a":[1,2],"b":"\u00e9 x"}'.encode()


# --------------------------------------------------------------------------- invalid lines

INVALID: list[tuple[bytes, str, str]] = [
    # unknown / lowercase / empty command names
    (b"HELLO world", MASTER, "unknown command 'HELLO'"),
    (b"ping 1", WORKER, "unknown command 'ping'"),
    (b"Ping 1", WORKER, "unknown command 'Ping'"),
    (b"", WORKER, "unknown command ''"),
    (b" PING 1", WORKER, "unknown command ''"),
    (b"PING\t1", WORKER, "unknown command"),
    # wrong field counts: too few
    (b"SERVER", MASTER, "SERVER takes 1 argument"),
    (b"SERVER ", MASTER, "SERVER takes 1 argument"),
    (b"NAME", WORKER, "NAME takes 1 argument"),
    (b"PING", WORKER, "PING takes 1 argument"),
    (b"REPLICATE", WORKER, "REPLICATE takes 2 arguments"),
    (b"REPLICATE events", WORKER, "REPLICATE takes 2 arguments"),
    (b"RDATA events 1", MASTER, "RDATA takes 3 arguments"),
    (b"RDATA events", MASTER, "RDATA takes 3 arguments"),
    (b"POSITION events", MASTER, "POSITION takes 2 arguments"),
    (b"GAP events 1", MASTER, "GAP takes 3 arguments"),
    (b"RESET events", MASTER, "RESET takes 2 arguments"),
    # wrong field counts: too many
    (b"SERVER a b", MASTER, "invalid server name 'a b'"),
    (b"NAME a b", WORKER, "invalid worker name 'a b'"),
    (b"PING 1 2", WORKER, "PING timestamp must be a non-negative integer, got '1 2'"),
    (b"POSITION s 1 2", MASTER, "takes 2 arguments"),
    (b"REPLICATE s 1 2", WORKER, "takes 2 arguments"),
    (b"REPLICATE ALL NOW x", WORKER, "REPLICATE takes 2 arguments"),
    (b"GAP s 1 2 3", MASTER, "GAP takes 3 arguments"),
    (b"RESET s 1 2", MASTER, "RESET takes 2 arguments"),
    # empty arguments (double spaces, trailing space)
    (b"REPLICATE  1", WORKER, "REPLICATE takes 2 arguments"),
    (b"REPLICATE s ", WORKER, "takes 2 arguments"),
    (b"RDATA s  {}", MASTER, "RDATA takes 3 arguments"),
    (b"RDATA  1 {}", MASTER, "RDATA takes 3 arguments"),
    (b"RDATA s 1 ", MASTER, "RDATA takes 3 arguments"),
    (b"POSITION s ", MASTER, "takes 2 arguments"),
    (b"GAP s  1", MASTER, "GAP takes 3 arguments"),
    (b"PING ", WORKER, "PING takes 1 argument"),
    (b"PING  1", WORKER, "PING timestamp must be a non-negative integer, got ' 1'"),
    # non-integer, negative and otherwise malformed tokens
    (b"PING abc", WORKER, "PING timestamp must be a non-negative integer, got 'abc'"),
    (b"PING 1.5", WORKER, "got '1.5'"),
    (b"PING -1", WORKER, "got '-1'"),
    (b"PING +1", WORKER, "got '+1'"),
    (b"PING 0x10", WORKER, "got '0x10'"),
    (b"PING 1_000", WORKER, "got '1_000'"),
    (b"REPLICATE s -1", WORKER, "token must be a non-negative integer, got '-1'"),
    (b"REPLICATE s +5", WORKER, "got '+5'"),
    (b"REPLICATE s now", WORKER, "got 'now'"),
    (b"REPLICATE s 1e3", WORKER, "got '1e3'"),
    ("REPLICATE s \u0661\u0662".encode(), WORKER, "got '\u0661\u0662'"),
    ("POSITION s \u00b2".encode(), MASTER, "got '\u00b2'"),
    ("PING \uff11".encode(), WORKER, "got '\uff11'"),
    (b"RDATA s -3 {}", MASTER, "token must be a non-negative integer, got '-3'"),
    (b"RDATA s BATCH {}", MASTER, "got 'BATCH'"),
    (b"RDATA s NOW {}", MASTER, "got 'NOW'"),
    (b"POSITION s NOW", MASTER, "got 'NOW'"),
    (b"GAP s x 3", MASTER, "first token must be a non-negative integer, got 'x'"),
    (b"RESET s -1", MASTER, "head token must be a non-negative integer, got '-1'"),
    # over-long tokens (20 digits; 19 is the limit)
    (b"PING " + b"1" * 20, WORKER, "PING timestamp must be a non-negative integer"),
    (b"REPLICATE s 10000000000000000000", WORKER, "token must be a non-negative integer"),
    (b"POSITION s " + b"0" * 20, MASTER, "token must be a non-negative integer"),
    (b"RDATA s " + b"9" * 20 + b" {}", MASTER, "token must be a non-negative integer"),
    # invalid JSON in RDATA, and trailing garbage after valid JSON
    (b"RDATA s 1 {", MASTER, "RDATA row is not valid JSON"),
    (b"RDATA s 1 {'a':1}", MASTER, "RDATA row is not valid JSON"),
    (b"RDATA s 1 hello world", MASTER, "RDATA row is not valid JSON"),
    (b"RDATA s 1 undefined", MASTER, "RDATA row is not valid JSON"),
    (b"RDATA s 1 [1,]", MASTER, "RDATA row is not valid JSON"),
    (b'RDATA s 1 {"a":1} x', MASTER, "RDATA row is not valid JSON"),
    (b'RDATA s 1 {"a":1}{"b":2}', MASTER, "RDATA row is not valid JSON"),
    (b"RDATA s 1 [1] [2]", MASTER, "RDATA row is not valid JSON"),
    (b"RDATA s 1 1 2", MASTER, "RDATA row is not valid JSON"),
    # invalid UTF-8
    (b"ERROR \xff", MASTER, "line is not valid UTF-8 (byte 6)"),
    (b"RDATA s 1 \"\xc3\"", MASTER, "line is not valid UTF-8 (byte 11)"),
    (b"\xfePING 1", WORKER, "line is not valid UTF-8 (byte 0)"),
    (b"NAME \xed\xa0\x80", WORKER, "line is not valid UTF-8"),  # encoded surrogate
    # embedded line breaks
    (b"PING 1\r", WORKER, "line contains an embedded line break"),
    (b"ERROR a\nb", MASTER, "line contains an embedded line break"),
    (b"ERROR a\rb", WORKER, "line contains an embedded line break"),
    (b"RDATA s 1 {}\r\nPING 1", MASTER, "line contains an embedded line break"),
    # bad stream names
    (b"REPLICATE .x 1", WORKER, "invalid stream name '.x'"),
    (b"REPLICATE -x 1", WORKER, "invalid stream name '-x'"),
    (b"REPLICATE x/y 1", WORKER, "invalid stream name 'x/y'"),
    ("REPLICATE caf\u00e9 1".encode(), WORKER, "invalid stream name"),
    (b"REPLICATE " + STREAM_129.encode() + b" 1", WORKER, "invalid stream name"),
    (b"POSITION " + STREAM_129.encode() + b" 1", MASTER, "invalid stream name"),
    (b"RDATA .x 1 {}", MASTER, "invalid stream name '.x'"),
    (b"RDATA ALL 1 {}", MASTER, "'ALL' is reserved and cannot name a stream"),
    (b"RDATA ALL batch {}", MASTER, "'ALL' is reserved"),
    (b"POSITION ALL 1", MASTER, "'ALL' is reserved and cannot name a stream"),
    (b"GAP ALL 1 2", MASTER, "'ALL' is reserved"),
    (b"RESET ALL 1", MASTER, "'ALL' is reserved"),
    (b"REPLICATE ALL 5", WORKER, "REPLICATE ALL takes NOW, not a token"),
    (b"REPLICATE ALL 0", WORKER, "REPLICATE ALL takes NOW, not a token"),
    # bad peer names
    (b"SERVER " + b"x" * 129, MASTER, "invalid server name"),
    ("NAME w\u00f6rker".encode(), WORKER, "invalid worker name"),
    (b"NAME w\x00", WORKER, "invalid worker name"),
    # GAP ordering
    (b"GAP s 5 4", MASTER, "GAP needs 0 < first <= last, got first=5 last=4"),
    (b"GAP s 0 4", MASTER, "GAP needs 0 < first <= last, got first=0 last=4"),
    (b"GAP s 0 0", MASTER, "GAP needs 0 < first <= last"),
    # commands sent by the wrong side
    (b"RDATA s 1 {}", WORKER, "RDATA may not be sent by the worker"),
    (b"POSITION s 1", WORKER, "POSITION may not be sent by the worker"),
    (b"GAP s 1 2", WORKER, "GAP may not be sent by the worker"),
    (b"RESET s 1", WORKER, "RESET may not be sent by the worker"),
    (b"SERVER master", WORKER, "SERVER may not be sent by the worker"),
    (b"REPLICATE s 1", MASTER, "REPLICATE may not be sent by the master"),
    (b"REPLICATE ALL NOW", MASTER, "REPLICATE may not be sent by the master"),
    (b"NAME w", MASTER, "NAME may not be sent by the master"),
    # the sender check comes before argument parsing
    (b"RDATA s 1 {not json", WORKER, "RDATA may not be sent by the worker"),
    # a long unknown name is shown truncated to 40 characters
    (b"X" * 41, WORKER, "unknown command '" + "X" * 40 + "...'"),
    (b"Y" * 1000 + b" args", MASTER, "unknown command '" + "Y" * 40 + "...'"),
]


@pytest.mark.parametrize(("line", "sender", "fragment"), INVALID, ids=lambda v: repr(v)[:60])
def test_invalid_line_raises_command_parse_error(
    line: bytes, sender: str, fragment: str
) -> None:
    """Each malformed line, or a line from a side that may not send it, raises
    CommandParseError whose message says what is wrong."""
    with pytest.raises(CommandParseError) as info:
        default_registry().parse(line, sender)
    assert fragment in str(info.value)


def test_command_parse_error_is_a_value_error() -> None:
    """CommandParseError subclasses ValueError, so callers may catch either."""
    assert issubclass(CommandParseError, ValueError)


def test_unknown_name_of_exactly_40_characters_is_shown_whole() -> None:
    """An unknown name of 40 characters is shown in full; only 41+ are truncated."""
    with pytest.raises(CommandParseError) as info:
        default_registry().parse(b"Z" * 40, WORKER)
    assert str(info.value) == "unknown command '" + "Z" * 40 + "'"


def test_long_unknown_name_message_stays_short() -> None:
    """The error for a huge unknown name stays short enough to send back as ERROR."""
    with pytest.raises(CommandParseError) as info:
        default_registry().parse(b"Q" * 100_000, WORKER)
    assert len(str(info.value)) < 80


@pytest.mark.parametrize(
    "line",
    [b"RDATA s 1 NaN", b"RDATA s 1 Infinity", b"RDATA s 1 -Infinity", b"RDATA s 1 [1e400]"],
)
def test_rdata_rejects_non_json_float_constants(line: bytes) -> None:
    """RDATA rows must be JSON: NaN, Infinity and numbers that overflow to infinity are
    refused at parse time, as encode_json refuses them at encode time."""
    with pytest.raises(CommandParseError, match="RDATA row is not valid JSON"):
        default_registry().parse(line, MASTER)


def test_rdata_with_lone_surrogate_escape_is_refused_or_round_trips() -> None:
    """An RDATA row holding an escaped lone surrogate is either refused with
    CommandParseError or parsed into a command that can be encoded again."""
    registry = default_registry()
    try:
        cmd = registry.parse(b'RDATA s 1 "\\ud800"', MASTER)
    except CommandParseError:
        return
    assert registry.parse(cmd.to_line(), MASTER) == cmd


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class AckCommand(Command):
    """``ACK <stream> <token>``: an application command the worker sends."""

    NAME: ClassVar[str] = "ACK"
    stream: str
    token: int

    def __post_init__(self) -> None:
        check_stream_name(self.stream)
        parse_token(str(self.token))

    @classmethod
    def from_args(cls, args: str) -> AckCommand:
        parts = args.split(" ")
        if len(parts) != 2:
            raise CommandParseError("ACK takes 2 arguments: ACK <stream> <token>")
        return cls(parts[0], parse_token(parts[1]))

    def to_args(self) -> str:
        return f"{self.stream} {self.token}"


def _registry_with_ack() -> CommandRegistry:
    registry = default_registry().copy()
    registry.register(AckCommand, [WORKER])
    return registry


def test_registered_application_command_is_parseable_on_that_registry() -> None:
    """ACK registered on a copy of the default registry parses from the worker and round
    trips through its line."""
    registry = _registry_with_ack()
    cmd = registry.parse(b"ACK events 42", WORKER)
    assert cmd == AckCommand("events", 42)
    assert cmd.to_line() == b"ACK events 42"
    assert registry.parse(cmd.to_line(), WORKER) == cmd


def test_registered_application_command_keeps_its_sender_rule() -> None:
    """ACK, registered as sent by the worker, is refused from the master."""
    with pytest.raises(CommandParseError, match="ACK may not be sent by the master"):
        _registry_with_ack().parse(b"ACK events 42", MASTER)


def test_registered_application_command_parse_errors_pass_through() -> None:
    """A malformed ACK raises the CommandParseError its class raises."""
    with pytest.raises(CommandParseError, match="ACK takes 2 arguments"):
        _registry_with_ack().parse(b"ACK events", WORKER)


def test_application_command_does_not_leak_into_other_registries() -> None:
    """Registering ACK on a copy changes neither the registry it was copied from nor a
    fresh default_registry(); there ACK is an unknown command."""
    original = default_registry()
    copy = original.copy()
    copy.register(AckCommand, [WORKER])
    assert "ACK" in copy.names()
    assert "ACK" not in original.names()
    assert "ACK" not in default_registry().names()
    for registry in (original, default_registry()):
        with pytest.raises(CommandParseError, match="unknown command 'ACK'"):
            registry.parse(b"ACK events 42", WORKER)


def test_copy_still_parses_builtins() -> None:
    """A copied registry keeps every built-in command and its sender rules."""
    copy = default_registry().copy()
    assert copy.names() == BUILTIN_NAMES
    assert copy.parse(b"POSITION s 3", MASTER) == PositionCommand("s", 3)
    with pytest.raises(CommandParseError, match="may not be sent by the worker"):
        copy.parse(b"POSITION s 3", WORKER)


def test_register_duplicate_name_raises_value_error() -> None:
    """Registering a name twice, or replacing a built-in, raises ValueError."""
    registry = _registry_with_ack()
    with pytest.raises(ValueError, match="ACK is already registered"):
        registry.register(AckCommand, [WORKER])

    @dataclass(frozen=True)
    class FakePing(Command):
        NAME: ClassVar[str] = "PING"

    with pytest.raises(ValueError, match="PING is already registered"):
        registry.register(FakePing, [MASTER])
    assert registry.parse(b"PING 1", MASTER) == PingCommand(1)


@pytest.mark.parametrize(
    "name", ["ack", "Ack", "1ACK", "_ACK", "", "A" * 33, "AC K", "ACK-2", "ÄCK", None, 5]
)
def test_register_bad_name_raises_value_error(name: Any) -> None:
    """A NAME that is not 1 to 32 of A-Z 0-9 _ starting with a letter is refused."""
    bad = type("Bad", (Command,), {"NAME": name})
    with pytest.raises(ValueError, match="NAME must be"):
        CommandRegistry().register(bad, [WORKER])


def test_register_class_without_name_raises_value_error() -> None:
    """A class that sets no NAME at all is refused."""

    class Nameless(Command):
        pass

    with pytest.raises(ValueError, match="Nameless.NAME must be"):
        CommandRegistry().register(Nameless, [WORKER])


def test_register_name_of_32_characters_is_accepted() -> None:
    """A 32-character NAME is at the limit and is accepted."""
    ok = type("Ok", (Command,), {"NAME": "A" * 31 + "9"})
    registry = CommandRegistry()
    registry.register(ok, [MASTER, WORKER])
    assert registry.names() == frozenset({"A" * 31 + "9"})


@pytest.mark.parametrize(
    "sent_by", [[], ["client"], [MASTER, "server"], ["Worker"], "worker", "master"]
)
def test_register_bad_sent_by_raises_value_error(sent_by: Any) -> None:
    """sent_by must be a non-empty collection of 'master' and/or 'worker' (a bare string
    is a collection of letters and is refused)."""
    with pytest.raises(ValueError, match="sent_by must name"):
        default_registry().copy().register(AckCommand, sent_by)


def test_failed_register_leaves_registry_unchanged() -> None:
    """A refused registration adds nothing."""
    registry = default_registry().copy()
    with pytest.raises(ValueError):
        registry.register(AckCommand, ["nobody"])
    assert registry.names() == BUILTIN_NAMES


def test_names_lists_all_and_per_side() -> None:
    """names() lists every command; names(side) those that side may send."""
    registry = default_registry()
    assert registry.names() == BUILTIN_NAMES
    assert registry.names(WORKER) == frozenset(
        {"NAME", "VERSION", "PING", "REPLICATE", "HANDLED", "ERROR", "ORIGIN", "RELAY",
         "PUBLISHER", "PUBLISH", "PUBLISH_TOKENS", "PUBLISH_BATCH", "AUTH", "LINE_LIMIT"}
    )
    assert registry.names(MASTER) == frozenset(
        {"SERVER", "VERSION", "PING", "RDATA", "ROWS", "POSITION", "GAP", "RESET", "ERROR",
         "ORIGIN", "PUBLISHING", "PUBLISHED", "PUBLISHED_RUN", "REFUSED", "CHALLENGE",
         "AUTH_OK"}
    )
    assert registry.names("nobody") == frozenset()
    with_ack = _registry_with_ack()
    assert with_ack.names(WORKER) == frozenset(
        {"NAME", "VERSION", "PING", "REPLICATE", "HANDLED", "ERROR", "ORIGIN", "RELAY", "ACK",
         "PUBLISHER", "PUBLISH", "PUBLISH_TOKENS", "PUBLISH_BATCH", "AUTH", "LINE_LIMIT"}
    )
    assert "ACK" not in with_ack.names(MASTER)


def test_default_registry_returns_a_new_registry_each_time() -> None:
    """default_registry() returns independent registries."""
    a = default_registry()
    b = default_registry()
    assert a is not b
    a.register(AckCommand, [WORKER])
    assert "ACK" not in b.names()


# --------------------------------------------------------------------------- ErrorCommand


@pytest.mark.parametrize(
    ("message", "flat"),
    [
        ("a\nb", "a b"),
        ("a\r\nb", "a b"),
        ("a\rb", "a b"),
        ("a\n\nb", "a  b"),
        ("\nstart and end\n", " start and end "),
        ("no breaks", "no breaks"),
    ],
)
def test_error_command_flattens_line_breaks(message: str, flat: str) -> None:
    """ErrorCommand replaces \\r\\n, \\n and \\r with spaces so its line is one line, and
    that line parses back."""
    cmd = ErrorCommand(message)
    assert cmd.message == flat
    line = cmd.to_line()
    assert b"\n" not in line and b"\r" not in line
    assert default_registry().parse(line, WORKER) == ErrorCommand(flat)


# --------------------------------------------------------------------------- encode_json


def test_encode_json_is_compact() -> None:
    """encode_json writes no spaces after separators."""
    assert encode_json({"a": [1, 2, {"b": None}], "c": "d e"}) == '{"a":[1,2,{"b":null}],"c":"d e"}'


def test_encode_json_keeps_non_ascii() -> None:
    """encode_json keeps non-ASCII characters instead of \\u escapes."""
    assert encode_json(["caf\u00e9", "\U0001f600"]) == '["caf\u00e9","\U0001f600"]'


def test_encode_json_escapes_line_breaks() -> None:
    """A string with line breaks is encoded on one line."""
    out = encode_json({"t": "a\nb\rc\u2028"})
    assert "\n" not in out and "\r" not in out


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"x": math.inf}])
def test_encode_json_rejects_nan_and_infinity(value: Any) -> None:
    """NaN and infinities are not JSON; encode_json raises CommandParseError."""
    with pytest.raises(CommandParseError, match="row is not JSON-serialisable"):
        encode_json(value)


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", {(1, 2): "tuple key"}])
def test_encode_json_rejects_non_serialisable_values(value: Any) -> None:
    """A value JSON cannot represent raises CommandParseError, not TypeError."""
    with pytest.raises(CommandParseError, match="row is not JSON-serialisable"):
        encode_json(value)


def test_rdata_to_line_with_unserialisable_row_raises_command_parse_error() -> None:
    """RdataCommand with a row JSON cannot hold fails at to_line with CommandParseError."""
    with pytest.raises(CommandParseError, match="row is not JSON-serialisable"):
        RdataCommand("s", 1, math.nan).to_line()


def test_encode_json_rejects_lone_surrogates() -> None:
    """A string with a lone surrogate cannot become a UTF-8 line; encode_json raises
    CommandParseError rather than returning text that fails later."""
    with pytest.raises(CommandParseError):
        encode_json("\ud800")


# --------------------------------------------------------------------------- rdata_lines


def test_rdata_lines_encodes_one_token_as_batch_lines_then_the_token() -> None:
    """Three rows of token 7 become two batch lines and a final line with 7, each ending
    in a newline."""
    out = rdata_lines("s", 7, ['{"a":1}', "[2]", "3"])
    assert out == b'RDATA s batch {"a":1}\nRDATA s batch [2]\nRDATA s 7 3\n'


def test_rdata_lines_parse_back_line_by_line() -> None:
    """Each line of rdata_lines parses back into the matching RdataCommand."""
    out = rdata_lines("s", 7, ['{"a":1}', "[2]", "3"])
    lines = out.split(b"\n")
    assert lines[-1] == b""
    registry = default_registry()
    assert [registry.parse(line, MASTER) for line in lines[:-1]] == [
        RdataCommand("s", None, {"a": 1}),
        RdataCommand("s", None, [2]),
        RdataCommand("s", 7, 3),
    ]


def test_rdata_lines_single_row_carries_the_token() -> None:
    """A token with one row is one line carrying the token."""
    assert rdata_lines("ev", 1, ['"x y"']) == b'RDATA ev 1 "x y"\n'


def test_rdata_lines_accepts_any_iterable_and_keeps_non_ascii() -> None:
    """rows may be a generator; non-ASCII rows are encoded as UTF-8."""
    rows = (encode_json(v) for v in ["\u00e9", {"k": "\u2603"}])
    out = rdata_lines("s", 3, rows)
    assert out == 'RDATA s batch "\u00e9"\nRDATA s 3 {"k":"\u2603"}\n'.encode()


def test_rdata_lines_matches_rdata_command_encoding() -> None:
    """The fan-out encoder writes the same bytes as RdataCommand.to_line."""
    rows: list[Any] = [{"id": "$a"}, [1, "\u00e9"], None]
    out = rdata_lines("events", 42, [encode_json(r) for r in rows])
    expected = b"".join(
        RdataCommand("events", None if i < len(rows) - 1 else 42, r).to_line() + b"\n"
        for i, r in enumerate(rows)
    )
    assert out == expected


@pytest.mark.parametrize("rows", [[], (), iter([])])
def test_rdata_lines_with_no_rows_raises_value_error(rows: Any) -> None:
    """A token carries at least one row; no rows raises ValueError."""
    with pytest.raises(ValueError, match="at least one row"):
        rdata_lines("s", 1, rows)


@pytest.mark.parametrize("seed", range(20))
def test_rdata_block_is_the_rdata_lines_of_each_token_joined(seed: int) -> None:
    """rdata_block of random tokens (1 to 5 rows each) equals their rdata_lines joined,
    and parses back into the same commands."""
    rng = random.Random(seed)
    tokens = [
        (t, [encode_json([t, k, "\u00e9" * rng.randint(0, 3)]) for k in range(rng.randint(1, 5))])
        for t in range(1, rng.randint(2, 30))
    ]
    block = rdata_block("events", tokens)
    assert block == b"".join(rdata_lines("events", t, rows) for t, rows in tokens)
    registry = default_registry()
    parsed = [registry.parse(line, MASTER) for line in block.split(b"\n")[:-1]]
    expected = [
        RdataCommand("events", t if k == len(rows) - 1 else None, json.loads(row))
        for t, rows in tokens for k, row in enumerate(rows)
    ]
    assert parsed == expected


def test_rdata_block_refuses_a_token_without_rows() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        rdata_block("s", [(1, ["1"]), (2, [])])


# --------------------------------------------------------------------------- rdata_line_length


@pytest.mark.parametrize("stream", ["s", "events", STREAM_128])
@pytest.mark.parametrize(
    "row", ["1", '{"a":"b"}', '"caf\u00e9 \U0001f600"', "[" + "0," * 500 + "0]"]
)
def test_rdata_line_length_bounds_every_token(stream: str, row: str) -> None:
    """rdata_line_length is at least the encoded length (with its newline excluded) of the
    row's RDATA line for batch and for every token of 1 to 19 digits, and exact for
    19-digit tokens in the stream qualified with the longest origin id (protocol version 2)."""
    bound = rdata_line_length(stream, row)
    tokens = [0, 7, MAX_TOKEN] + [10**n for n in range(19)]
    for token in tokens:
        line = RdataCommand(stream, token, json.loads(row)).to_line()
        actual = len(rdata_lines(stream, token, [row]).rstrip(b"\n"))
        assert actual <= bound, (token, actual, bound)
        assert len(line) <= bound
    batch = rdata_lines(stream, 1, [row, row]).split(b"\n")[0]
    assert len(batch) <= bound
    longest = f"{stream}@{'o' * 64}"
    assert len(rdata_lines(longest, MAX_TOKEN, [row]).rstrip(b"\n")) == bound


def test_rdata_line_length_counts_bytes_not_characters() -> None:
    """A non-ASCII row is measured in UTF-8 bytes."""
    assert rdata_line_length("s", "\u00e9") - rdata_line_length("s", "e") == 1
    assert rdata_line_length("s", "\U0001f600") - rdata_line_length("s", "e") == 3


# --------------------------------------------------------------------------- direct construction

BAD_CONSTRUCTIONS: list[tuple[Any, tuple[Any, ...], str]] = [
    (PositionCommand, ("s", -1), "token must be a non-negative integer"),
    (PositionCommand, ("s", 10**19), "token must be a non-negative integer"),
    (PositionCommand, ("s", 1.0), "token must be a non-negative integer"),
    (PositionCommand, ("s", "1"), "token must be a non-negative integer"),
    (PositionCommand, ("s", None), "token must be a non-negative integer"),
    (PositionCommand, ("s", True), "token must be a non-negative integer"),
    (PositionCommand, ("ALL", 1), "'ALL' is reserved"),
    (PositionCommand, (".x", 1), "invalid stream name"),
    (ReplicateCommand, ("ALL", 3), "REPLICATE ALL takes NOW, not a token"),
    (ReplicateCommand, ("ALL", 0), "REPLICATE ALL takes NOW, not a token"),
    (ReplicateCommand, ("s", -1), "token must be a non-negative integer"),
    (ReplicateCommand, ("s", False), "token must be a non-negative integer"),
    (ReplicateCommand, ("-x", None), "invalid stream name"),
    (ReplicateCommand, ("", None), "invalid stream name"),
    (RdataCommand, ("s", -5, {}), "token must be a non-negative integer"),
    (RdataCommand, ("s", True, {}), "token must be a non-negative integer"),
    (RdataCommand, ("ALL", 1, {}), "'ALL' is reserved"),
    (RdataCommand, (STREAM_129, 1, {}), "invalid stream name"),
    (PingCommand, (True,), "PING timestamp must be a non-negative integer"),
    (PingCommand, (False,), "PING timestamp must be a non-negative integer"),
    (PingCommand, (-1,), "PING timestamp must be a non-negative integer"),
    (PingCommand, (1.5,), "PING timestamp must be a non-negative integer"),
    (PingCommand, ("5",), "PING timestamp must be a non-negative integer"),
    (GapCommand, ("s", 0, 3), "GAP needs 0 < first <= last"),
    (GapCommand, ("s", 4, 3), "GAP needs 0 < first <= last"),
    (GapCommand, ("s", True, 3), "first token must be a non-negative integer"),
    (GapCommand, ("s", 1, True), "last token must be a non-negative integer"),
    (GapCommand, ("s", -1, 3), "first token must be a non-negative integer"),
    (ResetCommand, ("s", -1), "head token must be a non-negative integer"),
    (ResetCommand, ("s", True), "head token must be a non-negative integer"),
    (ServerCommand, ("a b",), "invalid server name"),
    (ServerCommand, ("",), "invalid server name"),
    (NameCommand, ("w\n",), "invalid worker name"),
    (NameCommand, ("x" * 129,), "invalid worker name"),
]


@pytest.mark.parametrize(("cls", "args", "fragment"), BAD_CONSTRUCTIONS, ids=repr)
def test_constructing_command_with_invalid_fields_raises(
    cls: Any, args: tuple[Any, ...], fragment: str
) -> None:
    """Commands validate their fields on construction, so an invalid command can never be
    encoded; bools are not accepted as tokens or timestamps."""
    with pytest.raises(CommandParseError) as info:
        cls(*args)
    assert fragment in str(info.value)


def test_constructing_commands_at_the_limits_succeeds() -> None:
    """Fields exactly at their limits are accepted: token 10**19 - 1, 128-char names,
    GAP first == last."""
    assert PositionCommand(STREAM_128, MAX_TOKEN).to_line() == (
        b"POSITION " + STREAM_128.encode() + b" " + str(MAX_TOKEN).encode()
    )
    assert ReplicateCommand(ALL_STREAMS, None).to_line() == b"REPLICATE ALL NOW"
    assert GapCommand("s", 1, 1).to_line() == b"GAP s 1 1"
    assert NameCommand("n" * 128).name == "n" * 128
    assert PingCommand(MAX_TOKEN).to_line() == b"PING " + str(MAX_TOKEN).encode()


@pytest.mark.parametrize("name", ["ALL", ".x", "-x", "", STREAM_129, "a b", "a\nb"])
def test_check_stream_name_rejects_bad_names(name: str) -> None:
    """check_stream_name refuses reserved, badly started, empty and over-long names."""
    with pytest.raises(CommandParseError):
        check_stream_name(name)


@pytest.mark.parametrize("name", ["s", "_", "9", "a.b-c_d", STREAM_128, "all", "x."])
def test_check_stream_name_accepts_good_names(name: str) -> None:
    """check_stream_name returns a valid name unchanged."""
    assert check_stream_name(name) == name


def test_the_old_import_path_is_the_moved_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """``replication.commands`` is the very module ``replication.wire.commands``: every
    name, private ones included, is there, and patching one through the old name patches
    the codec (here: hiding orjson makes the codec take its standard library path)."""
    assert old_commands is wire_commands
    monkeypatch.setattr(old_commands, "_orjson", None)
    assert wire_commands.json_loader(b'{"a":1}') is wire_commands.decode_json_bytes
