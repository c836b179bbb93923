"""Protocol version 2's additions to the codec: ``<stream>@<origin>`` fields, position
vectors in ``REPLICATE``, ``ORIGIN`` and ``RELAY`` (docs/protocol.rst, "Version 2")."""

from __future__ import annotations

import pytest

from replication.wire.commands import (
    MASTER,
    MAX_VECTOR_ORIGINS,
    WORKER,
    CommandParseError,
    GapCommand,
    HandledCommand,
    OriginCommand,
    PositionCommand,
    RdataCommand,
    RelayCommand,
    ReplicateCommand,
    ResetCommand,
    default_registry,
    qualify,
    rdata_block,
    rdata_line_length,
    split_stream,
)

A = "A" * 22
B = "Bb-_" * 5 + "xy"
REGISTRY = default_registry()


def roundtrip(line: bytes, sender: str) -> object:
    command = REGISTRY.parse(line, sender)
    assert command.to_line() == line
    return command


def test_qualified_stream_fields_round_trip() -> None:
    assert roundtrip(f"RDATA events@{A} 5 {{}}".encode(), MASTER) == RdataCommand(
        "events", 5, {}, A
    )
    assert roundtrip(f"RDATA events@{A} batch [1]".encode(), MASTER) == RdataCommand(
        "events", None, [1], A
    )
    assert roundtrip(f"POSITION events@{B} 7".encode(), MASTER) == PositionCommand(
        "events", 7, B
    )
    assert roundtrip(f"HANDLED events@{B} 7".encode(), WORKER) == HandledCommand("events", 7, B)
    assert roundtrip(f"GAP s@{A} 1 4".encode(), MASTER) == GapCommand("s", 1, 4, A)
    assert roundtrip(f"RESET s@{A} 0".encode(), MASTER) == ResetCommand("s", 0, A)


def test_unqualified_fields_are_unchanged() -> None:
    assert roundtrip(b"POSITION s 3", MASTER) == PositionCommand("s", 3)
    assert PositionCommand("s", 3).origin is None
    assert roundtrip(b"RDATA s 3 1", MASTER) == RdataCommand("s", 3, 1)


@pytest.mark.parametrize(
    "field",
    ["events@", "events@short", "@" + A, f"events@{A}@{A}", f"events@{A}!", "ALL@" + A],
)
def test_malformed_qualified_fields_are_refused(field: str) -> None:
    with pytest.raises(CommandParseError):
        REGISTRY.parse(f"POSITION {field} 1".encode(), MASTER)


def test_qualify_and_split() -> None:
    assert qualify("s", None) == "s"
    assert qualify("s", A) == f"s@{A}"
    assert split_stream(f"s@{A}") == ("s", A)
    assert split_stream("s") == ("s", None)


def test_rdata_block_with_a_qualified_stream_parses_back() -> None:
    data = rdata_block(qualify("s", A), [(1, ["1", "2"]), (2, ["3"])])
    lines = data.split(b"\n")[:-1]
    commands = [REGISTRY.parse(line, MASTER) for line in lines]
    assert commands == [
        RdataCommand("s", None, 1, A), RdataCommand("s", 1, 2, A), RdataCommand("s", 2, 3, A)
    ]


def test_rdata_line_length_leaves_room_for_the_longest_origin() -> None:
    row = '{"a":1}'
    longest = f"RDATA {qualify('s', 'x' * 64)} {10**19 - 1} {row}".encode()
    assert rdata_line_length("s", row) >= len(longest)


def test_replicate_vectors() -> None:
    command = roundtrip(f"REPLICATE events {A}:4,{B}:0".encode(), WORKER)
    assert isinstance(command, ReplicateCommand)
    assert command.vector == ((A, 4), (B, 0))
    assert command.token is None
    assert command.positions == {A: 4, B: 0}
    empty = roundtrip(b"REPLICATE events -", WORKER)
    assert isinstance(empty, ReplicateCommand)
    assert empty.vector == () and empty.positions == {}
    plain = roundtrip(b"REPLICATE events 4", WORKER)
    assert isinstance(plain, ReplicateCommand) and plain.vector is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{A}:4,{A}:5", "named twice"),
        (f"{A}:x", "non-negative integer"),
        (f"{A}4", "non-negative integer"),
        ("short:4", "invalid origin"),
        (f"{A}:4,", "not <origin>:<token>"),
        ("ALL", "non-negative integer"),
    ],
)
def test_bad_vectors_are_refused(text: str, message: str) -> None:
    with pytest.raises(CommandParseError, match=message):
        REGISTRY.parse(f"REPLICATE events {text}".encode(), WORKER)


def test_a_vector_is_bounded() -> None:
    origins = [f"{i:016d}" for i in range(MAX_VECTOR_ORIGINS + 1)]
    text = ",".join(f"{o}:1" for o in origins)
    with pytest.raises(CommandParseError, match=f"at most {MAX_VECTOR_ORIGINS} origins"):
        REGISTRY.parse(f"REPLICATE events {text}".encode(), WORKER)
    fits = ",".join(f"{o}:1" for o in origins[:-1])
    assert len(REGISTRY.parse(f"REPLICATE events {fits}".encode(), WORKER).positions) == 64


def test_replicate_all_takes_no_vector() -> None:
    with pytest.raises(CommandParseError, match="takes NOW"):
        ReplicateCommand("ALL", None, ())


def test_origin_command() -> None:
    fingerprint = "f" * 16
    assert roundtrip(f"ORIGIN {A} {fingerprint}".encode(), MASTER) == OriginCommand(
        A, fingerprint
    )
    assert roundtrip(f"ORIGIN {A} {fingerprint}".encode(), WORKER) == OriginCommand(
        A, fingerprint
    )
    with pytest.raises(CommandParseError, match="invalid fingerprint"):
        REGISTRY.parse(f"ORIGIN {A} short".encode(), MASTER)
    with pytest.raises(CommandParseError, match="takes 2 arguments"):
        REGISTRY.parse(f"ORIGIN {A}".encode(), MASTER)


def test_relay_command() -> None:
    assert roundtrip(f"RELAY events {A} 4".encode(), WORKER) == RelayCommand("events", A, 4)
    assert roundtrip(f"RELAY * {A}".encode(), WORKER) == RelayCommand("*", A, None)
    for bad in (f"RELAY events {A}", f"RELAY * {A} 4", "RELAY events short 4", "RELAY"):
        with pytest.raises(CommandParseError):
            REGISTRY.parse(bad.encode(), WORKER)
    with pytest.raises(CommandParseError, match="may not be sent by the master"):
        REGISTRY.parse(f"RELAY * {A}".encode(), MASTER)
