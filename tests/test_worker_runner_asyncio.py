"""Coroutine handlers under a running asyncio event loop (the asyncio reactor's case): the
runner runs them as asyncio tasks, so that one handler can await asyncio futures, tasks and
timeouts and Twisted Deferreds alike. Each test runs its own event loop; retries still go
through the runner's Clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from replication.metrics import WorkerMetrics
from replication.worker.positions import MemoryPositions
from replication.worker.runner import FIRST_RETRY_DELAY, AwaitDeferreds, TokenRunner


class Gate:
    """Records hold/release calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def hold_input(self) -> None:
        self.calls.append("hold")

    def release_input(self) -> None:
        self.calls.append("release")


def make(handler: Callable[[str, int, list[Any]], Any]) -> tuple[
    TokenRunner, MemoryPositions, Clock, Gate
]:
    clock = Clock()
    positions = MemoryPositions()
    runner = TokenRunner(handler, positions, clock, WorkerMetrics(), max_retry_delay=8.0)
    gate = Gate()
    runner.attach(gate)
    return runner, positions, clock, gate


async def idle(runner: TokenRunner) -> None:
    """Until no handler call is in flight (at most 5 seconds)."""
    done = asyncio.get_running_loop().create_future()
    runner.when_idle(lambda: done.set_result(None))
    await asyncio.wait_for(done, 5)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_one_handler_awaits_asyncio_and_a_deferred() -> None:
    """A coroutine handler that awaits ``asyncio.sleep``, then a Deferred fired later by the
    loop, then an asyncio task, runs as an asyncio task: the input is held meanwhile, and the
    position is recorded and the input released once it returned."""
    events: list[object] = []
    fired: Deferred[str] = Deferred()

    async def handler(stream: str, token: int, rows: list[Any]) -> None:
        events.append(("called", asyncio.current_task() is not None))
        await asyncio.sleep(0.001)
        events.append("slept")
        events.append(await fired)
        events.append(await asyncio.ensure_future(asyncio.sleep(0, result="task")))

    async def main() -> None:
        runner, positions, _, gate = make(handler)
        asyncio.get_running_loop().call_later(0.01, fired.callback, "deferred")
        assert runner.submit("events", 1, [["a"]]) is False
        assert runner.blocked and gate.calls == ["hold"] and positions.get("events") is None
        await idle(runner)
        assert positions.get("events") == 1
        assert gate.calls == ["hold", "release"] and not runner.blocked

    run(main)
    assert events == [("called", True), "slept", "deferred", "task"]


def test_a_failed_deferred_raises_its_exception_in_the_handler() -> None:
    """Awaiting a Deferred that failed raises its exception at the ``await``; a handler
    that catches it succeeds, and an already fired Deferred gives its result at once."""
    caught: list[object] = []

    async def handler(stream: str, token: int, rows: list[Any]) -> None:
        try:
            await fail(ValueError("no such user"))
        except ValueError as e:
            caught.append(str(e))
        caught.append(await succeed(42))

    async def main() -> None:
        runner, positions, _, _ = make(handler)
        runner.submit("events", 3, [])
        await idle(runner)
        assert positions.get("events") == 3

    run(main)
    assert caught == ["no such user", 42]


def test_an_asyncio_timeout_fails_the_call_and_the_retry_succeeds() -> None:
    """``asyncio.timeout`` (which needs a current task) works in a handler: the first call
    times out, nothing is recorded, the input stays held; the retry after the first delay
    returns and records the token."""
    calls: list[int] = []

    async def handler(stream: str, token: int, rows: list[Any]) -> None:
        calls.append(token)
        if len(calls) == 1:
            async with asyncio.timeout(0.001):
                await asyncio.sleep(10)

    async def main() -> None:
        runner, positions, clock, gate = make(handler)
        runner.submit("events", 5, [])
        await idle(runner)
        assert positions.get("events") is None and runner.blocked
        assert "release" not in gate.calls
        clock.advance(FIRST_RETRY_DELAY / 2)
        assert calls == [5]
        clock.advance(FIRST_RETRY_DELAY / 2)
        await asyncio.sleep(0)  # the retry's task starts
        assert calls == [5, 5]
        await idle(runner)
        assert positions.get("events") == 5 and gate.calls[-1] == "release"

    run(main)


