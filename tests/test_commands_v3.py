"""Protocol version 3's addition to the codec: ``ROWS``, consecutive tokens of a stream in
one line, and :func:`rows_block`, which the master writes with (docs/protocol.rst, "ROWS")."""

from __future__ import annotations

import random

import pytest

from replication.wire.commands import (
    MASTER,
    WORKER,
    CommandParseError,
    LineLimitCommand,
    RdataCommand,
    RowsCommand,
    default_registry,
    qualify,
    rows_block,
)
from replication.wire.dialects import VERSION_2, VERSION_3, VERSIONS, choose_version

A = "A" * 22
REGISTRY = default_registry()


def parse_block(data: bytes) -> list[tuple[int, list[object]]]:
    """The ``(token, rows)`` a worker would assemble from ``data`` (ROWS and RDATA lines)."""
    tokens: list[tuple[int, list[object]]] = []
    batch: list[object] = []
    assert data.endswith(b"\n")
    for line in data.split(b"\n")[:-1]:
        command = REGISTRY.parse(line, MASTER)
        if isinstance(command, RowsCommand):
            assert not batch
            tokens.extend((command.first + i, rows) for i, rows in enumerate(command.tokens))
        else:
            assert isinstance(command, RdataCommand)
            batch.append(command.row)
            if command.token is not None:
                tokens.append((command.token, batch))
                batch = []
    assert not batch
    return tokens


def test_rows_round_trips() -> None:
    line = f'ROWS events@{A} 7 [[1,{{"a":"b c"}}],["x"],[null]]'.encode()
    command = REGISTRY.parse(line, MASTER)
    assert command == RowsCommand("events", 7, [[1, {"a": "b c"}], ["x"], [None]], A)
    assert isinstance(command, RowsCommand)
    assert command.last == 9
    assert command.to_line() == line


@pytest.mark.parametrize(("args", "message"), [
    ("events", "ROWS takes 3 arguments"),
    ("events 1", "ROWS takes 3 arguments"),
    ("events  [[1]]", "ROWS takes 3 arguments"),
    ("events x [[1]]", "first token must be a non-negative integer"),
    ("events 1 []", "ROWS needs a non-empty JSON array of tokens"),
    ("events 1 {}", "ROWS needs a non-empty JSON array of tokens"),
    ("events 1 [1]", "ROWS token 1 is not a non-empty JSON array of rows"),
    ("events 1 [[1],[]]", "ROWS token 2 is not a non-empty JSON array of rows"),
    ("events 0 [[1]]", "ROWS tokens 0..0 are not between 1 and"),
    ("events 9999999999999999999 [[1],[2]]", "are not between 1 and"),
    ("events 1 [[1]", "RDATA row is not valid JSON"),
    ("events 1 [[NaN]]", "RDATA row is not valid JSON"),
    ("bad!stream 1 [[1]]", "invalid stream name"),
])
def test_malformed_rows_are_refused(args: str, message: str) -> None:
    with pytest.raises(CommandParseError, match=message.replace("[", r"\[")):
        REGISTRY.parse(f"ROWS {args}".encode(), MASTER)


def test_only_masters_send_rows() -> None:
    with pytest.raises(CommandParseError, match="ROWS may not be sent by the worker"):
        REGISTRY.parse(b"ROWS events 1 [[1]]", WORKER)


def test_version_3_is_spoken_and_preferred() -> None:
    assert VERSIONS[3] is VERSION_3 and VERSION_3.rows_lines and VERSION_3.origins
    assert not VERSION_2.rows_lines
    assert choose_version((3, 2, 1), VERSIONS) is VERSION_3
    assert choose_version((2, 1), VERSIONS) is VERSION_2


def test_rows_block_puts_every_token_in_one_line_when_it_fits() -> None:
    data = rows_block(qualify("s", A), 5, [['{"a":1}', "2"], ["3"]], 65536)
    assert data == f'ROWS s@{A} 5 [[{{"a":1}},2],[3]]\n'.encode()


def test_rows_block_splits_at_the_line_limit_and_sends_huge_tokens_as_rdata() -> None:
    """Each line at most the limit; a token too big for a line alone goes as RDATA lines;
    nothing lost, reordered or repeated; non-ASCII rows counted in bytes."""
    rng = random.Random(3)
    for limit in (60, 100, 400):
        for _ in range(200):
            tokens = [
                [rng.choice(['"é' + "x" * rng.randint(0, 30) + '"', "1", '{"k":[1,2]}'])
                 for _ in range(rng.randint(1, 4))]
                for _ in range(rng.randint(1, 12))
            ]
            first = rng.randint(1, 10**6)
            data = rows_block("events", first, tokens, limit)
            for line in data.split(b"\n")[:-1]:
                if line.startswith(b"ROWS "):
                    assert len(line) <= limit
            assert parse_block(data) == [
                (first + i, [REGISTRY.parse(b"RDATA s 1 " + r.encode(), MASTER).row  # type: ignore[attr-defined]
                             for r in rows])
                for i, rows in enumerate(tokens)
            ]


def test_rows_block_of_a_token_larger_than_a_line() -> None:
    big = '"' + "x" * 100 + '"'
    data = rows_block("s", 1, [["1"], [big, big], ["2"]], 80)
    assert data == (
        b"ROWS s 1 [[1]]\n"
        + f"RDATA s batch {big}\nRDATA s 2 {big}\n".encode()
        + b"ROWS s 3 [[2]]\n"
    )


def test_line_limit_round_trips_within_the_bounds_of_max_line_bytes() -> None:
    command = REGISTRY.parse(b"LINE_LIMIT 16384", WORKER)
    assert command == LineLimitCommand(16384)
    assert command.to_line() == b"LINE_LIMIT 16384"
    assert REGISTRY.parse(b"LINE_LIMIT 1024", WORKER) == LineLimitCommand(1024)
    assert REGISTRY.parse(b"LINE_LIMIT 67108864", WORKER) == LineLimitCommand(64 * 1024 * 1024)


@pytest.mark.parametrize(("line", "message"), [
    (b"LINE_LIMIT 1023", "LINE_LIMIT must be 1024 to 67108864 bytes, got 1023"),
    (b"LINE_LIMIT 67108865", "LINE_LIMIT must be 1024 to 67108864 bytes, got 67108865"),
    (b"LINE_LIMIT", "LINE_LIMIT takes 1 argument: LINE_LIMIT <bytes>, got ''"),
    (b"LINE_LIMIT x", "LINE_LIMIT takes 1 argument"),
    (b"LINE_LIMIT 1024 2048", "LINE_LIMIT takes 1 argument"),
    (b"LINE_LIMIT 9999999999", "LINE_LIMIT takes 1 argument"),
])
def test_bad_line_limits_are_refused(line: bytes, message: str) -> None:
    with pytest.raises(CommandParseError, match=message):
        REGISTRY.parse(line, WORKER)


def test_only_workers_send_line_limit() -> None:
    with pytest.raises(CommandParseError, match="LINE_LIMIT may not be sent by the master"):
        REGISTRY.parse(b"LINE_LIMIT 4096", MASTER)
