"""The worker's token runner: what happens to a complete token, whichever connection it came
from.

:class:`TokenRunner` is owned by the :class:`~replication.worker.service.Worker` and outlives
its connections. A connection parses and assembles; it hands the runner complete tokens
(:meth:`TokenRunner.submit`), the master's ``GAP``, ``RESET`` and ``POSITION`` news, and
itself as an :class:`InputGate` while it is the worker's connection. The runner:

* drops a token at or below the recorded position (already handled);
* keys everything per stream and origin: under protocol version 2 each token names the
  master that accepted it (its ``origin``), and positions, heads and order are kept per
  ``(stream, origin)``; under versions 1 and legacy ``origin`` is ``None`` (the local
  origin);
* calls the handler (see :mod:`replication.worker.handlers`) and, when it returns an
  awaitable, waits for it: a coroutine runs as an asyncio task when an asyncio event loop
  is running (the CLI's default asyncio reactor), wrapped in :class:`AwaitDeferreds` so
  that it can await asyncio futures and Deferreds alike, and under ``ensureDeferred``
  otherwise;
* records the position (behind :class:`~replication.worker.positions.Positions`) only after
  the handler succeeded;
* retries a failed call with the same token after a delay that doubles from
  :data:`FIRST_RETRY_DELAY` up to ``max_retry_delay``;
* holds the connection's input while a call is pending or waiting for its retry, so that
  nothing overtakes it, and releases it after.

When the connection is lost, a retry waiting for its turn is dropped: the next connection
asks the master for everything after the recorded position, so the token comes again. A
call still pending goes on (its position is recorded if it succeeds), and the next
connection's input is held until it ends.

The clock is passed in; nothing here touches the global reactor (coroutines use the asyncio
loop that is running when the handler is called, if any).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from replication.metrics import WorkerMetrics
from replication.wire.commands import ORIGIN_SEPARATOR, qualify
from replication.worker.handlers import Handler, accepts_origin
from replication.worker.positions import Positions

log = logging.getLogger(__name__)

#: Seconds before the first retry of a failed handler call; each later retry waits twice as
#: long, up to the runner's ``max_retry_delay``.
FIRST_RETRY_DELAY = 1.0
_NOT_CALLED = object()
_T = TypeVar("_T")


class InputGate(Protocol):
    """What the runner needs of the connection it takes tokens from: holding back its input
    (lines received wait, in order) and handing it over again."""

    def hold_input(self) -> None: ...

    def release_input(self) -> None: ...


class TokenRunner:
    """Runs the handler on complete tokens, once each, in order, and records positions.

    :param handler: called as ``handler(stream, token, rows)`` (with ``origin=`` too when it
        takes that keyword: :func:`~replication.worker.handlers.accepts_origin`, decided
        here once); its optional ``gap`` and ``reset`` methods are called on ``GAP`` and
        ``RESET`` (the same way).
    :param positions: where handled positions are recorded.
    :param clock: time for handler durations and retry delays.
    :param metrics: told of every handler call's outcome and duration.
    :param max_retry_delay: the longest delay between retries of a failed call.

    ``heads`` is the newest token the master has shown per stream (from complete tokens
    and ``POSITION``), for lag; keyed by the stream name under versions 1 and legacy and by
    ``<stream>@<origin>`` (:func:`~replication.wire.commands.qualify`) under version 2.
    """

    def __init__(
        self,
        handler: Handler,
        positions: Positions,
        clock: IReactorTime,
        metrics: WorkerMetrics,
        *,
        max_retry_delay: float,
    ) -> None:
        self.handler = handler
        #: Whether the handler takes ``origin=`` (decided once, here).
        self.handler_takes_origin = accepts_origin(handler)
        self.positions = positions
        self.clock = clock
        self.metrics = metrics
        self.max_retry_delay = max_retry_delay
        self.heads: dict[str, int] = {}
        self._gate: InputGate | None = None
        #: Counts detaches: a call that finishes in another epoch than the one it started in
        #: came from a lost connection.
        self._epoch = 0
        self._blocked = False
        self._retry_call: IDelayedCall | None = None
        self._retry_delay = FIRST_RETRY_DELAY
        self._started = 0.0
        self._in_flight = 0
        self._idle_waiters: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- state ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a handler call that returned an awaitable has not finished, even if
        the connection it came from is gone."""
        return self._in_flight > 0

    @property
    def blocked(self) -> bool:
        """True while a call is pending or waiting for its retry: no token may be submitted
        (the attached connection's input is held)."""
        return self._blocked

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no handler call is in flight."""
        if self._in_flight:
            self._idle_waiters.append(callback)
        else:
            callback()

    def lag(self, stream: str) -> int | None:
        """Tokens between the recorded positions and the master's last known heads of
        ``stream``, summed over its origins (``None`` when neither is known for any)."""
        head = self.heads.get(stream)
        position = self.positions.get(stream)
        total = None if head is None or position is None else max(head - position, 0)
        prefix = stream + ORIGIN_SEPARATOR
        for key, head in self.heads.items():
            if key.startswith(prefix):
                position = self.positions.get(stream, key[len(prefix):])
                if position is not None:
                    total = (total or 0) + max(head - position, 0)
        return total

    def _call_handler(
        self, stream: str, token: int, rows: list[Any], origin: str | None
    ) -> Any:
        if self.handler_takes_origin:
            return self.handler(stream, token, rows, origin=origin)  # type: ignore[call-arg]
        return self.handler(stream, token, rows)

    # -- connections ---------------------------------------------------------------------

    def attach(self, gate: InputGate) -> None:
        """``gate`` is now the worker's connection. If a call from an earlier connection is
        still in flight, its input is held until that call ends."""
        self._gate = gate
        self._retry_delay = FIRST_RETRY_DELAY
        if self._in_flight:
            gate.hold_input()
            self.when_idle(lambda: self._idle_for(gate))

    def _idle_for(self, gate: InputGate) -> None:
        if self._gate is gate and not self._blocked:
            gate.release_input()

    def detach(self, gate: InputGate) -> None:
        """``gate`` is gone: drop a retry waiting for its turn (the next connection starts
        again from the recorded position)."""
        if gate is not self._gate:
            return
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        self._gate = None
        self._epoch += 1
        self._blocked = False

    # -- inputs --------------------------------------------------------------------------

    def submit(
        self, stream: str, token: int, rows: list[Any], origin: str | None = None
    ) -> bool:
        """A complete token of ``origin`` (``None``: versions 1 and legacy): drop it if
        already handled, else call the handler and record the position once it succeeded.
        Returns ``True`` when that is all done (the handler returned ``None``, or the token
        was dropped); ``False`` when the call went on
        another way (it is pending or waiting for a retry and input is held, or it returned
        a value): the caller looks at its input's state. Never call it while
        :attr:`blocked`.

        The worker connection's hot loop repeats the part up to the handler returning
        ``None`` inline, and calls :meth:`handler_returned` for the rest; keep the two
        alike (tests/test_worker_fast_path.py compares them on random line streams)."""
        heads = self.heads
        key = qualify(stream, origin)
        if token > heads.get(key, 0):
            heads[key] = token
        positions = self.positions
        position = positions.get(stream, origin)
        if position is not None and token <= position:
            log.debug(
                "dropping %s token %d: already handled (position %d)", key, token, position
            )
            return True
        seconds = self.clock.seconds
        started = seconds()
        try:
            result = self._call_handler(stream, token, rows, origin)
        except Exception:  # noqa: BLE001  (any handler error is retried)
            result = Failure()  # type: ignore[no-untyped-call]
        if result is None:
            positions.set(stream, token, origin)
            self.metrics.handler_done(stream, seconds() - started)
            return True
        self.handler_returned(stream, token, rows, result, started, origin)
        return False

    def handler_returned(
        self, stream: str, token: int, rows: list[Any], result: Any, started: float,
        origin: str | None = None,
    ) -> None:
        """The handler, called at ``started`` with a token, returned something other than
        ``None`` (an awaitable, or by mistake a value) or raised (``result`` is the
        Failure): wait for it, or retry it. (:meth:`submit`'s slow half.)"""
        self._started = started
        self._run(
            lambda: self._call_handler(stream, token, rows, origin), stream, token,
            f"token {token}", first_result=result, origin=origin,
        )

    def _hook(self, name: str, origin: str | None) -> Callable[..., Any] | None:
        """The handler's ``gap`` or ``reset`` hook, with ``origin=`` bound when it takes it."""
        hook = getattr(self.handler, name, None)
        if hook is None or not accepts_origin(hook):
            return hook
        return lambda *args: hook(*args, origin=origin)

    def gap(self, stream: str, first: int, last: int, origin: str | None = None) -> None:
        """The master's retention dropped ``first..last`` of ``origin`` before this worker
        got them: call the handler's ``gap`` hook (if any), then record ``last``."""
        log.warning(
            "%s: tokens %d..%d were dropped by the master's retention",
            qualify(stream, origin), first, last,
        )
        hook = self._hook("gap", origin)
        call: Callable[[], Any] = (lambda: hook(stream, first, last)) if hook else (lambda: None)
        self._run(call, stream, last, f"gap {first}..{last}", origin=origin)

    def reset(
        self, stream: str, head: int, *, replay: bool = True, origin: str | None = None
    ) -> None:
        """The master's head ``head`` is behind the recorded position: call the handler's
        ``reset`` hook (if any), then record 0 when the master replays the stream from its
        start (``RESET``), or ``head`` when it goes on live from there without replaying
        (``replay`` false: a ``POSITION`` below the worker's position)."""
        old = self.positions.get(stream, origin) or 0
        key = qualify(stream, origin)
        if replay:
            log.warning(
                "%s: the master's head %d is behind this worker's position %d; its history "
                "was lost or replaced: replaying the stream from the start", key, head, old,
            )
        else:
            log.warning(
                "%s: the master sent POSITION %d, behind this worker's position %d; its "
                "history was lost or replaced: going on from %d without a replay",
                key, head, old, head,
            )
        hook = self._hook("reset", origin)
        call: Callable[[], Any] = (lambda: hook(stream, old, head)) if hook else (lambda: None)
        self._run(
            call, stream, 0 if replay else head, f"reset to {head}", force=True, origin=origin
        )

    def caught_up(self, stream: str, token: int, origin: str | None = None) -> None:
        """The master's ``POSITION``: catch-up is done at its head ``token``; nothing lies
        between the recorded position and it (or the subscription started from now)."""
        self.heads[qualify(stream, origin)] = token
        position = self.positions.get(stream, origin)
        if position is None or position < token:
            self.positions.set(stream, token, origin)

    # -- running a call ------------------------------------------------------------------

    def _run(
        self, call: Callable[[], Any], stream: str, position: int, what: str,
        force: bool = False, first_result: Any = _NOT_CALLED, origin: str | None = None,
    ) -> None:
        """Run ``call`` (unless ``first_result`` is what it already returned, or the
        Failure it raised); when it succeeds, record ``position`` for ``stream`` (lower than
        the current one only when ``force``). While it is pending or waiting for a retry,
        the connection's input is held so that nothing overtakes it."""
        epoch = self._epoch
        if first_result is _NOT_CALLED:
            self._started = self.clock.seconds()
            try:
                result = call()
            except Exception:  # noqa: BLE001  (any handler error is retried)
                failure = Failure()  # type: ignore[no-untyped-call]
                self._failed(failure, call, stream, position, what, force, epoch, origin)
                return
        elif isinstance(first_result, Failure):
            self._failed(first_result, call, stream, position, what, force, epoch, origin)
            return
        else:
            result = first_result
        if inspect.isawaitable(result):
            deferred = self._deferred_for(result)
            self._block()
            self._in_flight += 1
            deferred.addCallbacks(
                lambda _: self._done(stream, position, force, epoch, origin),
                lambda f: self._failed(f, call, stream, position, what, force, epoch, origin),
            )
            deferred.addBoth(self._finished)
            return
        self._done(stream, position, force, epoch, origin)

    def _deferred_for(self, awaitable: Any) -> Deferred[Any]:
        """A Deferred that fires with ``awaitable``'s outcome. A coroutine runs as an asyncio
        task when an asyncio event loop is running (the asyncio reactor), through
        :class:`AwaitDeferreds` so that it may await Deferreds too; without a running loop
        it runs under :func:`~twisted.internet.defer.ensureDeferred`, awaiting Deferreds
        only. An asyncio future is adapted; a Deferred is taken as it is."""
        if isinstance(awaitable, Deferred):
            return awaitable
        if asyncio.isfuture(awaitable):
            return Deferred.fromFuture(awaitable)
        coroutine = awaitable if inspect.iscoroutine(awaitable) else _await(awaitable)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return ensureDeferred(coroutine)
        task = loop.create_task(_await(AwaitDeferreds(coroutine)))
        # The loop only keeps weak references to its tasks: hold each until it is done.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Deferred.fromFuture(task)

    def _block(self) -> None:
        self._blocked = True
        if self._gate is not None:
            self._gate.hold_input()

    def _done(
        self, stream: str, position: int, force: bool, epoch: int, origin: str | None = None
    ) -> None:
        self.metrics.handler_done(stream, self.clock.seconds() - self._started)
        current = self.positions.get(stream, origin)
        if force or current is None or position > current:
            self.positions.set(stream, position, origin)
        if epoch != self._epoch:
            return  # its connection is gone; the next one waits for :meth:`_finished`
        self._retry_delay = FIRST_RETRY_DELAY
        if self._blocked:
            self._blocked = False
            if self._gate is not None:
                self._gate.release_input()

    def _failed(
        self, failure: Failure, call: Callable[[], Any], stream: str, position: int, what: str,
        force: bool, epoch: int, origin: str | None = None,
    ) -> None:
        self.metrics.handler_failed(stream, self.clock.seconds() - self._started)
        if epoch != self._epoch:
            log.error(
                "handler failed on %s %s; its connection is gone: the next one starts again "
                "from the recorded position\n%s", stream, what, failure.getTraceback(),
            )
            return
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, self.max_retry_delay)
        log.error(
            "handler failed on %s %s; retrying in %.1fs\n%s",
            qualify(stream, origin), what, delay, failure.getTraceback(),
        )
        self._block()
        self._retry_call = self.clock.callLater(
            delay, self._retry, call, stream, position, what, force, origin
        )

    def _retry(
        self, call: Callable[[], Any], stream: str, position: int, what: str, force: bool,
        origin: str | None = None,
    ) -> None:
        self._retry_call = None
        self._run(call, stream, position, what, force, origin=origin)

    def _finished(self, result: object) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter()


