"""The worker in protocol version 2 (docs/protocol.rst, "Version 2: origins"), driven in
memory by a scripted master: it announces ``VERSION 2 1``, waits for ``ORIGIN``, asks with
position vectors, keeps tokens, positions, gaps and resets per (stream, origin), refuses
unqualified stream fields, reports ``HANDLED`` per origin, tells handlers the origin, and
binds positions recorded before origins to one origin only when that is safe."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from replication.config import WorkerConfig, WorkerStream
from replication.worker import MemoryPositions, PositionFile, Worker, WorkerConnection
from replication.worker.handlers import PrintJson, accepts_origin

A = "AAAAAAAAAAAAAAAAAAAAAA"
B = "BBBBBBBBBBBBBBBBBBBBBB"
C = "CCCCCCCCCCCCCCCCCCCCCC"
FP = "fpfpfpfpfpfpfpfpfpfp"


class Recorder:
    """A handler that takes ``origin``: records ``(stream, origin, token, rows)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, int, list[Any]]] = []
        self.gaps: list[tuple[str, str | None, int, int]] = []
        self.resets: list[tuple[str, str | None, int, int]] = []

    def __call__(self, stream: str, token: int, rows: list[Any], origin: str | None = None
                 ) -> None:
        self.calls.append((stream, origin, token, rows))

    def gap(self, stream: str, first: int, last: int, *, origin: str | None = None) -> None:
        self.gaps.append((stream, origin, first, last))

    def reset(self, stream: str, old: int, head: int, *, origin: str | None = None) -> None:
        self.resets.append((stream, origin, old, head))


class Plain:
    """A handler of the three arguments only."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[Any]]] = []

    def __call__(self, stream: str, token: int, rows: list[Any]) -> None:
        self.calls.append((stream, token, rows))


def make(
    handler: Any = None, positions: Any = None, streams: tuple[WorkerStream, ...] = (
        WorkerStream("events"),
    ), master: str | tuple[str, ...] = "tcp:host=m:port=1", clock: Clock | None = None,
) -> tuple[Worker, WorkerConnection, StringTransport]:
    worker = Worker(
        WorkerConfig(name="w", master=master, streams=streams),
        handler if handler is not None else Recorder(),
        positions if positions is not None else MemoryPositions(),
        clock if clock is not None else Clock(),
    )
    connection = WorkerConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    return worker, connection, transport


def sent(transport: StringTransport) -> list[str]:
    return transport.value().decode().splitlines()


def v2(connection: WorkerConnection, origin: str = A) -> None:
    connection.dataReceived(f"SERVER m\nVERSION 2\nORIGIN {origin} {FP}\n".encode())


def closed_with(transport: StringTransport, message: str) -> bool:
    return f"ERROR {message}" in sent(transport) and transport.disconnecting


# -- the handshake ---------------------------------------------------------------------------


def test_the_worker_announces_versions_3_2_and_1() -> None:
    """The worker's announcement offers every version, highest first."""
    _, _, transport = make()
    assert sent(transport) == ["NAME w", "VERSION 3 2 1"]


def test_after_version_2_the_worker_waits_for_origin_before_replicate() -> None:
    """Nothing is asked before ``ORIGIN``; after it, one ``REPLICATE`` per stream, with the
    vector ``-`` for a stream never seen."""
    worker, connection, transport = make()
    connection.dataReceived(b"SERVER m\nVERSION 2\n")
    assert sent(transport) == ["NAME w", "VERSION 3 2 1"]
    assert connection.dialect == "replication/2"
    connection.dataReceived(f"ORIGIN {A} {FP}\n".encode())
    assert sent(transport)[2:] == ["REPLICATE events -"]
    assert (connection.origin, connection.fingerprint) == (A, FP)
    assert worker.health()["origin"] == A


def test_ping_and_error_are_taken_before_origin() -> None:
    """``PING`` and ``ERROR`` may come before ``ORIGIN`` (the error is logged)."""
    _, connection, transport = make()
    connection.dataReceived(b"SERVER m\nVERSION 2\nPING 5\nERROR hold on\n")
    assert not transport.disconnecting
    connection.dataReceived(f"ORIGIN {A} {FP}\n".encode())
    assert sent(transport)[-1] == "REPLICATE events -"