def test_a_handler_returning_an_asyncio_future_is_awaited() -> None:
    """A plain function may return an asyncio future: the token is recorded when it is
    done."""
    futures: list[asyncio.Future[None]] = []

    def handler(stream: str, token: int, rows: list[Any]) -> asyncio.Future[None]:
        futures.append(asyncio.get_running_loop().create_future())
        return futures[-1]

    async def main() -> None:
        runner, positions, _, _ = make(handler)
        runner.submit("events", 2, [])
        await asyncio.sleep(0)
        assert positions.get("events") is None and runner.busy
        futures[0].set_result(None)
        await idle(runner)
        assert positions.get("events") == 2

    run(main)


def test_a_coroutine_without_a_running_loop_still_awaits_deferreds() -> None:
    """With no asyncio loop running (the default reactor), a coroutine handler runs under
    ``ensureDeferred`` and awaits Deferreds as before."""
    pending: Deferred[None] = Deferred()

    async def handler(stream: str, token: int, rows: list[Any]) -> None:
        await pending

    runner, positions, _, _ = make(handler)
    runner.submit("events", 4, [])
    assert positions.get("events") is None and runner.busy
    pending.callback(None)
    assert positions.get("events") == 4 and not runner.busy


def test_await_deferreds_returns_the_coroutine_result_and_passes_bare_yields() -> None:
    """:class:`AwaitDeferreds` returns what the coroutine returns; ``asyncio.sleep(0)``'s
    bare yield goes to the task unchanged."""

    async def body() -> str:
        await asyncio.sleep(0)
        value: str = await succeed("d")
        return value + "!"

    async def main() -> str:
        return await AwaitDeferreds(body())

    assert asyncio.run(main()) == "d!"


def test_cancelling_the_task_raises_cancelled_error_at_the_awaited_deferred() -> None:
    """Cancelling the task while its coroutine awaits a pending Deferred raises
    ``CancelledError`` in the coroutine, at that ``await``."""
    seen: list[str] = []

    async def body() -> None:
        try:
            await Deferred()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def wrapper() -> None:
        await AwaitDeferreds(body())

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(wrapper())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["cancelled"]


class DeferredThenSleep:
    """An awaitable that is not a coroutine: its ``__await__`` awaits a Deferred and then
    asyncio."""

    def __init__(self, deferred: Deferred[int]) -> None:
        self.deferred = deferred
        self.got: list[int] = []

    def __await__(self) -> Any:
        self.got.append((yield from self.deferred))
        yield from asyncio.sleep(0).__await__()


def test_an_awaitable_that_is_not_a_coroutine_may_await_a_deferred_too() -> None:
    """A handler returning an object with ``__await__`` (not a coroutine) is run as a task
    as well, and its Deferred is awaited."""
    pending: Deferred[int] = Deferred()
    awaitable = DeferredThenSleep(pending)

    async def main() -> None:
        runner, positions, _, _ = make(lambda stream, token, rows: awaitable)
        runner.submit("events", 6, [])
        await asyncio.sleep(0)
        assert runner.busy and positions.get("events") is None
        pending.callback(7)
        await idle(runner)
        assert positions.get("events") == 6

    run(main)
    assert awaitable.got == [7]


def test_closing_the_awaitable_closes_the_coroutine() -> None:
    """Closing :class:`AwaitDeferreds`' iterator (a task garbage-collected while pending)
    closes the coroutine too: its ``finally`` runs."""
    cleaned: list[str] = []

    async def body() -> None:
        try:
            await asyncio.sleep(0)
        finally:
            cleaned.append("finally")

    steps = AwaitDeferreds(body()).__await__()
    assert next(steps) is None  # asyncio.sleep(0)'s bare yield, passed on
    steps.close()
    assert cleaned == ["finally"]
