"""Fuzzing a live worker with hypothesis: generated master output, corrupted and chunked.

A real :class:`~replication.worker.Worker` and :class:`~replication.worker.WorkerConnection`
on a ``StringTransport`` and a ``Clock`` receive what hypothesis generates as a master's
output: well-formed ``RDATA`` (one-row and batched tokens, repeats, skips, other streams),
``POSITION``, ``GAP``, ``RESET``, ``PING`` and ``ERROR`` lines, some of them corrupted
(bytes flipped, cut or inserted), delivered in random chunk sizes, while the handler
answers at once, later (a Deferred) or fails once, and time passes; then the same as a master
of protocol version 3 sends it (qualified fields, runs of tokens as ``ROWS`` lines).
Throughout:

- nothing raises out of ``dataReceived`` (it would fail the test);
- every position the worker records is one it may record: a token whose handler call has
  completed, the last token of a ``GAP`` whose hook has completed, ``0`` after a
  ``RESET``'s hook has completed, or a token a ``POSITION`` line named; never a token
  whose call is still pending or failed;
- the handler sees each stream's tokens in increasing order (a retry repeats the token
  that failed; a ``RESET`` starts the stream over);
- once the connection is lost and the handler's pending calls are done, no delayed call is
  left on the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from fuzz_campaign import load_profile, scaled
from replication.config import WorkerConfig, WorkerStream
from replication.wire.commands import PositionCommand
from replication.worker import Worker, WorkerConnection
from replication.worker.positions import MemoryPositions

load_profile()

FOLLOWED = ("events", "other")


class Handler:
    """Records calls and completions; a token in ``pending`` returns a Deferred the test
    fires later, one in ``failing`` raises on its first call."""

    def __init__(self, pending: set[int], failing: set[int]) -> None:
        self.pending = set(pending)
        self.failing = set(failing)
        self.waiting: list[tuple[str, int, Deferred[None]]] = []
        #: Per stream, the tokens called, in order, and whether the call failed.
        self.calls: dict[str, list[tuple[int, bool]]] = {}
        #: ``(stream, position)`` pairs the worker may record now.
        self.allowed: set[tuple[str, int]] = set()

    def __call__(self, stream: str, token: int, rows: list[Any]) -> Deferred[None] | None:
        assert rows, "a token carries at least one row"
        calls = self.calls.setdefault(stream, [])
        if calls:
            last, failed = calls[-1]
            assert token > last or token == last and failed, (stream, calls, token)
        if token in self.failing:
            self.failing.discard(token)
            calls.append((token, True))
            raise RuntimeError(f"token {token} fails once")
        calls.append((token, False))
        if token in self.pending:
            self.pending.discard(token)
            d: Deferred[None] = Deferred()
            self.waiting.append((stream, token, d))
            return d
        self.allowed.add((stream, token))
        return None

    def fire_one(self) -> None:
        stream, token, d = self.waiting.pop(0)
        self.allowed.add((stream, token))
        d.callback(None)

    def gap(self, stream: str, first: int, last: int) -> None:
        self.allowed.add((stream, last))

    def reset(self, stream: str, old: int, head: int) -> None:
        self.calls.pop(stream, None)  # the stream starts over
        self.allowed.add((stream, 0))


class CheckedPositions(MemoryPositions):
    """Positions that refuse to record what the handler has not completed."""

    def __init__(self, handler: Handler, initial: dict[str, int]) -> None:
        super().__init__(initial)
        self.handler = handler
        self.recorded: list[tuple[str, int]] = []

    def set(self, stream: str, token: int, origin: str | None = None) -> None:
        if origin is None:
            super().set(stream, token)
        else:
            super().set(stream, token, origin)
        assert (stream, token) in self.handler.allowed, (stream, token)
        self.recorded.append((stream, token))


class WatchedConnection(WorkerConnection):
    """A worker connection that tells the handler's bookkeeping when a ``POSITION`` line
    arrives: from then on, the master's word allows that position."""

    def on_POSITION(self, command: PositionCommand) -> None:
        handler = self.worker.handler
        assert isinstance(handler, Handler)
        handler.allowed.add((command.stream, command.token))
        super().on_POSITION(command)


# -- what the master sends ---------------------------------------------------------------