@pytest.mark.parametrize("line", [
    f"RDATA events@{A} 1 {{}}", f"POSITION events@{A} 0", "RDATA events 1 {}",
])
def test_anything_but_origin_first_is_a_protocol_error(line: str) -> None:
    """A version 2 master whose first line after ``VERSION 2`` is not ``ORIGIN`` (nor
    ``PING``/``ERROR``) is answered with ERROR and a close, in one read or another."""
    _, connection, transport = make()
    connection.dataReceived(f"SERVER m\nVERSION 2\n{line}\n".encode())
    name = line.split(" ")[0]
    assert closed_with(transport, f"expected ORIGIN after VERSION 2, got {name}")
    assert not any(s.startswith("REPLICATE") for s in sent(transport))


def test_origin_missing_times_out_and_leaves_no_timer() -> None:
    """A master that never sends ``ORIGIN`` is cut off after the handshake timeout."""
    clock = Clock()
    worker, connection, transport = make(clock=clock)
    connection.dataReceived(b"SERVER m\nVERSION 2\n")
    clock.advance(24.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert closed_with(transport, "handshake timeout: expected ORIGIN within 25s")
    connection.connectionLost(Failure(ConnectionDone()))
    assert connection.close_reason == "handshake timeout"
    assert worker.connection is None
    assert clock.getDelayedCalls() == []


def test_the_origin_timer_is_cancelled_by_origin_and_by_a_close() -> None:
    """No ORIGIN timer outlives ORIGIN, or the connection."""
    clock = Clock()
    _, connection, _ = make(clock=clock)
    v2(connection)
    assert connection._origin_timer is None
    _, other, _ = make(clock=clock)
    other.dataReceived(b"SERVER m\nVERSION 2\n")
    timer = other._origin_timer
    assert timer is not None and timer.active()
    other.connectionLost(Failure(ConnectionDone()))
    assert not timer.active()
    connection.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_a_late_second_origin_is_a_protocol_error() -> None:
    """``ORIGIN`` is sent once, first: a second one is refused."""
    _, connection, transport = make()
    v2(connection)
    connection.dataReceived(f"ORIGIN {B} {FP}\n".encode())
    assert closed_with(
        transport, "ORIGIN may only be sent once, as the master's first line after VERSION 2"
    )


def test_origin_from_a_version_1_master_is_a_protocol_error() -> None:
    """A master that agreed on version 1 has no ORIGIN to send."""
    _, connection, transport = make()
    connection.dataReceived(f"SERVER m\nVERSION 1\nORIGIN {A} {FP}\n".encode())
    assert closed_with(transport, "ORIGIN is not part of protocol replication/1")


def test_a_malformed_origin_is_refused_by_the_codec() -> None:
    _, connection, transport = make()
    connection.dataReceived(b"SERVER m\nVERSION 2\nORIGIN short " + FP.encode() + b"\n")
    assert transport.disconnecting
    assert sent(transport)[-1].startswith("ERROR invalid origin 'short'")


# -- REPLICATE vectors -----------------------------------------------------------------------


def test_replicate_sends_the_vector_of_positions_per_origin() -> None:
    """Each stream is asked for with its recorded positions per origin (sorted), ``-``
    without any, ``NOW`` for a ``from: latest`` stream never seen; a ``from: latest``
    stream with positions sends its vector."""
    positions = MemoryPositions()
    positions.set("events", 7, B)
    positions.set("events", 9, A)
    positions.set("typing", 3, C)
    _, connection, transport = make(positions=positions, streams=(
        WorkerStream("events"), WorkerStream("presence"), WorkerStream("typing", "latest"),
        WorkerStream("receipts", "latest"),
    ))
    v2(connection, C)
    assert sent(transport)[2:] == [
        f"REPLICATE events {A}:9,{B}:7",
        "REPLICATE presence -",
        f"REPLICATE typing {C}:3",
        "REPLICATE receipts NOW",
    ]


def test_a_stream_with_more_origins_than_a_vector_holds_is_not_asked_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """65 origins cannot be sent: the worker logs why and closes, rather than ask for a
    partial vector (the other origins would be replayed from their start)."""
    positions = MemoryPositions()
    for n in range(65):
        positions.set("events", 1, f"origin{n:012d}xxxx")
    _, connection, transport = make(positions=positions)
    with caplog.at_level(logging.ERROR):
        v2(connection)
    assert "more than a position vector holds (64)" in caplog.text
    assert transport.disconnecting
    assert not any(s.startswith("REPLICATE") for s in sent(transport))


# -- tokens per (stream, origin) -------------------------------------------------------------


def test_tokens_of_several_origins_are_handled_each_in_its_own_order() -> None:
    """Tokens of A and B interleave; each origin's tokens follow from its own last token,
    and positions are recorded per origin (the fast path and the general path alike)."""
    positions = MemoryPositions()
    positions.set("events", 7, A)
    handler = Recorder()
    worker, connection, transport = make(handler, positions)
    v2(connection, B)
    connection.dataReceived(
        f"RDATA events@{A} 8 {{\"n\":\"a8\"}}\n"
        f"RDATA events@{B} batch {{\"n\":\"b1a\"}}\n"
        f"RDATA events@{A} 9 {{\"n\":\"a9\"}}\n"
        f"RDATA events@{B} 1 {{\"n\":\"b1b\"}}\n"
        f"POSITION events@{A} 9\n"
        f"RDATA events@{B} 2 {{\"n\":\"b2\"}}\n"
        f"POSITION events@{B} 2\n".encode()
    )
    assert not transport.disconnecting
    assert handler.calls == [
        ("events", A, 8, [{"n": "a8"}]),
        ("events", A, 9, [{"n": "a9"}]),
        ("events", B, 1, [{"n": "b1a"}, {"n": "b1b"}]),
        ("events", B, 2, [{"n": "b2"}]),
    ]
    assert positions.vector("events") == {A: 9, B: 2}
    # Following one master alone, the worker bound its local positions to that master's
    # origin (B): they are B's.
    assert positions.local_origin == B and positions.get("events") == 2
    assert worker.heads == {f"events@{A}": 9, f"events@{B}": 2}
    assert worker.lag("events") == 0


def test_the_fast_path_learns_a_new_origin_from_the_general_path() -> None:
    """The first line of an origin not in the vector goes the general path, which adds its
    route; its later lines take the fast path (counted in ``rdata_received``)."""
    handler = Recorder()
    _, connection, _ = make(handler)
    v2(connection)
    connection.dataReceived(f"RDATA events@{A} 1 [1]\n".encode())
    assert connection.rdata_received == 0
    connection.dataReceived(f"RDATA events@{A} 2 [2]\nRDATA events@{A} 3 [3]\n".encode())
    assert connection.rdata_received == 2
    assert [t for _, _, t, _ in handler.calls] == [1, 2, 3]


def test_an_origin_not_in_the_vector_starts_at_its_first_token() -> None:
    """``REPLICATE events A:7`` says nothing of C: C is sent from its start, so C's first
    token must be 1; C token 2 first is refused (general path)."""
    positions = MemoryPositions()
    positions.set("events", 7, A)
    _, connection, transport = make(positions=positions)
    v2(connection, C)
    connection.dataReceived(f"RDATA events@{C} 2 {{}}\n".encode())
    assert closed_with(
        transport,
        f"RDATA events@{C} token 2 skips ahead of token 0 sent before it "
        "(tokens 1..1 were neither sent nor announced by GAP)",
    )


def test_a_token_out_of_order_for_one_origin_is_refused_per_origin() -> None:
    """A's token 9 after A's 7 is refused even though B is at 8: order is per origin."""
    positions = MemoryPositions()
    positions.set("events", 7, A)
    positions.set("events", 8, B)
    _, connection, transport = make(positions=positions)
    v2(connection)
    connection.dataReceived(f"RDATA events@{A} 9 {{}}\n".encode())
    assert closed_with(
        transport,
        f"RDATA events@{A} token 9 skips ahead of token 7 sent before it "
        "(tokens 8..8 were neither sent nor announced by GAP)",
    )
    assert positions.vector("events") == {A: 7, B: 8}


def test_a_position_above_the_origins_last_token_is_refused() -> None:
    positions = MemoryPositions()
    positions.set("events", 4, A)
    _, connection, transport = make(positions=positions)
    v2(connection)
    connection.dataReceived(f"POSITION events@{A} 6\n".encode())
    assert closed_with(
        transport,
        f"POSITION events@{A} 6 is above token 4, the last this worker received: tokens "
        "5..6 were neither sent nor announced by GAP",
    )


def test_failover_position_for_another_origin_moves_nothing() -> None:
    """Failover: master C answers A's and B's part of the vector with POSITION at the
    worker's own tokens, then sends its own origin from its start."""
    positions = MemoryPositions()
    positions.set("events", 9, A)
    positions.set("events", 4, B)
    handler = Recorder()
    _, connection, transport = make(handler, positions)
    v2(connection, C)
    assert sent(transport)[-1] == f"REPLICATE events {A}:9,{B}:4"
    connection.dataReceived(
        f"POSITION events@{A} 9\nPOSITION events@{B} 4\n"
        f"RDATA events@{C} 1 {{\"n\":\"c1\"}}\nRDATA events@{C} 2 {{\"n\":\"c2\"}}\n"
        f"POSITION events@{C} 2\nRDATA events@{A} 10 {{\"n\":\"a10\"}}\n".encode()
    )
    assert not transport.disconnecting
    assert [(o, t) for _, o, t, _ in handler.calls] == [(C, 1), (C, 2), (A, 10)]
    assert positions.vector("events") == {A: 10, B: 4, C: 2}


def test_gap_and_reset_apply_to_one_origin() -> None:
    """GAP and RESET name one origin: its hook hears the origin, its position moves, the
    other origins' stay."""
    positions = MemoryPositions()
    positions.set("events", 2, A)
    positions.set("events", 50, B)
    handler = Recorder()
    _, connection, transport = make(handler, positions)
    v2(connection, B)
    connection.dataReceived(
        f"GAP events@{A} 3 5\nRDATA events@{A} 6 [6]\nPOSITION events@{A} 6\n"
        f"RESET events@{B} 1\nRDATA events@{B} 1 [1]\nPOSITION events@{B} 1\n".encode()
    )
    assert not transport.disconnecting
    assert handler.gaps == [("events", A, 3, 5)]
    assert handler.resets == [("events", B, 50, 1)]
    assert [(o, t) for _, o, t, _ in handler.calls] == [(A, 6), (B, 1)]
    assert positions.vector("events") == {A: 6, B: 1}


def test_a_gap_that_skips_for_one_origin_is_refused() -> None:
    positions = MemoryPositions()
    positions.set("events", 2, A)
    _, connection, transport = make(positions=positions)
    v2(connection)
    connection.dataReceived(f"GAP events@{A} 5 6\n".encode())
    assert closed_with(
        transport,
        f"GAP events@{A} 5 6 does not start after token 2, the last this worker received",
    )


def test_a_position_between_the_rows_of_one_origins_token_is_refused() -> None:
    """The batch of A's token is open: A's POSITION may not come; B's lines may."""
    _, connection, transport = make()
    v2(connection)
    connection.dataReceived(
        f"RDATA events@{A} batch [1]\nRDATA events@{B} 1 [1]\nPOSITION events@{A} 0\n".encode()
    )
    assert closed_with(
        transport, f"POSITION events@{A} arrived between the rows of one token (1 rows sent "
        "with batch)",
    )


@pytest.mark.parametrize("line", [
    "RDATA events 1 {}", "RDATA events batch {}", "POSITION events 3", "GAP events 1 2",
    "RESET events 0",
])
def test_an_unqualified_stream_field_from_a_version_2_master_is_an_error(line: str) -> None:
    """Version 2 names every stream with its origin: a bare stream field is refused."""
    handler = Recorder()
    _, connection, transport = make(handler)
    v2(connection)
    connection.dataReceived(f"{line}\n".encode())
    name = line.split(" ")[0]
    assert closed_with(
        transport,
        f"{name} events: protocol version 2 names every stream with its origin "
        "(<stream>@<origin>)",
    )
    assert handler.calls == []


@pytest.mark.parametrize("line", [
    f"RDATA events@{A} 1 {{}}", f"POSITION events@{A} 0", f"GAP events@{A} 1 2",
    f"RESET events@{A} 0",
])
def test_a_qualified_stream_field_from_a_version_1_master_is_an_error(line: str) -> None:
    """Version 1 has no origins: a qualified field is refused, not taken as the stream."""
    handler = Recorder()
    _, connection, transport = make(handler)
    connection.dataReceived(f"SERVER m\nVERSION 1\n{line}\n".encode())
    name = line.split(" ")[0]
    assert closed_with(
        transport, f"{name} events@{A}: origins are not part of protocol replication/1"
    )
    assert handler.calls == []


def test_an_unfollowed_stream_of_an_origin_is_ignored() -> None:
    handler = Recorder()
    _, connection, transport = make(handler)
    v2(connection)
    connection.dataReceived(f"RDATA other@{A} 1 {{}}\n".encode())
    assert not transport.disconnecting and handler.calls == []


def test_a_now_stream_takes_any_first_token_of_each_origin() -> None:
    """A stream asked for ``NOW`` knows no origin's last token until its POSITION."""
    handler = Recorder()
    _, connection, transport = make(handler, streams=(WorkerStream("events", "latest"),))
    v2(connection)
    assert sent(transport)[-1] == "REPLICATE events NOW"
    connection.dataReceived(
        f"POSITION events@{A} 40\nPOSITION events@{B} 7\nRDATA events@{A} 41 [1]\n"
        f"RDATA events@{C} 5 [5]\n".encode()
    )
    assert not transport.disconnecting
    assert [(o, t) for _, o, t, _ in handler.calls] == [(A, 41), (C, 5)]


def test_a_pending_handler_holds_the_input_of_a_version_2_connection() -> None:
    """A handler that returns a Deferred holds every later line, of any origin."""
    waiting: list[Deferred[None]] = []
    seen: list[tuple[str | None, int]] = []

    def handler(stream: str, token: int, rows: list[Any], origin: str | None = None) -> Any:
        seen.append((origin, token))
        if token == 1 and origin == A:
            d: Deferred[None] = Deferred()
            waiting.append(d)
            return d
        return None

    positions = MemoryPositions()
    _, connection, _ = make(handler, positions)
    v2(connection)
    connection.dataReceived(
        f"RDATA events@{A} 1 [1]\nRDATA events@{B} 1 [1]\nRDATA events@{A} 2 [2]\n".encode()
    )
    assert seen == [(A, 1)] and positions.vector("events") == {}
    waiting[0].callback(None)
    assert seen == [(A, 1), (B, 1), (A, 2)]
    assert positions.vector("events") == {A: 2, B: 1}


# -- HANDLED ---------------------------------------------------------------------------------


def test_handled_reports_are_qualified_per_origin() -> None:
    """Once a second, each (stream, origin) whose position changed is reported qualified;
    local positions are not reported to a version 2 master."""
    clock = Clock()
    positions = MemoryPositions()
    positions.set("events", 3, B)
    _, connection, transport = make(positions=positions, clock=clock)
    v2(connection)
    connection.dataReceived(f"RDATA events@{A} 1 [1]\n".encode())
    transport.clear()
    clock.advance(1)
    assert sent(transport) == [f"HANDLED events@{A} 1", f"HANDLED events@{B} 3"]
    transport.clear()
    clock.advance(1)
    assert sent(transport) == []
    connection.dataReceived(f"RDATA events@{A} 2 [2]\n".encode())
    clock.advance(1)
    assert sent(transport) == [f"HANDLED events@{A} 2"]


# -- handlers and the origin -----------------------------------------------------------------


def test_accepts_origin_detects_an_explicit_origin_keyword() -> None:
    def plain(stream: str, token: int, rows: list[Any]) -> None: ...
    def keyword(stream: str, token: int, rows: list[Any], *, origin: str | None) -> None: ...
    def positional(stream: str, token: int, rows: list[Any], origin: Any = None) -> None: ...
    def anything(*args: Any, **kwargs: Any) -> None: ...
    def only_positional(stream: str, token: int, rows: list[Any], origin: Any = None, /
                        ) -> None: ...

    assert not accepts_origin(plain)
    assert accepts_origin(keyword) and accepts_origin(positional)
    assert not accepts_origin(anything)  # a forwarding wrapper keeps three arguments
    assert not accepts_origin(only_positional)
    assert not accepts_origin(print)  # a builtin without origin
    assert accepts_origin(PrintJson())


def test_a_plain_handler_is_called_without_origin_under_version_2() -> None:
    handler = Plain()
    _, connection, _ = make(handler)
    v2(connection)
    connection.dataReceived(f"RDATA events@{A} 1 [1]\nRDATA events@{A} 2 [2]\n".encode())
    assert handler.calls == [("events", 1, [[1]]), ("events", 2, [[2]])]


def test_an_origin_handler_hears_none_under_version_1() -> None:
    """Under version 1 a handler taking ``origin`` is called with ``origin=None``."""
    handler = Recorder()
    _, connection, _ = make(handler)
    connection.dataReceived(b"SERVER m\nVERSION 1\nRDATA events 1 [1]\nRDATA events 2 [2]\n")
    assert [(o, t) for _, o, t, _ in handler.calls] == [(None, 1), (None, 2)]


def test_a_coroutine_handler_hears_the_origin() -> None:
    """A coroutine handler taking ``origin`` is called with it; its position is recorded
    per origin once it returns."""
    seen: list[tuple[str | None, int]] = []

    async def handler(stream: str, token: int, rows: list[Any], *, origin: str | None) -> None:
        seen.append((origin, token))

    positions = MemoryPositions()
    _, connection, _ = make(handler, positions)
    v2(connection)
    connection.dataReceived(f"RDATA events@{B} 1 [1]\n".encode())
    assert seen == [(B, 1)]
    assert positions.vector("events") == {B: 1}


def test_the_print_handler_adds_the_origin_when_there_is_one() -> None:
    out = io.StringIO()
    handler = PrintJson(out)
    _, connection, _ = make(handler)
    v2(connection)
    connection.dataReceived(
        f"RDATA events@{A} 1 {{\"n\":1}}\nGAP events@{B} 1 2\nRESET events@{C} 0\n".encode()
    )
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert printed == [
        {"stream": "events", "token": 1, "rows": [{"n": 1}], "origin": A},
        {"stream": "events", "gap": [1, 2], "origin": B},
        {"stream": "events", "reset": {"position": 0, "head": 0}, "origin": C},
    ]
    out.truncate(0)
    out.seek(0)
    handler("events", 2, [])
    assert json.loads(out.getvalue()) == {"stream": "events", "token": 2, "rows": []}


# -- positions recorded before origins -------------------------------------------------------


def test_local_positions_bind_to_the_first_version_2_master_followed_alone(
    tmp_path: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker of one master meets it in version 2: its local positions become that
    origin's (recorded in the file), and the vector carries them."""
    path = str(tmp_path / "w.positions")
    positions = PositionFile(path, fsync=False)
    positions.set("events", 41)
    _, connection, transport = make(positions=positions)
    with caplog.at_level(logging.INFO):
        v2(connection, A)
    assert sent(transport)[-1] == f"REPLICATE events {A}:41"
    assert f"bound to its origin {A}" in caplog.text
    assert positions.local_origin == A and positions.get("events", A) == 41
    positions.close()
    reopened = PositionFile(path, fsync=False)
    # The local positions *are* A's: one line per stream, read back under A.
    assert reopened.local_origin == A and reopened.vector("events") == {A: 41}
    assert reopened.get("events") == reopened.get("events", A) == 41
    reopened.close()


def test_bound_local_positions_are_sent_to_another_origin_as_the_bound_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Local positions bound to A are A's wherever the worker goes: master B is sent
    ``A:41``, and B's own origin is not given A's token."""
    positions = MemoryPositions({"events": 41})
    positions.bind_local_origin(A)
    _, connection, transport = make(positions=positions, master=("tcp:host=a:port=1",
                                                                  "tcp:host=b:port=1"))
    with caplog.at_level(logging.INFO):
        v2(connection, B)
    assert sent(transport)[-1] == f"REPLICATE events {A}:41"
    assert positions.get("events", B) is None


def test_unbound_local_positions_with_several_masters_are_not_guessed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Several masters and unbound local positions: the worker cannot know whose they are;
    it logs what to do and closes without asking for anything or binding."""
    positions = MemoryPositions({"events": 41})
    worker, connection, transport = make(
        positions=positions, master=("tcp:host=a:port=1", "tcp:host=b:port=1"),
    )
    with caplog.at_level(logging.ERROR):
        v2(connection, B)
    assert "will not guess which one recorded them" in caplog.text
    assert transport.disconnecting
    assert not any(s.startswith(("REPLICATE", "ERROR")) for s in sent(transport))
    assert positions.local_origin is None and positions.vector("events") == {None: 41}


def test_local_positions_are_copied_once_and_never_over_an_origins_own() -> None:
    """A bound origin that already has a position keeps it (the copy happens once)."""
    positions = MemoryPositions({"events": 41})
    positions.bind_local_origin(A)
    positions.set("events", 50, A)
    _, connection, transport = make(positions=positions)
    v2(connection, A)
    assert sent(transport)[-1] == f"REPLICATE events {A}:50"


def test_a_worker_without_local_positions_binds_nothing() -> None:
    positions = MemoryPositions()
    _, connection, _ = make(positions=positions, master=("tcp:host=a:port=1",
                                                         "tcp:host=b:port=1"))
    v2(connection, A)
    assert positions.local_origin is None


def test_positions_without_a_binding_method_bind_in_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A custom Positions without ``bind_local_origin``: the binding lasts the process."""

    class Custom(MemoryPositions):
        bind_local_origin = None  # type: ignore[assignment]

    positions = Custom({"events": 3})
    worker, connection, transport = make(positions=positions)
    with caplog.at_level(logging.WARNING):
        v2(connection, A)
    assert worker.local_origin == A
    assert "for this process only" in caplog.text
    assert sent(transport)[-1] == f"REPLICATE events {A}:3"


def test_version_1_keeps_using_local_positions_after_a_binding() -> None:
    """A master of version 1 after a binding: the worker asks with its local position."""
    positions = MemoryPositions({"events": 41})
    positions.bind_local_origin(A)
    _, connection, transport = make(positions=positions)
    connection.dataReceived(b"SERVER m\nVERSION 1\n")
    assert sent(transport)[-1] == "REPLICATE events 41"


# -- the binding in the position file --------------------------------------------------------


def test_the_binding_is_a_v3_line_written_once(tmp_path: Any) -> None:
    """Binding turns a v2 file into v3 with an ``@local <origin>`` line; binding to the
    same origin again does nothing, to another one is refused."""
    from replication.worker.positions import HEADER_V3, OriginError, read_local_origin

    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), fsync=False)
    positions.set("events", 41)
    assert positions.header != HEADER_V3
    positions.bind_local_origin(A)
    assert positions.header == HEADER_V3
    positions.bind_local_origin(A)
    with pytest.raises(OriginError, match=f"belong to origin {A}"):
        positions.bind_local_origin(B)
    with pytest.raises(OriginError):
        positions.bind_local_origin("bad origin")
    positions.set("events", 42)
    assert read_local_origin(str(path)) == A
    text = path.read_bytes().split(b"\0")[0].decode()
    assert text.startswith(f"# replication positions v3\n@local {A}\nevents 41\n")
    positions.close()
    reopened = PositionFile(str(path), fsync=False)
    assert (reopened.local_origin, reopened.get("events")) == (A, 42)
    reopened.close()


@pytest.mark.parametrize("line", ["@local", "@local short", f"@local {A} x"])
def test_a_damaged_binding_line_stops_the_worker(tmp_path: Any, line: str) -> None:
    from replication.worker.positions import PositionFileError

    path = tmp_path / "w.positions"
    path.write_text(f"# replication positions v3\n{line}\nevents 4\n")
    with pytest.raises(PositionFileError, match="has a damaged line 2"):
        PositionFile(str(path), fsync=False)


def test_two_different_bindings_are_damage(tmp_path: Any) -> None:
    from replication.worker.positions import PositionFileError

    path = tmp_path / "w.positions"
    path.write_text(f"# replication positions v3\n@local {A}\n@local {B}\n")
    with pytest.raises(PositionFileError, match="has a damaged line 3"):
        PositionFile(str(path), fsync=False)


def test_a_binding_line_in_a_v2_file_is_damage(tmp_path: Any) -> None:
    from replication.worker.positions import PositionFileError

    path = tmp_path / "w.positions"
    path.write_text(f"# replication positions v2\n@local {A}\n")
    with pytest.raises(PositionFileError, match="damaged line 2"):
        PositionFile(str(path), fsync=False)


def test_the_positions_tool_shows_the_binding(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """``replication positions`` says whose positions the local ones are, once bound."""
    from replication.cli import main

    path = tmp_path / "w.positions"
    positions = PositionFile(str(path), fsync=False)
    positions.set("events", 41)
    positions.bind_local_origin(A)
    positions.close()
    assert main(["positions", str(path)]) == 0
    assert f"positions without an origin are origin {A}'s" in capsys.readouterr().out
    assert main(["positions", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["local_origin"] == A


def test_a_master_may_not_push_a_stream_past_64_origins() -> None:
    """Each origin costs a route, a position and a place in the next vector: the 65th
    origin of a stream (recorded or seen on this connection) is refused."""
    positions = MemoryPositions()
    for n in range(63):
        positions.set("events", 1, f"origin{n:012d}xxxx")
    handler = Recorder()
    _, connection, transport = make(handler, positions)
    v2(connection)
    connection.dataReceived(f"RDATA events@{A} 1 [1]\n".encode())  # the 64th: taken
    assert not transport.disconnecting and len(handler.calls) == 1
    connection.dataReceived(f"POSITION events@{B} 0\n".encode())
    assert closed_with(
        transport,
        f"events@{B}: stream events would hold more than 64 origins, the most a position "
        "vector names",
    )
    assert B not in positions.vector("events")


def test_the_stop_log_names_positions_per_origin() -> None:
    from replication.worker.service import _recorded

    assert _recorded("events", {}) == "events at no position"
    assert _recorded("events", {None: 4}) == "events at 4"
    assert _recorded("events", {B: 3, A: 7, None: 4}) == (
        f"events at {A}:7, {B}:3, 4 without an origin"
    )


def test_a_vector_longer_than_a_line_is_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    """With ``limits.max_line_bytes`` 1024, a vector of 40 long origins does not fit: the
    worker logs why and closes rather than fail in the middle of its REPLICATE lines."""
    import dataclasses

    positions = MemoryPositions()
    for n in range(40):
        positions.set("events", 1, f"{n:02d}" + "o" * 40)
    worker = Worker(
        dataclasses.replace(WorkerConfig(name="w", streams=(WorkerStream("events"),)),
                            max_line_bytes=1024),
        Recorder(), positions, Clock(),
    )
    connection = WorkerConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    with caplog.at_level(logging.ERROR):
        v2(connection)
    assert "over limits.max_line_bytes (1024)" in caplog.text
    assert transport.disconnecting
    assert not any(s.startswith("REPLICATE") for s in sent(transport))
