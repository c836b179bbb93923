"""The worker's hot loop (``WorkerConnection.linesReceived``) against its reference.

The hot loop parses ``RDATA`` lines, gathers tokens and runs the token runner's synchronous
half (drop, handler call, position) inline; every other line goes through the general path
(full parse, ``on_RDATA``, ``_rdata``, ``TokenRunner.submit``). These tests feed
the same random streams of lines, in random chunks, to a worker using the hot loop and to one
whose every line takes the general path, and require the same handler calls, positions,
output to the master and connection state. Then a few cases by name.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from replication.config import WorkerConfig, WorkerStream
from replication.positions import PositionFile
from replication.protocol import ReplicationProtocol
from replication.worker import Worker, WorkerConnection


class ReferenceConnection(WorkerConnection):
    """Every line by the general path: one ``lineReceived`` per line."""

    def linesReceived(self, lines: list[bytes], data: bytes | None) -> None:
        ReplicationProtocol.linesReceived(self, lines, data)


class Handler:
    """Records calls; for some tokens it returns a Deferred (fired later by the test, or
    already fired), for some it raises once."""

    def __init__(self, pending: set[int], failing: set[int]) -> None:
        self.calls: list[tuple[str, int, list[Any]]] = []
        self.pending = pending
        self.failing = failing
        self.deferreds: list[Deferred[None]] = []

    def __call__(self, stream: str, token: int, rows: list[Any]) -> Deferred[None] | None:
        self.calls.append((stream, token, rows))
        if token in self.failing:
            self.failing.discard(token)  # fails once, then succeeds on the retry
            raise RuntimeError(f"token {token} fails once")
        if token in self.pending:
            self.pending.discard(token)
            d: Deferred[None] = Deferred()
            if token % 3 == 0:
                d.callback(None)  # an awaitable that has already finished
            else:
                self.deferreds.append(d)
            return d
        return None

    def gap(self, stream: str, first: int, last: int) -> None:
        self.calls.append((stream, -1, [first, last]))

    def reset(self, stream: str, old: int, head: int) -> None:
        self.calls.append((stream, -2, [old, head]))


#: Token bounds small enough for random streams to cross them now and then.
MAX_TOKEN_ROWS = 4
MAX_TOKEN_BYTES = 65536 + 100

ROWS = [
    b'["m.room.message","!r:x",{"body":"hi"},1]',
    b"{}",
    b"null",
    b"12345678901234567890123",  # beyond 64 bits: orjson would make it a float
    b'{"big":-99999999999999999999}',
    b'"\\ud83d\\ude00"',
    b"[1.5e3,true,false]",
]
#: Two of these in one token pass MAX_TOKEN_BYTES.
BIG_ROW = b'"' + b"x" * 65000 + b'"'
BAD = [
    b"RDATA events 7 " + b"[" * 2000 + b"]" * 2000,  # nested too deep for both decoders
    b"RDATA events batch " + b"{\"a\":" * 1100 + b"1" + b"}" * 1100,
    b"RDATA events 7 {bad",
    b"RDATA events x []",
    b"RDATA events 5 NaN",
    b'RDATA events 9 "\\ud800"',
    b"RDATA events",
    b"BOGUS 1",
]


BAD_ROWS = [
    b"ROWS events 7 " + b"[" * 2000 + b"]" * 2000,
    b"ROWS events 7 [[1],[]]",
    b"ROWS events 7 []",
    b"ROWS events 7 [1]",
    b"ROWS events 7 {}",
    b"ROWS events 0 [[1]]",
    b"ROWS events x [[1]]",
    b"ROWS events 7 [[1]",
    b"ROWS events 7",
    b"ROWS events 9999999999999999999 [[1],[2]]",
]


def random_lines(rng: random.Random, start: int, rows_lines: bool = False) -> list[bytes]:
    """A master's output as a worker at ``start`` could see it: mostly good RDATA (1-row
    and batched tokens, now and then one past the worker's token bounds, some repeated,
    some skipping ahead, some for an unfollowed stream), POSITION (mostly at the last token,
    sometimes below or above it), GAP and PING lines, and now and then something malformed
    or out of order. With ``rows_lines`` (version 3), a third of the good tokens come as
    ``ROWS`` lines of one to four tokens instead, and some of those are malformed."""
    lines = []
    token = start if rng.random() < 0.9 else start + rng.choice((-1, 1, 2))
    for _ in range(rng.randint(1, 40)):
        kind = rng.random()
        if rows_lines and kind < 0.25:
            if rng.random() < 0.05:
                lines.append(rng.choice(BAD_ROWS))
                continue
            first = token + (2 if rng.random() < 0.03 else 1) - (1 if rng.random() < 0.03 else 0)
            tokens = []
            for _ in range(rng.choice((1, 1, 2, 3, 4))):
                count = (MAX_TOKEN_ROWS + 1 if rng.random() < 0.03
                         else rng.choice((1, 1, 1, 2, 3)))
                tokens.append(b"[" + b",".join(rng.choice(ROWS) for _ in range(count)) + b"]")
            lines.append(b"ROWS events %d [%s]" % (first, b",".join(tokens)))
            token = first + len(tokens) - 1
        elif kind < 0.6:
            token += 2 if rng.random() < 0.02 else 1  # 2: skips ahead
            if rng.random() < 0.03:  # at the bound of rows, or one past it
                batch = rng.choice((MAX_TOKEN_ROWS - 1, MAX_TOKEN_ROWS))
            else:
                batch = rng.choice((0, 0, 0, 0, 1, 2))
            for _ in range(batch):
                row = BIG_ROW if rng.random() < 0.02 else rng.choice(ROWS)
                lines.append(b"RDATA events batch " + row)
            row = BIG_ROW if rng.random() < 0.02 else rng.choice(ROWS)
            lines.append(b"RDATA events %d " % token + row)
        elif kind < 0.63:
            first = token + (2 if rng.random() < 0.1 else 1)
            token = first + rng.randint(0, 3)
            lines.append(b"GAP events %d %d" % (first, token))
        elif kind < 0.7:
            lines.append(b"RDATA other %d []" % rng.randint(1, 9))
        elif kind < 0.8:
            # Mostly at the last token; below it: a reset; above it: refused.
            moved = rng.choice((0,) * 12 + (-1, -3, 1, 2))
            lines.append(b"POSITION events %d" % max(token + moved, 0))
            token = max(token + moved, 0)
        elif kind < 0.85:
            lines.append(b"PING 5")
        elif kind < 0.87:
            lines.append(b"RDATA events %d [1]" % max(token - rng.randint(0, 2), 1))  # repeat
        elif kind < 0.89:
            lines.append(rng.choice(BAD))
        elif kind < 0.91:  # a stray batch row: the next POSITION or GAP is refused
            lines.append(b"RDATA events batch " + rng.choice(ROWS))
        else:
            lines.append(b"PING 6")
    return lines


def run(cls: type[WorkerConnection], tmp_path: Any, seed: int, lines: list[bytes],
        position: int | None) -> dict[str, Any]:
    rng = random.Random(seed)
    pending = {t for t in range(1, 200) if rng.random() < 0.08}
    failing = {t for t in range(1, 200) if rng.random() < 0.03}
    handler = Handler(pending, failing)
    clock = Clock()
    positions = PositionFile(str(tmp_path / f"{cls.__name__}-{seed}.positions"), fsync=False,
                             capacity=4096)
    if position is not None:
        positions.set("events", position)
    config = WorkerConfig(name="w", streams=(WorkerStream("events"),),
                          max_token_rows=MAX_TOKEN_ROWS, max_token_bytes=MAX_TOKEN_BYTES)
    worker = Worker(config, handler, positions, clock)
    connection = cls(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    data = b"SERVER m\nVERSION 1\n" + b"".join(line + b"\n" for line in lines)
    at = 0
    while at < len(data):
        size = rng.choice((1, 7, 50, 400, len(data)))
        connection.dataReceived(data[at:at + size])
        at += size
        # Let pending handlers finish and retries run, at random moments.
        while handler.deferreds and rng.random() < 0.5:
            handler.deferreds.pop(0).callback(None)
        if rng.random() < 0.3:
            clock.advance(rng.choice((0.5, 1.0, 2.0)))
    for _ in range(20):
        while handler.deferreds:
            handler.deferreds.pop(0).callback(None)
        clock.advance(5)
    positions.close()
    return {
        "calls": handler.calls,
        "position": worker.positions.get("events"),
        "heads": dict(worker.heads),
        "sent": transport.value().split(b"\n")[1:],  # after NAME; PINGs carry the clock
        "closing": connection._closing,
        "received": connection.command_counts()[0],
    }


@pytest.mark.parametrize("seed", range(300))
def test_the_hot_loop_does_what_the_general_path_does(tmp_path: Any, seed: int) -> None:
    rng = random.Random(seed)
    position = rng.choice((None, None, 0, 2, 5))
    lines = random_lines(rng, position or 0)
    fast = run(WorkerConnection, tmp_path, seed, lines, position)
    reference = run(ReferenceConnection, tmp_path, seed, lines, position)
    assert fast == reference


ORIGIN_A = b"AAAAAAAAAAAAAAAAAAAAAA"
ORIGIN_B = b"BBBBBBBBBBBBBBBBBBBBBB"


class OriginHandler(Handler):
    """:class:`Handler` that takes ``origin`` and records it with each call."""

    def __call__(  # type: ignore[override]
        self, stream: str, token: int, rows: list[Any], origin: str | None = None
    ) -> Deferred[None] | None:
        result = super().__call__(f"{stream}@{origin}", token, rows)
        return result


def qualified(lines: list[bytes], origin: bytes, rng: random.Random) -> list[bytes]:
    """``lines`` with each stream field named ``<stream>@<origin>`` (now and then left
    bare, which a version 2 master may not send)."""
    out = []
    for line in lines:
        if rng.random() < 0.01:
            out.append(line)
            continue
        for stream in (b" events", b" other"):
            if line.find(stream + b" ") == line.find(b" "):
                line = line.replace(stream + b" ", stream + b"@" + origin + b" ", 1)
                break
        out.append(line)
    return out


def interleaved(rng: random.Random, first: list[bytes], second: list[bytes]) -> list[bytes]:
    """Both lists merged at random, each in its own order."""
    merged, i, j = [], 0, 0
    while i < len(first) or j < len(second):
        if j >= len(second) or (i < len(first) and rng.random() < 0.5):
            merged.append(first[i])
            i += 1
        else:
            merged.append(second[j])
            j += 1
    return merged


def handshake(version: int) -> bytes:
    """What a master of ``version`` (2 or 3), origin B, sends first."""
    return b"SERVER m\nVERSION %d\nORIGIN " % version + ORIGIN_B + b" fpfpfpfpfpfpfpfpfp\n"


def run_v2(cls: type[WorkerConnection], tmp_path: Any, seed: int, lines: list[bytes],
           position: int | None, origin_handler: bool, version: int = 2) -> dict[str, Any]:
    """:func:`run` with a master of version 2 (or ``version``: 3) as origin B, the worker
    at ``position`` of origin A and with nothing of B."""
    rng = random.Random(seed)
    pending = {t for t in range(1, 200) if rng.random() < 0.08}
    failing = {t for t in range(1, 200) if rng.random() < 0.03}
    handler = (OriginHandler if origin_handler else Handler)(pending, failing)
    clock = Clock()
    positions = PositionFile(str(tmp_path / f"v2-{cls.__name__}-{seed}.positions"),
                             fsync=False, capacity=4096)
    if position is not None:
        positions.set("events", position, ORIGIN_A.decode())
    config = WorkerConfig(name="w", streams=(WorkerStream("events"),),
                          max_token_rows=MAX_TOKEN_ROWS, max_token_bytes=MAX_TOKEN_BYTES)
    worker = Worker(config, handler, positions, clock)
    connection = cls(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    data = handshake(version) + b"".join(line + b"\n" for line in lines)
    at = 0
    while at < len(data):
        size = rng.choice((1, 7, 50, 400, len(data)))
        connection.dataReceived(data[at:at + size])
        at += size
        while handler.deferreds and rng.random() < 0.5:
            handler.deferreds.pop(0).callback(None)
        if rng.random() < 0.3:
            clock.advance(rng.choice((0.5, 1.0, 2.0)))
    for _ in range(20):
        while handler.deferreds:
            handler.deferreds.pop(0).callback(None)
        clock.advance(5)
    vector = worker.positions.vector("events")
    positions.close()
    return {
        "calls": handler.calls,
        "vector": vector,
        "heads": dict(worker.heads),
        "sent": transport.value().split(b"\n")[1:],
        "closing": connection._closing,
        "received": connection.command_counts()[0],
    }


@pytest.mark.parametrize("seed", range(200))
def test_the_hot_loop_does_what_the_general_path_does_in_version_2(
    tmp_path: Any, seed: int
) -> None:
    """The same comparison with qualified lines of two origins interleaved: A, which the
    worker has a position of (sent in its vector), and B, not in the vector (from its
    start); handlers with and without ``origin``."""
    rng = random.Random(seed)
    position = rng.choice((None, None, 0, 2, 5))
    lines = interleaved(
        rng,
        qualified(random_lines(rng, position or 0), ORIGIN_A, rng),
        qualified(random_lines(rng, 0), ORIGIN_B, rng),
    )
    origin_handler = seed % 2 == 0
    fast = run_v2(WorkerConnection, tmp_path, seed, lines, position, origin_handler)
    reference = run_v2(ReferenceConnection, tmp_path, seed, lines, position, origin_handler)
    assert fast == reference


def connected(
    tmp_path: Any, handler: Any, handshake: bytes = b"SERVER m\nVERSION 1\n"
) -> tuple[Worker, WorkerConnection, StringTransport]:
    positions = PositionFile(str(tmp_path / "w.positions"), fsync=False, capacity=4096)
    worker = Worker(WorkerConfig(name="w", streams=(WorkerStream("events"),)), handler,
                    positions, Clock())
    connection = WorkerConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(handshake)
    transport.clear()
    return worker, connection, transport


def test_lines_after_a_pending_handler_wait_in_order(tmp_path: Any) -> None:
    """A handler that returns a Deferred in the middle of a read holds the rest of that
    read; nothing after it is handled until it fires, then all of it, in order."""
    calls: list[int] = []
    waiting: list[Deferred[None]] = []

    def handler(stream: str, token: int, rows: list[Any]) -> Deferred[None] | None:
        calls.append(token)
        if token == 2:
            waiting.append(Deferred())
            return waiting[0]
        return None

    worker, connection, _ = connected(tmp_path, handler)
    connection.dataReceived(b"".join(b"RDATA events %d [%d]\n" % (t, t) for t in range(1, 6)))
    assert calls == [1, 2]
    assert worker.positions.get("events") == 1
    waiting[0].callback(None)
    assert calls == [1, 2, 3, 4, 5]
    assert worker.positions.get("events") == 5


def test_a_bad_line_in_the_middle_of_a_read_stops_it(tmp_path: Any) -> None:
    """Tokens before a malformed line are handled; the line gets ERROR and a close; the
    lines after it are not handled."""
    calls: list[int] = []
    worker, connection, transport = connected(
        tmp_path, lambda s, t, r: calls.append(t) and None
    )
    connection.dataReceived(b"RDATA events 1 [1]\nRDATA events 2 {bad\nRDATA events 3 [3]\n")
    assert calls == [1]
    assert transport.value().startswith(b"ERROR RDATA row is not valid JSON")
    assert transport.disconnecting
    assert worker.positions.get("events") == 1


def test_big_integers_stay_exact_in_the_hot_loop(tmp_path: Any) -> None:
    """A read holding a 20-digit number is decoded by the standard library path, which
    keeps integers beyond 64 bits exact."""
    calls: list[list[Any]] = []
    _, connection, _ = connected(tmp_path, lambda s, t, r: calls.append(r) and None)
    connection.dataReceived(b"RDATA events 1 [1]\nRDATA events 2 [123456789012345678901234]\n")
    assert calls == [[[1]], [[123456789012345678901234]]]
    assert isinstance(calls[1][0][0], int)
    # Below -2**63 orjson reads 19 digits as a float too.
    connection.dataReceived(b"RDATA events 3 [-9223372036854775809]\n")
    assert calls[2] == [[-9223372036854775809]] and isinstance(calls[2][0][0], int)


@pytest.mark.parametrize("seed", range(200))
def test_the_hot_loop_does_what_the_general_path_does_in_version_3(
    tmp_path: Any, seed: int
) -> None:
    """Version 2's comparison with ``ROWS`` lines among the ``RDATA`` ones: good ones of
    one to four tokens, tokens past the row bound, out of order, malformed."""
    rng = random.Random(seed)
    position = rng.choice((None, None, 0, 2, 5))
    lines = interleaved(
        rng,
        qualified(random_lines(rng, position or 0, rows_lines=True), ORIGIN_A, rng),
        qualified(random_lines(rng, 0, rows_lines=True), ORIGIN_B, rng),
    )
    origin_handler = seed % 2 == 0
    fast = run_v2(WorkerConnection, tmp_path, seed, lines, position, origin_handler, 3)
    reference = run_v2(ReferenceConnection, tmp_path, seed, lines, position, origin_handler, 3)
    assert fast == reference


def test_rows_lines_after_a_pending_handler_wait_in_order(tmp_path: Any) -> None:
    """A handler that returns a Deferred for a token in the middle of a ``ROWS`` line holds
    the rest of that line and the lines after it; they are handled once it fires, in
    order, and the position follows."""
    calls: list[tuple[int, list[Any]]] = []
    waiting: list[Deferred[None]] = []

    def handler(stream: str, token: int, rows: list[Any]) -> Deferred[None] | None:
        calls.append((token, rows))
        if token in (2, 5):
            waiting.append(Deferred())
            return waiting[-1]
        return None

    worker, connection, _ = connected(tmp_path, handler, handshake(3))
    origin = ORIGIN_B.decode()
    connection.dataReceived(
        b"ROWS events@%s 1 [[1],[2,2],[3]]\nROWS events@%s 4 [[4],[5],[6,6,6]]\n"
        b"RDATA events@%s 7 [7]\n" % (ORIGIN_B, ORIGIN_B, ORIGIN_B)
    )
    assert calls == [(1, [1]), (2, [2, 2])]
    assert worker.positions.get("events", origin) == 1
    waiting[0].callback(None)
    assert calls[2:] == [(3, [3]), (4, [4]), (5, [5])]
    assert worker.positions.get("events", origin) == 4
    waiting[1].callback(None)
    assert calls[5:] == [(6, [6, 6, 6]), (7, [[7]])]
    assert worker.positions.get("events", origin) == 7
    assert not connection._closing
    assert connection.rows_lines_received == 1  # the first line made the route: the general path
    assert connection.command_counts()[0]["ROWS"] == 2


def test_a_version_2_worker_refuses_rows_lines(tmp_path: Any) -> None:
    """``ROWS`` is not part of version 2: the worker answers ``ERROR`` and closes."""
    calls: list[int] = []
    _, connection, transport = connected(
        tmp_path, lambda s, t, r: calls.append(t) and None, handshake(2)
    )
    connection.dataReceived(b"ROWS events@%s 1 [[1]]\n" % ORIGIN_B)
    assert calls == []
    assert transport.value() == b"ERROR ROWS is not part of protocol replication/2\n"
    assert transport.disconnecting