class AwaitDeferreds(Generic[_T]):
    """Drives a coroutine inside an asyncio task so that it may await Deferreds as well as
    asyncio futures.

    A coroutine awaiting a Deferred yields the Deferred itself, which an asyncio task
    refuses ("Task got bad yield"); a coroutine driven by ``ensureDeferred`` cannot await
    an asyncio future ("await wasn't used with future"). This awaitable passes everything
    the coroutine yields on to the task, except a Deferred: for it, it waits on an asyncio
    future that is done once the Deferred has fired (without taking the Deferred's result,
    which the coroutine's own ``await`` then reads). What the task throws in (cancellation),
    and ``GeneratorExit`` when it is closed, is thrown into the coroutine.
    """

    def __init__(self, coroutine: Coroutine[Any, Any, _T]) -> None:
        self.coroutine = coroutine

    def __await__(self) -> Generator[Any, Any, _T]:
        coroutine = self.coroutine
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = coroutine.send(value) if error is None else coroutine.throw(error)
            except StopIteration as stop:
                result: _T = stop.value
                return result
            value, error = None, None
            try:
                if isinstance(yielded, Deferred):
                    yield from _fired(yielded)
                else:
                    value = yield yielded
            except BaseException as e:  # noqa: BLE001  (thrown into the coroutine, closing included)
                error = e


def _fired(deferred: Deferred[Any]) -> Generator[Any, None, None]:
    """Wait, in an asyncio task, until ``deferred`` has fired; its result stays in it."""
    future = asyncio.get_running_loop().create_future()

    def wake(result: object) -> object:
        if not future.done():
            future.set_result(None)
        return result

    deferred.addBoth(wake)
    yield from future


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable
