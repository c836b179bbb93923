"""The worker's token runner on its own: complete tokens in, handler calls with retries,
positions recorded only after success, the connection's input held and released, and
what survives the loss of a connection. No connection, no master: a recording gate, a
Clock and in-memory positions."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from replication.metrics import WorkerMetrics
from replication.worker.positions import MemoryPositions
from replication.worker.runner import FIRST_RETRY_DELAY, TokenRunner


class Gate:
    """Records hold/release calls; ``held`` is the input's state."""

    def __init__(self) -> None:
        self.held = False
        self.calls: list[str] = []

    def hold_input(self) -> None:
        self.held = True
        self.calls.append("hold")

    def release_input(self) -> None:
        self.held = False
        self.calls.append("release")


class Handler:
    """Records calls with the position recorded at the time of each; raises for tokens in
    ``failing`` (each time, until removed) and returns a pending Deferred for tokens in
    ``pending``."""

    def __init__(self, positions: MemoryPositions) -> None:
        self.positions = positions
        self.calls: list[tuple[str, int, list[Any], int | None]] = []
        self.failing: set[int] = set()
        self.pending: set[int] = set()
        self.deferreds: list[Deferred[None]] = []
        self.hooks: list[tuple[Any, ...]] = []

    def __call__(self, stream: str, token: int, rows: list[Any]) -> Deferred[None] | None:
        self.calls.append((stream, token, rows, self.positions.get(stream)))
        if token in self.failing:
            raise RuntimeError(f"token {token} fails")
        if token in self.pending:
            d: Deferred[None] = Deferred()
            self.deferreds.append(d)
            return d
        return None

    def gap(self, stream: str, first: int, last: int) -> None:
        self.hooks.append(("gap", stream, first, last))

    def reset(self, stream: str, old: int, head: int) -> None:
        self.hooks.append(("reset", stream, old, head))


def make(max_retry_delay: float = 8.0, initial: dict[str, int] | None = None) -> tuple[
    TokenRunner, Handler, MemoryPositions, Clock, Gate
]:
    clock = Clock()
    positions = MemoryPositions(initial)
    handler = Handler(positions)
    runner = TokenRunner(
        handler, positions, clock, WorkerMetrics(), max_retry_delay=max_retry_delay
    )
    gate = Gate()
    runner.attach(gate)
    return runner, handler, positions, clock, gate


def test_a_token_is_recorded_after_its_handler_returned() -> None:
    """A handler that returns None is called with the token's rows while the position is
    still the previous one; then the token is recorded and submit says it is done."""
    runner, handler, positions, _, gate = make()
    assert runner.submit("events", 1, [{"a": 1}, {"b": 2}]) is True
    assert runner.submit("events", 2, [3]) is True
    assert handler.calls == [("events", 1, [{"a": 1}, {"b": 2}], None), ("events", 2, [3], 1)]
    assert positions.get("events") == 2
    assert runner.heads == {"events": 2}
    assert gate.calls == []


def test_tokens_at_or_below_the_position_are_dropped() -> None:
    """Tokens at or below the recorded position are not handed to the handler (already
    handled), but still count as heads; the first token above it is handled."""
    runner, handler, positions, _, _ = make(initial={"events": 5})
    for token in (4, 5):
        assert runner.submit("events", token, [token]) is True
    assert handler.calls == []
    assert runner.heads == {"events": 5}
    runner.submit("events", 6, [6])
    assert [c[1] for c in handler.calls] == [6]
    assert positions.get("events") == 6


def test_a_pending_handler_holds_input_until_it_finishes() -> None:
    """A handler returning a pending Deferred holds the gate; the position is recorded and
    the gate released only when it fires."""
    runner, handler, positions, _, gate = make()
    handler.pending.add(1)
    assert runner.submit("events", 1, [1]) is False
    assert gate.held and runner.blocked and runner.busy
    assert positions.get("events") is None
    handler.deferreds[0].callback(None)
    assert not gate.held and not runner.blocked and not runner.busy
    assert positions.get("events") == 1
    assert gate.calls == ["hold", "release"]