@st.composite
def master_lines(draw: st.DrawFn) -> list[bytes]:
    """A master's output after the handshake: mostly well-formed and in order."""
    lines: list[bytes] = []
    heads = {"events": draw(st.integers(0, 3)), "other": 0, "unfollowed": 0}
    rows = st.sampled_from([b"{}", b"[1]", b"null", b'{"a":"\xc3\xa9"}', b"123456789012345678901",
                            b'"\\ud83d\\ude00"'])
    for _ in range(draw(st.integers(1, 25))):
        stream = draw(st.sampled_from(["events", "events", "events", "other", "unfollowed"]))
        s = stream.encode()
        kind = draw(st.integers(0, 19))
        if kind < 11:
            heads[stream] += draw(st.sampled_from([1] * 15 + [2]))  # 2: a protocol error
            for _ in range(draw(st.sampled_from([0, 0, 1, 3]))):
                lines.append(b"RDATA %s batch %s" % (s, draw(rows)))
            lines.append(b"RDATA %s %d %s" % (s, heads[stream], draw(rows)))
        elif kind < 13:
            lines.append(b"POSITION %s %d" % (s, heads[stream] + draw(st.integers(0, 2))))
        elif kind == 13:
            first = heads[stream] + 1
            heads[stream] = first + draw(st.integers(0, 3))
            lines.append(b"GAP %s %d %d" % (s, first, heads[stream]))
        elif kind == 14:
            lines.append(b"RESET %s %d" % (s, draw(st.integers(0, 2))))
            heads[stream] = 0  # the stream is replayed from its start
        elif kind == 15:
            lines.append(b"PING %d" % draw(st.integers(0, 10**13)))
        elif kind == 16:
            lines.append(b"RDATA %s %d [9]" % (s, max(1, heads[stream] - draw(st.integers(0, 2)))))
        elif kind == 17:
            lines.append(b"ERROR " + draw(st.sampled_from([b"slow down", b"unknown stream 'x'"])))
        else:
            lines.append(b"RDATA %s batch %s" % (s, draw(rows)))  # a token never finished
    return lines


@st.composite
def corrupted(draw: st.DrawFn, lines: list[bytes]) -> list[bytes]:
    """``lines`` with, now and then, one line cut, a byte flipped or noise inserted."""
    out = list(lines)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        i = draw(st.integers(0, len(out) - 1))
        line = out[i]
        how = draw(st.integers(0, 3))
        if how == 0 and line:
            out[i] = line[: draw(st.integers(0, len(line) - 1))]
        elif how == 1 and line:
            at = draw(st.integers(0, len(line) - 1))
            out[i] = line[:at] + bytes([draw(st.integers(0, 255))]) + line[at + 1:]
        elif how == 2:
            out.insert(i, draw(st.binary(max_size=30)).replace(b"\n", b""))
        else:
            out.insert(i, b"RDATA events 1 " + b"[" * 3000)
    return out


@dataclass(frozen=True)
class Script:
    lines: list[bytes]
    position: int | None
    pending: set[int]
    failing: set[int]


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    lines = draw(master_lines())
    return Script(
        lines=draw(corrupted(lines)),
        position=draw(st.sampled_from([None, None, 0, 2, 5])),
        pending=draw(st.sets(st.integers(1, 40), max_size=6)),
        failing=draw(st.sets(st.integers(1, 40), max_size=4)),
    )


def feed(connection: WorkerConnection, transport: StringTransport, handler: Handler,
         clock: Clock, hello: bytes, lines: list[bytes], data: st.DataObject) -> None:
    """``hello`` then ``lines`` to ``connection`` in drawn chunks, until it closes; pending
    handler calls finish and time passes at drawn moments."""
    stream_bytes = hello + b"".join(line + b"\n" for line in lines)
    at = 0
    while at < len(stream_bytes) and not transport.disconnecting:
        size = data.draw(st.sampled_from([1, 3, 16, 100, 1000, len(stream_bytes)]), "chunk")
        connection.dataReceived(stream_bytes[at:at + size])
        at += size
        while handler.waiting and data.draw(st.booleans(), "fire"):
            handler.fire_one()
        if data.draw(st.integers(0, 3), "advance") == 0:
            clock.advance(data.draw(st.sampled_from([0.5, 1.0, 2.0, 5.0]), "seconds"))


@settings(max_examples=scaled(300))
@given(scripts(), st.data())
def test_a_worker_survives_whatever_a_master_sends(script: Script, data: st.DataObject) -> None:
    """A worker fed generated, partly corrupted master output in random chunks keeps the
    invariants of this module's docstring and leaves no delayed call after the close."""
    handler = Handler(script.pending, script.failing)
    initial = {} if script.position is None else {"events": script.position}
    for stream, token in initial.items():
        handler.allowed.add((stream, token))
    positions = CheckedPositions(handler, initial)
    clock = Clock()
    config = WorkerConfig(name="w", streams=tuple(WorkerStream(s) for s in FOLLOWED))
    worker = Worker(config, handler, positions, clock)
    connection = WatchedConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    feed(connection, transport, handler, clock, b"SERVER m\nVERSION 1\n", script.lines, data)
    errors = [line for line in transport.value().split(b"\n") if line.startswith(b"ERROR ")]
    event(
        f"closed by the worker: {errors[0][:40].decode('utf-8', 'replace')}"
        if errors
        else "no ERROR"
    )
    event(
        f"{len(positions.recorded)} positions recorded" if positions.recorded else "none recorded"
    )
    connection.connectionLost(Failure(ConnectionDone()))
    while handler.waiting:
        handler.fire_one()
    assert clock.getDelayedCalls() == []


ORIGIN = b"BBBBBBBBBBBBBBBBBBBBBB"


@st.composite
def rows_lines(draw: st.DrawFn, lines: list[bytes]) -> list[bytes]:
    """``lines`` as a master of version 3 (origin B) could send them: each stream field
    named ``<stream>@B``, and runs of one-row tokens of a stream, now and then, as one
    ``ROWS`` line (sometimes with a token past the row bound or malformed)."""
    out: list[bytes] = []
    i = 0
    while i < len(lines):
        parts = lines[i].split(b" ", 3)
        if len(parts) >= 2 and parts[0] in (b"RDATA", b"POSITION", b"GAP", b"RESET"):
            parts[1] += b"@" + ORIGIN
        if (
            len(parts) == 4 and parts[0] == b"RDATA" and parts[2].isdigit()
            and (not out or b" batch " not in out[-1]) and draw(st.integers(0, 3)) > 0
        ):
            tokens = [parts[3]]
            first = int(parts[2])
            j = i + 1
            while j < len(lines) and len(tokens) < 5:
                more = lines[j].split(b" ", 3)
                if (len(more) != 4 or more[0] != b"RDATA" or more[1] != parts[1].split(b"@")[0]
                        or more[2] != b"%d" % (first + len(tokens))):
                    break
                tokens.append(more[3])
                j += 1
            body = b",".join(b"[" + row + b"]" for row in tokens)
            kind = draw(st.integers(0, 9))
            if kind == 0:
                body = b"[" + b",".join([tokens[0]] * 9) + b"]," + body  # past the row bound
            elif kind == 1:
                body = body[:-1]  # malformed
            out.append(b"ROWS %s %d [%s]" % (parts[1], first, body))
            i = j
            continue
        out.append(b" ".join(parts))
        i += 1
    return out


@settings(max_examples=scaled(200))
@given(master_lines(), st.data())
def test_a_version_3_worker_survives_whatever_a_master_sends(
    lines: list[bytes], data: st.DataObject
) -> None:
    """The same invariants with a master of version 3: qualified fields and ``ROWS`` lines
    among the ``RDATA`` ones, corrupted and chunked, handlers pending or failing."""
    script = Script(
        lines=data.draw(corrupted(data.draw(rows_lines(lines), "rows")), "corrupted"),
        position=None,
        pending=data.draw(st.sets(st.integers(1, 40), max_size=6), "pending"),
        failing=data.draw(st.sets(st.integers(1, 40), max_size=4), "failing"),
    )
    handler = Handler(script.pending, script.failing)
    positions = CheckedPositions(handler, {})
    clock = Clock()
    config = WorkerConfig(name="w", streams=tuple(WorkerStream(s) for s in FOLLOWED),
                          max_token_rows=8)
    worker = Worker(config, handler, positions, clock)
    connection = WatchedConnection(worker)
    transport = StringTransport()
    connection.makeConnection(transport)
    hello = b"SERVER m\nVERSION 3\nORIGIN " + ORIGIN + b" fpfpfpfpfpfpfpfpfp\n"
    feed(connection, transport, handler, clock, hello, script.lines, data)
    event("ROWS handled" if connection.command_counts()[0].get("ROWS") else "no ROWS")
    connection.connectionLost(Failure(ConnectionDone()))
    while handler.waiting:
        handler.fire_one()
    assert clock.getDelayedCalls() == []