def test_an_already_fired_deferred_finishes_at_once() -> None:
    """A handler returning a Deferred that has already fired is recorded at once; the gate
    ends released."""
    runner, _, positions, _, gate = make()

    def fired(stream: str, token: int, rows: list[Any]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    runner.handler = fired
    assert runner.submit("events", 1, [1]) is False
    assert positions.get("events") == 1
    assert not gate.held and not runner.busy


def test_a_coroutine_handler_is_awaited() -> None:
    """An ``async def`` handler is awaited like a Deferred."""
    runner, _, positions, _, gate = make()
    waiting: Deferred[None] = Deferred()

    async def handler(stream: str, token: int, rows: list[Any]) -> None:
        await waiting

    runner.handler = handler
    runner.submit("events", 1, [1])
    assert gate.held and positions.get("events") is None
    waiting.callback(None)
    assert not gate.held and positions.get("events") == 1


def test_a_failing_handler_is_retried_with_doubling_delays_up_to_the_maximum() -> None:
    """A handler that raises is not recorded; it is called again with the same token after
    1, 2, 4, 8, 8 s (the maximum), holding input all along; once it succeeds the token is
    recorded, input released, and the next failure waits 1 s again."""
    runner, handler, positions, clock, gate = make(max_retry_delay=8.0)
    handler.failing.add(1)
    assert runner.submit("events", 1, [1]) is False
    assert gate.held and runner.blocked
    calls_at: list[float] = []
    for delay in (1.0, 2.0, 4.0, 8.0, 8.0):
        clock.advance(delay - 0.001)
        assert len(handler.calls) == 1 + len(calls_at)  # not yet
        clock.advance(0.001)
        calls_at.append(clock.seconds())
        assert len(handler.calls) == 1 + len(calls_at)
    assert positions.get("events") is None and gate.held
    handler.failing.clear()
    clock.advance(8.0)
    assert positions.get("events") == 1
    assert not gate.held and not runner.blocked
    assert clock.getDelayedCalls() == []
    handler.failing.add(2)
    runner.submit("events", 2, [2])
    clock.advance(FIRST_RETRY_DELAY)
    assert [c[1] for c in handler.calls][-2:] == [2, 2]


def test_a_failed_deferred_is_retried() -> None:
    """A handler whose Deferred fails is retried like one that raised."""
    runner, handler, positions, clock, gate = make()
    handler.pending.add(1)
    runner.submit("events", 1, [1])
    handler.pending.clear()
    handler.deferreds[0].errback(RuntimeError("boom"))
    assert gate.held and positions.get("events") is None and not runner.busy
    clock.advance(FIRST_RETRY_DELAY)
    assert positions.get("events") == 1 and not gate.held


def test_a_lost_connection_drops_a_waiting_retry() -> None:
    """When the connection goes while a retry waits, the retry is cancelled (no delayed
    call is left) and the token stays unrecorded: the next connection starts from the
    recorded position, with its input free and the first retry delay back to 1 s."""
    runner, handler, positions, clock, gate = make()
    handler.failing.add(1)
    runner.submit("events", 1, [1])
    clock.advance(1.0)  # second failure: the next delay would be 4 s
    runner.detach(gate)
    assert clock.getDelayedCalls() == []
    assert not runner.blocked and positions.get("events") is None
    second = Gate()
    runner.attach(second)
    assert not second.held
    runner.submit("events", 1, [1])
    assert len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == clock.seconds() + FIRST_RETRY_DELAY


def pending_then_reconnected() -> tuple[TokenRunner, Handler, MemoryPositions, Clock, Gate, Gate]:
    """Token 1's call pending, its connection lost, and a second connection attached."""
    runner, handler, positions, clock, gate = make()
    handler.pending.add(1)
    runner.submit("events", 1, [1])
    runner.detach(gate)
    second = Gate()
    runner.attach(second)
    return runner, handler, positions, clock, gate, second


def test_a_pending_call_outlives_its_connection() -> None:
    """A call pending when its connection is lost goes on: the next connection's input is
    held until it ends, its position is then recorded, and the next connection is
    released."""
    runner, handler, positions, _, gate, second = pending_then_reconnected()
    assert second.held and runner.busy and not runner.blocked
    handler.deferreds[0].callback(None)
    assert positions.get("events") == 1
    assert not second.held and second.calls == ["hold", "release"]
    assert gate.calls == ["hold"]  # the lost connection is never released


def test_a_pending_call_that_fails_after_its_connection_is_lost_is_not_retried() -> None:
    """A call from a lost connection that then fails is not retried (its token comes again
    from the master after the recorded position); the next connection is released."""
    runner, handler, positions, clock, _, second = pending_then_reconnected()
    handler.deferreds[0].errback(RuntimeError("boom"))
    assert clock.getDelayedCalls() == []
    assert positions.get("events") is None
    assert not second.held and not runner.busy


def test_a_gap_calls_the_hook_then_records_its_last_token() -> None:
    """GAP first..last calls the handler's gap hook and records last; a handler without
    the hook just records it."""
    runner, handler, positions, _, _ = make(initial={"events": 2})
    runner.gap("events", 3, 9)
    assert handler.hooks == [("gap", "events", 3, 9)]
    assert positions.get("events") == 9
    runner.handler = lambda stream, token, rows: None
    runner.gap("events", 10, 12)
    assert positions.get("events") == 12


def test_a_failing_gap_hook_is_retried_before_anything_else() -> None:
    """A gap hook that raises holds input and is retried; its position is recorded only
    once it succeeds."""
    runner, handler, positions, clock, gate = make()
    failures = [RuntimeError("once")]

    def gap(stream: str, first: int, last: int) -> None:
        if failures:
            raise failures.pop()

    handler.gap = gap  # type: ignore[method-assign]
    runner.gap("events", 1, 4)
    assert gate.held and positions.get("events") is None
    clock.advance(FIRST_RETRY_DELAY)
    assert positions.get("events") == 4 and not gate.held


def test_a_reset_calls_the_hook_and_moves_the_position_back_to_zero() -> None:
    """RESET with the master's head calls reset(stream, old position, head) and records 0,
    lower than before, so the stream is replayed from its start."""
    runner, handler, positions, _, _ = make(initial={"events": 50})
    runner.reset("events", 3)
    assert handler.hooks == [("reset", "events", 50, 3)]
    assert positions.get("events") == 0
    runner.submit("events", 1, [1])
    assert positions.get("events") == 1


@pytest.mark.parametrize(
    ("before", "token", "after"), [(None, 7, 7), (6, 7, 7), (7, 7, 7), (8, 7, 8)]
)
def test_a_master_position_moves_the_position_forward_only(
    before: int | None, token: int, after: int
) -> None:
    """POSITION sets the head and records its token when the worker is behind it (or has
    no position); a position ahead of it stays."""
    runner, _, positions, _, _ = make(initial={} if before is None else {"events": before})
    runner.caught_up("events", token)
    assert runner.heads["events"] == token
    assert positions.get("events") == after
    assert runner.lag("events") == 0


def test_lag_is_head_minus_position() -> None:
    """Lag is the tokens between the recorded position and the last head shown, None until
    both are known."""
    runner, handler, _, _, _ = make()
    assert runner.lag("events") is None
    handler.pending.add(1)
    runner.submit("events", 1, [1])
    assert runner.lag("events") is None  # no position yet
    handler.deferreds[0].callback(None)
    runner.caught_up("events", 5)
    runner.heads["events"] = 9
    assert runner.lag("events") == 4


def test_a_worker_with_positions_in_memory_follows_a_master() -> None:
    """A Worker given MemoryPositions follows a real master over a MemoryPipe: every token
    once, in order, its position recorded in memory; after a reconnect, only the new token
    is handled."""
    from replication.config import MasterConfig, WorkerConfig, WorkerStream
    from replication.master import Master, MasterConnection
    from replication.store.memory import MemoryStore
    from replication.testing import MemoryPipe
    from replication.worker import Worker, WorkerConnection

    clock = Clock()
    master = Master(MasterConfig(), MemoryStore(), clock)
    for token in (1, 2, 3):
        master.publish("events", [token, token * 10])
    seen: list[tuple[int, list[Any]]] = []
    positions = MemoryPositions()
    worker = Worker(
        WorkerConfig(name="w", streams=(WorkerStream("events"),)),
        lambda stream, token, rows: seen.append((token, rows)), positions, clock,
    )

    def follow() -> MemoryPipe:
        pipe = MemoryPipe(MasterConnection(master), WorkerConnection(worker))
        for _ in range(100):
            clock.advance(0)
            if not pipe.pump():
                break
        return pipe

    follow().disconnect()
    assert seen == [(1, [1, 10]), (2, [2, 20]), (3, [3, 30])]
    assert positions.get("events") == 3
    master.publish("events", [4])
    follow()
    assert [token for token, _ in seen] == [1, 2, 3, 4]
    assert positions.get("events") == 4
